"""A user's cross-platform history rendered as a natural-language profile, within a token budget.

``ProfileBuilder.build(history)`` groups the history by platform (in order of first appearance), keeps the most
recent ``max_items_per_platform`` items of each, renders them with the ``profile.j2`` template and, while the
text is longer than ``token_budget`` tokens of the model's tokenizer, drops the oldest shown item of the whole
history. Items are always dropped whole; each platform's summary (counts, top categories) stays.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from genrec.data.schema import HistoryItem, Platform, default_verb
from genrec.errors import GenrecError
from genrec.prompts import PromptTemplates

PROFILE_TEMPLATE = "profile.j2"
TOP_CATEGORIES = 3
CATEGORY_SEPARATOR = "|"  # multi-valued categories, e.g. MovieLens genres "Comedy|Drama"


class EmptyHistoryError(GenrecError, ValueError):
    """A profile was requested for a history without any items."""


class ProfileTooLongError(GenrecError, ValueError):
    """The per-platform summaries alone do not fit in the token budget."""


@dataclass(frozen=True)
class ProfileEntry:
    """One shown item: its title (or ``item <id>`` when the catalog has none) and the user's rating if any."""

    title: str
    rating: float | None
    item_id: str


@dataclass(frozen=True)
class PlatformSection:
    """What the profile says about one platform.

    ``items`` are the shown items, oldest first; ``total`` counts the platform's whole history and ``dropped``
    the items not shown (over the per-platform cap or the token budget).
    """

    platform: str
    verb: str
    items: tuple[ProfileEntry, ...]
    total: int
    top_categories: tuple[str, ...]

    @property
    def dropped(self) -> int:
        return self.total - len(self.items)


@dataclass(frozen=True)
class Profile:
    """A rendered profile: its sections, its text, the text's length in tokens and how many items it left out."""

    sections: tuple[PlatformSection, ...]
    text: str
    tokens: int
    dropped: int

    def section(self, platform: str) -> PlatformSection | None:
        return next((s for s in self.sections if s.platform == platform), None)


TokenCounter = Callable[[str], int]


def as_token_counter(tokenizer_or_counter: object) -> TokenCounter:
    """A ``str -> int`` token counter from an ``LLM`` (``count_tokens``), a HF tokenizer or a callable."""
    count_tokens = getattr(tokenizer_or_counter, "count_tokens", None)
    if callable(count_tokens):
        return count_tokens
    encode = getattr(tokenizer_or_counter, "encode", None)
    if callable(encode):
        return lambda text: len(encode(text, add_special_tokens=False))
    if callable(tokenizer_or_counter):
        return tokenizer_or_counter  # type: ignore[return-value]
    raise TypeError("expected an LLM, a tokenizer with .encode(), or a callable str -> int")


class ProfileBuilder:
    """Builds ``Profile`` objects from time-ordered cross-platform histories.

    ``verbs`` maps platform names to the verb used for them ("watched", "bought", ...); it takes precedence over
    a ``Platform``'s verb, which takes precedence over genrec's default verbs.
    """

    def __init__(
        self,
        tokenizer_or_counter: object,
        token_budget: int = 512,
        max_items_per_platform: int = 20,
        verbs: Mapping[str, str] | None = None,
        templates: PromptTemplates | None = None,
    ) -> None:
        if token_budget <= 0 or max_items_per_platform <= 0:
            raise ValueError("token_budget and max_items_per_platform must be positive")
        self.count_tokens = as_token_counter(tokenizer_or_counter)
        self.token_budget = token_budget
        self.max_items_per_platform = max_items_per_platform
        self.verbs = dict(verbs or {})
        self.templates = templates or PromptTemplates()

    def verb(self, platform: str, platforms: Mapping[str, Platform]) -> str:
        if platform in self.verbs:
            return self.verbs[platform]
        known = platforms.get(platform)
        if known is not None and known.verb:
            return known.verb
        return default_verb(platform)

    def build(self, history: Sequence[HistoryItem], platforms: Mapping[str, Platform] | None = None) -> Profile:
        """The profile of ``history`` (time-ordered; several platforms allowed)."""
        if not history:
            raise EmptyHistoryError("cannot describe an empty history: the user has no events")
        platforms = platforms or {}
        history = sorted(history, key=lambda item: item.timestamp)  # stable: equal timestamps keep their order
        by_platform: dict[str, list[HistoryItem]] = {}
        for item in history:
            by_platform.setdefault(item.platform, []).append(item)
        candidates = [item for items in by_platform.values() for item in items[-self.max_items_per_platform :]]
        candidates.sort(key=lambda item: item.timestamp)  # the drop order: oldest first, across platforms

        def render(keep: int) -> Profile:
            shown = {id(item) for item in candidates[len(candidates) - keep :]}
            sections = tuple(
                self._section(name, items, [i for i in items if id(i) in shown], platforms)
                for name, items in by_platform.items()
            )
            text = self.templates.render(PROFILE_TEMPLATE, sections=sections)
            return Profile(sections, text, self.count_tokens(text), len(history) - keep)

        # The text only grows with the number of shown items: binary-search the largest count that fits.
        low, high = 0, len(candidates)
        best = render(high)
        if best.tokens <= self.token_budget:
            return best
        best = render(low)
        if best.tokens > self.token_budget:
            raise ProfileTooLongError(
                f"token budget {self.token_budget} is too small: the per-platform summaries alone take "
                f"{best.tokens} tokens"
            )
        while high - low > 1:
            middle = (low + high) // 2
            profile = render(middle)
            if profile.tokens <= self.token_budget:
                low, best = middle, profile
            else:
                high = middle
        return best

    def _section(
        self,
        platform: str,
        items: list[HistoryItem],
        shown: list[HistoryItem],
        platforms: Mapping[str, Platform],
    ) -> PlatformSection:
        categories = Counter(
            part.strip()
            for item in items
            if item.category
            for part in item.category.split(CATEGORY_SEPARATOR)
            if part.strip()
        )
        return PlatformSection(
            platform=platform,
            verb=self.verb(platform, platforms),
            items=tuple(
                ProfileEntry(
                    item.title.strip() if item.title and item.title.strip() else f"item {item.item_id}",
                    item.value,
                    item.item_id,
                )
                for item in shown
            ),
            total=len(items),
            top_categories=tuple(name for name, _ in categories.most_common(TOP_CATEGORIES)),
        )
