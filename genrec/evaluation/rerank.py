"""The LLM as a re-ranker over classic models' candidates, optionally fused with a classic model's scores.

Generation (free or catalog beams) asks a 135M model to find the right item among thousands; scoring asks it only
which of a few dozen plausible items it finds most likely. Per case:

1. candidates: the top ``per_source`` items of each of the ``sources`` (e.g. MostPop and ItemKNN, fitted by the
   harness on the same training data), minus the user's own items on the target platform;
2. ``llm``: the (zero-shot or tuned) LLM's log-likelihood of each candidate's answer line (its first
   ``score_tokens`` tokens) after the usual recommendation prompt (``Recommender.score_candidates``), cached per
   case and candidate list (JSON lines, resumable; other candidates for a case are scored and kept too), less
   ``a`` times the line's likelihood after the prompt with an empty profile (``Recommender.title_priors``, cached
   per item): a small model finds short famous titles likely whoever asks, and ``a`` (the ``calibration``) takes
   that share out. A tuned model's priors are its own, or with ``recommender.title_prior: base`` its base model's
   (the zero-shot model's, the ones a calibrated ranking loss trains against);
3. optionally fused with a ``prior`` classic model: ``z(llm) + w * z(prior)`` over the case's candidates (``z``:
   standardised within the case); ``w = inf`` is the prior's order with the LLM breaking its ties, so validation
   can also say that the LLM adds nothing to the prior.

``a`` is chosen on validation cases of a seeded sample of users by NDCG@10 (the LLM alone; ``a = 0``: raw
likelihoods), then ``w`` with that ``a`` (``w = 0``: the LLM alone). For a tuned adapter both are written into its
metadata (key ``rerank``; rows of cross-platform history only, as the library reads every platform's history);
``RecommenderConfig.for_adapter`` reads the calibration from there, so scored decoding
(``genrec recommend --decoding scored``) uses it too.

The candidates lead the ranking in that order; every other catalog item follows in the first source's order, so
full-catalog metrics are defined for every K.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from genrec.evaluation import metrics
from genrec.evaluation.fusion import store_in_adapter
from genrec.evaluation.generative import LEAD, GenerativeMethod, case_key
from genrec.llm import adapter_digest
from genrec.pipeline.fusion import scale_rows, standardise, tuning_cases
from genrec.pipeline.pool import candidate_pool
from genrec.pipeline.sources.base import Method, rank_cases
from genrec.pipeline.types import EvalCase, TrainData
from genrec.recommender import Request
from genrec.records import append_records, read_records

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, math.inf)  # inf: the prior's order, the LLM only breaks its ties
CALIBRATIONS = (0.0,)  # raw likelihoods unless a grid is given (configs give one)
TUNING_METRIC = "NDCG@10"
METADATA_KEY = "rerank"


class RerankMethod:
    """Candidates from classic models, ranked by the LLM's calibrated likelihood (and a tuned share of a prior's
    scores)."""

    def __init__(self, sources: Sequence[Method], llm: GenerativeMethod, *, name: str, per_source: int = 50,
                 prior: Method | None = None, weights: Sequence[float] = WEIGHTS,
                 calibrations: Sequence[float] = CALIBRATIONS, tune_users: int = 50, seed: int = 0,
                 cache_dir: Path | None = None) -> None:
        if not sources:
            raise ValueError("re-ranking needs at least one candidate source")
        if per_source < 1:
            raise ValueError(f"per_source must be at least 1, got {per_source}")
        if not weights or any(w < 0 for w in weights):
            raise ValueError(f"fusion weights must be non-negative: {list(weights)}")
        if not calibrations or any(not 0.0 <= a <= 1.0 for a in calibrations):
            raise ValueError(f"calibrations must lie in [0, 1]: {list(calibrations)}")
        if llm.config.calibration:
            raise ValueError("the re-ranker calibrates the LLM's scores itself: give it raw ones (calibration 0)")
        scopes = {m.history_scope for m in [*sources, llm, *([prior] if prior else [])]}
        if len(scopes) != 1:
            raise ValueError("the candidate sources, the prior and the LLM must read the same history scope")
        self.name = name
        self.history_scope = llm.history_scope
        self.sources, self.llm, self.prior = list(sources), llm, prior
        self.per_source = per_source
        self.weights = sorted(set(weights)) if prior is not None else [0.0]
        self.calibrations = sorted(set(calibrations))
        self.tune_users, self.seed = tune_users, seed
        self.weight: float | None = None
        self.calibration: float | None = None
        self.info: dict = {}
        # raw scores depend on neither the calibration nor whose title prior it takes out: keyed without them
        recommender = {k: v for k, v in vars(llm.config).items() if k not in ("calibration", "title_prior")}
        setup = {"llm": llm.llm_config.identity(), "recommender": recommender}
        if llm.llm_config.adapter:
            setup["adapter"] = adapter_digest(llm.llm_config.adapter)
        self.cache_path = cache_dir / f"scores__{self.history_scope}__{_digest(setup)}.jsonl" if cache_dir else None
        if llm.config.title_prior == "base":  # the base model's: shared by every adapter with the same prompts
            setup = {"llm": replace(llm.llm_config, adapter=None, adapter_scale=1.0).identity(),
                     "recommender": recommender}
        self.priors_path = cache_dir / f"priors__{_digest(setup)}.jsonl" if cache_dir else None
        self._scored: dict[tuple[str, tuple[str, ...]], list[float]] = {}  # (case key, candidates) -> raw scores
        self._priors: dict[tuple[str, str], float] = {}  # (platform, item) -> title prior
        self._train: TrainData | None = None

    def fit(self, train: TrainData, valid_cases: Sequence[EvalCase] | None = None) -> None:
        self._train = train
        for method in {id(m): m for m in [*self.sources, *([self.prior] if self.prior else [])]}.values():
            method.fit(train, valid_cases)
        self.llm.fit(train, valid_cases)
        self._scored = self._load_cache()
        self._priors = {(r["platform"], r["item"]): r["score"] for r in read_records(self.priors_path)}
        self.weight = 0.0
        if self.prior is None and len(self.calibrations) == 1:
            self.calibration = self.calibrations[0]
            return
        tune = tuning_cases(valid_cases or [], self.tune_users, self.seed)
        if not tune:
            raise ValueError("choosing a calibration or a fusion weight needs validation cases")
        by_calibration = self._grid("calibration", self.calibrations, tune)
        llm_alone = by_calibration[self.calibration]  # the calibration grid runs at w = 0: the LLM alone
        by_weight = self._grid("weight", self.weights, tune)
        self.info = {"rule": "z(LLM - a * title prior)" + (" + w * z(prior)" if self.prior else "")
                     + " over the candidates", "sources": [s.name for s in self.sources],
                     "per_source": self.per_source, "calibration": self.calibration,
                     "title_prior": self.llm.config.title_prior,
                     "by_calibration": {str(a): v for a, v in by_calibration.items()},
                     "llm_alone": llm_alone, "tuning_metric": TUNING_METRIC,
                     "tuning_cases": len(tune), "tuning_users": len({c.user_id for c in tune})}
        if self.prior is not None:
            self.info.update(prior=self.prior.name, fused=by_weight[self.weight],
                             weight=self.weight if math.isfinite(self.weight) else "inf",  # JSON has no inf
                             by_weight={str(w): v for w, v in by_weight.items()},
                             prior_alone=self._metric(self.prior, tune))
        if self.llm.llm_config.adapter and self.history_scope == "cross":  # what the library reads: every platform
            store_in_adapter(Path(self.llm.llm_config.adapter), self.info, key=METADATA_KEY)

    def _grid(self, setting: str, values: Sequence[float], tune: Sequence[EvalCase]) -> dict[float, float]:
        """NDCG@10 on ``tune`` for each value of ``setting`` (the others as set); keeps the best (ties: the
        smaller value)."""
        scores = {}
        for value in values:
            setattr(self, setting, value)
            scores[value] = self._metric(self, tune)
        setattr(self, setting, max(values, key=lambda v: (scores[v], -v)))
        return scores

    def _metric(self, method: Method, cases: Sequence[EvalCase]) -> float:
        return float(metrics.case_metrics(rank_cases(method, cases, self._train.catalogs))[TUNING_METRIC].mean())

    def score(self, cases: Sequence[EvalCase], platform: str) -> np.ndarray:
        if self._train is None or self.weight is None or self.calibration is None:
            raise RuntimeError("fit() first")
        catalog = self._train.catalogs[platform]
        position = {item: j for j, item in enumerate(catalog)}
        source_scores = [source.score(cases, platform) for source in self.sources]
        prior = None
        if self.prior is not None and self.weight > 0:  # a prior that is also a source has scored these cases
            shared = [s for source, s in zip(self.sources, source_scores, strict=True) if source is self.prior]
            prior = shared[0] if shared else self.prior.score(cases, platform)
        scored = self._score_missing(cases, platform, source_scores, catalog)
        priors = self._title_priors(platform, [item for items, _ in scored for item in items]) \
            if self.calibration else {}
        out = scale_rows(source_scores[0].astype(np.float64))  # non-candidates: the first source's order
        for row, (items, llm) in enumerate(scored):
            columns = np.array([position[item] for item in items], dtype=int)
            llm = np.asarray(llm)
            if self.calibration:
                llm = llm - self.calibration * np.array([priors[item] for item in items])
            fused = standardise(llm)
            if prior is not None:
                prior_z = standardise(prior[row, columns])
                fused = prior_z + 1e-6 * fused if math.isinf(self.weight) else fused + self.weight * prior_z
            order = np.argsort(-fused, kind="stable")
            out[row, columns[order]] = LEAD - np.arange(len(order)) / len(order)
        return out.astype(np.float32)

    def _candidates(self, case: EvalCase, rows: Sequence[np.ndarray], catalog: Sequence[str]) -> list[str]:
        """The top ``per_source`` items of every source's score row, without the case's own target-platform
        items, in source order."""
        return candidate_pool(dict(enumerate(rows)), catalog, case.owned(), self.per_source).items

    def _score_missing(self, cases: Sequence[EvalCase], platform: str, source_scores: Sequence[np.ndarray],
                       catalog: Sequence[str]) -> list[tuple[tuple[str, ...], list[float]]]:
        """Per case, its candidates and their LLM scores: from the cache when this case was scored for these
        candidates (another method's sources give other candidates: both are kept), else scored now."""
        out = []
        for row, case in enumerate(cases):  # one at a time: each case reaches the cache as soon as it is scored
            items = tuple(self._candidates(case, [s[row] for s in source_scores], catalog))
            if (case_key(case), items) not in self._scored:
                request = Request(platform, history=self.llm.history(case), candidates=items)
                [(scored_items, llm)] = self.llm.recommender.score_candidates([request])
                if tuple(scored_items) != items:  # both leave the user's own items out: they must agree
                    raise RuntimeError(f"the recommender scored other candidates than asked for {case_key(case)}")
                self._remember(case_key(case), items, llm.tolist())
            out.append((items, self._scored[case_key(case), items]))
        return out

    def _title_priors(self, platform: str, items: Sequence[str]) -> dict[str, float]:
        """``Recommender.title_priors`` of ``items`` (item -> prior), the missing ones computed in one pass and
        added to the per-item cache file."""
        missing = [item for item in dict.fromkeys(items) if (platform, item) not in self._priors]
        if missing:
            scores = self.llm.recommender.title_priors(platform, missing).tolist()
            self._priors.update({(platform, item): score for item, score in zip(missing, scores, strict=True)})
            append_records(self.priors_path, [{"platform": platform, "item": item, "score": score}
                                              for item, score in zip(missing, scores, strict=True)])
        return {item: self._priors[platform, item] for item in items}

    def _remember(self, key: str, items: Sequence[str], scores: list[float]) -> None:
        self._scored[key, tuple(items)] = scores
        append_records(self.cache_path, [{"key": key, "items": list(items), "scores": scores}])

    def _load_cache(self) -> dict[tuple[str, tuple[str, ...]], list[float]]:
        return {(record["key"], tuple(record["items"])): record["scores"] for record in read_records(self.cache_path)}


def _digest(setup: dict) -> str:
    return hashlib.sha256(json.dumps(setup, sort_keys=True, default=str).encode()).hexdigest()[:12]
