"""Typed seams of the evaluation harness: what a protocol produces and what a method consumes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Interaction:
    """One event of a history, reduced to what recommenders use."""

    platform: str
    item_id: str
    timestamp: float  # seconds since the epoch (sequence positions for position-only data sets)
    value: float | None = None


@dataclass(frozen=True)
class EvalCase:
    """One prediction to make: the user's next item on ``platform``.

    ``history`` holds every event strictly before the target's timestamp, on every platform, in time order
    (equal timestamps are never history). Methods that use target-platform history only filter it themselves.
    """

    user_id: str
    platform: str
    target: str
    history: tuple[Interaction, ...]
    split: str = "test"  # "test" or "valid" ("train": a training example seen as a case, e.g. for hard negatives)
    timestamp: float = 0.0

    def history_on(self, platform: str) -> tuple[Interaction, ...]:
        return tuple(x for x in self.history if x.platform == platform)


@dataclass
class TrainData:
    """What learned components may see: time-ordered sequences of train interactions per user.

    Built by the protocol so that no test or validation target, and nothing after it, is in it.
    """

    sequences: dict[str, list[Interaction]]
    catalogs: dict[str, list[str]]  # platform -> item ids (the full ranking space)
    titles: dict[tuple[str, str], str] = field(default_factory=dict)  # (platform, item_id) -> title
