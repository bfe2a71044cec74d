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


def _fusion(spec: MethodSpec, scope: str, resources: Resources) -> Method:
    from genrec.evaluation.fusion import FusedMethod

    options = dict(spec.options)
    prior = create(MethodSpec(options.pop("prior", "itemknn"), options=options.pop("prior_options", {})), scope,
                   resources)
    tuning = {k: options.pop(k) for k in ("weights", "tune_users", "seed") if k in options}
    llm = _genrec(MethodSpec("genrec", label=spec.title, options=options), scope, resources)
    return FusedMethod(prior, llm, name=spec.title, **tuning)


def _rerank(spec: MethodSpec, scope: str, resources: Resources) -> Method:
    from genrec.evaluation.generative import GenerativeMethod
    from genrec.evaluation.rerank import RerankMethod

    options = dict(spec.options)
    made: dict[str, Method] = {}  # a prior that is also a source is the same fitted model

    def method(entry: str | dict) -> Method:
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        key = repr(sorted(entry.items()))
        if key not in made:
            made[key] = create(MethodSpec(entry.pop("name"), options=entry.pop("options", {}), **entry), scope,
                               resources)
        return made[key]

    sources = [method(entry) for entry in options.pop("sources", ["mostpop", "itemknn"])]
    prior = method(options.pop("prior")) if "prior" in options else None
    tuning = {k: options.pop(k) for k in ("per_source", "weights", "calibrations", "tune_users", "seed")
              if k in options}
    # raw scores (the re-ranker tunes its own calibration) and the title prior the row names (default: the model's
    # own), whatever the adapter's metadata holds
    options["recommender"] = {"title_prior": "model", **options.get("recommender", {}), "calibration": 0.0}
    # the LLM only scores here: no generation cache to read (the re-ranker keeps its own score cache)
    llm = GenerativeMethod.from_options(options, store=resources.store, history_scope=scope,
                                        embedder=resources.embedder, cache_dir=None, name=spec.title)
    return RerankMethod(sources, llm, name=spec.title, prior=prior, cache_dir=resources.cache_dir, **tuning)


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
    "fusion": _fusion,
    "rerank": _rerank,
    "pipeline": _pipeline,
}


def create(spec: MethodSpec, history_scope: str, resources: Resources) -> Method:
    if spec.name not in FACTORIES:
        raise GenrecError(f"unknown method {spec.name!r}; known: {', '.join(FACTORIES)}")
    try:
        return FACTORIES[spec.name](spec, history_scope, resources)
    except TypeError as exc:
        raise GenrecError(f"method {spec.title!r}: bad options {spec.options} ({exc})") from exc
