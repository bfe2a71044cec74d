"""The facade: ``Recommender(store).recommend(user_id or history, platform, k, explain)``.

One request reads as a straight line: store -> history -> profile -> prompt -> LLM -> parse -> ground -> ranked,
explained recommendations. Each step is its own small object (``ProfileBuilder``, ``PromptTemplates``, ``LLM``,
``CatalogIndex`` + ``Grounder``); this module only wires them and batches requests.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from functools import partial
from typing import Any, Literal

import numpy as np

from genrec.data.schema import HistoryItem, Platform
from genrec.data.store import Store
from genrec.decoding import Ban, TitleTrie, answer_tokens, beams_as_answer
from genrec.embedding import Embedder
from genrec.errors import GenrecError, NotFoundError
from genrec.grounding import (
    CatalogIndex,
    EmptyCatalogError,
    Grounder,
    GroundingResult,
    PopularityPrior,
    most_popular,
)
from genrec.llm import LLM, LLMConfig, parse_candidates, read_adapter_metadata
from genrec.profile import EmptyHistoryError, Profile, ProfileBuilder
from genrec.prompts import PromptTemplates, RecommendPrompt, format_answer

RECOMMEND_TEMPLATE = "recommend.j2"


@dataclass
class RecommenderConfig:
    """Knobs of the generate-then-ground pipeline.

    ``n_generate``: how many titles the LLM is asked for (the rest of the k places are filled from the
    catalog neighbours of the profile, then popularity); ``tokens_per_item`` bounds generation length.
    ``decoding``: ``"free"`` generation (grounding maps what the model writes to the catalog), ``"catalog"``:
    beam search constrained to the target platform's titles (``genrec.decoding``), which returns ``beams`` real
    items ranked by the model's likelihood (best with a tuned adapter, which learned to answer with a title), or
    ``"scored"``: the LLM scores a candidate set instead of searching the catalog (``score_candidates``: the
    ``n_candidates`` most popular items and the ``n_candidates`` nearest the profile, or the request's own
    ``candidates``), each by the likelihood of the first ``score_tokens`` tokens of its answer line, less
    ``calibration`` times that line's likelihood after the same prompt with no profile (``title_priors``: what the
    model expects of any user; 0 ranks by the raw likelihood, 1 by how much this user's history raises it).
    ``title_prior``: whose expectation that is, the ``"model"`` that scores (with its adapter) or its ``"base"``
    model (the adapter off: the prior a calibrated ranking loss trains against, ``train.rank_calibration``).
    """

    n_generate: int = 5
    tokens_per_item: int = 14
    tokens_per_rationale: int = 24
    token_budget: int = 384
    max_items_per_platform: int = 12
    profile_items: int = 20  # history titles (most recent) whose mean embedding is the profile vector
    popularity_weight: float = 0.0
    min_similarity: float | None = None
    batch_size: int = 8
    verbs: dict[str, str] = field(default_factory=dict)
    decoding: Literal["free", "catalog", "scored"] = "free"
    beams: int = 10
    n_candidates: int = 50
    score_tokens: int = 16
    calibration: float = 0.0
    title_prior: Literal["model", "base"] = "model"

    def __post_init__(self) -> None:
        if self.decoding not in ("free", "catalog", "scored"):
            raise GenrecError(f"decoding must be 'free', 'catalog' or 'scored', got {self.decoding!r}")
        for name in ("beams", "n_candidates", "score_tokens"):
            if getattr(self, name) < 1:
                raise GenrecError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.calibration <= 1.0:
            raise GenrecError(f"calibration must be between 0 and 1, got {self.calibration}")
        if self.title_prior not in ("model", "base"):
            raise GenrecError(f"title_prior must be 'model' or 'base', got {self.title_prior!r}")

    @classmethod
    def for_adapter(cls, adapter: str | None, **overrides: Any) -> RecommenderConfig:
        """The settings a tuned adapter was trained with (its ``genrec_adapter.json``), then ``overrides``
        (``None`` values are ignored: the option was not given).

        An adapter learns from prompts of one shape (profile budget, items per platform, number of titles asked
        for); inference should build the same prompts. The ``calibration`` (and ``title_prior``) tuned for it apply too:
        key ``rerank`` (written by earlier versions' evaluation) when present, else the ones the training's
        re-ranking validation chose for the kept adapter. Without an adapter, or without metadata: the defaults.
        """
        metadata = read_adapter_metadata(adapter) if adapter else {}
        trained = dict(metadata.get("recommender", {}))
        chosen = metadata.get("rerank") or (metadata.get("metrics") or {}).get("adapter") or {}
        trained.update({k: chosen[k] for k in ("calibration", "title_prior") if k in chosen})
        known = {f.name for f in fields(cls)}
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**{k: v for k, v in trained.items() if k in known}, **given})


@dataclass(frozen=True)
class Recommendation:
    """One recommended catalog item, where it came from and why."""

    rank: int
    item_id: str
    title: str
    platform: str
    score: float
    similarity: float | None
    source: str  # exact | neighbour (grounded from a generated title) | profile | popularity (fills); a pipeline's:
    # the sources that proposed it (popularity+itemknn)
    generated_text: str | None  # what the LLM wrote that grounded here
    rationale: str | None
    evidence: tuple[str, ...] = ()  # history titles the rationale rests on (fills)
    sources: dict[str, float] | None = field(default=None, hash=False)  # a pipeline's: each source's own score
    llm: float | None = None  # a pipeline's: the LLM's calibrated score
    rationale_source: Literal["llm", "template"] | None = None  # a pipeline's: who wrote the rationale

    @classmethod
    def from_scored(cls, item: Any) -> Recommendation:
        """A pipeline's answer item (``genrec.pipeline.types.ScoredItem``) as a recommendation."""
        return cls(rank=item.rank, item_id=item.item_id, title=item.title, platform=item.platform, score=item.score,
                   similarity=None, source=item.origin, generated_text=None, rationale=item.rationale,
                   evidence=tuple(item.evidence), sources=dict(item.sources), llm=item.llm,
                   rationale_source=item.rationale_source)


@dataclass
class RecommendationList:
    """The answer to one request."""

    user_id: str | None
    platform: str
    k: int
    items: list[Recommendation]
    profile: Profile
    raw_output: str
    n_generated: int
    invalid_lines: int
    validity: float  # share of generated titles that equal a catalog title after normalisation
    mean_similarity: float | None
    seconds: float = 0.0
    profile_vector: np.ndarray | None = field(default=None, repr=False)  # mean direction of the history's titles

    def to_dict(self) -> dict:
        return {"user_id": self.user_id, "platform": self.platform, "k": self.k,
                "items": [vars(item) | {"evidence": list(item.evidence)} for item in self.items],
                "generation": {"n_generated": self.n_generated, "invalid_lines": self.invalid_lines,
                               "validity": self.validity, "mean_similarity": self.mean_similarity,
                               "raw_output": self.raw_output},
                "profile": {"text": self.profile.text, "tokens": self.profile.tokens,
                            "dropped_items": self.profile.dropped},
                "seconds": self.seconds}


@dataclass
class Request:
    platform: str
    user_id: str | None = None
    history: Sequence[HistoryItem] | None = None
    k: int = 10
    explain: bool = False
    before: datetime | None = None
    exclude: frozenset[str] = frozenset()  # further item ids never to recommend (e.g. "not that one")
    instruction: str | None = None  # extra user wish, rendered as quoted data (chat)
    candidates: tuple[str, ...] | None = None  # item ids for "scored" decoding to rank (default: its own set)


class Recommender:
    """Generate-then-ground recommendations over a store. Models load on first use and are reused."""

    def __init__(
        self,
        store: Store,
        *,
        llm: LLM | None = None,
        llm_config: LLMConfig | None = None,
        embedder: Embedder | None = None,
        templates: PromptTemplates | None = None,
        config: RecommenderConfig | None = None,
        popularity: dict[str, dict[str, float]] | None = None,
    ) -> None:
        """``popularity`` (platform -> item -> count) replaces the store's counts, e.g. train-only counts in an
        evaluation, where the store also holds the held-out events. Without ``config``, the settings stored with
        ``llm_config.adapter`` apply (see ``RecommenderConfig.for_adapter``)."""
        self.store = store
        self._llm = llm
        self._llm_config = llm_config or LLMConfig()
        self.config = config or RecommenderConfig.for_adapter(self._llm_config.adapter)
        self.templates = templates or PromptTemplates()
        self._embedder = embedder
        self._grounder = Grounder(min_similarity=self.config.min_similarity)
        self._indexes: dict[str, tuple[int, CatalogIndex]] = {}
        self._title_maps: dict[str, tuple[int, dict[str, str]]] = {}
        self._popularity: dict[str, tuple[int, dict[str, float]]] = {}
        self._tries: dict[str, tuple[int, TitleTrie]] = {}
        self._priors: dict[str, tuple[int, dict[str, float]]] = {}
        self._fixed_popularity = popularity
        self._profiles: ProfileBuilder | None = None

    # -- components -----------------------------------------------------------------------------------
    @property
    def llm(self) -> LLM:
        if self._llm is None:
            self._llm = LLM.load(self._llm_config)
        return self._llm

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder()
        return self._embedder

    @property
    def profiles(self) -> ProfileBuilder:
        if self._profiles is None:
            self._profiles = ProfileBuilder(self.llm, self.config.token_budget, self.config.max_items_per_platform,
                                            self.config.verbs, self.templates)
        return self._profiles

    def index(self, platform: str) -> CatalogIndex:
        """The platform's catalog index, rebuilt (incrementally, from the embedding cache) after store writes."""
        cached = self._indexes.get(platform)
        if cached is not None and cached[0] == self.store.version:
            return cached[1]
        catalog = self.store.catalog(platform)
        if catalog.empty:
            self.titles(platform)  # raises: no catalog
        if cached is not None:
            index = cached[1]
            index.add_items(catalog["item_id"].tolist(), catalog["title"].tolist())
        else:
            index = CatalogIndex.build(platform, catalog["item_id"].tolist(), catalog["title"].tolist(),
                                       self.embedder)
        self._indexes[platform] = (self.store.version, index)
        return index

    def titles(self, platform: str) -> dict[str, str]:
        """The platform's item titles by id, from the store (no embeddings: scoring given candidates needs only
        their titles, not the catalog index)."""
        cached = self._title_maps.get(platform)
        if cached is None or cached[0] != self.store.version:
            cached = self._title_maps[platform] = (self.store.version, self.store.titles(platform))
        titles = cached[1]
        if not titles:
            raise EmptyCatalogError(f"platform {platform!r} has no catalog: register its items first")
        return titles

    def popularity(self, platform: str) -> dict[str, float]:
        if self._fixed_popularity is not None:
            return self._fixed_popularity.get(platform, {})
        cached = self._popularity.get(platform)
        if cached is None or cached[0] != self.store.version:
            frame = self.store.popularity(platform)
            cached = (self.store.version, dict(zip(frame["item_id"], frame["users"].astype(float), strict=True)))
            self._popularity[platform] = cached
        return cached[1]

    # -- requests -------------------------------------------------------------------------------------
    def recommend(self, user_id: str | None = None, *, platform: str, k: int = 10, explain: bool = False,
                  history: Sequence[HistoryItem] | None = None, before: datetime | None = None,
                  exclude: Sequence[str] = (), instruction: str | None = None) -> RecommendationList:
        """``k`` distinct catalog items of ``platform`` for a user of the store or for an inline history."""
        request = Request(platform, user_id, history, k, explain, before, frozenset(exclude), instruction)
        return self.recommend_many([request])[0]

    def recommend_many(self, requests: Sequence[Request], *, progress: bool = False,
                       outputs: Sequence[str] | None = None) -> list[RecommendationList]:
        """Answer several requests with one batched generation pass.

        ``outputs`` (one LLM answer per request, e.g. saved by an earlier run) skips generation: only grounding
        runs, so grounding settings (popularity prior, fills) can change without generating again.
        """
        started = time.perf_counter()
        prepared = [self._prepare(r) for r in requests]
        if outputs is None:
            outputs = self._generate(requests, prepared, progress)
        elif len(outputs) != len(requests):
            raise GenrecError(f"{len(outputs)} saved outputs for {len(requests)} requests")
        results = []
        for request, (history, profile, _), output in zip(requests, prepared, outputs, strict=True):
            results.append(self._ground(request, history, profile, output))
        elapsed = time.perf_counter() - started
        for result in results:
            result.seconds = elapsed / max(1, len(results))
        return results

    def _generate(self, requests: Sequence[Request], prepared: Sequence[tuple[list[HistoryItem], Profile, str]],
                  progress: bool) -> list[str]:
        if self.config.decoding == "catalog":
            return self._generate_in_catalog(requests, prepared, progress)
        if self.config.decoding == "scored":
            return self._generate_scored(requests, prepared, progress)
        prompts = [prompt for _, _, prompt in prepared]
        by_length: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            by_length.setdefault(self._max_new_tokens(r), []).append(i)
        outputs: list[str] = [""] * len(requests)
        for max_new, rows in by_length.items():
            texts = self.llm.generate([prompts[i] for i in rows], max_new_tokens=max_new,
                                      stop_after_lines=self.config.n_generate, batch_size=self.config.batch_size,
                                      progress=progress)
            for i, text in zip(rows, texts, strict=True):
                outputs[i] = text[0]
        return outputs

    def _generate_in_catalog(self, requests: Sequence[Request],
                             prepared: Sequence[tuple[list[HistoryItem], Profile, str]], progress: bool) -> list[str]:
        """Beam search over each target platform's titles, minus the user's own items; the beams, best first,
        as a numbered answer."""
        by_platform: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            by_platform.setdefault(r.platform, []).append(i)
        outputs: list[str] = [""] * len(requests)
        beams = self.config.beams
        for platform, rows in by_platform.items():
            trie, index = self.trie(platform), self.index(platform)
            bans = [trie.ban(index.title(item_id) for item_id in _owned(requests[i], prepared[i][0])
                             if item_id in index) for i in rows]
            stem = trie.stem_text()
            texts = self.llm.generate([prepared[i][2] + stem for i in rows], max_new_tokens=trie.depth + 2,
                                      num_beams=beams, num_return_sequences=beams,
                                      allowed_tokens=partial(_allowed, trie, bans),
                                      batch_size=self.config.batch_size, progress=progress)
            for i, text in zip(rows, texts, strict=True):
                outputs[i] = beams_as_answer(text, stem)
        return outputs

    def _generate_scored(self, requests: Sequence[Request],
                         prepared: Sequence[tuple[list[HistoryItem], Profile, str]], progress: bool) -> list[str]:
        """The candidates of each request ranked by the LLM's likelihood, as a numbered answer of the ``k`` best
        distinct titles (grounding then finds each exactly; items that share a title score alike and resolve to
        the most popular of them, so one line stands for them all)."""
        scored = self.score_candidates(requests, prepared=prepared, progress=progress)
        outputs = []
        for request, (items, scores) in zip(requests, scored, strict=True):
            index = self.index(request.platform)
            titles = dict.fromkeys(index.title(items[j]) for j in np.argsort(-scores, kind="stable"))
            outputs.append(format_answer(list(titles)[: request.k]))
        return outputs

    def score_candidates(self, requests: Sequence[Request], *,
                         prepared: Sequence[tuple[list[HistoryItem], Profile, str]] | None = None,
                         progress: bool = False) -> list[tuple[list[str], np.ndarray]]:
        """Per request, its candidate item ids and the LLM's log-likelihood of each one's answer line
        (``1. "Title"``, first ``score_tokens`` tokens) after the recommendation prompt, less ``calibration`` times
        its ``title_priors``. Candidates are the request's ``candidates`` (unknown ids are an error), else the
        platform's ``n_candidates`` most popular items and the ``n_candidates`` nearest the history's profile
        vector; the user's own items never are."""
        from tqdm.auto import tqdm

        prepared = prepared or [self._prepare(r) for r in requests]
        out = []
        for request, (history, _, prompt) in tqdm(list(zip(requests, prepared, strict=True)), desc="scoring",
                                                  unit="request", disable=not progress):
            items = self._candidates(request, history)
            scores = self._answer_logprobs(prompt, request.platform, items)
            if self.config.calibration:
                scores -= self.config.calibration * self.title_priors(request.platform, items)
            out.append((items, scores))
        return out

    def title_priors(self, platform: str, item_ids: Sequence[str]) -> np.ndarray:
        """The log-likelihood of each item's answer line after the recommendation prompt with an empty profile:
        how likely the model (or its base model, see ``title_prior``) finds the title for anybody (short, famous
        titles score high). Cached per item until the store changes."""
        cached = self._priors.get(platform)
        if cached is None or cached[0] != self.store.version:
            cached = (self.store.version, {})
            self._priors[platform] = cached
        priors = cached[1]
        missing = [item_id for item_id in dict.fromkeys(item_ids) if item_id not in priors]
        if missing:
            prompt = self._prompt_text("", platform, self._platforms())
            with self.llm.without_adapter() if self.config.title_prior == "base" else contextlib.nullcontext():
                scores = self._answer_logprobs(prompt, platform, missing)
            priors.update(zip(missing, scores.tolist(), strict=True))
        return np.array([priors[item_id] for item_id in item_ids], dtype=np.float64)

    def forget_title_priors(self) -> None:
        """Drop the cached title priors after the model's weights change, as in training. The base model's
        (``title_prior="base"``) stay: the adapter, the only part that trains, is off while they are computed."""
        if self.config.title_prior == "model":
            self._priors.clear()

    def _answer_logprobs(self, prompt: str, platform: str, items: Sequence[str]) -> np.ndarray:
        """Summed log-probabilities of the first ``score_tokens`` tokens of each item's answer line after
        ``prompt`` (the prompt is run once, see ``LLM.continuation_logprobs``)."""
        titles = self.titles(platform)
        head, bodies = answer_tokens([titles[item_id] for item_id in items], self.llm.tokenizer)
        prompt_ids = self.llm.tokenizer(prompt, add_special_tokens=False)["input_ids"] + head
        logprobs = self.llm.continuation_logprobs(prompt_ids, [b[: self.config.score_tokens] for b in bodies])
        return np.array([sum(lp) for lp in logprobs], dtype=np.float64)

    def _candidates(self, request: Request, history: Sequence[HistoryItem]) -> list[str]:
        owned = _owned(request, history)
        if request.candidates is not None:
            titles = self.titles(request.platform)
            unknown = [item_id for item_id in request.candidates if item_id not in titles]
            if unknown:
                raise NotFoundError(f"candidates not in the {request.platform!r} catalog: {', '.join(unknown[:5])}")
            items = [item_id for item_id in dict.fromkeys(request.candidates) if item_id not in owned]
        else:
            n = self.config.n_candidates
            index = self.index(request.platform)
            popular = most_popular(index, n, owned, PopularityPrior(self.popularity(request.platform)))
            _, _, profile_vector = self.history_vectors(history)
            near = index.search(profile_vector, n, exclude_ids=owned)[0][0] if profile_vector is not None else []
            items = list(dict.fromkeys([*popular, *near]))
        if not items:
            raise GenrecError(f"no candidates to score for this request on {request.platform!r}")
        return items

    def trie(self, platform: str) -> TitleTrie:
        """The prefix tree of the platform's titles for constrained decoding, rebuilt after store writes."""
        cached = self._tries.get(platform)
        if cached is None or cached[0] != self.store.version:
            index = self.index(platform)
            titles = [index.title(item_id) for item_id in index.item_ids]
            cached = (self.store.version, TitleTrie(titles, self.llm.tokenizer))
            self._tries[platform] = cached
        return cached[1]

    def _max_new_tokens(self, request: Request) -> int:
        per_item = self.config.tokens_per_item + (self.config.tokens_per_rationale if request.explain else 0)
        return per_item * self.config.n_generate + 8

    def _history(self, request: Request) -> list[HistoryItem]:
        if request.history is not None:
            history = list(request.history)
        elif request.user_id is not None:
            if not self.store.has_user(request.user_id):
                raise NotFoundError(f"unknown user {request.user_id!r}: the store has no events for this user")
            history = self.store.history(request.user_id, before=request.before)
        else:
            raise GenrecError("a request needs a user_id or a history")
        if not history:
            raise EmptyHistoryError(f"user {request.user_id!r} has no events before {request.before}"
                                    if request.before else "cannot recommend from an empty history")
        return history

    def _platforms(self) -> dict[str, Platform]:
        return {p.name: p for p in self.store.platforms()}

    def _prepare(self, request: Request) -> tuple[list[HistoryItem], Profile, str]:
        if request.k < 1:
            raise GenrecError(f"k must be at least 1, got {request.k}")
        platforms = self._platforms()
        if request.platform not in platforms:
            raise NotFoundError(f"unknown platform {request.platform!r}; the store has: "
                                f"{', '.join(sorted(platforms)) or 'none'}")
        history = self._history(request)
        self.titles(request.platform)  # fail early on a platform without catalog (without embedding it)
        profile, prompt = self.prompt(history, request.platform, explain=request.explain,
                                      instruction=request.instruction, platforms=platforms)
        return history, profile, prompt

    def prompt(self, history: Sequence[HistoryItem], platform: str, *, explain: bool = False,
               instruction: str | None = None, platforms: dict[str, Platform] | None = None) -> tuple[Profile, str]:
        """The profile of ``history`` and the chat prompt asking the LLM for ``platform`` items.

        The one code path that writes recommendation prompts: inference uses it, and so do the SFT examples of
        ``genrec.training``, so that a tuned model sees at inference exactly what it was trained on.
        """
        platforms = platforms or self._platforms()
        profile = self.profiles.build(history, platforms)
        return profile, self._prompt_text(profile.text, platform, platforms, explain=explain, instruction=instruction)

    def _prompt_text(self, profile: str, platform: str, platforms: dict[str, Platform], *, explain: bool = False,
                     instruction: str | None = None) -> str:
        target = platforms[platform]
        # the platform's description is left out: the small default model copies it as an item title
        prompt = RecommendPrompt(profile=profile, platform=target.name, n=self.config.n_generate,
                                 verb=self.profiles.verb(target.name, platforms), rationale=explain)
        messages = self.templates.messages(self._recommend_template(target.name), prompt, instruction=instruction)
        return self.llm.format_chat(messages)

    def _recommend_template(self, platform: str) -> str:
        """The platform's own recommend prompt (registered when it was onboarded), else the packaged one."""
        source = self.store.platform_template(platform)
        if source is None:
            return RECOMMEND_TEMPLATE
        return self.templates.register(f"platforms/{platform}/{RECOMMEND_TEMPLATE}", source)

    def _ground(self, request: Request, history: list[HistoryItem], profile: Profile,
                output: str) -> RecommendationList:
        parsed = parse_candidates(output)
        candidates = parsed.candidates
        index = self.index(request.platform)
        titles, vectors, profile_vector = self.history_vectors(history)
        result = self._grounder.ground(candidates, index, exclude=_owned(request, history), k=request.k,
                                       popularity=self.popularity(request.platform),
                                       popularity_weight=self.config.popularity_weight,
                                       profile_vector=profile_vector)
        items = self._explain(result, request, titles, vectors, index) if request.explain else [
            _recommendation(rank, item, request.platform, None, ()) for rank, item in enumerate(result.items, 1)]
        return RecommendationList(
            user_id=request.user_id, platform=request.platform, k=request.k, items=items, profile=profile,
            raw_output=output, n_generated=len(candidates), invalid_lines=parsed.invalid_lines,
            validity=result.n_exact / len(candidates) if candidates else 0.0,
            mean_similarity=result.mean_similarity, profile_vector=profile_vector)

    def history_vectors(self, history: Sequence[HistoryItem]) -> tuple[list[str], np.ndarray, np.ndarray | None]:
        """The most recent titled history items, their embeddings and their mean direction (the profile vector)."""
        titles = [h.title for h in history if h.title][-self.config.profile_items:]
        if not titles:
            return [], np.zeros((0, self.embedder.dim), dtype=np.float32), None
        vectors = self.embedder.encode(titles)
        return titles, vectors, _unit(vectors.mean(axis=0))

    def _explain(self, result: GroundingResult, request: Request, titles: list[str], vectors: np.ndarray,
                 index: CatalogIndex) -> list[Recommendation]:
        """LLM rationales for generated items; evidence-based rationales (nearest history items) for fills."""
        platforms = self._platforms()
        verb = self.profiles.verb(request.platform, platforms)
        items = []
        item_vectors = index.vectors([item.item_id for item in result.items])
        for rank, (item, vector) in enumerate(zip(result.items, item_vectors, strict=True), 1):
            evidence: tuple[str, ...] = ()
            if len(vectors):
                sims = vectors @ vector
                evidence = tuple(titles[j] for j in np.argsort(-sims)[:2])
            if item.rationale:
                rationale = item.rationale
            elif item.source == "popularity":
                rationale = f"Popular on {request.platform} with people who {verb} similar things."
            elif evidence:
                rationale = f'Close to "{evidence[0]}" from your history.'
            else:
                rationale = f"Close to the rest of your history on {request.platform}."
            items.append(_recommendation(rank, item, request.platform, rationale, evidence))
        return items


def _recommendation(rank: int, item, platform: str, rationale: str | None,
                    evidence: tuple[str, ...]) -> Recommendation:
    return Recommendation(rank=rank, item_id=item.item_id, title=item.title, platform=platform,
                          score=float(item.score), similarity=item.similarity, source=item.source,
                          generated_text=item.generated_text, rationale=rationale, evidence=evidence)


def _owned(request: Request, history: Sequence[HistoryItem]) -> set[str]:
    """Items never to recommend for ``request``: the user's own on the target platform and the excluded ones."""
    return {h.item_id for h in history if h.platform == request.platform} | set(request.exclude)


def _allowed(trie: TitleTrie, bans: Sequence[Ban], row: int, generated: Sequence[int]) -> list[int]:
    return trie.allowed(generated, bans[row])


def _unit(vector: np.ndarray) -> np.ndarray | None:
    norm = float(np.linalg.norm(vector))
    return (vector / norm).astype(np.float32) if norm > 1e-12 else None
