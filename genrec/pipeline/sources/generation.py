"""LLMGeneration: the LLM writes item titles for the user, grounded to catalog ids (generate-then-ground).

The titles are written and grounded by the generate-then-ground recommender (``genrec.recommender.Recommender``:
the same profile prompt, free or catalog-constrained decoding and grounding), run on the store-less context's
history titled from the fitted catalogs. Only the items the LLM wrote are proposed; the rest of the catalog scores
``floor``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from genrec.errors import GenrecError
from genrec.pipeline.sources.base import CandidateSource
from genrec.pipeline.sources.popularity import popularity_counts
from genrec.pipeline.types import Context, EvalCase, HistoryScope, Interaction, TrainData, history_items, scoped_history

GENERATED = ("exact", "neighbour")  # grounding's sources of items the LLM wrote (the others are its fills)
CACHED_CONTEXTS = 4096


class LLMGeneration(CandidateSource):
    """score(user, j) = ``n_generate - r`` for the item grounded from the LLM's ``r``-th title (0-based, best
    first after grounding: exact title matches in the order written, then embedding neighbours by similarity),
    ``floor`` (0) for every item it did not write.

    ``decoding``: ``"catalog"`` (beam search constrained to the target platform's titles: ``n_generate`` beams,
    each a real title, ranked by the model's likelihood) or ``"free"`` (the model writes ``n_generate`` lines,
    grounded by exact title, else nearest title embedding). ``llm``: ``LLMConfig`` fields (default: the pipeline's
    ``llm``, else the default model); the pipeline lends its loaded model (``llm`` resource: a loader shared
    with its LLM scorer), so one model serves both. Nothing is learned: ``fit`` keeps the catalogs, titles (the
    prompt names the history by them) and train popularity (which of several items sharing a title an exact match
    picks). Generating needs the event store (its platforms, verbs and catalog index); answers are cached per
    context, so scoring a context twice generates once.
    """

    kind = "generation"
    adds_platforms = True
    needs_store = True
    floor: ClassVar[float | None] = 0.0
    OPTIONS = ("decoding", "n_generate", "llm", "batch_size")

    def __init__(self, decoding: str = "catalog", n_generate: int = 10, llm: dict[str, Any] | None = None,
                 batch_size: int = 8, history_scope: HistoryScope = "cross", *, store=None,
                 encoder: object | None = None, llm_loader: Callable[[dict[str, Any] | None], Any] | None = None,
                 ) -> None:
        from genrec.llm import LLMConfig

        if decoding not in ("free", "catalog"):
            raise GenrecError(f"generation: decoding must be 'free' or 'catalog', got {decoding!r}")
        if n_generate < 1 or batch_size < 1:
            raise GenrecError(f"generation: n_generate and batch_size must be at least 1, got {n_generate}, "
                              f"{batch_size}")
        if llm is not None:
            try:
                LLMConfig(**llm)
            except TypeError as exc:
                raise GenrecError(f"generation: llm: {exc}") from exc
        self.name = "LLMGeneration"
        self.history_scope = history_scope
        self.decoding, self.n_generate, self.llm, self.batch_size = decoding, n_generate, llm, batch_size
        self._store, self._encoder, self._llm_loader = store, encoder, llm_loader
        self._recommender = None
        self.titles: dict[tuple[str, str], str] = {}
        self._popularity: dict[str, dict[str, float]] = {}
        self._answers: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    # -- fitting: nothing to learn ---------------------------------------------------------------------
    def fit(self, train: TrainData, valid_cases: Sequence[EvalCase] | None = None) -> None:
        self.catalogs = train.catalogs
        self.titles = dict(train.titles)
        self._popularity = {platform: dict(zip(items, popularity_counts(train, platform).astype(float).tolist(),
                                               strict=True))
                            for platform, items in train.catalogs.items()}
        self._answers.clear()
        self._recommender = None  # its popularity changed

    def grow(self, catalogs: dict[str, list[str]]) -> bool:
        """New items are proposable as soon as the store's catalog index holds them (nothing was learned)."""
        self.catalogs = catalogs
        return True

    def update(self, before: Sequence[Interaction], new: Sequence[Interaction]) -> bool:
        """Nothing to fold in: the next prompt reads the new history."""
        return True

    def refresh(self, train: TrainData, new, *, steps: int) -> str:
        self.fit(train)
        return "refit"

    def add_platform(self, platform: str, items: Sequence[str], titles: Mapping[tuple[str, str], str],
                     details: Mapping[tuple[str, str], str] | None = None) -> None:
        self._extend_catalogs(platform, items)
        self.titles = {**self.titles, **{(platform, item): titles[(platform, item)] for item in items
                                         if (platform, item) in titles}}

    # -- scoring ---------------------------------------------------------------------------------------
    @property
    def recommender(self):
        """The generate-then-ground recommender this source runs (on the pipeline's loaded LLM)."""
        if self._recommender is None:
            from genrec.llm import LLM, LLMConfig
            from genrec.recommender import Recommender, RecommenderConfig

            if self._store is None:
                raise GenrecError("the generation source needs the event store (the platforms and catalogs the "
                                  "LLM's titles are grounded in): load its pipeline with a store")
            model = (self._llm_loader(self.llm) if self._llm_loader is not None
                     else LLM.load(LLMConfig(**(self.llm or {}))))
            config = RecommenderConfig(decoding=self.decoding, n_generate=self.n_generate, beams=self.n_generate,
                                       batch_size=self.batch_size)
            self._recommender = Recommender(self._store, llm=model, embedder=self._encoder, config=config,
                                            popularity=self._popularity)
        return self._recommender

    def generated(self, contexts: Sequence[Context]) -> list[tuple[str, ...]]:
        """Per context, the catalog items the LLM wrote for it, best first (none for a context it cannot read)."""
        from genrec.pipeline.scorer import context_key
        from genrec.recommender import Request

        keys = [context_key(c, self.history_scope) for c in contexts]
        todo = {key: c for key, c in zip(keys, contexts, strict=True)
                if key not in self._answers and self.no_preference(c) is None}
        if todo:
            requests = [Request(c.platform, c.user_id, k=self.n_generate,
                                history=history_items(c.user_id or "", scoped_history(c, self.history_scope),
                                                      self.titles))
                        for c in todo.values()]
            for key, answer in zip(todo, self.recommender.recommend_many(requests), strict=True):
                self._answers[key] = tuple(item.item_id for item in answer.items if item.source in GENERATED)
                while len(self._answers) > CACHED_CONTEXTS:
                    self._answers.popitem(last=False)
        return [self._answers.get(key, ()) for key in keys]

    def score(self, cases: Sequence[Context], platform: str) -> np.ndarray:
        catalog = self._catalog(platform)
        position = {item: j for j, item in enumerate(catalog)}
        out = np.full((len(cases), len(catalog)), self.floor, dtype=np.float32)
        for r, items in enumerate(self.generated(cases)):
            for rank, item in enumerate(items):
                if item in position:  # an item the store holds but the fitted catalog does not stays at the floor
                    out[r, position[item]] = self.n_generate - rank
        return out

    def no_preference(self, context: Context) -> str | None:
        """The LLM is not asked when the history the scope reads names no titled item: nothing to write a
        profile from."""
        history = scoped_history(context, self.history_scope)
        if any(self.titles.get((x.platform, x.item_id)) for x in history):
            return None
        if not context.history:
            return "the history is empty"
        if not history:
            return (f"the history has no {context.platform!r} item, and this source reads only the target "
                    "platform's (history_scope 'target')")
        return f"none of the history's {len(history)} item(s) has a title in the catalogs it was fitted on"

    def state(self) -> dict[str, Any]:
        return {"titles": self.titles, "popularity": self._popularity}

    def restore(self, state: dict[str, Any]) -> None:
        self.titles, self._popularity = state["titles"], state["popularity"]
