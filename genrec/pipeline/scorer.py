"""The LLM stage: how likely the (zero-shot or tuned) LLM finds each candidate's answer line for this user.

For one context and its pooled candidates, the score of an item is the summed log-probability of the first
``score_tokens`` tokens of its answer line (``1. "Title"``) after the recommendation prompt built from the user's
history, computed over one shared prompt cache (``Recommender.score_candidates``). ``priors`` are the same lines'
likelihoods after a prompt with an empty profile (the model's title prior: short, famous titles score high for
anybody); fusion subtracts a tuned share of them (the calibration). Scores and priors are cached per context and
item (JSON lines, when a cache folder is given), so an evaluation resumes and re-tuning costs no LLM call.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genrec.data.store import Store
from genrec.errors import GenrecError
from genrec.llm import LLMConfig, adapter_digest
from genrec.pipeline.types import Context, HistoryScope, TrainData, history_items, scoped_history
from genrec.records import append_records, read_records


@dataclass
class LLMSpec:
    """Which LLM scores and how: ``llm`` holds ``LLMConfig`` fields (model, adapter, dtype, device ...);
    ``calibrations``: the title-prior shares fusion may choose from on validation users."""

    llm: dict[str, Any] = field(default_factory=dict)
    score_tokens: int = 16
    calibrations: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    title_prior: str = "model"

    def __post_init__(self) -> None:
        if not self.calibrations or any(not 0.0 <= a <= 1.0 for a in self.calibrations):
            raise GenrecError(f"llm.calibrations must lie in [0, 1]: {self.calibrations}")
        if self.score_tokens < 1:
            raise GenrecError(f"llm.score_tokens must be at least 1, got {self.score_tokens}")
        try:
            LLMConfig(**self.llm)
        except TypeError as exc:
            raise GenrecError(f"llm.llm: {exc}") from exc

    @property
    def config(self) -> LLMConfig:
        return LLMConfig(**self.llm)


class LLMScorer:
    """Raw answer-line log-likelihoods of candidates (``score``) and their title priors (``priors``)."""

    name = "llm"

    def __init__(self, spec: LLMSpec, store: Store, *, history_scope: HistoryScope = "cross",
                 embedder: object | None = None, cache_dir: Path | None = None, recommender=None) -> None:
        """``recommender``: score with this (loaded) recommender's LLM instead of loading ``spec``'s, e.g. the model
        a training run is tuning; its scores must not be cached to disk then (``cache_dir`` None)."""
        self.spec, self.store, self.history_scope = spec, store, history_scope
        self._embedder = embedder
        self._recommender = recommender
        self.titles: dict[tuple[str, str], str] = {}
        setup = {"llm": spec.config.identity(), "score_tokens": spec.score_tokens, "title_prior": spec.title_prior}
        if spec.config.adapter:
            setup["adapter"] = adapter_digest(spec.config.adapter)
        digest = hashlib.sha256(json.dumps(setup, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.cache_path = cache_dir / f"llm-scores__{history_scope}__{digest}.jsonl" if cache_dir else None
        self.priors_path = cache_dir / f"llm-priors__{digest}.jsonl" if cache_dir else None
        self._scores = {(r["key"], r["item"]): r["score"] for r in read_records(self.cache_path)}
        self._priors = {(r["platform"], r["item"]): r["score"] for r in read_records(self.priors_path)}

    def fit(self, train: TrainData) -> None:
        """Nothing is learned: the titles the prompts name come from the training snapshot's catalogs."""
        self.titles = dict(train.titles)

    @property
    def recommender(self):
        if self._recommender is None:
            from genrec.recommender import Recommender, RecommenderConfig

            config = RecommenderConfig(decoding="scored", calibration=0.0, score_tokens=self.spec.score_tokens,
                                       title_prior=self.spec.title_prior)
            self._recommender = Recommender(self.store, llm_config=self.spec.config, embedder=self._embedder,
                                            config=config)
        return self._recommender

    def score(self, context: Context, items: Sequence[str]) -> np.ndarray:
        """Raw log-likelihood of each item's answer line for this context (cached per context and item)."""
        from genrec.recommender import Request

        key = context_key(context, self.history_scope)
        missing = [item for item in dict.fromkeys(items) if (key, item) not in self._scores]
        if missing:
            history = history_items(context.user_id or "", scoped_history(context, self.history_scope), self.titles)
            request = Request(context.platform, history=history, candidates=tuple(missing))
            [(scored, values)] = self.recommender.score_candidates([request])
            if list(scored) != missing:  # both leave the user's own items out: they must agree
                raise RuntimeError(f"the LLM scored other candidates than asked for ({key})")
            self._scores.update({(key, item): float(v) for item, v in zip(scored, values, strict=True)})
            append_records(self.cache_path, [{"key": key, "item": item, "score": float(v)}
                                             for item, v in zip(scored, values, strict=True)])
        return np.array([self._scores[key, item] for item in items], dtype=np.float64)

    def priors(self, platform: str, items: Sequence[str]) -> np.ndarray:
        """The title prior of each item (cached per item)."""
        missing = [item for item in dict.fromkeys(items) if (platform, item) not in self._priors]
        if missing:
            values = self.recommender.title_priors(platform, missing).tolist()
            self._priors.update({(platform, item): v for item, v in zip(missing, values, strict=True)})
            append_records(self.priors_path, [{"platform": platform, "item": item, "score": v}
                                              for item, v in zip(missing, values, strict=True)])
        return np.array([self._priors[platform, item] for item in items], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self.spec)


def context_key(context: Context, scope: HistoryScope) -> str:
    """What the LLM's scores of a context depend on: its platform and the history it reads."""
    history = scoped_history(context, scope)
    digest = hashlib.sha256(json.dumps([[x.platform, x.item_id, x.timestamp] for x in history]).encode())
    return f"{context.platform}|{digest.hexdigest()[:16]}"
