"""Append-only JSON-lines caches (per-case LLM answers and scores) that survive an interrupted run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def append_records(path: Path | None, records: Sequence[dict]) -> None:
    """Append JSON lines to a per-case cache in one write (nothing without a path), on lines of their own even after
    a line that an interrupted run cut short."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab+") as fh:
        fh.seek(0, 2)
        if fh.tell():
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write("".join(json.dumps(record) + "\n" for record in records).encode())


def read_records(path: Path | None) -> list[dict]:
    """The JSON lines of a per-case cache, skipping a line cut short by an interruption."""
    if path is None or not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
