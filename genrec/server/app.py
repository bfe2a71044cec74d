"""The FastAPI app: thin routes over the library; model work goes through the batching worker.

``create_app(settings)`` returns an app whose lifespan opens the store, loads the models on the worker thread
(``/healthz`` says ``starting`` until then) and closes everything at shutdown. Errors are JSON
``{"error": message, "field": name}``: 404 unknown user/platform/conversation, 409 platform exists, 413 body or
upload too large (also once decompressed), 422 bad payload (naming the field), 401/403 missing or wrong API key or
scope (``genrec.server.security``), 503 with Retry-After when the model queue is full, its expected wait exceeds
the request's deadline, the deadline passed, or the server is stopping. Every response carries security headers;
``/metrics`` serves Prometheus metrics to admin keys.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, BinaryIO, Literal

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

import genrec
from genrec.chat import ChatEngine, ChatTurn, Conversations
from genrec.data.cleaning import CleaningConfig, hash_user_id
from genrec.data.importers import events_from_records, parse_mapping
from genrec.data.schema import HistoryItem
from genrec.data.store import Store
from genrec.embedding import Embedder
from genrec.errors import ConflictError, DataError, GenrecError, NotFoundError, TooLargeError
from genrec.llm import LLMConfig
from genrec.onboarding import onboard
from genrec.pipeline.fitting import catalog_titles
from genrec.pipeline.serving import Pipelines
from genrec.prompts import PromptTemplates
from genrec.recommender import Recommender, RecommenderConfig
from genrec.recommender import Request as RecommendRequest
from genrec.report import ReportBuilder
from genrec.server.jobs import ChatJob, PipelineJob, RecommendJob, ReportJob
from genrec.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from genrec.server.metrics import Metrics
from genrec.server.models import (
    ChatIn,
    ChatOut,
    ErrorOut,
    EventsIn,
    EventsOut,
    Health,
    HistoryEvent,
    HistoryItemOut,
    OnboardingOut,
    PlatformOut,
    RecommendIn,
    RecommendOut,
    RefreshIn,
    RefreshOut,
    RefreshStatusOut,
)
from genrec.server.security import Hardened, KeysFirst, authorize, needs, parse_keys, redact_access_log
from genrec.server.settings import ServerSettings
from genrec.server.worker import BatchWorker, CallJob, Job, Overloaded

STATIC = Path(__file__).parent / "static"
DISCONNECT_POLL_S = 0.25  # how often a waiting request checks whether its client is still there
GRACEFUL_S = 5  # at shutdown, how long uvicorn lets requests in flight finish
STOP_WAIT_S = 3.0  # at shutdown, how long the batch in progress may still run (uvicorn waits GRACEFUL_S first)
UPLOAD_PATH = "/v1/platforms"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
logger = logging.getLogger("genrec.server")


class Busy(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Invalid(Exception):
    """A payload over a configured limit: answered 422 naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass
class Service:
    """Everything the routes use; built at startup."""

    settings: ServerSettings
    store: Store
    templates: PromptTemplates
    recommender: Recommender
    onboarding: Recommender  # its own embedder, so onboarding never waits for (or blocks) the model worker
    worker: BatchWorker
    chat: ChatEngine
    reports: ReportBuilder
    onboarding_lock: threading.Lock
    ready: threading.Event
    pipelines: Pipelines
    refresh_lock: threading.Lock = field(default_factory=threading.Lock)
    scheduled: dict[str, Any] | None = None  # the last scheduled refresh: when, and what it did or why it failed
    next_refresh: datetime | None = None  # when the schedule refreshes next
    _stopping: threading.Event = field(default_factory=threading.Event)
    _timer: threading.Thread | None = None

    @classmethod
    def start(cls, settings: ServerSettings) -> Service:
        store = Store(settings.db)
        templates = PromptTemplates(settings.templates)
        llm_config = LLMConfig(model=settings.model, adapter=settings.adapter, dtype=settings.dtype,
                               device=settings.device, load_in_4bit=settings.load_in_4bit,
                               adapter_scale=settings.adapter_scale)
        config = RecommenderConfig.for_adapter(settings.adapter, decoding=settings.decoding,
                                                calibration=settings.calibration)
        recommender = Recommender(store, llm_config=llm_config, templates=templates, config=config)
        worker = BatchWorker(recommender, max_batch=settings.max_batch, max_queue=settings.max_queue,
                             wait_s=settings.batch_wait_ms / 1000)
        pipelines = Pipelines(store, folder=settings.pipeline, defaults=settings.default_pipelines)
        chat = ChatEngine(recommender, Conversations(settings.conversation_ttl_s, settings.max_conversations),
                          use_llm=settings.chat_llm, pipelines=pipelines)
        service = cls(settings, store, templates, recommender, Recommender(store, embedder=Embedder()), worker,
                      chat, ReportBuilder(recommender, k=settings.report_k, pipelines=pipelines), threading.Lock(),
                      threading.Event(), pipelines)
        worker.start()
        if settings.refresh_every is not None:
            service._timer = threading.Thread(target=service._refresh_on_schedule, args=(settings.refresh_every,),
                                              name="genrec-refresh-timer", daemon=True)
            service._timer.start()
        if settings.warm_up:
            worker.submit(CallJob(service.warm_up))
        else:
            service.ready.set()
        return service

    def warm_up(self) -> None:
        """Load the models and every catalog index, so that the first request is as fast as the others."""
        try:
            _ = self.recommender.llm, self.recommender.embedder.model
            for name in self.store.catalog_sizes():
                self.recommender.index(name)
                if self.pipelines.handles(name):  # fitted now (first use) rather than on a user's request
                    self.pipelines.get(name)
            self.chat.vocabulary()
            self.reports.checker()
        finally:
            self.ready.set()

    def user(self, user_id: str | None) -> str | None:
        """The stored id of a user id the API received: hashed like ``--hash-user-ids`` when the server is set to
        (so raw ids never reach the store), else as given."""
        if user_id is None or not self.settings.hash_user_ids:
            return user_id
        return hash_user_id(user_id, self.settings.salt)

    def refresh(self, options: RefreshIn) -> dict:
        """Refresh the served registry's champion (``genrec.pipeline.refresh``) and swap to a promoted version;
        ``ConflictError`` without a registry or while another refresh runs. ``POST /v1/admin/refresh`` and the
        schedule (``refresh_every``) both run it."""
        from genrec.pipeline.refresh import refresh as run_refresh

        registry = self.pipelines.registry
        if registry is None:
            raise ConflictError("this server serves no registry: start it with --pipeline REGISTRY_FOLDER "
                                "(a folder made by `genrec fit --registry`)")
        if not self.refresh_lock.acquire(blocking=False):
            raise ConflictError("a refresh is already running")
        try:
            outcome = run_refresh(self.store, registry, steps=options.steps, holdout_users=options.holdout_users,
                                  tune_users=options.tune_users, seed=options.seed, promote=options.promote)
        finally:
            self.refresh_lock.release()
        self.pipelines.swap_if_promoted()
        champion = registry.champion()
        return outcome.to_dict() | {"champion": champion.name if champion else None}

    def _refresh_on_schedule(self, every_s: float) -> None:
        """Every ``every_s`` seconds until the server stops: a refresh with the default options. One that fails
        (or finds another refresh running) is recorded and logged; the next tick tries again."""
        while True:
            self.next_refresh = datetime.now(UTC) + timedelta(seconds=every_s)
            if self._stopping.wait(every_s):
                return
            started = datetime.now(UTC)
            try:
                result: dict[str, Any] = {"status": "ok", **self.refresh(RefreshIn())}
            except ConflictError as exc:  # a refresh asked for by POST /v1/admin/refresh is running
                result = {"status": "skipped", "error": str(exc)}
            except Exception as exc:  # noqa: BLE001 - logged and recorded; the next tick tries again
                if self._stopping.is_set():
                    return
                logger.exception("the scheduled refresh failed; the next one runs in %g s", every_s)
                result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            self.scheduled = {"started_at": started.isoformat(timespec="seconds"),
                              "finished_at": datetime.now(UTC).isoformat(timespec="seconds"), **result}

    def refresh_status(self) -> dict:
        try:
            champion = self.pipelines.registry.champion() if self.pipelines.registry is not None else None
        except GenrecError:  # an unreadable registry: the status still answers (the last run says why)
            champion = None
        return {"registry": str(self.pipelines.registry.root) if self.pipelines.registry is not None else None,
                "champion": champion.name if champion else None,
                "serving": getattr(self.pipelines.configured, "version", None),
                "running": self.refresh_lock.locked(), "every_s": self.settings.refresh_every,
                "next_at": self.next_refresh.isoformat(timespec="seconds") if self.next_refresh and
                self.settings.refresh_every else None, "last_scheduled": self.scheduled}

    def stop(self) -> None:
        self._stopping.set()  # the refresh timer stops (a refresh in progress ends with the store)
        if self._timer is not None:
            self._timer.join(timeout=STOP_WAIT_S)
        self.worker.stop(timeout=STOP_WAIT_S)
        self.store.close()

    async def run(self, job: Job, request: Request | None = None) -> Any:
        """``job``'s answer from the worker within the request's deadline (``request_timeout_s``, or less when
        the client sends ``X-Request-Timeout: seconds``); ``Busy`` (503) at once when the queue is full or its
        expected wait ends after the deadline, or when the deadline passes, or once the server is stopping. A client
        that disconnects drops its job (the worker skips it)."""
        timeout = _timeout(request, self.settings.request_timeout_s)
        if request is not None and request.app.state.stopping.is_set():
            raise Busy("the server is shutting down", 5)
        try:
            future = self.worker.submit(job, deadline=time.monotonic() + timeout)
        except Overloaded as exc:
            raise Busy(str(exc), exc.retry_after) from None
        answer = asyncio.ensure_future(asyncio.wrap_future(future))
        give_up = time.monotonic() + timeout
        try:
            while True:
                done, _ = await asyncio.wait({answer}, timeout=min(DISCONNECT_POLL_S, give_up - time.monotonic()))
                if done:
                    if answer.cancelled():  # the worker dropped it: its deadline had passed
                        raise Busy(f"no answer within {timeout:g} s; the server is busy", self.worker.retry_after())
                    try:
                        return answer.result()
                    except Overloaded as exc:  # refused after all (shutting down)
                        raise Busy(str(exc), exc.retry_after) from None
                if request is not None and request.app.state.stopping.is_set():
                    raise Busy("the server is shutting down", 5)
                if time.monotonic() >= give_up:
                    raise Busy(f"no answer within {timeout:g} s; the server is busy", self.worker.retry_after())
                if request is not None and await request.is_disconnected():
                    raise Busy("the client disconnected", self.worker.retry_after())
        finally:
            answer.cancel()  # cancels the worker's job too if it has not started


def _timeout(request: Request | None, most: float) -> float:
    """The request's deadline in seconds: ``X-Request-Timeout`` when it is a shorter positive number."""
    raw = request.headers.get("x-request-timeout") if request is not None else None
    try:
        asked = float(raw) if raw is not None else most
    except ValueError:
        raise Invalid("X-Request-Timeout", f"not a number of seconds: {raw!r}") from None
    if not 0 < asked < float("inf"):
        raise Invalid("X-Request-Timeout", f"must be a positive number of seconds, got {raw!r}")
    return min(asked, most)


def _service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(_service)]
Writer = needs("write")
Reader = needs("read")


class BodyLimit:
    """ASGI middleware: request bodies over the limit are answered 413 before the app reads them."""

    def __init__(self, app: Callable, limit: Callable[[str], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        if length is not None:
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True  # no declared length: read (at most limit bytes) before the app does
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                await _too_large(limit)(scope, receive, send)
                return
        body = b"".join(chunks)
        delivered = False

        async def replay() -> dict:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"error": f"request body larger than {limit} bytes", "field": None}, status_code=413)


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = await run_in_threadpool(Service.start, settings)
        app.state.service = service
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = FastAPI(title="genrec", version=genrec.__version__, lifespan=lifespan, responses=ERROR_RESPONSES,
                  description="Generative cross-platform recommendation: recommend, chat, explain, onboard.")
    app.state.keys = parse_keys(settings.api_keys)
    app.state.stopping = threading.Event()  # set on SIGINT/SIGTERM: waiting requests answer 503 at once
    redact_access_log()
    app.add_middleware(BodyLimit, limit=lambda path: settings.max_upload_bytes if path == UPLOAD_PATH
                       else settings.max_body_bytes)
    app.add_middleware(KeysFirst, routes=lambda: app.router.routes)  # outside the body limit: keys first
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "Authorization", "X-API-Key"])
    metrics = app.state.metrics = Metrics(lambda: getattr(getattr(app.state, "service", None), "worker", None))
    app.add_middleware(metrics.middleware)  # counts every answer, refusals by the layers inside it included
    app.add_middleware(Hardened)  # outermost: its headers go on every response
    _add_error_handlers(app)
    _add_routes(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


# every route may answer these, always as ErrorOut; declared so that clients (and schema checks) know them
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text} for status, text in (
        (400, "Bad request"), (401, "Missing or invalid API key"), (403, "The key lacks the scope, or no key is "
                                                                         "configured"),
        (404, "Unknown user, platform or conversation"), (409, "Already exists"), (413, "Body or upload too large"),
        (422, "Invalid payload, naming the field"), (500, "Internal error"),
        (503, "Busy or shutting down; see Retry-After"))}


def _error(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [(".".join(str(part) for part in error["loc"] if part != "body") or "body", error["msg"])
                    for error in exc.errors()]
        message = "; ".join(f"{where}: {what}" for where, what in problems[:5])
        return _error(422, message, problems[0][0] if problems else None)

    @app.exception_handler(Invalid)
    async def over_limit(_: Request, exc: Invalid) -> JSONResponse:
        return _error(422, str(exc), exc.field)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Busy)
    async def busy(_: Request, exc: Busy) -> JSONResponse:
        return _error(503, str(exc), headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(GenrecError)
    async def genrec_error(_: Request, exc: GenrecError) -> JSONResponse:
        if isinstance(exc, NotFoundError):
            return _error(404, str(exc))
        if isinstance(exc, ConflictError):
            return _error(409, str(exc))
        if isinstance(exc, TooLargeError):
            return _error(413, str(exc), exc.field)
        if isinstance(exc, DataError):
            return _error(422, str(exc), exc.field)
        return _error(400, str(exc))


def _limit(field: str, count: int, limit: int) -> None:
    if count > limit:
        raise Invalid(field, f"at most {limit} allowed by this server, got {count}")


def _inline_history(store: Store, events: list[HistoryEvent]) -> list[HistoryItem]:
    """An inline history with catalog titles filled in; without timestamps the list order is the time order."""
    titles: dict[tuple[str, str], str] = {}
    for platform in {e.platform for e in events if e.title is None}:
        ids = [e.item_id for e in events if e.platform == platform and e.title is None]
        titles |= {(platform, item.item_id): item.title for item in store.items(platform, ids)}
    timed = all(e.timestamp is not None for e in events)
    start = datetime(1970, 1, 1)
    return [HistoryItem(user_id="inline", platform=e.platform, item_id=e.item_id,
                        timestamp=e.timestamp.replace(tzinfo=None) if timed and e.timestamp else
                        start + timedelta(seconds=position),
                        value=e.value, title=e.title or titles.get((e.platform, e.item_id)))
            for position, e in enumerate(events)]


def upload_name(filename: str | None, fmt: str | None) -> str:
    """A safe local name for an uploaded file: its last path part in letters, digits, ``.``, ``_`` and ``-``, not
    starting with a dot (so never ``..``); an unusable name is a 422 unless ``fmt`` names the format."""
    base = _SAFE_NAME.sub("_", PurePosixPath((filename or "").replace("\\", "/")).name).lstrip("._-")[-100:]
    if base:
        return base
    if fmt:
        return f"catalog.{fmt}"
    raise Invalid("catalog", f"unusable file name {filename!r}: name the file like catalog.csv or set "
                             "catalog_format")


def _save(source: BinaryIO, target: Path) -> None:
    with target.open("wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)


def _add_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz", response_model=Health, tags=["service"])
    def health(service: ServiceDep) -> Health:
        return Health(status="ok" if service.ready.is_set() else "starting", version=genrec.__version__,
                      platforms=[p.name for p in service.store.platforms()], queue_depth=service.worker.depth,
                      conversations=len(service.chat.conversations), worker=service.worker.stats.to_dict())

    @app.post("/v1/recommend", response_model=RecommendOut, tags=["recommend"])
    async def recommend(body: RecommendIn, service: ServiceDep, request: Request) -> dict:
        """Top-k items of ``platform`` for a stored user (``user_id``: needs a key with the ``read`` scope) or an
        inline cross-platform ``history`` (no key)."""
        settings = service.settings
        if body.user_id is not None:
            authorize(request.app.state.keys, request.headers, "read")
        _limit("k", body.k, settings.max_k)
        history = None
        if body.history is not None:
            _limit("history", len(body.history), settings.max_history)
            history = await run_in_threadpool(_inline_history, service.store, body.history)
        if service.pipelines.handles(body.platform):
            return await service.run(PipelineJob(
                service.pipelines, body.platform, user_id=service.user(body.user_id), history=history, k=body.k,
                explain=body.explain, exclude=body.exclude, candidates=body.candidates), request)
        job = RecommendRequest(body.platform, user_id=service.user(body.user_id), history=history, k=body.k,
                               explain=body.explain, exclude=frozenset(body.exclude),
                               candidates=tuple(body.candidates) if body.candidates else None)
        return await service.run(RecommendJob(job), request)

    @app.post("/v1/chat", response_model=ChatOut, tags=["recommend"], dependencies=[Reader])
    async def chat(body: ChatIn, service: ServiceDep, request: Request) -> dict:
        """A chat message in a conversation (new when ``conversation_id`` is absent) -> recommendations."""
        _limit("k", body.k, service.settings.max_k)
        turn = ChatTurn(service.user(body.user_id), body.message, body.conversation_id, body.k, body.explain)
        return await service.run(ChatJob(service.chat, turn), request)

    @app.get("/metrics", tags=["service"], dependencies=[needs("admin")],
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    def metrics(request: Request) -> Response:
        """Prometheus metrics: requests by route and status, latency, model queue and batches (``admin`` key)."""
        return Response(request.app.state.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.post("/v1/admin/refresh", response_model=RefreshOut, tags=["service"], dependencies=[needs("admin")])
    async def refresh(body: RefreshIn, service: ServiceDep) -> dict:
        """Refresh the served registry's champion with the events since its data window, judge the challenger on
        the newest held-out events and promote it unless it is worse (``genrec refresh``); the server swaps to a
        promoted version without dropping a request (``admin`` key). 409 while another refresh runs (one asked
        for here, or the schedule's: ``genrec serve --refresh-every``)."""
        return await run_in_threadpool(service.refresh, body)

    @app.get("/v1/admin/refresh", response_model=RefreshStatusOut, tags=["service"], dependencies=[needs("admin")])
    def refresh_status(service: ServiceDep) -> dict:
        """The served registry's champion, the version answering now, whether a refresh runs, and the schedule
        (``genrec serve --refresh-every``): its interval, next run and the last scheduled run's time and outcome
        (``admin`` key)."""
        return service.refresh_status()

    @app.get("/v1/users", tags=["users"], dependencies=[Reader])
    def users(service: ServiceDep, platform: str | None = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
        if platform is not None:
            service.store.platform(platform)
        return {"users": service.store.users(platform)[:limit]}

    @app.get("/v1/users/{user_id}/history", response_model=list[HistoryItemOut], tags=["users"],
             dependencies=[Reader])
    def history(user_id: str, service: ServiceDep, platform: str | None = None,
                limit: Annotated[int, Query(ge=1, le=10_000)] = 50) -> list[HistoryItemOut]:
        """The user's latest events (newest last)."""
        user_id = service.user(user_id)
        if not service.store.has_user(user_id):
            raise NotFoundError(f"unknown user {user_id!r}: the store has no events for this user")
        return [HistoryItemOut(platform=h.platform, item_id=h.item_id, title=h.title,
                               timestamp=h.timestamp.isoformat(), event=h.event, value=h.value)
                for h in service.store.history(user_id, platform=platform, limit=limit)]

    @app.get("/v1/users/{user_id}/report", tags=["explain"], dependencies=[Reader],
             responses={200: {"content": {"text/html": {}, "text/markdown": {}, "application/json": {}}}})
    async def report(user_id: str, service: ServiceDep, request: Request,
                     fmt: Annotated[Literal["html", "md", "json"], Query(alias="format")] = "html",
                     platform: Annotated[list[str] | None, Query()] = None) -> Response:
        """Explainable report: profile per platform, activity charts, recommendations with rationale, evidence
        and a faithfulness check. ``platform`` (repeatable): target platforms [default: the user's own]."""
        text = await service.run(ReportJob(service.reports, service.user(user_id), platform or [], fmt,
                                           service.templates), request)
        if fmt == "html":
            return HTMLResponse(text)
        if fmt == "md":
            return PlainTextResponse(text, media_type="text/markdown")
        return Response(text, media_type="application/json")

    @app.get("/v1/platforms", response_model=list[PlatformOut], tags=["platforms"])
    def platforms(service: ServiceDep) -> list[PlatformOut]:
        sizes = service.store.catalog_sizes()
        return [PlatformOut(name=p.name, verb=p.verb, time_kind=p.time_kind, description=p.description,
                            catalog_items=sizes.get(p.name, 0)) for p in service.store.platforms()]

    @app.post("/v1/platforms", response_model=OnboardingOut, status_code=201, tags=["platforms"],
              dependencies=[Writer])
    async def add_platform(
        service: ServiceDep,
        name: Annotated[str, Form(min_length=1, max_length=64)],
        catalog: Annotated[UploadFile, File(description="CSV, TSV, JSONL or Parquet (optionally .gz)")],
        verb: Annotated[str | None, Form(max_length=40)] = None,
        description: Annotated[str | None, Form(max_length=500)] = None,
        time_kind: Annotated[Literal["time", "sequence"], Form()] = "time",
        template: Annotated[str | None, Form(max_length=20_000, description="Jinja2 recommend prompt")] = None,
        mapping: Annotated[list[str] | None, Form(description="CANONICAL=SOURCE column, e.g. item_id=sku")] = None,
        catalog_format: Annotated[Literal["csv", "tsv", "jsonl", "parquet"] | None, Form()] = None,
    ) -> dict:
        """Register a platform with its catalog: imported, embedded and servable when this returns (no training).
        """
        if not service.onboarding_lock.acquire(blocking=False):
            raise Busy("another platform is being onboarded; retry shortly", 10)
        try:
            with tempfile.TemporaryDirectory(prefix="genrec-upload-") as folder:
                path = Path(folder) / upload_name(catalog.filename, catalog_format)
                await run_in_threadpool(_save, catalog.file, path)
                report = await run_in_threadpool(
                    onboard, service.store, name, path, recommender=service.onboarding,
                    mapping=parse_mapping(mapping or []), fmt=catalog_format, verb=verb, template=template,
                    time_kind=time_kind, description=description, max_bytes=service.settings.max_catalog_bytes,
                    max_rows=service.settings.max_catalog_rows)
            pipelines = []
            if service.pipelines.configured is not None:  # it ranks the new platform too (on the worker thread)
                items, titles, details = await run_in_threadpool(catalog_titles, service.store, name)
                try:
                    pipelines = await service.run(CallJob(partial(service.pipelines.add_platform, name, items,
                                                                  titles, details)))
                except Busy:
                    pass  # onboarded all the same; the pipeline ranks it after `genrec platform add --pipeline`
        finally:
            service.onboarding_lock.release()
        return report.to_dict() | {"pipelines": pipelines}

    @app.post("/v1/events", response_model=EventsOut, tags=["events"], dependencies=[Writer])
    def events(body: EventsIn, service: ServiceDep) -> EventsOut:
        """Append events (canonical schema) in one transaction; the next recommendation sees them."""
        _limit("events", len(body.events), service.settings.max_events)
        # users whose items the loaded pipelines' counts follow (popularity, ItemKNN): their pairs before and after;
        # a swap of the served version waits for the pairs to be queued (it learns what it has not from the store)
        with service.pipelines.learning:
            users = sorted({service.user(e.user_id) for e in body.events}) if service.pipelines.loaded() else []
            before = service.store.user_items(users)
            try:
                batch = events_from_records([e.model_dump() for e in body.events])
                report = service.store.ingest(batch, CleaningConfig(hash_user_ids=service.settings.hash_user_ids,
                                                                    salt=service.settings.salt))
            except DataError as exc:
                where = f"events[{exc.line}].{exc.field}" if exc.line is not None and exc.field else "events"
                raise Invalid(where, exc.reason + (f" (expected {exc.expected})" if exc.expected else "")) from exc
            if users and report.events_added:
                service.pipelines.observe(before, service.store.user_items(users))
        return EventsOut(received=len(body.events), added=report.events_added,
                         already_present=report.events_present,
                         removed_by_cleaning=sum(rule.removed for rule in report.cleaning.rules),
                         store_version=service.store.version)
