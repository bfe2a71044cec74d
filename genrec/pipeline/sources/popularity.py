"""Popularity: every user gets the target platform's most popular train items (MostPop)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from genrec.pipeline.sources.base import CandidateSource
from genrec.pipeline.types import Context, EvalCase, HistoryScope, Interaction, TrainData


class MostPop(CandidateSource):
    """Scores each item of a platform by its number of distinct train users; ignores the history."""

    kind = "popularity"
    adds_platforms = True

    def __init__(self, history_scope: HistoryScope = "cross") -> None:
        self.name = "MostPop"
        self.history_scope = history_scope
        self._counts: dict[str, np.ndarray] = {}
        self._index: dict[str, dict[str, int]] = {}  # item -> catalog position, per platform (for updates)

    def fit(self, train: TrainData, valid_cases: Sequence[EvalCase] | None = None) -> None:
        self.catalogs, self._index = train.catalogs, {}
        self._counts = {platform: popularity_counts(train, platform) for platform in train.catalogs}

    def score(self, cases: Sequence[Context], platform: str) -> np.ndarray:
        counts = self._counts[platform].astype(np.float32)
        return np.broadcast_to(counts, (len(cases), len(counts))).copy()

    def update(self, before: Sequence[Interaction], new: Sequence[Interaction]) -> bool:
        """Each item the user had not had on its platform counts one more user, as a refit would count it."""
        had = {(e.platform, e.item_id) for e in before}
        for platform, item in {(e.platform, e.item_id) for e in new} - had:
            position = self._positions(platform).get(item)
            if position is not None:
                self._counts[platform][position] += 1
        return True

    def grow(self, catalogs: dict[str, list[str]]) -> bool:
        """New items start with no users; items dropped from a catalog are forgotten."""
        counts = {}
        for platform, items in catalogs.items():
            known = dict(zip(self.catalogs.get(platform, []), self._counts.get(platform, []), strict=True))
            counts[platform] = np.array([known.get(item, 0) for item in items], dtype=np.int64)
        self.catalogs, self._counts, self._index = catalogs, counts, {}
        return True

    def _positions(self, platform: str) -> dict[str, int]:
        if platform not in self._index:
            catalog = self.catalogs.get(platform, [])
            self._index[platform] = {item: i for i, item in enumerate(catalog)}
        return self._index[platform]

    def state(self) -> dict[str, Any]:
        return {"counts": self._counts}

    def restore(self, state: dict[str, Any]) -> None:
        self._counts, self._index = state["counts"], {}


def popularity_counts(train: TrainData, platform: str) -> np.ndarray:
    """Number of distinct train users who interacted with each item of ``platform``'s catalog, in catalog order.

    Repeat interactions of one user count once, so a few repeat buyers do not make an item popular (this
    also matches the MostPop reference numbers on amazon-arts-office).
    """
    index = {item: i for i, item in enumerate(train.catalogs[platform])}
    counts = np.zeros(len(index), dtype=np.int64)
    for sequence in train.sequences.values():
        items = {index[e.item_id] for e in sequence if e.platform == platform and e.item_id in index}
        counts[list(items)] += 1
    return counts
