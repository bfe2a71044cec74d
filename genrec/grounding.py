"""Grounding: map LLM-generated titles to real catalog items of one platform.

Three small parts, each usable alone:

- ``normalise_title``: the key for exact title matching ("**Toy Story**" and "toy story" find "Toy Story (1995)";
  "The American President" finds "American President, The (1995)").
- ``CatalogIndex``: one platform's items, their embeddings (computed once per catalog and embedder, cached on disk,
  updated incrementally) and a cosine search (numpy for small catalogs, FAISS above a size threshold).
- ``Grounder``: generated candidates -> exactly ``k`` distinct catalog items that the user does not already have
  (exact title match, then nearest neighbour, then neighbours of the user's profile, then popularity).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from genrec.config import cache_dir
from genrec.data.schema import CatalogItem
from genrec.embedding import Embedder, mean_embedding
from genrec.errors import GenrecError
from genrec.llm import Candidate as GeneratedCandidate  # what the LLM proposed: a title and, maybe, why
from genrec.prompts import QUOTE_MAX_CHARS, quote

Source = Literal["exact", "neighbour", "profile", "popularity"]

# Below this many items search is a numpy matrix product: no second copy of the vectors, no index to keep in
# step. On 2 loaded cores with the 19,757-item Office catalog neither backend wins consistently for request-sized
# batches (1-20 queries, 10-60 ms); FAISS's flat index is ahead on 1,000-query batches (0.2 s vs 1.0 s). An HNSW
# graph does not pay at these sizes (100k synthetic vectors: 44 s to build, recall@10 0.47 at efSearch 64); plug
# one in through ``backend=`` when a catalog reaches millions. See benchmarks/bench_grounding.py.
DEFAULT_FAISS_THRESHOLD = 50_000
# Scores equal to this many decimals are ties, broken by item id, so that every backend ranks alike.
SCORE_DECIMALS = 6
# Extra neighbours fetched so that ties at the k-th place are broken by item id, not by backend internals.
_TIE_MARGIN = 8
# Embedding-cache versions kept per (embedder, platform): an edited catalog reuses the vectors of unchanged texts.
_KEEP_CACHE_VERSIONS = 3
# Largest query-by-catalog score block the numpy backend materialises at once (floats).
_NUMPY_BLOCK = 1 << 24


class EmptyCatalogError(GenrecError, ValueError):
    """Grounding against a platform whose catalog has no items."""


# --------------------------------------------------------------------------------------------- title matching

_LIST_MARKER = re.compile(r"^\s*(?:[-*+\u2022]|\d{1,2}[.)])\s+")
# MovieLens style "Matrix, The (1999)", also for the other languages' articles it uses ("Haine, La (1995)").
_TRAILING_ARTICLE = re.compile(
    r"^(?P<main>.+?),\s*(?P<article>the|a|an|la|le|les|l'|il|el|los|las|das|der|die|den|det)"
    r"(?P<rest>(?:\s*\([^()]*\))*)\s*$",
    re.IGNORECASE,
)
_LEADING_ARTICLE = re.compile(r"^(?:the|a|an)\s+(?=\S)", re.IGNORECASE)
_TRAILING_PARENTHESES = re.compile(r"(?:\s*\([^()]*\))+\s*$")
_NON_WORD = re.compile(r"[\W_]+")
_MARKDOWN_EMPHASIS = re.compile(r"\*\*|__|`")
_SURROUNDING = "*_#\"'\u201c\u201d\u2018\u2019 "


def clean_title(title: str) -> str:
    """A generated title without a list marker, markdown emphasis, surrounding quotes or extra spaces."""
    text = _MARKDOWN_EMPHASIS.sub("", _LIST_MARKER.sub("", title)).strip(_SURROUNDING)
    return " ".join(text.split())


def normalise_title(title: str, *, loose: bool = False) -> str:
    """The matching key of a title: lower case, no accents, punctuation, quotes or markdown, single spaces.

    A trailing article moves to the front ("American President, The (1995)" -> "the american president 1995").
    ``loose=True`` gives the second-chance key: trailing parenthesised groups (the year, alternative titles) and a
    leading English article go too ("Twelve Monkeys (a.k.a. 12 Monkeys) (1995)" -> "twelve monkeys",
    "The Usual Suspects" -> "usual suspects").
    """
    text = clean_title(title)
    if not text.isascii():
        text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    moved = _TRAILING_ARTICLE.match(text)
    if moved:
        text = f"{moved['article']} {moved['main']}{moved['rest']}"
    if loose:
        text = _LEADING_ARTICLE.sub("", _TRAILING_PARENTHESES.sub("", text))
    return " ".join(_NON_WORD.sub(" ", text.casefold()).split())


# --------------------------------------------------------------------------------------------- search backends


class SearchBackend(Protocol):
    """Maximum inner product search over fixed unit rows."""

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best rows per query (``n`` <= rows): ``(rows, scores)``, both ``(len(queries), n)``, best first."""
        ...


BackendName = Literal["auto", "numpy", "faiss"]
BackendFactory = Callable[[np.ndarray], SearchBackend]


class NumpySearch:
    """Exact search by matrix product; queries go in blocks so memory stays bounded on large catalogs."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        block = max(1, _NUMPY_BLOCK // max(1, len(self.vectors)))
        rows = np.empty((len(queries), n), dtype=np.int64)
        scores = np.empty((len(queries), n), dtype=np.float32)
        for start in range(0, len(queries), block):
            sims = queries[start : start + block] @ self.vectors.T
            top = np.argpartition(-sims, n - 1, axis=1)[:, :n] if n < sims.shape[1] else np.argsort(-sims, axis=1)
            top_scores = np.take_along_axis(sims, top, axis=1)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            rows[start : start + block] = np.take_along_axis(top, order, axis=1)
            scores[start : start + block] = np.take_along_axis(top_scores, order, axis=1)
        return rows, scores


class FaissSearch:
    """Exact search with a FAISS ``IndexFlatIP`` (inner product of unit vectors is cosine similarity)."""

    def __init__(self, vectors: np.ndarray) -> None:
        import faiss

        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(queries, n)
        return rows, scores


# --------------------------------------------------------------------------------------------- catalog index

TextBuilder = Callable[[CatalogItem], str]


def title_text(item: CatalogItem) -> str:
    """What gets embedded by default: the title alone (generated candidates are titles too)."""
    return item.title


def title_category_text(item: CatalogItem) -> str:
    """Title plus categories ("Toy Story (1995). Adventure, Animation"), for titles too short to place an item."""
    return f"{item.title}. {item.category.replace('|', ', ')}" if item.category else item.title


def _digests(texts: Sequence[str]) -> np.ndarray:
    return np.array(
        [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") for t in texts], dtype=np.uint64
    )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "_"


class CatalogIndex:
    """One platform's catalog: ids, titles, unit embeddings, exact-title lookup and cosine search.

    Embeddings are cached under ``cache_root`` (default ``genrec.config.cache_dir("embeddings")``) in a file named
    by a hash of the embedder fingerprint and the ordered ``(id, text)`` pairs, written atomically. A changed
    catalog gets a new file; building it reuses the vectors of unchanged texts from the last few versions, so only
    new or edited items are embedded. ``backend="auto"`` searches with numpy below ``faiss_threshold`` items and
    with FAISS from there on; both return the same ranking. ``backend`` may also be a factory that builds any
    ``SearchBackend`` from the ``(n, dim)`` unit vectors.
    """

    def __init__(
        self,
        platform: str,
        embedder: Embedder,
        *,
        backend: BackendName | BackendFactory = "auto",
        faiss_threshold: int = DEFAULT_FAISS_THRESHOLD,
        cache: bool = True,
        cache_root: str | Path | None = None,
    ) -> None:
        self.platform = platform
        self.embedder = embedder
        self.backend = backend
        self.faiss_threshold = faiss_threshold
        self.cache = cache
        self._cache_root = Path(cache_root) if cache_root is not None else None
        self._ids: list[str] = []
        self._titles: list[str] = []
        self._row: dict[str, int] = {}
        self._digests = np.zeros(0, dtype=np.uint64)
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self._searcher: SearchBackend | None = None
        self._exact: dict[str, list[str]] | None = None
        self._loose: dict[str, list[str]] = {}

    @classmethod
    def build(
        cls,
        platform: str,
        item_ids: Sequence[str],
        titles: Sequence[str],
        embedder: Embedder,
        *,
        texts: Sequence[str] | None = None,
        progress: bool = False,
        backend: BackendName | BackendFactory = "auto",
        faiss_threshold: int = DEFAULT_FAISS_THRESHOLD,
        cache: bool = True,
        cache_root: str | Path | None = None,
    ) -> CatalogIndex:
        """An index of ``item_ids`` with display/match ``titles``; ``texts`` (default: the titles) get embedded."""
        index = cls(
            platform, embedder, backend=backend, faiss_threshold=faiss_threshold, cache=cache, cache_root=cache_root
        )
        index.add_items(item_ids, titles, texts=texts, progress=progress)
        return index

    @classmethod
    def from_items(
        cls,
        items: Iterable[CatalogItem],
        embedder: Embedder,
        *,
        platform: str | None = None,
        text: TextBuilder = title_text,
        progress: bool = False,
        backend: BackendName | BackendFactory = "auto",
        faiss_threshold: int = DEFAULT_FAISS_THRESHOLD,
        cache: bool = True,
        cache_root: str | Path | None = None,
    ) -> CatalogIndex:
        """An index of catalog items of one platform (``platform`` is required when ``items`` may be empty)."""
        items = list(items)
        platforms = {item.platform for item in items} | ({platform} if platform else set())
        if len(platforms) != 1:
            raise ValueError(f"a catalog index holds one platform; got {sorted(platforms) or 'none'}")
        return cls.build(
            platforms.pop(),
            [item.item_id for item in items],
            [item.title for item in items],
            embedder,
            texts=[text(item) for item in items],
            progress=progress,
            backend=backend,
            faiss_threshold=faiss_threshold,
            cache=cache,
            cache_root=cache_root,
        )

    # ---- contents

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row

    @property
    def item_ids(self) -> tuple[str, ...]:
        return tuple(self._ids)

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def title(self, item_id: str) -> str:
        return self._titles[self._row[item_id]]

    def vectors(self, item_ids: Sequence[str] | None = None) -> np.ndarray:
        """The unit embeddings of ``item_ids`` (default: all, in index order); unknown ids raise ``KeyError``."""
        if item_ids is None:
            return self._vectors
        return self._vectors[[self._row[item_id] for item_id in item_ids]]

    @property
    def cache_path(self) -> Path | None:
        """The embedding-cache file of the current contents (``None`` when caching is off)."""
        return self._cache_file(self._ids, self._digests)

    def _cache_file(self, ids: Sequence[str], digests: np.ndarray) -> Path | None:
        if not self.cache:
            return None
        content = hashlib.sha256(self.embedder.fingerprint.encode())
        for item_id in ids:
            content.update(item_id.encode() + b"\x1f")
        content.update(digests.tobytes())
        root = self._cache_root if self._cache_root is not None else cache_dir("embeddings")
        return root / self.embedder.fingerprint[:16] / _slug(self.platform) / f"{content.hexdigest()[:32]}.npz"

    # ---- updates

    def add_items(
        self,
        item_ids: Sequence[str],
        titles: Sequence[str],
        *,
        texts: Sequence[str] | None = None,
        progress: bool = False,
    ) -> int:
        """Add new items and update changed ones; returns how many texts were embedded.

        Items whose id and text are already indexed keep their vectors (a changed title with the same text only
        updates the title). Vectors come from memory, then from the embedding cache, and only then the embedder.
        """
        texts = titles if texts is None else texts
        if not len(item_ids) == len(titles) == len(texts):
            raise ValueError(f"got {len(item_ids)} ids, {len(titles)} titles and {len(texts)} texts")
        if len(set(item_ids)) != len(item_ids):
            raise ValueError("item ids must be unique")
        new_digests = _digests(texts)
        ids, all_titles, row = list(self._ids), list(self._titles), dict(self._row)
        digests = np.concatenate([self._digests, np.zeros(len(item_ids), dtype=np.uint64)])
        n_old = len(ids)
        for item_id, title, digest in zip(item_ids, titles, new_digests, strict=True):
            position = row.setdefault(item_id, len(ids))
            if position == len(ids):
                ids.append(item_id)
                all_titles.append(title)
            all_titles[position] = title
            digests[position] = digest
        digests = digests[: len(ids)]
        stale = np.ones(len(ids), dtype=bool)
        stale[:n_old] = digests[:n_old] != self._digests
        vectors = np.zeros((len(ids), self.dim), dtype=np.float32)
        if n_old:
            kept = np.flatnonzero(~stale[:n_old])
            vectors[kept] = self._vectors[kept]

        text_of = dict(zip(new_digests.tolist(), texts, strict=True))
        encoded = self._fill_vectors(self._cache_file(ids, digests), digests, vectors, stale, text_of, progress)
        self._ids, self._titles, self._row, self._digests, self._vectors = ids, all_titles, row, digests, vectors
        self._searcher, self._exact = None, None
        return encoded

    def _fill_vectors(
        self,
        path: Path | None,
        digests: np.ndarray,
        vectors: np.ndarray,
        stale: np.ndarray,
        text_of: dict[int, str],
        progress: bool,
    ) -> int:
        """Fill the ``stale`` rows of ``vectors``: from the cache file ``path``, older versions, then the model."""
        if not stale.any():
            return 0
        if path is not None:
            cached = _load_vectors(path)
            if cached is not None and np.array_equal(cached[0], digests) and cached[1].shape == vectors.shape:
                vectors[:] = cached[1]
                return 0
            for older in sorted(path.parent.glob("*.npz"), key=_mtime, reverse=True):
                if not stale.any():
                    break
                loaded = _load_vectors(older)
                if loaded is None or loaded[1].shape[1:] != (self.dim,):
                    continue
                known = dict(zip(loaded[0].tolist(), range(len(loaded[0])), strict=True))
                for position in np.flatnonzero(stale):
                    source = known.get(int(digests[position]))
                    if source is not None:
                        vectors[position] = loaded[1][source]
                        stale[position] = False
        positions = np.flatnonzero(stale)
        wanted = sorted({int(digests[p]) for p in positions})
        if wanted:
            encoded = self.embedder.encode([text_of[d] for d in wanted], progress=progress)
            vector_of = dict(zip(wanted, encoded, strict=True))
            for position in positions:
                vectors[position] = vector_of[int(digests[position])]
        if path is not None:
            _save_vectors(path, digests, vectors)
        return len(wanted)

    # ---- lookup and search

    def lookup_title(self, title: str) -> list[str]:
        """Ids (sorted) whose title equals ``title`` after normalisation, else whose loose keys are equal.

        A long title as prompts and answers render it (``genrec.prompts.quote`` clips it and marks the cut with
        ``…``) matches its item exactly too: a tuned model learned to write titles that way, and catalog-constrained
        or scored decoding write them so."""
        if self._exact is None:
            self._exact, self._loose = {}, {}
            for item_id, item_title in zip(self._ids, self._titles, strict=True):
                keys = [(self._exact, normalise_title(item_title)),
                        (self._loose, normalise_title(item_title, loose=True))]
                # only a title longer than a quote's limit (NFKC may lengthen it; the rest of quote only shortens)
                # can be clipped
                if len(unicodedata.normalize("NFKC", item_title)) > QUOTE_MAX_CHARS or "…" in item_title:
                    rendered = quote(item_title)[1:-1]
                    if rendered.endswith("…"):
                        keys.append((self._exact, normalise_title(rendered)))
                for table, key in keys:
                    if key and item_id not in table.get(key, ()):
                        table.setdefault(key, []).append(item_id)
        key = normalise_title(title)
        if not key:
            return []
        found = self._exact.get(key) or self._loose.get(normalise_title(title, loose=True), [])
        return sorted(found)

    def search(
        self, query_vectors: np.ndarray, k: int, *, exclude_ids: Iterable[str] = ()
    ) -> tuple[list[list[str]], np.ndarray]:
        """The ``k`` items most cosine-similar to each query row, never one of ``exclude_ids``.

        Returns ``(ids, scores)``: one list of ids per query and a ``(len(queries), k')`` float32 array, best
        first, ties broken by item id; ``k' = min(k, items not excluded)``.
        """
        queries = np.ascontiguousarray(np.atleast_2d(query_vectors), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise ValueError(f"query vectors have {queries.shape[1]} dimensions; the index has {self.dim}")
        blocked = {self._row[item_id] for item_id in set(exclude_ids) if item_id in self._row}
        k = max(0, min(k, len(self) - len(blocked)))
        if k == 0 or len(queries) == 0:
            return [[] for _ in queries], np.zeros((len(queries), 0), dtype=np.float32)
        rows, scores = self._backend().search(queries, min(len(self), k + len(blocked) + _TIE_MARGIN))
        out_ids: list[list[str]] = []
        out_scores = np.zeros((len(queries), k), dtype=np.float32)
        for q, (query_rows, query_scores) in enumerate(zip(rows, scores, strict=True)):
            hits = sorted(
                (
                    (-round(float(s), SCORE_DECIMALS), self._ids[r], float(s))
                    for r, s in zip(query_rows.tolist(), query_scores, strict=True)
                    if r not in blocked
                ),
            )[:k]
            out_ids.append([item_id for _, item_id, _ in hits])
            out_scores[q] = [s for _, _, s in hits]
        return out_ids, out_scores

    def _backend(self) -> SearchBackend:
        if self._searcher is None:
            factory: BackendFactory
            if callable(self.backend):
                factory = self.backend
            elif self.backend == "faiss" or (self.backend == "auto" and len(self) >= self.faiss_threshold):
                factory = FaissSearch
            else:
                factory = NumpySearch
            self._searcher = factory(self._vectors)
        return self._searcher


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _load_vectors(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """``(digests, vectors)`` from a cache file; ``None`` when it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            digests, vectors = data["digests"], data["vectors"]
    except (OSError, ValueError, KeyError, EOFError):
        return None
    if digests.ndim != 1 or vectors.ndim != 2 or len(digests) != len(vectors):
        return None
    return digests, vectors


def _save_vectors(path: Path, digests: np.ndarray, vectors: np.ndarray) -> None:
    """Write atomically (temporary file + rename), then keep only the newest few versions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", suffix=".part", delete=False) as handle:
        try:
            np.savez(handle, digests=digests, vectors=vectors)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            os.unlink(handle.name)
            raise
    os.replace(handle.name, path)
    for old in sorted(path.parent.glob("*.npz"), key=_mtime, reverse=True)[_KEEP_CACHE_VERSIONS:]:
        old.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- grounder


@dataclass(frozen=True)
class GroundedItem:
    """A catalog item in a grounding result.

    ``similarity`` is the cosine similarity behind the item: to the generated title (1.0 for an exact title match),
    to the profile vector for ``source="profile"``, and ``None`` for ``source="popularity"``. ``score`` ranks the
    items: similarity fused with popularity, or the normalised log popularity alone for popularity fills.
    ``generated_texts``/``rationales`` hold every generated candidate that grounded here, best match first; fills
    have none.
    """

    item_id: str
    title: str
    score: float
    similarity: float | None
    source: Source
    generated_texts: tuple[str, ...] = ()
    rationales: tuple[str | None, ...] = ()

    @property
    def generated_text(self) -> str | None:
        """What the LLM wrote for this item (its best-matching candidate)."""
        return self.generated_texts[0] if self.generated_texts else None

    @property
    def rationale(self) -> str | None:
        return self.rationales[0] if self.rationales else None


@dataclass(frozen=True)
class GroundingResult:
    """Ranked items plus how well the generated candidates matched the catalog.

    ``n_exact``: candidates whose title equals a catalog title after normalisation (history items included);
    ``n_history``: those of them that are only in the user's history; ``mean_similarity``: mean similarity of
    the grounded candidates to their items (``None`` when none grounded); ``unmatched``: candidates that grounded
    nowhere (blank, below ``min_similarity``, or nothing left in the catalog).
    """

    platform: str
    items: tuple[GroundedItem, ...]
    n_generated: int
    n_exact: int
    n_history: int
    mean_similarity: float | None
    unmatched: tuple[str, ...] = field(default=())

    @property
    def validity(self) -> float:
        """Share of generated titles that name a real catalog item exactly (after normalisation)."""
        return self.n_exact / self.n_generated if self.n_generated else 0.0

    @property
    def item_ids(self) -> list[str]:
        return [item.item_id for item in self.items]


class PopularityPrior:
    """Normalised log popularity, ``log1p(count) / log1p(max count)`` in [0, 1]; missing or negative counts are 0.

    Computed per item on demand, so a large popularity table costs one pass (its maximum) per request.
    """

    def __init__(self, popularity: Mapping[str, float] | None = None) -> None:
        self.popularity: Mapping[str, float] = popularity or {}
        top = max(self.popularity.values(), default=0.0)
        self._scale = math.log1p(top) if top > 0 else 0.0

    def __call__(self, item_id: str) -> float:
        if not self._scale:
            return 0.0
        return math.log1p(max(0.0, float(self.popularity.get(item_id, 0.0)))) / self._scale


def embed_profile(
    texts: Sequence[str], embedder: Embedder, weights: Sequence[float] | None = None
) -> np.ndarray | None:
    """A profile vector: the (weighted) mean embedding of history titles, unit length; ``None`` for no titles."""
    return mean_embedding(embedder.encode(texts), weights) if texts else None


def nearest(texts: Sequence[str], index: CatalogIndex, k: int, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
    """Content-only retrieval: the ``k`` catalog items nearest the mean embedding of ``texts``, as (id, cosine)."""
    profile = embed_profile(texts, index.embedder)
    if profile is None:
        return []
    ids, scores = index.search(profile, k, exclude_ids=exclude)
    return list(zip(ids[0], scores[0].tolist(), strict=True))


@dataclass
class _Match:
    candidate: int
    item_id: str
    similarity: float
    source: Source


class Grounder:
    """Maps generated candidates to exactly ``k`` distinct catalog items of the index's platform.

    For each candidate, in this order: a normalised exact title match (similarity 1.0; several items with the same
    title resolve to the most popular, then the smallest id), else its nearest catalog neighbour by cosine
    (dropped when below ``min_similarity``). Items in ``exclude`` are never returned. Candidates grounding to the
    same item merge (best similarity kept, every generated text remembered). Missing places are filled with the
    neighbours of ``profile_vector``, then the most popular items (item-id order where popularity is unknown).
    ``score = (1 - w) * similarity + w * normalised_log_popularity``; generated items rank first, then profile
    fills, then popularity fills, each by score, ties by item id. Fewer than ``k`` items come back only when the
    catalog minus ``exclude`` holds fewer; an empty catalog raises ``EmptyCatalogError``.
    """

    def __init__(self, *, min_similarity: float | None = None) -> None:
        self.min_similarity = min_similarity

    def ground(
        self,
        candidates: Sequence[GeneratedCandidate],
        index: CatalogIndex,
        *,
        exclude: Iterable[str] = (),
        k: int = 10,
        popularity: Mapping[str, float] | None = None,
        popularity_weight: float = 0.0,
        profile_vector: np.ndarray | None = None,
    ) -> GroundingResult:
        """Ground ``candidates`` in ``index``: ``k`` ranked items, none in ``exclude`` (see the class docstring)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not 0.0 <= popularity_weight <= 1.0:
            raise ValueError(f"popularity_weight must be in [0, 1], got {popularity_weight}")
        if len(index) == 0:
            raise EmptyCatalogError(f"the catalog of platform '{index.platform}' has no items to ground to")
        blocked = set(exclude)
        prior = PopularityPrior(popularity)

        matches, n_exact, n_history, pending = self._exact_matches(candidates, index, blocked, prior)
        matches += self._neighbour_matches(candidates, pending, index, blocked)
        matched = {match.candidate for match in matches}
        unmatched = tuple(c.title for i, c in enumerate(candidates) if i not in matched)

        def score(item_id: str, similarity: float) -> float:
            return (1.0 - popularity_weight) * similarity + popularity_weight * prior(item_id)

        # equal scores (e.g. exact matches) keep the order the LLM wrote them in
        generated = sorted(self._merge(matches, candidates, index, score),
                           key=lambda item: -round(item.score, SCORE_DECIMALS))[:k]
        chosen = blocked | {item.item_id for item in generated}
        profile = self._profile_fill(index, profile_vector, k - len(generated), chosen, score)
        chosen |= {item.item_id for item in profile}
        popular = _popularity_fill(index, k - len(generated) - len(profile), chosen, prior)
        return GroundingResult(
            platform=index.platform,
            items=tuple(generated + _ranked(profile) + popular),
            n_generated=len(candidates),
            n_exact=n_exact,
            n_history=n_history,
            mean_similarity=float(np.mean([m.similarity for m in matches])) if matches else None,
            unmatched=unmatched,
        )

    @staticmethod
    def _exact_matches(
        candidates: Sequence[GeneratedCandidate], index: CatalogIndex, blocked: set[str], prior: PopularityPrior
    ) -> tuple[list[_Match], int, int, list[int]]:
        """Exact matches, the exact-match and history-repeat counts, and the candidates left for neighbour search."""
        matches: list[_Match] = []
        n_exact = n_history = 0
        pending: list[int] = []
        for position, candidate in enumerate(candidates):
            found = index.lookup_title(candidate.title)
            allowed = [item_id for item_id in found if item_id not in blocked]
            n_exact += bool(found)
            n_history += bool(found) and not allowed
            if allowed:
                best = min(allowed, key=lambda item_id: (-prior(item_id), item_id))
                matches.append(_Match(position, best, 1.0, "exact"))
            elif normalise_title(candidate.title):
                pending.append(position)
        return matches, n_exact, n_history, pending

    def _neighbour_matches(
        self, candidates: Sequence[GeneratedCandidate], pending: list[int], index: CatalogIndex, blocked: set[str]
    ) -> list[_Match]:
        if not pending:
            return []
        vectors = index.embedder.encode([clean_title(candidates[i].title) for i in pending])
        ids, scores = index.search(vectors, 1, exclude_ids=blocked)
        return [
            _Match(position, found[0], float(found_scores[0]), "neighbour")
            for position, found, found_scores in zip(pending, ids, scores, strict=True)
            if found and (self.min_similarity is None or found_scores[0] >= self.min_similarity)
        ]

    @staticmethod
    def _merge(
        matches: list[_Match],
        candidates: Sequence[GeneratedCandidate],
        index: CatalogIndex,
        score: Callable[[str, float], float],
    ) -> list[GroundedItem]:
        """One item per distinct catalog id, in the order of their first candidate; its best match decides
        similarity and source."""
        by_item: dict[str, list[_Match]] = {}
        for match in matches:
            by_item.setdefault(match.item_id, []).append(match)
        items = []
        for item_id, group in sorted(by_item.items(), key=lambda entry: min(m.candidate for m in entry[1])):
            group.sort(key=lambda m: (-m.similarity, m.source != "exact", m.candidate))
            best = group[0]
            items.append(
                GroundedItem(
                    item_id=item_id,
                    title=index.title(item_id),
                    score=score(item_id, best.similarity),
                    similarity=best.similarity,
                    source=best.source,
                    generated_texts=tuple(candidates[m.candidate].title for m in group),
                    rationales=tuple(candidates[m.candidate].rationale for m in group),
                )
            )
        return items

    @staticmethod
    def _profile_fill(
        index: CatalogIndex,
        profile_vector: np.ndarray | None,
        need: int,
        chosen: set[str],
        score: Callable[[str, float], float],
    ) -> list[GroundedItem]:
        if need <= 0 or profile_vector is None:
            return []
        norm = float(np.linalg.norm(profile_vector))
        if norm < 1e-12:
            return []
        ids, scores = index.search(profile_vector / norm, need, exclude_ids=chosen)
        return [
            GroundedItem(item_id, index.title(item_id), score(item_id, float(s)), float(s), "profile")
            for item_id, s in zip(ids[0], scores[0].tolist(), strict=True)
        ]


def _ranked(items: list[GroundedItem]) -> list[GroundedItem]:
    return sorted(items, key=lambda item: (-round(item.score, SCORE_DECIMALS), item.item_id))


def most_popular(index: CatalogIndex, n: int, exclude: Iterable[str], prior: PopularityPrior) -> list[str]:
    """The ``n`` most popular items of ``index`` outside ``exclude``, by popularity then item id."""
    if n <= 0:
        return []
    blocked = set(exclude)
    return heapq.nsmallest(n, (item_id for item_id in index.item_ids if item_id not in blocked),
                           key=lambda item_id: (-prior(item_id), item_id))


def _popularity_fill(index: CatalogIndex, need: int, chosen: set[str], prior: PopularityPrior) -> list[GroundedItem]:
    """The ``need`` most popular items not yet chosen, ranked by popularity then item id."""
    return [GroundedItem(item_id, index.title(item_id), prior(item_id), None, "popularity")
            for item_id in most_popular(index, need, chosen, prior)]
