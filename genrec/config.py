"""Where genrec keeps things: data directory, store, caches.

Every location can be overridden by an environment variable and, in the CLI, by a flag.

- ``GENREC_HOME``      root of genrec's own files (default ``~/.cache/genrec``)
- ``GENREC_DB``        the DuckDB store (default ``$GENREC_HOME/genrec.duckdb``)
- ``GENREC_DATA_DIR``  where public data sets live (default ``../shared/data`` when it exists, else
                       ``$GENREC_HOME/data``)

Every cache is under ``GENREC_HOME``: genrec's own (``models``, ``embeddings``) and those of the libraries it
drives (``library_caches``), unless their own variables are set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from genrec.errors import GenrecError


def genrec_home() -> Path:
    return Path(os.environ.get("GENREC_HOME") or Path.home() / ".cache" / "genrec").expanduser()


def default_db_path() -> Path:
    env = os.environ.get("GENREC_DB")
    return Path(env).expanduser() if env else genrec_home() / "genrec.duckdb"


def default_data_dir() -> Path:
    env = os.environ.get("GENREC_DATA_DIR")
    if env:
        return Path(env).expanduser()
    # the project's convention: real data sets sit in ../shared/data beside the checkout
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        shared = (base / ".." / "shared" / "data").resolve()
        if shared.is_dir():
            return shared
    return genrec_home() / "data"


def cache_dir(kind: str) -> Path:
    """A cache sub-folder (models, embeddings, ...), created on demand."""
    path = genrec_home() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def library_caches() -> dict[str, Path]:
    """Environment variables of third-party caches and their folders under ``GENREC_HOME`` (matplotlib's font
    cache, torch.compile's and Triton's compiled kernels)."""
    home = genrec_home()
    return {"MPLCONFIGDIR": home / "matplotlib", "TORCHINDUCTOR_CACHE_DIR": home / "torch-inductor",
            "TRITON_CACHE_DIR": home / "triton"}


def read_yaml(path: str | Path, what: str) -> Any:
    """A YAML file's content (``None`` for an empty file); an unreadable file is a ``GenrecError`` naming it."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise GenrecError(f"{path}: cannot read the {what} ({exc})") from exc
