"""Saving a tuned adapter: the PEFT directory (``save_pretrained``) plus ``genrec_adapter.json``.

The metadata says what the adapter is and how it was made: base model, data set, protocol, the training config and
its hash, the number of training examples, the prompt settings inference must reuse (``recommender``), validation
metrics, date and machine. ``genrec.llm.read_adapter_metadata`` reads it back; ``LLM.load(LLMConfig(adapter=DIR))``
loads the adapter itself.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

import genrec
from genrec.llm import ADAPTER_METADATA


def machine() -> dict[str, Any]:
    """Where a run happened: CPU count and load, accelerator, library versions."""
    info: dict[str, Any] = {"processor": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
                            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                            "genrec": genrec.__version__}
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def save_adapter(model: Any, directory: Path, metadata: dict[str, Any], state_dict: dict | None = None) -> None:
    """Write the adapter of the PEFT ``model`` and its metadata to ``directory``, replacing it atomically.

    Everything is written to a sibling folder first, so a reader never sees a half-written adapter.
    """
    staging = directory.with_name(f".{directory.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, state_dict=state_dict)
    record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), **metadata}
    (staging / ADAPTER_METADATA).write_text(json.dumps(record, indent=2, default=str) + "\n")
    previous = directory.with_name(f".{directory.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    if directory.exists():
        directory.rename(previous)
    staging.rename(directory)
    shutil.rmtree(previous, ignore_errors=True)
