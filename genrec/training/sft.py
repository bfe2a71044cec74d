"""SFT data: next-item instruction examples from the evaluation harness's training sequences.

An example is what the recommender sees for a user at one point of their history (the profile of every event
strictly before a cut-off time, and the recommend instruction for a target platform), followed by the answer it
should give: the next item(s) the user took on that platform, in the answer format the parser reads
(``1. "Title"``), optionally each with a rationale grounded in the history (``1. "Title" - like "X" you bought``,
X being the shown history item most similar to the answer). Prompts come from ``Recommender.prompt``, the code path
inference uses, so a tuned model sees at inference what it saw in training.

Sources: ``TrainData`` only (the protocol keeps validation and test users out, and with ``users: all`` it keeps each
user's events from the first validation target on out), after removing every event of ``exclude_platforms``
(zero-shot platform training: such a platform is neither a target nor in any history). Windows slide over each
sequence from its end with a stride, at most ``max_examples_per_user`` per user; the target platform is the platform
that comes next, so cross-platform transitions are mixed in. Sampling is seeded; duplicate (prompt, response) pairs
are removed.

Tokens: the prompt is tokenized as at inference (the formatted chat text, no special tokens added) and the
response is followed by the end-of-turn token. Labels are -100 on the prompt, so the loss covers the response only.
Batches group examples of similar length and pad on the left, so that the response tails line up at the end.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from genrec.decoding import answer_tokens
from genrec.llm import end_of_turn_id
from genrec.pipeline.types import Interaction, TrainData, history_items
from genrec.profile import Profile
from genrec.prompts import format_answer, quote
from genrec.recommender import Recommender

IGNORE_INDEX = -100


@dataclass
class SFTConfig:
    """How examples are cut from the training sequences.

    ``response_items``: how many next items of the target platform the answer lists (the first is the true next
    item). ``stride``: distance, in distinct timestamps, between two cut-offs of a sequence; the latest
    ``max_examples_per_user`` cut-offs of each user are used, each needing ``min_history`` earlier events.
    ``max_examples``: a seeded sample of this many examples (``None``: all). ``rationale_fraction``: the share of
    examples whose prompt asks for reasons and whose answer gives grounded ones. ``max_length``: longer
    examples (in tokens) are dropped.

    ``negatives``: with ``n > 0``, every example also lists ``n`` hard negatives for a ranking objective (see
    ``genrec.training.negatives``): items of the target platform that the ``negative_sources`` (the pipeline's
    candidate sources, fitted on the same training data; by default popularity and ItemKNN) put in their top
    ``negative_pool`` for that history, the true answer and the user's own items left out.
    """

    response_items: int = 1
    stride: int = 1
    max_examples_per_user: int = 8
    min_history: int = 1
    max_examples: int | None = None
    rationale_fraction: float = 0.0
    exclude_platforms: list[str] = field(default_factory=list)
    max_length: int = 1024
    negatives: int = 0
    negative_sources: list[str] = field(default_factory=lambda: ["mostpop", "itemknn"])
    negative_pool: int = 50


@dataclass(frozen=True)
class SFTExample:
    """One instruction example: ``prompt`` (chat-formatted, ready for the answer) and ``response``.

    ``cutoff`` is the timestamp of the first event not in the history; ``targets`` are the answer's item ids.
    ``negatives`` (item ids) and ``candidate_titles`` (the first target's title, then the negatives') feed the
    ranking objective when hard negatives are configured; ``candidate_priors`` are those lines' title priors under
    the untuned model when the loss ranks calibrated scores (``train.rank_calibration``).
    """

    user_id: str
    platform: str
    cutoff: float
    targets: tuple[str, ...]
    prompt: str
    response: str
    rationale: bool = False
    negatives: tuple[str, ...] = ()
    candidate_titles: tuple[str, ...] = ()
    candidate_priors: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SFTExample:
        sequences = ("targets", "negatives", "candidate_titles", "candidate_priors")
        return cls(**{**data, **{key: tuple(data.get(key, ())) for key in sequences}})


@dataclass(frozen=True)
class Window:
    """A cut-off in one user's sequence: the history is ``sequence[:cut]``; ``items`` answer for ``platform``."""

    user_id: str
    cut: int
    platform: str
    items: tuple[Interaction, ...]


def filter_platforms(train: TrainData, exclude: Iterable[str]) -> dict[str, list[Interaction]]:
    """The training sequences without any event of the ``exclude`` platforms (users left empty are dropped)."""
    excluded = set(exclude)
    sequences = {user: [x for x in seq if x.platform not in excluded] for user, seq in train.sequences.items()}
    return {user: seq for user, seq in sequences.items() if seq}


def windows(user_id: str, sequence: Sequence[Interaction], titles: dict[tuple[str, str], str],
            config: SFTConfig) -> list[Window]:
    """The latest usable cut-offs of one time-ordered sequence, newest first.

    A cut-off sits where the timestamp changes (events at one timestamp are never each other's history). Each
    platform of the events at the cut-off gives one window, answered by the next ``response_items`` titled items
    of that platform that are not in the history on that platform.
    """
    starts = [i for i in range(1, len(sequence)) if sequence[i].timestamp > sequence[i - 1].timestamp]
    out: list[Window] = []
    for cut in starts[::-1][:: config.stride]:
        if cut < config.min_history:
            break
        stamp = sequence[cut].timestamp
        group = [x.platform for x in sequence[cut:] if x.timestamp == stamp]
        for platform in dict.fromkeys(group):
            seen = {x.item_id for x in sequence[:cut] if x.platform == platform}
            items = _next_items(sequence[cut:], platform, seen, titles, config.response_items)
            if items:
                out.append(Window(user_id, cut, platform, items))
        if len(out) >= config.max_examples_per_user:
            break
    return out[: config.max_examples_per_user]


def _next_items(future: Sequence[Interaction], platform: str, seen: set[str], titles: dict[tuple[str, str], str],
                n: int) -> tuple[Interaction, ...]:
    chosen: list[Interaction] = []
    for x in future:
        if x.platform == platform and x.item_id not in seen and titles.get((platform, x.item_id)):
            seen = seen | {x.item_id}
            chosen.append(x)
            if len(chosen) == n:
                break
    return tuple(chosen)


@dataclass
class SFTData:
    """Examples and what they are made of."""

    examples: list[SFTExample]
    stats: dict[str, Any]


def build_examples(train: TrainData, recommender: Recommender, config: SFTConfig, *, seed: int = 0,
                   progress: bool = False) -> SFTData:
    """SFT examples from ``train`` rendered by ``recommender.prompt`` (see the module docstring)."""
    sequences = filter_platforms(train, config.exclude_platforms)
    rng = random.Random(seed)
    candidates = [w for user in sorted(sequences) for w in windows(user, sequences[user], train.titles, config)]
    if config.max_examples is not None and len(candidates) > config.max_examples:
        candidates = rng.sample(candidates, config.max_examples)
        candidates.sort(key=lambda w: (w.user_id, -w.cut, w.platform))
    explain = [rng.random() < config.rationale_fraction for _ in candidates]
    examples: list[SFTExample] = []
    keys: set[tuple[str, str]] = set()
    duplicates = 0
    for window, rationale in tqdm(list(zip(candidates, explain, strict=True)), desc="SFT examples", unit="example",
                                  disable=not progress):
        sequence = sequences[window.user_id]
        history = history_items(window.user_id, sequence[: window.cut], train.titles)
        profile, prompt = recommender.prompt(history, window.platform, explain=rationale)
        titles = [train.titles[(window.platform, x.item_id)] for x in window.items]
        reasons = _rationales(recommender, profile, window) if rationale else None
        response = format_answer(titles, reasons)
        if (prompt, response) in keys:
            duplicates += 1
            continue
        keys.add((prompt, response))
        examples.append(SFTExample(window.user_id, window.platform, sequence[window.cut].timestamp,
                                   tuple(x.item_id for x in window.items), prompt, response, rationale))
    rng.shuffle(examples)
    stats = {"train_users": len(train.sequences), "users": len({e.user_id for e in examples}),
             "windows": len(candidates), "examples": len(examples), "duplicates_removed": duplicates,
             "with_rationale": sum(e.rationale for e in examples),
             "per_platform": dict(sorted(Counter(e.platform for e in examples).items())),
             "excluded_platforms": list(config.exclude_platforms)}
    return SFTData(examples, stats)


def _rationales(recommender: Recommender, profile: Profile, window: Window) -> list[str]:
    """For each answer item, ``like "X" you <verb>`` with X the most similar history item shown in the profile."""
    shown = [(section, entry) for section in profile.sections for entry in section.items]
    history = np.vstack([recommender.index(section.platform).vectors([entry.item_id]) for section, entry in shown])
    targets = recommender.index(window.platform).vectors([x.item_id for x in window.items])
    reasons = []
    for vector in targets:
        section, entry = shown[int(np.argmax(history @ vector))]
        reasons.append(f"like {quote(entry.title)} you {section.verb}")
    return reasons


def save_examples(data: SFTData, path: Path, fingerprint: str) -> None:
    """Write examples as JSON lines, the first line holding the stats and the fingerprint of what made them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        fh.write(json.dumps({"fingerprint": fingerprint, "stats": data.stats}) + "\n")
        for example in data.examples:
            fh.write(json.dumps(example.to_dict()) + "\n")
    tmp.replace(path)


def load_examples(path: Path, fingerprint: str) -> SFTData | None:
    """Examples saved by ``save_examples`` with the same fingerprint, else ``None``."""
    if not path.is_file():
        return None
    with path.open() as fh:
        header = json.loads(fh.readline())
        if header.get("fingerprint") != fingerprint:
            return None
        return SFTData([SFTExample.from_dict(json.loads(line)) for line in fh], header["stats"])


# --------------------------------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class TokenizedExample:
    """Prompt then response token ids; the first ``prompt_length`` ids are not trained on.

    A ranking example (hard negatives configured) holds the prompt and the shared opening of an answer line
    (``1. "``) in ``input_ids`` (all of it prompt) and, in ``candidates``, the rest of the answer line of the true
    next item and then of each negative, cut to the tokens that scored decoding reads.
    """

    input_ids: tuple[int, ...]
    prompt_length: int
    candidates: tuple[tuple[int, ...], ...] = ()
    offsets: tuple[float, ...] = ()  # per candidate, subtracted from its score (the calibration's share of its prior)

    def __len__(self) -> int:
        return len(self.input_ids) + sum(len(c) for c in self.candidates)

    @property
    def response_length(self) -> int:
        return len(self) - self.prompt_length


def tokenize(examples: Sequence[SFTExample], tokenizer: Any, max_length: int, score_tokens: int = 16,
             rank_calibration: float = 0.0) -> tuple[list[TokenizedExample], int]:
    """Token ids of every example no longer than ``max_length``; returns them and how many were dropped.

    Examples with ``candidate_titles`` become ranking examples whose answer lines are cut to ``score_tokens``
    tokens, as ``Recommender.score_candidates`` reads them; with ``rank_calibration``, that share of each line's
    ``candidate_priors`` becomes its offset (taken off its score by the ranking loss).
    """
    stop = end_of_turn_id(tokenizer)
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
    responses = tokenizer([e.response for e in examples], add_special_tokens=False)["input_ids"]
    out = []
    for example, prompt, response in zip(examples, prompts, responses, strict=True):
        if example.candidate_titles:
            head, bodies = answer_tokens(list(example.candidate_titles), tokenizer)
            ids = (*prompt, *head)
            offsets = tuple(rank_calibration * p for p in example.candidate_priors) if rank_calibration else ()
            item = TokenizedExample(ids, len(ids), tuple(tuple(b[:score_tokens]) for b in bodies), offsets)
        else:
            item = TokenizedExample((*prompt, *response, stop), len(prompt))
        if len(item) <= max_length:
            out.append(item)
    return out, len(examples) - len(out)


def length_batches(lengths: Sequence[int], batch_tokens: int, max_batch_size: int, seed: int) -> list[list[int]]:
    """Batches of example indices grouped by length, in a seeded random order.

    Examples are sorted by length (ties in seeded random order) and cut into consecutive batches whose padded size
    (examples x longest) stays within ``batch_tokens`` and whose size stays within ``max_batch_size``; an example
    longer than ``batch_tokens`` gets a batch of its own. The batch order is shuffled with ``seed``.
    """
    rng = random.Random(seed)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = max(lengths[index], max((lengths[i] for i in current), default=0))
        if current and (len(current) + 1 > max_batch_size or (len(current) + 1) * longest > batch_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def padding_waste(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of the padded batch tokens that are padding."""
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    real = sum(lengths[i] for batch in batches for i in batch)
    return 1.0 - real / padded if padded else 0.0


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """A left-padded batch: ``input_ids``, ``attention_mask``, ``position_ids`` and ``labels`` (-100 off the response).

    ``response_span`` (a Python int, so a compiled loss reads it without leaving its graph) is the longest response:
    only the last ``response_span`` positions carry labels.
    """
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        start = width - len(example)
        ids[row, start:] = torch.tensor(example.input_ids)
        mask[row, start:] = 1
        labels[row, start + example.prompt_length :] = ids[row, start + example.prompt_length :]
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    span = max(e.response_length for e in examples)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels,
            "response_span": span, "padded_tokens": torch.tensor(ids.numel())}


def collate_ranking(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """A batch of ranking examples: the prompts left-padded as in ``collate`` (``input_ids``, ``attention_mask``,
    ``position_ids``) and every example's candidate lines, right-padded, one row each, example by example
    (``candidate_ids``, ``candidate_mask``: the prompt's mask then the line's, ``candidate_positions``: positions
    that continue each prompt). Every example must have the same number of candidates."""
    counts = {len(e.candidates) for e in examples}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"ranking examples need the same, non-zero number of candidates; got {sorted(counts)}")
    prompts = [TokenizedExample(e.input_ids, e.prompt_length) for e in examples]
    batch = collate(prompts, pad_id)
    lines = [line for e in examples for line in e.candidates]
    width = max(len(line) for line in lines)
    ids = torch.full((len(lines), width), pad_id, dtype=torch.long)
    line_mask = torch.zeros((len(lines), width), dtype=torch.long)
    for row, line in enumerate(lines):
        ids[row, : len(line)] = torch.tensor(line)
        line_mask[row, : len(line)] = 1
    copies = counts.pop()
    prompt_mask = batch["attention_mask"].repeat_interleave(copies, dim=0)
    lengths = torch.tensor([len(e.input_ids) for e in examples]).repeat_interleave(copies)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "position_ids": batch["position_ids"], "candidate_ids": ids,
            "candidate_mask": torch.cat([prompt_mask, line_mask], dim=1),
            "candidate_positions": lengths[:, None] + torch.arange(width)[None, :],
            "offsets": torch.tensor([e.offsets or (0.0,) * copies for e in examples], dtype=torch.float32),
            "padded_tokens": torch.tensor(batch["input_ids"].numel() + ids.numel())}
