"""Data sets as the rest of genrec uses them: registered ones imported into a store (``genrec data import``) and
data sets defined from what the store already holds (``genrec data register``)."""

from __future__ import annotations

from pathlib import Path

from genrec.config import default_data_dir
from genrec.data import datasets
from genrec.data.cleaning import CleaningConfig
from genrec.data.schema import StoreDataset
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
    allow_unknown_items: bool = False,
    same_people: bool = False,
) -> ImportReport:
    """Load a registered data set (downloading it first if asked and missing) and ingest it; its users belong to
    the data set's name (see ``Store.ingest``)."""
    dataset = datasets.get(name)
    data_dir = data_dir or default_data_dir()
    if path is None:
        if download and not dataset.path(data_dir).is_dir():
            from genrec.data.download import download as fetch

            fetch(dataset, data_dir)
        path = dataset.locate(data_dir)
    batch = dataset.loader(path, skip_bad_rows=skip_bad_rows)
    batch.dataset = name
    return store.ingest(batch, cleaning, allow_unknown_items=allow_unknown_items, same_people=same_people)


def register(store: Store, name: str, platforms: list[str] | None = None, *, split_from_store: bool = False,
             description: str | None = None) -> StoreDataset:
    """Define the data set ``name`` from the store's data, for ``eval``, ``train`` and ``recommend --dataset``.

    ``platforms`` default to those where the users imported under ``name`` (``--dataset NAME``) have events.
    ``split_from_store``: the imported user split (``--kind splits``) is the data set's own (protocol
    ``users: dataset``); it must cover some of the data set's users.
    """
    if name in datasets.REGISTRY:
        raise GenrecError(f"{name!r} is a built-in data set; choose another name for a data set of your own")
    if not platforms:
        frame = store.namespaces()
        row = frame[frame["dataset"] == name]
        platforms = list(row.iloc[0]["platforms"]) if len(row) else []
        if not platforms:
            raise GenrecError(f"no users were imported under data set {name!r}: name its platforms with "
                              "--platforms a,b (or import its files with --dataset NAME first)")
    known = {p.name for p in store.platforms()}
    for platform in platforms:
        if platform not in known:
            raise GenrecError(f"data set {name!r}: unknown platform {platform!r}; the store has: "
                              f"{', '.join(sorted(known)) or 'none'}")
        if not store.has_events(platform):
            raise GenrecError(f"data set {name!r}: platform {platform!r} has no events; import them first "
                              "(genrec data import-file FILE --kind events)")
    if split_from_store:
        users = set(store.events(platforms)["user_id"])
        split = {u: s for u, s in store.splits().items() if u in users}
        missing = sorted({"train", "test"} - set(split.values()))
        if missing:
            raise GenrecError(f"data set {name!r}: --split-from-store, but the store's user split has no "
                              f"{' or '.join(missing)} users of its platforms; import one with "
                              "`genrec data import-file FILE --kind splits` (columns user_id, split)")
    dataset = StoreDataset(name, tuple(platforms), "store" if split_from_store else "none", description)
    store.register_dataset(dataset)
    return dataset


def dataset_platforms(store: Store, name: str, platforms: list[str] | None = None) -> list[str]:
    """The platforms of data set ``name`` without importing anything: given ``platforms`` (checked), a data set
    defined in the store, or a built-in one's declared platforms."""
    known = {p.name for p in store.platforms()}
    if platforms:
        missing = [p for p in platforms if p not in known or not store.has_events(p)]
        if missing:
            raise GenrecError(f"data set {name!r}: platform(s) {', '.join(missing)} have no events in the store; "
                              f"it has: {', '.join(sorted(known)) or 'none'}")
        return list(platforms)
    defined = store.dataset(name)
    if defined is not None:
        return list(defined.platforms)
    if name not in datasets.REGISTRY:
        own = ", ".join(d.name for d in store.datasets()) or "none yet"
        raise GenrecError(f"unknown data set {name!r}; built-in: {', '.join(datasets.REGISTRY)}; defined in this "
                          f"store: {own} (define one with `genrec data register NAME --platforms a,b`)")
    return list(datasets.get(name).platforms)


def ensure_dataset(store: Store, name: str, *, data_dir: Path | None = None,
                   platforms: list[str] | None = None) -> list[str]:
    """The platforms of data set ``name``: given ``platforms`` or a data set defined in the store are used as they
    are; a built-in data set is imported unless its platforms already hold events."""
    if platforms or store.dataset(name) is not None:
        return dataset_platforms(store, name, platforms)
    dataset = datasets.get(name) if name in datasets.REGISTRY else None
    if dataset is None:
        return dataset_platforms(store, name)  # raises: unknown everywhere
    if not dataset.platforms:
        raise GenrecError(f"data set {name!r} defines its platforms from its files: import it with "
                          f"`genrec data import {name} --path DIR`, then define it with `genrec data register "
                          f"NAME --platforms a,b` (or name its platforms in the eval config: dataset: {{name: ..., "
                          f"platforms: [a, b]}})")
    if not all(store.has_events(p) for p in dataset.platforms):
        import_dataset(store, name, data_dir=data_dir)
    return list(dataset.platforms)
