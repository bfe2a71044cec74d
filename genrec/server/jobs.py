"""The server's jobs for the model worker: a recommendation, a chat turn, a report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from genrec.chat import ChatEngine, ChatPlan, ChatTurn
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
