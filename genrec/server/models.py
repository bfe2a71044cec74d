"""The HTTP API's request and response bodies (pydantic). Hard limits here; configurable ones in the app."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, model_validator

Id = Annotated[str, Field(min_length=1, max_length=200)]
PlatformName = Annotated[str, Field(min_length=1, max_length=64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HistoryEvent(Strict):
    """One item of an inline history. Without ``title`` the catalog's title is used; without ``timestamp`` the
    order of the list is the order of events."""

    platform: PlatformName
    item_id: Id
    title: str | None = Field(None, max_length=500)
    timestamp: datetime | None = None
    value: float | None = None


class RecommendIn(Strict):
    user_id: Id | None = None
    history: list[HistoryEvent] | None = Field(None, max_length=10_000)
    platform: PlatformName
    k: int = Field(10, ge=1, le=1000)
    explain: bool = False
    exclude: list[str] = Field(default_factory=list, max_length=1000)
    candidates: list[Id] | None = Field(None, min_length=1, max_length=1000,
                                        description="rank only these item ids of the platform")

    @model_validator(mode="after")
    def _one_source(self) -> RecommendIn:
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give either user_id or history (not both)")
        return self


class ChatIn(Strict):
    user_id: Id
    message: str = Field(min_length=1, max_length=1000)
    conversation_id: str | None = Field(None, max_length=100)
    k: int = Field(5, ge=1, le=1000)
    explain: bool = True


class EventIn(Strict):
    """One event in the canonical schema; ``timestamp``: epoch seconds, epoch milliseconds or ISO-8601, one unit
    per batch, between 1970 and 2200 (booleans are not timestamps)."""

    user_id: Id
    platform: PlatformName
    item_id: Id
    timestamp: StrictInt | StrictFloat | Annotated[StrictStr, Field(min_length=1, max_length=64)]
    event: str | None = Field(None, max_length=50)
    value: float | None = None


class EventsIn(Strict):
    events: list[EventIn] = Field(min_length=1, max_length=1_000_000)


class EventsOut(BaseModel):
    received: int
    added: int
    already_present: int
    removed_by_cleaning: int
    store_version: int


class PlatformOut(BaseModel):
    name: str
    verb: str
    time_kind: str
    description: str | None
    catalog_items: int


class OnboardingOut(BaseModel):
    platform: str
    items: int
    skipped_rows: int
    embedded: int
    import_seconds: float
    index_seconds: float
    seconds: float
    pipelines: list[str] = []  # the configured pipeline (``serve --pipeline``), when it ranks the platform now


class HistoryItemOut(BaseModel):
    platform: str
    item_id: str
    title: str | None
    timestamp: str
    event: str
    value: float | None


class Health(BaseModel):
    status: str  # "ok" once the models are loaded, "starting" before
    version: str
    platforms: list[str]
    queue_depth: int
    conversations: int
    worker: dict[str, Any]


class ErrorOut(BaseModel):
    error: str
    field: str | None = None


class RecommendationOut(BaseModel):
    rank: int
    item_id: str
    title: str
    platform: str
    score: float
    similarity: float | None
    source: str
    generated_text: str | None
    rationale: str | None
    evidence: list[str]
    sources: dict[str, float] | None = None  # a pipeline's answer: every candidate source's own score
    llm: float | None = None  # the LLM's calibrated score
    rationale_source: Literal["llm", "template"] | None = None


class GenerationOut(BaseModel):
    n_generated: int
    invalid_lines: int
    validity: float
    mean_similarity: float | None
    raw_output: str


class ProfileOut(BaseModel):
    text: str
    tokens: int
    dropped_items: int


class RecommendOut(BaseModel):
    user_id: str | None
    platform: str
    k: int
    items: list[RecommendationOut]
    generation: GenerationOut | None = None  # generate-then-ground only
    profile: ProfileOut | None = None
    pipeline: str | None = None  # the pipeline that answered
    version: str | None = None  # its registry version, when the server serves a registry
    seconds: float


class RefreshIn(BaseModel):
    """``POST /v1/admin/refresh``: see ``genrec refresh``."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(10_000, ge=0, le=100_000)
    holdout_users: int = Field(200, ge=1, le=100_000)
    tune_users: int = Field(0, ge=0, le=100_000)
    seed: int = 0
    promote: bool = True


class RefreshOut(BaseModel):
    version: str | None  # the challenger written (None: no new events)
    parent: str | None
    new_events: int
    sources: dict[str, str]
    judgement: dict[str, Any] | None
    promoted: bool
    champion: str | None  # the registry's champion after the refresh


class RefreshStatusOut(BaseModel):
    registry: str | None  # the served registry folder (None: the server serves none)
    champion: str | None  # the registry's champion
    serving: str | None  # the version answering now (the champion once swapped in)
    running: bool  # a refresh runs now
    every_s: float | None  # the schedule's interval (None: refreshes only on request)
    next_at: str | None  # when the schedule refreshes next
    last_scheduled: dict[str, Any] | None  # started_at, finished_at, status (ok, skipped, failed), error or outcome


class ChatOut(BaseModel):
    conversation_id: str
    platform: str
    reply: str
    intent: dict[str, Any]
    focus: list[dict[str, Any]]
    items: list[RecommendationOut]
    pipeline: str | None = None  # the pipeline that proposed and ranked the items (None: generate-then-ground)
    version: str | None = None  # its registry version
