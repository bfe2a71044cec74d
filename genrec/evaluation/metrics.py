"""Ranking metrics, the ranks they are computed from, and their aggregation with bootstrap confidence intervals.

Everything starts from the **1-based rank** of a case's target among its candidates (the target platform's full
catalog, or the target plus sampled negatives). A target that could not be ranked (excluded because it is already
in the history, or missing from the catalog) has rank ``inf`` (``None`` is accepted on input) and counts as a
miss for every metric.

- ``HR@K``   = 1 if rank <= K else 0
- ``NDCG@K`` = 1 / log2(rank + 1) if rank <= K else 0   (one relevant item, so the ideal DCG is 1)
- ``MRR``    = 1 / rank, not cut at any K

Ties
----
Scores are compared, never sorted, so a tie is resolved by a declared rule (``ties=``):

- ``"pessimistic"`` (default): rank = 1 + number of other candidates scoring >= the target. A constant scorer gets
  the worst rank, so ties can never inflate a result.
- ``"optimistic"``: rank = 1 + number of candidates scoring strictly higher. A constant scorer gets rank 1: use it
  only to bound the effect of ties.
- ``"mean"``: the expected rank under a uniformly random tie-break, 1 + higher + (tied others) / 2.

NaN scores are treated as ``-inf``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.stats import rankdata

if TYPE_CHECKING:  # annotations only: the pipeline's sources import these metrics
    from genrec.pipeline.types import EvalCase

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20)
Ties = Literal["pessimistic", "optimistic", "mean"]
RankLike = Sequence[float | None] | np.ndarray


@dataclass(frozen=True)
class Estimate:
    """A mean over cases with a percentile-bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"


# --------------------------------------------------------------------------------------------------- ranking


def rank_of_target(
    scores: np.ndarray,
    target_index: int,
    excluded_indices: Iterable[int] = (),
    ties: Ties = "pessimistic",
) -> float:
    """The 1-based rank of ``scores[target_index]`` among the non-excluded candidates (``inf`` if excluded)."""
    excluded = np.fromiter(excluded_indices, dtype=np.int64)
    if target_index in excluded:
        return float("inf")
    values = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    keep = np.ones(len(values), dtype=bool)
    keep[excluded] = False
    keep[target_index] = False
    others = values[keep]
    target = values[target_index]
    higher = int(np.count_nonzero(others > target))
    if ties == "optimistic":
        return float(higher + 1)
    tied = int(np.count_nonzero(others == target))
    if ties == "pessimistic":
        return float(higher + tied + 1)
    if ties == "mean":
        return higher + tied / 2 + 1
    raise ValueError(f"unknown tie rule {ties!r}")


def case_rng(case: EvalCase, seed: int) -> np.random.Generator:
    """A generator that depends only on the seed and the case's identity, not on the order of the cases."""
    key = zlib.crc32(f"{case.user_id}\x1f{case.platform}\x1f{case.target}\x1f{case.split}".encode())
    return np.random.default_rng([seed, key])


def sample_negatives(
    catalog_size: int,
    target_index: int,
    excluded_indices: Iterable[int],
    num_negatives: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``num_negatives`` distinct catalog indices, none of them the target or excluded (fewer if too few remain)."""
    allowed = np.ones(catalog_size, dtype=bool)
    allowed[np.fromiter(excluded_indices, dtype=np.int64)] = False
    allowed[target_index] = False
    pool = np.flatnonzero(allowed)
    return rng.choice(pool, size=min(num_negatives, len(pool)), replace=False)


def history_indices(case: EvalCase, index: Mapping[str, int]) -> list[int]:
    """Catalog positions of the items of ``case``'s history on its own platform (what ranking excludes)."""
    return [index[x.item_id] for x in case.history_on(case.platform) if x.item_id in index]


def ranks_for_cases(
    scores: np.ndarray,
    cases: Sequence[EvalCase],
    catalog: Sequence[str],
    *,
    num_negatives: int | None = None,
    seed: int = 0,
    ties: Ties = "pessimistic",
) -> np.ndarray:
    """Ranks of every case's target from a ``(len(cases), len(catalog))`` score matrix.

    History items on the target platform are excluded from the candidates. With ``num_negatives=None`` the
    target is ranked against the whole remaining catalog; otherwise against ``num_negatives`` negatives drawn
    (per case, seeded by ``seed`` and the case's identity) from the catalog minus history minus target.
    """
    scores = np.asarray(scores)
    if scores.shape != (len(cases), len(catalog)):
        raise ValueError(f"scores have shape {scores.shape}, expected {(len(cases), len(catalog))}")
    index = {item: i for i, item in enumerate(catalog)}
    ranks = np.full(len(cases), np.inf)
    for row, case in enumerate(cases):
        target = index.get(case.target)
        if target is None:
            continue
        excluded = history_indices(case, index)
        if num_negatives is None:
            ranks[row] = rank_of_target(scores[row], target, excluded, ties)
        elif target not in excluded:
            negatives = sample_negatives(len(catalog), target, excluded, num_negatives, case_rng(case, seed))
            candidates = np.concatenate([[target], negatives])
            ranks[row] = rank_of_target(scores[row, candidates], 0, (), ties)
    return ranks


def top_k(scores: np.ndarray, k: int, excluded_indices: Iterable[int] = ()) -> np.ndarray:
    """The indices of the ``k`` best-scoring non-excluded candidates, best first (ties: lower index first)."""
    values = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    allowed = np.ones(len(values), dtype=bool)
    allowed[np.fromiter(excluded_indices, dtype=np.int64)] = False
    pool = np.flatnonzero(allowed)
    k = min(k, len(pool))
    best = pool[np.argpartition(-values[pool], k - 1)[:k]] if k else pool[:0]
    return best[np.lexsort((best, -values[best]))]


def top_k_for_cases(scores: np.ndarray, cases: Sequence[EvalCase], catalog: Sequence[str], k: int) -> np.ndarray:
    """Each case's top-``k`` catalog indices with its target-platform history excluded: ``(len(cases), k)``."""
    index = {item: i for i, item in enumerate(catalog)}
    return np.stack([top_k(row, k, history_indices(case, index)) for row, case in zip(scores, cases, strict=True)])


# --------------------------------------------------------------------------------------------------- metrics


def as_ranks(ranks: RankLike) -> np.ndarray:
    """Ranks as a float array, ``None`` and NaN mapped to ``inf`` (unranked)."""
    values = np.array([np.inf if r is None else r for r in ranks], dtype=np.float64)
    values[np.isnan(values)] = np.inf
    if np.any(values < 1):
        raise ValueError("ranks are 1-based")
    return values


def case_metrics(ranks: RankLike, ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-case values of HR@K, NDCG@K (for each K) and MRR, keyed by metric name."""
    r = as_ranks(ranks)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = r <= k
        out[f"HR@{k}"] = hit.astype(np.float64)
        out[f"NDCG@{k}"] = np.where(hit, 1.0 / np.log2(np.where(hit, r, 1.0) + 1.0), 0.0)
    out["MRR"] = 1.0 / r
    return out


def bootstrap(
    values: Mapping[str, np.ndarray], n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict[str, Estimate]:
    """Means of per-case columns with percentile-bootstrap intervals (the same resamples for every column).

    NaN entries (a case with no value for that column) are left out of that column's mean.
    """
    names = list(values)
    matrix = np.column_stack([np.asarray(values[name], dtype=np.float64) for name in names])
    present = ~np.isnan(matrix)
    filled = np.where(present, matrix, 0.0)
    n = len(matrix)
    if n == 0:
        return {name: Estimate(float("nan"), float("nan"), float("nan"), 0) for name in names}
    rng = np.random.default_rng(seed)
    means = np.empty((n_boot, len(names)))
    block = max(1, min(n_boot, 20_000_000 // n))
    for start in range(0, n_boot, block):
        size = min(block, n_boot - start)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[start : start + size] = (weights @ filled) / (weights @ present)
    alpha = (1.0 - confidence) / 2
    low, high = np.nanquantile(means, [alpha, 1.0 - alpha], axis=0)
    counts = present.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        point = filled.sum(axis=0) / counts
    return {
        name: Estimate(float(point[j]), float(low[j]), float(high[j]), int(counts[j])) for j, name in enumerate(names)
    }


def summarize(
    ranks: RankLike, ks: Sequence[int] = DEFAULT_KS, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict[str, Estimate]:
    """HR@K, NDCG@K and MRR over all cases, each with a bootstrap confidence interval."""
    return bootstrap(case_metrics(ranks, ks), n_boot, seed, confidence)


def summarize_by(
    ranks: RankLike,
    groups: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, Estimate]]:
    """``summarize`` over all cases (key ``"all"``) and within each group (e.g. each case's target platform)."""
    r = as_ranks(ranks)
    labels = np.asarray(groups)
    if len(labels) != len(r):
        raise ValueError("one group label per rank is needed")
    out = {"all": summarize(r, ks, n_boot, seed, confidence)}
    for group in sorted(set(labels.tolist())):
        out[group] = summarize(r[labels == group], ks, n_boot, seed, confidence)
    return out


# ------------------------------------------------------------------------------------- beyond accuracy


@dataclass(frozen=True)
class PopularityStats:
    """How popular recommended items are: mean train count and mean popularity percentile (1 = most popular)."""

    mean_count: float
    mean_percentile: float


def popularity_percentiles(counts: np.ndarray) -> np.ndarray:
    """Each item's popularity percentile in [0, 1] (mid-rank, so equal counts share a percentile)."""
    counts = np.asarray(counts)
    if len(counts) < 2:
        return np.ones(len(counts))
    return (rankdata(counts, method="average") - 1.0) / (len(counts) - 1.0)


def catalog_coverage(top_lists: np.ndarray | Sequence[Sequence[int]], catalog_size: int) -> float:
    """Share of the catalog that appears in at least one recommendation list."""
    seen = {int(i) for row in top_lists for i in row}
    return len(seen) / catalog_size if catalog_size else 0.0


def average_popularity(top_lists: np.ndarray | Sequence[Sequence[int]], counts: np.ndarray) -> PopularityStats:
    """Mean train count and mean popularity percentile over every recommended slot (popularity bias)."""
    items = np.array([int(i) for row in top_lists for i in row], dtype=np.int64)
    if len(items) == 0:
        return PopularityStats(float("nan"), float("nan"))
    counts = np.asarray(counts)
    return PopularityStats(float(counts[items].mean()), float(popularity_percentiles(counts)[items].mean()))


def generation_quality(
    validity: Sequence[float], similarity: Sequence[float | None], n_boot: int = 1000, seed: int = 0
) -> dict[str, Estimate]:
    """Aggregate per-case generation numbers of a generative method.

    ``validity``: per case, the share of generated items that grounded to a real catalog item of the target
    platform. ``similarity``: per case, the mean grounding similarity of its grounded items (``None`` or NaN when
    nothing grounded; such cases are left out of that mean).
    """
    if len(validity) != len(similarity):
        raise ValueError("validity and similarity need one value per case each")
    sim = np.array([np.nan if s is None else s for s in similarity], dtype=np.float64)
    return bootstrap(
        {"validity_rate": np.asarray(validity, dtype=np.float64), "grounding_similarity": sim}, n_boot, seed
    )
