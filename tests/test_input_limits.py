"""Hostile or broken input files: decompression and row limits (streamed, bounded memory), huge fields, multi-line
values, duplicate headers, bad reader options, unsafe platform names and upload file names. Library, CLI (real
processes) and the upload endpoint (in process, no model needed: every case fails before embedding)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genrec.data.importers import Mapping, events_from_table
from genrec.data.readers import check_options, read_table
from genrec.data.store import Store
from genrec.errors import DataError, TooLargeError

MB = 1 << 20


def _bomb(path: Path, inflated_mb: int) -> Path:
    """A small .csv.gz that inflates to ``inflated_mb`` MB (a header, then one endless line of zeros)."""
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(b"item_id,title\n")
        zeros = b"0" * MB
        for _ in range(inflated_mb):
            out.write(zeros)
    return path


def test_a_gzip_bomb_stops_at_the_limit_with_bounded_memory(tmp_path):
    bomb = _bomb(tmp_path / "catalog.csv.gz", 64)
    assert bomb.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(TooLargeError) as exc:
            read_table(bomb, max_bytes=8 * MB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "decompressed" in str(exc.value) and "catalog.csv.gz" in str(exc.value)
    assert peak < 40 * MB, f"peak {peak / MB:.0f} MB while refusing a 64 MB bomb with an 8 MB limit"


def test_row_limits_for_text_and_parquet(tmp_path):
    csv_file = tmp_path / "items.csv"
    csv_file.write_text("item_id,title\n" + "".join(f"{n},t{n}\n" for n in range(11)))
    with pytest.raises(TooLargeError, match="11 rows"):
        read_table(csv_file, max_rows=10)
    assert len(read_table(csv_file, max_rows=11)) == 11
    parquet = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": [str(n) for n in range(11)]}), parquet)
    with pytest.raises(TooLargeError, match="11 rows"):
        read_table(parquet, max_rows=10)
    with pytest.raises(TooLargeError):
        read_table(csv_file, max_bytes=50)


def test_a_5_mb_field_is_read(tmp_path):
    f = tmp_path / "items.csv"
    f.write_text("platform,item_id,title,description\nshop,1,Short,small\nshop,2,Long," + "x" * 5_000_000 +
                 "\nshop,3,Third,small\n")
    table = read_table(f)
    assert len(table.frame["description"][1]) == 5_000_000
    assert table.frame["_line"].tolist() == [2, 3, 4]


def test_a_bad_value_after_a_multi_line_field_is_reported_on_its_own_line(tmp_path):
    f = tmp_path / "events.csv"
    f.write_text('user_id,item_id,timestamp,note\nu1,i1,1600000000,"two\nlines"\n\nu2,i2,soon,x\n')
    with pytest.raises(DataError) as exc:
        events_from_table(read_table(f), Mapping(constants={"platform": "p"}))
    assert (exc.value.line, exc.value.field) == (5, "timestamp")
    wide = tmp_path / "wide.csv"
    wide.write_text('user_id,item_id,timestamp\nu1,i1,"1\n"\nu2,i2,3,extra\n')
    with pytest.raises(DataError) as exc:
        read_table(wide)
    assert exc.value.line == 4


def test_a_duplicate_header_column_is_rejected(tmp_path):
    f = tmp_path / "events.csv"
    f.write_text("user_id,item_id,timestamp,item_id\nu1,i1,1,i2\n")
    with pytest.raises(DataError, match="'item_id' more than once") as exc:
        read_table(f)
    assert exc.value.line == 1


@pytest.mark.parametrize(("encoding", "delimiter", "field"), [("bogus", None, "encoding"), ("utf-8", "::", "delimiter"),
                                                               ("utf-8", '"', "delimiter"), ("utf-8", "", "delimiter")])
def test_bad_reader_options_are_data_errors(encoding, delimiter, field):
    with pytest.raises(DataError) as exc:
        check_options(encoding, delimiter)
    assert exc.value.field == field


PROPERTY = settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 200)), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(st.binary(max_size=300) | st.text(alphabet=st.sampled_from('ab,;"\n\r\t \u2028\x00é1'), max_size=300)
       .map(lambda text: text.encode()), st.sampled_from(["csv", "tsv", "jsonl"]), st.booleans())
def test_any_bytes_are_read_or_refused_with_a_data_error(tmp_path_factory, content, fmt, skip):
    f = tmp_path_factory.mktemp("any") / f"f.{fmt}"
    f.write_bytes(b"a,b\n" + content if fmt == "csv" else content)
    try:
        table = read_table(f, skip_bad_rows=skip)
    except DataError:
        return
    lines = table.frame["_line"].tolist()
    assert lines == sorted(set(lines)) and all(line >= 1 for line in lines)


# --- the CLI: clear errors, never a traceback ------------------------------------------------------------------


def genrec(*args: str, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "GENREC_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "genrec.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.parametrize(("option", "message"), [
    (["--timestamp-kind", "weird"], "unknown timestamp kind 'weird'"),
    (["--encoding", "bogus"], "unknown encoding 'bogus'"),
    (["--delimiter", "::"], "invalid delimiter '::'"),
])
def test_cli_bad_options_are_clear_errors(tmp_path, option, message):
    f = tmp_path / "e.csv"
    f.write_text("user_id,item_id,timestamp\nu1,i1,1600000000\n")
    result = genrec("data", "import-file", str(f), "--platform", "shop", *option, home=tmp_path / "home")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_cli_create_platforms_applies_the_platform_name_rule(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("user_id,platform,item_id,timestamp\nu1,shop,i1,1600000000\nu2,../../etc/passwd,i2,1600000001\n"
                 "u3,big-field,i3,1600000002\n")
    result = genrec("data", "import-file", str(f), "--create-platforms", home=tmp_path / "home")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "invalid platform name '../../etc/passwd'" in result.stderr and "line 3" in result.stderr
    with Store(tmp_path / "home" / "genrec.duckdb", read_only=True) as store:
        assert store.platforms() == []


def test_cli_bad_timestamps_and_huge_fields(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("user_id,item_id,timestamp,note\nu1,i1,1600000000," + "x" * 5_000_000 + "\nu2,i2,1e20,x\n")
    result = genrec("data", "import-file", str(f), "--platform", "shop", home=tmp_path / "home")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "line 3" in result.stderr and "'1e20'" in result.stderr and "2200" in result.stderr


# --- the upload endpoint ---------------------------------------------------------------------------------------


@pytest.fixture
def client(tmp_path, monkeypatch):
    from genrec.server import ServerSettings, create_app

    monkeypatch.delenv("GENREC_API_KEYS", raising=False)
    app = create_app(ServerSettings(db=tmp_path / "api.duckdb", warm_up=False, api_keys=["k"],
                                    max_catalog_bytes=8 * MB, max_catalog_rows=100))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _upload(client, name: str, filename: str, content: bytes):
    return client.post("/v1/platforms", data={"name": name}, files={"catalog": (filename, content)},
                       headers={"X-API-Key": "k"})


def test_upload_gzip_bomb_gets_413(client, tmp_path):
    response = _upload(client, "bombed", "catalog.csv.gz", _bomb(tmp_path / "b.csv.gz", 40).read_bytes())
    assert response.status_code == 413, response.text
    assert "decompressed" in response.json()["error"]
    assert client.get("/v1/platforms").json() == []


def test_upload_with_too_many_rows_gets_413(client):
    rows = "".join(f"{n},title {n}\n" for n in range(101))
    response = _upload(client, "many", "c.csv", f"item_id,title\n{rows}".encode())
    assert response.status_code == 413 and "101 rows" in response.json()["error"]


@pytest.mark.parametrize("filename", ["..", ".", "/", "...", "\\\\..\\\\"])
def test_upload_file_names_that_name_no_file_get_422(client, filename):
    response = _upload(client, "dots", filename, b"item_id,title\n1,One\n")
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "catalog" and "file name" in response.json()["error"]


def test_upload_with_an_oversized_title_gets_422(client):
    response = _upload(client, "long", "c.csv", b"item_id,title\n1,Fine\n2," + b"t" * 5_000_000 + b"\n")
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "title" and "line 3" in response.json()["error"]
    assert client.get("/v1/platforms").json() == []
