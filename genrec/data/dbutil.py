"""Small DuckDB helpers."""

from __future__ import annotations

from typing import Any

import duckdb


def first_row(result: duckdb.DuckDBPyConnection) -> tuple[Any, ...] | None:
    """The first row of an executed query, or None; always finishes the result.

    DuckDB 2 refuses further work on a connection whose last result was not read to the end, so
    ``fetchone()`` on a multi-row (or single-row) result is never used directly.
    """
    rows = result.fetchmany(1)
    result.fetchall()
    return rows[0] if rows else None
