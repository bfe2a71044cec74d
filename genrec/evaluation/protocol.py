"""Evaluation protocols: from the event store to test/validation cases and the training data methods may see.

Targets (``targets``):

- ``last-per-platform`` (temporal leave-last-out): for every user and target platform, test = the user's last
  event on that platform (by time, then arrival), validation = the one before it on that platform;
- ``final-timestamp``: test = every event at the user's last timestamp (one case each; amazon-arts-office keeps
  both line targets there), validation = the events at the last timestamp before it.

In both, a case's history is every event of the user strictly earlier than the target, on every platform (equal
timestamps are never history).

Users (``users``):

- ``all``: every user is evaluated; learned components see each user's events before that user's earliest
  validation/test target;
- ``dataset``: the data set's own split (test / valid / train users); ``random``: a seeded split with
  ``valid_fraction`` / ``test_fraction``. Learned components see only train users' events (validation users
  serve early stopping and model selection), never a validation or test user's.

``exclude_from_training`` removes the named platforms' events from what learned components see (the zero-shot
platform ablation); catalogs stay, as when a new platform's catalog is registered.
"""

from __future__ import annotations

import bisect
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np

from genrec.data.store import Store
from genrec.errors import GenrecError
from genrec.pipeline.types import EvalCase, Interaction, TrainData

TARGETS = ("last-per-platform", "final-timestamp")
USERS = ("all", "dataset", "random")
RANKINGS = ("full", "sampled")


@dataclass
class Protocol:
    targets: str = "last-per-platform"
    users: str = "all"
    platforms: list[str] = field(default_factory=list)  # target platforms; empty = every platform of the data
    ranking: str = "full"
    negatives: int = 99
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    exclude_from_training: list[str] = field(default_factory=list)
    seed: int = 2020
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])

    def __post_init__(self) -> None:
        for name, value, allowed in (("targets", self.targets, TARGETS), ("users", self.users, USERS),
                                     ("ranking", self.ranking, RANKINGS)):
            if value not in allowed:
                raise ValueError(f"protocol.{name} = {value!r}; expected one of {', '.join(allowed)}")

    @classmethod
    def from_dict(cls, data: dict) -> Protocol:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown protocol option(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        users = {"all": "all users", "dataset": "the data set's user split",
                 "random": f"a random user split (valid {self.valid_fraction}, test {self.test_fraction})"}
        ranking = "full target-platform catalog" if self.ranking == "full" else \
            f"1 positive + {self.negatives} sampled negatives"
        return (f"{self.targets} targets, {users[self.users]}, ranking over the {ranking}, history items "
                f"excluded, seed {self.seed}")


@dataclass
class EvalData:
    """What a protocol produces for one data set."""

    protocol: Protocol
    test: list[EvalCase]
    valid: list[EvalCase]
    train: TrainData
    platforms: list[str]  # target platforms

    def summary(self) -> dict:
        per_platform = defaultdict(int)
        for case in self.test:
            per_platform[case.platform] += 1
        return {"test_cases": len(self.test), "valid_cases": len(self.valid),
                "test_users": len({c.user_id for c in self.test}),
                "train_users": len(self.train.sequences),
                "train_interactions": sum(len(s) for s in self.train.sequences.values()),
                "test_cases_per_platform": dict(per_platform)}


def build(store: Store, protocol: Protocol, data_platforms: list[str]) -> EvalData:
    """Cases and training data for ``data_platforms`` (the data set's platforms) under ``protocol``."""
    targets = protocol.platforms or data_platforms
    everything = snapshot(store, data_platforms)
    catalogs, titles, sequences = everything.catalogs, everything.titles, everything.sequences
    roles = _user_roles(store, protocol, sorted(sequences))
    test, valid, train = [], [], {}
    for user, seq in sequences.items():
        role = roles.get(user)
        if role is None:
            continue
        times = [x.timestamp for x in seq]
        test_idx, valid_idx = _target_indices(seq, protocol.targets, targets)
        if role in ("all", "test"):
            test += _cases(user, seq, times, test_idx, "test")
        if role == "all":
            valid += _cases(user, seq, times, valid_idx, "valid")
            cut = min(test_idx + valid_idx, default=len(seq))
            train[user] = seq[:cut]
        elif role == "valid":
            valid += _cases(user, seq, times, test_idx, "valid")
        elif role == "train":
            train[user] = list(seq)
    if protocol.exclude_from_training:
        excluded = set(protocol.exclude_from_training)
        train = {u: [x for x in s if x.platform not in excluded] for u, s in train.items()}
    train = {u: s for u, s in train.items() if s}
    return EvalData(protocol, test, valid, TrainData(train, catalogs, titles, everything.details), targets)


def item_details(catalog) -> list[str]:
    """Each catalog row's text beside its title (a store catalog frame): its category, attributes and description,
    where present, joined by ". " ("" for none)."""
    columns = [catalog[c] for c in ("category", "attributes", "description") if c in catalog]
    return [". ".join(str(v).strip() for v in values if isinstance(v, str) and v.strip())
            for values in zip(*columns, strict=True)] if columns else [""] * len(catalog)


def snapshot(store: Store, platforms: list[str]) -> TrainData:
    """Every stored event of ``platforms`` as time-ordered sequences per user, with their catalogs, titles and the
    items' other text (``item_details``)."""
    catalogs, titles, details = {}, {}, {}
    for platform in platforms:
        catalog = store.catalog(platform)
        catalogs[platform] = catalog["item_id"].tolist()
        titles.update({(platform, i): t for i, t in zip(catalog["item_id"], catalog["title"], strict=True)})
        details.update({(platform, i): d for i, d in zip(catalog["item_id"], item_details(catalog), strict=True) if d})
    return TrainData(interaction_sequences(store.events(platforms)), catalogs, titles, details)


def cases_at(user: str, seq: list[Interaction], indices: list[int], split: str) -> list[EvalCase]:
    """Cases predicting ``seq[i]`` for each ``i`` in ``indices`` from the events strictly before it."""
    return _cases(user, seq, [x.timestamp for x in seq], indices, split)


def interaction_sequences(events) -> dict[str, list[Interaction]]:
    """Per user, every event as an Interaction in (time, arrival) order."""
    seconds = events["timestamp"].to_numpy(dtype="datetime64[us]").astype(np.int64) / 1e6
    values = events["value"].to_numpy(dtype=float)
    out: dict[str, list[Interaction]] = defaultdict(list)
    for user, platform, item, ts, value in zip(events["user_id"], events["platform"], events["item_id"], seconds,
                                               values, strict=True):
        out[user].append(Interaction(platform, item, float(ts), None if np.isnan(value) else float(value)))
    return out


def _user_roles(store: Store, protocol: Protocol, users: list[str]) -> dict[str, str]:
    if protocol.users == "all":
        return dict.fromkeys(users, "all")
    if protocol.users == "dataset":
        splits = store.splits()
        roles = {u: splits[u] for u in users if u in splits}
        if not roles:
            raise GenrecError("protocol.users = 'dataset' but the store has no user split for this data set's users "
                             "(import one with `genrec data import-file FILE --kind splits`, or use users: random)")
        return roles
    shuffled = list(users)
    random.Random(protocol.seed).shuffle(shuffled)
    n_test = round(len(users) * protocol.test_fraction)
    n_valid = round(len(users) * protocol.valid_fraction)
    return {u: "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
            for i, u in enumerate(shuffled)}


def _target_indices(seq: list[Interaction], targets: str, platforms: list[str]) -> tuple[list[int], list[int]]:
    """Positions in ``seq`` of the test targets and of the validation targets."""
    wanted = set(platforms)
    if targets == "last-per-platform":
        test, valid = [], []
        for platform in wanted:
            idx = [i for i, x in enumerate(seq) if x.platform == platform]
            if idx:
                test.append(idx[-1])
            if len(idx) > 1:
                valid.append(idx[-2])
        return sorted(test), sorted(valid)
    last = seq[-1].timestamp
    test = [i for i, x in enumerate(seq) if x.timestamp == last and x.platform in wanted]
    earlier = [x.timestamp for x in seq if x.timestamp < last]
    valid = [i for i, x in enumerate(seq) if earlier and x.timestamp == earlier[-1] and x.platform in wanted]
    return test, valid


def _cases(user: str, seq: list[Interaction], times: list[float], indices: list[int], split: str) -> list[EvalCase]:
    cases = []
    for i in indices:
        target = seq[i]
        history = tuple(seq[: bisect.bisect_left(times, target.timestamp)])
        if history:
            cases.append(EvalCase(user_id=user, platform=target.platform, history=history, target=target.item_id,
                                  split=split, timestamp=target.timestamp))
    return cases
