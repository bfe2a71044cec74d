"""User data is private: reads of users, histories, reports and recommendations by user id need a key with the
read scope; hashing keeps no raw id anywhere (links included) and the server hashes the ids it receives the same
way as the CLI; the access log carries no user ids."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from genrec.data.cleaning import CleaningConfig, hash_user_id
from genrec.data.importers import ImportBatch
from genrec.data.schema import Platform
from genrec.data.store import Store
from genrec.server import ServerSettings, create_app
from genrec.server.security import RedactUserIds

from datafiles import catalog

SALT = "pepper"


def _events(rows):
    frame = pd.DataFrame(rows, columns=["user_id", "platform", "item_id", "timestamp", "event", "value"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s")
    return frame.assign(_file="t", _line=range(1, len(frame) + 1))


def test_hashed_imports_keep_no_raw_id_in_links_and_still_link_later_imports(tmp_path):
    links = pd.DataFrame({"platform": ["shop"], "platform_user_id": ["acct-1"], "user_id": ["alice@example.com"]})
    hashed = CleaningConfig(hash_user_ids=True, salt=SALT)
    with Store(tmp_path / "s.duckdb") as store:
        store.ingest(ImportBatch("first", platforms=[Platform("shop")], links=links,
                                 items=catalog("shop", ["i1", "i2"]),
                                 events=_events([("acct-1", "shop", "i1", 1_600_000_000, "buy", None)])), hashed)
        stored = store.links()
        assert stored.to_dict("records") == [{"platform": "shop", "platform_user_id": hash_user_id("acct-1", SALT),
                                              "user_id": hash_user_id("alice@example.com", SALT)}]
        assert store.users() == [hash_user_id("alice@example.com", SALT)]
        # a later import of the same account, raw, joins the same (hashed) user
        store.ingest(ImportBatch("later", events=_events([("acct-1", "shop", "i2", 1_600_000_100, "buy", None)])),
                     hashed)
        assert store.users() == [hash_user_id("alice@example.com", SALT)]
        assert len(store.history(hash_user_id("alice@example.com", SALT))) == 2
        everything = " ".join(store.events().astype(str).to_string().split()) + store.links().to_string()
        assert "acct-1" not in everything and "alice" not in everything


@pytest.fixture
def make_client(tmp_path, monkeypatch):
    monkeypatch.delenv("GENREC_API_KEYS", raising=False)
    monkeypatch.delenv("GENREC_SALT", raising=False)
    db = tmp_path / "p.duckdb"
    with Store(db) as store:
        store.ingest(ImportBatch("catalog", platforms=[Platform("shop")], items=catalog("shop", ["i1"])))

    def make(**settings) -> TestClient:
        app = create_app(ServerSettings(db=db, warm_up=False, api_keys=["rw", "reader:read", "writer:write"],
                                        **settings))
        return TestClient(app, raise_server_exceptions=False)

    return make


RAW = "new-person@example.com"
EVENT = {"user_id": RAW, "platform": "shop", "item_id": "i1", "timestamp": "2024-01-01T00:00:00Z"}


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/users", None),
    ("GET", f"/v1/users/{RAW}/history", None),
    ("GET", f"/v1/users/{RAW}/report", None),
    ("POST", "/v1/recommend", {"user_id": RAW, "platform": "shop"}),
    ("POST", "/v1/chat", {"user_id": RAW, "message": "anything"}),
])
def test_reads_of_user_data_need_the_read_scope(make_client, method, path, body):
    with make_client() as client:
        assert client.post("/v1/events", json={"events": [EVENT]}, headers={"X-API-Key": "writer"}).status_code == 200
        assert client.request(method, path, json=body).status_code == 401
        assert client.request(method, path, json=body, headers={"X-API-Key": "nope"}).status_code == 401
        assert client.request(method, path, json=body, headers={"X-API-Key": "writer"}).status_code == 403
        if method == "GET" and "report" not in path:  # the others need the models
            assert client.request(method, path, headers={"X-API-Key": "reader"}).status_code == 200
            assert client.request(method, path, headers={"X-API-Key": "rw"}).status_code == 200


def test_an_inline_history_needs_no_key(make_client):
    with make_client() as client:  # passes the key check, then fails on the empty catalog (not 401)
        response = client.post("/v1/recommend", json={"history": [{"platform": "shop", "item_id": "1"}],
                                                       "platform": "shop"})
        assert response.status_code not in (401, 403)


def test_the_server_hashes_the_user_ids_it_receives(make_client, monkeypatch):
    with pytest.raises(Exception, match="salt"):
        make_client(hash_user_ids=True)
    monkeypatch.setenv("GENREC_SALT", SALT)
    with make_client(hash_user_ids=True) as client:
        assert client.post("/v1/events", json={"events": [EVENT]}, headers={"X-API-Key": "rw"}).status_code == 200
        users = client.get("/v1/users", headers={"X-API-Key": "reader"}).json()["users"]
        assert users == [hash_user_id(RAW, SALT)]  # the CLI's --hash-user-ids with the same salt gives the same id
        history = client.get(f"/v1/users/{RAW}/history", headers={"X-API-Key": "reader"})
        assert history.status_code == 200 and [h["item_id"] for h in history.json()] == ["i1"]
    with Store(client.app.state.service.settings.db, read_only=True) as store:
        assert RAW not in store.events().to_string()


def test_the_access_log_carries_no_user_ids():
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", f"/v1/users/{RAW}/report?format=html&user_id=x", "1.1", 200),
                               None)
    assert RedactUserIds().filter(record)
    line = record.getMessage()
    assert RAW not in line and "user_id=x" not in line
    assert "/v1/users/<user>/report?format=html&user_id=<user>" in line
