"""Candidate sources: popularity, item-item CF, sequential (SASRec), content neighbours, the text-aware
sequential model (TextSeqRec) and LLM generation grounded to the catalog, by kind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from genrec.errors import GenrecError
from genrec.pipeline.sources.base import CandidateSource, ItemVocabulary, Method, rank_cases, top_items
from genrec.pipeline.sources.content import ContentOnly, TextEncoder
from genrec.pipeline.sources.generation import LLMGeneration
from genrec.pipeline.sources.itemknn import ItemKNN
from genrec.pipeline.sources.popularity import MostPop, popularity_counts
from genrec.pipeline.sources.sasrec import SASRec
from genrec.pipeline.sources.textseq import TextSeqRec
from genrec.pipeline.types import HistoryScope

KINDS: dict[str, type[CandidateSource]] = {"popularity": MostPop, "itemknn": ItemKNN, "sasrec": SASRec,
                                           "content": ContentOnly, "textseq": TextSeqRec, "generation": LLMGeneration}
ALIASES = {"mostpop": "popularity"}


def build(kind: str, options: dict[str, Any] | None = None, history_scope: HistoryScope = "cross", *,
          encoder: TextEncoder | None = None, store=None,
          llm_loader: Callable[[dict[str, Any] | None], Any] | None = None, **_: Any) -> CandidateSource:
    """An unfitted source of ``kind`` with its ``options`` (``encoder``: the embedder content sources share;
    ``store`` and ``llm_loader``: the event store and the loader of the process's shared LLM (``LLMConfig`` fields,
    ``None`` for the pipeline's) the generation source runs on)."""
    kind = ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise GenrecError(f"unknown candidate source {kind!r}; known: {', '.join([*KINDS, *ALIASES])}")
    options = dict(options or {})
    if kind in ("content", "textseq"):
        options["encoder"] = encoder
    if kind == "generation":
        options.update(encoder=encoder, store=store, llm_loader=llm_loader)
    try:
        return KINDS[kind](history_scope=history_scope, **options)
    except TypeError as exc:
        raise GenrecError(f"source {kind!r}: bad options {options} ({exc})") from exc


__all__ = ["KINDS", "CandidateSource", "ContentOnly", "ItemKNN", "ItemVocabulary", "LLMGeneration", "Method", "MostPop",
           "SASRec", "TextEncoder", "TextSeqRec", "build", "popularity_counts", "rank_cases", "top_items"]
