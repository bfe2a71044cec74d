"""The interface every evaluated method implements, and the pieces the classic baselines share."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from genrec.evaluation.metrics import Ties, ranks_for_cases
from genrec.evaluation.types import EvalCase, Interaction, TrainData

HistoryScope = Literal["cross", "target"]


@runtime_checkable
class Method(Protocol):
    """A recommender under evaluation.

    ``history_scope`` says which part of a case's history the method reads: ``"cross"`` every platform,
    ``"target"`` only the case's target platform.
    """

    name: str
    history_scope: HistoryScope

    def fit(self, train: TrainData, valid_cases: Sequence[EvalCase] | None = None) -> None:
        """Learn from ``train``; ``valid_cases`` may be used for early stopping or model selection only."""
        ...

    def score(self, cases: Sequence[EvalCase], platform: str) -> np.ndarray:
        """Scores of shape ``(len(cases), len(train.catalogs[platform]))`` in catalog order; higher is better.

        Every case has ``case.platform == platform``. Ranking (and history exclusion) is the harness's job.
        """
        ...


def scoped_history(case: EvalCase, scope: HistoryScope) -> tuple[Interaction, ...]:
    """The part of ``case.history`` a method with ``scope`` may read."""
    if scope == "cross":
        return case.history
    if scope == "target":
        return case.history_on(case.platform)
    raise ValueError(f"unknown history scope {scope!r}")


class ItemVocabulary:
    """One index over the items of every platform: platform catalogs laid end to end, in ``catalogs`` order.

    ``offset`` shifts every index (e.g. ``offset=1`` keeps 0 free for padding).
    """

    def __init__(self, catalogs: dict[str, list[str]], offset: int = 0) -> None:
        self.offset = offset
        self.platforms: dict[str, range] = {}
        self.index: dict[tuple[str, str], int] = {}
        start = offset
        for platform, items in catalogs.items():
            self.platforms[platform] = range(start, start + len(items))
            self.index.update({(platform, item): start + i for i, item in enumerate(items)})
            start += len(items)
        self.size = start

    def get(self, event: Interaction) -> int | None:
        return self.index.get((event.platform, event.item_id))

    def encode(self, events: Sequence[Interaction]) -> list[int]:
        """Indices of the events' items, skipping items outside every catalog."""
        return [i for i in (self.get(e) for e in events) if i is not None]

    def block(self, platform: str) -> slice:
        """The slice of global indices that holds ``platform``'s catalog, in catalog order."""
        span = self.platforms[platform]
        return slice(span.start, span.stop)


def rank_cases(
    method: Method,
    cases: Sequence[EvalCase],
    catalogs: dict[str, list[str]],
    *,
    num_negatives: int | None = None,
    seed: int = 0,
    ties: Ties = "pessimistic",
    batch_size: int = 1024,
) -> np.ndarray:
    """Ranks of every case's target (in case order) under ``method``, cases grouped by target platform.

    Full-catalog ranking by default; ``num_negatives`` switches to 1 positive + N sampled negatives. History
    items are excluded in both (see ``genrec.evaluation.metrics.ranks_for_cases``).
    """
    by_platform: dict[str, list[int]] = defaultdict(list)
    for i, case in enumerate(cases):
        by_platform[case.platform].append(i)
    ranks = np.full(len(cases), np.inf)
    for platform, rows in by_platform.items():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = [cases[i] for i in chunk]
            scores = method.score(batch, platform)
            ranks[chunk] = ranks_for_cases(
                scores, batch, catalogs[platform], num_negatives=num_negatives, seed=seed, ties=ties
            )
    return ranks
