"""Methods by name, as evaluation configs refer to them. Heavy resources (embedder, LLM) are shared."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from genrec.config import read_yaml
from genrec.data.store import Store
from genrec.errors import GenrecError
from genrec.evaluation.config import MethodSpec
from genrec.pipeline.sources import ContentOnly, ItemKNN, Method, MostPop, SASRec, TextSeqRec


@dataclass
class Resources:
    """Objects shared by every method of a run (loaded once, on first use)."""

    store: Store | None = None
    cache_dir: Path | None = None
    _embedder: object | None = field(default=None, repr=False)

    @property
    def embedder(self):
        if self._embedder is None:
            from genrec.embedding import Embedder

            self._embedder = Embedder()
        return self._embedder


def _genrec(spec: MethodSpec, scope: str, resources: Resources) -> Method:
    from genrec.evaluation.generative import GenerativeMethod

    return GenerativeMethod.from_options(spec.options, store=resources.store, history_scope=scope,
                                         embedder=resources.embedder, cache_dir=resources.cache_dir, name=spec.title)


def _pipeline(spec: MethodSpec, scope: str, resources: Resources) -> Method:
    """A pipeline spec as an evaluated row: ``options: {spec: pipelines/NAME.yaml}`` or the spec's keys inline;
    the row's history scope replaces the spec's."""
    from genrec.pipeline import Pipeline, PipelineSpec, shipped_spec

    options = dict(spec.options)
    if "spec" in options:
        path = options.pop("spec")
        if options:
            raise GenrecError(f"method {spec.title!r}: 'spec' takes no other options, got {sorted(options)}")
        raw = read_yaml(path if Path(path).is_file() else shipped_spec(path), "pipeline spec")
    else:
        raw = {"name": spec.title, **options}
    pipeline_spec = PipelineSpec.from_dict({**raw, "name": spec.title, "history_scope": scope},
                                           where=f"method {spec.title!r}")
    return Pipeline(pipeline_spec, store=resources.store, embedder=resources.embedder,
                    cache_dir=resources.cache_dir)


def create_named(names: Sequence[str], history_scope: str, store: Store,
                 embedder: object | None = None) -> list[Method]:
    """Harness methods by name with their default options (e.g. the training's negative and validation sources)."""
    resources = Resources(store=store, _embedder=embedder)
    return [create(MethodSpec(name), history_scope, resources) for name in names]


FACTORIES: dict[str, Callable[[MethodSpec, str, Resources], Method]] = {
    "mostpop": lambda spec, scope, res: MostPop(history_scope=scope, **spec.options),
    "itemknn": lambda spec, scope, res: ItemKNN(history_scope=scope, **spec.options),
    "sasrec": lambda spec, scope, res: SASRec(history_scope=scope, **spec.options),
    "content": lambda spec, scope, res: ContentOnly(encoder=res.embedder, history_scope=scope, **spec.options),
    "textseq": lambda spec, scope, res: TextSeqRec(encoder=res.embedder, history_scope=scope, **spec.options),
    "genrec": _genrec,
    "pipeline": _pipeline,
}


def create(spec: MethodSpec, history_scope: str, resources: Resources) -> Method:
    if spec.name not in FACTORIES:
        raise GenrecError(f"unknown method {spec.name!r}; known: {', '.join(FACTORIES)}")
    try:
        return FACTORIES[spec.name](spec, history_scope, resources)
    except TypeError as exc:
        raise GenrecError(f"method {spec.title!r}: bad options {spec.options} ({exc})") from exc
