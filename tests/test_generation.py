"""The generation source (kind ``generation``): the real default model writes titles for a user of a tiny synthetic
store (two platforms of 16 titled items), grounded to catalog items; the source round-trips through its folder,
refuses an empty history, and a pipeline lists it beside popularity, from `genrec fit` to `genrec recommend`."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from genrec.data.importers import ImportBatch
from genrec.data.schema import Platform, StoreDataset
from genrec.data.store import Store
from genrec.errors import GenrecError
from genrec.evaluation.protocol import Protocol, build
from genrec.pipeline import Pipeline, PipelineSpec
from genrec.pipeline.fitting import user_context
from genrec.pipeline.sources import CandidateSource
from genrec.pipeline.sources import build as build_source
from genrec.pipeline.types import Context, Interaction

BOOKS = ["The Hobbit", "Dune", "Emma", "Dracula", "Ulysses", "Beloved", "Rebecca", "Matilda", "Heidi", "Ivanhoe",
         "Persuasion", "Frankenstein", "Middlemarch", "Walden", "Kidnapped", "Lolita"]
MOVIES = ["Alien", "Jaws", "Heat", "Rocky", "Psycho", "Vertigo", "Casablanca", "Titanic", "Gladiator", "Amadeus",
          "Fargo", "Goodfellas", "Chinatown", "Ghostbusters", "Inception", "Memento"]
TITLES = {"books": BOOKS, "movies": MOVIES}


def _store(path: Path) -> None:
    """40 users, each reading then watching a run of neighbouring items on both platforms; data set ``tiny``."""
    rng = random.Random(3)
    rows = []
    for u in range(40):
        start = rng.randrange(16)
        for step in range(6):
            platform = ("books", "movies")[step % 2]
            rows.append((f"u{u:02d}", platform, f"{platform[0]}{(start + step) % 16}", step + 1))
    events = pd.DataFrame(rows, columns=["user_id", "platform", "item_id", "timestamp"])
    events["timestamp"] = pd.to_datetime(events["timestamp"], unit="s").astype("datetime64[us]")
    events["event"], events["value"] = "x", None
    events["_file"], events["_line"] = "t", range(1, len(events) + 1)
    items = pd.DataFrame({"platform": [p for p in TITLES for _ in range(16)],
                          "item_id": [f"{p[0]}{i}" for p in TITLES for i in range(16)],
                          "title": [title for p in TITLES for title in TITLES[p]]})
    for col in ("description", "category", "attributes", "year"):
        items[col] = None
    items["_file"], items["_line"] = "t", range(1, len(items) + 1)
    with Store(path) as store:
        store.ingest(ImportBatch("t", platforms=[Platform("books"), Platform("movies")], events=events, items=items))
        store.register_dataset(StoreDataset("tiny", ("books", "movies")))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(store file, the store open read-only, its training snapshot and validation cases)."""
    db = tmp_path_factory.mktemp("generation") / "store.duckdb"
    _store(db)
    with Store(db, read_only=True) as store:
        data = build(store, Protocol(targets="last-per-platform", users="all"), ["books", "movies"])
        yield db, store, data.train, data.valid


def _source(store, llm, embedder, **options) -> CandidateSource:
    return build_source("generation", options, store=store, encoder=embedder, llm_loader=lambda settings: llm)


@pytest.mark.integration
@pytest.mark.parametrize("decoding", ["catalog", "free"])
def test_generated_candidates_are_unowned_target_items_and_survive_save_load(tiny, llm, embedder, decoding,
                                                                             tmp_path) -> None:
    _, store, train, _ = tiny
    source = _source(store, llm, embedder, decoding=decoding, n_generate=4)
    source.fit(train)
    context = user_context(store, "u00", "movies")
    picked = source.candidates(context, 10)
    assert picked, "the LLM's titles grounded nowhere"
    assert len(picked) <= 4 and {item for item, _ in picked} <= set(train.catalogs["movies"])
    assert not {item for item, _ in picked} & context.owned()
    assert [score for _, score in picked] == sorted((score for _, score in picked), reverse=True)
    assert picked[0][1] == 4.0  # n_generate - rank
    scores = source.score([context], "movies")
    assert scores.shape == (1, 16) and (scores[0] > 0).sum() >= len(picked) and scores.min() == 0.0

    source.save(tmp_path / "generation")
    loaded = CandidateSource.load(tmp_path / "generation", store=store, encoder=embedder,
                                  llm_loader=lambda settings: llm)
    assert loaded.options() == {"decoding": decoding, "n_generate": 4, "llm": None, "batch_size": 8}
    assert loaded.candidates(context, 10) == picked  # greedy decoding: the same titles, the same items


def test_an_empty_history_is_refused_without_asking_the_llm(tiny) -> None:
    _, store, train, _ = tiny
    source = build_source("generation", {}, store=store,
                          llm_loader=lambda settings: pytest.fail("no LLM may load for an empty history"))
    source.fit(train)
    with pytest.raises(GenrecError, match="cannot rank 'movies' items for user 'new': the history is empty"):
        source.candidates(Context("new", "movies", ()), 5)
    np.testing.assert_array_equal(source.score([Context("new", "movies", ())], "movies"), np.zeros((1, 16)))
    scoped = build_source("generation", {}, history_scope="target", store=store)
    scoped.fit(train)
    books_only = Context("u00", "movies", (Interaction("books", "b1", 1.0),))
    assert "history_scope 'target'" in scoped.no_preference(books_only)
    assert source.no_preference(books_only) is None  # the cross-platform history names a book


@pytest.mark.parametrize(("options", "message"), [({"decoding": "scored"}, "'free' or 'catalog'"),
                                                  ({"n_generate": 0}, "at least 1"),
                                                  ({"llm": {"colour": 1}}, "llm")])
def test_bad_generation_options_fail_clearly(options, message) -> None:
    with pytest.raises(GenrecError, match=message):
        build_source("generation", options)


def test_a_pipeline_with_generation_needs_the_store() -> None:
    with pytest.raises(GenrecError, match="source\\(s\\) generation read the event store"):
        Pipeline(PipelineSpec.from_dict({"name": "x", "sources": ["generation", "popularity"]}))


@pytest.mark.integration
def test_a_pipeline_with_generation_shares_the_scorers_llm_and_shows_its_score(tiny, embedder, tmp_path) -> None:
    _, store, train, valid = tiny
    spec = PipelineSpec.from_dict({
        "name": "gen", "sources": [{"kind": "generation", "n": 4, "options": {"n_generate": 4}},
                                   {"kind": "popularity", "n": 4}],
        "llm": {"score_tokens": 4, "calibrations": [0.0]}, "fusion": {"tune_users": 4, "rounds": 1}})
    pipeline = Pipeline(spec, store=store, embedder=embedder)
    pipeline.fit(train, valid)
    assert pipeline.sources["generation"].recommender.llm is pipeline.scorer.recommender.llm  # one loaded model
    context = user_context(store, "u01", "books")
    items = pipeline.recommend(context, k=5)
    assert all("generation" in item.sources for item in items)
    proposed = [item for item in items if "generation" in item.proposed_by]
    assert proposed and all(item.sources["generation"] > 0 for item in proposed)
    folder = pipeline.save(tmp_path / "p")
    loaded = Pipeline.load(folder, store=store, embedder=embedder)
    assert loaded.recommend(context, k=5) == items


@pytest.mark.integration
def test_fit_and_recommend_through_the_cli_with_a_generation_source(tiny, tmp_path) -> None:
    """`genrec fit` on a spec listing generation (no LLM scorer: the source loads the model itself) and popularity;
    `genrec recommend --pipeline` shows the generation score of each item."""
    db, *_ = tiny
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    spec = {"name": "tiny-generation", "dataset": "tiny", "llm": None,
            "protocol": {"targets": "last-per-platform", "users": "all"},
            "sources": [{"kind": "generation", "n": 3, "options": {"n_generate": 3}}, {"kind": "popularity", "n": 3}],
            "fusion": {"tune_users": 4, "rounds": 1}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    copy = tmp_path / "store.duckdb"
    copy.write_bytes(Path(db).read_bytes())
    run = [sys.executable, "-m", "genrec.cli"]
    fitted = subprocess.run([*run, "fit", "--config", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "p"),
                             "--db", str(copy)], capture_output=True, text=True, env=env, timeout=900)
    assert fitted.returncode == 0, fitted.stderr + fitted.stdout
    answer = subprocess.run([*run, "recommend", "--pipeline", str(tmp_path / "p"), "--user", "u02", "--platform",
                             "movies", "-k", "4", "--json", "--db", str(copy)], capture_output=True, text=True,
                            env=env, timeout=900)
    assert answer.returncode == 0, answer.stderr
    items = json.loads(answer.stdout)["items"]
    assert len(items) == 4 and all(set(item["sources"]) == {"generation", "popularity"} for item in items)
    assert any("generation" in item["proposed_by"] and item["sources"]["generation"] > 0 for item in items)


def test_items_at_a_sources_floor_are_never_pooled() -> None:
    from genrec.pipeline import candidate_pool

    rows = {"generation": np.array([0.0, 2.0, 0.0, 1.0]), "popularity": np.array([4.0, 3.0, 2.0, 1.0])}
    pool = candidate_pool(rows, ["a", "b", "c", "d"], exclude=set(), n=3, floors={"generation": 0.0})
    assert pool.proposed_by == {"b": ["generation", "popularity"], "d": ["generation"], "a": ["popularity"],
                                "c": ["popularity"]}
