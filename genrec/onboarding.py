"""Zero-shot onboarding: register a new platform with its catalog and make it servable at once.

Nothing is trained. The catalog goes through the generic item importer (any CSV/TSV/JSONL/Parquet file with a
column mapping) into the store, in the same transaction as the platform itself and its optional own recommend
prompt; then the platform's catalog embedding index is built (and cached on disk), so the next recommendation,
chat turn or report on it needs no further set-up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from genrec.data.importers import Mapping, file_batch
from genrec.data.readers import read_table
from genrec.data.schema import TIME_KINDS, Platform, check_platform_name, default_verb
from genrec.data.store import Store
from genrec.errors import ConflictError, DataError
from genrec.prompts import PromptTemplates, RecommendPrompt
from genrec.recommender import Recommender
from genrec.template_sandbox import TemplateError, TemplateSandbox

_TRIAL = RecommendPrompt(profile="On \"movies\", the user watched 1 item.", platform="new", n=3, verb="used")
# the longest profile and largest n a real request may bring, with quotes, markup and line breaks in it
_WORST_ITEM = '"Item <{p}-{i}> \\ {{{{ x }}}} ' + "long " * 8 + '"'
_WORST = RecommendPrompt(
    profile="\n".join(f'On "platform-{p}", the user bought: ' + ", ".join(_WORST_ITEM.format(p=p, i=i)
                                                                        for i in range(40)) for p in range(8)),
    platform="new", n=100, verb="interacted with", description="A description " * 20)


@dataclass(frozen=True)
class OnboardingReport:
    """What onboarding did: catalog items stored, rows skipped, texts embedded (0 when all were cached), times."""

    platform: str
    items: int
    skipped_rows: int
    embedded: int
    import_seconds: float
    index_seconds: float

    @property
    def seconds(self) -> float:
        return self.import_seconds + self.index_seconds

    def to_dict(self) -> dict:
        return asdict(self) | {"seconds": self.seconds}


def check_template(source: str, platforms: Sequence[str] = ()) -> None:
    """Compile and trial-render a platform's recommend prompt under the untrusted-template limits (a separate
    process, see ``genrec.template_sandbox``); ``DataError`` on field ``template`` naming the line.

    The template sees the context of ``recommend.j2`` (``profile``, ``platform``, ``n``, ``verb``,
    ``description``, ``rationale`` and an optional ``instruction``). It is rendered for every name in
    ``platforms`` and a new one, with a short and a worst-case profile, so a template that is fast only for the
    name it was tried with is caught here rather than on the model worker.
    """
    sandbox = TemplateSandbox()  # its own renderer: a slow template never queues ahead of the model worker's
    templates = PromptTemplates(sandbox=sandbox)
    name = templates.register("platform-template-check.j2", source)
    try:
        for trial in (_WORST, _TRIAL):  # the limits first: an empty prompt is the lesser problem
            for platform in dict.fromkeys([*platforms, _TRIAL.platform]):
                for rationale, instruction in ((True, "something quiet"), (False, None), (True, _WORST.profile)):
                    text = templates.render(name, replace(trial, platform=platform, rationale=rationale),
                                            instruction=instruction)
                    if not text and trial is _TRIAL and instruction is None:
                        raise DataError("template renders an empty prompt", field="template")
    except TemplateError as exc:
        if exc.kind == "syntax":
            raise DataError(exc.reason, field="template", line=exc.line, expected="a Jinja2 template") from exc
        expected = None if exc.kind == "limit" else \
            "only the variables profile, platform, n, verb, description, rationale, instruction"
        raise DataError(f"template cannot be rendered: {exc.reason}", field="template", line=exc.line,
                        expected=expected) from exc
    finally:
        sandbox.close()


def onboard(
    store: Store,
    name: str,
    catalog: str | Path,
    *,
    recommender: Recommender,
    mapping: Mapping | None = None,
    fmt: str | None = None,
    verb: str | None = None,
    template: str | None = None,
    time_kind: str = "time",
    description: str | None = None,
    skip_bad_rows: bool = False,
    max_bytes: int | None = None,
    max_rows: int | None = None,
) -> OnboardingReport:
    """Register platform ``name`` with the catalog file ``catalog`` in ``store`` and build its index with
    ``recommender`` (a recommender over the same store; its embedder does the embedding).

    ``mapping`` names the source columns of ``item_id`` and ``title`` (and optionally ``description``,
    ``category``, ``attributes``, ``year``); ``template`` is an optional Jinja2 recommend prompt for this
    platform (see ``check_template``). ``max_bytes``/``max_rows`` limit the catalog file (decompressed) and
    raise ``TooLargeError``. A name that is already registered raises ``ConflictError``: add items to
    an existing platform with ``genrec data import-file --kind items``.
    """
    started = time.perf_counter()
    check_platform_name(name)
    if time_kind not in TIME_KINDS:
        raise DataError(f"unknown time kind {time_kind!r}", field="time_kind", expected=" or ".join(TIME_KINDS))
    if template is not None:
        check_template(template, [p.name for p in store.platforms()] + [name])
    if any(p.name == name for p in store.platforms()):
        raise ConflictError(f"platform {name!r} is already registered")
    platform = Platform(name, verb=(verb or "").strip() or default_verb(name), time_kind=time_kind,
                        description=description)
    table = read_table(catalog, fmt, skip_bad_rows=skip_bad_rows, max_bytes=max_bytes, max_rows=max_rows)
    batch = file_batch(catalog, kind="items", table=table, mapping=mapping, platform=platform,
                       skip_bad_rows=skip_bad_rows)
    if template is not None:
        batch.templates[name] = template
    report = store.ingest(batch)
    imported = time.perf_counter()
    encoded = recommender.embedder.encoded_count
    catalog_index = recommender.index(name)
    return OnboardingReport(platform=name, items=len(catalog_index), skipped_rows=report.skipped_rows,
                            embedded=recommender.embedder.encoded_count - encoded,
                            import_seconds=imported - started, index_seconds=time.perf_counter() - imported)
