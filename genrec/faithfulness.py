"""Faithfulness of rationales: a rationale may only name items the user really interacted with.

``FaithfulnessChecker.check(rationale, history_titles, recommended_title)`` finds the spans of a rationale that
name items and checks each against the user's history:

- **quoted spans** (``"..."``, ``“...”``, ``«...»``, ``'...'``) are item claims: genrec's prompts present every
  item title in double quotes, so that is how a model cites one. A quoted span is supported when it names a
  history item (equal titles after normalisation, or the span is a contiguous part of a history title, as when a
  long title is shortened, or nearly all of its words are in one history title); it is harmless when it names the
  recommended item itself or a known non-item name (a platform, a category). A quoted catalog title flags the
  rationale, and so does any other quoted span that looks like a title (capitalised words, or at least
  ``MIN_LOWERCASE_TOKENS`` words); a short lower-case quoted phrase ("classic") is not taken for a title.
- **unquoted spans** count only when they are certainly titles: a run of capitalised words (or any run of at least
  ``MIN_LOWERCASE_TOKENS`` words, since some catalogs store lower-cased titles) whose normalised text equals a
  catalog title. Such a span flags the rationale unless the title is in the user's history or is the recommended
  item. A single word counts only when it is capitalised inside a phrase ("you enjoyed Jumanji"), never at the
  start of one, where capitals are grammar ("Up there with the best").

Titles are compared by ``genrec.grounding.normalise_title(loose=True)``: case, accents, punctuation, a trailing
year and a leading article do not matter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from genrec.grounding import normalise_title

Status = Literal["supported", "flagged", "no-citation"]
Match = Literal["history", "recommended", "name", "phrase", "catalog", "unknown"]

MIN_LOWERCASE_TOKENS = 4  # an unquoted lower-case run must be this long to be taken for a catalog title
MAX_SPAN_TOKENS = 16
NEAR_MATCH = 0.8  # share of a quoted span's words found in one history title that still counts as naming it

_QUOTED = re.compile(r'"([^"]{2,200})"|“([^”]{2,200})”|«([^»]{2,200})»|(?<![\w])\'([^\']{2,200})\'(?![\w])')
_TOKEN = re.compile(r"[\w][\w'’&.-]*")
_CONNECTORS = {"of", "the", "and", "a", "an", "in", "on", "to", "for", "de", "la", "le", "&", "vs", "with"}


@dataclass(frozen=True)
class Citation:
    """One span of a rationale that names (or may name) an item, and what it matched."""

    span: str
    quoted: bool
    match: Match
    title: str | None  # the history, recommended or catalog title it names, when one

    @property
    def flagged(self) -> bool:
        return self.match in ("catalog", "unknown")


@dataclass(frozen=True)
class FaithfulnessCheck:
    status: Status
    citations: tuple[Citation, ...]
    reason: str

    @property
    def flagged(self) -> bool:
        return self.status == "flagged"

    def to_dict(self) -> dict:
        return {"status": self.status, "flagged": self.flagged, "reason": self.reason,
                "citations": [asdict(c) | {"flagged": c.flagged} for c in self.citations]}


def _key(text: str) -> str:
    return normalise_title(text, loose=True)


def _contains(haystack: str, needle: str) -> bool:
    return bool(needle) and f" {needle} " in f" {haystack} "


class FaithfulnessChecker:
    """Checks rationales against histories; ``catalog_titles`` are every platform's catalog titles, ``names``
    other quotable non-item names (platforms, categories)."""

    def __init__(self, catalog_titles: Iterable[str], names: Iterable[str] = ()) -> None:
        self._catalog: dict[str, str] = {}
        for title in catalog_titles:
            key = _key(title)
            if key:
                self._catalog.setdefault(key, title)
        self._names = {_key(name) for name in names} - {""}

    def check(self, rationale: str | None, history_titles: Sequence[str], recommended_title: str) -> FaithfulnessCheck:
        if not rationale:
            return FaithfulnessCheck("no-citation", (), "no rationale")
        history = [(t, _key(t)) for t in history_titles if t]
        recommended = _key(recommended_title)
        citations = [self._quoted(span, history, recommended_title, recommended)
                     for span in _quoted_spans(rationale)]
        citations += self._unquoted(_QUOTED.sub(" | ", rationale), history, recommended_title, recommended)
        flagged = [c for c in citations if c.flagged]
        if flagged:
            names = ", ".join(f'"{c.span}"' for c in flagged)
            return FaithfulnessCheck("flagged", tuple(citations),
                                     f"names {names}, which the user never interacted with")
        cited = [c for c in citations if c.match == "history"]
        if cited:
            return FaithfulnessCheck("supported", tuple(citations),
                                     f"cites {len(cited)} item{'s' if len(cited) != 1 else ''} of the user's history")
        return FaithfulnessCheck("no-citation", tuple(citations), "names no item of the user's history")

    def _quoted(self, span: str, history: list[tuple[str, str]], recommended_title: str,
                recommended: str) -> Citation:
        key = _key(span)
        found = _in_history(key, history, near=True)
        if found is not None:
            return Citation(span, True, "history", found)
        if key and (key == recommended or _contains(recommended, key)):
            return Citation(span, True, "recommended", recommended_title)
        if key in self._names:
            return Citation(span, True, "name", None)
        title = self._catalog.get(key)
        if title is not None:
            return Citation(span, True, "catalog", title)
        words = _TOKEN.findall(span)
        title_like = bool(words) and (_title_like(words) or len(words) >= MIN_LOWERCASE_TOKENS)
        return Citation(span, True, "unknown" if title_like else "phrase", None)

    def _unquoted(self, text: str, history: list[tuple[str, str]], recommended_title: str,
                  recommended: str) -> list[Citation]:
        citations = []
        for run in _candidate_runs(text):
            for span in _longest_catalog_spans(run, self._catalog):
                key = _key(span)
                found = _in_history(key, history, near=False)
                if found is not None:
                    citations.append(Citation(span, False, "history", found))
                elif key == recommended:
                    citations.append(Citation(span, False, "recommended", recommended_title))
                else:
                    citations.append(Citation(span, False, "catalog", self._catalog[key]))
        return citations


def _quoted_spans(text: str) -> list[str]:
    return [next(g for g in match.groups() if g is not None).strip() for match in _QUOTED.finditer(text)]


def _in_history(key: str, history: list[tuple[str, str]], *, near: bool) -> str | None:
    """The history title that ``key`` names: equal, a contiguous part (two words or more), or (``near``) with
    nearly all of its words in that title."""
    if not key:
        return None
    words = key.split()
    for title, title_key in history:
        if key == title_key or (len(words) >= 2 and _contains(title_key, key)):
            return title
    if near and len(words) >= 2:
        for title, title_key in history:
            present = set(title_key.split())
            if sum(w in present for w in words) >= NEAR_MATCH * len(words):
                return title
    return None


def _candidate_runs(text: str) -> list[list[str]]:
    """The words of each phrase of ``text`` (cut at punctuation that ends a phrase)."""
    phrases = re.split(r"[,;:!?()\[\]|]|\.(?:\s|$)", text)
    return [tokens for tokens in (_TOKEN.findall(phrase) for phrase in phrases) if tokens]


def _title_like(words: list[str]) -> bool:
    """Capitalised words (digits and inner connectors such as "of" allowed): how short titles are written."""
    if words[0].lower() in _CONNECTORS and not words[0][0].isupper():
        return False
    return all(w[0].isupper() or w[0].isdigit() or w.lower() in _CONNECTORS for w in words)


def _longest_catalog_spans(tokens: list[str], catalog: dict[str, str]) -> list[str]:
    """Non-overlapping sub-spans of ``tokens`` that equal catalog titles, longest first. Spans shorter than
    ``MIN_LOWERCASE_TOKENS`` must be title-like; a single word must also not start the phrase."""
    found: list[tuple[int, int]] = []
    for length in range(min(len(tokens), MAX_SPAN_TOKENS), 0, -1):
        for start in range(len(tokens) - length + 1):
            end = start + length
            if any(start < f_end and f_start < end for f_start, f_end in found):
                continue
            words = tokens[start:end]
            if length < MIN_LOWERCASE_TOKENS and not _title_like(words):
                continue
            if length == 1 and (start == 0 or not words[0][0].isupper() or len(words[0]) < 2):
                continue
            if _key(" ".join(words)) in catalog:
                found.append((start, end))
    return [" ".join(tokens[s:e]) for s, e in sorted(found)]
