"""Explainable recommendation reports: why these items, for this user, from which part of their history.

A report holds, per platform of the user, a profile summary and an activity chart; and, per target platform,
recommendations with their rationale, their evidence (the user's history items most similar to each item, with
cosine similarities) and a faithfulness check of the rationale (``genrec.faithfulness``). A platform that a
pipeline answers (``genrec.pipeline.serving.Pipelines``: a data set's default pipeline, or a configured one) gets
the pipeline's ranking and rationales; any other gets the generate-then-ground recommender's. ``ReportBuilder``
splits the work so that a server can batch the recommender's part: ``requests()`` gives the recommendation
requests, ``model_requests()`` those the recommender answers, ``build()`` turns the answers into a ``Report``.
``render()`` writes HTML, Markdown or JSON through the ``report.html.j2`` / ``report.md.j2`` templates.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Literal

import numpy as np

from genrec.charts import activity_chart, position
from genrec.data.schema import HistoryItem, Platform
from genrec.errors import GenrecError, NotFoundError
from genrec.faithfulness import FaithfulnessCheck, FaithfulnessChecker
from genrec.profile import CATEGORY_SEPARATOR
from genrec.prompts import PromptTemplates
from genrec.recommender import Recommendation, RecommendationList, Recommender, Request

Format = Literal["html", "md", "json"]
FORMATS: tuple[Format, ...] = ("html", "md", "json")
TEMPLATES = {"html": "report.html.j2", "md": "report.md.j2"}
EVIDENCE_POOL = 50  # most recent titled history items that evidence is drawn from
RECENT_ITEMS = 5


@dataclass(frozen=True)
class Evidence:
    title: str
    platform: str
    similarity: float


@dataclass(frozen=True)
class ExplainedItem:
    recommendation: Recommendation
    evidence: tuple[Evidence, ...]
    faithfulness: FaithfulnessCheck

    def to_dict(self) -> dict:
        item = asdict(self.recommendation) | {"evidence_titles": list(self.recommendation.evidence)}
        return item | {"evidence": [asdict(e) for e in self.evidence], "faithfulness": self.faithfulness.to_dict()}


@dataclass(frozen=True)
class PlatformActivity:
    """One platform of the user's history: counts, span, top categories, latest items, chart (base64 PNG)."""

    platform: str
    verb: str
    time_kind: str
    events: int
    first: str
    last: str
    top_categories: tuple[str, ...]
    mean_value: float | None
    recent: tuple[str, ...]
    chart_png: str

    @property
    def summary(self) -> str:
        span = f"positions {self.first}-{self.last}" if self.time_kind == "sequence" else \
            f"{self.first} to {self.last}"
        text = f"{self.verb.capitalize()} {self.events} item{'s' if self.events != 1 else ''} ({span})"
        if self.top_categories:
            text += ", mostly " + ", ".join(self.top_categories)
        if self.mean_value is not None:
            text += f"; mean rating {self.mean_value:.1f}"
        return text + "."


@dataclass(frozen=True)
class PlatformRecommendations:
    platform: str
    items: tuple[ExplainedItem, ...]
    n_generated: int
    validity: float
    seconds: float
    pipeline: str | None = None  # the pipeline that ranked and explained them (None: generated and grounded)

    @property
    def flagged(self) -> int:
        return sum(item.faithfulness.flagged for item in self.items)


@dataclass
class Report:
    user_id: str
    generated_at: str
    profile_text: str
    activity: list[PlatformActivity]
    recommendations: list[PlatformRecommendations]
    faithfulness: dict[str, int] = field(default_factory=dict)  # status -> count

    def to_dict(self) -> dict:
        return {"user_id": self.user_id, "generated_at": self.generated_at, "profile_text": self.profile_text,
                "activity": [asdict(a) | {"summary": a.summary} for a in self.activity],
                "recommendations": [{"platform": r.platform, "pipeline": r.pipeline, "n_generated": r.n_generated,
                                     "validity": r.validity, "seconds": r.seconds, "flagged": r.flagged,
                                     "items": [item.to_dict() for item in r.items]} for r in self.recommendations],
                "faithfulness": self.faithfulness}


class ReportBuilder:
    """Builds reports with a ``Recommender`` (its store, embedder and catalog indexes)."""

    def __init__(self, recommender: Recommender, *, k: int = 5, evidence: int = 3, pipelines=None) -> None:
        self.recommender = recommender
        self.k = k
        self.evidence = evidence
        self.pipelines = pipelines  # genrec.pipeline.serving.Pipelines, or None: the recommender answers all
        self._checker: tuple[tuple, FaithfulnessChecker] | None = None

    @property
    def store(self):
        return self.recommender.store

    def requests(self, user_id: str, platforms: Sequence[str] = ()) -> list[Request]:
        """One explained request per target platform: ``platforms``, or every platform of the user's history."""
        if not self.store.has_user(user_id):
            raise NotFoundError(f"unknown user {user_id!r}: the store has no events for this user")
        targets = list(dict.fromkeys(platforms)) or list(dict.fromkeys(h.platform for h in
                                                                      self.store.history(user_id)))
        for name in targets:
            self.store.platform(name)  # NotFoundError for an unknown platform
        return [Request(name, user_id=user_id, k=self.k, explain=True) for name in targets]

    def model_requests(self, requests: Sequence[Request]) -> list[Request]:
        """The requests the recommender answers (the others' platforms have a pipeline)."""
        return [request for request in requests if not self._piped(request.platform)]

    def _piped(self, platform: str) -> bool:
        return self.pipelines is not None and self.pipelines.handles(platform)

    def build(self, user_id: str, requests: Sequence[Request], results: Sequence[RecommendationList]) -> Report:
        """The report from ``requests`` (``requests()``) and the recommender's answers to ``model_requests()``
        of them, in order; the pipelines answer the rest here."""
        history = self.store.history(user_id)
        platforms = {p.name: p for p in self.store.platforms()}
        pool = [h for h in history if h.title][-EVIDENCE_POOL:]
        vectors = self.recommender.embedder.encode([h.title for h in pool])
        titles = [h.title for h in history if h.title]
        checker = self.checker()
        answered = iter(results)
        recommendations = [self._from_pipeline(request, pool, vectors, titles, checker)
                           if self._piped(request.platform) else
                           self._explain(next(answered), pool, vectors, titles, checker) for request in requests]
        statuses = Counter(i.faithfulness.status for r in recommendations for i in r.items)
        profile_text = results[0].profile.text if results else self.recommender.profiles.build(history, platforms).text
        return Report(user_id=user_id, generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                      profile_text=profile_text, activity=_activity(history, platforms),
                      recommendations=recommendations, faithfulness=dict(statuses))

    def checker(self) -> FaithfulnessChecker:
        """The faithfulness checker over every catalog title, rebuilt only when the catalogs change."""
        sizes = self.store.catalog_sizes()
        key = tuple(sorted(sizes.items()))
        if self._checker is None or self._checker[0] != key:
            catalogs = [self.store.catalog(name) for name in sizes]
            titles = [title for catalog in catalogs for title in catalog["title"].tolist()]
            categories = {part.strip() for catalog in catalogs for value in catalog["category"].dropna()
                          for part in str(value).split(CATEGORY_SEPARATOR)}
            names = [p.name for p in self.store.platforms()] + sorted(categories)
            self._checker = (key, FaithfulnessChecker(titles, names=names))
        return self._checker[1]

    def _explain(self, result: RecommendationList, pool: list[HistoryItem], vectors: np.ndarray,
                 titles: list[str], checker: FaithfulnessChecker) -> PlatformRecommendations:
        index = self.recommender.index(result.platform)
        item_vectors = index.vectors([item.item_id for item in result.items])
        explained = self._evidence(result.items, item_vectors, pool, vectors, titles, checker)
        return PlatformRecommendations(result.platform, explained, result.n_generated, result.validity,
                                       result.seconds)

    def _from_pipeline(self, request: Request, pool: list[HistoryItem], vectors: np.ndarray, titles: list[str],
                       checker: FaithfulnessChecker) -> PlatformRecommendations:
        started = time.perf_counter()
        pipeline, ranked = self.pipelines.recommend(request.platform, user_id=request.user_id, k=request.k,
                                                    explain=True)
        items = [Recommendation.from_scored(item) for item in ranked]
        # the recommended titles alone are embedded (not the platform's whole catalog)
        item_vectors = self.recommender.embedder.encode([item.title for item in items])
        explained = self._evidence(items, item_vectors, pool, vectors, titles, checker)
        return PlatformRecommendations(request.platform, explained, n_generated=0, validity=1.0,
                                       seconds=time.perf_counter() - started, pipeline=pipeline.name)

    def _evidence(self, items: Sequence[Recommendation], item_vectors: np.ndarray, pool: list[HistoryItem],
                  vectors: np.ndarray, titles: list[str], checker: FaithfulnessChecker) -> tuple[ExplainedItem, ...]:
        explained = []
        for item, vector in zip(items, item_vectors, strict=True):
            evidence: tuple[Evidence, ...] = ()
            if len(pool):
                sims = vectors @ vector
                evidence = tuple(Evidence(pool[j].title, pool[j].platform, round(float(sims[j]), 4))
                                 for j in np.argsort(-sims, kind="stable")[: self.evidence])
            explained.append(ExplainedItem(item, evidence, checker.check(item.rationale, titles, item.title)))
        return tuple(explained)


def _activity(history: Sequence[HistoryItem], platforms: dict[str, Platform]) -> list[PlatformActivity]:
    by_platform: dict[str, list[HistoryItem]] = {}
    for item in history:
        by_platform.setdefault(item.platform, []).append(item)
    out = []
    for name, items in by_platform.items():
        platform = platforms.get(name, Platform(name))
        sequence = platform.time_kind == "sequence"
        stamps = [item.timestamp for item in items]

        def show(moment: datetime, sequence: bool = sequence) -> str:
            return str(position(moment)) if sequence else moment.strftime("%Y-%m-%d")

        categories = Counter(part.strip() for item in items if item.category
                             for part in item.category.split(CATEGORY_SEPARATOR) if part.strip())
        values = [item.value for item in items if item.value is not None]
        out.append(PlatformActivity(
            platform=name, verb=platform.verb, time_kind=platform.time_kind, events=len(items),
            first=show(min(stamps)), last=show(max(stamps)),
            top_categories=tuple(c for c, _ in categories.most_common(3)),
            mean_value=float(np.mean(values)) if values else None,
            recent=tuple(item.title or f"item {item.item_id}" for item in items[-RECENT_ITEMS:][::-1]),
            chart_png=activity_chart(stamps, platform=name, time_kind=platform.time_kind, verb=platform.verb)))
    return out


def render(report: Report, fmt: Format = "html", templates: PromptTemplates | None = None) -> str:
    """The report as an HTML page, Markdown or JSON."""
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2)
    if fmt not in TEMPLATES:
        raise GenrecError(f"unknown report format {fmt!r}; use one of: {', '.join(FORMATS)}")
    return (templates or PromptTemplates()).render(TEMPLATES[fmt], report=report) + "\n"


def build_report(recommender: Recommender, user_id: str, platforms: Sequence[str] = (), *, k: int = 5,
                 pipelines=None) -> Report:
    """A report for one user, in one go (the CLI's path; servers use ``ReportBuilder`` to batch)."""
    builder = ReportBuilder(recommender, k=k, pipelines=pipelines)
    requests = builder.requests(user_id, platforms)
    return builder.build(user_id, requests, recommender.recommend_many(builder.model_requests(requests)))
