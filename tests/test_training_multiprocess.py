"""`genrec train` under `accelerate launch` with two CPU processes (gloo): the data-parallel path of
``training/accelerate/multi-gpu-ddp.yaml`` runs for real — both processes share the DuckDB store (the main one
imports, then every process reads it), take their own batches, all-reduce the LoRA gradients and the main one writes
the adapter — on the tiny random Llama of tests/test_training.py, for two optimiser steps."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_training import PROMPT, _batch
from test_training import tiny_model_dir as tiny_model_dir  # noqa: F401 - the shared fixture

from genrec.data.store import Store

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_accelerate_launch_with_two_cpu_processes_trains_the_lora_recipe(tiny_model_dir, tmp_path: Path) -> None:
    rng = random.Random(3)
    rows = []
    for u in range(30):
        start, t = rng.randrange(12), 0
        for step in range(rng.randint(6, 12)):
            t += rng.choice([1, 1, 2, 0]) if step else 1
            platform = "ab"[step % 3 == 2]
            rows.append((f"u{u}", platform, f"{platform}{(start + step) % 12}", t))
    splits = [(f"u{u}", "train" if u < 20 else "valid" if u < 25 else "test") for u in range(30)]
    db = tmp_path / "store.duckdb"
    with Store(db) as store:
        store.ingest(_batch(rows, splits))
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump({
        "name": "synthetic", "dataset": {"name": "synthetic", "platforms": ["a", "b"]}, "methods": ["mostpop"],
        "protocol": {"targets": "final-timestamp", "users": "dataset"}}))
    run = tmp_path / "run"
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({
        "name": "tiny-ddp", "model": str(tiny_model_dir), "eval_config": str(tmp_path / "eval.yaml"),
        "output_dir": str(run), "prompt": PROMPT, "sft": {"response_items": 2, "max_examples_per_user": 4},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 2, "batch_tokens": 1200, "threads": 1, "grad_accum": 1, "lr": 2e-2, "log_every": 1,
                  "checkpoint_every": 2, "device": "cpu", "dtype": "float32"},
        "validation": {"cases": 0}}))
    # no GPU is visible, so the DDP config's two processes run on the CPU and all-reduce over gloo (`accelerate
    # launch --cpu` would start one process here: several CPU processes on one machine need mpirun)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(ROOT / "training" / "accelerate" / "multi-gpu-ddp.yaml"), "--num_processes", "2",
         "--main_process_port", str(_free_port()), "-m", "genrec.cli", "train", "--config",
         str(tmp_path / "train.yaml"), "--db", str(db)],
        capture_output=True, text=True, env=env, timeout=170, cwd=tmp_path)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-5000:]
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    assert start["processes"] == 2 and start["device"].startswith("cpu")
    assert events[-1]["event"] == "end" and events[-1]["step"] == 2 and events[-1]["stopped"] == "done"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert "tiny-ddp: done after 2 steps" in launched.stdout
