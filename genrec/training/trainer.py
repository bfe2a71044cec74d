"""The LoRA / QLoRA trainer: SFT examples in, a validated adapter out.

One process on a CPU, or several under ``accelerate launch`` (DDP or FSDP, see ``training/accelerate/``): the
``Accelerator`` places the model, runs backward and accumulates gradients. A step is one optimiser step over
``grad_accum`` length-bucketed micro-batches (each process takes every n-th batch). The loss covers response tokens
only, and the LM head runs only on the tail of each left-padded batch, where the responses are.

Along the way (``output_dir``):

- ``metrics.jsonl``: one JSON line per logged step, validation and run start/end;
- ``checkpoints/last/``: the latest checkpoint (LoRA weights, optimiser, scheduler, step, RNG states), written
  every ``checkpoint_every`` steps and at the end; ``resume=True`` continues from it at the same step and batch;
- ``adapter/``: the adapter with the best validation metric so far (or the last one without validation), with
  ``genrec_adapter.json``;
- ``sft_examples.jsonl``: the examples trained on (rebuilt only when what made them changes).

Validation (through the harness, on a fixed sample of validation cases) runs on the main process at the start
(the untuned model: the zero-shot reference), every ``validation.every`` steps and at the end; ``patience``
validations without improvement stop the run, and so does the time budget, which keeps room for the final
validation. Under FSDP the parameters are sharded: set ``validation.cases: 0`` and evaluate the saved adapter.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from genrec.data.loading import ensure_dataset
from genrec.data.store import Store
from genrec.errors import GenrecError
from genrec.evaluation import config as eval_config
from genrec.evaluation.protocol import EvalData, build
from genrec.llm import LLM, LLMConfig, dtype_choice, resolve_device
from genrec.pipeline.sources import build as build_source
from genrec.recommender import Recommender, RecommenderConfig
from genrec.training import sft
from genrec.training.adapter import save_adapter
from genrec.training.config import TrainConfig
from genrec.training.model import base_model_path, load_for_training, trainable_parameters
from genrec.training.negatives import add_negatives
from genrec.training.validation import Validator

CHECKPOINT = "last"


@dataclass
class TrainerState:
    """Where a run is; saved in every checkpoint. ``batch`` counts the micro-batches of ``epoch`` already done."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    tokens: int = 0
    response_tokens: int = 0
    padded_tokens: int = 0
    train_seconds: float = 0.0
    elapsed_s: float = 0.0
    best_metric: float | None = None
    best_step: int | None = None
    best_mrr: float = 0.0
    bad_rounds: int = 0
    last_validation_step: int | None = None
    validation_seconds: float = 0.0
    zero_shot: dict[str, Any] | None = None
    baselines: dict[str, Any] = field(default_factory=dict)
    validations: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class TrainResult:
    """What a run produced."""

    output_dir: Path
    adapter_dir: Path
    state: TrainerState
    total_steps: int
    examples: int
    padding_waste: float


def response_loss(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Mean cross-entropy over the response tokens of a left-padded batch (see ``sft.collate``).

    The responses end every row, so the LM head only runs on the last ``response_span + 1`` positions.
    """
    span = batch["response_span"]
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], logits_to_keep=span + 1, use_cache=False)
    logits = output.logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"][:, -span:].reshape(-1),
                           ignore_index=sft.IGNORE_INDEX)


def compiled(loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``loss`` (``response_loss`` or ``ranking_loss``) run through ``torch.compile`` with dynamic shapes (the
    batches' lengths and response spans vary).

    Tracing runs without duck sizing: by default the compiler gives two dimensions that happen to be equal in the
    first batch one symbol (a ranking batch of 8 examples with 8 candidate lines each) and compiles again, minutes on
    2 cores, when a later batch breaks that equality (9 examples).
    """
    from torch.fx.experimental import _config as symbolic_shapes

    run = torch.compile(loss, dynamic=True)

    def call(model: torch.nn.Module, batch: dict[str, Any], *args: Any) -> torch.Tensor:
        with symbolic_shapes.patch(use_duck_shape=False):
            return run(model, batch, *args)

    return call


def candidate_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token log-probabilities of every candidate line of a ``sft.collate_ranking`` batch after its prompt, and
    the mask of the lines' real tokens (both ``lines x width``), as ``LLM.continuation_logprobs`` computes them at
    inference.

    The prompts run once; their KV cache is repeated for every candidate line of the example (with gradients), so
    a candidate costs its line's tokens, not another prompt.
    """
    head = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 position_ids=batch["position_ids"], use_cache=True, logits_to_keep=1)
    ids, mask = batch["candidate_ids"], batch["candidate_mask"]
    copies = ids.shape[0] // batch["input_ids"].shape[0]
    cache = head.cache
    cache.batch_repeat_interleave(copies)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=batch["candidate_positions"],
                   cache=cache).logits.float()
    # the first token of each line is predicted by the prompt's last position, the others by the line itself
    logits = torch.cat([head.logits[:, -1:].float().repeat_interleave(copies, dim=0), logits[:, :-1]], dim=1)
    token_logprobs = logits.gather(-1, ids[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)
    line_mask = mask[:, -ids.shape[1]:].to(token_logprobs.dtype)
    return token_logprobs * line_mask, line_mask


def ranking_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], sft_weight: float = 1.0,
                 temperature: float = 1.0) -> torch.Tensor:
    """The ranking objective on a ``sft.collate_ranking`` batch: each example's candidate lines (the true next
    item's first) are scored as scored decoding scores them, by their summed token log-likelihood after the
    prompt, less the batch's ``offsets`` (``train.rank_calibration`` times each line's title prior); the loss is the
    softmax cross-entropy of the true line against the others at ``temperature`` T (scores / T; the term is scaled
    by T, so its gradient keeps its scale), plus ``sft_weight`` times the true line's mean token negative
    log-likelihood."""
    token_logprobs, line_mask = candidate_logprobs(model, batch)
    examples = batch["input_ids"].shape[0]
    scores = token_logprobs.sum(dim=1).view(examples, -1) - batch["offsets"]
    rank = temperature * F.cross_entropy(scores / temperature,
                                         torch.zeros(examples, dtype=torch.long, device=scores.device))
    positives = slice(None, None, scores.shape[1])
    nll = -token_logprobs[positives].sum() / line_mask[positives].sum()
    return rank + sft_weight * nll


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each step: linear warm-up, then cosine / linear decay to 0, or constant."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress

    return factor


class Trainer:
    """Runs one training config against a store (the data set is imported on first use)."""

    def __init__(self, config: TrainConfig, store: Store, *, data: EvalData | None = None, progress: bool = True,
                 log: Callable[[str], None] | None = None) -> None:
        """``data``: the protocol's data when already built (else built from the store as the eval config says)."""
        self.config = config
        self.store = store
        self.progress = progress
        self.out = config.output_path
        self._given = data
        self._log = log or tqdm.write

    # -- set-up ----------------------------------------------------------------------------------------
    def _data(self) -> tuple[Any, EvalData]:
        evaluation = eval_config.load(self.config.eval_config)
        if self._given is not None:
            return evaluation, self._given
        platforms = ensure_dataset(self.store, evaluation.dataset, platforms=evaluation.dataset_platforms)
        return evaluation, build(self.store, evaluation.protocol, platforms)

    def _examples(self, accelerator: Any, data: EvalData, recommender: Recommender, evaluation: Any) -> sft.SFTData:
        """Build the SFT examples once (main process first), or reuse the saved ones made the same way."""
        calibrated = bool(self.config.sft.negatives and self.config.train.rank_calibration)
        fingerprint = json.dumps([asdict(self.config.sft), self.config.prompt, self.config.seed,
                                  evaluation.dataset, evaluation.protocol.to_dict(), str(self.config.model)]
                                 + (["title priors"] if calibrated else []), sort_keys=True, default=str)
        path = self.out / "sft_examples.jsonl"
        with accelerator.main_process_first():
            data_sft = sft.load_examples(path, fingerprint)
            if data_sft is None:
                progress = self.progress and accelerator.is_main_process
                data_sft = sft.build_examples(data.train, recommender, self.config.sft, seed=self.config.seed,
                                              progress=progress)
                if self.config.sft.negatives:
                    sources = [build_source(kind, history_scope="cross", encoder=recommender.embedder)
                               for kind in self.config.sft.negative_sources]
                    data_sft = add_negatives(data_sft, data.train, sources, self.config.sft, seed=self.config.seed,
                                             progress=progress)
                if calibrated:
                    data_sft = add_title_priors(recommender, data_sft, self._log)
                if accelerator.is_main_process:
                    sft.save_examples(data_sft, path, fingerprint)
        return data_sft

    def _epoch_batches(self, lengths: list[int], epoch: int, accelerator: Any) -> list[list[int]]:
        """This process's micro-batches of ``epoch``: a whole number of steps for every process."""
        train = self.config.train
        batches = sft.length_batches(lengths, train.batch_tokens, train.max_batch_size, self.config.seed + epoch)
        per_step = train.grad_accum * accelerator.num_processes
        batches = batches[: len(batches) // per_step * per_step]
        return batches[accelerator.process_index :: accelerator.num_processes]

    # -- the run ---------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> TrainResult:
        """Train (or continue training, with ``resume``) and return where the adapter is."""
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, set_seed

        started = time.monotonic()
        config, train = self.config, self.config.train
        checkpoint = self.out / "checkpoints" / CHECKPOINT
        if checkpoint.exists() and not resume:
            raise GenrecError(f"{self.out} already holds a run: pass --resume to continue it, or remove the folder")
        if resume and not checkpoint.exists():
            raise GenrecError(f"nothing to resume: {checkpoint} does not exist")
        if train.threads:
            torch.set_num_threads(train.threads)
        device = resolve_device(train.device)  # type: ignore[arg-type]
        accelerator = Accelerator(gradient_accumulation_steps=train.grad_accum, cpu=device.type == "cpu")
        set_seed(config.seed)
        main = accelerator.is_main_process
        self.out.mkdir(parents=True, exist_ok=True)

        evaluation, data = self._data()
        path = base_model_path(config.model)
        dtype, why = dtype_choice(train.dtype, accelerator.device, batch_invariant=False)
        if main:
            self._log(f"training dtype: {why}")
        model, tokenizer = load_for_training(path, config.lora, device=accelerator.device,
                                             dtype=dtype, load_in_4bit=train.load_in_4bit,
                                             gradient_checkpointing=train.gradient_checkpointing)
        llm = LLM(model, tokenizer, LLMConfig(model=str(path), dtype=str(dtype).removeprefix("torch."),
                                              device=accelerator.device.type,
                                              load_in_4bit=train.load_in_4bit, seed=config.seed))
        recommender = Recommender(self.store, llm=llm, config=RecommenderConfig(**config.prompt))
        sft_data = self._examples(accelerator, data, recommender, evaluation)
        tokens, too_long = sft.tokenize(sft_data.examples, tokenizer, config.sft.max_length,
                                        recommender.config.score_tokens, train.rank_calibration)
        if not tokens:
            raise GenrecError("no SFT example to train on: check the sft settings and the data set")
        lengths = [len(t) for t in tokens]
        first_epoch = self._epoch_batches(lengths, 0, accelerator)
        steps_per_epoch = len(first_epoch) // train.grad_accum
        if steps_per_epoch == 0:
            raise GenrecError(f"{len(tokens)} examples do not fill one step: lower train.batch_tokens or grad_accum")
        total_steps = train.max_steps or math.ceil(train.epochs * steps_per_epoch)
        waste = sft.padding_waste(lengths, sft.length_batches(lengths, train.batch_tokens, train.max_batch_size,
                                                              config.seed))

        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=train.lr, weight_decay=train.weight_decay)
        warmup = round(train.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train.schedule, warmup, total_steps))
        if accelerator.distributed_type == DistributedType.FSDP and config.validation.cases:
            raise GenrecError("under FSDP the model is sharded and cannot generate for validation: set "
                              "validation.cases: 0 and evaluate the saved adapter afterwards")
        model, optimizer = accelerator.prepare(model, optimizer)
        state = TrainerState()
        accelerator.register_for_checkpointing(scheduler, state)
        accelerator.register_save_state_pre_hook(_keep_trainable_weights)
        if resume:
            accelerator.load_state(str(checkpoint), strict=False)

        run = _Run(self, accelerator, model, optimizer, scheduler, state, tokens, lengths, recommender, data,
                   evaluation, path, sft_data.stats | {"train_examples": len(tokens), "dropped_too_long": too_long},
                   started)
        trainable, total = trainable_parameters(model)
        if main:
            run.log_event({"event": "resume" if resume else "start", "step": state.step, "total_steps": total_steps,
                           "examples": len(tokens), "steps_per_epoch": steps_per_epoch, "padding_waste": waste,
                           "trainable_parameters": trainable, "parameters": total,
                           "processes": accelerator.num_processes, "device": str(accelerator.device),
                           "config_hash": config.hash()})
            self._log(f"{config.name}: {len(tokens)} examples, {steps_per_epoch} steps/epoch, {total_steps} steps, "
                      f"padding {waste:.1%}, {trainable:,} trainable parameters, {accelerator.device}")
        run.train(total_steps)
        return TrainResult(self.out, self.out / "adapter", state, total_steps, len(tokens), waste)


def add_title_priors(recommender: Recommender, data: sft.SFTData, log: Callable[[str], None]) -> sft.SFTData:
    """``data`` with each ranking example's ``candidate_priors``: the title prior (``Recommender.title_priors``) of
    every candidate line under the model as it is now (before training: the untuned model), for the calibrated
    ranking loss. Saved with the examples, so a resumed run does not compute them again."""
    by_platform: dict[str, list[str]] = {}
    for example in data.examples:
        by_platform.setdefault(example.platform, []).extend((example.targets[0], *example.negatives))
    log(f"title priors of {sum(len(set(v)) for v in by_platform.values())} candidates for the calibrated ranking loss")
    model = recommender.llm.model
    model.eval()
    priors: dict[tuple[str, str], float] = {}
    try:
        for platform, items in by_platform.items():  # title_priors computes each item once
            priors.update(zip([(platform, item) for item in items], recommender.title_priors(platform, items).tolist(),
                              strict=True))
    finally:
        model.train()
        recommender.forget_title_priors()
    examples = [replace(e, candidate_priors=tuple(priors[e.platform, item] for item in (e.targets[0], *e.negatives)))
                for e in data.examples]
    return sft.SFTData(examples, data.stats)


def _keep_trainable_weights(models: list, weights: list, output_dir: str) -> None:
    """Checkpoints hold the trainable (LoRA) weights only; the frozen base is reloaded from the model directory."""
    for i, model in enumerate(models):
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        weights[i] = {name: tensor for name, tensor in weights[i].items() if name in trainable}


class _Run:
    """The training loop of one ``Trainer.run`` with its logging, validation and checkpointing."""

    def __init__(self, trainer: Trainer, accelerator: Any, model: Any, optimizer: Any, scheduler: Any,
                 state: TrainerState, tokens: list[sft.TokenizedExample], lengths: list[int],
                 recommender: Recommender, data: EvalData, evaluation: Any, base: Path, sft_stats: dict,
                 started: float) -> None:
        self.trainer, self.config = trainer, trainer.config
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.state, self.tokens, self.lengths = state, tokens, lengths
        self.recommender, self.data, self.evaluation, self.base = recommender, data, evaluation, base
        self.sft_stats = sft_stats
        self.out = trainer.out
        self.pad_id = recommender.llm.tokenizer.pad_token_id
        self._validator: Validator | None = None
        self._started = started  # the session's clock starts before the model and the examples load
        self._elapsed_before = state.elapsed_s
        self.response_loss, self.rank_loss = ((compiled(response_loss), compiled(ranking_loss))
                                              if self.config.train.compile else (response_loss, ranking_loss))

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def elapsed(self) -> float:
        return self._elapsed_before + time.monotonic() - self._started

    def log_event(self, record: dict[str, Any]) -> None:
        with (self.out / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps({**record, "elapsed_s": round(self.elapsed(), 1)}, default=float) + "\n")

    # -- loop ------------------------------------------------------------------------------------------
    def train(self, total_steps: int) -> None:
        state, settings = self.state, self.config.train
        if self.validating and state.step == 0 and self.config.validation.at_start and state.zero_shot is None:
            state.zero_shot = self.validate(zero_shot=True)
        bar = tqdm(total=total_steps, initial=state.step, desc=self.config.name, unit="step",
                   disable=not (self.trainer.progress and self.main))
        losses: list[float] = []
        window_tokens, window_seconds = 0, 0.0
        step_started = time.monotonic()
        stop = state.step >= total_steps
        while not stop:
            batches = self.trainer._epoch_batches(self.lengths, state.epoch, self.accelerator)
            for index in range(state.batch, len(batches)):
                examples = [self.tokens[i] for i in batches[index]]
                ranking = bool(examples[0].candidates)
                collated = (sft.collate_ranking if ranking else sft.collate)(examples, self.pad_id)
                batch = {k: v.to(self.accelerator.device) if isinstance(v, torch.Tensor) else v
                         for k, v in collated.items()}
                with self.accelerator.accumulate(self.model):
                    loss = self.rank_loss(self.model, batch, settings.sft_weight, settings.rank_temperature) \
                        if ranking else self.response_loss(self.model, batch)
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients and settings.max_grad_norm:
                        self.accelerator.clip_grad_norm_(self.model.parameters(), settings.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                state.batch = index + 1
                real = sum(len(e) for e in examples)
                state.tokens += real
                state.response_tokens += sum(e.response_length for e in examples)
                state.padded_tokens += int(batch["padded_tokens"])
                losses.append(loss.item())
                window_tokens += real
                if not self.accelerator.sync_gradients:
                    continue
                self.scheduler.step()
                state.step += 1
                seconds = time.monotonic() - step_started
                state.train_seconds += seconds
                window_seconds += seconds
                bar.update(1)
                if state.step % settings.log_every == 0 or state.step >= total_steps:
                    self._log_train(bar, losses, window_tokens, window_seconds)
                    losses, window_tokens, window_seconds = [], 0, 0.0
                stop = self._after_step(total_steps)
                if stop and losses:
                    self._log_train(bar, losses, window_tokens, window_seconds)
                step_started = time.monotonic()
                if stop:
                    break
            else:
                state.epoch += 1
                state.batch = 0
        bar.close()
        self.finish()

    def _log_train(self, bar: Any, losses: list[float], tokens: int, seconds: float) -> None:
        loss = sum(losses) / max(1, len(losses))
        rate = tokens * self.accelerator.num_processes / seconds if seconds > 0 else 0.0
        lr = self.scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}", tok_s=f"{rate:.0f}")
        if self.main:
            self.log_event({"event": "train", "step": self.state.step, "epoch": self.state.epoch, "loss": loss,
                            "lr": lr, "tokens_per_s": rate, "tokens": self.state.tokens})

    def _after_step(self, total_steps: int) -> bool:
        """Validate and checkpoint when due; whether to stop now (agreed by every process)."""
        state, valid, settings = self.state, self.config.validation, self.config.train
        stop = state.step >= total_steps
        if self.validating and valid.every and state.step % valid.every == 0 and not stop:
            self.validate()
            if valid.patience and state.bad_rounds >= valid.patience:
                state.stopped = f"early stopping: no {valid.metric} gain in {valid.patience} validations"
                stop = True
        if settings.time_budget_s is not None and not stop:
            per_step = state.train_seconds / max(1, state.step)
            if self.elapsed() + state.validation_seconds + per_step > settings.time_budget_s:
                state.stopped = f"time budget of {settings.time_budget_s:.0f} s"
                stop = True
        stop = self._agree(stop)
        if state.step % settings.checkpoint_every == 0 and not stop:
            self.save_checkpoint()
        return stop

    def _agree(self, flag: bool) -> bool:
        if self.accelerator.num_processes == 1:
            return flag
        from accelerate.utils import broadcast_object_list

        return bool(broadcast_object_list([flag])[0])

    # -- validation, adapters, checkpoints -------------------------------------------------------------
    @property
    def validating(self) -> bool:
        return self.config.validation.cases > 0

    @property
    def validator(self) -> Validator:
        if self._validator is None:
            self._validator = Validator(self.trainer.store, self.data, self.recommender, self.config.validation)
        return self._validator

    def validate(self, zero_shot: bool = False) -> dict[str, Any] | None:
        """One validation round on the main process; keeps the adapter when it is the best so far."""
        state, valid = self.state, self.config.validation
        result = None
        if self.main:
            result = self.validator.evaluate()
            state.validation_seconds = result["seconds"]
            record = {"event": "valid", "step": state.step, **result}
            if not state.baselines:  # on the first round, whether or not the zero-shot one runs (at_start)
                state.baselines = self.validator.baselines()
                record["baselines"] = state.baselines
            if not zero_shot:
                value = result[valid.metric]
                # ties (common with few cases and a sparse metric) go to the better full-ranking MRR
                if state.best_metric is None or (value, result.get("MRR", 0.0)) > (state.best_metric,
                                                                                    state.best_mrr):
                    state.best_metric, state.best_step, state.bad_rounds = value, state.step, 0
                    state.best_mrr = result.get("MRR", 0.0)
                    self.save_adapter(result)
                else:
                    state.bad_rounds += 1
                state.validations.append({"step": state.step, **result})
            state.last_validation_step = state.step
            self.log_event(record)
            label = "zero-shot" if zero_shot else f"step {state.step}"
            summary = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k in ("HR@10", "NDCG@10", "validity"))
            self.trainer._log(f"validation ({label}, {result['cases']} cases, {result['seconds']:.0f} s): {summary}")
        self.accelerator.wait_for_everyone()
        return result

    def metadata(self, validation: dict[str, Any] | None) -> dict[str, Any]:
        config, protocol = self.config, self.evaluation.protocol
        settings = RecommenderConfig(**config.prompt)
        return {
            "base_model": {"name": self.base.name, "path": str(self.base)},
            "dataset": self.evaluation.dataset, "eval_config": config.eval_config,
            "protocol": protocol.to_dict(), "protocol_description": protocol.describe(),
            "config": config.to_dict(), "config_hash": config.hash(),
            "recommender": asdict(settings),
            "sft": self.sft_stats, "train_examples": self.sft_stats["train_examples"],
            "step": self.state.step, "trained_tokens": self.state.tokens,
            "metrics": {"metric": config.validation.metric, "validation_cases": len(self.validator.cases)
                        if self._validator else 0, "adapter": validation, "zero_shot": self.state.zero_shot,
                        "baselines": self.state.baselines},
        }

    def save_adapter(self, validation: dict[str, Any] | None) -> None:
        """Write ``adapter/``; under FSDP every process must call this (the full weights are gathered)."""
        from accelerate.utils import DistributedType

        state_dict = None
        if self.accelerator.distributed_type == DistributedType.FSDP:
            state_dict = self.accelerator.get_state_dict(self.model)
        if self.main:
            model = self.accelerator.unwrap_model(self.model)
            save_adapter(model, self.out / "adapter", self.metadata(validation), state_dict=state_dict)

    def save_checkpoint(self) -> None:
        """Write ``checkpoints/last`` through a staging folder, so an interruption never leaves a broken one."""
        self.state.elapsed_s = self.elapsed()
        folder = self.out / "checkpoints"
        staging, target = folder / f".{CHECKPOINT}.staging", folder / CHECKPOINT
        if self.main:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(staging))
        self.accelerator.wait_for_everyone()
        if self.main:
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
            (target / "trainer_state.json").write_text(json.dumps(self.state.state_dict(), indent=2) + "\n")
        self.accelerator.wait_for_everyone()

    def finish(self) -> None:
        """Final validation (unless the last step was just validated), adapter, checkpoint and run summary."""
        state = self.state
        if not self.validating:
            self.save_adapter(None)
        elif state.last_validation_step != state.step or state.best_step is None:
            self.validate()
        state.stopped = state.stopped or "done"
        self.save_checkpoint()
        if self.main:
            rate = state.tokens / state.train_seconds if state.train_seconds else None
            summary = {"event": "end", "step": state.step, "stopped": state.stopped, "best_step": state.best_step,
                       "best": state.best_metric, "zero_shot": state.zero_shot, "baselines": state.baselines,
                       "tokens": state.tokens, "response_tokens": state.response_tokens,
                       "padding_waste": 1 - state.tokens / state.padded_tokens if state.padded_tokens else None,
                       "train_seconds": round(state.train_seconds, 1), "tokens_per_s": rate}
            self.log_event(summary)
            (self.out / "summary.json").write_text(json.dumps({**summary, "elapsed_s": round(self.elapsed(), 1),
                                                               "validations": state.validations}, indent=2,
                                                              default=float) + "\n")
            metric = self.config.validation.metric
            self.trainer._log(f"{self.config.name}: {state.stopped} at step {state.step}; best {metric} "
                              f"{state.best_metric} at step {state.best_step}; adapter in {self.out / 'adapter'}")
