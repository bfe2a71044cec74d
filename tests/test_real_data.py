"""Integration tests on the real data sets in ../shared/data."""

from __future__ import annotations

import pytest

from genrec.config import default_data_dir
from genrec.data.datasets import amazon_arts_office
from genrec.data.loading import import_dataset
from genrec.data.stats import compute
from genrec.data.store import Store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    assert (default_data_dir() / "movielens-latest-small").is_dir(), "../shared/data is missing"
    with Store(tmp_path_factory.mktemp("real") / "s.duckdb") as s:
        import_dataset(s, "movielens-latest-small")
        import_dataset(s, "amazon-arts-office")
        yield s


def test_movielens_counts(store):
    stats = compute(store, ["movies"])
    assert (stats.users, stats.events) == (610, 100_836)
    assert stats.platforms[0].items_in_catalog == 9_742


def test_amazon_counts_and_overlap(store):
    stats = compute(store, ["amazon-arts", "amazon-office"])
    assert len(stats.platforms) == 2
    assert stats.users == 9_577 and stats.users_on_all_platforms == 9_577
    assert stats.events == 208_541
    assert {p.platform: p.items_in_catalog for p in stats.platforms} == {"amazon-arts": 18_639,
                                                                       "amazon-office": 19_757}
    splits = store.splits()
    assert sum(1 for s in splits.values() if s == "test") == 1_000
    assert sum(1 for s in splits.values() if s == "valid") == 577


def test_amazon_targets_follow_the_shared_history(store):
    """uid 0 (A7PVZNHRTX1J7): targets 22212 (Office) and 9 (Arts), both at position 14."""
    hist = store.history("A7PVZNHRTX1J7")
    last = [h for h in hist if h.timestamp == hist[-1].timestamp]
    assert [(h.platform, h.item_id) for h in last] == [("amazon-office", "22212"), ("amazon-arts", "9")]
    shared = store.history("A7PVZNHRTX1J7", before=last[0].timestamp)
    assert [h.item_id for h in shared][:4] == ["0", "28442", "1", "22560"]
    assert len(shared) == 14
    assert all(amazon_arts_office.platform_of(int(h.item_id)) == h.platform for h in hist)


def test_reimport_is_idempotent(store):
    report = import_dataset(store, "movielens-latest-small")
    assert report.events_added == 0 and report.events_present == 100_836
