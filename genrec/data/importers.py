"""Turn read tables into canonical frames: column mapping, type conversion, validation with line numbers.

The result of every importer (generic files or a registered data set) is an :class:`ImportBatch`, which the
store ingests in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from genrec.data import readers, timestamps
from genrec.data.dbutil import first_row
from genrec.data.readers import LINE, Table
from genrec.data.schema import (
    DEFAULT_EVENT,
    EVENT_COLUMNS,
    ITEM_COLUMNS,
    LINK_COLUMNS,
    REQUIRED_ITEM_COLUMNS,
    SPLIT_COLUMNS,
    SPLITS,
    Platform,
)
from genrec.errors import DataError

FILE = "_file"


@dataclass
class ImportBatch:
    """Canonical frames ready for the store. Frames keep ``_file``/``_line`` for error messages.

    ``events`` may be a pandas frame or an Arrow table (large imports stay in Arrow end to end). ``templates``
    maps a platform to its own recommend prompt template (Jinja2 source, see ``genrec.onboarding``).
    """

    source: str
    platforms: list[Platform] = field(default_factory=list)
    events: pd.DataFrame | pa.Table | EventSource | None = None
    items: pd.DataFrame | None = None
    links: pd.DataFrame | None = None
    splits: pd.DataFrame | None = None
    skipped_rows: int = 0
    templates: dict[str, str] = field(default_factory=dict)
    # the data set (user-id namespace) this batch's users belong to; None: no claim (e.g. live events)
    dataset: str | None = None
    # verb and time kind of platforms the store creates for this batch (``create_platforms``)
    verb: str | None = None
    time_kind: str | None = None


@dataclass
class Mapping:
    """Which source column holds each canonical column, plus constants for columns the file lacks and defaults
    that fill a column's missing (absent or empty) values."""

    columns: dict[str, str] = field(default_factory=dict)
    constants: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)

    def source(self, canonical: str) -> str:
        return self.columns.get(canonical, canonical)


def _source(table: Table, mapping: Mapping, canonical: str, required: bool) -> str | None:
    """The source column holding ``canonical`` (None when absent and optional)."""
    name = mapping.source(canonical)
    if name in table.columns:
        return name
    if required:
        available = ", ".join(c for c in table.columns if c != LINE)
        raise DataError(f"missing column '{name}' (for {canonical})", file=table.path, field=name,
                        expected=f"a column named '{name}'; the file has: {available}")
    return None


def _column(table: Table, mapping: Mapping, canonical: str, required: bool) -> pd.Series | None:
    if canonical in mapping.constants:
        return pd.Series(mapping.constants[canonical], index=table.frame.index, dtype="object")
    default = mapping.defaults.get(canonical)
    name = _source(table, mapping, canonical, required and default is None)
    if default is None:
        return table.frame[name] if name is not None else None
    if name is None:
        return pd.Series(default, index=table.frame.index, dtype="object")
    column = table.frame[name].astype("object")
    return column.where(~_blank(column), default)


def _reject(table: Table, bad: np.ndarray, field_name: str, expected: str, skip: bool, keep: np.ndarray) -> None:
    """Raise for the first bad row, or (with ``skip``) clear it from ``keep``."""
    bad = bad & keep
    if not bad.any():
        return
    if skip:
        keep &= ~bad
        return
    row = table.frame.iloc[int(np.argmax(bad))]
    raise DataError(f"invalid value {_show(row.get(field_name))}", file=table.path, line=int(row[LINE]),
                    field=field_name, expected=expected)


def _show(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "(empty)"
    text = str(value)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _blank(series: pd.Series) -> np.ndarray:
    return (series.isna() | (series.astype("string").str.strip() == "")).fillna(True).to_numpy(dtype=bool)


def _sql_literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _sql_column(table: Table, mapping: Mapping, canonical: str, required: bool) -> str | None:
    """SQL for a canonical column: a constant literal, a quoted source column, or None when absent."""
    if canonical in mapping.constants:
        return _sql_literal(mapping.constants[canonical])
    default = mapping.defaults.get(canonical)
    name = _source(table, mapping, canonical, required and default is None)
    quoted = '"' + name.replace('"', '""') + '"' if name is not None else None
    if default is None or quoted is None:
        return quoted if default is None else _sql_literal(default)
    return f"coalesce(NULLIF(trim(CAST({quoted} AS VARCHAR)), ''), {_sql_literal(default)})"


@dataclass
class EventSource:
    """Events of a file not read into memory: SQL converting the file's rows (DuckDB streams it) into canonical
    columns plus ``_line`` and ``_bad`` (the index of the first failed check, NULL for a good row).

    The store stages it inside its import transaction and calls :meth:`reject` there, so a large file is read
    once, by DuckDB, under the store's memory limit.
    """

    path: Path
    scan: str  # a subquery reading the file, ``_line`` included
    select: str  # SELECT ... FROM {src}
    checks: list[tuple[str, str, str]]  # (SQL condition, canonical field, expected)
    raw: dict[str, str]  # canonical field -> SQL of its source value
    fields: dict[str, str]  # canonical field -> the file's column name
    skip_bad_rows: bool
    rows: int
    arrow: pa.Table | None = None  # the rows already read (registered as ``scan`` while the store stages them)

    def __len__(self) -> int:
        return self.rows

    def sql(self, src: str | None = None) -> str:
        """The conversion reading ``src`` (a relation name; default: the file itself)."""
        return self.select.format(src=src or f"{self.scan} AS src")

    def reject(self, con: duckdb.DuckDBPyConnection, relation: str, src: str | None = None) -> int:
        """Raise for the first bad row of the converted ``relation`` (by line), or, with ``skip_bad_rows``,
        return how many there are (the caller drops them)."""
        first = first_row(con.execute(
            f"SELECT _bad, {LINE} FROM {relation} WHERE _bad IS NOT NULL ORDER BY {LINE} LIMIT 1"))
        if first is None:
            return 0
        if not self.skip_bad_rows:
            _, field_name, expected = self.checks[first[0]]
            raw = first_row(con.execute(f"SELECT CAST({self.raw[field_name]} AS VARCHAR) FROM "
                                        f"{src or self.scan + ' AS src'} WHERE {LINE} = ?", [first[1]]))
            raise DataError(f"invalid value {_show(raw[0] if raw else None)}", file=self.path, line=int(first[1]),
                            field=self.fields[field_name], expected=expected)
        return int(first_row(con.execute(f"SELECT count(*) FROM {relation} WHERE _bad IS NOT NULL"))[0])


def event_source(
    table: Table, mapping: Mapping | None = None, *, timestamp_kind: str = "auto", skip_bad_rows: bool = False,
    con: duckdb.DuckDBPyConnection | None = None, src: str = "src",
) -> EventSource:
    """The conversion and checks of ``table``'s events (the timestamp kind resolved by reading ``src`` on ``con``,
    by default the unread file itself)."""
    mapping = mapping or Mapping()
    own = con is None
    arrow = None
    if own:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        if table.scan is not None:
            src = f"{table.scan} AS src"
        else:
            arrow = table.arrow
            con.register("src", arrow)
    try:
        text = {name: f"NULLIF(trim(CAST({_sql_column(table, mapping, name, True)} AS VARCHAR)), '')"
                for name in ("user_id", "platform", "item_id")}
        ts_col = _sql_column(table, mapping, "timestamp", True)
        kind = timestamps.resolve_kind(con, src, ts_col, timestamp_kind, file=table.path, line_column=LINE,
                                       field=mapping.source("timestamp"))
    finally:
        if own:
            con.close()
    ts = timestamps.expression(ts_col, kind)
    event_col = _sql_column(table, mapping, "event", False)
    event = f"coalesce(NULLIF(trim(CAST({event_col} AS VARCHAR)), ''), '{DEFAULT_EVENT}')" if event_col else \
        f"'{DEFAULT_EVENT}'"
    value_col = _sql_column(table, mapping, "value", False)
    value = f"TRY_CAST({value_col} AS DOUBLE)" if value_col else "CAST(NULL AS DOUBLE)"
    checks = [(f"{expr} IS NULL", name, f"a non-empty {name}") for name, expr in text.items()]
    checks.append((f"{ts} IS NULL", "timestamp", f"a timestamp ({kind}) {timestamps.RANGE}"))
    if value_col:
        checks.append((f"{value} IS NULL AND NULLIF(trim(CAST({value_col} AS VARCHAR)), '') IS NOT NULL",
                       "value", "a number"))
    bad = "CASE " + " ".join(f"WHEN {cond} THEN {i}" for i, (cond, _, _) in enumerate(checks)) + " END"
    select = (f"SELECT {text['user_id']} AS user_id, {text['platform']} AS platform, {text['item_id']} AS item_id, "
              f"{ts} AS timestamp, {event} AS event, {value} AS value, {LINE}, {bad} AS _bad FROM {{src}}")
    raw = {name: _sql_column(table, mapping, name, True) for name in ("user_id", "platform", "item_id")}
    raw |= {"timestamp": ts_col, "value": value_col}
    return EventSource(table.path, table.scan or "_events_src", select.replace("{", "{{").replace("}", "}}")
                       .replace("{{src}}", "{src}"), checks, raw,
                       {name: mapping.source(name) for name in raw}, skip_bad_rows, len(table), arrow)


def events_from_table(
    table: Table, mapping: Mapping | None = None, *, timestamp_kind: str = "auto", skip_bad_rows: bool = False,
    stream: bool = False,
) -> tuple[pa.Table | EventSource, int]:
    """Canonical events (an Arrow table with ``_file``/``_line``) and the number of rows skipped here.

    Conversion and validation run vectorised in DuckDB; the first bad row (or, with ``skip_bad_rows``, every
    bad row) is found by line. With ``stream``, a table not read into memory (a large Parquet file) or a large one
    (from ``LAZY_ROWS`` rows on) gives an :class:`EventSource` instead, converted and checked by the store as it
    imports (its bad rows are counted there), sparing the copies of a converted table.
    """
    if stream and (table.scan is not None or len(table) >= readers.LAZY_ROWS):
        return event_source(table, mapping, timestamp_kind=timestamp_kind, skip_bad_rows=skip_bad_rows), 0
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("src", table.arrow)
    source = event_source(table, mapping, timestamp_kind=timestamp_kind, skip_bad_rows=skip_bad_rows, con=con)
    con.execute(f"CREATE TEMP TABLE conv AS {source.sql('src')}")
    skipped = source.reject(con, "conv", "src")
    result = con.sql(f"SELECT {', '.join(EVENT_COLUMNS)}, {LINE} FROM conv WHERE _bad IS NULL").to_arrow_table()
    con.close()
    files = pa.DictionaryArray.from_arrays(pa.array(np.zeros(result.num_rows, dtype=np.int32)),
                                           pa.array([str(table.path)]))
    return result.append_column(FILE, files), int(skipped)


def items_from_table(
    table: Table, mapping: Mapping | None = None, *, skip_bad_rows: bool = False
) -> tuple[pd.DataFrame, int]:
    """Canonical catalog items; duplicate ids with different titles are an error (or skipped)."""
    mapping = mapping or Mapping()
    keep = np.ones(len(table.frame), dtype=bool)
    out: dict[str, object] = {}
    for name in REQUIRED_ITEM_COLUMNS:
        col = _column(table, mapping, name, required=True)
        _reject(table, _blank(col), mapping.source(name), f"a non-empty {name}", skip_bad_rows, keep)
        out[name] = col.astype("string").str.strip()
    for name in ("description", "category", "attributes"):
        col = _column(table, mapping, name, required=False)
        out[name] = col.astype("string") if col is not None else pd.Series(pd.NA, index=table.frame.index,
                                                                            dtype="string")
    year = _column(table, mapping, "year", required=False)
    if year is not None:
        years = pd.to_numeric(year, errors="coerce")
        _reject(table, years.isna().to_numpy() & ~_blank(year), mapping.source("year"), "a year (integer)",
                skip_bad_rows, keep)
        out["year"] = years.astype("Int64")
    else:
        out["year"] = pd.Series(pd.NA, index=table.frame.index, dtype="Int64")
    frame = pd.DataFrame(out)[list(ITEM_COLUMNS)]
    frame[FILE] = str(table.path)
    frame[LINE] = table.frame[LINE].to_numpy()
    frame = frame[keep]
    frame, dup_skipped = check_item_duplicates(frame, skip_bad_rows)
    skipped = int((~keep).sum()) + dup_skipped
    return frame.reset_index(drop=True), skipped


def check_item_duplicates(items: pd.DataFrame, skip_bad_rows: bool) -> tuple[pd.DataFrame, int]:
    """Same (platform, item_id) twice: identical titles collapse; different titles are an error."""
    titles = items.groupby(["platform", "item_id"], sort=False)["title"].transform("nunique")
    conflict = (titles > 1).to_numpy()
    if conflict.any():
        if not skip_bad_rows:
            rows = items[conflict]
            key = rows.iloc[0][["platform", "item_id"]]
            rows = rows[(rows["platform"] == key["platform"]) & (rows["item_id"] == key["item_id"])]
            first, second = rows.iloc[0], rows[rows["title"] != rows.iloc[0]["title"]].iloc[0]
            raise DataError(
                f"item id {key['item_id']!r} of platform {key['platform']!r} appears with different titles: "
                f"{_show(first['title'])} (line {first[LINE]}) and {_show(second['title'])}",
                file=second.get(FILE), line=int(second[LINE]), field="item_id",
                expected="one title per item id",
            )
        items = items[~conflict]
    return items.drop_duplicates(["platform", "item_id"]), int(conflict.sum())


def links_from_table(table: Table, mapping: Mapping | None = None) -> pd.DataFrame:
    mapping = mapping or Mapping()
    keep = np.ones(len(table.frame), dtype=bool)
    out = {}
    for name in LINK_COLUMNS:
        col = _column(table, mapping, name, required=True)
        _reject(table, _blank(col), mapping.source(name), f"a non-empty {name}", False, keep)
        out[name] = col.astype("string").str.strip()
    frame = pd.DataFrame(out)
    clash = frame.groupby(["platform", "platform_user_id"])["user_id"].nunique()
    if (clash > 1).any():
        platform, puid = clash[clash > 1].index[0]
        raise DataError(f"platform user {puid!r} on {platform!r} is linked to several user ids",
                        file=table.path, field="user_id", expected="one user id per platform account")
    return frame.drop_duplicates().reset_index(drop=True)


def splits_from_table(table: Table, mapping: Mapping | None = None) -> pd.DataFrame:
    mapping = mapping or Mapping()
    keep = np.ones(len(table.frame), dtype=bool)
    users = _column(table, mapping, "user_id", required=True)
    split = _column(table, mapping, "split", required=True).astype("string").str.strip().str.lower()
    _reject(table, ~split.isin(SPLITS).to_numpy(dtype=bool), mapping.source("split"),
            " / ".join(SPLITS), False, keep)
    return pd.DataFrame({"user_id": users.astype("string").str.strip(), "split": split})[list(SPLIT_COLUMNS)]


def events_from_records(records: list[dict], source: str = "events") -> ImportBatch:
    """An :class:`ImportBatch` of canonical events from JSON-like records (``user_id``, ``platform``,
    ``item_id``, ``timestamp`` and optional ``event``/``value``). Errors name ``source`` and the record's
    0-based position as the line."""
    columns = {name: [None if r.get(name) is None else str(r[name]) for r in records] for name in EVENT_COLUMNS}
    frame = pd.DataFrame(columns, dtype="object")
    frame[LINE] = np.arange(len(records), dtype=np.int64)
    events, _ = events_from_table(Table(Path(source), frame))
    return ImportBatch(source=source, events=events)


def file_batch(
    source: str | Path,
    *,
    kind: str,
    table: Table,
    mapping: Mapping | None = None,
    platform: Platform | None = None,
    timestamp_kind: str = "auto",
    skip_bad_rows: bool = False,
) -> ImportBatch:
    """An :class:`ImportBatch` from one generic file of the given kind (events, items, links, splits).

    ``platform`` is declared (registered when new) and fills the rows whose platform is missing: a file's own
    ``platform`` column wins. Platforms the store creates for this batch get sequence time when
    ``timestamp_kind`` is ``sequence``."""
    if platform is not None:
        mapping = mapping or Mapping()
        if "platform" not in mapping.constants:
            mapping.defaults.setdefault("platform", platform.name)
    batch = ImportBatch(source=str(source), platforms=[platform] if platform else [],
                        skipped_rows=table.skipped_rows,
                        time_kind="sequence" if timestamp_kind == "sequence" else None)
    if kind == "events":
        batch.events, skipped = events_from_table(table, mapping, timestamp_kind=timestamp_kind,
                                                  skip_bad_rows=skip_bad_rows, stream=True)
        batch.skipped_rows += skipped
    elif kind == "items":
        batch.items, skipped = items_from_table(table, mapping, skip_bad_rows=skip_bad_rows)
        batch.skipped_rows += skipped
    elif kind == "links":
        batch.links = links_from_table(table, mapping)
    elif kind == "splits":
        batch.splits = splits_from_table(table, mapping)
    else:
        raise DataError(f"unknown kind {kind!r}", expected="events, items, links or splits")
    return batch


def parse_mapping(pairs: list[str], path: Path | None = None) -> Mapping:
    """``["user_id=uid", "item_id=movie"]`` -> Mapping; ``platform:=movies`` sets a constant."""
    mapping = Mapping()
    for pair in pairs:
        if ":=" in pair:
            key, value = pair.split(":=", 1)
            mapping.constants[key.strip()] = value.strip()
        elif "=" in pair:
            key, value = pair.split("=", 1)
            mapping.columns[key.strip()] = value.strip()
        else:
            raise DataError(f"bad column mapping {pair!r}", file=path,
                            expected="CANONICAL=SOURCE_COLUMN or CANONICAL:=CONSTANT")
        known = set(EVENT_COLUMNS) | set(ITEM_COLUMNS) | set(LINK_COLUMNS) | set(SPLIT_COLUMNS)
        if key.strip() not in known:
            raise DataError(f"unknown canonical column {key.strip()!r} in mapping", file=path,
                            expected=", ".join(sorted(known)))
    return mapping
