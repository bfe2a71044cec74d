"""The canonical schema: events, catalog items, platforms, identity links, user splits.

Every importer produces these columns; the store keeps them in DuckDB tables of the same names.
Timestamps of every kind (epoch seconds, epoch milliseconds, ISO-8601 strings, plain sequence positions) are
normalised to one type: a naive UTC ``datetime`` (DuckDB ``TIMESTAMP``). Sequence positions become
``1970-01-01 00:00:00 + position seconds`` and the platform is marked ``time_kind = "sequence"`` so that
displays do not present them as dates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from genrec.errors import DataError

EVENT_COLUMNS = ("user_id", "platform", "item_id", "timestamp", "event", "value")
ITEM_COLUMNS = ("platform", "item_id", "title", "description", "category", "attributes", "year")
LINK_COLUMNS = ("platform", "platform_user_id", "user_id")
SPLIT_COLUMNS = ("user_id", "split")
PLATFORM_COLUMNS = ("platform", "verb", "time_kind", "description")

REQUIRED_EVENT_COLUMNS = ("user_id", "platform", "item_id", "timestamp")
REQUIRED_ITEM_COLUMNS = ("platform", "item_id", "title")
SPLITS = ("train", "valid", "test")
TIME_KINDS = ("time", "sequence")
DATASET_SPLITS = ("store", "none")  # a store-defined data set's user split: the imported one, or none

DEFAULT_EVENT = "interaction"
MAX_TITLE_CHARS = 2_000  # a catalog title longer than this is a broken file, not a title

# Platform-specific verbs for profiles; anything else falls back to "interacted with".
DEFAULT_VERBS = {
    "movies": "watched",
    "video": "watched",
    "music": "listened to",
    "books": "read",
    "amazon-arts": "bought",
    "amazon-office": "bought",
}


PLATFORM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_platform_name(name: str, **where: object) -> str:
    """``name`` if it is a valid platform name (it appears in paths, URLs and prompts), else a ``DataError``;
    ``where`` (file, line, field) says where the name came from."""
    if not PLATFORM_NAME.match(name or ""):
        raise DataError(f"invalid platform name {name!r}", **({"field": "name"} | where),
                        expected="1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def default_verb(platform: str) -> str:
    if platform in DEFAULT_VERBS:
        return DEFAULT_VERBS[platform]
    if platform.startswith("amazon"):
        return "bought"
    return "interacted with"


@dataclass(frozen=True)
class Platform:
    name: str
    verb: str = "interacted with"
    time_kind: str = "time"  # "time" or "sequence"
    description: str | None = None


@dataclass(frozen=True)
class HistoryItem:
    """One event of a user's cross-platform history, joined with its catalog entry."""

    user_id: str
    platform: str
    item_id: str
    timestamp: datetime
    event: str = DEFAULT_EVENT
    value: float | None = None
    title: str | None = None
    category: str | None = None


@dataclass(frozen=True)
class CatalogItem:
    platform: str
    item_id: str
    title: str
    description: str | None = None
    category: str | None = None  # several categories are "|"-separated
    attributes: str | None = None
    year: int | None = None


@dataclass(frozen=True)
class StoreDataset:
    """A data set defined in the store (``genrec data register``): its platforms and where its user split comes
    from (``store``: the imported splits; ``none``: protocols draw a seeded split or use every user)."""

    name: str
    platforms: tuple[str, ...]
    split: str = "none"
    description: str | None = None
