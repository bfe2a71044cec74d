"""Property tests of the cleaning rules on random event sets (real DuckDB store): what each rule promises holds
for any input, and importing is idempotent."""

from __future__ import annotations

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genrec.data.cleaning import CleaningConfig
from genrec.data.importers import ImportBatch
from genrec.data.schema import Platform
from genrec.data.store import Store

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ROWS = st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3", "u4"]), st.sampled_from(["shop", "video"]),
                          st.sampled_from(["a", "b", "c", "d", "e"]), st.integers(0, 600),
                          st.sampled_from(["view", "buy", "ad_click"]), st.none() | st.sampled_from([1.0, 3.0, 5.0])),
                min_size=1, max_size=60)


def _batch(rows) -> ImportBatch:
    frame = pd.DataFrame(rows, columns=["user_id", "platform", "item_id", "timestamp", "event", "value"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"] + 1_600_000_000, unit="s").astype("datetime64[us]")
    frame["_file"], frame["_line"] = "random", range(1, len(frame) + 1)
    return ImportBatch("random", platforms=[Platform("shop"), Platform("video")], events=frame)


@PROPERTY
@given(ROWS, st.integers(0, 3), st.integers(0, 3), st.none() | st.sampled_from([2.0, 4.0]),
       st.none() | st.integers(1, 5))
def test_cleaning_rules_hold_for_any_events(tmp_path_factory, rows, k_users, k_items, min_value, per_minute):
    config = CleaningConfig(k_core_users=k_users, k_core_items=k_items, min_value=min_value,
                            max_events_per_minute=per_minute)
    with Store(tmp_path_factory.mktemp("clean") / "s.duckdb") as store:
        report = store.ingest(_batch(rows), config, allow_unknown_items=True)
        stored = store.events()
        assert report.events_added == len(stored) <= len(rows)
        assert report.events_in - report.cleaning.removed == report.events_added
        assert "ad_click" not in set(stored["event"])
        assert not stored.duplicated(["user_id", "platform", "item_id", "timestamp", "event", "value"]).any()
        if min_value is not None:
            assert (stored["value"].isna() | (stored["value"] >= min_value)).all()
        if per_minute:
            minutes = stored.groupby(["user_id", stored["timestamp"].dt.floor("min")]).size()
            assert (minutes <= per_minute).all()
        if k_users:
            assert (stored.groupby("user_id").size() >= k_users).all()
        if k_items:
            assert (stored.groupby(["platform", "item_id"]).size() >= k_items).all()
        again = store.ingest(_batch(rows), config, allow_unknown_items=True)  # idempotent: nothing new the second time
        assert again.events_added == 0 and len(store.events()) == len(stored)
