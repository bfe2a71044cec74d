"""Evaluation protocols never leak a target or a future event into a history or into training data."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from genrec.data.importers import ImportBatch
from genrec.data.schema import Platform
from genrec.data.store import Store
from genrec.evaluation.protocol import Protocol, build


def _batch(rows, splits=None) -> ImportBatch:
    frame = pd.DataFrame(rows, columns=["user_id", "platform", "item_id", "timestamp"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s").astype("datetime64[us]")
    frame["event"], frame["value"] = "x", None
    frame["_file"], frame["_line"] = "t", range(1, len(frame) + 1)
    items = pd.DataFrame({"platform": [r[1] for r in rows], "item_id": [r[2] for r in rows]}).drop_duplicates()
    items["title"] = "title " + items["item_id"]
    for col in ("description", "category", "attributes", "year"):
        items[col] = None
    items["_file"], items["_line"] = "t", range(1, len(items) + 1)
    return ImportBatch("t", platforms=[Platform("a"), Platform("b")], events=frame, items=items,
                       splits=pd.DataFrame(splits, columns=["user_id", "split"]) if splits else None)


@pytest.fixture
def random_store(tmp_path):
    rng = random.Random(7)
    rows = []
    for u in range(40):
        t = 0
        for _ in range(rng.randint(3, 15)):
            t += rng.choice([0, 1, 5])  # equal timestamps happen
            rows.append((f"u{u}", rng.choice("ab"), f"{rng.choice('ab')}{rng.randint(0, 30)}", t))
    rows = [(u, p, p + i[1:], t) for u, p, i, t in rows]  # item ids belong to their platform
    splits = [(f"u{u}", "train" if u < 30 else "valid" if u < 35 else "test") for u in range(40)]
    with Store(tmp_path / "s.duckdb") as s:
        s.ingest(_batch(rows, splits))
        yield s


def _check_no_leak(data):
    for case in data.test + data.valid:
        assert all(x.timestamp < case.timestamp for x in case.history), "history holds a non-earlier event"
        assert case.history, "cases need a history"
    test_users = {c.user_id for c in data.test}
    for user, seq in data.train.sequences.items():
        for case in (c for c in data.test + data.valid if c.user_id == user):
            later = [x for x in seq if x.timestamp > case.timestamp]
            assert not later, f"training data of {user} holds events after a target"
            assert not any(x.item_id == case.target and x.timestamp == case.timestamp for x in seq)
    return test_users


@pytest.mark.parametrize("targets", ["last-per-platform", "final-timestamp"])
@pytest.mark.parametrize("users", ["all", "dataset", "random"])
def test_no_target_or_future_event_leaks(random_store, targets, users):
    data = build(random_store, Protocol(targets=targets, users=users, valid_fraction=0.2, test_fraction=0.2),
                 ["a", "b"])
    assert data.test
    test_users = _check_no_leak(data)
    if users != "all":
        assert not test_users & set(data.train.sequences), "a test user's events reached training data"
        valid_users = {c.user_id for c in data.valid}
        assert not valid_users & set(data.train.sequences)


def test_leave_last_out_per_platform(tmp_path):
    rows = [("u", "a", "a1", 1), ("u", "b", "b1", 2), ("u", "a", "a2", 3), ("u", "a", "a3", 3), ("u", "b", "b2", 4),
            ("u", "a", "a4", 5)]
    with Store(tmp_path / "s.duckdb") as s:
        s.ingest(_batch(rows))
        data = build(s, Protocol(), ["a", "b"])
    test = {c.platform: c for c in data.test}
    assert test["a"].target == "a4" and [x.item_id for x in test["a"].history] == ["a1", "b1", "a2", "a3", "b2"]
    assert test["b"].target == "b2" and [x.item_id for x in test["b"].history] == ["a1", "b1", "a2", "a3"]
    valid = {c.platform: c for c in data.valid}
    # a3 and a2 share a timestamp: a3 (later arrival) is the validation target, a2 is not its history
    assert valid["a"].target == "a3" and [x.item_id for x in valid["a"].history] == ["a1", "b1"]
    assert valid["b"].target == "b1"
    # training stops before the user's earliest validation/test target (b1 at position 1)
    assert [x.item_id for x in data.train.sequences["u"]] == ["a1"]


def test_final_timestamp_keeps_every_last_event_as_a_case(tmp_path):
    rows = [("u", "a", "a1", 0), ("u", "b", "b1", 1), ("u", "b", "b2", 2), ("u", "a", "a2", 2)]
    with Store(tmp_path / "s.duckdb") as s:
        s.ingest(_batch(rows, [("u", "test")]))
        data = build(s, Protocol(targets="final-timestamp", users="dataset"), ["a", "b"])
        only_b = build(s, Protocol(targets="final-timestamp", users="dataset", platforms=["b"]), ["a", "b"])
    assert sorted((c.platform, c.target) for c in data.test) == [("a", "a2"), ("b", "b2")]
    assert all([x.item_id for x in c.history] == ["a1", "b1"] for c in data.test)
    assert [(c.platform, c.target) for c in only_b.test] == [("b", "b2")]


def test_zero_shot_platform_hides_it_from_training(random_store):
    data = build(random_store, Protocol(users="dataset", exclude_from_training=["b"]), ["a", "b"])
    assert all(x.platform == "a" for seq in data.train.sequences.values() for x in seq)
    assert set(data.train.catalogs) == {"a", "b"}
    assert any(c.platform == "b" for c in data.test)
