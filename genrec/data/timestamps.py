"""The one timestamp validator: every kind normalised to naive UTC ``TIMESTAMP`` (DuckDB SQL), range-checked.

Kinds: ``seconds`` / ``milliseconds`` since the epoch, ``iso`` (ISO-8601 strings starting with a four-digit year,
offsets converted to UTC), ``sequence`` (plain positions 0, 1, 2 ... stored as that many seconds after the
epoch), and ``auto`` (numbers: milliseconds when their magnitude exceeds 1e11, else seconds; strings: ISO-8601;
native timestamp columns as they are). Sequence positions are never guessed: they must be declared.

Every importer (CLI files, registered data sets, the API's ``/v1/events``) goes through :func:`resolve_kind` and
:func:`expression`, and the store checks :data:`EARLIEST`/:data:`LATEST` again before it writes, so no stored
timestamp can break a later read. A value is valid only if it is finite and falls within [1970-01-01, 2201-01-01);
booleans, words such as ``epoch`` or ``infinity`` and years beyond 9999 are rejected. An ``auto`` column (or API
batch) mixing seconds and milliseconds is an error naming rows of both, never a silent guess.

The expressions evaluate to NULL for a value that is unreadable or out of range, so callers can point at the bad
row. A connection using them must run with ``SET TimeZone = 'UTC'``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb

from genrec.data.dbutil import first_row
from genrec.errors import DataError

KINDS = ("auto", "seconds", "milliseconds", "iso", "sequence")
EARLIEST = datetime(1970, 1, 1)
LATEST = datetime(2201, 1, 1)  # exclusive: the last valid year is 2200
RANGE = f"between {EARLIEST:%Y-%m-%d} and 2200-12-31"
_MS_THRESHOLD = 1e11  # 1e11 s is the year 5138; 1e11 ms is 1973
_LATEST_SECONDS = int((LATEST - EARLIEST).total_seconds())
_ISO_START = r"^\s*[0-9]{4}-[0-9]{2}"  # ISO-8601 dates start with YYYY-MM (no 'epoch', 'infinity', 5-digit years)
_SHOWN_LINES = 3


def check_kind(kind: str) -> str:
    """``kind`` if it is one of :data:`KINDS`, else a :class:`DataError` listing them."""
    if kind not in KINDS:
        raise DataError(f"unknown timestamp kind {kind!r}", field="timestamp_kind", expected=", ".join(KINDS))
    return kind


def resolve_kind(con: duckdb.DuckDBPyConnection, relation: str, column: str, kind: str, *,
                 file: str | Path | None = None, line_column: str | None = None, field: str = "timestamp") -> str:
    """Turn ``auto`` into a concrete kind by looking at the column's type and values.

    A boolean column is rejected. Numbers of both magnitudes (seconds and milliseconds) in one ``auto`` column
    raise a :class:`DataError` naming lines of each (``line_column`` holds them; row positions otherwise).
    """
    check_kind(kind)
    col_type = first_row(con.execute(f"SELECT typeof({column}) FROM {relation} LIMIT 1"))[0]
    if col_type == "BOOLEAN":
        raise DataError("timestamps are booleans", file=file, field=field,
                        expected=f"epoch seconds, epoch milliseconds or ISO-8601 dates {RANGE}")
    if kind != "auto":
        return kind
    if col_type.startswith(("TIMESTAMP", "DATE")):
        return "native"
    number = f"TRY_CAST({column} AS DOUBLE)"
    line = line_column or "row_number() OVER ()"
    # a number is seconds or milliseconds by magnitude; one valid in neither unit is a bad row, not a unit
    sec = f"_n >= 0 AND _n < {_LATEST_SECONDS}"
    ms = f"_n > {_MS_THRESHOLD} AND _n < {_LATEST_SECONDS * 1000}"
    values = f"(SELECT {line} AS _l, {number} AS _n FROM {relation}) WHERE _n IS NOT NULL"
    # counts only: a list of every line would cost memory in proportion to the file
    numbers, seconds, millis = first_row(con.execute(
        f"SELECT count(*), count(*) FILTER ({sec}), count(*) FILTER ({ms}) FROM {values}"))
    if not numbers:
        return "iso"
    if seconds and millis:
        first = {name: [r[0] for r in con.execute(
            f"SELECT _l FROM {values} AND {cond} ORDER BY _l LIMIT {_SHOWN_LINES}").fetchall()]
            for name, cond in (("seconds", sec), ("millis", ms))}
        raise DataError(
            f"timestamps mix units: {_lines(first['seconds'], seconds)} epoch seconds, "
            f"{_lines(first['millis'], millis)} epoch milliseconds",
            file=file, line=min(first["seconds"][0], first["millis"][0]), field=field,
            expected="one unit per file or batch (convert them, or declare the unit with --timestamp-kind)")
    if millis:
        return "milliseconds"
    if seconds:
        return "seconds"
    magnitude = first_row(con.execute(f"SELECT max(abs({number})) FROM {relation} WHERE isfinite({number})"))[0]
    return "milliseconds" if (magnitude or 0) > _MS_THRESHOLD else "seconds"


def _lines(first: list[int], count: int) -> str:
    """``first`` lines of ``count`` named: "lines 2, 5, 9 and 4 more are"."""
    shown = ", ".join(str(n) for n in first[:_SHOWN_LINES])
    more = f" and {count - _SHOWN_LINES} more" if count > _SHOWN_LINES else ""
    return f"line{'s' if count > 1 else ''} {shown}{more} {'are' if count > 1 else 'is'}"


def expression(column: str, kind: str) -> str:
    """SQL turning ``column`` of a resolved kind into a naive UTC TIMESTAMP; NULL when unreadable, not finite
    or outside [1970, 2200]."""
    number = f"TRY_CAST({column} AS DOUBLE)"
    if kind == "native":
        return _in_range(f"TRY_CAST({column} AS TIMESTAMP)")
    if kind == "iso":
        text = f"CAST({column} AS VARCHAR)"
        return _in_range(f"CASE WHEN regexp_matches({text}, '{_ISO_START}') "
                         f"THEN CAST(TRY_CAST({text} AS TIMESTAMPTZ) AS TIMESTAMP) END")
    scale = {"seconds": 1, "milliseconds": 1000, "sequence": 1}.get(kind)
    if scale is None:
        raise DataError(f"unknown timestamp kind {kind!r}", field="timestamp_kind", expected=", ".join(KINDS))
    # NaN compares greater than every number in DuckDB, so the range test also rejects NaN and +-infinity
    valid = f"{number} >= 0 AND {number} < {_LATEST_SECONDS * scale}"
    if kind == "sequence":
        valid += f" AND {number} = floor({number})"
    return f"CASE WHEN {valid} THEN make_timestamp(CAST({number} * {1_000_000 // scale} AS BIGINT)) END"


def _in_range(timestamp: str) -> str:
    return f"CASE WHEN NOT {out_of_range(timestamp)} THEN {timestamp} END"  # DuckDB evaluates the repeat once


def out_of_range(column: str) -> str:
    """SQL condition: a stored ``TIMESTAMP`` column's value is missing or outside the valid range."""
    return (f"({column} IS NULL OR NOT ({column} >= TIMESTAMP '{EARLIEST:%Y-%m-%d}' "
            f"AND {column} < TIMESTAMP '{LATEST:%Y-%m-%d}'))")
