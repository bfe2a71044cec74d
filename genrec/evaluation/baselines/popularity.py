"""MostPop: every user gets the target platform's most popular train items."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from genrec.evaluation.baselines.base import HistoryScope
from genrec.evaluation.metrics import popularity_counts
from genrec.evaluation.types import EvalCase, TrainData


class MostPop:
    """Scores each item of a platform by its number of train interactions; ignores the history."""

    def __init__(self, history_scope: HistoryScope = "cross") -> None:
        self.name = "MostPop"
        self.history_scope = history_scope
        self._counts: dict[str, np.ndarray] = {}

    def fit(self, train: TrainData, valid_cases: Sequence[EvalCase] | None = None) -> None:
        self._counts = {platform: popularity_counts(train, platform) for platform in train.catalogs}

    def score(self, cases: Sequence[EvalCase], platform: str) -> np.ndarray:
        counts = self._counts[platform].astype(np.float32)
        return np.broadcast_to(counts, (len(cases), len(counts))).copy()
