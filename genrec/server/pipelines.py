"""Which pipeline answers a recommendation: the server's configured pipeline folder for its platforms, else the
default pipeline of the data set (built-in, or defined in the store) a platform belongs to (fitted on first use,
cached by the store's content, so events posted since are in it after the next fit). Runs on the model worker's
thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from genrec.data.schema import HistoryItem
from genrec.data.store import Store
from genrec.pipeline import Pipeline
from genrec.pipeline.fitting import dataset_of, default_pipeline, history_context, user_context


class Pipelines:
    def __init__(self, store: Store, *, folder=None, defaults: bool = True) -> None:
        self.store, self.defaults = store, defaults
        self.configured = Pipeline.load(folder, store=store) if folder is not None else None
        self._fitted: dict[str, tuple[int, Pipeline]] = {}  # data set -> (store version, its default pipeline)
        self._lock = threading.Lock()

    def handles(self, platform: str) -> bool:
        """Whether a pipeline answers for ``platform`` (cheap: nothing is loaded or fitted)."""
        if self.configured is not None and platform in self._platforms(self.configured):
            return True
        return self.defaults and dataset_of(platform, self.store) is not None

    def get(self, platform: str) -> Pipeline:
        if self.configured is not None and platform in self._platforms(self.configured):
            return self.configured
        dataset = dataset_of(platform, self.store)
        with self._lock:
            cached = self._fitted.get(dataset)
            if cached is None or cached[0] != self.store.version:
                cached = (self.store.version, default_pipeline(self.store, dataset))
                self._fitted[dataset] = cached
        return cached[1]

    def answer(self, platform: str, *, user_id: str | None, history: Sequence[HistoryItem] | None, k: int,
               explain: bool, exclude: Sequence[str] = (), candidates: Sequence[str] | None = None) -> dict:
        """The answer of ``POST /v1/recommend`` from a pipeline."""
        started = time.perf_counter()
        pipeline = self.get(platform)
        context = history_context(user_id, platform, history) if history is not None else \
            user_context(self.store, user_id, platform)
        items = pipeline.recommend(context, k, explain=explain, candidates=candidates, exclude=exclude)
        return {"user_id": user_id, "platform": platform, "k": k, "pipeline": pipeline.name,
                "seconds": time.perf_counter() - started,
                "items": [{"rank": item.rank, "item_id": item.item_id, "title": item.title, "platform": platform,
                           "score": item.score, "similarity": None, "source": item.origin, "generated_text": None,
                           "rationale": item.rationale, "evidence": list(item.evidence), "sources": item.sources,
                           "llm": item.llm, "rationale_source": item.rationale_source} for item in items]}

    @staticmethod
    def _platforms(pipeline: Pipeline) -> set[str]:
        return set(next(iter(pipeline.sources.values())).catalogs)
