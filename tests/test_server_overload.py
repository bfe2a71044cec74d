"""Overload over real sockets (uvicorn in this process, no model): a request whose deadline falls before the
queue's expected wait is refused at once with 503 + Retry-After; a client that goes away drops its job."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from genrec.server import ServerSettings, create_app
from genrec.server.worker import CallJob

INLINE = {"history": [{"platform": "shop", "item_id": "1", "title": "One"}], "platform": "shop", "k": 1}


class Recorder:
    """Stands in for the recommender behind the worker: records what reaches the model."""

    def __init__(self) -> None:
        self.calls: list = []

    def recommend_many(self, requests):
        self.calls.append(requests)
        raise RuntimeError("no model in this test")


@pytest.fixture
def busy_server(tmp_path, monkeypatch, serve_app):
    """A served app whose model worker is held by a job until ``release`` is set."""
    monkeypatch.delenv("GENREC_API_KEYS", raising=False)
    app = create_app(ServerSettings(db=tmp_path / "o.duckdb", warm_up=False, max_batch=2, max_queue=8))
    url = serve_app(app)
    service = app.state.service
    service.worker.recommender = recorder = Recorder()
    release = threading.Event()
    holding = threading.Event()
    service.worker.submit(CallJob(lambda: (holding.set(), release.wait(60))))
    assert holding.wait(10)
    yield url, service, recorder, release
    release.set()


def test_a_deadline_before_the_expected_wait_gets_503_at_once(busy_server):
    url, service, recorder, release = busy_server
    service.worker.stats.batch_seconds, service.worker.stats.measured = 30.0, True
    response = httpx.post(f"{url}/v1/recommend", json=INLINE, headers={"X-Request-Timeout": "2"}, timeout=30)
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 30
    assert "deadline" in response.json()["error"] and service.worker.depth == 0
    bad = httpx.post(f"{url}/v1/recommend", json=INLINE, headers={"X-Request-Timeout": "soon"}, timeout=30)
    assert bad.status_code == 422 and bad.json()["field"] == "X-Request-Timeout"


def test_a_client_that_goes_away_drops_its_job(busy_server):
    url, service, recorder, release = busy_server
    service.worker.stats.batch_seconds, service.worker.stats.measured = 0.01, True
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/recommend", json=INLINE, timeout=1.0)
    (_, future, _), = list(service.worker._queue.queue)
    deadline = time.monotonic() + 10
    while not future.cancelled() and time.monotonic() < deadline:  # the server notices the disconnect
        time.sleep(0.05)
    assert future.cancelled()
    release.set()
    while service.worker.stats.dropped_jobs < 1 and time.monotonic() < deadline + 10:
        time.sleep(0.1)
    assert service.worker.stats.dropped_jobs == 1 and recorder.calls == []


@pytest.mark.integration
def test_sigint_answers_waiting_requests_and_stops_within_10_s(tmp_path):
    """``genrec serve`` with requests waiting on a worker busy loading the model: SIGINT answers them 503 and
    the process is gone within 10 s."""
    import os
    import signal
    import subprocess
    import sys

    import yaml

    from genrec.data.importers import Mapping, file_batch
    from genrec.data.readers import read_table
    from genrec.data.schema import Platform
    from genrec.data.store import Store

    db = tmp_path / "g.duckdb"
    catalog = tmp_path / "items.csv"
    catalog.write_text("item_id,title\n1,Alien\n2,Heat\n3,Ronin\n")
    with Store(db) as store:
        store.ingest(file_batch(catalog, kind="items", table=read_table(catalog), mapping=Mapping(),
                                platform=Platform("shop")))
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump({"server": {"warm_up": False}}))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "genrec.cli", "serve", "--port", str(port), "--db", str(db),
                                "--config", str(config), "--log-level", "warning"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        answers: list[int] = []

        def ask() -> None:  # the first model job loads the model: the others wait behind it
            answers.append(httpx.post(f"{url}/v1/recommend", json=INLINE, timeout=120).status_code)

        clients = [threading.Thread(target=ask) for _ in range(3)]
        for client in clients:
            client.start()
        time.sleep(2)
        signalled = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(30)
        stopped = time.monotonic() - signalled
        for client in clients:
            client.join(30)
        assert stopped < 10, f"the server took {stopped:.1f} s to stop"
        assert answers == [503, 503, 503]
    finally:
        if process.poll() is None:
            process.kill()
