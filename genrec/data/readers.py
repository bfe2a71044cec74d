"""Read tabular files (CSV, TSV, JSON lines, Parquet; optionally gzip-compressed) into string columns.

Every frame carries a ``_line`` column with the 1-based line of the row in its file (the row number for
Parquet), so that later validation can point at the exact place of a bad value. Parsing problems (wrong
encoding, wrong number of fields, invalid JSON) raise :class:`DataError` naming file and line, or, with
``skip_bad_rows``, are dropped and counted.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from genrec.errors import DataError, TooLargeError

csv.field_size_limit(1 << 30)  # line numbers of files with huge fields are found with the csv module too

FORMATS = ("csv", "tsv", "jsonl", "parquet")
LINE = "_line"
_CHUNK = 1 << 20  # gzip streams are inflated this many bytes at a time
_BLOCK = 1 << 20  # Arrow's CSV block; a row longer than this re-reads the file as one block
LAZY_ROWS = 1_000_000  # a Parquet file of this many rows is not read into memory: DuckDB streams it at import


class Table:
    """Rows of one file (values as read: strings for text formats), plus the ``_line`` column.

    Holds an Arrow table or a pandas frame; each view is converted on first use. Once the pandas view exists
    it is the source of truth (callers may add or change its columns).

    A large Parquet file is held unread (:attr:`scan` is DuckDB SQL reading it, ``_line`` included): the event
    importer then streams it into the store; the Arrow and pandas views still read it on first use.
    """

    def __init__(self, path: Path, data: pa.Table | pd.DataFrame | None, skipped_rows: int = 0, *,
                 scan: str | None = None, rows: int = 0, columns: list[str] | None = None) -> None:
        self.path = path
        self.skipped_rows = skipped_rows
        self._arrow = data if isinstance(data, pa.Table) else None
        self._frame = data if isinstance(data, pd.DataFrame) else None
        self._scan, self._rows, self._columns = scan, rows, columns

    @property
    def scan(self) -> str | None:
        """SQL (a subquery) reading the unread file with its ``_line``; None once a view was read."""
        return self._scan if self._arrow is None and self._frame is None else None

    @property
    def frame(self) -> pd.DataFrame:
        if self._frame is None:
            self._frame = self.arrow.to_pandas()
        return self._frame

    @property
    def arrow(self) -> pa.Table:
        if self._frame is not None:
            return pa.Table.from_pandas(self._frame, preserve_index=False)
        if self._arrow is None:
            self._arrow = _parquet_arrow(self.path)
        return self._arrow

    @property
    def columns(self) -> list[str]:
        if self._frame is not None:
            return list(self._frame.columns)
        return self._arrow.column_names if self._arrow is not None else list(self._columns or [])

    def __len__(self) -> int:
        if self._frame is not None:
            return len(self._frame)
        return self._arrow.num_rows if self._arrow is not None else self._rows


def detect_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for suffix, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".tab", "tsv"), (".jsonl", "jsonl"),
                        (".json", "jsonl"), (".ndjson", "jsonl"), (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise DataError("cannot tell the file format from its name", file=path,
                    expected="a .csv, .tsv, .jsonl/.json, or .parquet file, or an explicit format")


def check_options(encoding: str = "utf-8", delimiter: str | None = None) -> None:
    """Reader options a user typed: a known text encoding and a one-character delimiter (``DataError`` if not)."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}", field="encoding",
                        expected="a Python codec name such as utf-8, latin-1 or cp1252") from None
    if delimiter is not None and (len(delimiter) != 1 or delimiter in '"\r\n'):
        raise DataError(f"invalid delimiter {delimiter!r}", field="delimiter",
                        expected="one character other than a quote or a line break, e.g. ',' ';' '|' or a tab")


def read_table(
    path: str | Path,
    fmt: str | None = None,
    *,
    encoding: str = "utf-8",
    delimiter: str | None = None,
    header: bool = True,
    column_names: list[str] | None = None,
    skip_bad_rows: bool = False,
    max_bytes: int | None = None,
    max_rows: int | None = None,
) -> Table:
    """Read one file. ``max_bytes`` limits its size after decompression (checked while it streams, so a gzip
    bomb costs at most that much memory) and ``max_rows`` its rows; either raises :class:`TooLargeError`."""
    path = Path(path)
    check_options(encoding, delimiter)
    if not path.is_file():
        raise DataError("file not found", file=path)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}", file=path, expected=", ".join(FORMATS))
    if fmt == "parquet":
        table = _read_parquet(path, max_bytes, max_rows)
    else:
        data = _decode(path, encoding, max_bytes)
        if not data.strip():
            raise DataError("the file is empty", file=path, expected="at least one data row")
        if fmt == "jsonl":
            table = _read_jsonl(path, data.decode("utf-8"), skip_bad_rows)
        else:
            sep = delimiter or ("\t" if fmt == "tsv" else ",")
            table = _read_delimited(path, data, sep, header, column_names, skip_bad_rows)
    if max_rows is not None and len(table) > max_rows:
        raise TooLargeError(f"{len(table):,} rows", file=path, expected=f"at most {max_rows:,} rows")
    return table


def _decode(path: Path, encoding: str, max_bytes: int | None) -> bytes | bytearray:
    """The file's content as UTF-8 bytes (checked), gunzipped (streamed, within ``max_bytes``) for .gz names."""
    raw = _read_bytes(path, max_bytes)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"cannot decode byte 0x{raw[exc.start]:02x} as {encoding}", file=path, line=line,
            expected=f"{encoding} text; pass the file's encoding (e.g. --encoding latin-1)",
        ) from exc
    if encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig"):
        return raw.removeprefix(b"\xef\xbb\xbf")
    return text.encode("utf-8")


def _read_bytes(path: Path, max_bytes: int | None) -> bytes | bytearray:
    """The file's bytes; a ``.gz`` file is inflated chunk by chunk and abandoned as soon as it passes ``max_bytes``
    (so a gzip bomb never takes more memory than the limit)."""
    gz = path.name.lower().endswith(".gz")

    def too_large() -> TooLargeError:
        return TooLargeError(f"more than {max_bytes:,} bytes{' once decompressed' if gz else ''}", file=path,
                             expected=f"at most {max_bytes:,} bytes")

    if not gz:
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise too_large()
        return path.read_bytes()
    out = bytearray()
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                out += chunk
                if max_bytes is not None and len(out) > max_bytes:
                    raise too_large()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"not a valid gzip file ({exc})", file=path) from exc
    return out


def _read_delimited(
    path: Path, data: bytes, sep: str, header: bool, column_names: list[str] | None, skip_bad_rows: bool
) -> Table:
    if header:
        head = bytes(data[:_BLOCK]).decode("utf-8", errors="ignore")  # the header is within the first block
        reader = csv.reader(io.StringIO(head, newline=""), delimiter=sep)
        try:
            names = [n.strip() for n in next(reader)]
        except (csv.Error, StopIteration) as exc:
            raise DataError(f"cannot read the header ({exc or 'no header'})", file=path, line=1,
                            expected=f"column names separated by {sep!r}") from exc
        first, skip = reader.line_num + 1, 1
    elif column_names:
        names, first, skip = list(column_names), 1, 0
    else:
        raise DataError("a header-less file needs column names", file=path)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"the header names column {duplicates[0]!r} more than once", file=path, line=1,
                        field=duplicates[0], expected="distinct column names")
    skipped = 0

    def invalid(row: pacsv.InvalidRow) -> str:
        nonlocal skipped
        if skip_bad_rows:
            skipped += 1
            return "skip"
        return "error"

    quoted = b'"' in data  # a quoted value may hold line breaks: blocks must not be split inside one
    block = _BLOCK
    while True:
        try:
            table = pacsv.read_csv(
                io.BytesIO(data),
                read_options=pacsv.ReadOptions(column_names=names, skip_rows=skip, block_size=block),
                parse_options=pacsv.ParseOptions(delimiter=sep, invalid_row_handler=invalid,
                                                 newlines_in_values=quoted),
                convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                     null_values=[""], strings_can_be_null=True,
                                                     quoted_strings_can_be_null=False),
            )
            break
        except pa.ArrowInvalid as exc:
            if "straddl" in str(exc) and block < len(data):  # a row longer than a block: one block for all
                block, skipped = len(data) + 1, 0
                continue
            _raise_bad_field_count(path, data, first, sep, len(names))
            raise DataError(f"cannot parse the file ({exc})", file=path, expected=f"{sep!r}-separated values") \
                from exc
    if table.num_rows == 0:
        raise DataError("the file has a header but no data rows", file=path, expected="at least one data row")
    body_lines = data.count(b"\n") - (first - 1) + (0 if data.endswith(b"\n") else 1)
    if skipped or body_lines != table.num_rows:  # bad rows skipped, blank lines or multi-line values
        try:
            lines = [line for line, row in _rows(data, first, sep) if not skipped or len(row) == len(names)]
        except csv.Error as exc:
            raise DataError(f"cannot parse the file ({exc})", file=path) from exc
        if len(lines) < table.num_rows:  # the csv module and Arrow disagree on rows: number them in order
            lines = list(range(first, first + table.num_rows))
        lines = lines[: table.num_rows]
    else:
        lines = np.arange(first, first + table.num_rows, dtype=np.int64)
    return Table(path, table.append_column(LINE, pa.array(lines, pa.int64())), skipped)


def _rows(data: bytes, first: int, sep: str) -> Iterator[tuple[int, list[str]]]:
    """(line where the row starts, fields) of each non-empty row from line ``first`` on."""
    stream = io.StringIO(data.decode("utf-8"), newline="")
    for _ in range(first - 1):
        stream.readline()
    reader = csv.reader(stream, delimiter=sep)
    start = first
    for row in reader:
        if row:
            yield start, row
        start = first + reader.line_num


def _raise_bad_field_count(path: Path, data: bytes, first: int, sep: str, width: int) -> None:
    try:
        for line, row in _rows(data, first, sep):
            if len(row) != width:
                raise DataError(f"found {len(row)} fields", file=path, line=line,
                                expected=f"{width} fields separated by {sep!r}")
    except csv.Error as exc:
        raise DataError(f"cannot parse the file ({exc})", file=path) from exc


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
        for number, line in enumerate(text.split("\n"), start=1):  # JSON strings may hold U+2028
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


def _read_parquet(path: Path, max_bytes: int | None, max_rows: int | None) -> Table:
    try:
        meta = pq.ParquetFile(path).metadata
        if max_rows is not None and meta.num_rows > max_rows:
            raise TooLargeError(f"{meta.num_rows:,} rows", file=path, expected=f"at most {max_rows:,} rows")
        size = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
        if max_bytes is not None and size > max_bytes:
            raise TooLargeError(f"{size:,} bytes uncompressed", file=path, expected=f"at most {max_bytes:,} bytes")
        if meta.num_rows >= LAZY_ROWS:
            names = pq.ParquetFile(path).schema_arrow.names
            if LINE in names:
                raise DataError(f"the file has a column named {LINE!r}", file=path, field=LINE,
                                expected="no column of that name (it is reserved for row numbers)")
            quoted = "'" + str(path).replace("'", "''") + "'"
            scan = (f"(SELECT * EXCLUDE (file_row_number), file_row_number + 1 AS {LINE} "
                    f"FROM read_parquet({quoted}, file_row_number = true))")
            return Table(path, None, scan=scan, rows=meta.num_rows, columns=[*names, LINE])
        return Table(path, _parquet_arrow(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({exc})", file=path) from exc


def _parquet_arrow(path: Path) -> pa.Table:
    """The whole file in memory, with ``_line`` (the 1-based row number)."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({exc})", file=path) from exc
    if table.num_rows == 0:
        raise DataError("the file holds no rows", file=path, expected="at least one row")
    return table.append_column(LINE, pa.array(np.arange(1, table.num_rows + 1), pa.int64()))
