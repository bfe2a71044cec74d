"""Amazon Review Data in its standard public layouts: one platform per category.

- 2018 (Ni et al.): reviews ``<Category>.json[.gz]`` (one object per line: ``reviewerID, asin, overall,
  unixReviewTime``) and metadata ``meta_<Category>.json[.gz]`` (``asin, title, category, brand, ...``);
- 2023 (Hou et al.): reviews ``<Category>.jsonl[.gz]`` (``user_id, parent_asin, rating, timestamp`` in ms) and
  metadata ``meta_<Category>.jsonl[.gz]`` (``parent_asin, title, main_category, categories, ...``).
  Items are keyed by ``parent_asin`` (the product, not the variant), as is standard for this release.

The version is told from the fields. Each category becomes the platform ``amazon-<category-slug>``.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa

from genrec.data.importers import ImportBatch, Mapping, events_from_table, items_from_table
from genrec.data.readers import Table, read_table
from genrec.data.schema import Platform
from genrec.errors import DataError

REVIEWS_2018 = Mapping(columns={"user_id": "reviewerID", "item_id": "asin", "value": "overall",
                                "timestamp": "unixReviewTime"})
REVIEWS_2023 = Mapping(columns={"user_id": "user_id", "item_id": "parent_asin", "value": "rating",
                                "timestamp": "timestamp"})
_SUFFIXES = (".json.gz", ".jsonl.gz", ".json", ".jsonl")


def platform_name(category: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", category.lower().replace("&", "and")).strip("-")
    return f"amazon-{slug}"


def category_files(path: Path) -> dict[str, tuple[Path, Path | None]]:
    """Category -> (reviews file, metadata file or None) found in a folder."""
    found: dict[str, tuple[Path, Path | None]] = {}
    files = sorted(p for p in path.iterdir() if p.name.endswith(_SUFFIXES))
    for reviews in (p for p in files if not p.name.startswith("meta_")):
        category = next(reviews.name[: -len(s)] for s in _SUFFIXES if reviews.name.endswith(s))
        meta = next((p for p in files if p.name.startswith(f"meta_{category}.")), None)
        found[category] = (reviews, meta)
    if not found:
        raise DataError("no Amazon review files found", file=path,
                        expected="<Category>.json[l][.gz] and meta_<Category>.json[l][.gz]")
    return found


def load(path: Path, *, skip_bad_rows: bool = False) -> ImportBatch:
    batch = ImportBatch(source=f"amazon-reviews:{path}")
    events, items = [], []
    for category, (reviews_path, meta_path) in category_files(path).items():
        platform = Platform(platform_name(category), verb="bought", time_kind="time",
                            description=f"Amazon reviews: {category.replace('_', ' ')}")
        batch.platforms.append(platform)
        reviews = read_table(reviews_path, "jsonl", skip_bad_rows=skip_bad_rows)
        frame, skipped = events_from_table(reviews, _review_mapping(reviews, platform),
                                           timestamp_kind="auto", skip_bad_rows=skip_bad_rows)
        events.append(frame)
        batch.skipped_rows += reviews.skipped_rows + skipped
        if meta_path is not None:
            meta = read_table(meta_path, "jsonl", skip_bad_rows=skip_bad_rows)
            frame, skipped = items_from_table(_meta_columns(meta), Mapping(constants={"platform": platform.name}),
                                              skip_bad_rows=skip_bad_rows)
            items.append(frame)
            batch.skipped_rows += meta.skipped_rows + skipped
    batch.events = pa.concat_tables(events, promote_options="permissive")
    batch.items = pd.concat(items, ignore_index=True) if items else None
    return batch


def _review_mapping(table: Table, platform: Platform) -> Mapping:
    columns = set(table.frame.columns)
    if {"reviewerID", "asin"} <= columns:
        base = REVIEWS_2018
    elif {"user_id", "parent_asin"} <= columns:
        base = REVIEWS_2023
    else:
        raise DataError("unknown Amazon review layout", file=table.path,
                        expected="2018 fields (reviewerID, asin, overall, unixReviewTime) or 2023 fields "
                                 "(user_id, parent_asin, rating, timestamp)")
    return Mapping(columns=dict(base.columns), constants={"platform": platform.name, "event": "review"})


def _meta_columns(table: Table) -> Table:
    """Metadata of either release -> item_id, title, category, description, attributes columns."""
    frame = table.frame
    if "parent_asin" in frame.columns:  # 2023
        item_id = frame["parent_asin"]
        category = frame.get("categories", frame.get("main_category"))
        attributes = frame.get("store")
    elif "asin" in frame.columns:  # 2018
        item_id = frame["asin"]
        category = frame.get("category")
        attributes = frame.get("brand")
    else:
        raise DataError("unknown Amazon metadata layout", file=table.path,
                        expected="2018 field asin or 2023 field parent_asin")
    title = frame["title"] if "title" in frame.columns else pd.Series(None, index=frame.index)
    out = pd.DataFrame({
        "item_id": item_id,
        "title": title.map(lambda t: html.unescape(t).strip() if isinstance(t, str) else t),
        "category": category.map(_join_list) if category is not None else None,
        "description": frame["description"].map(_join_list) if "description" in frame.columns else None,
        "attributes": attributes,
        "_line": frame["_line"],
    })
    return Table(table.path, out, table.skipped_rows)


def _join_list(value: str | None) -> str | None:
    """A JSON list as stored by the reader -> "a > b > c" (empty lists -> None)."""
    if value is None or not isinstance(value, str):
        return None
    if value.startswith("["):
        try:
            parts = [str(v).strip() for v in json.loads(value) if str(v).strip()]
        except json.JSONDecodeError:
            return value
        return " > ".join(html.unescape(p) for p in parts) or None
    return value
