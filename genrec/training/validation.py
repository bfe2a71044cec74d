"""Validation during training, through the evaluation harness: the model being tuned, as the ``genrec`` method
sees it at inference (generate, ground, rank the full catalog) or as a pipeline's LLM stage uses it (the pooled
candidates of classic sources ranked by its calibrated likelihood alone), on a fixed seeded sample of validation
cases."""

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
from genrec.evaluation.runner import Outcome, evaluate_method
from genrec.pipeline import FusionSpec, LLMScorer, LLMSpec, Pipeline, PipelineSpec, SourceSpec
from genrec.pipeline.fusion import LLM, TUNING_METRIC
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
        self.method: GenerativeMethod | None = None
        self.reranker: Pipeline | None = None
        if settings.mode == "rerank":
            if recommender.config.calibration:
                raise ValueError("validation by re-ranking calibrates the scores itself: train with calibration 0")
            self.reranker = self._reranker()
        else:
            self.method = GenerativeMethod(store, history_scope="cross", config=recommender.config,
                                           embedder=recommender.embedder, recommender=recommender, name="genrec")

    def _reranker(self) -> Pipeline:
        """The pipeline whose LLM stage is validated: the ``sources``' top ``per_source`` items each, ranked by
        the LLM alone (its fusion fixed), fitted once (the sources do not change while the LLM trains)."""
        config = self.recommender.config
        spec = PipelineSpec(
            name="genrec-rerank",
            sources=[SourceSpec(kind=name, n=self.settings.per_source)  # harness names are source kinds too
                     for name in self.settings.sources],
            llm=LLMSpec(calibrations=self.settings.calibrations, score_tokens=config.score_tokens,
                        title_prior=config.title_prior),
            fusion=FusionSpec(fixed={"weights": {LLM: 1.0}}))
        pipeline = Pipeline(spec, store=self.store, embedder=self.recommender.embedder)
        pipeline.fit(self.data.train)
        return pipeline

    def evaluate(self) -> dict[str, Any]:
        """Metrics of the current model; it runs in eval mode (no dropout) and returns to train mode."""
        model = self.recommender.llm.model
        started = time.perf_counter()
        model.eval()
        self.recommender.forget_title_priors()  # the model has changed since they were computed
        try:
            if self.reranker is None:
                outcome, chosen = evaluate_method(self.method, self.data, self.cases, variant="valid",
                                                  label="genrec"), {}
            else:
                outcome, chosen = self._rerank()
        finally:
            model.train()
        return {**summarize(outcome), **chosen, "seconds": round(time.perf_counter() - started, 1)}

    def _rerank(self) -> tuple[Outcome, dict[str, Any]]:
        """The LLM alone at each calibration of the grid (one LLM pass: its scores are kept in memory), and the
        calibration with the best NDCG@10 on these cases (ties: the smaller)."""
        pipeline = self.reranker
        pipeline.scorer = LLMScorer(pipeline.spec.llm, self.store, recommender=self.recommender)
        pipeline.scorer.fit(self.data.train)
        by_calibration: dict[float, float] = {}
        best: tuple[float, Outcome] | None = None
        for a in sorted(set(self.settings.calibrations)):
            pipeline.fusion = replace(pipeline.fusion, calibration=a)  # the LLM alone, as fitted
            outcome = evaluate_method(pipeline, self.data, self.cases, variant="valid", label=pipeline.name,
                                      fit=False)
            by_calibration[a] = summarize(outcome)[TUNING_METRIC]
            if best is None or by_calibration[a] > by_calibration[best[0]]:
                best = (a, outcome)
        return best[1], {"calibration": best[0], "by_calibration": by_calibration}

    def baselines(self) -> dict[str, dict[str, Any]]:
        """The configured harness baselines (e.g. MostPop) on the same cases."""
        out = {}
        for method in create_named(self.settings.baselines, "cross", self.store, self.recommender.embedder):
            outcome = evaluate_method(method, self.data, self.cases, variant="valid", label=method.name)
            out[method.name] = summarize(outcome)
        return out
