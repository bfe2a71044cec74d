"""genrec's generate-then-ground recommender as an evaluated method.

For each case the recommender sees only the case's history (as the protocol built it) and train-only popularity.
Its top-``list_length`` grounded items lead the ranking in their order; every other catalog item follows by cosine
similarity to the history's profile vector (the recommender's own fill rule), so full-catalog metrics are defined
for every K. The LLM's answers are cached per case (JSON lines), so a long run resumes where it stopped; grounding
runs again every time, with the variant's own train-only popularity, so variants and grounding settings
(``popularity_weight``) share one generation pass.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from genrec.data.schema import HistoryItem
from genrec.data.store import Store
from genrec.embedding import Embedder
from genrec.llm import LLMConfig, adapter_digest
from genrec.pipeline.sources.popularity import popularity_counts
from genrec.pipeline.types import EvalCase, HistoryScope, TrainData, history_items, scoped_history
from genrec.recommender import RecommendationList, Recommender, RecommenderConfig, Request
from genrec.records import append_records, read_records

LEAD = 10.0  # grounded items score LEAD - rank/len, above every cosine similarity
SAVE_EVERY = 32  # cases generated between cache writes
GROUNDING_ONLY = ("popularity_weight", "min_similarity")  # settings that do not change what the LLM writes
SCORING_ONLY = ("n_candidates", "score_tokens", "calibration", "title_prior")  # settings of "scored" decoding alone


class GenerativeMethod:
    """Zero-shot (or, with ``adapter``, instruction-tuned) LLM candidates grounded to the catalog."""

    def __init__(self, store: Store, *, history_scope: HistoryScope = "cross", llm_config: LLMConfig | None = None,
                 config: RecommenderConfig | None = None, embedder: Embedder | None = None,
                 list_length: int = 20, cache_dir: Path | None = None, name: str = "genrec",
                 recommender: Recommender | None = None) -> None:
        self.name = name
        self.history_scope = history_scope
        self.store = store
        self.llm_config = llm_config or LLMConfig()
        self.config = config or RecommenderConfig()
        self.embedder = embedder
        self.list_length = list_length
        ignored = GROUNDING_ONLY + (SCORING_ONLY if self.config.decoding != "scored" else ())
        generation = {k: v for k, v in vars(self.config).items() if k not in ignored}
        shape = [self.llm_config.identity(), generation]
        if self.llm_config.adapter:  # the adapter's content, not only its folder: a retrained one answers anew
            shape.append(adapter_digest(self.llm_config.adapter))
        setup = json.dumps(shape, sort_keys=True, default=str)
        digest = hashlib.sha256(setup.encode()).hexdigest()[:12]
        # keyed by what shapes the LLM's answers, not by the method's label: differently named runs share answers
        self.cache_path = cache_dir / f"generations__{history_scope}__{digest}.jsonl" if cache_dir else None
        self._recommender = recommender
        self._train: TrainData | None = None
        self._outputs: dict[str, str] = {}  # case key -> the LLM's answer
        self._stats: dict[str, dict] = {}  # case key -> grounding outcome of this run

    @classmethod
    def from_options(cls, options: dict, *, store: Store, history_scope: HistoryScope, embedder: Embedder | None,
                     cache_dir: Path | None, name: str) -> GenerativeMethod:
        options = dict(options)
        llm = LLMConfig(**options.pop("llm", {}))
        config = RecommenderConfig.for_adapter(llm.adapter, **options.pop("recommender", {}))
        return cls(store, history_scope=history_scope, llm_config=llm, config=config, embedder=embedder,
                   cache_dir=cache_dir, name=name, **options)

    def fit(self, train: TrainData, valid_cases: Sequence[EvalCase] | None = None) -> None:
        """Nothing is learned here (tuning is `genrec train`); train-only popularity replaces the store's."""
        self._train = train
        popularity = {p: dict(zip(items, popularity_counts(train, p).astype(float).tolist(), strict=True))
                      for p, items in train.catalogs.items()}
        if self._recommender is None:
            self._recommender = Recommender(self.store, llm_config=self.llm_config, embedder=self.embedder,
                                            config=self.config, popularity=popularity)
        else:
            self._recommender._fixed_popularity = popularity
        self._outputs = self._load_cache()

    @property
    def recommender(self) -> Recommender:
        if self._recommender is None:
            raise RuntimeError("fit() first")
        return self._recommender

    def history(self, case: EvalCase) -> list[HistoryItem]:
        """The case's history (in this method's scope) as the recommender reads it."""
        return history_items(case.user_id, scoped_history(case, self.history_scope), self._train.titles)

    def score(self, cases: Sequence[EvalCase], platform: str) -> np.ndarray:
        if self._train is None or self._recommender is None:
            raise RuntimeError("fit() first")
        recommender = self._recommender
        requests = {case_key(c): Request(platform, history=self.history(c), k=self.list_length) for c in cases}
        todo = [key for key in requests if key not in self._outputs]
        for start in range(0, len(todo), SAVE_EVERY):  # answers reach the cache as they come (resumable)
            chunk = todo[start : start + SAVE_EVERY]
            for key, result in zip(chunk, recommender.recommend_many([requests[k] for k in chunk]), strict=True):
                self._remember(key, result.raw_output)
                self._record(key, result)
        again = [key for key in requests if key not in todo]
        if again:
            results = recommender.recommend_many([requests[k] for k in again],
                                                 outputs=[self._outputs[k] for k in again])
            for key, result in zip(again, results, strict=True):
                self._record(key, result)
        catalog = self._train.catalogs[platform]
        index = recommender.index(platform)
        vectors = index.vectors(catalog)
        position = {item: j for j, item in enumerate(catalog)}
        scores = np.zeros((len(cases), len(catalog)), dtype=np.float32)
        for row, case in enumerate(cases):
            stats = self._stats[case_key(case)]
            if stats["profile_vector"] is not None:
                scores[row] = vectors @ stats["profile_vector"]
            items = stats["items"]
            for rank, item in enumerate(items):
                if item in position:
                    scores[row, position[item]] = LEAD - rank / len(items)
        return scores

    def case_stats(self, cases: Sequence[EvalCase]) -> dict[str, list[float | None]]:
        """Per case: share of generated titles that were exact catalog titles, and mean grounding similarity."""
        stats = [self._stats[case_key(c)] for c in cases]
        return {"validity": [s["validity"] if s["n_generated"] else 0.0 for s in stats],
                "grounding_similarity": [s["grounding_similarity"] for s in stats]}

    def _record(self, key: str, result: RecommendationList) -> None:
        self._stats[key] = {"items": [i.item_id for i in result.items], "validity": result.validity,
                            "grounding_similarity": result.mean_similarity, "n_generated": result.n_generated,
                            "profile_vector": result.profile_vector}

    def _remember(self, key: str, output: str) -> None:
        self._outputs[key] = output
        append_records(self.cache_path, [{"key": key, "raw_output": output}])

    def _load_cache(self) -> dict[str, str]:
        return {record["key"]: record["raw_output"] for record in read_records(self.cache_path)}


def case_key(case: EvalCase) -> str:
    return f"{case.user_id}|{case.platform}|{case.target}|{case.timestamp}|{case.split}"
