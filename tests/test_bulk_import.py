"""Bulk imports: a large Parquet file streams into the store (DuckDB reads it inside the import transaction),
with the checks, errors, cleaning and idempotence of the in-memory path; a kill -9 leaves the store as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.data import readers
from genrec.data.importers import EventSource, ImportBatch, file_batch
from genrec.data.readers import read_table
from genrec.data.schema import Platform
from genrec.data.store import BULK_SETTINGS, Store
from genrec.errors import DataError

SHOP, VIDEO = Platform("shop", "bought"), Platform("video", "watched")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def lazy(monkeypatch):
    """Every Parquet file takes the streaming path, however small."""
    monkeypatch.setattr(readers, "LAZY_ROWS", 1)


def catalog(platforms=("shop", "video"), n=20) -> ImportBatch:
    ids = [str(i) for i in range(n)]
    rows = [(p, i) for p in platforms for i in ids]
    items = pa.table({"platform": [p for p, _ in rows], "item_id": [i for _, i in rows],
                      "title": [f"title {p} {i}" for p, i in rows]}).to_pandas()
    for col in ("description", "category", "attributes", "year"):
        items[col] = None
    items["_file"], items["_line"] = "catalog", range(1, len(items) + 1)
    return ImportBatch("catalog", platforms=[SHOP, VIDEO], items=items)


def write_events(path: Path, rows: list[tuple]) -> Path:
    """rows of (user, platform, item, timestamp, event, value)."""
    columns = list(zip(*rows, strict=True))
    pq.write_table(pa.table({"user_id": columns[0], "platform": columns[1], "item_id": columns[2],
                             "timestamp": columns[3], "event": columns[4], "value": columns[5]}), path)
    return path


ROWS = [("u1", "shop", "1", 1_600_000_000, "view", 1.0), ("u1", "shop", "2", 1_600_000_060, "buy", None),
        ("u2", "video", "3", 1_600_000_000, "view", 0.5), ("u2", "video", "3", 1_600_000_000, "view", 0.5),
        ("u3", "shop", "4", 1_600_000_100, "ad_click", None), ("u3", "video", "5", 1_600_000_200, "view", 2.0)]


def import_file(db: Path, path: Path, **options) -> tuple:
    with Store(db) as store:
        if not store.catalog_sizes():
            store.ingest(catalog())
        report = store.ingest(file_batch(path, kind="events", table=read_table(path),
                                         skip_bad_rows=options.pop("skip_bad_rows", False)), **options)
        return report, store.events().drop(columns="seq")


def test_a_large_parquet_file_is_not_read_into_memory(tmp_path, lazy):
    path = write_events(tmp_path / "e.parquet", ROWS)
    table = read_table(path)
    assert table.scan is not None and len(table) == len(ROWS)
    batch = file_batch(path, kind="events", table=table)
    assert isinstance(batch.events, EventSource) and len(batch.events) == len(ROWS)
    assert table.arrow.num_rows == len(ROWS)  # the views still read it on demand


def test_streamed_and_in_memory_imports_store_the_same(tmp_path, monkeypatch):
    path = write_events(tmp_path / "e.parquet", ROWS)
    eager, eager_events = import_file(tmp_path / "a.duckdb", path)
    monkeypatch.setattr(readers, "LAZY_ROWS", 1)
    streamed, streamed_events = import_file(tmp_path / "b.duckdb", path)
    assert streamed_events.equals(eager_events)
    assert (streamed.events_in, streamed.events_added, streamed.cleaning.removed) == \
        (eager.events_in, eager.events_added, eager.cleaning.removed) == (6, 4, 2)


def test_streamed_imports_apply_every_option_as_the_in_memory_path(tmp_path, monkeypatch):
    from genrec.data.cleaning import CleaningConfig

    rows = [*ROWS, *[("u6", "shop", "7", 1_600_000_300 + i % 2, "view", float(i)) for i in range(5)]]
    path = write_events(tmp_path / "e.parquet", rows)
    options = {"user_prefix": "x/", "cleaning": CleaningConfig(hash_user_ids=True, salt="pepper",
                                                               max_events_per_minute=4, k_core_users=2)}

    def run(db: Path) -> tuple:
        with Store(db) as store:
            store.ingest(catalog())
            batch = file_batch(path, kind="events", table=read_table(path))
            batch.dataset = "ds"
            report = store.ingest(batch, **options)
            return ([(r.rule, r.removed) for r in report.cleaning.rules], report.events_added,
                    store.events().drop(columns="seq"), store.namespaces())

    eager = run(tmp_path / "a.duckdb")
    monkeypatch.setattr(readers, "LAZY_ROWS", 1)
    streamed = run(tmp_path / "b.duckdb")
    assert streamed[:2] == eager[:2] and eager[1] == 2
    assert streamed[2].equals(eager[2]) and streamed[3].equals(eager[3])


def test_a_large_csv_file_is_staged_from_arrow_with_its_lines(tmp_path, monkeypatch):
    path = tmp_path / "e.csv"
    path.write_text('user_id,platform,item_id,timestamp,event,value\n'
                    'u1,shop,1,1600000000,"a\nmulti-line event",1\n\n'
                    'u2,video,3,1600000000,view,\n'
                    'u3,shop,4,yesterday,view,2\n')
    monkeypatch.setattr(readers, "LAZY_ROWS", 1)
    batch = file_batch(path, kind="events", table=read_table(path))
    assert isinstance(batch.events, EventSource) and batch.events.arrow is not None
    with Store(tmp_path / "s.duckdb") as store:
        store.ingest(catalog())
        with pytest.raises(DataError) as exc:
            store.ingest(batch)
        assert (exc.value.line, exc.value.field) == (6, "timestamp") and "'yesterday'" in str(exc.value)
        report = store.ingest(file_batch(path, kind="events", table=read_table(path), skip_bad_rows=True))
        assert (report.events_added, report.skipped_rows) == (2, 1)
        assert sorted(store.events()["event"]) == ["a\nmulti-line event", "view"]


def test_a_streamed_bad_row_names_file_line_and_field_and_changes_nothing(tmp_path, lazy):
    db = tmp_path / "s.duckdb"
    good = write_events(tmp_path / "good.parquet", ROWS[:2])
    import_file(db, good)
    bad = write_events(tmp_path / "bad.parquet", [*ROWS, ("u4", "shop", " ", 1_600_000_000, "view", 1.0)])
    with pytest.raises(DataError) as exc:
        import_file(db, bad)
    assert (str(exc.value.file), exc.value.line, exc.value.field) == (str(bad), 7, "item_id")
    assert "invalid value ' '" in str(exc.value)
    with Store(db) as store:
        assert len(store.events()) == 2
        assert {n: store.con.execute(f"SELECT current_setting('{n}')").fetchall()[0][0] for n in BULK_SETTINGS} \
            != BULK_SETTINGS


def test_streamed_timestamps_are_range_checked(tmp_path, lazy):
    path = write_events(tmp_path / "e.parquet", [ROWS[0], ("u9", "shop", "1", -5, "view", 1.0)])
    with pytest.raises(DataError) as exc:
        import_file(tmp_path / "s.duckdb", path)
    assert (exc.value.line, exc.value.field) == (2, "timestamp")


def test_streamed_mixed_units_are_refused_before_the_import(tmp_path, lazy):
    path = write_events(tmp_path / "e.parquet", [ROWS[0], ("u9", "shop", "1", 1_600_000_000_000, "view", 1.0)])
    with pytest.raises(DataError, match="mix units"):
        file_batch(path, kind="events", table=read_table(path))


def test_streamed_bad_rows_can_be_skipped(tmp_path, lazy):
    path = write_events(tmp_path / "e.parquet", [*ROWS, ("", "shop", "1", 1_600_000_000, "view", 1.0),
                                                 ("u5", "shop", "1", 1_600_000_000, "view", 1.0)])
    report, stored = import_file(tmp_path / "s.duckdb", path, skip_bad_rows=True)
    assert report.skipped_rows == 1 and report.events_added == 5
    assert "u5" in set(stored["user_id"])


def test_a_streamed_import_is_idempotent_and_checks_items(tmp_path, lazy):
    db = tmp_path / "s.duckdb"
    path = write_events(tmp_path / "e.parquet", ROWS)
    import_file(db, path)
    again, stored = import_file(db, path)
    assert (again.events_added, again.events_present, len(stored)) == (0, 4, 4)
    with Store(db) as store:  # the stage was a table of the store for the import only
        assert not store.con.execute("SELECT 1 FROM duckdb_tables() WHERE table_name LIKE 'stage%'").fetchall()
    unknown = write_events(tmp_path / "u.parquet", [("u1", "shop", "404", 1_600_000_000, "view", 1.0)])
    with pytest.raises(DataError, match="missing from their platform's catalog") as exc:
        import_file(db, unknown)
    assert str(exc.value.file) == str(unknown) and "line 1" in str(exc.value)


KILLED_CHILD = textwrap.dedent("""
    import sys, time
    from genrec.data.importers import file_batch
    from genrec.data.readers import read_table
    from genrec.data.store import Store

    original = Store._insert_events

    def insert_then_stall(con):
        print("inserting", flush=True)
        result = original(con)
        print("inserted", flush=True)
        time.sleep(600)  # still inside the transaction: killed before COMMIT at the latest
        return result

    Store._insert_events = staticmethod(insert_then_stall)
    path = sys.argv[2]
    with Store(sys.argv[1]) as store:
        store.ingest(file_batch(path, kind="events", table=read_table(path)))
""")


def snapshot(db: Path) -> dict:
    with Store(db) as store:
        con = store.con
        out = {table: con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
               for table in ("platforms", "items", "events", "links", "splits", "imports", "user_datasets")}
        out["events_hash"] = con.execute("""SELECT sum(hash(user_id, platform, item_id, timestamp, event, value,
                                            seq)) FROM events""").fetchall()[0][0]
        out["items_hash"] = con.execute("SELECT sum(hash(platform, item_id, title)) FROM items").fetchall()[0][0]
        out["tables"] = sorted(r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall())
        out["index"] = con.execute("SELECT count(*) FROM duckdb_indexes() WHERE index_name = 'events_user'"
                                   ).fetchall()[0][0]
        return out


def test_kill_9_during_an_import_leaves_the_store_as_it_was(tmp_path):
    db = tmp_path / "s.duckdb"
    with Store(db) as store:
        store.ingest(catalog(n=1000))
    small = write_events(tmp_path / "small.parquet", ROWS)
    import_file(db, small)
    before = snapshot(db)
    n = 1_500_000  # above LAZY_ROWS: the streaming path
    rng = np.random.default_rng(0)
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({
        "user_id": pa.array(rng.integers(0, n // 50, n).astype(str)),
        "platform": pa.array(np.array(["shop", "video"])[rng.integers(0, 2, n)]),
        "item_id": pa.array(rng.integers(0, 1000, n).astype(str)),
        "timestamp": pa.array(1_600_000_000 + rng.integers(0, 86_400 * 365, n)),
        "event": pa.array(np.array(["view", "buy"])[rng.integers(0, 2, n)]),
        "value": pa.array(rng.random(n))}), path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(db), str(path)], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "inserting"
        time.sleep(0.2)  # into the insert of the events (or, if it is done, the stall before COMMIT)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    assert snapshot(db) == before
    report, stored = import_file(db, small)  # and the store still works
    assert report.events_present == 4 and len(stored) == 4
