"""Helpers for tests that run `genrec serve` in a subprocess: a free port on 127.0.0.1, a wait until the server
answers its health check, and a server on a pipeline for the length of a ``with`` block."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(process: subprocess.Popen, url: str, log: Path | None = None, timeout_s: float = 300,
               path: str = "/healthz") -> None:
    """Return once ``url`` + ``path`` answers 200 (``/healthz``: with status ok); raise with the server's log tail if
    the process exits or the deadline passes (cold caches on a fresh machine convert the model and embed the
    catalogs first)."""

    def tail() -> str:
        if log is not None:
            return log.read_text()[-3000:]
        return process.stderr.read()[-3000:] if process.stderr and process.poll() is not None else ""

    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{tail()}")
        try:
            response = httpx.get(f"{url}{path}", timeout=5)
            if response.status_code == 200 and (path != "/healthz" or response.json().get("status") == "ok"):
                return
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not get ready within {timeout_s:.0f} s:\n{tail()}")
        time.sleep(0.5)


@contextlib.contextmanager
def running(command: list[str], url: str, log: Path, *, path: str = "/healthz", timeout_s: float = 300,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A server process started with ``command`` (output to ``log``), yielded once ``url`` + ``path`` is ready
    (``wait_ready``), terminated afterwards (killed if it does not stop within 20 s)."""
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env or os.environ.copy())
    try:
        wait_ready(process, url, log, timeout_s, path)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def serving(root: Path, db: Path, pipeline: Path, keys: str, **server: Any) -> Iterator[tuple[str, Path]]:
    """`genrec serve --pipeline PIPELINE` on a free port of 127.0.0.1, its settings ``server`` over warm-up and
    default pipelines off, its API keys ``keys`` (``GENREC_API_KEYS``); yields its URL and log file once it is
    ready, and stops it afterwards."""
    config = root / "server.yaml"
    config.write_text(yaml.safe_dump({"server": {"warm_up": False, "default_pipelines": False, **server}}))
    port, log = free_port(), root / "server.log"
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "genrec.cli", "serve", "--port", str(port), "--db", str(db), "--config",
                  str(config), "--pipeline", str(pipeline), "--log-level", "warning"], url, log,
                 env=os.environ | {"GENREC_API_KEYS": keys, "HF_HUB_OFFLINE": "1"}):
        yield url, log


def fitted_classic(root: Path, name: str, tune_users: int) -> tuple[Path, Path]:
    """movielens-latest-small imported into ``root``'s store and a popularity + ItemKNN pipeline fitted on it and
    saved (what the server tests serve): the store's path and the pipeline folder."""
    from genrec.data.store import Store
    from genrec.pipeline import PipelineSpec
    from genrec.pipeline.fitting import fit_pipeline

    db, folder = root / "store.duckdb", root / "classic"
    spec = PipelineSpec.from_dict({"name": name, "dataset": "movielens-latest-small",
                                   "sources": [{"kind": "popularity", "n": 20}, {"kind": "itemknn", "n": 20}],
                                   "fusion": {"tune_users": tune_users}})
    with Store(db) as store:
        fit_pipeline(store, spec).save(folder)
    return db, folder
