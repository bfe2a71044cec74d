"""Helpers for tests that run `genrec serve` in a subprocess: a free port on 127.0.0.1 and a wait until the
server answers its health check."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(process: subprocess.Popen, url: str, log: Path | None = None, timeout_s: float = 300) -> None:
    """Return once ``url``/healthz answers status ok; raise with the server's log tail if the process exits or the
    deadline passes (cold caches on a fresh machine convert the model and embed the catalogs first)."""

    def tail() -> str:
        if log is not None:
            return log.read_text()[-3000:]
        return process.stderr.read()[-3000:] if process.stderr and process.poll() is not None else ""

    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{tail()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).json().get("status") == "ok":
                return
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not get ready within {timeout_s:.0f} s:\n{tail()}")
        time.sleep(0.5)
