"""Typed seams of the recommendation pipeline: what a source reads (a ``Context``), what it learns from
(``TrainData``), what the evaluation adds to a context (``EvalCase``: a held-out target) and what a pipeline
answers (``ScoredItem``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from genrec.data.schema import HistoryItem

HistoryScope = Literal["cross", "target"]


@dataclass(frozen=True)
class Interaction:
    """One event of a history, reduced to what recommenders use."""

    platform: str
    item_id: str
    timestamp: float  # seconds since the epoch (sequence positions for position-only data sets)
    value: float | None = None


@dataclass(frozen=True)
class Context:
    """What a recommendation is asked for: a user's history (every platform, time order) and the target platform.

    Sources that read the target platform's history only (``history_scope="target"``) filter it themselves
    (``scoped_history``).
    """

    user_id: str | None
    platform: str
    history: tuple[Interaction, ...]

    def history_on(self, platform: str) -> tuple[Interaction, ...]:
        return tuple(x for x in self.history if x.platform == platform)

    def owned(self) -> set[str]:
        """The user's own items on the target platform: never recommended."""
        return {x.item_id for x in self.history if x.platform == self.platform}


@dataclass(frozen=True, kw_only=True)
class EvalCase(Context):
    """One prediction to make: the user's next item on ``platform``.

    ``history`` holds every event strictly before the target's timestamp, on every platform, in time order
    (equal timestamps are never history).
    """

    target: str
    split: str = "test"  # "test" or "valid" ("train": a training example seen as a case, e.g. for hard negatives)
    timestamp: float = 0.0


@dataclass
class TrainData:
    """What learned components may see: time-ordered sequences of train interactions per user.

    Built by the protocol (or ``genrec.pipeline.spec.snapshot`` for a live store) so that no test or validation
    target, and nothing after it, is in it.
    """

    sequences: dict[str, list[Interaction]]
    catalogs: dict[str, list[str]]  # platform -> item ids (the full ranking space)
    titles: dict[tuple[str, str], str] = field(default_factory=dict)  # (platform, item_id) -> title
    # (platform, item_id) -> the item's other text where the catalog has it: category, attributes, description
    details: dict[tuple[str, str], str] = field(default_factory=dict)


def scoped_history(context: Context, scope: HistoryScope) -> tuple[Interaction, ...]:
    """The part of ``context.history`` a component with ``scope`` may read."""
    if scope == "cross":
        return context.history
    if scope == "target":
        return context.history_on(context.platform)
    raise ValueError(f"unknown history scope {scope!r}")


@dataclass(frozen=True)
class ScoredItem:
    """One item of a pipeline's answer: its fused score, every source's own score of it, the sources that
    proposed it (it was in their top ``n``), the LLM's calibrated score, and the rationale the explain stage
    wrote."""

    rank: int
    item_id: str
    title: str
    platform: str
    score: float
    sources: dict[str, float]
    proposed_by: tuple[str, ...]
    llm: float | None = None
    rationale: str | None = None
    rationale_source: Literal["llm", "template"] | None = None
    evidence: tuple[str, ...] = ()

    @property
    def origin(self) -> str:
        """Where the item came from, e.g. ``popularity+itemknn``."""
        return "+".join(self.proposed_by)


def history_items(user_id: str, interactions: Sequence[Interaction],
                  titles: dict[tuple[str, str], str]) -> list[HistoryItem]:
    """Harness interactions as the recommender's history items, titled from the catalog (SFT data uses this too)."""
    return [HistoryItem(user_id, x.platform, x.item_id, datetime.fromtimestamp(x.timestamp, UTC).replace(tzinfo=None),
                        value=x.value, title=titles.get((x.platform, x.item_id)))
            for x in interactions]
