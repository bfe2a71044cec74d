"""Prompt templates: a sandboxed Jinja2 environment with a user override directory.

Templates are looked up first in an optional override directory (the CLI's ``--templates DIR``), then in the
templates shipped with genrec (the top-level ``prompts/`` folder, installed as the package ``genrec._templates``);
sources registered at run time (a platform's own prompt, see ``genrec.onboarding``) come before both.
The environment is sandboxed (templates cannot reach Python internals or mutate their context) and undefined
variables are errors. Prompt templates are not HTML-escaped: untrusted text (item titles, user chat text) must go
through the ``quote`` filter, which renders it as one inert quoted string. Templates named ``*.html.j2`` (reports)
are HTML-escaped automatically. Registered sources are untrusted: they render in a separate process with hard
limits on time, memory, output, ``range`` and repetition (:mod:`genrec.template_sandbox`), so no template can hold
the process that asked for it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from genrec import template_sandbox
from genrec.errors import GenrecError
from genrec.template_sandbox import TemplateError, TemplateLimits

TEMPLATE_PACKAGE = "genrec._templates"
SYSTEM_TEMPLATE = "system.j2"
QUOTE_MAX_CHARS = 120
TRUSTED = TemplateLimits(output_chars=2**40, range_items=2**40, sequence_items=2**40)  # packaged/override files

_SPECIAL_TOKEN = re.compile(r"<\|[^|<>]{0,40}\|>|</?s>")  # chat-markup tokens (<|im_end|>, <s>, ...)
_WHITESPACE = re.compile(r"\s+")


class TemplateNotFoundError(GenrecError, jinja2.TemplateNotFound):
    """A template name that is in none of the searched directories."""

    def __init__(self, name: str, searched: list[str]) -> None:
        jinja2.TemplateNotFound.__init__(self, name)
        self.searched = searched
        self.message = f"prompt template {name!r} not found; searched: {', '.join(searched)}"
        self.args = (self.message,)

    def __str__(self) -> str:
        return self.message


def quote(value: object, max_chars: int = QUOTE_MAX_CHARS) -> str:
    """Render untrusted text as one inert, double-quoted string.

    Control and invisible format characters are removed, chat-markup tokens such as ``<|im_end|>`` are removed,
    all whitespace (newlines included) collapses to single spaces, the text is clipped to ``max_chars``
    (marked with ``…``), and backslashes and double quotes are escaped, so the text can neither end the quotes
    nor start a new line or a new chat turn.
    """
    text = unicodedata.normalize("NFKC", "" if value is None else str(value))
    text = "".join(" " if ch.isspace() else ch for ch in text if ch.isspace() or unicodedata.category(ch)[0] != "C")
    text = _WHITESPACE.sub(" ", _SPECIAL_TOKEN.sub(" ", text)).strip()
    if len(text) > max_chars:
        text = text[: max(max_chars - 1, 0)].rstrip() + "…"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_answer(titles: Sequence[str], reasons: Sequence[str] | None = None) -> str:
    """The answer in the format ``genrec.llm.parse_candidates`` reads: ``1. "Title"`` or ``1. "Title" - reason``."""
    lines = []
    for number, title in enumerate(titles, 1):
        line = f"{number}. {quote(title)}"
        if reasons is not None:
            line += f" - {reasons[number - 1]}"
        lines.append(line)
    return "\n".join(lines)


def packaged_templates() -> Path:
    """The directory of templates shipped with genrec.

    Installed (wheel or editable), it is the package ``genrec._templates``; in a source checkout used without
    installing, it is the ``prompts/`` folder beside the ``genrec/`` package.
    """
    spec = importlib.util.find_spec(TEMPLATE_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[1] / "prompts"


@dataclass(frozen=True)
class RecommendPrompt:
    """The context of ``recommend.j2``: ask for ``n`` items on ``platform`` for the user of ``profile``.

    ``verb`` is the platform's verb ("watched", "bought"), ``description`` an optional line about the platform,
    ``rationale`` whether each item comes with a one-sentence reason (``False`` is faster: titles only).
    """

    profile: str
    platform: str
    n: int
    verb: str = "interacted with"
    description: str | None = None
    rationale: bool = True


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The Jinja2 sandbox with per-render limits: ``range()`` items of one render together, and the size of what
    ``*`` and ``**`` build (``'a' * 10**9``, ``[0] * 10**9``, ``10 ** 10**9``). :func:`render_limited` sets the
    limits of a render and caps its output."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._render = threading.local()
        self.globals["range"] = self._range

    def begin(self, limits: TemplateLimits) -> None:
        self._render.limits = limits
        self._render.range_left = limits.range_items

    def _limits(self) -> TemplateLimits:
        limits = getattr(self._render, "limits", None)
        if limits is None:
            self.begin(TemplateLimits())
        return self._render.limits

    def _range(self, *args: int) -> range:
        span = range(*args)
        self._limits()
        self._render.range_left -= len(span)
        if self._render.range_left < 0:
            raise TemplateError("limit", f"range() of more than {self._limits().range_items:,} items in one render")
        return span

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        most = self._limits().sequence_items
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) and len(seq) * times > most:
                    raise TemplateError("limit", f"'*' would build {len(seq) * times:,} items (limit {most:,})")
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and \
                abs(left) > 1 and max(abs(left).bit_length(), 1) * right > 4096:
            raise TemplateError("limit", "'**' would build a number of more than 4096 bits")
        return super().call_binop(context, operator, left, right)


def render_limited(templates: PromptTemplates, name: str, variables: dict[str, Any], limits: TemplateLimits) -> str:
    """Template ``name`` rendered in this process with the :class:`LimitedEnvironment` limits and at most
    ``limits.output_chars`` characters of output (the error names the line that wrote past it)."""
    template = templates.get(name)
    templates.env.begin(limits)
    parts: list[str] = []
    size = 0
    stream = template.generate(variables)
    for part in stream:
        size += len(part)
        if size > limits.output_chars:
            raise TemplateError("limit", f"the template writes more than {limits.output_chars:,} characters",
                                _generator_line(stream, template))
        parts.append(part)
    return "".join(parts)


def _generator_line(stream: Any, template: jinja2.Template) -> int | None:
    """The template line a suspended ``Template.generate`` stream is at (the innermost frame of this template)."""
    line, filename = None, template.filename or "<template>"
    gen = stream
    while gen is not None and getattr(gen, "gi_frame", None) is not None:
        if gen.gi_frame.f_code.co_filename == filename:
            line = template.get_corresponding_lineno(gen.gi_frame.f_lineno)
        gen = gen.gi_yieldfrom
    return line


class PromptTemplates:
    """Renders genrec's prompt templates; ``override_dir`` templates take precedence over packaged ones.

    Registered sources are untrusted (a platform's own prompt, uploaded over the API): with ``isolate`` they
    render in the limited child process of :mod:`genrec.template_sandbox` under ``limits`` (``sandbox``, else the
    process-wide one); files render in this process (with the same kinds of limits, far larger, and no clock).
    """

    def __init__(self, override_dir: str | Path | None = None, *, isolate: bool = True,
                 limits: TemplateLimits = TemplateLimits(),
                 sandbox: template_sandbox.TemplateSandbox | None = None) -> None:
        self.override_dir = Path(override_dir).expanduser() if override_dir is not None else None
        if self.override_dir is not None and not self.override_dir.is_dir():
            raise GenrecError(f"template directory {str(self.override_dir)!r} does not exist")
        self.packaged = packaged_templates()
        self.isolate = isolate
        self.limits = limits
        self._sandbox = sandbox  # None: the process-wide one
        self._registered: dict[str, str] = {}
        loaders = [jinja2.DictLoader(self._registered), jinja2.FileSystemLoader(self.search_path)]
        self.env = LimitedEnvironment(
            loader=jinja2.ChoiceLoader(loaders),
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False,
                                                default=False),
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        self.env.filters["quote"] = quote

    @property
    def search_path(self) -> list[str]:
        """The directories searched for templates, in order."""
        dirs = [str(self.override_dir)] if self.override_dir is not None else []
        return [*dirs, str(self.packaged)]

    def register(self, name: str, source: str) -> str:
        """Make ``source`` available as template ``name`` (ahead of files); returns ``name``.

        Registering a changed source under the same name replaces the compiled template.
        """
        self._registered[name] = source
        return name

    def names(self) -> list[str]:
        """Every template name available, overrides and packaged together."""
        return sorted(set(self.env.list_templates()))

    def get(self, name: str) -> jinja2.Template:
        """The compiled template ``name`` (e.g. ``"recommend.j2"``)."""
        try:
            return self.env.get_template(name)
        except jinja2.TemplateNotFound:
            raise TemplateNotFoundError(name, self.search_path) from None

    def render(self, name: str, context: object = None, /, **values: Any) -> str:
        """Render template ``name`` with a context and keyword values, without leading/trailing whitespace.

        ``context`` may be a dataclass instance (its fields become variables), a mapping, or ``None``; keyword
        values are added on top.
        """
        variables = {**_as_variables(context), **values}
        if self.isolate and name in self._registered:
            sandbox = self._sandbox or template_sandbox.shared()
            return sandbox.render(self.search_path, name, self._registered[name], variables, self.limits).strip()
        try:
            return render_limited(self, name, variables, TRUSTED).strip()
        except jinja2.TemplateNotFound as exc:  # a template that ``name`` includes or extends
            raise TemplateNotFoundError(str(exc.name), self.search_path) from exc

    def messages(
        self, name: str, context: object = None, /, *, system: str | None = SYSTEM_TEMPLATE, **values: Any
    ) -> list[dict[str, str]]:
        """Chat messages: the ``system`` template (``None`` for none), then ``name`` rendered as the user turn."""
        turns = [{"role": "system", "content": self.render(system)}] if system is not None else []
        return [*turns, {"role": "user", "content": self.render(name, context, **values)}]


def _as_variables(context: object) -> dict[str, Any]:
    if context is None:
        return {}
    if dataclasses.is_dataclass(context) and not isinstance(context, type):
        return {field.name: getattr(context, field.name) for field in dataclasses.fields(context)}
    if isinstance(context, Mapping):
        return dict(context)
    raise TypeError(f"a template context must be a dataclass instance or a mapping, not {type(context).__name__}")
