"""Validation during training, through the evaluation harness: the model being tuned, as the ``genrec`` method
sees it at inference (generate, ground, rank the full catalog), on a fixed seeded sample of validation cases."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from genrec.data.store import Store
from genrec.evaluation.config import MethodSpec
from genrec.evaluation.generative import GenerativeMethod
from genrec.evaluation.methods import Resources, create
from genrec.evaluation.metrics import case_metrics
from genrec.evaluation.protocol import EvalData
from genrec.evaluation.runner import Outcome, evaluate_method
from genrec.evaluation.types import EvalCase
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

    def evaluate(self) -> dict[str, Any]:
        """Metrics of the current model; it runs in eval mode (no dropout) and returns to train mode."""
        model = self.recommender.llm.model
        started = time.perf_counter()
        model.eval()
        try:
            outcome = evaluate_method(self.method, self.data, self.cases, variant="valid", label="genrec")
        finally:
            model.train()
        return {**summarize(outcome), "seconds": round(time.perf_counter() - started, 1)}

    def baselines(self) -> dict[str, dict[str, Any]]:
        """The configured harness baselines (e.g. MostPop) on the same cases."""
        resources = Resources(store=self.store, _embedder=self.recommender.embedder)
        out = {}
        for name in self.settings.baselines:
            spec = MethodSpec(name)
            method = create(spec, "cross", resources)
            outcome = evaluate_method(method, self.data, self.cases, variant="valid", label=spec.title)
            out[spec.title] = summarize(outcome)
        return out
