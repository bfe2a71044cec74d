"""Load benchmark: many clients against ``genrec serve`` (real models, both real data sets) on 127.0.0.1.

N clients (default 50) for S seconds (default 60) mix recommend (by user id), chat, event batches and reports.
Every request carries a deadline (``X-Request-Timeout``, default 10 s); a client answered 503 waits
``Retry-After`` (at most 2 s) before its next request, as a well-behaved client does. Measured:
- status counts per endpoint; any 5xx other than 503 is a failure;
- how fast the refusals are (p50/p95 seconds of the 503s; target p95 < 1 s: overload is shed at once);
- p50/p95 of the successful requests per endpoint (recommend above all);
- acknowledged events versus events stored (read back at the end; target: none lost);
- the worker's counters (batches, jobs per batch, jobs refused at admission, jobs dropped unstarted).

The machine's load average is recorded before and after: on a shared machine the numbers are taken under load.
Bounded: the clients stop at the deadline, the run ends within S + 2 x deadline seconds after the server is ready.

Usage: ``python benchmarks/bench_load.py [--clients 50] [--seconds 60] [--deadline 10]
[--out benchmarks/results/load.json]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from bench_server import API_KEY, machine, percentile, save_result, server

from genrec.data.loading import import_dataset
from genrec.data.store import Store

TARGET_REFUSAL_P95_S = 1.0
MAX_BACKOFF_S = 2.0
MOVIES = ["1", "2", "3", "6", "10", "32", "47", "50", "110", "150"]


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: dict[str, Counter[int]] = defaultdict(Counter)
        self.seconds: dict[tuple[str, int], list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.acknowledged: dict[str, int] = {}

    def add(self, endpoint: str, status: int, seconds: float) -> None:
        with self.lock:
            self.statuses[endpoint][status] += 1
            self.seconds[(endpoint, status)].append(seconds)


def client_loop(url: str, number: int, stop_at: float, deadline_s: float, tally: Tally,
                amazon_users: list[str]) -> None:
    kind = ("recommend", "chat", "events", "report")[number % 4]
    user = f"load-{number}"
    sent = 0
    with httpx.Client(base_url=url, timeout=deadline_s + 30,
                      headers={"X-API-Key": API_KEY, "X-Request-Timeout": str(deadline_s)}) as client:
        step = 0
        while time.monotonic() < stop_at:
            step += 1
            if kind == "recommend":
                request = ("POST", "/v1/recommend", {"json": {"user_id": str(1 + (number * 37 + step) % 600),
                                                              "platform": "movies", "k": 5}})
            elif kind == "chat":
                request = ("POST", "/v1/chat", {"json": {"user_id": amazon_users[number % len(amazon_users)],
                                                         "message": "something for sketching", "k": 3}})
            elif kind == "report":
                request = ("GET", f"/v1/users/{1 + number % 600}/report", {"params": {"format": "json"}})
            else:
                events = [{"user_id": user, "platform": "movies", "item_id": MOVIES[(sent + j) % len(MOVIES)],
                           "timestamp": 1_600_000_000 + sent + j} for j in range(5)]
                request = ("POST", "/v1/events", {"json": {"events": events}})
            method, path, kwargs = request
            started = time.perf_counter()
            try:
                response = client.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                with tally.lock:
                    tally.errors.append(f"{kind}: {exc!r}")
                continue
            elapsed = time.perf_counter() - started
            tally.add(kind, response.status_code, elapsed)
            if kind == "events" and response.status_code == 200:
                sent += 5
            if response.status_code == 503:
                retry = float(response.headers.get("retry-after", "1"))
                time.sleep(min(retry, MAX_BACKOFF_S, max(0.0, stop_at - time.monotonic())))
    if kind == "events":
        with tally.lock:
            tally.acknowledged[user] = sent


def summary(tally: Tally) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for endpoint, statuses in sorted(tally.statuses.items()):
        ok = [s for (e, code), values in tally.seconds.items() if e == endpoint and 200 <= code < 300 for s in values]
        refused = tally.seconds.get((endpoint, 503), [])
        out[endpoint] = {"statuses": {str(k): v for k, v in sorted(statuses.items())},
                         "ok_p50_s": round(statistics.median(ok), 3) if ok else None,
                         "ok_p95_s": round(percentile(ok, 0.95), 3) if ok else None,
                         "refused_p50_s": round(statistics.median(refused), 3) if refused else None,
                         "refused_p95_s": round(percentile(refused, 0.95), 3) if refused else None}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--deadline", type=float, default=10.0, help="each request's X-Request-Timeout")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "load.json")
    args = parser.parse_args()
    if not 1 <= args.clients <= 200 or not 0 < args.seconds <= 600:
        parser.error("at most 200 clients and 600 seconds")

    result: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
                              "clients": args.clients, "seconds": args.seconds, "deadline_s": args.deadline,
                              "note": "shared machine: numbers taken under the load recorded in machine"}
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="genrec-bench-load-") as folder:
        root = Path(folder)
        db = root / "load.duckdb"
        with Store(db) as store:
            import_dataset(store, "movielens-latest-small")
            import_dataset(store, "amazon-arts-office")
            amazon_users = store.users("amazon-office")[:50]
        with server(db, root, max_batch=8, max_queue=64, request_timeout_s=120) as url:
            before = httpx.get(f"{url}/healthz").json()["worker"]
            stop_at = time.monotonic() + args.seconds
            threads = [threading.Thread(target=client_loop, args=(url, n, stop_at, args.deadline, tally, amazon_users))
                       for n in range(args.clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            result["wall_s"] = round(time.perf_counter() - started, 1)
            after = httpx.get(f"{url}/healthz").json()["worker"]
            stored = {}
            with httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": API_KEY}) as client:
                for user in tally.acknowledged:
                    response = client.get(f"/v1/users/{user}/history", params={"limit": 10_000})
                    stored[user] = len(response.json()) if response.status_code == 200 else 0
    result["endpoints"] = summary(tally)
    batches = after["batches"] - before["batches"]
    result["worker"] = {"batches": batches,
                        "mean_jobs_per_batch": round((after["jobs"] - before["jobs"]) / max(1, batches), 2),
                        "refused_at_admission": after.get("refused_jobs", 0) - before.get("refused_jobs", 0),
                        "dropped_unstarted": after.get("dropped_jobs", 0) - before.get("dropped_jobs", 0)}
    acknowledged = sum(tally.acknowledged.values())
    result["events"] = {"acknowledged": acknowledged, "stored": sum(stored.values()),
                        "lost": sum(max(0, tally.acknowledged[u] - stored.get(u, 0)) for u in tally.acknowledged)}
    all_refusals = [s for (_, code), values in tally.seconds.items() if code == 503 for s in values]
    server_errors = sum(n for statuses in tally.statuses.values() for code, n in statuses.items()
                        if code >= 500 and code != 503)
    other = sum(n for statuses in tally.statuses.values() for code, n in statuses.items()
                if not 200 <= code < 300 and code != 503)
    result["client_errors"] = tally.errors[:20]
    result["targets_met"] = {
        "no_5xx_but_503": server_errors == 0 and not tally.errors,
        "every_non_2xx_is_503": other == 0,
        "refusals_p95_under_1s": (percentile(all_refusals, 0.95) < TARGET_REFUSAL_P95_S) if all_refusals else True,
        "no_event_lost": result["events"]["lost"] == 0,
    }
    result["refusals_p95_s"] = round(percentile(all_refusals, 0.95), 3) if all_refusals else None
    save_result(result, args.out)


if __name__ == "__main__":
    main()
