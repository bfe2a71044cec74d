"""Catalog-constrained decoding: beam search that can only write the answer line of a real catalog item.

Free generation from a small model names many titles that exist nowhere (validity 0.3-0.7 on the benchmark data);
grounding then maps them to embedding neighbours. Constrained beam search, as in generative retrieval (P5, TIGER,
BIGRec's "constrained" variant), instead walks a prefix tree of the target catalog's answer lines
(``1. "Title"`` as an SFT response starts): every finished beam is a catalog item, and the beams come back ranked
by the model's likelihood of the whole line, so the LLM acts as a scorer over the catalog. Items the user already
has are banned per request (a branch closes once every title under it is banned), so no beam is spent on them.
The beams are written back as the usual numbered list: parsing, grounding, caching and evaluation do not change.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from genrec.llm import end_of_turn_id
from genrec.prompts import format_answer

_NUMBER = re.compile(r"^\s*1\.\s*")
_STEM = format_answer(["x"])[:4]  # 1. "


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    lines: int = 0  # complete answer lines at or below this node
    complete: bool = False  # a line ends here


@dataclass(frozen=True)
class Ban:
    """Titles one request must not produce: the banned lines and, per prefix, how many banned lines it leads to."""

    lines: frozenset[tuple[int, ...]] = frozenset()
    under: Counter = field(default_factory=Counter)


class TitleTrie:
    """Prefix tree over the token ids of ``1. "Title"`` + newline for every distinct title, tokenized as a tuned
    model writes it; a line ends with the model's end-of-turn token."""

    def __init__(self, titles: Iterable[str], tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.end_id = end_of_turn_id(tokenizer)
        self.root = _Node()
        self.depth = 0
        for sequence in _encode(titles, tokenizer):
            path = [self.root]
            for token in sequence:
                path.append(path[-1].children.setdefault(token, _Node()))
            if path[-1].complete:
                continue
            path[-1].complete = True
            for node in path:
                node.lines += 1
            self.depth = max(self.depth, len(sequence))
        if not self.root.lines:
            raise ValueError("constrained decoding needs a non-empty catalog")
        # the tokens every line starts with (``1. "``) go into the prompt: beam search then branches at its first
        # step (its idle start beams are copies of the first one and would otherwise come back as duplicates)
        self.stem: list[int] = []
        node = self.root
        while len(node.children) == 1 and not node.complete:
            token, node = next(iter(node.children.items()))
            self.stem.append(token)
        self._stem_node = node

    @property
    def size(self) -> int:
        return self.root.lines

    def ban(self, titles: Iterable[str]) -> Ban:
        """The ``Ban`` of ``titles`` (those in the trie; others are ignored)."""
        lines = {line for line in map(tuple, _encode(titles, self.tokenizer)) if self._complete(line)}
        under = Counter(line[:depth] for line in lines for depth in range(len(line) + 1))
        return Ban(frozenset(lines), under)

    def _complete(self, line: tuple[int, ...]) -> bool:
        node = self.root
        for token in line:
            node = node.children.get(token)
            if node is None:
                return False
        return node.complete

    def stem_text(self) -> str:
        """The text of ``stem``, to append to the prompt."""
        return self.tokenizer.decode(self.stem)

    def allowed(self, generated: Sequence[int], ban: Ban | None = None) -> list[int]:
        """The tokens that may follow ``generated`` (the tokens written after the prompt and ``stem``): the
        children that still lead to an allowed title, and the end token where an allowed line is complete. A
        finished or off-tree sequence may only end (beam search pads finished beams with it)."""
        node = self._stem_node
        for token in generated:
            if token == self.end_id:
                return [self.end_id]
            node = node.children.get(token)
            if node is None:
                return [self.end_id]
        prefix = (*self.stem, *generated)
        if ban is None or not ban.under.get(prefix):
            out = list(node.children)
            return out + [self.end_id] if node.complete else out
        out = [token for token, child in node.children.items() if child.lines > ban.under.get((*prefix, token), 0)]
        if node.complete and prefix not in ban.lines:
            out.append(self.end_id)
        return out or [self.end_id]


def _encode(titles: Iterable[str], tokenizer: Any) -> list[list[int]]:
    """Token ids of each distinct title's answer line (see ``answer_tokens``), in sorted line order."""
    distinct = sorted({title for title in titles if title}, key=lambda title: format_answer([title]))
    head, bodies = answer_tokens(distinct, tokenizer)
    return [head + body for body in bodies]


def answer_tokens(titles: Sequence[str], tokenizer: Any) -> tuple[list[int], list[list[int]]]:
    """The shared opening ``1. "`` of an answer line and, per title, the rest of its line (title, closing quote,
    newline), tokenized apart so that every line shares that stem (a title that starts with punctuation would
    otherwise merge it into the quote's token and branch off before the title starts)."""
    head = tokenizer(_STEM, add_special_tokens=False)["input_ids"]
    if not titles:
        return head, []
    lines = [format_answer([title]) + "\n" for title in titles]
    return head, tokenizer([line[len(_STEM):] for line in lines], add_special_tokens=False)["input_ids"]


def beams_as_answer(beams: Sequence[str], stem: str = "") -> str:
    """Finished beams (each the rest of a ``1. "Title"`` line after ``stem``), best first, as one numbered answer
    (``1. ...``, ``2. ...``) without repeats."""
    lines = dict.fromkeys(_NUMBER.sub("", stem + beam.strip()).strip() for beam in beams if beam.strip())
    return "\n".join(f"{number}. {line}" for number, line in enumerate((line for line in lines if line), 1))
