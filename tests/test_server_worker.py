"""The server's model worker (micro-batching, overload, error isolation) and settings, without models."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

from genrec.errors import GenrecError, NotFoundError
from genrec.recommender import Request
from genrec.server.settings import ServerSettings
from genrec.server.worker import BatchWorker, CallJob, Overloaded


class FakeRecommender:
    """``recommend_many`` answers each request with its user id; blocks while ``gate`` is closed; fails on
    ``user_id == "bad"`` like the real one (the whole call raises)."""

    def __init__(self) -> None:
        self.calls: list[list[str | None]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set once a call is in progress

    def recommend_many(self, requests):
        self.entered.set()
        self.gate.wait(10)
        self.calls.append([r.user_id for r in requests])
        if any(r.user_id == "bad" for r in requests):
            raise NotFoundError("unknown user 'bad'")
        return [f"answer for {r.user_id}" for r in requests]


class EchoJob:
    def __init__(self, *users: str) -> None:
        self.requests = [Request("movies", user_id=u) for u in users]

    def prepare(self):
        return self.requests

    def finish(self, results):
        return list(results)


@pytest.fixture
def fake():
    return FakeRecommender()


@pytest.fixture
def worker(fake):
    worker = BatchWorker(fake, max_batch=4, max_queue=6, wait_s=0.05)
    worker.start()
    yield worker
    fake.gate.set()
    worker.stop()


def test_waiting_jobs_share_one_batched_call(worker, fake) -> None:
    fake.gate.clear()
    blocker = worker.submit(EchoJob("first"))
    assert fake.entered.wait(5)  # the worker is busy with the first job
    futures = [worker.submit(EchoJob(f"u{i}")) for i in range(4)] + [worker.submit(EchoJob("x", "y"))]
    fake.gate.set()
    assert blocker.result(5) == ["answer for first"]
    assert [f.result(5) for f in futures] == [["answer for u0"], ["answer for u1"], ["answer for u2"],
                                              ["answer for u3"], ["answer for x", "answer for y"]]
    assert fake.calls[1] == ["u0", "u1", "u2", "u3"]  # max_batch jobs in one call
    assert fake.calls[2] == ["x", "y"]
    assert worker.stats.batches == 3 and worker.stats.jobs == 6


class Note:
    """A ``Batched`` request: notes of one topic are answered with one call, logged in ``calls``."""

    calls: list[list[str]] = []

    def __init__(self, topic: str, text: str) -> None:
        self.topic, self.text = topic, text

    def key(self) -> str:
        return self.topic

    @staticmethod
    def answer_many(requests):
        Note.calls.append([note.text for note in requests])
        if any(note.text == "bad" for note in requests):
            raise GenrecError("a bad note")
        return [note.text.upper() for note in requests]


class MixedJob(EchoJob):
    def __init__(self, *requests) -> None:
        self.requests = list(requests)


def test_batched_requests_of_one_key_share_one_call_beside_the_recommenders(worker, fake) -> None:
    Note.calls.clear()
    fake.gate.clear()
    blocker = worker.submit(EchoJob("first"))
    assert fake.entered.wait(5)
    futures = [worker.submit(MixedJob(Note("a", "x"), Request("movies", user_id="u0"), Note("b", "y"))),
               worker.submit(MixedJob(Note("a", "z"))),
               worker.submit(MixedJob(Note("a", "bad")))]
    fake.gate.set()
    blocker.result(5)
    assert futures[0].result(5) == ["X", "answer for u0", "Y"]  # each job's results in its own order
    assert futures[1].result(5) == ["Z"]
    with pytest.raises(GenrecError, match="a bad note"):  # the failing group fails only its own job
        futures[2].result(5)
    assert Note.calls == [["x", "z", "bad"], ["x"], ["y"], ["z"], ["bad"]]  # the batch's call, then job by job
    assert worker.stats.failed_batches == 1
    Note.calls.clear()
    fake.gate.clear()
    blocker = worker.submit(EchoJob("again"))
    assert fake.entered.wait(5)
    futures = [worker.submit(MixedJob(Note("a", "x"), Note("b", "y"))), worker.submit(MixedJob(Note("a", "z")))]
    fake.gate.set()
    blocker.result(5)
    assert [f.result(5) for f in futures] == [["X", "Y"], ["Z"]]
    assert Note.calls == [["x", "z"], ["y"]]  # one call per key for the whole batch


def test_a_bad_request_fails_only_its_own_job(worker, fake) -> None:
    fake.gate.clear()
    blocker = worker.submit(EchoJob("first"))
    assert fake.entered.wait(5)
    good, bad = worker.submit(EchoJob("good")), worker.submit(EchoJob("bad"))
    fake.gate.set()
    blocker.result(5)
    assert good.result(5) == ["answer for good"]
    with pytest.raises(NotFoundError):
        bad.result(5)
    assert worker.stats.failed_batches == 1


def test_errors_in_prepare_and_finish_reach_the_caller(worker) -> None:
    def boom():
        raise GenrecError("no")

    assert worker.submit(CallJob(lambda: 42)).result(5) == 42
    with pytest.raises(GenrecError):
        worker.submit(CallJob(boom)).result(5)

    class BadPrepare(EchoJob):
        def prepare(self):
            raise GenrecError("cannot plan")

    with pytest.raises(GenrecError, match="cannot plan"):
        worker.submit(BadPrepare()).result(5)


def test_a_full_queue_is_refused_at_once_with_retry_after(worker, fake) -> None:
    fake.gate.clear()
    worker.submit(EchoJob("first"))
    assert fake.entered.wait(5)
    queued = [worker.submit(EchoJob(f"q{i}")) for i in range(6)]
    with pytest.raises(Overloaded) as refused:
        worker.submit(EchoJob("one too many"))
    assert refused.value.retry_after >= 1
    queued[0].cancel()  # a caller that gave up: the worker skips the job
    fake.gate.set()
    assert [f.result(5) for f in queued[1:]] == [[f"answer for q{i}"] for i in range(1, 6)]
    with pytest.raises(CancelledError):
        queued[0].result(0)


def test_settings_merge_file_environment_and_overrides(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("server:\n  api_keys: [from-file]\n  max_batch: 4\n  cors_origins: ['http://localhost:3000']\n")
    monkeypatch.setenv("GENREC_API_KEYS", " from-env-1, from-env-2 ,")
    settings = ServerSettings.load(config, max_batch=2, db=None)
    assert settings.api_keys == ["from-file", "from-env-1", "from-env-2"]
    assert settings.max_batch == 2 and settings.cors_origins == ["http://localhost:3000"]
    monkeypatch.delenv("GENREC_API_KEYS")
    assert ServerSettings.load().api_keys == [] and ServerSettings.load().cors_origins == []  # secure defaults
    config.write_text("max_batch: 0\nmystery: 1\n")
    with pytest.raises(GenrecError, match="max_batch") as error:
        ServerSettings.load(config)
    assert "mystery" in str(error.value)
    config.write_text("decoding: scored\ncalibration: 0.5\n")
    assert ServerSettings.load(config).calibration == 0.5 and ServerSettings.load().calibration is None
    config.write_text("calibration: 1.5\n")
    with pytest.raises(GenrecError, match="calibration"):
        ServerSettings.load(config)
    config.write_text("adapter_scale: 0.5\n")
    with pytest.raises(GenrecError, match="adapter_scale needs an adapter"):
        ServerSettings.load(config)
    assert ServerSettings.load(config, adapter="runs/adapter").adapter_scale == 0.5


def test_admission_refuses_at_once_when_the_expected_wait_exceeds_the_deadline(worker, fake) -> None:
    worker.stats.batch_seconds, worker.stats.measured = 5.0, True  # one batch ahead of a new job: about 5 s
    with pytest.raises(Overloaded, match="exceeds the request's deadline") as refused:
        worker.submit(EchoJob("hurried"), deadline=time.monotonic() + 2)
    assert refused.value.retry_after >= 5 and worker.stats.refused_jobs == 1
    assert worker.submit(EchoJob("patient"), deadline=time.monotonic() + 30).result(5) == ["answer for patient"]
    assert fake.calls == [["patient"]]


def test_jobs_past_their_deadline_are_dropped_unstarted(worker, fake) -> None:
    fake.gate.clear()
    worker.submit(EchoJob("first"))
    assert fake.entered.wait(5)
    worker.stats.batch_seconds, worker.stats.measured = 0.01, True  # admitted: looks short, but the batch hangs
    late = worker.submit(EchoJob("late"), deadline=time.monotonic() + 0.2)
    abandoned = worker.submit(EchoJob("abandoned"))
    kept = worker.submit(EchoJob("kept"), deadline=time.monotonic() + 60)
    abandoned.cancel()  # its caller went away
    time.sleep(0.4)
    fake.gate.set()
    assert kept.result(5) == ["answer for kept"]
    assert late.cancelled() and worker.stats.dropped_jobs == 2
    assert fake.calls == [["first"], ["kept"]]


def test_stop_refuses_queued_and_new_jobs(fake) -> None:
    worker = BatchWorker(fake, max_batch=1, max_queue=4, wait_s=0)
    worker.start()
    fake.gate.clear()
    worker.submit(EchoJob("running"))
    assert fake.entered.wait(5)
    queued = worker.submit(EchoJob("queued"))
    stopper = threading.Thread(target=worker.stop, kwargs={"timeout": 5})
    stopper.start()
    with pytest.raises(Overloaded, match="shutting down"):
        queued.result(5)
    fake.gate.set()
    stopper.join(10)
    assert not stopper.is_alive()
    with pytest.raises(Overloaded, match="shutting down"):
        worker.submit(EchoJob("too late"))


def test_a_batch_running_long_raises_the_expected_wait_at_once(worker, fake) -> None:
    worker.stats.batch_seconds, worker.stats.measured = 0.1, True
    fake.gate.clear()
    worker.submit(EchoJob("slow"))
    assert fake.entered.wait(5)
    time.sleep(1.0)  # the batch in progress has run ten times its average
    assert worker.expected_wait() >= 2.0  # the rest of it (as long again) and a batch as slow for the new job
    with pytest.raises(Overloaded, match="deadline"):
        worker.submit(EchoJob("hurried"), deadline=time.monotonic() + 1.5)
    fake.gate.set()


def test_before_any_measured_batch_only_the_first_batch_is_promised(worker, fake) -> None:
    fake.gate.clear()
    first = worker.submit(EchoJob("first"), deadline=time.monotonic() + 60)  # the idle worker takes it
    assert fake.entered.wait(5)
    with pytest.raises(Overloaded, match="first batch"):  # its time is unknown: nothing more is promised
        worker.submit(EchoJob("second"), deadline=time.monotonic() + 60)
    time.sleep(0.3)
    fake.gate.set()
    assert first.result(5) == ["answer for first"]
    assert worker.stats.measured and worker.stats.batch_seconds >= 0.3  # the measurement, not a blend with 1 s
    assert worker.submit(EchoJob("third"), deadline=time.monotonic() + 60).result(5) == ["answer for third"]


def test_jobs_without_requests_are_measured_but_one_off_calls_are_not(worker) -> None:
    """A pipeline's ranking without rationales asks nothing batched but is a job all the same: its batch calibrates
    the admission estimate (otherwise concurrent clients were refused as "measuring its first batch" for ever);
    a one-off call such as the warm-up does not."""
    worker.submit(CallJob(lambda: time.sleep(0.3))).result(5)
    assert not worker.stats.measured
    assert worker.submit(MixedJob()).result(5) == []
    assert worker.stats.measured and worker.stats.batch_seconds < 0.3
