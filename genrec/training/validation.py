"""Validation during training, through the evaluation harness: the model being tuned, as the ``genrec`` method
sees it at inference (generate, ground, rank the full catalog) or as the re-ranker uses it (classic models'
candidates ranked by its calibrated likelihood), on a fixed seeded sample of validation cases."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from genrec.data.store import Store
from genrec.evaluation.generative import GenerativeMethod
from genrec.evaluation.methods import create_named
from genrec.evaluation.metrics import case_metrics
from genrec.evaluation.protocol import EvalData
from genrec.evaluation.rerank import RerankMethod
from genrec.evaluation.runner import Outcome, evaluate_method
from genrec.pipeline.types import EvalCase
from genrec.recommender import Recommender
from genrec.training.config import ValidationSettings

KS = (10,)


def sample_cases(cases: Sequence[EvalCase], n: int, seed: int, platforms: Sequence[str] = ()) -> list[EvalCase]:
    """A seeded sample of ``n`` cases (of ``platforms`` only, when given), in their original order."""
    pool = [c for c in cases if not platforms or c.platform in platforms]
    if n >= len(pool):
        return pool
    chosen = set(random.Random(seed).sample(range(len(pool)), n))
    return [case for i, case in enumerate(pool) if i in chosen]


def summarize(outcome: Outcome) -> dict[str, Any]:
    """Mean HR@10, NDCG@10 and MRR of an outcome (plus the generation validity of a generative method)."""
    values = case_metrics(outcome.ranks, KS)
    out: dict[str, Any] = {name: float(np.mean(column)) for name, column in values.items()}
    if outcome.extra.get("validity"):
        out["validity"] = float(np.mean(outcome.extra["validity"]))
    out["cases"] = len(outcome.ranks)
    out["seconds"] = round(outcome.fit_seconds + outcome.score_seconds, 1)
    return out


class Validator:
    """Scores the recommender's LLM (the model being trained, updated in place) on the same validation cases."""

    def __init__(self, store: Store, data: EvalData, recommender: Recommender, settings: ValidationSettings) -> None:
        self.store = store
        self.data = data
        self.settings = settings
        self.cases = sample_cases(data.valid, settings.cases, settings.seed, settings.platforms)
        if not self.cases:
            raise ValueError("the protocol gives no validation cases to validate on")
        self.recommender = recommender
        self.method = GenerativeMethod(store, history_scope="cross", config=recommender.config,
                                       embedder=recommender.embedder, recommender=recommender, name="genrec")
        if settings.mode == "rerank":
            if recommender.config.calibration:
                raise ValueError("validation by re-ranking calibrates the scores itself: train with calibration 0")
            sources = create_named(settings.sources, "cross", store, recommender.embedder)
            # a calibration grid is chosen on every user of the validation sample
            self.method = RerankMethod(sources, self.method, name="genrec-rerank", per_source=settings.per_source,
                                       calibrations=settings.calibrations,
                                       tune_users=len({c.user_id for c in self.cases}), seed=settings.seed)

    def evaluate(self) -> dict[str, Any]:
        """Metrics of the current model; it runs in eval mode (no dropout) and returns to train mode."""
        model = self.recommender.llm.model
        started = time.perf_counter()
        model.eval()
        self.recommender.forget_title_priors()  # the model has changed since they were computed
        # the re-ranker chooses its calibration (when given a grid) on the validation cases themselves
        data = replace(self.data, valid=self.cases) if isinstance(self.method, RerankMethod) else self.data
        try:
            outcome = evaluate_method(self.method, data, self.cases, variant="valid", label="genrec")
        finally:
            model.train()
        chosen = {k: v for k, v in outcome.info.items() if k in ("calibration", "by_calibration")}
        return {**summarize(outcome), **chosen, "seconds": round(time.perf_counter() - started, 1)}

    def baselines(self) -> dict[str, dict[str, Any]]:
        """The configured harness baselines (e.g. MostPop) on the same cases."""
        out = {}
        for method in create_named(self.settings.baselines, "cross", self.store, self.recommender.embedder):
            outcome = evaluate_method(method, self.data, self.cases, variant="valid", label=method.name)
            out[method.name] = summarize(outcome)
        return out
