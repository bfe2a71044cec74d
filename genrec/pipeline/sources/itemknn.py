"""ItemKNN: item-item cosine similarity over user co-occurrence, across all platforms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from genrec.pipeline.sources.base import CandidateSource, ItemVocabulary
from genrec.pipeline.types import Context, EvalCase, HistoryScope, TrainData, scoped_history


class ItemKNN(CandidateSource):
    """score(user, j) = sum over the distinct history items i of sim(i, j).

    sim(i, j) = |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrink), where U_i is the set of train users who interacted
    with item i on any platform, so items of different platforms become similar through shared users. With
    ``neighbours=k`` each target item j keeps only its k most similar items i. An item is never its own
    neighbour.
    """

    kind = "itemknn"

    def __init__(self, history_scope: HistoryScope = "cross", neighbours: int | None = None, shrink: float = 0.0):
        if neighbours is not None and neighbours < 1:
            raise ValueError("neighbours must be positive")
        self.name = "ItemKNN"
        self.history_scope = history_scope
        self.neighbours = neighbours
        self.shrink = shrink
        self._vocab: ItemVocabulary | None = None
        self._blocks: dict[str, sp.csr_matrix] = {}

    def fit(self, train: TrainData, valid_cases: Sequence[EvalCase] | None = None) -> None:
        vocab = ItemVocabulary(train.catalogs)
        rows, cols = [], []
        for u, sequence in enumerate(train.sequences.values()):
            items = set(vocab.encode(sequence))
            rows.extend([u] * len(items))
            cols.extend(items)
        users = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(train.sequences), vocab.size)
        )
        cooc = (users.T @ users).tocsr()
        cooc.setdiag(0)
        cooc.eliminate_zeros()
        norms = np.sqrt(np.asarray(users.sum(axis=0)).ravel())
        row_of = np.repeat(np.arange(vocab.size), np.diff(cooc.indptr))
        cooc.data = cooc.data / (norms[row_of] * norms[cooc.indices] + self.shrink)
        sim = cooc if self.neighbours is None else _keep_top_per_column(cooc, self.neighbours)
        self.catalogs = train.catalogs
        self._vocab = vocab
        self._blocks = {platform: sim[:, vocab.block(platform)].tocsr() for platform in train.catalogs}

    def score(self, cases: Sequence[Context], platform: str) -> np.ndarray:
        if self._vocab is None:
            raise RuntimeError("fit() first")
        rows, cols = [], []
        for r, case in enumerate(cases):
            items = set(self._vocab.encode(scoped_history(case, self.history_scope)))
            rows.extend([r] * len(items))
            cols.extend(items)
        history = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(cases), self._vocab.size)
        )
        return np.asarray((history @ self._blocks[platform]).todense(), dtype=np.float32)

    def options(self) -> dict[str, Any]:
        return {"neighbours": self.neighbours, "shrink": self.shrink}

    def state(self) -> dict[str, Any]:
        return {"vocab": self._vocab, "blocks": self._blocks}

    def restore(self, state: dict[str, Any]) -> None:
        self._vocab, self._blocks = state["vocab"], state["blocks"]


def _keep_top_per_column(sim: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Zero all but the k largest entries of every column."""
    by_column = sim.T.tocsr()
    data, indices, indptr = [], [], [0]
    for j in range(by_column.shape[0]):
        lo, hi = by_column.indptr[j], by_column.indptr[j + 1]
        values, items = by_column.data[lo:hi], by_column.indices[lo:hi]
        if len(values) > k:
            keep = np.argpartition(-values, k - 1)[:k]
            values, items = values[keep], items[keep]
        data.append(values)
        indices.append(items)
        indptr.append(indptr[-1] + len(values))
    pruned = sp.csr_matrix((np.concatenate(data), np.concatenate(indices), np.array(indptr)), shape=by_column.shape)
    return pruned.T.tocsr()
