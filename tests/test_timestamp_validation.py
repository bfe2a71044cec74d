"""The one timestamp validator (genrec.data.timestamps) as files, the store and the API's /v1/events reach it:
non-finite, out-of-range, boolean and word timestamps are rejected naming the row; mixed seconds/milliseconds is
an error naming rows of both; nothing stored can break a later read. Property tests cover the parser."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genrec.data import timestamps
from genrec.data.importers import FILE, ImportBatch, Mapping, events_from_records, events_from_table
from genrec.data.readers import LINE, Table, read_table
from genrec.data.schema import Platform
from genrec.data.store import Store
from genrec.errors import DataError

from datafiles import catalog

EPOCH = datetime(1970, 1, 1)


def _events(values: list, kind: str = "auto", skip: bool = False):
    frame = pd.DataFrame({"user_id": ["u"] * len(values), "item_id": [f"i{k}" for k in range(len(values))],
                          "timestamp": values, LINE: range(2, len(values) + 2)})
    return events_from_table(Table(Path("t.csv"), frame), Mapping(constants={"platform": "p"}),
                             timestamp_kind=kind, skip_bad_rows=skip)


BAD = ["1e20", "nan", "inf", "-inf", "9223372036854775807", "-5", "epoch", "infinity", "-infinity", "99999-01-01",
       "2201-01-01", "1969-12-31", "True", "true", "yesterday"]


@pytest.mark.parametrize("value", BAD)
def test_bad_timestamps_are_rejected_naming_the_line(value):
    with pytest.raises(DataError) as exc:
        _events(["1600000000", value])
    assert (exc.value.line, exc.value.field) == (3, "timestamp"), str(exc.value)
    assert "1970" in str(exc.value) and "2200" in str(exc.value)
    events, skipped = _events(["1600000000", value], skip=True)
    assert skipped == 1 and events.num_rows == 1


@pytest.mark.parametrize("kind", ["seconds", "milliseconds", "iso", "sequence"])
@pytest.mark.parametrize("value", ["1e20", "nan", "inf", "9223372036854775807", "epoch", "99999-01-01", "True"])
def test_declared_kinds_reject_them_too(kind, value):
    with pytest.raises(DataError) as exc:
        _events([value], kind)
    assert (exc.value.line, exc.value.field) == (2, "timestamp")


def test_the_edges_of_the_range():
    events, _ = _events(["0", "7289654399"])
    assert [t.as_py() for t in events.column("timestamp")] == [EPOCH, datetime(2200, 12, 31, 23, 59, 59)]
    events, _ = _events(["1970-01-01T00:00:00Z", "2200-12-31T23:59:59+00:00"])
    assert [t.as_py() for t in events.column("timestamp")] == [EPOCH, datetime(2200, 12, 31, 23, 59, 59)]


def test_mixed_seconds_and_milliseconds_is_an_error_naming_rows_of_both():
    values = ["1600000000000", "1600000001", "1600000002000", "1600000003"]
    with pytest.raises(DataError) as exc:
        _events(values)
    message = str(exc.value)
    assert "lines 3, 5 are epoch seconds" in message and "lines 2, 4 are epoch milliseconds" in message
    assert exc.value.field == "timestamp" and "--timestamp-kind" in message
    with pytest.raises(DataError):  # a real mix is never "skipped" into a guess
        _events(values, skip=True)
    declared, skipped = _events(values, "milliseconds", skip=True)  # declared: the seconds rows are simply early
    assert skipped == 0 and declared.column("timestamp")[1].as_py() == datetime(1970, 1, 19, 12, 26, 40, 1000)


def test_a_boolean_column_is_rejected(tmp_path):
    f = tmp_path / "e.parquet"
    pq.write_table(pa.table({"user_id": ["u1"], "item_id": ["i"], "platform": ["p"], "timestamp": [True]}), f)
    with pytest.raises(DataError, match="booleans"):
        events_from_table(read_table(f))


def test_native_timestamps_outside_the_range_are_rejected(tmp_path):
    f = tmp_path / "e.parquet"
    pq.write_table(pa.table({"user_id": ["u1", "u2"], "item_id": ["i", "j"], "platform": ["p", "p"],
                             "timestamp": pa.array([datetime(2020, 1, 1), datetime(9999, 1, 1)])}), f)
    with pytest.raises(DataError) as exc:
        events_from_table(read_table(f))
    assert exc.value.line == 2


def test_the_store_refuses_a_timestamp_a_later_read_cannot_handle(tmp_path):
    """Defence in depth: a batch built without the importers (e.g. a data-set loader) is checked again."""
    with Store(tmp_path / "s.duckdb") as store:
        store.add_platform(Platform("p"))
        events = pa.table({"user_id": ["u", "u"], "platform": ["p", "p"], "item_id": ["a", "b"],
                           "timestamp": pa.array([datetime(2020, 1, 1), datetime(9999, 12, 31)], pa.timestamp("us")),
                           "event": ["e", "e"], "value": pa.array([None, None], pa.float64()),
                           LINE: [1, 2], FILE: ["loader", "loader"]})
        with pytest.raises(DataError) as exc:
            store.ingest(ImportBatch(source="loader", events=events))
        assert exc.value.line == 2 and exc.value.field == "timestamp"
        assert store.users() == []


def test_api_records_go_through_the_same_validator():
    records = [{"user_id": "u", "platform": "p", "item_id": "i", "timestamp": 1600000000},
               {"user_id": "u", "platform": "p", "item_id": "j", "timestamp": 1600000000000}]
    with pytest.raises(DataError) as exc:
        events_from_records(records)
    assert "mix units" in str(exc.value) and exc.value.line == 0


def test_unknown_kind_is_a_data_error():
    with pytest.raises(DataError, match="unknown timestamp kind 'weird'") as exc:
        timestamps.check_kind("weird")
    assert "milliseconds" in str(exc.value)


# --- the API: /v1/events answers 422 naming the event, and the user's reads keep working ----------------------


@pytest.fixture
def client(tmp_path, monkeypatch):
    from genrec.server import ServerSettings, create_app

    monkeypatch.delenv("GENREC_API_KEYS", raising=False)
    db = tmp_path / "api.duckdb"
    with Store(db) as store:  # the catalog holds the items _post names
        store.ingest(ImportBatch("catalog", platforms=[Platform("shop")], items=catalog("shop", ["i0", "i1", "i2"])))
    app = create_app(ServerSettings(db=db, warm_up=False, api_keys=["k"]))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _post(client, *stamps, user="ts-user"):
    events = [{"user_id": user, "platform": "shop", "item_id": f"i{n}", "timestamp": stamp}
              for n, stamp in enumerate(stamps)]
    body = json.dumps({"events": events})  # NaN and Infinity as Python's json writes them
    return client.post("/v1/events", content=body, headers={"X-API-Key": "k", "Content-Type": "application/json"})


@pytest.mark.parametrize("stamp", [1e20, float("nan"), float("inf"), 9223372036854775807, True, False, "epoch",
                                   "99999-01-01", "infinity", -1, "1e20", "nan"])
def test_api_rejects_bad_timestamps_with_422_naming_the_event(client, stamp):
    response = _post(client, 1600000000, stamp)
    assert response.status_code == 422, response.text
    assert response.json()["field"].startswith("events.1.timestamp") or \
        response.json()["field"] == "events[1].timestamp", response.json()
    assert client.get("/v1/users/ts-user/history", headers={"X-API-Key": "k"}).status_code == 404  # nothing was stored


def test_api_rejects_a_batch_mixing_units_and_reads_keep_working(client):
    response = _post(client, 1600000000, 1600000000000, 1600000002)
    assert response.status_code == 422 and "mix units" in response.json()["error"]
    assert "events[0].timestamp" == response.json()["field"]
    assert _post(client, "2021-05-01T10:00:00+02:00", 1620000000).status_code == 422  # ISO and numbers mixed
    assert _post(client, "2021-05-01T10:00:00+02:00", "2021-05-03").status_code == 200
    history = client.get("/v1/users/ts-user/history", headers={"X-API-Key": "k"})
    assert history.status_code == 200
    assert [h["timestamp"] for h in history.json()] == ["2021-05-01T08:00:00", "2021-05-03T00:00:00"]


# --- properties ------------------------------------------------------------------------------------------------

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**70, 2**70),
                          st.text(max_size=30), st.booleans(), st.none()).map(lambda v: None if v is None else str(v)),
                min_size=1, max_size=8),
       st.sampled_from(timestamps.KINDS))
def test_any_value_is_stored_in_range_or_rejected_as_data_error(values, kind):
    try:
        events, _ = _events(values, kind, skip=True)
    except DataError:
        return
    for stamp in events.column("timestamp").to_pylist():
        assert timestamps.EARLIEST <= stamp < timestamps.LATEST


@PROPERTY
@given(st.lists(st.integers(0, 7289654399), min_size=1, max_size=8))
def test_epoch_seconds_round_trip(seconds):
    events, skipped = _events([str(s) for s in seconds], "seconds")
    assert skipped == 0
    assert events.column("timestamp").to_pylist() == [EPOCH + timedelta(seconds=s) for s in seconds]


@PROPERTY
@given(st.lists(st.datetimes(min_value=datetime(1973, 3, 4), max_value=datetime(2200, 12, 31)), min_size=1,
                max_size=8))
def test_iso_and_auto_milliseconds_agree(moments):
    moments = [m.replace(microsecond=m.microsecond // 1000 * 1000) for m in moments]
    iso, _ = _events([m.isoformat() + "Z" for m in moments])
    millis, _ = _events([str((m - EPOCH) // timedelta(milliseconds=1)) for m in moments])
    assert iso.column("timestamp").to_pylist() == millis.column("timestamp").to_pylist() == moments
