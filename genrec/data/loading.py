"""Import registered data sets into a store (the library side of ``genrec data import``)."""

from __future__ import annotations

from pathlib import Path

from genrec.config import default_data_dir
from genrec.data import datasets
from genrec.data.cleaning import CleaningConfig
from genrec.data.store import ImportReport, Store
from genrec.errors import GenrecError


def import_dataset(
    store: Store,
    name: str,
    *,
    data_dir: Path | None = None,
    path: Path | None = None,
    download: bool = False,
    cleaning: CleaningConfig | None = None,
    skip_bad_rows: bool = False,
) -> ImportReport:
    """Load a registered data set (downloading it first if asked and missing) and ingest it."""
    dataset = datasets.get(name)
    data_dir = data_dir or default_data_dir()
    if path is None:
        if download and not dataset.path(data_dir).is_dir():
            from genrec.data.download import download as fetch

            fetch(dataset, data_dir)
        path = dataset.locate(data_dir)
    batch = dataset.loader(path, skip_bad_rows=skip_bad_rows)
    return store.ingest(batch, cleaning)


def ensure_dataset(store: Store, name: str, *, data_dir: Path | None = None) -> list[str]:
    """Import a registered data set unless its platforms already hold events; returns its platforms."""
    dataset = datasets.get(name)
    if not dataset.platforms:
        raise GenrecError(f"data set {name!r} defines its platforms from its files: import it with "
                          f"`genrec data import {name} --path DIR` and name the platforms instead")
    if not all(store.has_events(p) for p in dataset.platforms):
        import_dataset(store, name, data_dir=data_dir)
    return list(dataset.platforms)
