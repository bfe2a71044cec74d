"""What every response carries and what happens before a body is read: keys (with scopes) checked first, security
headers on HTML, JSON and errors, and a 500 that leaves the keep-alive connection usable (a real uvicorn server on
127.0.0.1, no model needed)."""

from __future__ import annotations

import socket

import pytest
from fastapi.testclient import TestClient

from genrec.errors import GenrecError
from genrec.server import ServerSettings, create_app
from genrec.server.security import parse_keys


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.delenv("GENREC_API_KEYS", raising=False)
    return create_app(ServerSettings(db=tmp_path / "sec.duckdb", warm_up=False,
                                     api_keys=["rw-key", "reader:read", "writer:write", "boss:admin"]))


@pytest.fixture
def client(app):
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}])
@pytest.mark.parametrize("path", ["/v1/events", "/v1/platforms"])
def test_a_malformed_body_without_a_valid_key_gets_401_not_422(client, path, headers):
    response = client.post(path, content=b'{"events": [', headers={"Content-Type": "application/json", **headers})
    assert response.status_code == 401, response.text
    assert "API key" in response.json()["error"] and response.headers["www-authenticate"] == "Bearer"


def test_with_a_key_the_malformed_body_gets_422(client):
    response = client.post("/v1/events", content=b'{"events": [', headers={"Content-Type": "application/json",
                                                                           "X-API-Key": "rw-key"})
    assert response.status_code == 422


def test_scopes(client):
    body = {"events": [{"user_id": "u", "platform": "nowhere", "item_id": "i", "timestamp": 1600000000}]}
    assert client.post("/v1/events", json=body, headers={"X-API-Key": "reader"}).status_code == 403
    for key in ("rw-key", "writer", "boss"):  # past the key check: the unknown platform is the problem
        assert client.post("/v1/events", json=body, headers={"Authorization": f"Bearer {key}"}).status_code == 422
    with pytest.raises(ValueError, match="unknown API key scope 'root'"):
        parse_keys(["k:root"])
    with pytest.raises(GenrecError, match="scope"):
        ServerSettings.load(api_keys=["k:read+superuser"])


@pytest.mark.parametrize(("method", "path", "kind"), [
    ("GET", "/", "text/html"), ("GET", "/healthz", "application/json"), ("GET", "/static/app.js", "javascript"),
    ("POST", "/v1/events", "application/json"),  # 401
    ("POST", "/v1/recommend", "application/json"),  # 422
    ("GET", "/v1/platforms/nowhere", "application/json"),  # 404
])
def test_security_headers_on_html_json_and_errors(client, method, path, kind):
    response = client.request(method, path, json={} if method == "POST" else None)
    assert kind in response.headers["content-type"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "script-src 'self';" in csp


def test_a_413_carries_them_too(tmp_path, monkeypatch):
    monkeypatch.delenv("GENREC_API_KEYS", raising=False)
    app = create_app(ServerSettings(db=tmp_path / "s.duckdb", warm_up=False, max_body_bytes=2048))
    with TestClient(app) as client:
        response = client.post("/v1/recommend", content=b" " * 4096, headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and response.headers["x-frame-options"] == "DENY"


def _exchange(sock: socket.socket, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_500_keeps_the_keep_alive_connection(app, serve_app):
    @app.get("/boom")
    def boom() -> dict:
        raise RuntimeError("a bug")

    port = int(serve_app(app).rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        first = _exchange(sock, "/boom")
        assert first.startswith(b"HTTP/1.1 500") and b'"internal server error"' in first
        assert b"a bug" not in first and b"nosniff" in first
        second = _exchange(sock, "/healthz")  # same connection
        assert second.startswith(b"HTTP/1.1 200"), second


def test_metrics_need_the_admin_scope_and_carry_no_user_ids(client):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"X-API-Key": "rw-key"}).status_code == 403
    client.get("/v1/users/secret-person/history", headers={"X-API-Key": "reader"})
    client.post("/v1/events", content=b"{", headers={"Content-Type": "application/json", "X-API-Key": "rw-key"})
    response = client.get("/metrics", headers={"X-API-Key": "boss"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'genrec_http_requests_total{method="GET",route="/v1/users/{user_id}/history",status="404"} 1.0' in text
    assert 'route="/v1/events",status="422"' in text and "genrec_http_request_seconds_bucket" in text
    assert "genrec_queue_depth 0.0" in text and "genrec_worker_batches_total" in text
    assert "secret-person" not in text
