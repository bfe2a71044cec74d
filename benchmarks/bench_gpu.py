"""GPU training check: QLoRA (and bf16 LoRA) on SmolLM2-135M-Instruct through ``genrec train``, on one CUDA device.

Each variant is the ``training/configs/gpu-qlora.yaml`` recipe run by the project's own trainer (the ``genrec train``
command, called in this process so that the CUDA allocator's peaks can be read), with a few overrides so that it
finishes in a minute or two: ``--max-steps``, a time budget, validation off (it generates with the sentence
embedder, a quality measurement, not a speed one) and, when ``--no-rationales``, no rationale examples (building
them needs the embedder too). Variants:

- ``qlora``: the recipe as written: NF4 base (bitsandbytes), bf16 compute, LoRA on every linear layer of every
  block, gradient checkpointing;
- ``lora-bf16``: the same with ``load_in_4bit: false`` (bf16 base weights), for comparison;
- ``qlora-no-checkpointing``: QLoRA without gradient checkpointing (the recipe's memory saving, paid in recomputed
  forward passes).

A variant that fails is recorded with its error and the others still run (one try on a lent machine).

Reported per variant (from the run's ``metrics.jsonl`` and the allocator): trained tokens/s (prompt + response
tokens, padding excluded) over the whole run and after the first logging window (CUDA kernels warm), steps, first
and last logged loss, peak GPU memory allocated and reserved, the run's wall time and its set-up share (data,
model, SFT examples). Also the machine (GPU, torch, bitsandbytes, load average) and this GPU's bf16 matrix-product
rate at the model's MLP shape, with the share of it the step reaches in matrix-product FLOPs
(``bench_training.flops_per_trained_token``; gradient checkpointing's recomputed forward pass is not counted).

``--random-init DIR``: the model is SmolLM2-135M-Instruct's architecture and tokenizer (``DIR`` holds its
``config.json`` and tokenizer files) with randomly initialised weights, for machines the real weights cannot reach.
Speed and memory are those of the real model (same shapes, same kernels); the loss is not (it starts near
ln(vocabulary)). The result says which weights were used.

Usage (``benchmarks/gpu_check.sh`` prepares a CUDA machine and runs this):
``python benchmarks/bench_gpu.py [--max-steps 60] [--variants qlora,lora-bf16] [--device cuda]
[--random-init DIR] [--out benchmarks/results/gpu.json]``
"""

from __future__ import annotations

import argparse
import gc
import gzip
import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml

RECIPE = Path("training/configs/gpu-qlora.yaml")
VARIANTS = {"qlora": {"load_in_4bit": True}, "lora-bf16": {"load_in_4bit": False},
            "qlora-no-checkpointing": {"load_in_4bit": True, "gradient_checkpointing": False}}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "generation_config.json")


def random_model(source: Path, target: Path, seed: int = 0) -> Path:
    """A Hugging Face directory at ``target``: the architecture of ``source/config.json`` with random weights
    (bf16), and ``source``'s tokenizer files."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(source, local_files_only=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, target / name)
    return target


def variant_config(recipe: dict[str, Any], variant: str, args: argparse.Namespace, model: str | None) -> dict:
    """The recipe with this check's overrides (see the module docstring)."""
    config = json.loads(json.dumps(recipe))
    config["name"] = f"{recipe['name']}-check-{variant}"
    config["model"] = model
    config["sft"] = {**config.get("sft", {})}
    if args.no_rationales:
        config["sft"]["rationale_fraction"] = 0.0
    if args.max_examples:
        config["sft"]["max_examples"] = args.max_examples
    if args.batch_tokens:
        config["train"]["batch_tokens"] = args.batch_tokens
    config["train"] = {**config.get("train", {}), **VARIANTS[variant], "device": args.device,
                       "time_budget_s": args.time_budget_s, "checkpoint_every": 10**6, "log_every": args.log_every}
    config["validation"] = {**config.get("validation", {}), "cases": 0}
    return config


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """Steps, losses and tokens/s of a finished run, from its ``metrics.jsonl``."""
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    end = next(e for e in events if e["event"] == "end")
    train = [e for e in events if e["event"] == "train"]
    # windows after the first: the rate once kernels (and the allocator's pools) are warm
    later_tokens = later_seconds = 0.0
    for before, window in zip(train, train[1:], strict=False):
        tokens = window["tokens"] - before["tokens"]
        later_tokens += tokens
        later_seconds += tokens / window["tokens_per_s"] if window["tokens_per_s"] else 0.0
    return {
        "steps": end["step"], "stopped": end["stopped"], "examples": start["examples"],
        "steps_per_epoch": start["steps_per_epoch"], "padding_waste_bucketed": round(start["padding_waste"], 4),
        "trainable_parameters": start["trainable_parameters"], "parameters": start["parameters"],
        "trained_tokens": end["tokens"], "response_tokens": end["response_tokens"],
        "train_seconds": end["train_seconds"],
        "trained_tokens_per_s": round(end["tokens_per_s"], 1) if end["tokens_per_s"] else None,
        "trained_tokens_per_s_after_first_window": round(later_tokens / later_seconds, 1) if later_seconds else None,
        "loss_first": round(train[0]["loss"], 4) if train else None,
        "loss_last": round(train[-1]["loss"], 4) if train else None,
        "losses": [[e["step"], round(e["loss"], 4)] for e in train],
    }


def run_variant(variant: str, config: dict[str, Any], work: Path, db: Path, max_steps: int,
                reuse_examples: Path | None) -> dict[str, Any]:
    """``genrec train`` on ``config`` (in this process); the run's numbers and the allocator's peaks."""
    from genrec.cli import app

    run_dir = work / "runs" / variant
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    if reuse_examples is not None and reuse_examples.is_file():  # same fingerprint: the trainer reuses them
        shutil.copy(reuse_examples, run_dir / reuse_examples.name)
    config_path = work / f"{variant}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    cuda = torch.cuda.is_available() and config["train"]["device"] != "cpu"
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    app(["train", "--config", str(config_path), "--output", str(run_dir), "--max-steps", str(max_steps),
         "--db", str(db)], standalone_mode=False)
    wall = time.perf_counter() - started
    result = {"variant": variant, "load_in_4bit": config["train"]["load_in_4bit"],
              "gradient_checkpointing": config["train"].get("gradient_checkpointing", False),
              "batch_tokens": config["train"].get("batch_tokens"), "grad_accum": config["train"].get("grad_accum"),
              "max_batch_size": config["train"].get("max_batch_size"), "wall_seconds": round(wall, 1)}
    result |= read_metrics(run_dir)
    result["setup_seconds"] = round(wall - result["train_seconds"], 1)
    if cuda:
        result["peak_gpu_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["peak_gpu_memory_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return result


def bf16_matmul_rate(rows: int, inner: int, cols: int, device: str, seconds: float = 2.0) -> float:
    """This device's bf16 matrix-product rate (FLOP/s) for a ``rows x inner`` by ``inner x cols`` product."""
    a = torch.randn(rows, inner, dtype=torch.bfloat16, device=device)
    b = torch.randn(inner, cols, dtype=torch.bfloat16, device=device)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    products, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(20):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        products += 20
    return 2 * rows * inner * cols * products / (time.perf_counter() - started)


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine(load_start: list[float]) -> dict[str, Any]:
    info: dict[str, Any] = {"cpu_cores": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda,
                            **{p: version(p) for p in ("transformers", "peft", "accelerate", "bitsandbytes")},
                            "load_average_at_start": [round(x, 2) for x in load_start],
                            "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_mib": round(props.total_memory / 2**20),
                 "gpu_multiprocessors": props.multi_processor_count}
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=RECIPE)
    parser.add_argument("--variants", default="qlora,lora-bf16", help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--time-budget-s", type=float, default=150.0, help="per variant (the trainer's budget)")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--max-examples", type=int, default=None, help="override sft.max_examples")
    parser.add_argument("--batch-tokens", type=int, default=None, help="override train.batch_tokens (CPU dry runs)")
    parser.add_argument("--no-rationales", action="store_true", help="sft.rationale_fraction 0 (no embedder)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--random-init", type=Path, default=None, metavar="DIR",
                        help="random weights of the architecture and tokenizer in DIR (see the module docstring)")
    parser.add_argument("--examples", type=Path, default=None, metavar="FILE",
                        help="an sft_examples.jsonl[.gz] of an earlier run with the same settings, model path and "
                             "--work (the trainer reuses it when its fingerprint matches, else rebuilds)")
    parser.add_argument("--work", type=Path, default=None, help="run folders and the store [default: a temp dir]")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.json"))
    parser.add_argument("--note", action="append", default=[], help="a line recorded in the result (repeatable)")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device (use --device cpu for a dry run)")

    load_start = list(os.getloadavg())
    work = args.work or Path(tempfile.mkdtemp(prefix="genrec-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    recipe = yaml.safe_load(args.config.read_text())
    model = recipe.get("model")
    weights = "the recipe's model (default: SmolLM2-135M-Instruct converted from the shipped GGUF)"
    if args.random_init is not None:
        model = str(random_model(args.random_init, work / "random-model"))
        weights = (f"random initialisation of {args.random_init.name}'s architecture and tokenizer: speed and "
                   "memory as the real model's, loss not comparable")
    results, examples = [], None
    if args.examples is not None:
        examples = work / "sft_examples.jsonl"
        opener = gzip.open if args.examples.suffix == ".gz" else open
        with opener(args.examples, "rb") as source, examples.open("wb") as target:
            shutil.copyfileobj(source, target)
    for variant in variants:
        config = variant_config(recipe, variant, args, model)
        try:
            result = run_variant(variant, config, work, work / "store.duckdb", args.max_steps, examples)
        except Exception as exc:  # noqa: BLE001 - recorded, and the next variant runs
            traceback.print_exc()
            result = {"variant": variant, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        print(json.dumps({k: v for k, v in result.items() if k != "losses"}), flush=True)
        results.append(result)
        if (work / "runs" / variant / "sft_examples.jsonl").is_file():
            examples = work / "runs" / variant / "sft_examples.jsonl"

    from bench_training import flops_per_trained_token
    from transformers import AutoConfig

    model_dir = Path(model) if model else None
    if model_dir is None:
        from genrec.llm import default_model_dir

        model_dir = default_model_dir()
    arch = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    shape = (recipe["train"].get("batch_tokens", 4096), arch.hidden_size, arch.intermediate_size)
    rate = bf16_matmul_rate(*shape, device=args.device)
    for result in (r for r in results if "error" not in r):
        # attention at the prompt's token budget (an upper estimate of the mean length: a few % of the FLOPs)
        budget = recipe.get("prompt", {}).get("token_budget", 384)
        flops = flops_per_trained_token(arch, arch.num_hidden_layers, budget,
                                        result["response_tokens"] / max(1, result["trained_tokens"]))
        steady = result["trained_tokens_per_s_after_first_window"] or result["trained_tokens_per_s"] or 0.0
        result["matmul_ceiling"] = {"gflops_per_trained_token": round(flops / 1e9, 3),
                                    "trained_tokens_per_s": round(rate / flops, 1),
                                    "share_reached": round(steady * flops / rate, 4)}
    output = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(load_start),
        "recipe": str(args.config),
        "weights": weights,
        "overrides": {"max_steps": args.max_steps, "time_budget_s": args.time_budget_s, "validation.cases": 0,
                      **({"train.batch_tokens": args.batch_tokens} if args.batch_tokens else {}),
                      **({"sft.rationale_fraction": 0.0} if args.no_rationales else {}),
                      **({"sft.max_examples": args.max_examples} if args.max_examples else {})},
        "bf16_matmul": {"shape": list(shape), "tflops_per_s": round(rate / 1e12, 2)},
        "variants": results,
        # the OpenAI-compatible backend's check needs a vLLM server on this GPU; None: vllm is not installed here
        "vllm": version("vllm"),
        "notes": args.note,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=2) + "\n")
    print(json.dumps(output, indent=2))


if __name__ == "__main__":
    main()
