"""API keys with scopes, and the ASGI layers every response passes: key checks before the body is read, security
headers, and a last-resort 500 that keeps the connection open; user ids redacted from the access log.

Keys come as ``KEY`` or ``KEY:scope+scope`` (scopes ``read``, ``write``, ``admin``; ``admin`` implies the others;
a key without scopes may read and write). A route declares what it needs with ``dependencies=[needs("write")]``:
:class:`KeysFirst` checks that before the app parses the body (so a malformed body without a key gets 401, not
422), and the dependency itself documents the route's security in the OpenAPI schema.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import Match

SCOPES = ("read", "write", "admin")
DEFAULT_SCOPES = frozenset({"read", "write"})
log = logging.getLogger("genrec.server")


def parse_keys(entries: Iterable[str]) -> dict[str, frozenset[str]]:
    """``["k1", "k2:read", "k3:read+write"]`` -> key -> scopes; ``ValueError`` naming an unknown scope."""
    keys: dict[str, frozenset[str]] = {}
    for entry in entries:
        key, _, scopes = entry.strip().partition(":")
        names = frozenset(s.strip() for s in scopes.split("+") if s.strip()) if scopes else DEFAULT_SCOPES
        unknown = sorted(names - set(SCOPES))
        if unknown:
            raise ValueError(f"unknown API key scope {unknown[0]!r}; use {', '.join(SCOPES)} (e.g. KEY:read+write)")
        if key:
            keys[key] = keys.get(key, frozenset()) | names
    return keys


def authorize(keys: Mapping[str, frozenset[str]], headers: Headers, scope: str) -> None:
    """Raise ``HTTPException`` 401/403 unless the request carries a key (``X-API-Key`` or ``Authorization:
    Bearer``) holding ``scope``."""
    if not keys:
        raise HTTPException(403, f"this endpoint needs an API key with the {scope!r} scope, and none is configured "
                                 "(set GENREC_API_KEYS or api_keys in the server config)")
    given = headers.get("x-api-key")
    if not given:
        kind, _, token = headers.get("authorization", "").partition(" ")
        given = token.strip() if kind.lower() == "bearer" else None
    if not given:
        raise HTTPException(401, f"this endpoint needs an API key with the {scope!r} scope (X-API-Key header or "
                                 "Authorization: Bearer)", headers={"WWW-Authenticate": "Bearer"})
    granted = None
    for key, scopes in keys.items():  # compare with every key, so timing does not tell which one matched
        if hmac.compare_digest(given.encode(), key.encode()):
            granted = scopes
    if granted is None:
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
    if scope not in granted and "admin" not in granted:
        raise HTTPException(403, f"this API key lacks the {scope!r} scope")


_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key from GENREC_API_KEYS")
_bearer = HTTPBearer(auto_error=False, description="An API key from GENREC_API_KEYS, as a bearer token")


@dataclass(frozen=True)
class ScopeCheck:
    """The dependency behind :func:`needs`: checks the key of the request (again, after :class:`KeysFirst`)."""

    scope: str

    def __call__(self, request: Request, api_key: str | None = Depends(_api_key_header),
                 bearer: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        authorize(request.app.state.keys, request.headers, self.scope)


def needs(scope: str) -> Any:
    """A route dependency: the request needs a key holding ``scope``."""
    return Depends(ScopeCheck(scope))


def _json(status: int, body: dict, headers: Mapping[str, str] | None = None) -> tuple[dict, dict]:
    raw = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return ({"type": "http.response.start", "status": status, "headers": head},
            {"type": "http.response.body", "body": raw})


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class KeysFirst:
    """ASGI middleware: a request for a route that ``needs`` a scope is answered 401/403 before its body is read."""

    def __init__(self, app: ASGIApp, routes: Callable[[], list]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            needed = self._scope(scope)
            if needed is not None:
                try:
                    authorize(scope["app"].state.keys, Headers(scope=scope), needed)
                except HTTPException as exc:
                    for message in _json(exc.status_code, {"error": exc.detail, "field": None}, exc.headers):
                        await send(message)
                    return
        await self.app(scope, receive, send)

    def _scope(self, scope: dict) -> str | None:
        for route in self.routes():
            match, _ = route.matches(scope)
            if match == Match.FULL:
                for dependency in getattr(route, "dependencies", ()):
                    if isinstance(dependency.dependency, ScopeCheck):
                        return dependency.dependency.scope
                return None
        return None


CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# the interactive API docs load Swagger UI / ReDoc from their CDN
DOCS_CSP = ("default-src 'self'; img-src 'self' data: https://fastapi.tiangolo.com; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; worker-src blob:; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'")
DOCS_PATHS = ("/docs", "/redoc")


_USER_IN_PATH = re.compile(r"(/v1/users/)[^/?#\s]+")
_USER_IN_QUERY = re.compile(r"((?:^|[?&])user(?:_id)?=)[^&#\s]*")


class RedactUserIds(logging.Filter):
    """Access-log filter: user ids in request paths and queries become ``<user>`` (the log says what was asked
    for, not about whom)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def redact(text: str) -> str:
    return _USER_IN_QUERY.sub(r"\1<user>", _USER_IN_PATH.sub(r"\1<user>", text))


def redact_access_log(name: str = "uvicorn.access") -> None:
    """Install :class:`RedactUserIds` on the access logger (once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactUserIds) for f in logger.filters):
        logger.addFilter(RedactUserIds())


class Hardened:
    """ASGI middleware around the whole app: security headers on every response (HTML, JSON, files), and an
    exception that escaped everything else becomes a logged JSON 500 without ending the keep-alive connection
    (re-raising it to the server would make the server close the connection under the client)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = DOCS_CSP if scope["path"].startswith(DOCS_PATHS) else CSP
        extra = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                 (b"content-security-policy", csp.encode()), (b"referrer-policy", b"no-referrer")]
        started = False

        async def send_hardened(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {name.lower() for name, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *(h for h in extra if h[0] not in names)]}
            await send(message)

        try:
            await self.app(scope, receive, send_hardened)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not started:
                for message in _json(500, {"error": "internal server error", "field": None}):
                    await send_hardened(message)
