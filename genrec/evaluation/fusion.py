"""Collaborative-aware grounding: the LLM's grounded list fused with a classic model's scores.

For every catalog item ``j`` of the target platform::

    score(j) = (1 - w) * prior(j) + w * llm(j)

``prior`` is the classic model's score (ItemKNN, SASRec, MostPop or ContentOnly, fitted by the harness on the
same training data) scaled to [0, 1] per case; ``llm`` is ``1 - rank / n`` for the ``n`` items the LLM's answer
grounded to (0 for every other item). The weight ``w`` is chosen on validation cases of a seeded sample of users
(never test cases) by NDCG@10 over a grid; ``w = 0`` is the classic model alone. When the LLM carries a tuned
adapter, the chosen weight is written into the adapter's metadata (``genrec_adapter.json``, key ``fusion``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from genrec.evaluation import metrics
from genrec.evaluation.generative import LEAD, GenerativeMethod
from genrec.llm import ADAPTER_METADATA
from genrec.pipeline.fusion import scale_rows, tuning_cases
from genrec.pipeline.sources.base import Method, rank_cases
from genrec.pipeline.types import EvalCase, TrainData

WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
TUNING_METRIC = "NDCG@10"


def llm_component(scores: np.ndarray) -> np.ndarray:
    """``1 - rank / n`` for the grounded items of ``GenerativeMethod.score`` (which score ``LEAD - rank / n``)."""
    return np.where(scores > LEAD - 1.0, scores - (LEAD - 1.0), 0.0)




class FusedMethod:
    """A classic model's scores fused with the (zero-shot or tuned) LLM's grounded list; weight tuned on validation."""

    def __init__(self, prior: Method, llm: GenerativeMethod, *, name: str, weights: Sequence[float] = WEIGHTS,
                 tune_users: int = 100, seed: int = 0) -> None:
        if not weights or any(not 0.0 <= w < 1.0 for w in weights):
            raise ValueError(f"fusion weights must lie in [0, 1): {list(weights)}")
        if prior.history_scope != llm.history_scope:
            raise ValueError("the prior and the LLM must read the same history scope")
        self.name = name
        self.history_scope = llm.history_scope
        self.prior, self.llm = prior, llm
        self.weights = sorted(weights)
        self.tune_users, self.seed = tune_users, seed
        self.weight: float | None = None
        self.info: dict = {}

    def fit(self, train: TrainData, valid_cases: Sequence[EvalCase] | None = None) -> None:
        self.prior.fit(train, valid_cases)
        self.llm.fit(train, valid_cases)
        tune = tuning_cases(valid_cases or [], self.tune_users, self.seed)
        if not tune:
            raise ValueError("fusion needs validation cases to choose its weight")
        prior = _Scores(self.prior, scale_rows)
        llm = _Scores(self.llm, llm_component)
        prior_ranks = rank_cases(prior, tune, train.catalogs)
        llm_ranks = rank_cases(llm, tune, train.catalogs)
        by_weight = {}
        for w in self.weights:
            fused = rank_cases(_Fused(prior, llm, w), tune, train.catalogs)
            by_weight[w] = float(metrics.case_metrics(fused)[TUNING_METRIC].mean())
        self.weight = max(self.weights, key=lambda w: (by_weight[w], -w))  # ties: the smaller weight
        self.info = {"prior": self.prior.name, "rule": "(1 - w) * prior + w * LLM list", "weight": self.weight,
                     "tuning_metric": TUNING_METRIC,
                     "tuning_cases": len(tune), "tuning_users": len({c.user_id for c in tune}),
                     "fused": by_weight[self.weight], "by_weight": {str(w): v for w, v in by_weight.items()},
                     "prior_alone": float(metrics.case_metrics(prior_ranks)[TUNING_METRIC].mean()),
                     "llm_alone": float(metrics.case_metrics(llm_ranks)[TUNING_METRIC].mean())}
        if self.llm.llm_config.adapter:
            store_in_adapter(Path(self.llm.llm_config.adapter), self.info)

    def score(self, cases: Sequence[EvalCase], platform: str) -> np.ndarray:
        if self.weight is None:
            raise RuntimeError("fit() first")
        return _Fused(_Scores(self.prior, scale_rows), _Scores(self.llm, llm_component), self.weight).score(
            cases, platform)

    def case_stats(self, cases: Sequence[EvalCase]) -> dict[str, list[float | None]]:
        return self.llm.case_stats(cases)


class _Scores:
    """A method's scores passed through a transform (a ``Method`` for ``rank_cases``)."""

    def __init__(self, method: Method, transform) -> None:
        self.method, self.transform = method, transform
        self.history_scope = method.history_scope
        self._cache: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}

    def score(self, cases: Sequence[EvalCase], platform: str) -> np.ndarray:
        key = (platform, tuple(f"{c.user_id}|{c.target}|{c.timestamp}" for c in cases))
        if key not in self._cache:  # the weight grid scores the same cases again and again
            self._cache[key] = self.transform(self.method.score(cases, platform))
        return self._cache[key]


class _Fused:
    def __init__(self, prior: _Scores, llm: _Scores, weight: float) -> None:
        self.prior, self.llm, self.weight = prior, llm, weight

    def score(self, cases: Sequence[EvalCase], platform: str) -> np.ndarray:
        return (1.0 - self.weight) * self.prior.score(cases, platform) + self.weight * self.llm.score(cases, platform)




def store_in_adapter(adapter: Path, setting: dict, key: str = "fusion") -> None:
    """Record a tuned setting (e.g. the fusion weight) under ``key`` in the adapter's metadata file (atomically)."""
    path = adapter / ADAPTER_METADATA
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = setting
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
