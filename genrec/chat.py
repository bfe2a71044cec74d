"""Chat-style recommendation: a message in a conversation -> grounded recommendations with rationales.

One turn is ``plan`` (understand the message: ``genrec.intent``; resolve what it refers to; decide what to ask
for) then ``answer`` (get the candidates, re-rank them towards what was asked, apply exclusions, explain, remember
the answer); ``ChatEngine.chat`` does both.

**Candidates come from the recommendation pipeline** that serves ``POST /v1/recommend`` for the platform
(``genrec.pipeline.serving.Pipelines``: a configured pipeline, or the data set's default one): its pooled, fused
ranking of the user's history, without the items the conversation excludes. A plain request ("some movies
please") answers exactly the pipeline's top ``k``; each item keeps the pipeline's fused score, every source's own
score and the LLM's, and its rationale comes from the pipeline's explain stage (``rationale_source``: ``llm`` or
``template``). A platform no pipeline answers (``Pipelines.handles`` is false, or the engine has no
``pipelines``) keeps the generate-then-ground ``Recommender``: ``plan`` then returns its ``Request``, which a server
batches with the requests of other turns, and ``answer`` takes the recommender's list.

- **Reference items** ("like the pens I bought", "more like the second one") become a *focus*: items of the
  previous answer, of the user's history (matched by words), of the catalog (exact title) or, failing those, the
  text itself. Candidates are then more of the pipeline's (or recommender's) list plus the catalog neighbours of
  the focus (ranked by the pipeline too, through its ``candidates``), ordered by cosine similarity to the focus
  (and to the constraint words, "for sketching"); ``similarity`` says how close each item is.
- **Exclusions** ("no pencils") drop items whose titles contain the words; rejected items ("not that one", "not
  the third one") are never shown again in the conversation. "That one" is the item the conversation is about:
  the one the last follow-up referred to, else the first item of the last answer.
- **Follow-ups** keep the platform, the focus and the constraints of the conversation: "not that one" keeps the
  rest of the previous answer and replaces the rejected item; "more" and "more like ..." show only new items.

Conversations live in memory (``Conversations``), expire after ``ttl_seconds`` and are bound to their user.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np

from genrec.data.schema import HistoryItem
from genrec.errors import GenrecError, NotFoundError
from genrec.intent import CatalogVocabulary, Intent, IntentExtractor, content_words, stem, words
from genrec.pipeline import Pipeline, ScoredItem
from genrec.pipeline.fitting import history_context
from genrec.recommender import Recommendation, RecommendationList, Recommender, Request

Origin = Literal["answer", "history", "catalog", "text"]
CONSTRAINT_WEIGHT = 0.7  # weight of the constraint words against the reference items in the focus direction
MAX_HISTORY_REFERENCES = 3
MAX_MESSAGE_CHARS = 1000


@dataclass(frozen=True)
class FocusItem:
    """Something the user wants more of: an item (of an answer, the history or the catalog) or a text."""

    title: str
    origin: Origin
    platform: str | None = None
    item_id: str | None = None


@dataclass(frozen=True)
class ChatTurn:
    user_id: str
    message: str
    conversation_id: str | None = None
    k: int = 5
    explain: bool = True


@dataclass
class Conversation:
    id: str
    user_id: str
    platform: str | None = None
    items: list[Recommendation] = field(default_factory=list)
    shown: set[str] = field(default_factory=set)
    rejected: set[str] = field(default_factory=set)
    focus: list[FocusItem] = field(default_factory=list)
    constraints: tuple[str, ...] = ()
    exclusions: tuple[str, ...] = ()
    turns: int = 0
    expires_at: float = 0.0

    def current(self) -> Recommendation | None:
        """The item the conversation is about: the answer item last referred to, else the top of the answer."""
        for focus in self.focus:
            for item in self.items:
                if focus.origin == "answer" and item.item_id == focus.item_id:
                    return item
        return self.items[0] if self.items else None


class Conversations:
    """Server-side conversations: thread-safe, expiring after ``ttl_seconds``, at most ``max_conversations``
    (the least recently used go first)."""

    def __init__(self, ttl_seconds: float = 1800.0, max_conversations: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_conversations = max_conversations
        self.clock = clock
        self._items: OrderedDict[str, Conversation] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, user_id: str, conversation_id: str | None = None) -> Conversation:
        """The conversation ``conversation_id`` of ``user_id`` (``NotFoundError`` when unknown, expired or another
        user's), or a new one."""
        now = self.clock()
        with self._lock:
            self._expire(now)
            if conversation_id is None:
                conversation = Conversation(secrets.token_urlsafe(12), user_id)
                while len(self._items) >= self.max_conversations:
                    self._items.popitem(last=False)
            else:
                conversation = self._items.get(conversation_id)
                if conversation is None or conversation.user_id != user_id:
                    raise NotFoundError(f"unknown or expired conversation {conversation_id!r} for user {user_id!r}")
            conversation.expires_at = now + self.ttl_seconds
            self._items[conversation.id] = conversation
            self._items.move_to_end(conversation.id)
            return conversation

    def __len__(self) -> int:
        with self._lock:
            self._expire(self.clock())
            return len(self._items)

    def _expire(self, now: float) -> None:
        for key in [key for key, c in self._items.items() if c.expires_at <= now]:
            del self._items[key]


@dataclass
class ChatPlan:
    """A planned turn: what was understood and what answers it: ``request`` (the candidates wanted: how many, which
    items not) goes to the platform's pipeline, or, when ``pipelined`` is false, to the recommender (``requests``).
    """

    turn: ChatTurn
    conversation: Conversation
    intent: Intent
    platform: str
    history: list[HistoryItem]
    focus: list[FocusItem]
    constraints: tuple[str, ...]
    exclusions: tuple[str, ...]
    exclude: set[str]
    rejected: list[Recommendation]
    keep: list[Recommendation]
    need: int
    request: Request
    pipelined: bool

    @property
    def requests(self) -> list[Request]:
        """What the recommender must answer for this turn (nothing when the pipeline does)."""
        return [] if self.pipelined else [self.request]


@dataclass
class ChatReply:
    conversation_id: str
    platform: str
    reply: str
    intent: Intent
    focus: list[FocusItem]
    items: list[Recommendation]
    pipeline: str | None = None  # the pipeline that proposed and ranked the candidates (None: the recommender)
    version: str | None = None  # its registry version

    def to_dict(self) -> dict:
        return {"conversation_id": self.conversation_id, "platform": self.platform, "reply": self.reply,
                "intent": self.intent.to_dict(), "focus": [asdict(f) for f in self.focus],
                "pipeline": self.pipeline, "version": self.version,
                "items": [asdict(item) | {"evidence": list(item.evidence)} for item in self.items]}


class ChatEngine:
    """Turns chat messages into recommendations from ``pipelines`` (``genrec.pipeline.serving.Pipelines``) for
    the platforms they answer, else from ``recommender``, whose LLM, embedder and catalog indexes also understand
    the messages; ``use_llm=False`` extracts with rules only.

    ``pool``: how many candidates per wanted item are re-ranked when the message asks for something specific.
    """

    def __init__(self, recommender: Recommender, conversations: Conversations | None = None, *,
                 use_llm: bool = True, pool: int = 3, pipelines=None) -> None:
        self.recommender = recommender
        self.conversations = conversations or Conversations()
        self.use_llm = use_llm
        self.pool = pool
        self.pipelines = pipelines
        self._vocabulary: tuple[tuple, CatalogVocabulary] | None = None

    @property
    def store(self):
        return self.recommender.store

    def chat(self, turn: ChatTurn) -> ChatReply:
        plan = self.plan(turn)
        return self.answer(plan, self.recommender.recommend_many(plan.requests))

    # -- understanding ----------------------------------------------------------------------------------
    def plan(self, turn: ChatTurn) -> ChatPlan:
        message = " ".join(turn.message.split())
        if not message:
            raise GenrecError("the message is empty")
        if len(message) > MAX_MESSAGE_CHARS:
            raise GenrecError(f"the message is longer than {MAX_MESSAGE_CHARS} characters")
        if turn.k < 1:
            raise GenrecError(f"k must be at least 1, got {turn.k}")
        if not self.store.has_user(turn.user_id):
            raise NotFoundError(f"unknown user {turn.user_id!r}: the store has no events for this user")
        conversation = self.conversations.open(turn.user_id, turn.conversation_id)
        platforms = self.store.platforms()
        extractor = IntentExtractor(self.recommender.llm if self.use_llm else None, self.recommender.templates)
        intent = extractor.extract(message, platforms)
        previous = conversation.items
        if intent.follow_up != "none" and not previous:
            intent = replace(intent, follow_up="none", reference_positions=(), rejected_positions=(),
                             rejects_current=False)
        follow_up = intent.follow_up != "none"
        history = self.store.history(turn.user_id)
        platform = self._platform(intent, conversation, history, message)

        focus = [FocusItem(item.title, "answer", item.platform, item.item_id)
                 for item in _at_positions(previous, intent.reference_positions, conversation.current())]
        for text in intent.references:
            focus.extend(self._resolve(text, history, platform))
        if not focus and follow_up and intent.follow_up != "more_like":
            focus = list(conversation.focus)
        constraints = intent.constraints or (conversation.constraints if follow_up else ())
        exclusions = tuple(dict.fromkeys(conversation.exclusions + intent.exclusions))

        rejected = _at_positions(previous, intent.rejected_positions, None)
        if intent.rejects_current and conversation.current() is not None:
            rejected.append(conversation.current())
        rejected_ids = {item.item_id for item in rejected}
        exclude = set(conversation.rejected) | rejected_ids
        keep: list[Recommendation] = []
        if intent.follow_up == "reject" and platform == conversation.platform:
            keep = [item for item in previous if item.item_id not in rejected_ids]
        if follow_up:
            exclude |= conversation.shown
        need = max(1, turn.k - len(keep)) if keep else turn.k
        specific = bool(focus or constraints or exclusions)
        request = Request(platform, user_id=turn.user_id, k=need * self.pool if specific else need,
                          explain=turn.explain, exclude=frozenset(exclude),
                          instruction=_instruction(focus, constraints, exclusions))
        pipelined = self.pipelines is not None and self.pipelines.handles(platform)
        return ChatPlan(turn, conversation, intent, platform, history, focus, constraints, exclusions, exclude,
                        rejected, keep, need, request, pipelined)

    def _platform(self, intent: Intent, conversation: Conversation, history: list[HistoryItem],
                  message: str) -> str:
        """Named by the user > the conversation's (follow-ups) > the model's guess > the catalogs' words >
        the conversation's > the user's latest platform."""
        if intent.platform and intent.sources.get("platform") == "rules":
            return intent.platform
        if intent.follow_up != "none" and conversation.platform:
            return conversation.platform
        if intent.platform:
            return intent.platform
        voted = self.vocabulary().vote(" ".join([*intent.constraints, *intent.references]) or message)
        return voted or conversation.platform or history[-1].platform

    def vocabulary(self) -> CatalogVocabulary:
        sizes = self.store.catalog_sizes()
        key = tuple(sorted(sizes.items()))
        if self._vocabulary is None or self._vocabulary[0] != key:
            titles = {name: self.store.catalog(name)["title"].tolist() for name in sizes}
            self._vocabulary = (key, CatalogVocabulary(titles))
        return self._vocabulary[1]

    def _resolve(self, text: str, history: list[HistoryItem], platform: str) -> list[FocusItem]:
        """A reference text -> history items that contain its words, else a catalog item of that exact title,
        else the text itself."""
        wanted = {stem(w) for w in content_words(text)}
        if wanted:
            matches = [h for h in reversed(history)
                       if h.title and wanted <= {stem(w) for w in words(h.title)}]
            unique = list({h.item_id: h for h in matches}.values())[:MAX_HISTORY_REFERENCES]
            if unique:
                return [FocusItem(h.title, "history", h.platform, h.item_id) for h in unique]
        ids = self.recommender.index(platform).lookup_title(text)
        if ids:
            index = self.recommender.index(platform)
            return [FocusItem(index.title(ids[0]), "catalog", platform, ids[0])]
        return [FocusItem(text, "text")]

    # -- answering --------------------------------------------------------------------------------------
    def answer(self, plan: ChatPlan, results: Sequence[RecommendationList] = ()) -> ChatReply:
        """The reply to a planned turn; ``results``: the recommender's answers to ``plan.requests``."""
        index = self.recommender.index(plan.platform)
        direction = self._direction(plan)
        pipeline, scored = None, {}
        if plan.pipelined:
            pipeline, ranked = self._pipeline_candidates(plan, direction)
            scored = {item.item_id: item for item in ranked}
            candidates = [Recommendation.from_scored(item) for item in ranked]
        else:
            candidates = list(results[0].items)
            if direction is not None:
                candidates += self._neighbours(plan, direction, {c.item_id for c in candidates})
        if direction is not None:
            sims = index.vectors([c.item_id for c in candidates]) @ direction
            order = sorted(range(len(candidates)), key=lambda i: (-round(float(sims[i]), 6), i))
            # a pipeline's items keep its fused score; the recommender's are scored by what ranked them here
            candidates = [replace(candidates[i], similarity=float(sims[i]),
                                  score=candidates[i].score if plan.pipelined else float(sims[i])) for i in order]
        stems = {stem(w) for text in plan.exclusions for w in content_words(text)}
        fresh = [c for c in candidates if not stems & {stem(w) for w in words(c.title)}][: plan.need]
        if pipeline is not None and plan.turn.explain and fresh:
            context = history_context(plan.turn.user_id, plan.platform, plan.history)
            explained = pipeline.explain(context, [scored[item.item_id] for item in fresh])
            fresh = [replace(item, rationale=x.rationale, rationale_source=x.rationale_source, evidence=x.evidence)
                     for item, x in zip(fresh, explained, strict=True)]
        items = [replace(item, rank=rank) for rank, item in enumerate([*plan.keep, *fresh], 1)]

        conversation = plan.conversation
        conversation.platform = plan.platform
        conversation.items = items
        conversation.shown |= {item.item_id for item in items}
        conversation.rejected |= {item.item_id for item in plan.rejected}
        conversation.focus = plan.focus
        conversation.constraints = plan.constraints
        conversation.exclusions = plan.exclusions
        conversation.turns += 1
        return ChatReply(conversation.id, plan.platform, _reply(plan, items), plan.intent, plan.focus, items,
                         pipeline=pipeline.name if pipeline is not None else None,
                         version=pipeline.version if pipeline is not None else None)

    def _pipeline_candidates(self, plan: ChatPlan, direction: np.ndarray | None) -> tuple[Pipeline, list[ScoredItem]]:
        """The platform's pipeline and its ranking of the user's history (``plan.request.k`` items, none of
        ``plan.exclude``); with a ``direction``, the catalog neighbours of what was asked join them and the pipeline
        ranks them all together (``candidates``), so every candidate carries the pipeline's scores."""
        ask = dict(user_id=plan.turn.user_id, history=plan.history, explain=False, exclude=sorted(plan.exclude))
        pipeline, ranked = self.pipelines.recommend(plan.platform, k=plan.request.k, **ask)
        if direction is not None:
            taken = [item.item_id for item in ranked]
            known = pipeline.titles  # (platform, item) -> title: the pipeline's catalog
            extra = [item for item in self._neighbour_ids(plan, direction, set(taken))[0]
                     if (plan.platform, item) in known]
            if extra:
                union = taken + extra
                pipeline, ranked = self.pipelines.recommend(plan.platform, k=len(union), candidates=union, **ask)
        return pipeline, ranked

    def _direction(self, plan: ChatPlan) -> np.ndarray | None:
        """The unit direction of what was asked: the focus items' mean, plus the constraint words."""
        texts = [f.title for f in plan.focus] + list(plan.constraints)
        if not texts:
            return None
        vectors = self.recommender.embedder.encode(texts)
        weights = [1.0] * len(plan.focus) + [CONSTRAINT_WEIGHT * max(1, len(plan.focus))] * len(plan.constraints)
        mean = np.average(vectors, axis=0, weights=weights)
        norm = float(np.linalg.norm(mean))
        return (mean / norm).astype(np.float32) if norm > 1e-12 else None

    def _neighbour_ids(self, plan: ChatPlan, direction: np.ndarray, taken: set[str]) -> tuple[list[str], list[float]]:
        """The ids of the catalog items closest to the focus direction (none shown, owned or excluded) and their
        cosine similarities."""
        index = self.recommender.index(plan.platform)
        seen = {h.item_id for h in plan.history if h.platform == plan.platform}
        ids, scores = index.search(direction, plan.need * self.pool, exclude_ids=plan.exclude | seen | taken)
        return list(ids[0]), scores[0].tolist()

    def _neighbours(self, plan: ChatPlan, direction: np.ndarray, taken: set[str]) -> list[Recommendation]:
        """Catalog items closest to the focus direction, with evidence from the user's history (the
        recommender's path; a pipeline's explain stage finds its own evidence)."""
        index = self.recommender.index(plan.platform)
        ids, scores = self._neighbour_ids(plan, direction, taken)
        titles, vectors, _ = self.recommender.history_vectors(plan.history)
        about = plan.focus[0].title if plan.focus else plan.constraints[0]
        out = []
        for item_id, score in zip(ids, scores, strict=True):
            evidence: tuple[str, ...] = ()
            if len(vectors):
                sims = vectors @ index.vectors([item_id])[0]
                evidence = tuple(titles[j] for j in np.argsort(-sims)[:2])
            rationale = f'Close to "{about}", as you asked.' if plan.turn.explain else None
            out.append(Recommendation(rank=0, item_id=item_id, title=index.title(item_id), platform=plan.platform,
                                      score=float(score), similarity=float(score), source="focus",
                                      generated_text=None, rationale=rationale, evidence=evidence))
        return out


def _at_positions(items: Sequence[Recommendation], positions: Sequence[int],
                  current: Recommendation | None) -> list[Recommendation]:
    """Items of an answer at 1-based ``positions`` (-1: the last; 0: ``current``); out-of-range ones are skipped."""
    found = []
    for position in positions:
        if position == 0:
            item = current
        elif position == -1:
            item = items[-1] if items else None
        else:
            item = items[position - 1] if 0 < position <= len(items) else None
        if item is not None and item not in found:
            found.append(item)
    return found


def _instruction(focus: Sequence[FocusItem], constraints: Sequence[str], exclusions: Sequence[str]) -> str | None:
    parts = [f"something like {', '.join(f.title for f in focus[:2])}"] if focus else []
    parts += list(constraints)
    parts += [f"not {text}" for text in exclusions]
    return "; ".join(parts) or None


def _reply(plan: ChatPlan, items: Sequence[Recommendation]) -> str:
    def quoted(text: str) -> str:
        return f'"{text}"'

    if not items:
        return f"I found nothing more on {plan.platform} that fits."
    if plan.rejected:
        head = f"Dropped {', '.join(quoted(item.title) for item in plan.rejected)}. Here is the updated list"
    elif plan.intent.follow_up == "more_like" and plan.focus:
        head = f"More like {quoted(plan.focus[0].title)}"
    elif plan.intent.follow_up == "more":
        head = "More picks"
    else:
        head = f"Here {'are' if len(items) != 1 else 'is'} {len(items)} pick{'s' if len(items) != 1 else ''}"
        if plan.focus:
            head += f" like {', '.join(quoted(f.title) for f in plan.focus[:2])}"
    head += f" on {plan.platform}"
    if plan.constraints and not plan.rejected:
        head += f", for {', '.join(quoted(c) for c in plan.constraints)}"
    if plan.exclusions:
        head += f", without {', '.join(quoted(e) for e in plan.exclusions)}"
    return head + "."
