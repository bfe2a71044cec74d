"""Timestamp normalisation and file reading, including every kind of bad input."""

from __future__ import annotations

import gzip
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.data.importers import Mapping, events_from_table, items_from_table, parse_mapping
from genrec.data.readers import Table, read_table
from genrec.errors import DataError


def _events(timestamps: list, kind: str = "auto", skip: bool = False):
    frame = pd.DataFrame({"user_id": ["u"] * len(timestamps), "item_id": [f"i{k}" for k in range(len(timestamps))],
                          "timestamp": timestamps, "_line": range(2, len(timestamps) + 2)})
    table = Table(Path("t.csv"), frame)
    return events_from_table(table, Mapping(constants={"platform": "p"}), timestamp_kind=kind, skip_bad_rows=skip)


@pytest.mark.parametrize(
    ("values", "kind", "expected"),
    [
        (["964982703"], "auto", datetime(2000, 7, 30, 18, 45, 3)),
        (["1588687728923"], "auto", datetime(2020, 5, 5, 14, 8, 48, 923000)),
        (["2021-01-01T10:00:00+02:00"], "auto", datetime(2021, 1, 1, 8, 0)),
        (["2021-01-02"], "iso", datetime(2021, 1, 2)),
        (["7"], "sequence", datetime(1970, 1, 1, 0, 0, 7)),
        (["964982703"], "seconds", datetime(2000, 7, 30, 18, 45, 3)),
        (["964982703000"], "milliseconds", datetime(2000, 7, 30, 18, 45, 3)),
        ([datetime(2022, 3, 4, 5, 6)], "auto", datetime(2022, 3, 4, 5, 6)),
    ],
)
def test_timestamp_kinds_normalise_to_one_type(values, kind, expected):
    events, skipped = _events(values, kind)
    assert skipped == 0
    assert events.schema.field("timestamp").type == pa.timestamp("us")
    assert events.column("timestamp")[0].as_py() == expected


@pytest.mark.parametrize(
    ("values", "kind", "bad_line"),
    [(["10", "x"], "seconds", 3), (["1", "-2"], "sequence", 3), (["1", "2.5"], "sequence", 3),
     (["2021-01-01", "yesterday"], "iso", 3), (["", "5"], "auto", 2)],
)
def test_bad_timestamps_name_their_line(values, kind, bad_line):
    with pytest.raises(DataError) as exc:
        _events(values, kind)
    assert (exc.value.line, exc.value.field) == (bad_line, "timestamp")
    events, skipped = _events(values, kind, skip=True)
    assert skipped == 1 and events.num_rows == 1


def test_csv_rows_carry_their_line_numbers(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("user_id,item_id,timestamp\nu1,i1,1\nu2,i2,2\n")
    table = read_table(f)
    assert table.frame["_line"].tolist() == [2, 3]
    assert table.frame["user_id"].tolist() == ["u1", "u2"]


def test_malformed_row_names_file_and_line(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("user_id,item_id,timestamp\nu1,i1,1\nu2,i2,2,extra\nu3,i3,3\n")
    with pytest.raises(DataError) as exc:
        read_table(f)
    assert exc.value.line == 3 and "e.csv" in str(exc.value) and "3 fields" in str(exc.value)
    table = read_table(f, skip_bad_rows=True)
    assert table.skipped_rows == 1
    assert table.frame["user_id"].tolist() == ["u1", "u3"]
    assert table.frame["_line"].tolist() == [2, 4]


def test_wrong_encoding_names_the_line(tmp_path):
    f = tmp_path / "items.csv"
    f.write_bytes("platform,item_id,title\nmovies,1,Toy Story\nmovies,2,Caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError) as exc:
        read_table(f)
    assert exc.value.line == 3 and "utf-8" in str(exc.value) and "--encoding" in str(exc.value)
    table = read_table(f, encoding="latin-1")
    assert table.frame["title"].tolist()[1] == "Caf\xe9"


@pytest.mark.parametrize("content", ["", "\n\n", "user_id,item_id,timestamp\n"])
def test_empty_files_are_rejected(tmp_path, content):
    f = tmp_path / "e.csv"
    f.write_text(content)
    with pytest.raises(DataError, match="empty|no data rows"):
        read_table(f)


def test_missing_column_lists_what_the_file_has(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("uid,item_id,timestamp\nu1,i1,1\n")
    with pytest.raises(DataError) as exc:
        events_from_table(read_table(f), Mapping(constants={"platform": "p"}))
    assert exc.value.field == "user_id" and "uid" in str(exc.value)
    events, _ = events_from_table(read_table(f), parse_mapping(["user_id=uid", "platform:=p"]))
    assert events.column("user_id").to_pylist() == ["u1"]


def test_bad_values_name_line_and_field(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("user_id,item_id,timestamp,value\nu1,i1,1,4.5\nu2,i2,soon,3\nu3,i3,3,lots\n")
    mapping = Mapping(constants={"platform": "p"})
    with pytest.raises(DataError) as exc:
        events_from_table(read_table(f), mapping)
    assert (exc.value.line, exc.value.field) == (3, "timestamp")
    events, skipped = events_from_table(read_table(f), mapping, skip_bad_rows=True)
    assert skipped == 2 and events.column("user_id").to_pylist() == ["u1"]


def test_empty_required_value_is_an_error(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("user_id,item_id,timestamp\nu1,,1\n")
    with pytest.raises(DataError) as exc:
        events_from_table(read_table(f), Mapping(constants={"platform": "p"}))
    assert (exc.value.line, exc.value.field) == (2, "item_id")


def test_duplicate_item_ids_with_different_titles(tmp_path):
    f = tmp_path / "items.csv"
    f.write_text("platform,item_id,title\nm,1,Alien\nm,1,Alien\nm,2,Heat\nm,2,Ronin\n")
    with pytest.raises(DataError) as exc:
        items_from_table(read_table(f))
    assert "different titles" in str(exc.value) and exc.value.line == 5 and "line 4" in str(exc.value)
    items, skipped = items_from_table(read_table(f), skip_bad_rows=True)
    assert items["item_id"].tolist() == ["1"] and skipped == 2


def test_jsonl_gz_and_bad_json_line(tmp_path):
    f = tmp_path / "e.jsonl.gz"
    with gzip.open(f, "wt") as fh:
        fh.write('{"user_id": "u1", "item_id": "i1", "timestamp": 5}\n\n{"user_id": "u2", "item_id": [1, 2]}\n')
    table = read_table(f)
    assert table.frame["_line"].tolist() == [1, 3]
    assert table.frame["item_id"].tolist() == ["i1", "[1, 2]"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError) as exc:
        read_table(bad)
    assert exc.value.line == 2
    assert read_table(bad, skip_bad_rows=True).skipped_rows == 1


def test_parquet_with_native_types(tmp_path):
    f = tmp_path / "e.parquet"
    pq.write_table(pa.table({"user_id": ["u1"], "item_id": [7], "timestamp": pa.array([datetime(2020, 1, 1)]),
                             "platform": ["p"]}), f)
    events, _ = events_from_table(read_table(f))
    assert events.column("item_id").to_pylist() == ["7"]
    assert events.column("timestamp")[0].as_py() == datetime(2020, 1, 1)


def test_unknown_format_and_bad_mapping(tmp_path):
    f = tmp_path / "e.xlsx"
    f.write_text("x")
    with pytest.raises(DataError, match="format"):
        read_table(f)
    with pytest.raises(DataError, match="unknown canonical column"):
        parse_mapping(["userid=uid"])
    with pytest.raises(DataError, match="bad column mapping"):
        parse_mapping(["user_id"])
