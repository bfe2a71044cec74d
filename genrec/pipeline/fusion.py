"""Fusion: one normalised weighted sum over the candidate pool, its weights tuned on validation users.

For a context's pooled candidates, every component (each candidate source, and the LLM's calibrated score
``llm - a * title prior``) is standardised over the pool (zero mean, unit deviation), and the fused score is
``sum_c w_c * z_c``. Tuning searches the weights (and the calibration ``a``) by NDCG@10 on the validation cases of
a seeded sample of users: it starts from the best single component (each source alone, the LLM alone at each
calibration) and moves one weight at a time while that raises the metric, so a fitted pipeline is never worse on
validation than its best single component.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from genrec.errors import GenrecError
from genrec.pipeline.types import EvalCase

LLM = "llm"
TUNING_METRIC = "NDCG@10"


@dataclass
class FusionSpec:
    """The search: ``weights`` each component may take, validation ``tune_users`` (seeded), ``rounds`` of
    one-weight-at-a-time moves. ``fixed`` (``{weights: {component: w}, calibration: a}``, as an earlier
    ``genrec fit`` chose them) skips the search: fitting then costs no LLM call."""

    weights: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0, 4.0])
    tune_users: int = 200
    seed: int = 0
    rounds: int = 2
    fixed: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.weights or any(w < 0 or not math.isfinite(w) for w in self.weights):
            raise GenrecError(f"fusion.weights must be finite and non-negative: {self.weights}")
        if self.tune_users < 1 or self.rounds < 0:
            raise GenrecError("fusion.tune_users must be >= 1 and fusion.rounds >= 0")
        if self.fixed is not None:
            weights = self.fixed.get("weights") if isinstance(self.fixed, dict) else None
            if not isinstance(weights, dict) or not weights or any(
                    not isinstance(w, int | float) or w < 0 for w in weights.values()):
                raise GenrecError(f"fusion.fixed needs weights: {{component: non-negative number}}, got {self.fixed}")
            if not 0.0 <= float(self.fixed.get("calibration", 0.0)) <= 1.0:
                raise GenrecError("fusion.fixed.calibration must lie in [0, 1]")


@dataclass
class Fusion:
    """Chosen weights per component and the LLM's calibration; ``report`` says how they were chosen."""

    weights: dict[str, float]
    calibration: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)

    def combine(self, components: Mapping[str, np.ndarray], priors: np.ndarray | None = None) -> np.ndarray:
        """Fused scores of one pool (``components``: name -> each pooled item's score; ``priors``: the LLM's
        title priors, needed when the LLM has weight)."""
        size = len(next(iter(components.values()))) if components else 0
        fused = np.zeros(size)
        for name, weight in self.weights.items():
            if weight == 0 or name not in components:
                continue
            values = components[name]
            if name == LLM and self.calibration:
                values = values - self.calibration * priors
            fused += weight * standardise(values)
        return fused

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def standardise(values: np.ndarray) -> np.ndarray:
    """Zero mean, unit deviation (a constant vector becomes zeros)."""
    values = np.asarray(values, dtype=np.float64)
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)


def scale_rows(scores: np.ndarray) -> np.ndarray:
    """Min-max scaling of every row to [0, 1] (a constant row becomes 0)."""
    if scores.size == 0:
        return scores.astype(np.float64)
    low = scores.min(axis=1, keepdims=True)
    span = scores.max(axis=1, keepdims=True) - low
    return np.where(span > 0, (scores - low) / np.where(span > 0, span, 1.0), 0.0)


def order(fused: np.ndarray) -> np.ndarray:
    """Pool positions best first; ties keep pool order (the order the pipeline answers in)."""
    return np.argsort(-fused, kind="stable")


@dataclass
class TuningCase:
    """One validation case as fusion sees it: every component's scores over its pool, the LLM's title priors,
    and where the target sits in the pool (``None``: not pooled, a miss whatever the weights)."""

    components: dict[str, np.ndarray]
    priors: np.ndarray | None
    target: int | None


def ndcg10(fusion: Fusion, cases: Sequence[TuningCase]) -> float:
    total = 0.0
    for case in cases:
        if case.target is None:
            continue
        rank = int(np.flatnonzero(order(fusion.combine(case.components, case.priors)) == case.target)[0]) + 1
        total += 1.0 / math.log2(rank + 1) if rank <= 10 else 0.0
    return total / max(len(cases), 1)


def tune(cases: Sequence[TuningCase], names: Sequence[str], spec: FusionSpec,
         calibrations: Sequence[float] = (0.0,)) -> Fusion:
    """The weights (and calibration) with the best NDCG@10 on ``cases``; see the module docstring."""
    if not cases:
        raise GenrecError("tuning the fusion needs validation cases")
    calibrations = sorted(set(calibrations)) if LLM in names else [0.0]
    singles: dict[str, float] = {}
    best, best_score = None, -1.0
    for name in names:
        for a in calibrations if name == LLM else [0.0]:
            candidate = Fusion({n: float(n == name) for n in names}, a)
            score = ndcg10(candidate, cases)
            singles[f"{name}(a={a})" if name == LLM else name] = score
            if score > best_score:
                best, best_score = candidate, score
    grid = sorted(set(spec.weights))
    for _ in range(spec.rounds):
        moved = False
        for name in names:
            for weight in grid:
                for a in calibrations if name == LLM and weight > 0 else [best.calibration]:
                    candidate = Fusion({**best.weights, name: weight}, a)
                    if not any(candidate.weights.values()):
                        continue
                    score = ndcg10(candidate, cases)
                    if score > best_score + 1e-12:
                        best, best_score, moved = candidate, score, True
        if not moved:
            break
    best.report = {"tuning_metric": TUNING_METRIC, "tuned": best_score, "single_components": singles,
                   "tuning_cases": len(cases), "pooled_targets": sum(c.target is not None for c in cases)}
    return best


def tuning_cases(valid_cases: Sequence[EvalCase], n_users: int, seed: int) -> list[EvalCase]:
    """The validation cases of a seeded sample of ``n_users`` users (where fusion weights are chosen)."""
    users = sorted({c.user_id for c in valid_cases})
    chosen = set(random.Random(seed).sample(users, min(n_users, len(users))))
    return [c for c in valid_cases if c.user_id in chosen]
