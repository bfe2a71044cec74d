"""ContentOnly: recommend the catalog items whose titles are closest to the history's titles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from genrec.pipeline.sources.base import CandidateSource, ItemVocabulary, regrown
from genrec.pipeline.types import Context, EvalCase, HistoryScope, TrainData, scoped_history


class TextEncoder(Protocol):
    """Anything that turns texts into one embedding row each (e.g. ``genrec.embedding.Embedder``)."""

    def encode(self, texts: list[str]) -> np.ndarray: ...


class ContentOnly(CandidateSource):
    """score(user, j) = cosine(mean of the history's title embeddings, title embedding of j).

    Items without a title get a zero embedding (score 0, never counted in the history mean). A case whose
    history has no titled item gets all-zero scores. The embeddings are saved with the source; the encoder is
    only needed to fit.
    """

    kind = "content"

    def __init__(self, encoder: TextEncoder | None = None, history_scope: HistoryScope = "cross") -> None:
        self.name = "ContentOnly"
        self.history_scope = history_scope
        self._encoder = encoder
        self._vocab: ItemVocabulary | None = None
        self._embeddings = np.zeros((0, 0), dtype=np.float32)

    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:  # loaded on first use: a loaded source scores from its saved embeddings
            from genrec.embedding import Embedder

            self._encoder = Embedder()
        return self._encoder

    def fit(self, train: TrainData, valid_cases: Sequence[EvalCase] | None = None) -> None:
        vocab = ItemVocabulary(train.catalogs)
        keys = list(vocab.index)
        titled = [i for i, key in enumerate(keys) if train.titles.get(key)]
        vectors = np.asarray(self.encoder.encode([train.titles[keys[i]] for i in titled]), dtype=np.float32)
        embeddings = np.zeros((vocab.size, vectors.shape[1] if len(titled) else 1), dtype=np.float32)
        embeddings[titled] = _normalise(vectors)
        self.catalogs = train.catalogs
        self._vocab = vocab
        self._embeddings = embeddings

    def grow(self, catalogs: dict[str, list[str]], titles: dict[tuple[str, str], str] | None = None) -> bool:
        """New items are embedded from ``titles`` (the encoder loads on first use); known ones keep their rows."""
        if self._vocab is None:
            return False
        vocab, to, from_ = regrown(self._vocab, catalogs)
        embeddings = np.zeros((vocab.size, self._embeddings.shape[1]), dtype=np.float32)
        embeddings[to] = self._embeddings[from_]
        fresh = sorted(set(range(vocab.size)) - set(to.tolist()))
        keys = list(vocab.index)
        titled = [i for i in fresh if (titles or {}).get(keys[i])]
        if titled:
            embeddings[titled] = _normalise(np.asarray(self.encoder.encode([titles[keys[i]] for i in titled]),
                                                       dtype=np.float32))
        self.catalogs, self._vocab, self._embeddings = catalogs, vocab, embeddings
        return True

    def refresh(self, train: TrainData, new, *, steps: int) -> str:
        """Nothing to count: new catalog items are embedded (``grow``) and the history does the rest."""
        self.grow(train.catalogs, train.titles)
        return "embedded"

    def score(self, cases: Sequence[Context], platform: str) -> np.ndarray:
        if self._vocab is None:
            raise RuntimeError("fit() first")
        queries = np.zeros((len(cases), self._embeddings.shape[1]), dtype=np.float32)
        for r, case in enumerate(cases):
            items = self._vocab.encode(scoped_history(case, self.history_scope))
            if items:
                queries[r] = self._embeddings[items].sum(axis=0)
        return _normalise(queries) @ self._embeddings[self._vocab.block(platform)].T

    def state(self) -> dict[str, Any]:
        return {"vocab": self._vocab, "embeddings": self._embeddings}

    def restore(self, state: dict[str, Any]) -> None:
        self._vocab, self._embeddings = state["vocab"], state["embeddings"]


def _normalise(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)
