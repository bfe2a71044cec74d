"""What every candidate source implements, and the pieces the sources share.

A source is fitted on a ``TrainData`` snapshot, scores a target platform's whole catalog for a batch of contexts
(``score``: what the evaluation ranks and fusion combines) and proposes its top ``n`` items for one context
(``candidates``). A fitted source saves to a folder (``source.json``: kind and options; ``state.pkl``: what it
learned) and loads back to the same scores.
"""

from __future__ import annotations

import json
import pickle
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from genrec.errors import GenrecError
from genrec.evaluation.metrics import Ties, ranks_for_cases
from genrec.pipeline.types import Context, EvalCase, HistoryScope, Interaction, TrainData

SOURCE_FILE = "source.json"
STATE_FILE = "state.pkl"


@runtime_checkable
class Method(Protocol):
    """Anything the harness ranks with: a source, or a whole pipeline.

    ``history_scope`` says which part of a context's history it reads: ``"cross"`` every platform, ``"target"``
    only the context's target platform.
    """

    name: str
    history_scope: HistoryScope

    def fit(self, train: TrainData, valid_cases: Sequence[EvalCase] | None = None) -> None:
        """Learn from ``train``; ``valid_cases`` may be used for early stopping or model selection only."""
        ...

    def score(self, cases: Sequence[Context], platform: str) -> np.ndarray:
        """Scores of shape ``(len(cases), len(train.catalogs[platform]))`` in catalog order; higher is better.

        Every case has ``case.platform == platform``. Ranking (and history exclusion) is the caller's job.
        """
        ...


class CandidateSource:
    """Base of the fitted sources: catalogs kept from ``fit``, top-n candidates, save/load.

    Subclasses set ``kind``, implement ``fit``/``score``, keep their constructor arguments in ``options`` and
    what they learned in ``state()``/``restore()``.
    """

    kind: ClassVar[str]
    adds_platforms: ClassVar[bool] = False  # ``add_platform`` makes a catalog onboarded after fitting scorable
    floor: ClassVar[float | None] = None  # the score of every item the source does not propose (never pooled)
    needs_store: ClassVar[bool] = False  # scoring reads the event store (a pipeline refuses to build it without)
    name: str
    history_scope: HistoryScope
    catalogs: dict[str, list[str]]

    OPTIONS: ClassVar[tuple[str, ...]] = ()  # the constructor arguments kept as attributes of the same name

    def options(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this source (JSON-serialisable)."""
        return {name: getattr(self, name) for name in self.OPTIONS}

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    def restore(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def update(self, before: Sequence[Interaction], new: Sequence[Interaction]) -> bool:
        """Fold one user's new interactions into what the source learned, without refitting (``before``: the
        user's history before them). Returns False when the source learns only by refitting (the default)."""
        return False

    def refresh(self, train: TrainData, new: Mapping[str, Sequence[Interaction]], *, steps: int) -> str:
        """Bring what the source learned up to ``train`` (the current snapshot; ``new``: each user's interactions
        that arrived since the source was fitted, the end of their sequence in ``train``) starting from what it
        learned. Returns how: ``"counts"`` (updated as a refit would count them), ``"embedded"`` (new items
        embedded), ``"fine-tuned"`` (``steps`` batches from the last weights, by sources that train) or ``"refit"``
        (only a refit teaches this source, so it was refitted on ``train``)."""
        if self.grow(train.catalogs):
            updated = [self.update(before_new(train, user, added), added) for user, added in new.items()]
            if all(updated):
                return "counts"
        self.fit(train)
        return "refit"

    def grow(self, catalogs: dict[str, list[str]]) -> bool:
        """Take on ``catalogs`` (items added since the fit; new items start as unseen ones). False when the
        source cannot (the default, unless the catalogs are unchanged)."""
        return catalogs == self.catalogs

    def candidates(self, context: Context, n: int) -> list[tuple[str, float]]:
        """The source's ``n`` best items of the context's platform with its own scores, the user's own items left
        out. A source with no preference for this context (an empty usable history) still answers (ties keep
        catalog order), unless it says why it cannot rank for it (``no_preference``): then this is a
        ``GenrecError`` naming the user and the platform. ``score`` never refuses: the evaluation and a
        pipeline's other sources rank such contexts. A source with a ``floor`` never proposes an item scored
        there."""
        reason = self.no_preference(context)
        if reason is not None:
            raise GenrecError(f"{self.name} cannot rank {context.platform!r} items for user {context.user_id!r}: "
                              f"{reason}")
        catalog = self._catalog(context.platform)
        picked = top_items(self.score([context], context.platform)[0], catalog, context.owned(), n)
        return picked if self.floor is None else [(item, score) for item, score in picked if score > self.floor]

    def no_preference(self, context: Context) -> str | None:
        """Why every score of this source is equal for ``context`` (e.g. it ranks from the history, and the
        history holds nothing it can read), else None (the default: sources whose scores need no history, or
        that do not say)."""
        return None

    def add_platform(self, platform: str, items: Sequence[str], titles: Mapping[tuple[str, str], str],
                     details: Mapping[tuple[str, str], str] | None = None) -> None:
        """Make ``platform``'s catalog (``items``; ``titles``: ``(platform, item_id)`` -> title; ``details``: the
        items' other text, as ``TrainData.details``), onboarded after fitting, scorable without a refit (sources
        with ``adds_platforms``). By default the source takes the new catalog on through ``grow`` (its items
        start as unseen ones)."""
        if self._catalog_known(platform):
            raise GenrecError(f"{self.name}: platform {platform!r} is already known")
        if not items:
            raise GenrecError(f"{self.name}: platform {platform!r} has an empty catalog")
        if not self.adds_platforms or not self.grow({**self.catalogs, platform: list(items)}):
            raise GenrecError(f"{self.name} ({self.kind}) cannot score a platform added after fitting: refit it")

    def _extend_catalogs(self, platform: str, items: Sequence[str]) -> None:
        """Add a catalog (a new dict: fitted sources may share one)."""
        if self._catalog_known(platform):
            raise GenrecError(f"{self.name}: platform {platform!r} is already known")
        if not items:
            raise GenrecError(f"{self.name}: platform {platform!r} has an empty catalog")
        self.catalogs = {**self.catalogs, platform: list(items)}

    def _catalog_known(self, platform: str) -> bool:
        return platform in getattr(self, "catalogs", {})

    def _catalog(self, platform: str) -> list[str]:
        catalogs = getattr(self, "catalogs", None)
        if catalogs is None:
            raise RuntimeError(f"{self.name}: fit() first")
        if platform not in catalogs:
            raise GenrecError(f"{self.name} was fitted without platform {platform!r}; it knows: "
                              f"{', '.join(sorted(catalogs))}")
        return catalogs[platform]

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, "history_scope": self.history_scope, "options": self.options()}
        (directory / SOURCE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        with (directory / STATE_FILE).open("wb") as fh:
            pickle.dump({"catalogs": self.catalogs, **self.state()}, fh, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def load(cls, directory: str | Path, **resources: Any) -> CandidateSource:
        """A source saved by ``save`` (``resources``: shared objects a source needs, e.g. the embedder)."""
        from genrec.pipeline.sources import build

        directory = Path(directory)
        try:
            meta = json.loads((directory / SOURCE_FILE).read_text())
            with (directory / STATE_FILE).open("rb") as fh:
                state = pickle.load(fh)  # noqa: S301 - a pipeline folder is the user's own artifact
        except FileNotFoundError as exc:
            raise GenrecError(f"{directory} is not a saved candidate source: {exc.filename} is missing") from exc
        source = build(meta["kind"], meta["options"], meta["history_scope"], **resources)
        source.catalogs = state.pop("catalogs")
        source.restore(state)
        return source


def before_new(train: TrainData, user: str, added: Sequence[Interaction]) -> list[Interaction]:
    """The user's interactions in ``train`` before ``added`` (which end the user's sequence there)."""
    sequence = train.sequences.get(user, [])
    return sequence[: len(sequence) - len(added)]


def regrown(old: ItemVocabulary, catalogs: dict[str, list[str]], offset: int | None = None,
            ) -> tuple[ItemVocabulary, np.ndarray, np.ndarray]:
    """A vocabulary over ``catalogs`` and the rows that carry over: ``new[to] = old[from]`` for every item in
    both (items dropped from a catalog are forgotten)."""
    vocab = ItemVocabulary(catalogs, offset=old.offset if offset is None else offset)
    pairs = [(vocab.index[key], i) for key, i in old.index.items() if key in vocab.index]
    to, from_ = (np.array(side, dtype=np.int64) for side in zip(*pairs, strict=True)) if pairs else \
        (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    return vocab, to, from_


def top_items(scores: np.ndarray, catalog: Sequence[str], owned: set[str], n: int) -> list[tuple[str, float]]:
    """The ``n`` best-scoring items of ``catalog`` not in ``owned``, best first (stable for ties)."""
    order = np.argsort(-scores, kind="stable")[: n + len(owned)]
    picked = [(catalog[j], float(scores[j])) for j in order if catalog[j] not in owned]
    return picked[:n]


class ItemVocabulary:
    """One index over the items of every platform: platform catalogs laid end to end, in ``catalogs`` order.

    ``offset`` shifts every index (e.g. ``offset=1`` keeps 0 free for padding).
    """

    def __init__(self, catalogs: dict[str, list[str]], offset: int = 0) -> None:
        self.offset = offset
        self.platforms: dict[str, range] = {}
        self.index: dict[tuple[str, str], int] = {}
        start = offset
        for platform, items in catalogs.items():
            self.platforms[platform] = range(start, start + len(items))
            self.index.update({(platform, item): start + i for i, item in enumerate(items)})
            start += len(items)
        self.size = start

    def get(self, event: Interaction) -> int | None:
        return self.index.get((event.platform, event.item_id))

    def encode(self, events: Sequence[Interaction]) -> list[int]:
        """Indices of the events' items, skipping items outside every catalog."""
        return [i for i in (self.get(e) for e in events) if i is not None]

    def block(self, platform: str) -> slice:
        """The slice of global indices that holds ``platform``'s catalog, in catalog order."""
        span = self.platforms[platform]
        return slice(span.start, span.stop)


def rank_cases(
    method: Method,
    cases: Sequence[EvalCase],
    catalogs: dict[str, list[str]],
    *,
    num_negatives: int | None = None,
    seed: int = 0,
    ties: Ties = "pessimistic",
    batch_size: int = 1024,
) -> np.ndarray:
    """Ranks of every case's target (in case order) under ``method``, cases grouped by target platform.

    Full-catalog ranking by default; ``num_negatives`` switches to 1 positive + N sampled negatives. History
    items are excluded in both (see ``genrec.evaluation.metrics.ranks_for_cases``).
    """
    by_platform: dict[str, list[int]] = defaultdict(list)
    for i, case in enumerate(cases):
        by_platform[case.platform].append(i)
    ranks = np.full(len(cases), np.inf)
    for platform, rows in by_platform.items():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = [cases[i] for i in chunk]
            scores = method.score(batch, platform)
            ranks[chunk] = ranks_for_cases(
                scores, batch, catalogs[platform], num_negatives=num_negatives, seed=seed, ties=ties
            )
    return ranks
