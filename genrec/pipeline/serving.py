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
the registry changes (a refresh, a rollback), without dropping a request, and nothing the served one learned is
lost: before it serves, the incoming version re-adds the platforms onboarded in memory that it lacks, and learns
(``Pipeline.update``) every stored event it has not: those after its data window, those it held out to be judged
on, and those of the re-added platforms. Events posted meanwhile are caught up under the lock that posting holds
(``learning``), so none falls between the two versions. The champion loaded at startup catches up the same way."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from genrec.data.schema import HistoryItem
from genrec.data.store import Store
from genrec.errors import GenrecError
from genrec.pipeline import Pipeline
from genrec.pipeline.fitting import dataset_of, default_pipeline, history_context, user_context
from genrec.pipeline.registry import Registry, Version, is_registry
from genrec.pipeline.types import Context, Interaction, ScoredItem

logger = logging.getLogger("genrec.server")


class Pipelines:
    def __init__(self, store: Store, *, folder=None, defaults: bool = True) -> None:
        self.store, self.defaults = store, defaults
        self.registry = Registry(folder) if folder is not None and is_registry(folder) else None
        self._stamp = self.registry.stamp() if self.registry else None
        self._swapping = threading.Lock()
        # held while events are posted (store write and observe) and while a swap's last catch-up and the swap run
        self.learning = threading.Lock()
        self._added: dict[str, tuple] = {}  # platform onboarded in memory -> add_platform's arguments
        self.configured = None
        if self.registry is not None:
            self.configured = self._catch_up_version(self.registry.champion())
        elif folder is not None:
            self.configured = Pipeline.load(folder, store=store)
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
        """Load the registry's champion when it changed (a refresh promoted a version, or a rollback), bring it up
        to what the served one learned (see the module docstring) and swap it in; answers in flight finish on the
        version they started with. The load runs on its own thread, so no request waits for it."""
        if self.registry is None or self.registry.stamp() == self._stamp or not self._swapping.acquire(blocking=False):
            return

        def swap() -> None:
            try:
                stamp = self.registry.stamp()
                self._swap(self.registry.champion(), stamp)
            except Exception:  # a broken version never takes the service down: the old champion keeps serving
                logger.exception("could not load the registry's champion; the previous version keeps serving")
                self._stamp = self.registry.stamp()
            finally:
                self._swapping.release()

        threading.Thread(target=swap, name="genrec-swap", daemon=True).start()

    def _load(self, version: Version | None) -> Pipeline:
        if version is None:
            self.registry.champion_path()  # raises the registry's "no champion" error
        return Pipeline.load(self.registry.root / version.name, store=self.store)

    def _swap(self, version: Version | None, stamp) -> None:
        champion, known = self._load(version), {}
        if self.configured is not None:
            champion.share_scorer(self.configured)  # the loaded model stays
        learned = set(self._platforms(champion))
        self._re_add(champion)
        written = self.store.version
        self._fold(champion, version, learned, known)
        with self.learning:  # no event is posted (nor platform added) from here to the swap
            if self._re_add(champion) or self.store.version != written:
                self._fold(champion, version, learned, known)
            with self._pending_lock:
                if self.configured is not None:  # what was queued for the old one is in the store: learned above
                    self._pending.pop(id(self.configured), None)
                self.configured, self._stamp = champion, stamp
        logger.info("serving pipeline %s version %s", champion.name, champion.version)

    def _catch_up_version(self, version: Version | None) -> Pipeline:
        """The registry's champion at startup, having learned every stored event it has not."""
        champion = self._load(version)
        self._fold(champion, version, set(self._platforms(champion)), {})
        return champion

    def _re_add(self, champion: Pipeline) -> list[str]:
        """Add to ``champion`` the platforms onboarded in memory that it lacks (``add_platform``); the ones added."""
        added = []
        for platform, arguments in list(self._added.items()):
            if platform in self._platforms(champion):
                continue
            try:
                champion.add_platform(platform, *arguments)
            except GenrecError as exc:
                logger.warning("pipeline %s version %s does not rank the platform %r added in memory: %s",
                               champion.name, champion.version, platform, exc)
                continue
            added.append(platform)
        return added

    def _fold(self, champion: Pipeline, version: Version, learned: set[str], known: dict[str, set]) -> int:
        """Fold into ``champion`` (loaded from ``version``, which learned the events of the ``learned`` platforms up
        to its data window, less its held-out ones) every stored event of its platforms it has not learned:
        counted once per (user, item) as a refit would (``known``: each user's pairs counted so far, kept across
        calls). Returns the number of users who gained items."""
        from genrec.evaluation.protocol import interaction_sequences

        platforms = sorted(self._platforms(champion))
        held = {(str(u), str(p), str(i), float(t)) for u, p, i, t in version.holdout}
        after = datetime.fromtimestamp(max(version.window_end - 1, 0), UTC).replace(tzinfo=None)
        events = self.store.events_since(platforms, after, whole=sorted(set(platforms) - learned),
                                         users=sorted({u for u, *_ in held}))
        gained = 0
        for user, seq in interaction_sequences(events).items():
            if user not in known:
                known[user] = {(x.platform, x.item_id) for x in seq if x.platform in learned and
                               x.timestamp <= version.window_end and
                               (user, x.platform, x.item_id, x.timestamp) not in held}
            added = {(x.platform, x.item_id) for x in seq} - known[user]
            if added:
                champion.update(_interactions(known[user]), _interactions(added))
                known[user] |= added
                gained += 1
        if gained:
            logger.info("pipeline %s version %s learned the new items of %d user(s) since its data window",
                        champion.name, champion.version, gained)
        return gained

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
        with self.learning:  # a swap in progress re-adds it to the incoming version
            pipeline = self.configured
            if pipeline is None:
                return []
            try:
                pipeline.add_platform(platform, items, titles, details)
            except GenrecError as exc:
                logger.warning("pipeline %s does not rank the new platform %r: %s", pipeline.name, platform, exc)
                return []
            self._added[platform] = (items, titles, details)
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
        pipeline, context, items = self.rank(platform, user_id=user_id, history=history, k=k, exclude=exclude,
                                             candidates=candidates)
        return pipeline, pipeline.explain(context, items) if explain else items

    def rank(self, platform: str, *, user_id: str | None, history: Sequence[HistoryItem] | None = None, k: int,
             exclude: Sequence[str] = (), candidates: Sequence[str] | None = None,
             ) -> tuple[Pipeline, Context, list[ScoredItem]]:
        """``recommend`` without rationales, with the user's context: an ``Explanation`` of it adds them later,
        batched with other users' (the server's worker does)."""
        pipeline = self.get(platform)
        self._catch_up(pipeline)
        context = history_context(user_id, platform, history) if history is not None else \
            user_context(self.store, user_id, platform)
        return pipeline, context, pipeline.recommend(context, k, candidates=candidates, exclude=exclude)

    @staticmethod
    def _platforms(pipeline: Pipeline) -> set[str]:
        return set(next(iter(pipeline.sources.values())).catalogs)


@dataclass
class Explanation:
    """A ranked list still without rationales. Lists of one pipeline are explained together, with one batched
    generation (``answer_many``): the server's worker gathers its clients' lists into one batch."""

    pipeline: Pipeline
    context: Context
    items: list[ScoredItem]

    def key(self) -> int:
        return id(self.pipeline)

    @staticmethod
    def answer_many(requests: Sequence[Explanation]) -> list[list[ScoredItem]]:
        """The explained items of each request, in order (all of one ``key``)."""
        return requests[0].pipeline.explain_many([(request.context, request.items) for request in requests])


def _interactions(pairs: set[tuple[str, str]]) -> list[Interaction]:
    return [Interaction(platform, item, 0.0) for platform, item in sorted(pairs)]
