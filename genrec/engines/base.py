"""The seam between ``genrec.llm.LLM`` and the engine that runs the model: what every backend does.

``LLM`` keeps the tokenizer, chat formatting and argument checks; a backend turns token ids into continuations
(generation with length, stop-token and line-count control, batched) and scores continuations after a shared
prompt (the candidate lines of scored decoding). Backends that cannot do something (constrained decoding, an
adapter) raise ``EngineUnsupportedError`` naming the engine and the feature, never a silent fallback.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from genrec.errors import GenrecError

AllowedTokens = Callable[[int, Sequence[int]], list[int]]

LIST_MARKER = re.compile(
    r"^(?:(?:\(?\d{1,3}[.):]|#\d{1,3}:?|[-*•+–—])\s+|(?:item|recommendation|pick)\s*\d{1,3}\s*[.):-]\s*)", re.I
)


class EngineUnsupportedError(GenrecError):
    """The selected engine cannot do what was asked (e.g. constrained decoding on openvino)."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend supports beyond greedy/sampled generation and scoring."""

    beams: bool
    constrained: bool
    adapters: bool
    training: bool
    scoring: bool = True


@dataclass(frozen=True)
class GenerationRequest:
    """One ``generate`` call after ``LLM``'s checks: prompts as token ids and the decoding settings."""

    prompts: list[list[int]]
    max_new_tokens: int
    num_return_sequences: int = 1
    num_beams: int = 1
    do_sample: bool = False
    temperature: float | None = None
    stop_after_lines: int | None = None
    allowed_tokens: AllowedTokens | None = None
    batch_size: int = 8
    progress: bool = False
    seed: int = 0


@runtime_checkable
class LLMBackend(Protocol):
    """An engine that runs the causal LM for ``LLM``."""

    name: str
    capabilities: Capabilities

    def generate(self, request: GenerationRequest) -> list[list[str]]:
        """One list of ``num_return_sequences`` continuation texts per prompt (special tokens removed,
        stripped), stopping at the stop tokens, ``max_new_tokens`` or ``stop_after_lines``."""
        ...

    def continuation_logprobs(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]], *,
                              batch_size: int | None = None) -> list[list[float]]:
        """The log-probability of every token of each continuation after ``prompt``."""
        ...

    def without_adapter(self) -> contextlib.AbstractContextManager:
        """A context in which the base model runs, every adapter off."""
        ...


def lines_done(text: str, max_lines: int) -> bool:
    """Whether generated ``text`` has ``max_lines`` complete non-empty lines, or repeats a complete line (small
    models loop on one title): the ``stop_after_lines`` rule that every backend applies."""
    lines = [LIST_MARKER.sub("", line).strip() for line in text.split("\n")[:-1]]
    lines = [line for line in lines if line]
    return len(lines) >= max_lines or len(set(lines)) < len(lines)
