"""The explain stage: a short rationale for each final item, written by the LLM and citing the user's history.

For each recommended item the evidence is the user's history items whose titles are closest to its title (sentence
embeddings). The LLM is asked, in one batch for the whole list, why the user may like the item
(``prompts/explain.j2``); its answer opens with a fixed clause citing the evidence (``prompts/explain_opening.j2``),
and the LLM writes the reason that completes the sentence (its first sentence is kept). A 135M model asked to
quote a title itself mangles long ones; given the citation, it only has to say why. ``genrec.faithfulness`` then
checks that every item the whole sentence names is in the history. A rationale that fails (names another item,
or the LLM wrote fewer than ``MIN_WORDS`` words) is generated once more by sampling; if that fails too, the item
gets an evidence sentence marked ``template``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from genrec.faithfulness import FaithfulnessChecker
from genrec.pipeline.types import ScoredItem

TEMPLATE = "explain.j2"
OPENING = "explain_opening.j2"
MIN_WORDS = 3  # words the LLM must add to the opening for the rationale to count as its own
PROMPT_WORDS = 8  # words of a title the prompt and the opening quote
EVIDENCE = 2  # history titles cited per item
RECENT = 20  # most recent titled history items considered as evidence
BATCH = 64  # prompts per generation batch: on CPU one large batch decodes faster per prompt than several small ones
_SENTENCE_END = re.compile(r'(?<=\w\w\w)[.!?](?=\s+["A-Z])')  # before the next sentence (not after "Dr")


class Explainer:
    """LLM rationales with evidence and a faithfulness check (``llm``: ``genrec.llm.LLM``; ``embedder``: the
    sentence embedder; ``templates``: ``genrec.prompts.PromptTemplates``; ``catalog_titles``: every title a
    rationale could wrongly name; ``names``: names that are not items, such as the platforms, which the prompt
    mentions and a rationale may repeat)."""

    def __init__(self, llm, embedder, templates, catalog_titles: Sequence[str], *, names: Sequence[str] = (),
                 max_new_tokens: int = 40) -> None:
        self.llm, self.embedder, self.templates = llm, embedder, templates
        self.checker = FaithfulnessChecker(catalog_titles, names=names)
        self.max_new_tokens = max_new_tokens

    def explain(self, items: Sequence[ScoredItem], history_titles: Sequence[str], *, verb: str) -> list[ScoredItem]:
        """``items`` with rationales citing ``history_titles`` (one list: ``explain_many``)."""
        [out] = self.explain_many([(items, history_titles, verb)])
        return out

    def explain_many(self, lists: Sequence[tuple[Sequence[ScoredItem], Sequence[str], str]]) -> list[list[ScoredItem]]:
        """Rationales for several recommendation lists, each ``(items, history_titles, verb)``, with one batched
        generation (and one batched retry) for all of them: the server answers its clients' lists together."""
        prompts, openings, evidence, titles, at = [], [], [], [], []
        for n, (items, history_titles, verb) in enumerate(lists):
            known = list(dict.fromkeys(t for t in history_titles if t))[-RECENT:]
            cited = self._evidence(known, [item.title for item in items]) if known and items else []
            for item, quoted in zip(items if known else (), cited, strict=True):
                opening = self.templates.render(OPENING, verb=verb, evidence=_first_words(quoted[0])).strip() + " "
                prompts.append(self.llm.format_chat(self.templates.messages(
                    TEMPLATE, title=_first_words(item.title), platform=item.platform, verb=verb,
                    evidence=[_first_words(t) for t in quoted])) + opening)
                openings.append(opening)
                at.append(n)
            evidence.extend(cited)
            titles.append(known)
        answers = [_reason(texts[0]) for texts in self.llm.generate(
            prompts, max_new_tokens=self.max_new_tokens, stop_after_lines=1, batch_size=BATCH)] if prompts else []
        items = [item for n, (listed, _, _) in enumerate(lists) if titles[n] for item in listed]
        failed = [i for i, (item, opening, answer) in enumerate(zip(items, openings, answers, strict=True))
                  if not self._written(opening, answer, titles[at[i]], item.title)]
        if failed:
            retry = self.llm.generate([prompts[i] for i in failed], max_new_tokens=self.max_new_tokens,
                                      stop_after_lines=1, do_sample=True, temperature=0.7, batch_size=BATCH)
            for i, texts in zip(failed, retry, strict=True):
                answers[i] = _reason(texts[0])
        out: list[list[ScoredItem]] = [[] for _ in lists]
        for i, (item, opening, answer, cited) in enumerate(zip(items, openings, answers, evidence, strict=True)):
            verb = lists[at[i]][2]
            if self._written(opening, answer, titles[at[i]], item.title):
                out[at[i]].append(replace(item, rationale=opening + answer, rationale_source="llm", evidence=cited))
            else:
                out[at[i]].append(replace(item, rationale=f'Because you {verb} "{cited[0]}".',
                                          rationale_source="template", evidence=cited))
        for n, (listed, _, verb) in enumerate(lists):
            if not titles[n]:  # no titled history to cite
                out[n] = [replace(item, rationale=f"Popular with people who {verb} what you did.",
                                  rationale_source="template") for item in listed]
        return out

    def _written(self, opening: str, reason: str, history_titles: Sequence[str], title: str) -> bool:
        """Whether the LLM wrote a reason of its own and the whole sentence names only the user's items."""
        return (len(reason.split()) >= MIN_WORDS
                and self.checker.check(opening + reason, history_titles, title).status == "supported")

    def _evidence(self, history_titles: list[str], item_titles: list[str]) -> list[tuple[str, ...]]:
        vectors = self.embedder.encode(history_titles + item_titles)
        history, items = vectors[: len(history_titles)], vectors[len(history_titles):]
        similarity = items @ history.T
        return [tuple(history_titles[j] for j in np.argsort(-row, kind="stable")[:EVIDENCE]) for row in similarity]


def _reason(text: str) -> str:
    """The first sentence of the LLM's continuation of the opening (a small model rambles on in the same line)."""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    end = _SENTENCE_END.search(line)
    return line[: end.start() + 1] if end else line


def _first_words(title: str) -> str:
    """A long title's first ``PROMPT_WORDS`` words (still a part of the title the faithfulness check matches)."""
    words = title.split()
    return " ".join(words[:PROMPT_WORDS])
