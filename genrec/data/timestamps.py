"""Normalise timestamps of every supported kind to naive UTC ``TIMESTAMP`` (DuckDB SQL expressions).

Kinds: ``seconds`` / ``milliseconds`` since the epoch, ``iso`` (ISO-8601 strings, offsets converted to UTC),
``sequence`` (plain positions 0, 1, 2 ... stored as that many seconds after the epoch), and ``auto``
(numbers: milliseconds when the largest magnitude exceeds 1e11, else seconds; strings: ISO-8601; native
timestamp columns as they are). Sequence positions are never guessed: they must be declared.

The expressions evaluate to NULL for a value that cannot be read, so callers can point at the bad row.
A connection using them must run with ``SET TimeZone = 'UTC'``.
"""

from __future__ import annotations

import duckdb

from genrec.data.dbutil import first_row

KINDS = ("auto", "seconds", "milliseconds", "iso", "sequence")
_MS_THRESHOLD = 1e11  # 1e11 s is the year 5138; 1e11 ms is 1973


def resolve_kind(con: duckdb.DuckDBPyConnection, relation: str, column: str, kind: str) -> str:
    """Turn ``auto`` into a concrete kind by looking at the column's type and values."""
    if kind not in KINDS:
        raise ValueError(f"unknown timestamp kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    col_type = first_row(con.execute(f"SELECT typeof({column}) FROM {relation} LIMIT 1"))[0]
    if col_type.startswith(("TIMESTAMP", "DATE")):
        return "native"
    numeric, magnitude = first_row(con.execute(
        f"SELECT count(TRY_CAST({column} AS DOUBLE)), max(abs(TRY_CAST({column} AS DOUBLE))) FROM {relation}"
    ))
    if not numeric:
        return "iso"
    return "milliseconds" if (magnitude or 0) > _MS_THRESHOLD else "seconds"


def expression(column: str, kind: str) -> str:
    """SQL turning ``column`` of a resolved kind into a naive UTC TIMESTAMP (NULL when unreadable)."""
    number = f"TRY_CAST({column} AS DOUBLE)"
    if kind == "native":
        return f"CAST({column} AS TIMESTAMP)"
    if kind == "iso":
        return f"CAST(TRY_CAST(CAST({column} AS VARCHAR) AS TIMESTAMPTZ) AS TIMESTAMP)"
    if kind == "seconds":
        return f"make_timestamp(CAST({number} * 1000000 AS BIGINT))"
    if kind == "milliseconds":
        return f"make_timestamp(CAST({number} * 1000 AS BIGINT))"
    if kind == "sequence":
        return (f"CASE WHEN {number} >= 0 AND {number} = floor({number}) "
                f"THEN make_timestamp(CAST({number} * 1000000 AS BIGINT)) END")
    raise ValueError(f"unknown timestamp kind {kind!r}; expected one of {', '.join(KINDS)}")
