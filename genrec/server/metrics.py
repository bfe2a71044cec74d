"""Prometheus metrics of the service, served at ``/metrics`` to keys with the ``admin`` scope.

Requests are counted and timed by route template (``/v1/users/{user_id}/history``, never the raw path: no user
ids, bounded label values), method and status; the model worker's queue depth, batches, jobs, requests, refusals,
drops and its moving-average batch time are read from the worker at scrape time. Each app has its own registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from genrec.server.worker import BatchWorker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class WorkerCollector(Collector):
    def __init__(self, worker: Callable[[], BatchWorker | None]) -> None:
        self.worker = worker

    def collect(self) -> Iterator:
        worker = self.worker()
        if worker is None:
            return
        stats = worker.stats
        yield GaugeMetricFamily("genrec_queue_depth", "Jobs waiting for the model worker", value=worker.depth)
        yield GaugeMetricFamily("genrec_batch_seconds", "Moving average of one model batch's duration",
                                value=stats.batch_seconds)
        for name, value, text in (("batches", stats.batches, "Model batches run"),
                                  ("jobs", stats.jobs, "Jobs answered in batches"),
                                  ("model_requests", stats.requests, "Recommender requests in batches"),
                                  ("failed_batches", stats.failed_batches, "Batches that failed and were retried"),
                                  ("refused_jobs", stats.refused_jobs, "Jobs refused at admission"),
                                  ("dropped_jobs", stats.dropped_jobs, "Jobs dropped unstarted")):
            yield CounterMetricFamily(f"genrec_worker_{name}", text, value=value)


class Metrics:
    """The registry of one app and the ASGI middleware that feeds it."""

    def __init__(self, worker: Callable[[], BatchWorker | None]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("genrec_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.seconds = Histogram("genrec_http_request_seconds", "HTTP request latency by route and method",
                                 ["route", "method"], buckets=_BUCKETS, registry=self.registry)
        self.registry.register(WorkerCollector(worker))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self, app: Callable) -> Callable:
        async def measured(scope: dict, receive: Callable, send: Callable) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def send_status(message: dict) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_status)
            finally:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                self.requests.labels(route, scope["method"], str(status)).inc()
                self.seconds.labels(route, scope["method"]).observe(time.perf_counter() - started)

        return measured
