"""Render untrusted templates (a platform's own recommend prompt) in a separate process with hard limits.

A template can loop, recurse or allocate without bound; the Jinja2 sandbox stops it reaching Python internals but
not from taking all the time and memory of the process that renders it. So untrusted templates render in one
long-lived child process (``python -m genrec.template_sandbox``) that:

* caps its address space (``memory_bytes``) and recursion depth;
* interrupts a render after ``seconds`` (``SIGALRM``), so the error names the template line it was running;
* renders through :class:`genrec.prompts.LimitedEnvironment`, which caps ``range`` items and string/list
  repetition per render and stops output over ``output_chars``.

The parent waits ``seconds`` plus a grace period at most; a child that has not answered by then (stuck in one long
C call) is killed and started afresh for the next render. Every failure is a :class:`TemplateError` naming the
template line where it is known. Requests and answers are JSON lines over the child's stdin/stdout.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from genrec.errors import DataError

GRACE_S = 1.0


@dataclass(frozen=True)
class TemplateLimits:
    """Hard limits of one render of an untrusted template."""

    seconds: float = 1.0
    output_chars: int = 100_000
    range_items: int = 100_000  # all ``range()`` calls of one render together
    sequence_items: int = 100_000  # the longest string or list a ``*`` may build
    memory_bytes: int = 768 * 1024 * 1024  # the child's address space


class TemplateError(DataError):
    """An untrusted template that does not compile, fails, or exceeds a limit; ``kind`` says which
    (``syntax``, ``undefined``, ``security``, ``not_found``, ``limit`` or ``error``)."""

    def __init__(self, kind: str, message: str, line: int | None = None) -> None:
        super().__init__(message, field="template", line=line)
        self.kind = kind


class TemplateSandbox:
    """One child process rendering untrusted templates, one render at a time (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._child: subprocess.Popen | None = None
        self._buffer = b""

    def render(self, search_path: list[str], name: str, source: str, variables: dict[str, Any],
               limits: TemplateLimits) -> str:
        """``source`` (registered as ``name``, with ``search_path`` for what it includes) rendered with
        ``variables`` under ``limits``; raises :class:`TemplateError`."""
        request = json.dumps({"search_path": search_path, "name": name, "source": source,
                              "variables": variables, "limits": asdict(limits)}).encode() + b"\n"
        with self._lock:
            child = self._start()
            try:
                child.stdin.write(request)
                child.stdin.flush()
                answer = self._read_line(child, time.monotonic() + limits.seconds + GRACE_S)
            except (OSError, TimeoutError) as exc:
                self._kill()
                reason = "took too long" if isinstance(exc, TimeoutError) else "stopped the renderer"
                raise TemplateError("limit", f"the template {reason} (limit {limits.seconds:g} s, "
                                             f"{limits.memory_bytes // 2**20} MB)") from None
        reply = json.loads(answer)
        if "text" in reply:
            return reply["text"]
        raise TemplateError(reply["kind"], reply["message"], reply.get("line"))

    def close(self) -> None:
        with self._lock:
            self._kill()

    def _start(self) -> subprocess.Popen:
        if self._child is None or self._child.poll() is not None:
            env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
            self._child = subprocess.Popen([sys.executable, "-m", "genrec.template_sandbox"], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
            self._buffer = b""
        return self._child

    def _kill(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child.wait()
            self._child = None

    def _read_line(self, child: subprocess.Popen, deadline: float) -> bytes:
        fd = child.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise OSError("the renderer exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


_shared: TemplateSandbox | None = None
_shared_lock = threading.Lock()


def shared() -> TemplateSandbox:
    """The process-wide sandbox (started on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = TemplateSandbox()
        return _shared


# --- the child ---------------------------------------------------------------------------------------------------


class _Interrupted(Exception):
    pass


def _serve() -> None:
    import resource
    import signal

    from genrec.prompts import PromptTemplates, render_limited

    def interrupt(*_: object) -> None:
        raise _Interrupted

    signal.signal(signal.SIGALRM, interrupt)
    sys.setrecursionlimit(400)
    environments: dict[tuple[str, ...], PromptTemplates] = {}
    memory_set = False
    for raw in sys.stdin.buffer:
        request = json.loads(raw)
        limits = TemplateLimits(**request["limits"])
        if not memory_set:
            resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
            memory_set = True
        key = tuple(request["search_path"])
        templates = environments.get(key)
        if templates is None:
            override = key[0] if len(key) > 1 else None
            templates = environments[key] = PromptTemplates(override, isolate=False)
        name = templates.register(request["name"], request["source"])
        signal.setitimer(signal.ITIMER_REAL, limits.seconds)
        try:
            reply = {"text": render_limited(templates, name, request["variables"], limits)}
        except _Interrupted as exc:
            reply = _failure(exc, "limit", f"the template took longer than {limits.seconds:g} s", name)
        except TemplateError as exc:
            reply = {"kind": exc.kind, "message": exc.reason, "line": exc.line or template_line(exc, name)}
        except MemoryError as exc:
            reply = _failure(exc, "limit", f"the template needs more than {limits.memory_bytes // 2**20} MB", name)
        except RecursionError as exc:
            reply = _failure(exc, "limit", "the template recurses too deeply (an include of itself?)", name)
        except Exception as exc:  # every other failure of the template goes back to the caller
            reply = _failure(exc, *_classify(exc), name)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        sys.stdout.buffer.write(json.dumps(reply).encode() + b"\n")
        sys.stdout.buffer.flush()


def _classify(exc: Exception) -> tuple[str, str]:
    import jinja2
    from jinja2.sandbox import SecurityError

    if isinstance(exc, jinja2.TemplateSyntaxError):
        return "syntax", f"template syntax error: {exc.message}"
    if isinstance(exc, jinja2.UndefinedError):
        return "undefined", str(exc)
    if isinstance(exc, SecurityError):
        return "security", str(exc)
    if isinstance(exc, jinja2.TemplateNotFound):
        return "not_found", f"template {exc.name!r} not found"
    return "error", f"{type(exc).__name__}: {exc}"


def _failure(exc: BaseException, kind: str, message: str, name: str) -> dict:
    return {"kind": kind, "message": message, "line": template_line(exc, name)}


def template_line(exc: BaseException, name: str) -> int | None:
    """The line of template ``name`` that ``exc`` was raised from (Jinja2 rewrites tracebacks to template lines)."""
    line = getattr(exc, "lineno", None) if getattr(exc, "name", None) in (name, None) else None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename in (name, "<template>"):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


if __name__ == "__main__":  # run the module's own copy, so that its exception classes are the ones raised
    from genrec.template_sandbox import _serve as serve

    serve()
