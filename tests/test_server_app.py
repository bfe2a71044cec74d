"""The app's settings-driven behaviour in process, without loading any model: CORS off by default, writes refused
without configured keys, body limits for declared and chunked bodies."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from genrec.server import ServerSettings, create_app

ORIGIN = "http://localhost:3000"


@pytest.fixture
def client_for(tmp_path, monkeypatch):
    monkeypatch.delenv("GENREC_API_KEYS", raising=False)

    def make(**settings) -> TestClient:
        app = create_app(ServerSettings(db=tmp_path / "app.duckdb", warm_up=False, **settings))
        return TestClient(app)

    return make


def _preflight(client: TestClient):
    return client.options("/v1/recommend", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})


def test_cors_is_off_unless_configured(client_for) -> None:
    with client_for() as client:
        assert client.get("/healthz").json()["status"] == "ok"
        assert "access-control-allow-origin" not in _preflight(client).headers
        plain = client.get("/healthz", headers={"Origin": ORIGIN})
        assert "access-control-allow-origin" not in plain.headers
    with client_for(cors_origins=[ORIGIN]) as client:
        assert _preflight(client).headers["access-control-allow-origin"] == ORIGIN
        other = client.options("/v1/recommend", headers={"Origin": "http://evil.example",
                                                         "Access-Control-Request-Method": "POST"})
        assert other.headers.get("access-control-allow-origin") != "http://evil.example"


def test_writes_are_refused_when_no_key_is_configured(client_for) -> None:
    with client_for() as client:
        response = client.post("/v1/events", json={"events": [{"user_id": "u", "platform": "p", "item_id": "i",
                                                               "timestamp": 1}]}, headers={"X-API-Key": "anything"})
        assert response.status_code == 403 and "GENREC_API_KEYS" in response.json()["error"]


def test_bodies_over_the_limit_get_413_declared_or_chunked(client_for) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 1000

    with client_for(max_body_bytes=16_000, api_keys=["k"]) as client:
        declared = client.post("/v1/recommend", content=b" " * 20_000, headers={"Content-Type": "application/json"})
        assert declared.status_code == 413 and "16000 bytes" in declared.json()["error"]
        chunked = client.post("/v1/events", content=chunks(), headers={"Content-Type": "application/json",
                                                                        "X-API-Key": "k"})
        assert chunked.status_code == 413
        small = client.post("/v1/recommend", content=b'{"platform": "movies"}',
                            headers={"Content-Type": "application/json"})
        assert small.status_code == 422  # under the limit: reaches validation


def test_the_scoring_settings_reach_the_recommender(client_for) -> None:
    with client_for(decoding="scored", calibration=0.5) as client:
        config = client.app.state.service.recommender.config
        assert config.decoding == "scored" and config.calibration == 0.5
