"""ItemKNN: item-item cosine similarity over user co-occurrence, across all platforms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from genrec.pipeline.sources.base import CandidateSource, ItemVocabulary, regrown
from genrec.pipeline.types import Context, EvalCase, HistoryScope, Interaction, TrainData, scoped_history


class ItemKNN(CandidateSource):
    """score(user, j) = sum over the distinct history items i of sim(i, j).

    sim(i, j) = |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrink), where U_i is the set of train users who interacted
    with item i on any platform, so items of different platforms become similar through shared users. With
    ``neighbours=k`` each target item j keeps only its k most similar items i. An item is never its own
    neighbour. The co-occurrence counts |U_i & U_j| and |U_i| are what the source keeps, so new interactions
    update them exactly as a refit would (``update``); the similarities follow at the next ``score``.
    """

    kind = "itemknn"
    OPTIONS = ("neighbours", "shrink")
    adds_platforms = True

    def __init__(self, history_scope: HistoryScope = "cross", neighbours: int | None = None, shrink: float = 0.0):
        if neighbours is not None and neighbours < 1:
            raise ValueError("neighbours must be positive")
        self.name = "ItemKNN"
        self.history_scope = history_scope
        self.neighbours = neighbours
        self.shrink = shrink
        self._vocab: ItemVocabulary | None = None
        self._cooc: sp.csr_matrix | None = None  # |U_i & U_j|, zero diagonal
        self._users: np.ndarray | None = None  # |U_i|
        self._added: tuple[list[int], list[int]] = ([], [])  # co-occurring pairs of updates not yet summed in
        self._blocks: dict[str, sp.csr_matrix] = {}  # similarities to each platform's items (derived, cached)

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
        self.catalogs = train.catalogs
        self._vocab = vocab
        self._cooc, self._users = cooc, np.asarray(users.sum(axis=0), dtype=np.float32).ravel()
        self._added, self._blocks = ([], []), {}

    def update(self, before: Sequence[Interaction], new: Sequence[Interaction]) -> bool:
        """Items the user had not had join the user's set: each pairs once with every other item of the set."""
        if self._vocab is None or self._cooc is None:
            return False  # a folder saved before the counts were kept: only a refit updates it
        had = set(self._vocab.encode(before))
        added = sorted(set(self._vocab.encode(new)) - had)
        if not added:
            return True
        for n, j in enumerate(added):
            others = [*had, *added[:n]]
            self._added[0].extend([j] * len(others) + others)
            self._added[1].extend(others + [j] * len(others))
        self._users[added] += 1
        self._blocks = {}
        return True

    def grow(self, catalogs: dict[str, list[str]]) -> bool:
        """New items start with no users: the counts are carried over to the new item indices."""
        if self._vocab is None or self._cooc is None:
            return catalogs == self.catalogs
        vocab, to, from_ = regrown(self._vocab, catalogs)
        if vocab.index == self._vocab.index:
            self.catalogs = catalogs
            return True
        move = sp.csr_matrix((np.ones(len(to), dtype=np.float32), (to, from_)), shape=(vocab.size, self._vocab.size))
        self._cooc = (move @ self._counts() @ move.T).tocsr()
        users = np.zeros(vocab.size, dtype=np.float32)
        users[to] = self._users[from_]
        self.catalogs, self._vocab, self._users, self._blocks = catalogs, vocab, users, {}
        return True

    def _counts(self) -> sp.csr_matrix:
        """The co-occurrence counts with the pairs of every update since the last call added (one sparse sum)."""
        rows, cols = self._added
        if rows:
            delta = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=self._cooc.shape)
            self._cooc, self._added = (self._cooc + delta).tocsr(), ([], [])
        return self._cooc

    def _block(self, platform: str) -> sp.csr_matrix:
        """Similarities of every item to ``platform``'s items (cosine over the kept counts, cached)."""
        if not self._blocks:
            sim = self._counts().copy()
            norms = np.sqrt(self._users)
            row_of = np.repeat(np.arange(sim.shape[0]), np.diff(sim.indptr))
            sim.data = sim.data / (norms[row_of] * norms[sim.indices] + self.shrink)
            if self.neighbours is not None:
                sim = _keep_top_per_column(sim, self.neighbours)
            self._blocks = {name: sim[:, self._vocab.block(name)].tocsr() for name in self.catalogs}
        return self._blocks[platform]

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
        return np.asarray((history @ self._block(platform)).todense(), dtype=np.float32)

    def state(self) -> dict[str, Any]:
        if self._cooc is None:
            return {"vocab": self._vocab, "blocks": self._blocks}
        return {"vocab": self._vocab, "cooc": self._counts(), "users": self._users}

    def restore(self, state: dict[str, Any]) -> None:
        self._vocab, self._cooc, self._users = state["vocab"], state.get("cooc"), state.get("users")
        # a folder saved before the counts were kept holds the similarities only
        self._added, self._blocks = ([], []), state.get("blocks", {})


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
