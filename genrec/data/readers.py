"""Read tabular files (CSV, TSV, JSON lines, Parquet; optionally gzip-compressed) into string columns.

Every frame carries a ``_line`` column with the 1-based line of the row in its file (the row number for
Parquet), so that later validation can point at the exact place of a bad value. Parsing problems (wrong
encoding, wrong number of fields, invalid JSON) raise :class:`DataError` naming file and line, or, with
``skip_bad_rows``, are dropped and counted.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from genrec.errors import DataError

FORMATS = ("csv", "tsv", "jsonl", "parquet")
LINE = "_line"


class Table:
    """Rows of one file (values as read: strings for text formats), plus the ``_line`` column.

    Holds an Arrow table or a pandas frame; each view is converted on first use. Once the pandas view exists
    it is the source of truth (callers may add or change its columns).
    """

    def __init__(self, path: Path, data: pa.Table | pd.DataFrame, skipped_rows: int = 0) -> None:
        self.path = path
        self.skipped_rows = skipped_rows
        self._arrow = data if isinstance(data, pa.Table) else None
        self._frame = data if isinstance(data, pd.DataFrame) else None

    @property
    def frame(self) -> pd.DataFrame:
        if self._frame is None:
            self._frame = self._arrow.to_pandas()
        return self._frame

    @property
    def arrow(self) -> pa.Table:
        if self._frame is not None:
            return pa.Table.from_pandas(self._frame, preserve_index=False)
        return self._arrow

    @property
    def columns(self) -> list[str]:
        return list(self._frame.columns) if self._frame is not None else self._arrow.column_names

    def __len__(self) -> int:
        return len(self._frame) if self._frame is not None else self._arrow.num_rows


def detect_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for suffix, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".tab", "tsv"), (".jsonl", "jsonl"),
                        (".json", "jsonl"), (".ndjson", "jsonl"), (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise DataError("cannot tell the file format from its name", file=path,
                    expected="a .csv, .tsv, .jsonl/.json, or .parquet file, or an explicit format")


def read_table(
    path: str | Path,
    fmt: str | None = None,
    *,
    encoding: str = "utf-8",
    delimiter: str | None = None,
    header: bool = True,
    column_names: list[str] | None = None,
    skip_bad_rows: bool = False,
) -> Table:
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=path)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}", file=path, expected=", ".join(FORMATS))
    if fmt == "parquet":
        return _read_parquet(path)
    data = _decode(path, encoding)
    if not data.strip():
        raise DataError("the file is empty", file=path, expected="at least one data row")
    if fmt == "jsonl":
        return _read_jsonl(path, data.decode("utf-8"), skip_bad_rows)
    sep = delimiter or ("\t" if fmt == "tsv" else ",")
    return _read_delimited(path, data, sep, header, column_names, skip_bad_rows)


def _decode(path: Path, encoding: str) -> bytes:
    """The file's content as UTF-8 bytes (checked), gunzipped when the name ends in .gz."""
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except OSError as exc:
            raise DataError(f"not a valid gzip file ({exc})", file=path) from exc
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"cannot decode byte 0x{raw[exc.start]:02x} as {encoding}", file=path, line=line,
            expected=f"{encoding} text; pass the file's encoding (e.g. --encoding latin-1)",
        ) from exc
    if encoding.lower().replace("-", "") in ("utf8", "utf8sig"):
        return raw.removeprefix(b"\xef\xbb\xbf")
    return text.encode("utf-8")


def _read_delimited(
    path: Path, data: bytes, sep: str, header: bool, column_names: list[str] | None, skip_bad_rows: bool
) -> Table:
    if header:
        head, _, _ = data.partition(b"\n")
        names = [n.strip() for n in next(csv.reader([head.decode("utf-8").rstrip("\r")], delimiter=sep))]
        first = 2
    elif column_names:
        names, first = list(column_names), 1
    else:
        raise DataError("a header-less file needs column names", file=path)
    skipped = 0

    def invalid(row: pacsv.InvalidRow) -> str:
        nonlocal skipped
        if skip_bad_rows:
            skipped += 1
            return "skip"
        return "error"

    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=first - 1),
            parse_options=pacsv.ParseOptions(delimiter=sep, invalid_row_handler=invalid),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 null_values=[""], strings_can_be_null=True,
                                                 quoted_strings_can_be_null=False),
        )
    except pa.ArrowInvalid:
        _raise_bad_field_count(path, data, first, sep, len(names))
        raise
    if table.num_rows == 0:
        raise DataError("the file has a header but no data rows", file=path, expected="at least one data row")
    if skipped:
        rows = csv.reader(data.decode("utf-8").splitlines()[first - 1 :], delimiter=sep)
        lines = [first + i for i, row in enumerate(rows) if row and len(row) == len(names)][: table.num_rows]
    else:
        lines = np.arange(first, first + table.num_rows, dtype=np.int64)
    return Table(path, table.append_column(LINE, pa.array(lines, pa.int64())), skipped)


def _raise_bad_field_count(path: Path, data: bytes, first: int, sep: str, width: int) -> None:
    rows = csv.reader(data.decode("utf-8").splitlines()[first - 1 :], delimiter=sep)
    for offset, row in enumerate(rows):
        if row and len(row) != width:
            raise DataError(f"found {len(row)} fields", file=path, line=first + offset,
                            expected=f"{width} fields separated by {sep!r}")


def _read_jsonl(path: Path, text: str, skip_bad_rows: bool) -> Table:
    stripped = text.lstrip()
    records: list[dict] = []
    lines: list[int] = []
    skipped = 0
    if stripped.startswith("["):  # a single JSON array is accepted too
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg})", file=path, line=exc.lineno) from exc
        for i, rec in enumerate(data):
            if not isinstance(rec, dict):
                raise DataError("array element is not an object", file=path, field=f"[{i}]")
            records.append(rec)
            lines.append(i + 1)
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                if skip_bad_rows:
                    skipped += 1
                    continue
                raise DataError(f"invalid JSON ({exc})", file=path, line=number,
                                expected="one JSON object per line") from exc
            records.append(rec)
            lines.append(number)
    if not records:
        raise DataError("the file holds no records", file=path, expected="at least one JSON object")
    frame = pd.DataFrame.from_records(records)
    for col in frame.columns:
        frame[col] = frame[col].map(_to_text)
    frame[LINE] = lines
    return Table(path, frame, skipped)


def _to_text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _read_parquet(path: Path) -> Table:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({exc})", file=path) from exc
    if table.num_rows == 0:
        raise DataError("the file holds no rows", file=path, expected="at least one row")
    return Table(path, table.append_column(LINE, pa.array(np.arange(1, table.num_rows + 1), pa.int64())))
