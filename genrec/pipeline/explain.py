"""The explain stage: a short rationale for each final item, written by the LLM and citing the user's history.

For each recommended item the evidence is the user's history items whose titles are closest to its title (sentence
embeddings). The LLM is asked, in one batch for the whole list, for one sentence that names the evidence
(``prompts/explain.j2``); ``genrec.faithfulness`` then checks that every item the sentence names is in the
history. A rationale that fails (names another item, or none) is generated once more by sampling; if that fails
too, the item gets an evidence sentence marked ``template``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from genrec.faithfulness import FaithfulnessChecker
from genrec.pipeline.types import ScoredItem

TEMPLATE = "explain.j2"
EVIDENCE = 2  # history titles cited per item
RECENT = 20  # most recent titled history items considered as evidence


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
        titles = list(dict.fromkeys(t for t in history_titles if t))[-RECENT:]
        if not items:
            return []
        if not titles:
            return [replace(item, rationale=f"Popular with people who {verb} what you did.",
                            rationale_source="template") for item in items]
        evidence = self._evidence(titles, [item.title for item in items])
        prompts = [self.llm.format_chat(self.templates.messages(
            TEMPLATE, title=item.title, platform=item.platform, verb=verb, evidence=list(cited)))
            for item, cited in zip(items, evidence, strict=True)]
        answers = [_sentence(texts[0]) for texts in self.llm.generate(
            prompts, max_new_tokens=self.max_new_tokens, stop_after_lines=1)]
        failed = [i for i, (item, answer) in enumerate(zip(items, answers, strict=True))
                  if not self._faithful(answer, titles, item.title)]
        if failed:
            retry = self.llm.generate([prompts[i] for i in failed], max_new_tokens=self.max_new_tokens,
                                      stop_after_lines=1, do_sample=True, temperature=0.7)
            for i, texts in zip(failed, retry, strict=True):
                answers[i] = _sentence(texts[0])
        out = []
        for item, answer, cited in zip(items, answers, evidence, strict=True):
            if self._faithful(answer, titles, item.title):
                out.append(replace(item, rationale=answer, rationale_source="llm", evidence=cited))
            else:
                out.append(replace(item, rationale=f'Because you {verb} "{cited[0]}".', rationale_source="template",
                                   evidence=cited))
        return out

    def _faithful(self, rationale: str, history_titles: Sequence[str], title: str) -> bool:
        return bool(rationale) and self.checker.check(rationale, history_titles, title).status == "supported"

    def _evidence(self, history_titles: list[str], item_titles: list[str]) -> list[tuple[str, ...]]:
        vectors = self.embedder.encode(history_titles + item_titles)
        history, items = vectors[: len(history_titles)], vectors[len(history_titles):]
        similarity = items @ history.T
        return [tuple(history_titles[j] for j in np.argsort(-row, kind="stable")[:EVIDENCE]) for row in similarity]


def _sentence(text: str) -> str:
    """The first line of a generation, without list markers or surrounding quotes."""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    return line.lstrip("-*0123456789. ").strip()
