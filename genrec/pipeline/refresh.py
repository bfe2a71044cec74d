"""Keep a served pipeline up to date: refresh the champion with the events since its data window into a
challenger, judge both on the newest held-out slice, and promote the challenger unless it is worse.

The slice is the latest new event of a seeded sample of users with new events: the challenger learns every other
new event (``Pipeline.refresh``), neither version has seen the slice, and both rank it from the same histories.
With ``tune_users`` (off by default: weights tuned on a small slice are noisy), a pipeline whose fusion was
searched on validation also holds out the latest new event of a second sample of users and tunes the challenger's
fusion again on them.
The challenger is promoted unless it is worse beyond the paired bootstrap interval of NDCG@10 (challenger minus
champion entirely below zero). The held-out events are recorded with the new version, and the next refresh
learns them. A refresh with no event after the champion's window writes nothing.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from genrec.errors import GenrecError
from genrec.evaluation.metrics import bootstrap, case_metrics
from genrec.evaluation.protocol import cases_at, snapshot
from genrec.pipeline.registry import Registry, Version
from genrec.pipeline.sources.base import rank_cases
from genrec.pipeline.spec import Pipeline
from genrec.pipeline.types import EvalCase, Interaction, TrainData


@dataclass(frozen=True)
class Slice:
    """What a refresh learns (``train``, with each user's ``new`` interactions ending their sequence), the
    held-out ``cases`` it is judged on and the held-out ``tune`` cases its fusion is tuned on."""

    train: TrainData
    new: dict[str, list[Interaction]]
    cases: list[EvalCase]
    tune: list[EvalCase]

    def held_out(self) -> list[list[Any]]:
        """Every held-out event as [user, platform, item, timestamp] (the next refresh learns them)."""
        return [[c.user_id, c.platform, c.target, c.timestamp] for c in (*self.cases, *self.tune)]


@dataclass(frozen=True)
class Judgement:
    """Champion and challenger on one held-out slice: NDCG@10 and the paired difference with its interval."""

    cases: int
    champion: float
    challenger: float
    difference: float
    low: float
    high: float

    @property
    def promote(self) -> bool:
        """Not worse beyond the paired interval."""
        return not self.high < 0

    def to_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "champion_ndcg10": self.champion, "challenger_ndcg10": self.challenger,
                "difference": self.difference, "interval": [self.low, self.high], "promote": self.promote}


def split_new(everything: TrainData, since: float, *, carried: Sequence[Sequence[Any]] = (), holdout_users: int = 200,
              tune_users: int = 0, seed: int = 0) -> Slice:
    """The events after ``since`` (and the ``carried`` [user, platform, item, timestamp] events a previous refresh
    held out) as each user's new interactions, less the held-out slices: the newest event of up to
    ``holdout_users`` users to judge on, then of up to ``tune_users`` other users to tune on (one seeded sample
    of those whose newest event is after ``since``, with an earlier history). A carried event is never held out
    twice."""
    carried_keys = {(str(u), str(p), str(i), float(t)) for u, p, i, t in carried}
    new: dict[str, list[Interaction]] = {}
    for user, seq in everything.sequences.items():
        n = 0
        while n < len(seq) and (seq[-1 - n].timestamp > since or
                                (user, seq[-1 - n].platform, seq[-1 - n].item_id, seq[-1 - n].timestamp)
                                in carried_keys):
            n += 1
        if n:
            new[user] = seq[len(seq) - n:]
    eligible = sorted(u for u in new if len(everything.sequences[u]) > 1 and new[u][-1].timestamp > since)
    picked = random.Random(seed).sample(eligible, min(holdout_users + tune_users, len(eligible)))
    sequences, held = dict(everything.sequences), {}
    for user in picked:
        seq = everything.sequences[user]
        found = cases_at(user, seq, [len(seq) - 1], "test")
        if not found:  # the newest event shares its time with every earlier one: nothing to predict it from
            continue
        held[user] = found
        sequences[user], new[user] = seq[:-1], new[user][:-1]
    judged = set(picked[:holdout_users])
    cases = [c for user in sorted(held) if user in judged for c in held[user]]
    tune = [c for user in sorted(held) if user not in judged for c in held[user]]
    new = {u: items for u, items in new.items() if items}
    return Slice(TrainData(sequences, everything.catalogs, everything.titles), new, cases, tune)


def judge(champion: Pipeline, challenger: Pipeline, cases: Sequence[EvalCase], *, seed: int = 0) -> Judgement:
    """NDCG@10 of both on ``cases`` (full ranking of each one's catalog, history excluded), paired bootstrap."""
    if not cases:
        raise GenrecError("no held-out case to judge the challenger on: too few users with new events")
    values = [case_metrics(_ranks(p, cases), ks=(10,))["NDCG@10"] for p in (champion, challenger)]
    estimate = bootstrap({"difference": values[1] - values[0]}, seed=seed)["difference"]
    return Judgement(len(cases), float(values[0].mean()), float(values[1].mean()), estimate.mean, estimate.low,
                     estimate.high)


def _ranks(pipeline: Pipeline, cases: Sequence[EvalCase]) -> np.ndarray:
    """Ranks of the targets; a case on a platform the pipeline does not know, or whose target is not in its
    catalog (an item added since it was fitted), counts as a miss."""
    catalogs = next(iter(pipeline.sources.values())).catalogs
    items = {platform: set(catalog) for platform, catalog in catalogs.items()}
    known = [i for i, c in enumerate(cases) if c.target in items.get(c.platform, ())]
    ranks = np.full(len(cases), np.inf)
    if known:
        ranks[known] = rank_cases(pipeline, [cases[i] for i in known], catalogs)
    return ranks


@dataclass(frozen=True)
class Outcome:
    """What one refresh did: the new version (None: nothing new to learn), its judgement, whether it serves."""

    version: Version | None
    judgement: Judgement | None
    promoted: bool
    new_events: int

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version.name if self.version else None,
                "parent": self.version.parent if self.version else None, "new_events": self.new_events,
                "sources": self.version.sources if self.version else {},
                "judgement": self.judgement.to_dict() if self.judgement else None, "promoted": self.promoted}


def refresh(store, registry: Registry, *, steps: int = 10_000, holdout_users: int = 200, tune_users: int = 0,
            seed: int = 0, promote: bool = True, embedder: object | None = None) -> Outcome:
    """Refresh the registry's champion with the store's new events into a challenger version (its fusion tuned
    again on ``tune_users`` users' newest events when the spec searches it), judge it, and promote it when it is
    not worse (and ``promote``)."""
    champion_version = registry.champion()
    if champion_version is None:
        registry.champion_path()  # raises the registry's "no champion" error
    folder = registry.path(champion_version.name)
    champion = Pipeline.load(folder, store=store, embedder=embedder)
    platforms = list(next(iter(champion.sources.values())).catalogs)
    everything = snapshot(store, platforms)
    part = split_new(everything, champion_version.window_end, carried=champion_version.holdout,
                     holdout_users=holdout_users, tune_users=tune_users if champion.searches_fusion else 0, seed=seed)
    new_events = sum(len(items) for items in part.new.values()) + len(part.cases) + len(part.tune)
    if not part.cases:  # nothing after the window to judge on (held-out events wait for the next fresh ones)
        return Outcome(None, None, False, new_events)
    challenger = Pipeline.load(folder, store=store, embedder=embedder)
    how = challenger.refresh(part.train, part.new, steps=steps, valid_cases=part.tune)
    challenger.share_scorer(champion)  # both judged with one loaded LLM
    judgement = judge(champion, challenger, part.cases, seed=seed)
    window_end = max((x.timestamp for seq in everything.sequences.values() for x in seq), default=0.0)
    version = registry.add(challenger, origin="refresh", parent=champion_version.name, window_end=window_end,
                           holdout=part.held_out(), metrics=judgement.to_dict(), sources=how,
                           decision={"promote": judgement.promote and promote,
                                     "rule": "promoted unless the paired NDCG@10 interval is entirely below 0",
                                     "new_events": new_events, "steps": steps, "tune_cases": len(part.tune),
                                     "fusion": challenger.fusion.to_dict()})
    promoted = judgement.promote and promote
    if promoted:
        registry.promote(version.name)
    return Outcome(version, judgement, promoted, new_events)


def register(registry: Registry, pipeline: Pipeline, *, window_end: float, holdout: list[list[Any]] | None = None,
             metrics: Mapping[str, Any] | None = None) -> Version:
    """Add a freshly fitted pipeline as a version and make it the champion."""
    version = registry.add(pipeline, origin="fit", window_end=window_end, holdout=holdout,
                           metrics=dict(metrics or {}))
    registry.promote(version.name, reason="registered")
    return version
