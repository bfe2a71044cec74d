"""Training run configs (YAML under ``training/configs/``): data, prompts, SFT examples, LoRA, optimisation, validation.

A config names an evaluation config (``eval/configs/*.yaml``) instead of repeating its data set and protocol, so
the SFT examples come from exactly the training data the harness gives every method, and validation uses the
harness's validation cases. ``prompt`` holds the ``RecommenderConfig`` fields that shape prompts and generation:
the same values must be used at inference (they are stored in the adapter's ``genrec_adapter.json``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from genrec.config import read_yaml
from genrec.errors import GenrecError
from genrec.training.sft import SFTConfig

SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("bfloat16", "float32", "float16", "auto")  # auto: bfloat16 where the device has it natively
LORA_DTYPES = ("float32", "bfloat16")


@dataclass
class LoraSettings:
    """The adapter: rank, alpha, dropout and the modules it wraps.

    ``top_layers``: wrap only the last N transformer blocks (``None``: all). The backward pass then stops at the
    lowest adapted block, which on CPU is the cheapest way to train faster (1.6x with 10 of 30 blocks measured).
    ``dtype``: the adapter's weights. ``float32`` (PEFT's default) keeps full-precision weights and optimiser
    updates, at the cost of casting every adapted layer's bf16 input to float32 and its output back; ``bfloat16``
    computes the adapter in the base model's bf16 (no casts; AdamW then updates bf16 weights, which round away
    updates below about 0.4% of a weight).
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    top_layers: int | None = None
    dtype: str = "float32"


@dataclass
class OptimSettings:
    """Optimisation and run control.

    A step is one optimiser step over ``grad_accum`` micro-batches; a micro-batch holds examples of similar
    length, at most ``batch_tokens`` tokens with padding and ``max_batch_size`` examples. The learning rate
    warms up linearly for ``warmup_ratio`` of the steps, then follows ``schedule``. The run stops at
    ``max_steps`` (default: ``epochs`` over the examples), on early stopping, or when ``time_budget_s`` (training
    and validation together, across resumes) would be exceeded, keeping time for a final validation.
    ``device: auto`` trains on CUDA when present. ``load_in_4bit`` is QLoRA (bitsandbytes NF4, double
    quantisation, bf16 compute); ``dtype`` is the weights' dtype otherwise (bf16 LoRA on CPU by default;
    ``auto``: bf16 only where the CPU or GPU has it natively, else float32, see ``genrec.llm.dtype_choice``).
    With hard negatives (``sft.negatives``) the loss is the ranking one (``trainer.ranking_loss``): the softmax
    cross-entropy of the true item's answer line against the negatives' lines, plus ``sft_weight`` times the
    true line's mean token negative log-likelihood. ``rank_calibration`` (0..1) makes the loss rank what the
    calibrated re-ranker ranks: each line's likelihood less that share of its title prior under the untuned model.
    ``rank_temperature`` T divides the lines' scores before the softmax (the term is T times that cross-entropy,
    so its gradient keeps its scale): at T = 1 summed log-likelihoods that differ by several nats make the softmax
    nearly one-hot and the loss a margin against the single strongest negative; T near the scores' spread within
    a case spreads it over every negative, closer to what NDCG@10 rewards (the true item above most candidates).
    ``compile`` runs the loss through ``torch.compile`` (dynamic shapes without duck sizing, so batches of every
    length and example count share one graph; ``trainer.compiled``): the first steps wait for the compiler (about
    3.5 minutes on 2 cores for the SFT loss, 10 for the ranking loss), later steps fuse the many small element-wise
    operations of a CPU step (casts, dropout masks, the log-softmax over the vocabulary): 1.2-1.3x on 2 cores
    (``benchmarks/bench_training.py``). Each loss
    compiled once in a whole recipe run (movielens; amazon-arts-office-rank-fast). The ranking loss, in an amazon run
    before duck sizing was turned off, also compiled again after a validation round (about 7 minutes), for a cause
    not identified.
    """

    epochs: float = 1.0
    max_steps: int | None = None
    batch_tokens: int = 4096
    max_batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    schedule: str = "cosine"
    max_grad_norm: float = 1.0
    dtype: str = "bfloat16"
    device: str = "auto"
    load_in_4bit: bool = False
    gradient_checkpointing: bool = False
    time_budget_s: float | None = None
    checkpoint_every: int = 50
    sft_weight: float = 1.0
    rank_calibration: float = 0.0
    rank_temperature: float = 1.0
    log_every: int = 5
    threads: int | None = None
    compile: bool = False


@dataclass
class ValidationSettings:
    """Periodic validation through the evaluation harness on a fixed, seeded sample of ``cases`` validation cases
    (0: no validation; the adapter is then the last one).

    ``every``: optimiser steps between validations (0: only at the end). ``at_start`` first evaluates the
    untuned model (LoRA starts as the identity), the zero-shot reference on the same cases. The adapter with the
    best ``metric`` is kept; ``patience`` validations without improvement stop the run (0: never).
    ``platforms``: target platforms of the sampled cases (default: all; the zero-shot-platform recipe validates
    on the platforms it trains on). ``baselines``: harness methods scored on the same cases for reference.
    ``mode``: ``generate`` ranks what the recommender generates (its ``decoding``: free or catalog beams);
    ``rerank`` ranks the top ``per_source`` items of each of the ``sources`` by the model's likelihood less
    ``calibration`` times the title prior, as a pipeline's LLM stage does (``genrec.pipeline``: pooled candidates,
    the LLM alone).
    ``calibration`` may be a list: each round then scores every value on the validation cases and reports the
    best (the evaluation chooses it on validation cases too), so a model whose title prior has moved with tuning
    is not judged at the untuned model's calibration.
    """

    cases: int = 64
    every: int = 100
    at_start: bool = True
    seed: int = 0
    metric: str = "NDCG@10"
    patience: int = 3
    platforms: list[str] = field(default_factory=list)
    baselines: list[str] = field(default_factory=lambda: ["mostpop"])
    mode: str = "generate"
    sources: list[str] = field(default_factory=lambda: ["mostpop", "itemknn"])
    per_source: int = 50
    calibration: float | list[float] = 0.0

    @property
    def calibrations(self) -> list[float]:
        """The calibration grid (one value when ``calibration`` is a number)."""
        return list(self.calibration) if isinstance(self.calibration, list) else [self.calibration]


@dataclass
class TrainConfig:
    """One training recipe. ``output_dir`` defaults to ``training/runs/<name>``."""

    name: str
    eval_config: str
    model: str | None = None
    output_dir: str | None = None
    seed: int = 0
    prompt: dict[str, Any] = field(default_factory=dict)
    sft: SFTConfig = field(default_factory=SFTConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: OptimSettings = field(default_factory=OptimSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    source: str | None = None

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("training") / "runs" / self.name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hash(self) -> str:
        """A digest of everything that shapes the adapter (not where it is written nor where the config came from)."""
        data = {k: v for k, v in self.to_dict().items() if k not in ("output_dir", "source")}
        data["train"] = {k: v for k, v in data["train"].items() if k not in UNSHAPING}
        for (section, key), default in ADDED_LATER.items():  # at their defaults, later settings leave digests as-is
            if data[section].get(key) == default:
                del data[section][key]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# settings added after adapters were recorded: at these values they are left out of ``TrainConfig.hash``
ADDED_LATER = {("train", "rank_temperature"): 1.0, ("lora", "dtype"): "float32"}
# train settings that change how a run goes, not the adapter it makes (compiling computes the same losses)
UNSHAPING = ("log_every", "checkpoint_every", "compile")
_SECTIONS = {"sft": SFTConfig, "lora": LoraSettings, "train": OptimSettings, "validation": ValidationSettings}


def load(path: str | Path) -> TrainConfig:
    """Read a training config file."""
    return parse(read_yaml(path, "training config"), source=str(path))


def parse(raw: object, source: str | None = None) -> TrainConfig:
    """Validate a config mapping; every error names the file and the key."""
    where = source or "config"
    if not isinstance(raw, dict):
        raise GenrecError(f"{where}: expected a mapping at the top level")
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"source"}
    unknown = set(raw) - known
    if unknown:
        raise GenrecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    for key in ("name", "eval_config"):
        if key not in raw:
            raise GenrecError(f"{where}: missing '{key}'")
    values: dict[str, Any] = {k: v for k, v in raw.items() if k not in _SECTIONS}
    for key, cls in _SECTIONS.items():
        section = raw.get(key) or {}
        if not isinstance(section, dict):
            raise GenrecError(f"{where}: '{key}' must be a mapping")
        try:
            values[key] = cls(**section)
        except TypeError as exc:
            raise GenrecError(f"{where}: {key}: {exc}") from exc
    _check_prompt(values.get("prompt") or {}, where)
    config = TrainConfig(**values, source=source)
    _check(config, where)
    return config


def _check_prompt(prompt: object, where: str) -> None:
    from genrec.recommender import RecommenderConfig

    if not isinstance(prompt, dict):
        raise GenrecError(f"{where}: 'prompt' must be a mapping of RecommenderConfig fields")
    unknown = set(prompt) - {f.name for f in dataclasses.fields(RecommenderConfig)}
    if unknown:
        raise GenrecError(f"{where}: prompt: unknown RecommenderConfig field(s) {', '.join(sorted(unknown))}")


def _check(config: TrainConfig, where: str) -> None:
    train, valid, sft = config.train, config.validation, config.sft
    problems = []
    if train.schedule not in SCHEDULES:
        problems.append(f"train.schedule = {train.schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if train.dtype not in DTYPES:
        problems.append(f"train.dtype = {train.dtype!r}; expected one of {', '.join(DTYPES)}")
    if train.device not in ("auto", "cpu", "cuda"):
        problems.append(f"train.device = {train.device!r}; expected auto, cpu or cuda")
    if train.grad_accum < 1 or train.batch_tokens < 1 or train.max_batch_size < 1 or train.lr <= 0:
        problems.append("train.grad_accum, batch_tokens, max_batch_size and lr must be positive")
    if not 0 <= train.warmup_ratio < 1:
        problems.append("train.warmup_ratio must be in [0, 1)")
    if train.max_steps is None and train.epochs <= 0:
        problems.append("train.epochs must be positive (or set train.max_steps)")
    if config.lora.r < 1 or config.lora.top_layers is not None and config.lora.top_layers < 1:
        problems.append("lora.r and lora.top_layers must be positive")
    if config.lora.dtype not in LORA_DTYPES:
        problems.append(f"lora.dtype = {config.lora.dtype!r}; expected one of {', '.join(LORA_DTYPES)}")
    if valid.cases < 0 or valid.every < 0 or valid.patience < 0:
        problems.append("validation.cases, every and patience must not be negative")
    if sft.response_items < 1 or sft.stride < 1 or sft.max_examples_per_user < 1:
        problems.append("sft.response_items, stride and max_examples_per_user must be positive")
    if not 0 <= sft.rationale_fraction <= 1:
        problems.append("sft.rationale_fraction must be in [0, 1]")
    if sft.negatives < 0 or sft.negative_pool < 1 or sft.negatives and not sft.negative_sources:
        problems.append("sft.negatives must not be negative, sft.negative_pool must be positive and hard "
                        "negatives need sft.negative_sources")
    if train.sft_weight < 0 or not 0 <= train.rank_calibration <= 1 or not train.rank_temperature > 0:
        problems.append("train.sft_weight must not be negative, train.rank_calibration must be in [0, 1] and "
                        "train.rank_temperature must be positive")
    if train.checkpoint_every < 1 or train.log_every < 1:
        problems.append("train.checkpoint_every and train.log_every must be positive (steps)")
    if valid.mode not in ("generate", "rerank"):
        problems.append(f"validation.mode = {valid.mode!r}; expected generate or rerank")
    if valid.mode == "rerank" and (not valid.sources or valid.per_source < 1 or not _calibrations_ok(valid)):
        problems.append("validation.mode rerank needs sources, a positive per_source and a calibration in [0, 1] "
                        f"(a number or a non-empty list of them), got calibration = {valid.calibration!r}")
    if problems:
        raise GenrecError(f"{where}: " + "; ".join(problems))


def _calibrations_ok(valid: ValidationSettings) -> bool:
    values = valid.calibrations
    return bool(values) and all(isinstance(a, int | float) and not isinstance(a, bool) and 0 <= a <= 1
                                for a in values)
