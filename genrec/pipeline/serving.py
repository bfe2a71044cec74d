"""Which pipeline answers a recommendation: a configured pipeline folder (or a registry's champion) for its
platforms, else the default
pipeline of the data set (built-in, or defined in the store) a platform belongs to (loaded, or fitted on first use
and cached by the store's content). The server's recommendations and reports and the CLI's reports use it; in the
server it runs on the model worker's thread.

Events posted while the server runs reach every source at once through the user's history, which each request
reads from the store (ItemKNN sums the similarities of the history's items, SASRec reads the sequence, the LLM the
profile). They also reach what popularity and ItemKNN learned: each posted batch's new (user, item) pairs are
queued for every pipeline loaded at the time and folded into their counts on the worker thread before its next
answer (``Pipeline.update``, as a refit would count them); SASRec learns them at the next refresh or fit (a
restart fits the default pipeline anew when the store has changed).

Served from a registry (``genrec.pipeline.registry``), the champion is swapped for the promoted one as soon as
the registry changes (a refresh, a rollback), without dropping a request."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence

from genrec.data.schema import HistoryItem
from genrec.data.store import Store
from genrec.errors import GenrecError
from genrec.pipeline import Pipeline
from genrec.pipeline.fitting import dataset_of, default_pipeline, history_context, user_context
from genrec.pipeline.registry import Registry, is_registry
from genrec.pipeline.types import Interaction, ScoredItem

logger = logging.getLogger("genrec.server")


class Pipelines:
    def __init__(self, store: Store, *, folder=None, defaults: bool = True) -> None:
        self.store, self.defaults = store, defaults
        self.registry = Registry(folder) if folder is not None and is_registry(folder) else None
        self._stamp = self.registry.stamp() if self.registry else None
        self._swapping = threading.Lock()
        self.configured = Pipeline.load(folder, store=store) if folder is not None else None
        self._fitted: dict[str, Pipeline] = {}  # data set -> its default pipeline
        self._lock = threading.Lock()
        self._pending: dict[int, list[tuple[set, set]]] = {}  # id(pipeline) -> (items before, items added)
        self._pending_lock = threading.Lock()  # apart from _lock, which a first-use fit holds for minutes

    def handles(self, platform: str) -> bool:
        """Whether a pipeline answers for ``platform`` (cheap: nothing is loaded or fitted)."""
        if self.configured is not None and platform in self._platforms(self.configured):
            return True
        return self.defaults and dataset_of(platform, self.store) is not None

    def swap_if_promoted(self) -> None:
        """Load the registry's champion when it changed (a refresh promoted a version, or a rollback) and swap it
        in; answers in flight finish on the version they started with. The load runs on its own thread, so no
        request waits for it."""
        if self.registry is None or self.registry.stamp() == self._stamp or not self._swapping.acquire(blocking=False):
            return

        def swap() -> None:
            try:
                stamp = self.registry.stamp()
                champion = Pipeline.load(self.registry.champion_path(), store=self.store)
                if self.configured is not None:
                    champion.share_scorer(self.configured)  # the loaded model stays
                self.configured, self._stamp = champion, stamp
            except Exception:  # a broken version never takes the service down: the old champion keeps serving
                logger.exception("could not load the registry's champion; the previous version keeps serving")
                self._stamp = self.registry.stamp()
            finally:
                self._swapping.release()

        threading.Thread(target=swap, name="genrec-swap", daemon=True).start()

    def get(self, platform: str) -> Pipeline:
        self.swap_if_promoted()
        if self.configured is not None and platform in self._platforms(self.configured):
            return self.configured
        dataset = dataset_of(platform, self.store)
        with self._lock:
            if dataset not in self._fitted:
                self._fitted[dataset] = default_pipeline(self.store, dataset)
            return self._fitted[dataset]

    def loaded(self) -> list[Pipeline]:
        return [*([self.configured] if self.configured is not None else []), *self._fitted.values()]

    def add_platform(self, platform: str, items: Sequence[str], titles: Mapping[tuple[str, str], str],
                     details: Mapping[tuple[str, str], str] | None = None) -> list[str]:
        """Let the configured pipeline rank a platform onboarded while the server runs (``Pipeline.add_platform``;
        in memory only: ``genrec platform add --pipeline DIR`` keeps it in the folder). Runs on the worker thread.
        The names of the pipelines that rank it now: none without a configured pipeline, or when one of its
        sources needs a refit for it (logged)."""
        pipeline = self.configured
        if pipeline is None:
            return []
        try:
            pipeline.add_platform(platform, items, titles, details)
        except GenrecError as exc:
            logger.warning("pipeline %s does not rank the new platform %r: %s", pipeline.name, platform, exc)
            return []
        return [pipeline.name]

    def observe(self, before: dict[str, set[tuple[str, str]]], after: dict[str, set[tuple[str, str]]]) -> None:
        """Queue the (platform, item) pairs each user gained (``after`` less ``before``, the store's pairs around an
        import) for every pipeline loaded now; a pipeline fitted later reads them from the store."""
        gained = [(before.get(user, set()), items - before.get(user, set())) for user, items in after.items()]
        gained = [(had, added) for had, added in gained if added]
        if not gained:
            return
        with self._pending_lock:
            for pipeline in self.loaded():
                self._pending.setdefault(id(pipeline), []).extend(gained)

    def _catch_up(self, pipeline: Pipeline) -> None:
        with self._pending_lock:
            pending = self._pending.pop(id(pipeline), [])
        for had, added in pending:
            pipeline.update(_interactions(had), _interactions(added))

    def recommend(self, platform: str, *, user_id: str | None, history: Sequence[HistoryItem] | None = None,
                  k: int, explain: bool, exclude: Sequence[str] = (),
                  candidates: Sequence[str] | None = None) -> tuple[Pipeline, list[ScoredItem]]:
        """The pipeline for ``platform`` and its top ``k`` for the user (stored, or an inline ``history``)."""
        pipeline = self.get(platform)
        self._catch_up(pipeline)
        context = history_context(user_id, platform, history) if history is not None else \
            user_context(self.store, user_id, platform)
        return pipeline, pipeline.recommend(context, k, explain=explain, candidates=candidates, exclude=exclude)

    def answer(self, platform: str, *, user_id: str | None, history: Sequence[HistoryItem] | None, k: int,
               explain: bool, exclude: Sequence[str] = (), candidates: Sequence[str] | None = None) -> dict:
        """The answer of ``POST /v1/recommend`` from a pipeline."""
        started = time.perf_counter()
        pipeline, items = self.recommend(platform, user_id=user_id, history=history, k=k, explain=explain,
                                         exclude=exclude, candidates=candidates)
        return {"user_id": user_id, "platform": platform, "k": k, "pipeline": pipeline.name,
                "version": pipeline.version,
                "seconds": time.perf_counter() - started,
                "items": [{"rank": item.rank, "item_id": item.item_id, "title": item.title, "platform": platform,
                           "score": item.score, "similarity": None, "source": item.origin, "generated_text": None,
                           "rationale": item.rationale, "evidence": list(item.evidence), "sources": item.sources,
                           "llm": item.llm, "rationale_source": item.rationale_source} for item in items]}

    @staticmethod
    def _platforms(pipeline: Pipeline) -> set[str]:
        return set(next(iter(pipeline.sources.values())).catalogs)


def _interactions(pairs: set[tuple[str, str]]) -> list[Interaction]:
    return [Interaction(platform, item, 0.0) for platform, item in sorted(pairs)]
