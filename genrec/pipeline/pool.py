"""The candidate pool: the union of every source's top ``n`` items for one context, the user's own items left out.

The one place candidates are pooled: the pipeline, the LLM re-ranker and training's hard negatives all call it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Pool:
    """Pooled items in first-proposed order (sources in their given order), which sources proposed each, and every
    source's own score of every pooled item (``scores[name][i]`` for ``items[i]``)."""

    items: list[str]
    proposed_by: dict[str, list[str]]
    scores: dict[str, np.ndarray]


def candidate_pool(rows: Mapping[str, np.ndarray], catalog: Sequence[str], exclude: set[str],
                   n: int | Mapping[str, int], *,
                   keep: Callable[[str], bool] | None = None, floors: Mapping[str, float] | None = None) -> Pool:
    """Pool the top ``n`` items (one number, or one per source name) of each source's full-catalog score row
    (``rows``: source name -> scores in catalog order), never an item of ``exclude`` nor one that ``keep``
    rejects, nor one a source scores at or below its floor (``floors``: source name -> the score of the items it
    does not propose); ties keep catalog order."""
    position = {}
    proposed: dict[str, list[str]] = {}
    for name, scores in rows.items():
        picked: list[str] = []
        floor = (floors or {}).get(name)
        for j in np.argsort(-scores, kind="stable"):
            if floor is not None and scores[j] <= floor:
                break
            item = catalog[j]
            if item in exclude or (keep is not None and not keep(item)):
                continue
            picked.append(item)
            position.setdefault(item, int(j))
            if len(picked) == (n if isinstance(n, int) else n[name]):
                break
        for item in picked:
            proposed.setdefault(item, []).append(name)
    items = list(position)
    columns = np.array([position[item] for item in items], dtype=int)
    return Pool(items, proposed, {name: np.asarray(scores, dtype=np.float64)[columns] if len(columns) else
                                  np.zeros(0) for name, scores in rows.items()})
