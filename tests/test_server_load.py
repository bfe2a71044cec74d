"""A bounded concurrent test over real sockets: 20 clients for 15 s (the issue suggests 30 s; halved to keep the
suite's time sane on 2 cores). Four clients ask for recommendations, sixteen post events and read them back.
Passes when no response is a 5xx, no request fails, and every acknowledged event is in the store."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest

pytestmark = pytest.mark.integration

CLIENTS = 20
RECOMMENDERS = 4
SECONDS = 15.0
MOVIES = ["1", "2", "3", "5", "6", "7", "10", "11", "16", "17", "19", "21", "25", "32", "34", "36", "39", "44"]


def test_twenty_clients_no_5xx_no_lost_events(server) -> None:
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    acknowledged: dict[str, int] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + SECONDS

    def record(response: httpx.Response) -> None:
        with lock:
            statuses[response.status_code] += 1

    def recommender_client(number: int) -> None:
        with httpx.Client(base_url=server.url, timeout=240, headers=server.read_headers) as client:
            while time.monotonic() < stop_at:
                record(client.post("/v1/recommend", json={"user_id": str(30 + number), "platform": "movies", "k": 2}))

    def event_client(number: int) -> None:
        user = f"load-user-{number}"
        sent = 0
        with httpx.Client(base_url=server.url, timeout=240, headers=server.write_headers) as client:
            while time.monotonic() < stop_at:
                events = [{"user_id": user, "platform": "movies", "item_id": MOVIES[(sent + j) % len(MOVIES)],
                           "timestamp": 1_600_000_000 + sent + j, "value": 4.0} for j in range(3)]
                response = client.post("/v1/events", json={"events": events})
                record(response)
                if response.status_code == 200:
                    assert response.json()["added"] == 3, response.text
                    sent += 3
                if sent % 9 == 0:
                    record(client.get("/healthz"))
        with lock:
            acknowledged[user] = sent

    def run(target, number: int) -> None:
        try:
            target(number)
        except Exception as exc:  # a failed request is a test failure, reported below
            with lock:
                failures.append(f"client {number}: {exc!r}")

    threads = [threading.Thread(target=run, args=(recommender_client if n < RECOMMENDERS else event_client, n))
               for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
        assert not thread.is_alive(), "a client hung"

    assert not failures, failures
    assert not [code for code in statuses if code >= 500], statuses
    assert statuses[200] == sum(statuses.values()), statuses
    assert len(acknowledged) == CLIENTS - RECOMMENDERS and all(acknowledged.values())
    for user, sent in acknowledged.items():
        stored = httpx.get(f"{server.url}/v1/users/{user}/history", params={"limit": 10_000},
                           headers=server.read_headers).json()
        assert len(stored) == sent, f"{user}: {sent} events acknowledged, {len(stored)} stored"
    worker = httpx.get(f"{server.url}/healthz").json()["worker"]
    assert worker["requests"] >= RECOMMENDERS
