"""Model work off the event loop: one worker thread, a bounded queue, micro-batches.

Every job that needs the models (a recommendation, a chat turn, a report) is queued; the worker takes the first
waiting job, gathers more for up to ``wait_s`` (at most ``max_batch`` jobs), lets each job ``prepare`` its
requests, answers all of them in batches, and hands each job its results to ``finish``. Recommender requests
(``genrec.recommender.Request``) are answered with one ``Recommender.recommend_many`` call (one batched generation
pass); any other request is ``Batched``: those of one kind and ``key`` are answered with one ``answer_many`` call
(a pipeline's rationales for every client's list in one generation: ``genrec.pipeline.serving.Explanation``).
A full queue raises ``Overloaded`` at once (the server answers 503 with Retry-After) instead of letting callers
wait without bound, and so does a job whose deadline falls before the queue's expected wait is over (admission
control). A job whose caller gave up (its future cancelled) or whose deadline has passed is dropped unstarted.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from genrec.recommender import Recommender, Request

log = logging.getLogger("genrec.server")


class Batched(Protocol):
    """A request answered together with the others of its class and ``key`` in a batch."""

    def key(self) -> Hashable: ...

    @staticmethod
    def answer_many(requests: Sequence[Any]) -> list[Any]:
        """The results of ``requests`` (all of one class and key), in order."""
        ...


class Job(Protocol):
    """A unit of model work. Both methods run on the worker thread."""

    def prepare(self) -> Sequence[Request | Batched]:
        """The requests this job needs (may do other model work first, e.g. intent extraction)."""
        ...

    def finish(self, results: Sequence[Any]) -> Any:
        """The job's answer from the results of its requests, in order."""
        ...


@dataclass
class CallJob:
    """Model work that needs no recommendation requests: ``call`` runs on the worker thread."""

    call: Callable[[], Any]

    def prepare(self) -> Sequence[Request]:
        return ()

    def finish(self, results: Sequence[Any]) -> Any:
        return self.call()


class Overloaded(Exception):
    """No room (full queue, or an expected wait past the job's deadline, or shutting down); ``retry_after`` is a
    guess (seconds) of when there will be room."""

    def __init__(self, retry_after: int, reason: str = "the server is busy") -> None:
        super().__init__(f"{reason}; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class WorkerStats:
    batches: int = 0
    jobs: int = 0
    requests: int = 0
    failed_batches: int = 0
    dropped_jobs: int = 0  # abandoned by their callers or past their deadline before they started
    refused_jobs: int = 0  # refused at submission: full queue or expected wait past the deadline
    batch_seconds: float = 1.0  # moving average of one batch's duration (a guess until ``measured``)
    measured: bool = False

    def to_dict(self) -> dict:
        return {"batches": self.batches, "jobs": self.jobs, "requests": self.requests,
                "failed_batches": self.failed_batches, "dropped_jobs": self.dropped_jobs,
                "refused_jobs": self.refused_jobs, "mean_batch_jobs": self.jobs / self.batches
                if self.batches else 0.0, "batch_seconds": round(self.batch_seconds, 3)}


class BatchWorker:
    def __init__(self, recommender: Recommender, *, max_batch: int = 8, max_queue: int = 64,
                 wait_s: float = 0.005) -> None:
        self.recommender = recommender
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.stats = WorkerStats()
        self._queue: queue.Queue[tuple[Job, Future, float | None]] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._batch_started: float | None = None  # time.monotonic() when the batch in progress began
        self._thread = threading.Thread(target=self._run, name="genrec-model-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the batch in progress (waiting at most ``timeout`` s); queued jobs fail with ``Overloaded``."""
        self._stop.set()
        while True:  # nothing waits forever: what was never started is refused
            try:
                _, future, _ = self._queue.get_nowait()
            except queue.Empty:
                break
            if future.set_running_or_notify_cancel():
                future.set_exception(Overloaded(5, "the server is shutting down"))
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the worker thread is still alive (it may be inside a batch after ``stop``)."""
        return self._thread.is_alive()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def expected_wait(self) -> float:
        """Seconds until a job queued now is answered: the rest of the batch in progress, the batches queued ahead
        of it and its own. A batch running longer than the average is expected to take as long again (and so are
        the batches after it), so a slowdown is seen before it is averaged in."""
        per_batch = self.stats.batch_seconds
        started = self._batch_started
        remaining = 0.0
        if started is not None:
            elapsed = time.monotonic() - started
            remaining = per_batch - elapsed if elapsed < per_batch else elapsed
            per_batch = max(per_batch, elapsed)
        return remaining + (self._queue.qsize() / self.max_batch + 1) * per_batch

    def retry_after(self) -> int:
        return max(1, math.ceil(self.expected_wait()))

    def submit(self, job: Job, deadline: float | None = None) -> Future:
        """Queue ``job``; its future holds ``job.finish``'s answer or the exception it raised. ``deadline``
        (``time.monotonic()`` seconds): refused at once if the expected wait ends later, dropped if still queued
        then."""
        if self._stop.is_set():
            raise Overloaded(5, "the server is shutting down")
        if deadline is not None and not self.stats.measured and (self._batch_started is not None or
                                                                 self._queue.qsize() >= self.max_batch):
            # no batch measured yet: promise only the first batch, whose time then calibrates the estimate
            self.stats.refused_jobs += 1
            raise Overloaded(self.retry_after(), "the server is busy measuring its first batch")
        if deadline is not None and time.monotonic() + self.expected_wait() > deadline:
            self.stats.refused_jobs += 1
            raise Overloaded(self.retry_after(), f"the server is busy: the expected wait of "
                                                 f"{self.expected_wait():.0f} s exceeds the request's deadline")
        future: Future = Future()
        try:
            self._queue.put_nowait((job, future, deadline))
        except queue.Full:
            self.stats.refused_jobs += 1
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
            self._batch_started = time.monotonic()
            try:
                ran = self._process(batch)
            finally:
                self._batch_started = None
            if ran:  # batches of jobs only: a one-off call (the warm-up) would skew the estimate
                took = time.perf_counter() - started
                self.stats.batch_seconds = 0.7 * self.stats.batch_seconds + 0.3 * took if self.stats.measured \
                    else took  # the first measurement replaces the initial guess
                self.stats.measured = True

    def _process(self, batch: list[tuple[Job, Future, float | None]]) -> int:
        """Answer a batch; returns how many of its jobs are not ``CallJob``s (one-off calls such as the warm-up).
        A job without requests (a pipeline's ranking without rationales) counts: its batch time is a batch's."""
        prepared: list[tuple[Job, Future, list]] = []
        now = time.monotonic()
        for job, future, deadline in batch:
            if deadline is not None and now > deadline:
                future.cancel()  # nobody waits for it any more
            if not future.set_running_or_notify_cancel():  # the caller gave up while it waited
                self.stats.dropped_jobs += 1
                continue
            try:
                prepared.append((job, future, list(job.prepare())))
            except Exception as exc:  # the job's own error goes to its caller
                future.set_exception(exc)
        requests = [request for _, _, rs in prepared for request in rs]
        jobs = sum(not isinstance(job, CallJob) for job, _, _ in prepared)
        self.stats.batches += 1
        self.stats.jobs += len(prepared)
        self.stats.requests += len(requests)
        try:
            results = self._answer(requests)
        except Exception:  # one bad request fails a batch: answer each job alone
            self.stats.failed_batches += 1
            log.debug("batch of %d requests failed; answering its jobs one by one", len(requests))
            for job, future, rs in prepared:
                self._finish(job, future, rs, None)
            return jobs
        offset = 0
        for job, future, rs in prepared:
            self._finish(job, future, rs, results[offset: offset + len(rs)])
            offset += len(rs)
        return jobs

    def _answer(self, requests: list) -> list:
        """The results of ``requests`` in order: the recommender's in one call, the others in one call per class
        and key."""
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            group = (Request,) if isinstance(request, Request) else (type(request), request.key())
            groups.setdefault(group, []).append(i)
        results: list[Any] = [None] * len(requests)
        for group, positions in groups.items():
            members = [requests[i] for i in positions]
            answers = self.recommender.recommend_many(members) if group[0] is Request else \
                group[0].answer_many(members)
            for i, answer in zip(positions, answers, strict=True):
                results[i] = answer
        return results

    def _finish(self, job: Job, future: Future, requests: list, results: Sequence[Any] | None) -> None:
        try:
            if results is None:
                results = self._answer(requests)
            future.set_result(job.finish(results))
        except Exception as exc:  # the job's own error goes to its caller
            future.set_exception(exc)
