"""A pipeline on the live event store: fit a spec on the store's training data, and read a user's context.

``fit_pipeline`` builds the training snapshot and validation cases with the same protocol the evaluation uses (the
spec's ``protocol``, default: temporal leave-last-out over every user), so the pipeline ``genrec fit`` saves is the
one the evaluation measures. ``store_fingerprint`` records what the pipeline was fitted on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from genrec.data.schema import HistoryItem, StoreDataset
from genrec.data.store import Store
from genrec.errors import GenrecError, NotFoundError
from genrec.pipeline.spec import SPEC_FILE, Pipeline, PipelineSpec
from genrec.pipeline.types import Context, Interaction


def fit_pipeline(store: Store, spec: PipelineSpec, *, data_dir: Path | None = None, embedder: object | None = None,
                 cache_dir: Path | None = None, progress: bool = False) -> Pipeline:
    """Fit ``spec`` on the store (its data set imported first when it is missing)."""
    return _fit(store, spec, data_dir=data_dir, embedder=embedder, cache_dir=cache_dir, progress=progress)[0]


def fit_registered(store: Store, spec: PipelineSpec, registry, *, data_dir: Path | None = None,
                   embedder: object | None = None, progress: bool = False):
    """Fit ``spec`` on the store and register it as the registry's champion. Its data window ends at the store's
    newest event; the validation and test targets the fit held out are recorded as held out, so the first
    refresh learns them (those at the end of a user's history)."""
    from genrec.pipeline.refresh import register

    pipeline, data = _fit(store, spec, data_dir=data_dir, embedder=embedder, progress=progress)
    held_out = [[c.user_id, c.platform, c.target, c.timestamp] for c in (*data.valid, *data.test)]
    window_end = max([*(x.timestamp for seq in data.train.sequences.values() for x in seq),
                      *(timestamp for *_, timestamp in held_out)], default=0.0)
    return pipeline, register(registry, pipeline, window_end=window_end, holdout=held_out,
                              metrics=pipeline.fusion.report)


def _fit(store: Store, spec: PipelineSpec, *, data_dir: Path | None = None, embedder: object | None = None,
         cache_dir: Path | None = None, progress: bool = False):
    from genrec.data.loading import ensure_dataset
    from genrec.evaluation.protocol import Protocol, build

    if spec.dataset is None:
        raise GenrecError(f"pipeline {spec.name!r} names no dataset: say which data set to fit on (key 'dataset')")
    platforms = ensure_dataset(store, spec.dataset, data_dir=data_dir)
    try:
        protocol = Protocol.from_dict(spec.protocol)
    except (TypeError, ValueError) as exc:
        raise GenrecError(f"pipeline {spec.name!r}: protocol: {exc}") from exc
    data = build(store, protocol, platforms)
    pipeline = Pipeline(spec, store=store, embedder=embedder, cache_dir=cache_dir)
    pipeline.fit(data.train, data.valid, progress=progress)
    pipeline.fit_info.update(dataset=spec.dataset, platforms=platforms, protocol=protocol.to_dict(),
                             store=store_fingerprint(store, platforms))
    return pipeline, data


def default_spec(dataset: str, store: Store | None = None) -> PipelineSpec:
    """The default pipeline of a data set: a built-in one's shipped spec (``pipelines/defaults.yaml``), or for a
    data set defined in ``store`` (``genrec data register``) ``own_data_spec``."""
    from genrec.config import read_yaml
    from genrec.pipeline import DEFAULTS_FILE, shipped_spec, specs_dir

    defaults = read_yaml(specs_dir() / DEFAULTS_FILE, "pipeline defaults") or {}
    defined = store.dataset(dataset) if store is not None and dataset not in defaults else None
    if defined is not None:
        return own_data_spec(defined)
    if dataset not in defaults:
        raise GenrecError(f"no default pipeline for data set {dataset!r} (defaults exist for "
                          f"{', '.join(sorted(defaults))}): fit one with `genrec fit` and pass --pipeline")
    return PipelineSpec.from_yaml(shipped_spec(defaults[dataset]))


def own_data_spec(dataset: StoreDataset) -> PipelineSpec:
    """The default pipeline of a data set defined in the store: popularity and item-kNN candidates, fused with
    weights tuned on validation users (the imported split's, else each user's second-to-last events), no LLM stage:
    it fits in seconds on data nobody has tuned a pipeline for yet. ``genrec fit`` fits any other spec on it."""
    users = "dataset" if dataset.split == "store" else "all"
    return PipelineSpec.from_dict({
        "name": f"{dataset.name}-classic", "dataset": dataset.name,
        "protocol": {"targets": "last-per-platform", "users": users, "seed": 2020}, "history_scope": "cross",
        "sources": [{"kind": "popularity", "n": 50}, {"kind": "itemknn", "n": 50}], "llm": None,
        "fusion": {"weights": [0.0, 0.25, 0.5, 1.0, 2.0, 4.0], "tune_users": 200, "seed": 0}},
        where=f"default pipeline of {dataset.name}")


def default_pipeline(store: Store, dataset: str, *, data_dir: Path | None = None,
                     embedder: object | None = None) -> Pipeline:
    """The data set's default pipeline, fitted on first use and cached under ``$GENREC_HOME/pipelines`` by the
    store's content (new events make the next call fit it again)."""
    from genrec.config import cache_dir
    from genrec.data.loading import ensure_dataset

    spec = default_spec(dataset, store)
    platforms = ensure_dataset(store, dataset, data_dir=data_dir)
    folder = cache_dir("pipelines") / f"{spec.name}-{store_fingerprint(store, platforms)['digest']}"
    if (folder / SPEC_FILE).is_file():
        return Pipeline.load(folder, store=store, embedder=embedder)
    pipeline = fit_pipeline(store, spec, data_dir=data_dir, embedder=embedder)
    pipeline.save(folder)
    return pipeline


def dataset_of(platform: str, store: Store | None = None) -> str | None:
    """The built-in data set that holds ``platform``, else the first data set defined in ``store`` that does
    (``None``: none does)."""
    from genrec.data import datasets

    own = store.datasets() if store is not None else []
    return next((name for name, d in datasets.REGISTRY.items() if platform in d.platforms), None) or \
        next((d.name for d in own if platform in d.platforms), None)


def store_fingerprint(store: Store, platforms: list[str]) -> dict[str, Any]:
    """Events and catalog items per platform, the latest event time, and a digest of them."""
    rows = store.con.execute(
        "SELECT platform, count(*), max(timestamp) FROM events WHERE platform IN (SELECT unnest(?)) "
        "GROUP BY platform ORDER BY platform", [platforms]).fetchall()
    sizes = store.catalog_sizes()
    summary = {platform: {"events": n, "latest": str(latest), "items": sizes.get(platform, 0)}
               for platform, n, latest in rows}
    digest = hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()[:16]
    return {"platforms": summary, "digest": digest}


def catalog_titles(store: Store, platform: str) -> tuple[list[str], dict[tuple[str, str], str],
                                                         dict[tuple[str, str], str]]:
    """A platform's catalog items (the store's order, as the protocol reads them), their titles and their other
    text (``genrec.evaluation.protocol.item_details``)."""
    from genrec.evaluation.protocol import item_details

    catalog = store.catalog(platform)
    items = catalog["item_id"].tolist()
    titles = {(platform, i): t for i, t in zip(items, catalog["title"], strict=True) if isinstance(t, str) and t}
    return items, titles, {(platform, i): d for i, d in zip(items, item_details(catalog), strict=True) if d}


def user_context(store: Store, user_id: str, platform: str, *, before: datetime | None = None) -> Context:
    """A store user's cross-platform history (before ``before``) as the context for ``platform``."""
    if not store.has_user(user_id):
        raise NotFoundError(f"unknown user {user_id!r}: the store has no events for this user")
    history = store.history(user_id, before=before)
    if not history:
        raise GenrecError(f"user {user_id!r} has no events before {before}")
    return history_context(user_id, platform, history)


def history_context(user_id: str | None, platform: str, history: Sequence[HistoryItem]) -> Context:
    """A history of stored events (naive UTC times, as the protocol reads them) as a context for ``platform``."""
    if not history:
        raise GenrecError("cannot recommend from an empty history")
    return Context(user_id, platform, tuple(
        Interaction(h.platform, h.item_id, h.timestamp.replace(tzinfo=UTC).timestamp(), h.value) for h in history))
