"""The server's jobs for the model worker: a recommendation (the recommender's or a pipeline's), a chat turn, a
report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from genrec.chat import ChatEngine, ChatPlan, ChatTurn
from genrec.data.schema import HistoryItem
from genrec.pipeline import Pipeline
from genrec.pipeline.serving import Explanation, Pipelines
from genrec.pipeline.types import ScoredItem
from genrec.prompts import PromptTemplates
from genrec.recommender import RecommendationList, Request
from genrec.report import Format, ReportBuilder, render


@dataclass
class RecommendJob:
    request: Request

    def prepare(self) -> Sequence[Request]:
        return [self.request]

    def finish(self, results: Sequence[RecommendationList]) -> dict:
        return results[0].to_dict()


@dataclass
class PipelineJob:
    """``POST /v1/recommend`` answered by a pipeline: ranked in ``prepare``; its rationales, when asked for, are
    written in the worker's batch together with the other jobs' (``Explanation``)."""

    pipelines: Pipelines
    platform: str
    user_id: str | None
    history: Sequence[HistoryItem] | None
    k: int
    explain: bool
    exclude: Sequence[str] = ()
    candidates: Sequence[str] | None = None
    _ranked: tuple[Pipeline, list[ScoredItem], float] | None = field(default=None, init=False)

    def prepare(self) -> Sequence[Explanation]:
        started = time.perf_counter()
        pipeline, context, items = self.pipelines.rank(self.platform, user_id=self.user_id, history=self.history,
                                                       k=self.k, exclude=self.exclude, candidates=self.candidates)
        self._ranked = pipeline, items, started
        return [Explanation(pipeline, context, items)] if self.explain else []

    def finish(self, results: Sequence[list[ScoredItem]]) -> dict:
        assert self._ranked is not None, "finish() runs after prepare()"
        pipeline, items, started = self._ranked
        if results:
            [items] = results
        return {"user_id": self.user_id, "platform": self.platform, "k": self.k, "pipeline": pipeline.name,
                "version": pipeline.version, "seconds": time.perf_counter() - started,
                "items": [{"rank": item.rank, "item_id": item.item_id, "title": item.title,
                           "platform": self.platform, "score": item.score, "similarity": None,
                           "source": item.origin, "generated_text": None, "rationale": item.rationale,
                           "evidence": list(item.evidence), "sources": item.sources, "llm": item.llm,
                           "rationale_source": item.rationale_source} for item in items]}


@dataclass
class ChatJob:
    engine: ChatEngine
    turn: ChatTurn
    _plan: ChatPlan | None = field(default=None, init=False)

    def prepare(self) -> Sequence[Request]:
        self._plan = self.engine.plan(self.turn)
        return self._plan.requests

    def finish(self, results: Sequence[RecommendationList]) -> dict:
        assert self._plan is not None, "finish() runs after prepare()"
        return self.engine.answer(self._plan, results).to_dict()


@dataclass
class ReportJob:
    builder: ReportBuilder
    user_id: str
    platforms: Sequence[str]
    fmt: Format
    templates: PromptTemplates

    _requests: Sequence[Request] = field(default=(), init=False)

    def prepare(self) -> Sequence[Request]:
        self._requests = self.builder.requests(self.user_id, self.platforms)
        return self.builder.model_requests(self._requests)

    def finish(self, results: Sequence[RecommendationList]) -> str:
        return render(self.builder.build(self.user_id, self._requests, results), self.fmt, self.templates)
