"""The recommendation pipeline: candidate pool, fusion tuning, fit / score / recommend / save / load, specs, and the
CLI (`genrec fit`, `genrec recommend --pipeline`) ranking exactly as the evaluated object does."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from genrec.errors import GenrecError
from genrec.pipeline import Pipeline, PipelineSpec, candidate_pool, shipped_names, shipped_spec, specs_dir
from genrec.pipeline.fitting import default_spec
from genrec.pipeline.fusion import LLM, FusionSpec, TuningCase, ndcg10, tune
from genrec.pipeline.types import Context, EvalCase, Interaction, TrainData

# --- pool ------------------------------------------------------------------------------------------------------


def test_pool_is_the_union_of_each_sources_top_n_without_owned_items() -> None:
    catalog = ["a", "b", "c", "d", "e"]
    rows = {"x": np.array([5.0, 4, 3, 2, 1]), "y": np.array([1.0, 2, 3, 4, 5])}
    pool = candidate_pool(rows, catalog, exclude={"a"}, n=2)
    assert pool.items == ["b", "c", "e", "d"]  # x: b, c (a is owned); y: e, d
    assert pool.proposed_by == {"b": ["x"], "c": ["x"], "e": ["y"], "d": ["y"]}
    np.testing.assert_array_equal(pool.scores["y"], [2, 3, 5, 4])  # every source scores every pooled item
    per_source = candidate_pool(rows, catalog, exclude=set(), n={"x": 1, "y": 3})
    assert per_source.items == ["a", "e", "d", "c"]
    kept = candidate_pool(rows, catalog, exclude=set(), n=2, keep=lambda item: item != "b")
    assert kept.items[:2] == ["a", "c"]


# --- fusion ----------------------------------------------------------------------------------------------------


def _tuning_cases(n: int = 60, seed: int = 0) -> list[TuningCase]:
    """Pools of 12 items: ``good`` ranks the target first 70% of the time, ``noise`` is random, the LLM's raw
    score is a weaker signal plus a title prior that calibration must take out."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        target = int(rng.integers(12))
        good = rng.normal(size=12)
        if rng.random() < 0.7:
            good[target] = good.max() + 1
        signal = rng.normal(size=12)
        signal[target] += 1.5
        priors = rng.normal(scale=3.0, size=12)
        cases.append(TuningCase({"good": good, "noise": rng.normal(size=12), LLM: signal + priors}, priors, target))
    return cases


def test_fusion_is_never_worse_than_its_best_single_component_and_calibrates() -> None:
    cases = _tuning_cases()
    fusion = tune(cases, ["good", "noise", LLM], FusionSpec(), calibrations=[0.0, 0.5, 1.0])
    singles = fusion.report["single_components"]
    assert fusion.report["tuned"] >= max(singles.values())
    assert fusion.report["tuned"] == pytest.approx(ndcg10(fusion, cases))
    assert singles["llm(a=1.0)"] > singles["llm(a=0.0)"]  # taking the prior out recovers the signal
    assert fusion.weights["good"] > 0 and fusion.weights["noise"] == 0
    held_out = _tuning_cases(seed=1)
    assert ndcg10(fusion, held_out) > ndcg10(type(fusion)({"good": 1.0, "noise": 0.0, LLM: 0.0}), held_out)


def test_fusion_needs_validation_cases() -> None:
    with pytest.raises(GenrecError, match="validation cases"):
        tune([], ["a", "b"], FusionSpec())


# --- the pipeline on a small synthetic data set ------------------------------------------------------------------

CATALOG = [f"i{j}" for j in range(12)]


def _data(users: int = 40, seed: int = 0) -> tuple[TrainData, list[EvalCase]]:
    """Users walk a cycle i0 -> i1 -> ... (item-item co-occurrence carries the signal); i0 is the most popular."""
    rng = random.Random(seed)
    sequences, valid = {}, []
    for u in range(users):
        start = rng.randrange(12)
        walk = [CATALOG[(start + t) % 12] for t in range(5)] + ["i0"]
        events = [Interaction("p", item, float(t)) for t, item in enumerate(walk)]
        sequences[f"u{u}"] = events[:-2]
        valid.append(EvalCase(user_id=f"u{u}", platform="p", history=tuple(events[:-2]), target=walk[-2],
                              split="valid", timestamp=float(len(walk) - 2)))
    return TrainData(sequences, {"p": CATALOG}, {("p", item): f"Item {item}" for item in CATALOG}), valid


def _spec(**extra) -> PipelineSpec:
    return PipelineSpec.from_dict({"name": "test", "sources": [{"kind": "popularity", "n": 4},
                                                               {"kind": "itemknn", "n": 4}],
                                   "fusion": {"tune_users": 40}, **extra})


def test_pipeline_fits_ranks_and_round_trips_through_its_folder(tmp_path: Path) -> None:
    train, valid = _data()
    pipeline = Pipeline(_spec())
    pipeline.fit(train, valid)
    assert pipeline.fusion.weights["itemknn"] > 0  # the cycle is item-item signal
    assert pipeline.fusion.report["tuned"] >= max(pipeline.fusion.report["single_components"].values())
    context = Context("new", "p", (Interaction("p", "i3", 0.0), Interaction("p", "i4", 1.0)))
    items = pipeline.recommend(context, k=3)
    assert [item.rank for item in items] == [1, 2, 3]
    assert items[0].item_id in {"i2", "i5"}  # the cycle's neighbours of the history (co-occurrence is symmetric)
    assert not {"i3", "i4"} & {item.item_id for item in items}  # owned items never come back
    assert set(items[0].sources) == {"popularity", "itemknn"} and "itemknn" in items[0].proposed_by
    assert items[0].title == f"Item {items[0].item_id}"
    scores = pipeline.score([context], "p")
    assert scores.shape == (1, len(CATALOG))
    pooled = [CATALOG[j] for j in np.argsort(-scores[0], kind="stable") if CATALOG[j] not in {"i3", "i4"}]
    assert pooled[:3] == [item.item_id for item in items]  # the harness's ranking is the recommendation's

    folder = pipeline.save(tmp_path / "fitted", extra={"note": "test"})
    assert [p.name for p in tmp_path.iterdir()] == ["fitted"]  # no temporary folder left behind
    loaded = Pipeline.load(folder)
    np.testing.assert_array_equal(loaded.score([context], "p"), scores)
    assert loaded.recommend(context, k=3) == items
    assert json.loads((folder / "fit.json").read_text())["note"] == "test"


def test_single_source_pipeline_needs_no_tuning() -> None:
    train, _ = _data()
    pipeline = Pipeline(PipelineSpec.from_dict({"name": "pop", "sources": ["popularity"]}))
    pipeline.fit(train)
    assert pipeline.fusion.weights == {"popularity": 1.0}
    assert pipeline.recommend(Context(None, "p", (Interaction("p", "i0", 0.0),)), k=1)[0].item_id != "i0"


@pytest.mark.parametrize(("raw", "message"), [
    ({"name": "x", "sources": []}, "at least one candidate source"),
    ({"name": "x", "sources": ["itemknn", "itemknn"]}, "unique"),
    ({"name": "x", "sources": ["nope"]}, "unknown candidate source 'nope'"),
    ({"name": "x", "sources": [{"kind": "itemknn", "n": 0}]}, "n must be at least 1"),
    ({"name": "x", "sources": ["itemknn"], "colour": 1}, "unknown key"),
    ({"sources": ["itemknn"]}, "'name' and 'sources' are required"),
    ({"name": "x", "sources": ["itemknn"], "llm": {"calibrations": [2.0]}}, "calibrations must lie in"),
    ({"name": "x", "sources": ["itemknn"], "llm": {"llm": {"colour": 1}}}, "llm.llm"),
    ({"name": "x", "sources": [{"kind": "itemknn", "options": {"colour": 1}}]}, "bad options"),
])
def test_bad_specs_fail_with_a_clear_message(raw: dict, message: str) -> None:
    with pytest.raises(GenrecError, match=message):
        Pipeline(PipelineSpec.from_dict(raw))


def test_loading_a_folder_that_is_not_a_pipeline_says_so(tmp_path: Path) -> None:
    with pytest.raises(GenrecError, match="not a pipeline folder"):
        Pipeline.load(tmp_path)


def test_shipped_specs_parse_and_every_default_is_shipped() -> None:
    names = shipped_names()
    assert names, "no shipped pipeline specs"
    for name in names:
        spec = PipelineSpec.from_yaml(shipped_spec(name))
        assert spec.dataset
    for dataset, name in yaml.safe_load((specs_dir() / "defaults.yaml").read_text()).items():
        assert default_spec(dataset).name == name and PipelineSpec.from_yaml(shipped_spec(name)).dataset == dataset
    with pytest.raises(GenrecError, match="no default pipeline"):
        default_spec("movielens-1m")
    with pytest.raises(GenrecError, match="no pipeline spec"):
        shipped_spec("no-such-pipeline")


# --- the CLI, the real model and real data ---------------------------------------------------------------------


def _genrec(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genrec.cli", *args], capture_output=True, text=True, env=env,
                          timeout=900)


@pytest.mark.integration
def test_fit_and_recommend_through_the_cli_rank_as_the_pipeline_object(tmp_path: Path) -> None:
    """A small hybrid (popularity + ItemKNN + the real LLM) fitted by `genrec fit` on movielens: `genrec
    recommend --pipeline` answers with the ranking the loaded object's harness path (`score`) gives."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    db = str(tmp_path / "store.duckdb")
    spec = {"name": "tiny-hybrid", "dataset": "movielens-latest-small",
            "sources": [{"kind": "popularity", "n": 5}, {"kind": "itemknn", "n": 5}],
            "llm": {"score_tokens": 4, "calibrations": [0.0, 1.0]}, "fusion": {"tune_users": 3, "rounds": 1}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    fitted = _genrec("fit", "--config", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "p"), "--db", db,
                     env=env)
    assert fitted.returncode == 0, fitted.stderr + fitted.stdout
    assert "fusion" in fitted.stdout
    answer = _genrec("recommend", "--pipeline", str(tmp_path / "p"), "--user", "1", "--platform", "movies",
                     "-k", "5", "--json", "--db", db, env=env)
    assert answer.returncode == 0, answer.stderr
    items = json.loads(answer.stdout)["items"]
    assert len(items) == 5 and all(item["llm"] is not None for item in items)
    assert all(item["origin"] for item in items)

    from genrec.data.store import Store
    from genrec.pipeline.fitting import user_context

    with Store(db, read_only=True) as store:
        pipeline = Pipeline.load(tmp_path / "p", store=store)
        context = user_context(store, "1", "movies")
        catalog = pipeline.sources["popularity"].catalogs["movies"]
        scores = pipeline.score([context], "movies")[0]
    ranked = [catalog[j] for j in np.argsort(-scores, kind="stable") if catalog[j] not in context.owned()]
    assert ranked[:5] == [item["item_id"] for item in items]
    report = _genrec("report", "--pipeline", str(tmp_path / "p"), "--user", "1", "--platform", "movies", "-k", "3",
                     "--format", "json", "--db", db, env=env)
    assert report.returncode == 0, report.stderr
    movies = json.loads(report.stdout)["recommendations"][0]
    assert movies["pipeline"] == "tiny-hybrid" and [item["item_id"] for item in movies["items"]] == ranked[:3]

    bad = _genrec("recommend", "--pipeline", str(tmp_path), "--user", "1", "--platform", "movies", "--db", db,
                  env=env)
    assert bad.returncode == 2 and "not a pipeline folder" in bad.stderr


@pytest.mark.integration
def test_rationales_are_written_by_the_llm_or_marked_and_always_faithful(llm, embedder) -> None:
    """The real model explains three items from a small history: every rationale cites evidence from that history,
    one the LLM wrote opens with its evidence, adds a reason of its own and passes the faithfulness check, and any
    other is an evidence sentence marked `template`."""
    from genrec.pipeline.explain import Explainer
    from genrec.pipeline.types import ScoredItem
    from genrec.prompts import PromptTemplates

    history = ["Toy Story (1995)", "Finding Nemo (2003)", "The Godfather (1972)", "Goodfellas (1990)"]
    catalog = [*history, "Monsters, Inc. (2001)", "Casino (1995)", "Up (2009)", "Alien (1979)"]
    items = [ScoredItem(rank=i, item_id=str(i), title=title, platform="movies", score=1.0 / i, sources={},
                        proposed_by=("itemknn",)) for i, title in enumerate(["Monsters, Inc. (2001)", "Casino (1995)",
                                                                             "Up (2009)"], 1)]
    explainer = Explainer(llm, embedder, PromptTemplates(), catalog, names=["movies"])
    explained = explainer.explain(items, history, verb="watched")
    assert [item.item_id for item in explained] == ["1", "2", "3"]
    assert explained[1].evidence[0] in ("The Godfather (1972)", "Goodfellas (1990)")  # the nearest history titles
    for item in explained:
        assert item.rationale and item.rationale_source in ("llm", "template")
        assert set(item.evidence) <= set(history) and len(item.evidence) == 2
        assert explainer.checker.check(item.rationale, history, item.title).status == "supported"
    written = [item for item in explained if item.rationale_source == "llm"]
    assert len(written) >= 2  # greedy decoding: the default model writes these
    for item in written:
        opening = f'Since you watched "{item.evidence[0]}", you will probably enjoy it because '
        assert item.rationale.startswith(opening) and len(item.rationale[len(opening):].split()) >= 3
    no_history = explainer.explain(items[:1], [], verb="watched")
    assert no_history[0].rationale_source == "template" and not no_history[0].evidence
    # the platform, which the prompt names, is not an item a rationale could wrongly claim
    quoting = 'On "Movies", "Up (2009)" is close to "Toy Story (1995)".'
    assert explainer.checker.check(quoting, history, "Up (2009)").status == "supported"


@pytest.mark.integration
def test_several_lists_are_explained_with_one_batched_generation(llm, embedder) -> None:
    """``explain_many`` (the server's batch of clients' lists) writes every list's prompts in one generation; each
    list keeps its items in order and cites only its own user's history."""
    from genrec.pipeline.explain import Explainer
    from genrec.pipeline.types import ScoredItem
    from genrec.prompts import PromptTemplates

    class Counting:  # the real model, with the batch sizes of its generate calls recorded
        def __init__(self, model) -> None:
            self.model, self.batches = model, []

        def format_chat(self, messages):
            return self.model.format_chat(messages)

        def generate(self, prompts, **options):
            self.batches.append((len(prompts), options.get("do_sample", False)))
            return self.model.generate(prompts, **options)

    kids = ["Toy Story (1995)", "Finding Nemo (2003)"]
    crime = ["The Godfather (1972)", "Goodfellas (1990)"]
    catalog = [*kids, *crime, "Monsters, Inc. (2001)", "Casino (1995)", "Up (2009)"]

    def listed(*titles):
        return [ScoredItem(rank=i, item_id=t, title=t, platform="movies", score=1.0 / i, sources={},
                           proposed_by=("itemknn",)) for i, t in enumerate(titles, 1)]

    counting = Counting(llm)
    explainer = Explainer(counting, embedder, PromptTemplates(), catalog, names=["movies"])
    lists = [(listed("Monsters, Inc. (2001)", "Up (2009)"), kids, "watched"),
             (listed("Casino (1995)"), crime, "watched"), (listed("Up (2009)"), [], "watched")]
    out = explainer.explain_many(lists)
    assert counting.batches[0] == (3, False)  # the three titled lists' items in one greedy generation
    assert all(sampled for _, sampled in counting.batches[1:]) and len(counting.batches) <= 2
    assert [[item.item_id for item in items] for items in out] == [["Monsters, Inc. (2001)", "Up (2009)"],
                                                                   ["Casino (1995)"], ["Up (2009)"]]
    for items, (_, history, _) in zip(out[:2], lists[:2], strict=True):
        for item in items:
            assert set(item.evidence) == set(history)  # its own user's titles
            assert explainer.checker.check(item.rationale, history, item.title).status == "supported"
    assert out[2][0].rationale_source == "template" and not out[2][0].evidence
