"""The DuckDB store: transactional, idempotent imports; the queries the rest of genrec uses; cleaning rules."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest

from genrec.data.cleaning import CleaningConfig
from genrec.data.importers import ImportBatch
from genrec.data.schema import Platform
from genrec.data.store import SCHEMA, Store
from genrec.errors import DataError, NotFoundError


def events(rows: list[tuple]) -> pd.DataFrame:
    """rows of (user, platform, item, seconds, event, value)."""
    frame = pd.DataFrame(rows, columns=["user_id", "platform", "item_id", "timestamp", "event", "value"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s").astype("datetime64[us]")
    frame["_file"], frame["_line"] = "test", range(1, len(frame) + 1)
    return frame


def items(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["platform", "item_id", "title"])
    for col in ("description", "category", "attributes", "year"):
        frame[col] = None
    frame["_file"], frame["_line"] = "test", range(1, len(frame) + 1)
    return frame


SHOP, VIDEO = Platform("shop", "bought"), Platform("video", "watched")


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "s.duckdb") as s:
        s.ingest(ImportBatch(
            "base", platforms=[SHOP, VIDEO],
            events=events([("u1", "shop", "s1", 10, "buy", None), ("u1", "video", "v1", 20, "view", None),
                           ("u1", "shop", "s2", 30, "buy", None), ("u2", "shop", "s1", 15, "buy", None),
                           ("u2", "shop", "s3", 15, "buy", None), ("u3", "video", "v1", 5, "view", None)]),
            items=items([("shop", "s1", "Pencils"), ("shop", "s2", "Sketch pad"), ("shop", "s3", "Eraser"),
                         ("video", "v1", "How to draw")])))
        yield s


def counts(s: Store) -> tuple:
    return tuple(s.con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                 for t in ("events", "items", "platforms", "links", "splits"))


def test_history_is_cross_platform_in_time_order(store):
    hist = store.history("u1")
    assert [(h.platform, h.item_id, h.title) for h in hist] == [
        ("shop", "s1", "Pencils"), ("video", "v1", "How to draw"), ("shop", "s2", "Sketch pad")]
    assert [h.item_id for h in store.history("u1", platform="shop")] == ["s1", "s2"]
    assert [h.item_id for h in store.history("u1", before=datetime(1970, 1, 1, 0, 0, 20))] == ["s1"]
    assert [h.item_id for h in store.history("u1", limit=2)] == ["v1", "s2"]
    assert store.history("nobody") == []


def test_events_since_returns_the_whole_histories_of_users_with_newer_events(store):
    """What a swapped-in pipeline version learns from: the users with an event after its window, on a platform
    it learns whole, or named; their whole histories on the platforms asked for."""
    def rows(*args, **kwargs) -> list[tuple]:
        found = store.events_since(*args, **kwargs)
        return list(zip(found["user_id"], found["item_id"], strict=True))

    late = datetime(1970, 1, 1, 0, 0, 25)
    assert rows(["shop", "video"], late) == [("u1", "s1"), ("u1", "v1"), ("u1", "s2")]
    assert rows(["video"], late) == []  # u1's newer event is on shop
    assert rows(["shop", "video"], late, whole=["video"], users=["u2"]) == [
        ("u1", "s1"), ("u1", "v1"), ("u1", "s2"), ("u2", "s1"), ("u2", "s3"), ("u3", "v1")]


def test_equal_timestamps_keep_arrival_order(store):
    assert [h.item_id for h in store.history("u2")] == ["s1", "s3"]


def test_catalog_popularity_overlap(store):
    assert store.catalog("shop")["item_id"].tolist() == ["s1", "s2", "s3"]
    pop = store.popularity("shop")
    assert pop.iloc[0]["item_id"] == "s1" and pop.iloc[0]["count"] == 2
    assert store.popularity("shop", before=datetime(1970, 1, 1, 0, 0, 12))["item_id"].tolist() == ["s1"]
    overlap = store.user_overlap()
    assert overlap.loc["shop", "video"] == 1 and overlap.loc["shop", "shop"] == 2 and overlap.loc["video",
                                                                                                  "video"] == 2
    with pytest.raises(NotFoundError, match="unknown platform 'music'"):
        store.catalog("music")


def test_reimport_adds_nothing(store):
    before = counts(store)
    report = store.ingest(ImportBatch("again", events=events([("u1", "shop", "s1", 10, "buy", None)]),
                                      items=items([("shop", "s1", "Pencils")])))
    assert report.events_added == 0 and report.events_present == 1 and report.items_added == 0
    assert counts(store) == before


def test_catalog_update_is_an_upsert(store):
    report = store.ingest(ImportBatch("rename", items=items([("shop", "s1", "Colored pencils"),
                                                             ("shop", "s9", "Easel")])))
    assert (report.items_added, report.items_updated) == (1, 1)
    assert store.items("shop", ["s1"])[0].title == "Colored pencils"
    assert store.history("u1")[0].title == "Colored pencils"  # the title cache was invalidated


def test_failed_import_leaves_store_unchanged(store):
    before = counts(store)
    bad_items = items([("shop", "x1", "A"), ("shop", "x1", "B")])  # conflicting titles: fails after staging
    with pytest.raises(DataError, match="different titles"):
        store.ingest(ImportBatch("bad", platforms=[Platform("music")],
                                 events=events([("u9", "music", "m1", 1, "play", None)]), items=bad_items))
    assert counts(store) == before
    assert "music" not in [p.name for p in store.platforms()]


def test_unknown_platform_is_rejected_unless_allowed(store):
    batch = ImportBatch("f.csv", events=events([("u1", "books", "b1", 1, "read", None)]))
    with pytest.raises(DataError) as exc:
        store.ingest(batch)
    assert "unknown platform 'books'" in str(exc.value) and exc.value.line == 1
    assert store.ingest(batch, create_platforms=True, allow_unknown_items=True).platforms_added == ["books"]


def test_links_unify_user_ids_and_splits_are_kept(tmp_path):
    with Store(tmp_path / "s.duckdb") as s:
        links = pd.DataFrame({"platform": ["shop", "video"], "platform_user_id": ["shopper-7", "viewer-x"],
                              "user_id": ["alice", "alice"]})
        report = s.ingest(ImportBatch(
            "linked", platforms=[SHOP, VIDEO], links=links,
            splits=pd.DataFrame({"user_id": ["alice"], "split": ["test"]}),
            events=events([("shopper-7", "shop", "s1", 1, "buy", None), ("viewer-x", "video", "v1", 2, "view",
                                                                         None)])), allow_unknown_items=True)
        assert report.links_added == 2 and report.splits_set == 1
        assert [h.item_id for h in s.history("alice")] == ["s1", "v1"]
        # later imports are linked through the links already in the store
        s.ingest(ImportBatch("later", events=events([("viewer-x", "video", "v2", 3, "view", None)])),
                 allow_unknown_items=True)
        assert [h.item_id for h in s.history("alice")] == ["s1", "v1", "v2"]
        assert s.splits() == {"alice": "test"}


def test_cleaning_rules_report_what_they_removed(tmp_path):
    rows = [("u1", "shop", "s1", 0, "buy", 5.0), ("u1", "shop", "s1", 0, "buy", 5.0),  # exact duplicate
            ("u1", "shop", "ad", 1, "ad_click", None),  # ad click
            ("u1", "shop", "s2", 100, "buy", 1.0),  # low rating
            *[("bot", "shop", f"s{i}", 200 + i, "buy", 5.0) for i in range(10)],  # 10 in one minute
            ("u2", "shop", "s1", 5, "buy", 4.0), ("u2", "shop", "s3", 6, "buy", 4.0)]
    config = CleaningConfig(min_value=3.0, max_events_per_minute=5, k_core_users=2, k_core_items=2)
    with Store(tmp_path / "s.duckdb") as s:
        report = s.ingest(ImportBatch("noisy", platforms=[SHOP], events=events(rows)), config,
                          allow_unknown_items=True)
        removed = {r.rule: r.removed for r in report.cleaning.rules}
        assert removed["drop event types"] == 1
        assert removed["exact duplicates"] == 1
        assert removed["below-threshold values"] == 1
        assert removed["bot-like bursts"] == 10
        # left: u1 s1, u2 s1, u2 s3 -> k-core(2,2) removes u1 (1 event) then s3 (1 event) then u2, s1...
        assert removed["k-core"] == 3
        assert report.events_added == 0


def test_bursts_ignore_sequence_platforms(tmp_path):
    seq = Platform("seqshop", "bought", time_kind="sequence")
    rows = [("u1", "seqshop", f"s{i}", i, "buy", None) for i in range(30)]
    with Store(tmp_path / "s.duckdb") as s:
        report = s.ingest(ImportBatch("seq", platforms=[seq], events=events(rows)),
                          CleaningConfig(max_events_per_minute=5), allow_unknown_items=True)
        assert report.events_added == 30


def test_hashing_user_ids_needs_a_salt_and_is_stable(tmp_path, monkeypatch):
    monkeypatch.delenv("GENREC_SALT", raising=False)
    batch = ImportBatch("h", platforms=[SHOP], events=events([("alice", "shop", "s1", 1, "buy", None)]),
                        items=items([("shop", "s1", "Pencils")]))
    with Store(tmp_path / "s.duckdb") as s:
        with pytest.raises(ValueError, match="salt"):
            s.ingest(batch, CleaningConfig(hash_user_ids=True))
        s.ingest(batch, CleaningConfig(hash_user_ids=True, salt="pepper"))
        users = s.users()
        assert len(users) == 1 and users[0] != "alice" and len(users[0]) == 16
        again = s.ingest(batch, CleaningConfig(hash_user_ids=True, salt="pepper"))
        assert again.events_added == 0


def test_export_parquet(store, tmp_path):
    written = store.export_parquet(tmp_path / "out")
    assert {p.name for p in written} == {"platforms.parquet", "items.parquet", "events.parquet",
                                         "links.parquet", "splits.parquet"}
    assert len(pd.read_parquet(tmp_path / "out" / "events.parquet")) == 6


def test_events_carry_a_user_key_and_the_store_keeps_no_index_over_them(store):
    con = store.con
    assert con.execute("SELECT count(*) FROM events WHERE user_key <> hash(user_id)").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM duckdb_indexes() WHERE table_name = 'events'").fetchone()[0] == 0
    assert store.has_user("u2") and not store.has_user("nobody")
    assert store.user_items(["u2", "nobody"]) == {"u2": {("shop", "s1"), ("shop", "s3")}, "nobody": set()}


OLD_EVENTS = SCHEMA.replace(", user_key UBIGINT NOT NULL", "") + """
CREATE INDEX events_user ON events (user_id);
INSERT INTO events VALUES ('u1', 'shop', 's1', '1970-01-01 00:00:10', 'buy', NULL, 1),
    ('u2', 'shop', 's1', '1970-01-01 00:00:15', 'buy', NULL, 2),
    ('u1', 'shop', 's2', '1970-01-01 00:00:30', 'buy', 3, 3);
INSERT INTO platforms VALUES ('shop', 'bought', 'time', NULL);"""


def test_a_store_written_with_the_user_index_opens_read_only_and_is_rekeyed_when_opened_for_writing(tmp_path):
    import duckdb

    db = tmp_path / "old.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute(OLD_EVENTS)
    with Store(db, read_only=True) as old:  # as it is: found by user_id (and its index)
        assert [h.item_id for h in old.history("u1")] == ["s1", "s2"]
        assert old.user_items(["u2"]) == {"u2": {("shop", "s1")}}
    with Store(db) as s:
        con = s.con
        assert con.execute("SELECT count(*) FROM duckdb_indexes() WHERE table_name = 'events'").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM events WHERE user_key = hash(user_id)").fetchone()[0] == 3
        assert [(h.item_id, h.value) for h in s.history("u1")] == [("s1", None), ("s2", 3.0)]
        s.ingest(ImportBatch("more", events=events([("u1", "shop", "s3", 40, "buy", None),
                                                    ("u1", "shop", "s2", 30, "buy", None)]),
                             items=items([("shop", "s1", "A"), ("shop", "s2", "B"), ("shop", "s3", "C")])))
        assert [h.item_id for h in s.history("u1")] == ["s1", "s2", "s3"]
        assert con.execute("SELECT max(seq) FROM events").fetchone()[0] == 4
        con.execute("UPDATE events SET user_key = 0")  # as if DuckDB's hash had changed
    with Store(db) as s:
        assert s.con.execute("SELECT count(*) FROM events WHERE user_key = hash(user_id)").fetchone()[0] == 4
        assert [h.item_id for h in s.history("u1")] == ["s1", "s2", "s3"]
