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

from genrec.data.schema import HistoryItem
from genrec.data.store import Store
from genrec.errors import GenrecError, NotFoundError
from genrec.pipeline.spec import SPEC_FILE, Pipeline, PipelineSpec
from genrec.pipeline.types import Context, Interaction


def fit_pipeline(store: Store, spec: PipelineSpec, *, data_dir: Path | None = None, embedder: object | None = None,
                 cache_dir: Path | None = None, progress: bool = False) -> Pipeline:
    """Fit ``spec`` on the store (its data set imported first when it is missing)."""
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
    return pipeline


def default_spec(dataset: str) -> PipelineSpec:
    """The shipped default pipeline of a registered data set (``pipelines/defaults.yaml``)."""
    from genrec.config import read_yaml
    from genrec.pipeline import DEFAULTS_FILE, shipped_spec, specs_dir

    defaults = read_yaml(specs_dir() / DEFAULTS_FILE, "pipeline defaults") or {}
    if dataset not in defaults:
        raise GenrecError(f"no default pipeline for data set {dataset!r} (defaults exist for "
                          f"{', '.join(sorted(defaults))}): fit one with `genrec fit` and pass --pipeline")
    return PipelineSpec.from_yaml(shipped_spec(defaults[dataset]))


def default_pipeline(store: Store, dataset: str, *, data_dir: Path | None = None,
                     embedder: object | None = None) -> Pipeline:
    """The data set's default pipeline, fitted on first use and cached under ``$GENREC_HOME/pipelines`` by the
    store's content (new events make the next call fit it again)."""
    from genrec.config import cache_dir
    from genrec.data.loading import ensure_dataset

    spec = default_spec(dataset)
    platforms = ensure_dataset(store, dataset, data_dir=data_dir)
    folder = cache_dir("pipelines") / f"{spec.name}-{store_fingerprint(store, platforms)['digest']}"
    if (folder / SPEC_FILE).is_file():
        return Pipeline.load(folder, store=store, embedder=embedder)
    pipeline = fit_pipeline(store, spec, data_dir=data_dir, embedder=embedder)
    pipeline.save(folder)
    return pipeline


def dataset_of(platform: str) -> str | None:
    """The registered data set that holds ``platform`` (``None``: none does)."""
    from genrec.data import datasets

    return next((name for name, d in datasets.REGISTRY.items() if platform in d.platforms), None)


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
