"""Training throughput benchmark: SmolLM2-135M-Instruct + bf16 LoRA on CPU, on real SFT examples.

Measures, on this machine, with the trainer's own pieces (``genrec.training``): real SFT examples of the
movielens-latest-small recipe (same prompts, same response format), length-bucketed batches, the response-only
loss and AdamW steps:

- trained tokens/s (prompt + response tokens, padding excluded) and padded tokens/s, per layout: the default
  one (the last 10 of 30 blocks adapted, so backward stops there; LoRA dropout 0.05, float32 adapter weights: the
  amazon recipes), the same with the loss compiled (``train.compile``: the same losses and gradients), the fast
  layout (LoRA dropout 0 and the adapter in bf16, ``lora.dtype``) eager and compiled (the movielens recipe), and
  every block adapted;
- padding waste of the bucketed batches over the whole example set (target < 10%);
- peak resident memory of the process;
- the ceiling this machine puts on the target: the bf16 matrix-product rate it reaches at the model's largest
  shape (one MLP projection of a full batch), divided by the matrix-product FLOPs a trained token costs in each
  layout (``flops_per_trained_token``): the rate a step would reach if it ran matrix products alone, at that speed.

Targets (issue 5): >= 1,000 trained tokens/s on 2 cores, padding waste < 10%. The machine this project runs on is
shared: the load average before and after is recorded (``busy_at_start``), and numbers from a busy machine are
lower bounds.

Usage: ``python benchmarks/bench_training.py [--steps 4] [--examples 160] [--out benchmarks/results/training.json]``
(imports movielens-latest-small into a temporary store).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from genrec.data.loading import ensure_dataset
from genrec.data.store import Store
from genrec.evaluation.config import load as load_eval_config
from genrec.evaluation.protocol import build
from genrec.llm import LLM, LLMConfig
from genrec.recommender import Recommender, RecommenderConfig
from genrec.training import sft
from genrec.training.config import LoraSettings, load
from genrec.training.model import base_model_path, load_for_training, trainable_parameters
from genrec.training.trainer import compiled, response_loss

RECIPE = Path("training/configs/movielens-latest-small.yaml")
TARGET_TOKENS_PER_S = 1000
TARGET_PADDING_WASTE = 0.10
WARM_UP_STEPS = 2
BUSY_LOAD = 0.5  # a 1-minute load average above this at start: other work shared the cores (lower bounds)


def examples(n: int, tokenizer: Any) -> tuple[list[sft.SFTExample], Any]:
    """``n`` SFT examples of the MovieLens recipe, and the recipe."""
    recipe = load(RECIPE)
    evaluation = load_eval_config(recipe.eval_config)
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.duckdb") as store:
        data = build(store, evaluation.protocol, ensure_dataset(store, evaluation.dataset))
        recommender = Recommender(store, llm=LLM(None, tokenizer, LLMConfig()),
                                  config=RecommenderConfig(**recipe.prompt))
        settings = sft.SFTConfig(**{**vars(recipe.sft), "max_examples": n})
        return sft.build_examples(data.train, recommender, settings, seed=recipe.seed).examples, recipe


def matmul_flops_per_s(rows: int, inner: int, cols: int, seconds: float = 5.0) -> float:
    """The bf16 matrix-product rate (FLOP/s) of this machine, on all of torch's threads, for a ``rows x inner``
    by ``inner x cols`` product (measured for ``seconds`` after three warm-up products)."""
    a, b = torch.randn(rows, inner, dtype=torch.bfloat16), torch.randn(inner, cols, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    products, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        products += 1
    return 2 * rows * inner * cols * products / (time.perf_counter() - started)


def flops_per_trained_token(config: Any, adapted_layers: int, mean_tokens: float, response_share: float) -> float:
    """Matrix-product FLOPs one trained token costs in a LoRA step: the forward pass through every block; the
    backward pass through the ``adapted_layers`` top blocks (gradients of the activations only: the base weights are
    frozen, and LoRA's rank-r products are left out, about 1% of a block's); the LM head forward and backward on the
    response positions alone (``response_share`` of the tokens: the loss's only positions); causal attention's two
    products at ``mean_tokens``, twice as many backward."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    kv = hidden // config.num_attention_heads * config.num_key_value_heads
    block = 2 * (hidden * (2 * hidden + 2 * kv) + 3 * hidden * config.intermediate_size)  # q, o; k, v; MLP
    attention = 2 * 2 * (mean_tokens / 2) * hidden  # QK^T and AV over half the sequence on average
    head = 2 * hidden * config.vocab_size
    return (layers * (block + attention) + adapted_layers * (block + 2 * attention)
            + response_share * 2 * head)


def measure(tokens: list[sft.TokenizedExample], lora: LoraSettings, batch_tokens: int, steps: int,
            compile_loss: bool = False) -> dict[str, Any]:
    """Tokens/s of ``steps`` optimiser steps with this LoRA layout, after two warm-up steps (kernels; with
    ``compile_loss`` the compiler, for the first shape and then for dynamic shapes), whose time is reported."""
    model, tokenizer = load_for_training(base_model_path(None), lora, device=torch.device("cpu"),
                                         dtype=torch.bfloat16)
    model.train()
    loss = compiled(response_loss) if compile_loss else response_loss
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    lengths = [len(t) for t in tokens]
    batches = sft.length_batches(lengths, batch_tokens, 16, seed=0)
    real = padded = 0
    seconds = warm_up = 0.0
    for step, batch_ids in enumerate(batches[: steps + WARM_UP_STEPS]):
        batch = sft.collate([tokens[i] for i in batch_ids], tokenizer.pad_token_id)
        started = time.perf_counter()
        loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
        if step < WARM_UP_STEPS:
            warm_up += time.perf_counter() - started
            continue
        seconds += time.perf_counter() - started
        real += sum(lengths[i] for i in batch_ids)
        padded += batch["input_ids"].numel()
    trainable, total = trainable_parameters(model)
    return {"lora": vars(lora), "compiled": compile_loss, "trainable_parameters": trainable, "parameters": total,
            "warm_up_seconds": round(warm_up, 1), "steps": steps,
            "trained_tokens": real, "padded_tokens": padded, "seconds": round(seconds, 2),
            "trained_tokens_per_s": round(real / seconds, 1), "padded_tokens_per_s": round(padded / seconds, 1),
            "seconds_per_step": round(seconds / steps, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--examples", type=int, default=160)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/training.json"))
    args = parser.parse_args()
    load_start = list(os.getloadavg())
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_path(None), local_files_only=True)
    items, recipe = examples(args.examples, tokenizer)
    tokens, _ = sft.tokenize(items, tokenizer, recipe.sft.max_length)
    lengths = [len(t) for t in tokens]
    batch_tokens = recipe.train.batch_tokens
    waste = sft.padding_waste(lengths, sft.length_batches(lengths, batch_tokens, recipe.train.max_batch_size, 0))
    shape_only = {k: v for k, v in vars(recipe.lora).items() if k not in ("dropout", "dtype")}
    default = LoraSettings(**shape_only)  # LoRA dropout 0.05, float32 adapter: the amazon recipes
    fast = LoraSettings(**{**shape_only, "dropout": 0.0, "dtype": "bfloat16"})  # the movielens recipe
    layouts = {"default": (default, False), "default, compiled": (default, True), "fast": (fast, False),
               "fast, compiled": (fast, True),
               "every block": (LoraSettings(**{**shape_only, "top_layers": None}), False)}
    runs = [{"layout": name} | measure(tokens, lora, batch_tokens, args.steps, compile_loss)
            for name, (lora, compile_loss) in layouts.items()]
    config = AutoConfig.from_pretrained(base_model_path(None), local_files_only=True)
    shape = (batch_tokens, config.hidden_size, config.intermediate_size)
    rate = matmul_flops_per_s(*shape)
    mean_tokens = sum(lengths) / len(lengths)
    response_share = sum(t.response_length for t in tokens) / sum(lengths)
    for run in runs:
        flops = flops_per_trained_token(config, run["lora"]["top_layers"] or config.num_hidden_layers, mean_tokens,
                                        response_share)
        run["ceiling"] = {"matmul_gflops_per_trained_token": round(flops / 1e9, 3),
                          "trained_tokens_per_s": round(rate / flops, 1),
                          "share_reached": round(run["trained_tokens_per_s"] * flops / rate, 3)}
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "load_average_at_start": [round(x, 2) for x in load_start],
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                    "busy_at_start": load_start[0] > BUSY_LOAD},
        "model": "SmolLM2-135M-Instruct (bfloat16 weights, CPU)",
        "data": {"recipe": str(RECIPE), "examples": len(tokens),
                 "mean_tokens": round(sum(lengths) / len(lengths), 1),
                 "mean_response_tokens": round(sum(t.response_length for t in tokens) / len(tokens), 1),
                 "batch_tokens": batch_tokens},
        "padding_waste": round(waste, 4),
        "bf16_matmul": {"shape": list(shape), "gflops_per_s": round(rate / 1e9, 1)},
        "runs": runs,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "targets": {"trained_tokens_per_s": TARGET_TOKENS_PER_S, "padding_waste": TARGET_PADDING_WASTE,
                    "tokens_per_s_met_by": [r["layout"] for r in runs
                                            if r["trained_tokens_per_s"] >= TARGET_TOKENS_PER_S],
                    "padding_met": waste < TARGET_PADDING_WASTE},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
