"""Model work off the event loop: one worker thread, a bounded queue, micro-batches.

Every job that needs the models (a recommendation, a chat turn, a report) is queued; the worker takes the first
waiting job, gathers more for up to ``wait_s`` (at most ``max_batch`` jobs), lets each job ``prepare`` its
recommender requests, answers all of them with one ``Recommender.recommend_many`` call (one batched generation
pass), and hands each job its results to ``finish``. A full queue raises ``Overloaded`` at once (the server
answers 503 with Retry-After) instead of letting callers wait without bound.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from genrec.recommender import RecommendationList, Recommender, Request

log = logging.getLogger("genrec.server")


class Job(Protocol):
    """A unit of model work. Both methods run on the worker thread."""

    def prepare(self) -> Sequence[Request]:
        """The recommender requests this job needs (may do other model work first, e.g. intent extraction)."""
        ...

    def finish(self, results: Sequence[RecommendationList]) -> Any:
        """The job's answer from the results of its requests, in order."""
        ...


@dataclass
class CallJob:
    """Model work that needs no recommendation requests: ``call`` runs on the worker thread."""

    call: Callable[[], Any]

    def prepare(self) -> Sequence[Request]:
        return ()

    def finish(self, results: Sequence[RecommendationList]) -> Any:
        return self.call()


class Overloaded(Exception):
    """The queue is full; ``retry_after`` is a guess (seconds) of when there will be room."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class WorkerStats:
    batches: int = 0
    jobs: int = 0
    requests: int = 0
    failed_batches: int = 0
    batch_seconds: float = 1.0  # moving average of one batch's duration

    def to_dict(self) -> dict:
        return {"batches": self.batches, "jobs": self.jobs, "requests": self.requests,
                "failed_batches": self.failed_batches, "mean_batch_jobs": self.jobs / self.batches
                if self.batches else 0.0, "batch_seconds": round(self.batch_seconds, 3)}


class BatchWorker:
    def __init__(self, recommender: Recommender, *, max_batch: int = 8, max_queue: int = 64,
                 wait_s: float = 0.005) -> None:
        self.recommender = recommender
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.stats = WorkerStats()
        self._queue: queue.Queue[tuple[Job, Future]] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="genrec-model-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        while True:  # nothing waits forever: cancel what was never started
            try:
                _, future = self._queue.get_nowait()
            except queue.Empty:
                break
            future.cancel()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def retry_after(self) -> int:
        batches_ahead = self._queue.qsize() / self.max_batch + 1
        return max(1, math.ceil(batches_ahead * self.stats.batch_seconds))

    def submit(self, job: Job) -> Future:
        """Queue ``job``; its future holds ``job.finish``'s answer or the exception it raised."""
        future: Future = Future()
        try:
            self._queue.put_nowait((job, future))
        except queue.Full:
            raise Overloaded(self.retry_after()) from None
        return future

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                continue
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            started = time.perf_counter()
            self._process(batch)
            self.stats.batch_seconds = 0.7 * self.stats.batch_seconds + 0.3 * (time.perf_counter() - started)

    def _process(self, batch: list[tuple[Job, Future]]) -> None:
        prepared: list[tuple[Job, Future, list[Request]]] = []
        for job, future in batch:
            if not future.set_running_or_notify_cancel():  # the caller gave up while it waited
                continue
            try:
                prepared.append((job, future, list(job.prepare())))
            except Exception as exc:  # the job's own error goes to its caller
                future.set_exception(exc)
        requests = [request for _, _, rs in prepared for request in rs]
        self.stats.batches += 1
        self.stats.jobs += len(prepared)
        self.stats.requests += len(requests)
        try:
            results = self.recommender.recommend_many(requests) if requests else []
        except Exception:  # one bad request fails a batch: answer each job alone
            self.stats.failed_batches += 1
            log.debug("batch of %d requests failed; answering its jobs one by one", len(requests))
            for job, future, rs in prepared:
                self._finish(job, future, rs, None)
            return
        offset = 0
        for job, future, rs in prepared:
            self._finish(job, future, rs, results[offset: offset + len(rs)])
            offset += len(rs)

    def _finish(self, job: Job, future: Future, requests: list[Request],
                results: Sequence[RecommendationList] | None) -> None:
        try:
            if results is None:
                results = self.recommender.recommend_many(requests) if requests else []
            future.set_result(job.finish(results))
        except Exception as exc:  # the job's own error goes to its caller
            future.set_exception(exc)
