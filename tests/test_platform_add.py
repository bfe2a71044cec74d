"""A platform onboarded after a pipeline was fitted: `Pipeline.add_platform` (textseq scores it from its titles,
popularity and item-kNN start it with no counts) and `genrec platform add --pipeline DIR`, which keeps it in the
folder; and what a pipeline says when no source can rank a user's empty history."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_textseq import SMALL, TOPICS, HashedWords, topic_word, world

from genrec.errors import ConflictError, GenrecError
from genrec.pipeline import Pipeline, PipelineSpec
from genrec.pipeline.types import Context, Interaction

GARDEN = [f"g{k}_{i}" for k in range(TOPICS) for i in range(3)]
GARDEN_TITLES = {("garden", x): f"{topic_word(int(x[1]))} seeds {x}" for x in GARDEN}


def spec(*kinds: str) -> PipelineSpec:
    options = {"textseq": SMALL, "sasrec": {"max_len": 8, "max_epochs": 1, "progress": False}}
    return PipelineSpec.from_dict({"name": "+".join(kinds), "llm": None, "fusion": {"tune_users": 30},
                                   "sources": [{"kind": k, "n": 10, "options": options.get(k, {})} for k in kinds]})


@pytest.fixture(scope="module")
def fitted():
    train, valid, test = world()
    pipeline = Pipeline(spec("popularity", "itemknn", "textseq"), embedder=HashedWords())
    pipeline.fit(train, valid)
    return pipeline, train, test


def garden_context(case) -> Context:
    return Context(case.user_id, "garden", case.history)


def test_an_added_platform_is_ranked_by_every_source_without_a_refit_and_kept_by_save(fitted, tmp_path) -> None:
    pipeline, train, test = fitted
    with pytest.raises(GenrecError, match="without platform 'garden'"):
        pipeline.recommend(garden_context(test[0]), k=3)
    pipeline.add_platform("garden", GARDEN, GARDEN_TITLES)
    topics = []
    for case in test[:12]:
        items = pipeline.recommend(garden_context(case), k=3)
        assert len(items) == 3 and all(item.item_id in GARDEN and item.title.startswith("topic") for item in items)
        # popularity and item-kNN know no garden user yet: 0, and no crash; textseq ranks from the titles
        assert all(item.sources["popularity"] == 0.0 and item.sources["itemknn"] == 0.0 for item in items)
        top = pipeline.sources["textseq"].candidates(garden_context(case), 1)[0][0]
        topics.append(top.split("_")[0] == f"g{case.history[0].item_id.split('_')[0][1:]}")
    assert np.mean(topics) > 0.8  # textseq's best garden item is of the user's topic
    assert pipeline.fit_info["added_platforms"][0]["platform"] == "garden"

    folder = pipeline.save(tmp_path / "p")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # nothing left beside it
    loaded = Pipeline.load(folder, embedder=HashedWords())
    context = garden_context(test[0])
    assert loaded.recommend(context, k=5) == pipeline.recommend(context, k=5)
    assert json.loads((folder / "fit.json").read_text())["added_platforms"][0]["items"] == len(GARDEN)

    # posted events reach the new platform's counts as for a fitted one
    updated = loaded.update([Interaction("arts", "a0_0", 0.0)], [Interaction("garden", "g0_1", 1.0)])
    assert updated == ["popularity", "itemknn"]
    j = GARDEN.index("g0_1")
    assert loaded.sources["popularity"].score([context], "garden")[0, j] == 1.0
    near = Context("v", "garden", (Interaction("arts", "a0_0", 0.0),))
    assert loaded.sources["itemknn"].score([near], "garden")[0, j] > 0
    with pytest.raises(ConflictError, match="already ranks platform 'garden'"):
        loaded.add_platform("garden", GARDEN, GARDEN_TITLES)


def test_adding_a_platform_is_refused_whole_when_a_source_needs_a_refit_or_an_item_has_no_title(fitted) -> None:
    pipeline, train, _ = fitted
    untitled = {k: v for k, v in GARDEN_TITLES.items() if k != ("garden", "g0_0")}
    with pytest.raises(GenrecError, match=r"1 item\(s\) of platform 'shed' have no title, e.g. 'g0_0'"):
        pipeline.add_platform("shed", GARDEN, {(("shed", i)): t for (_, i), t in untitled.items()})
    assert all("shed" not in source.catalogs for source in pipeline.sources.values())
    with_sasrec = Pipeline(spec("popularity", "sasrec"))
    with_sasrec.fit(train, world()[1])
    with pytest.raises(GenrecError, match=r"sasrec \(sasrec\) cannot score a platform added after fitting"):
        with_sasrec.add_platform("garden", GARDEN, GARDEN_TITLES)
    assert "garden" not in with_sasrec.sources["popularity"].catalogs


def test_an_empty_history_is_an_error_only_when_no_source_of_the_pipeline_can_rank_it(fitted) -> None:
    pipeline, train, _ = fitted
    empty = Context("nobody", "office", ())
    assert len(pipeline.recommend(empty, k=3)) == 3  # popularity ranks it
    alone = Pipeline(spec("textseq"), embedder=HashedWords())
    alone.fit(train, world()[1])
    with pytest.raises(GenrecError, match="pipeline 'textseq' cannot rank 'office' items for user 'nobody': "
                                          "textseq: the history is empty"):
        alone.recommend(empty, k=3)
    # the harness's batch path still ranks it (catalog order: no preference)
    assert alone.score([empty], "office").shape == (1, len(train.catalogs["office"]))


# --- through the CLI, on a small store ----------------------------------------------------------------------------

BOOKS = ["Dune", "Neuromancer", "Foundation", "Hyperion", "Solaris", "Ubik", "Contact", "Roadside Picnic"]
MUSIC = ["Kind of Blue", "Blue Train", "Giant Steps", "Head Hunters", "Maiden Voyage", "Mingus Ah Um"]
GAMES = ["Dune II", "Foundation board game", "Solaris puzzle", "Blue Train simulator", "Giant Steps rhythm game"]


def write_shelf(root: Path, users: int = 24) -> Path:
    """Two platforms in the canonical CSV layout, a user split and a third platform's catalog (games)."""
    root.mkdir(parents=True, exist_ok=True)
    items = [("books", f"b{i}", t) for i, t in enumerate(BOOKS)] + [("music", f"m{i}", t) for i, t in enumerate(MUSIC)]
    pd.DataFrame(items, columns=["platform", "item_id", "title"]).to_csv(root / "items.csv", index=False)
    rows, splits = [], []
    for u in range(users):
        for step in range(6):
            platform, n = ("books", len(BOOKS)) if step % 2 == 0 else ("music", len(MUSIC))
            item = f"{platform[0]}{(u + step // 2 * (1 + u % 3)) % n}"
            rows.append((f"u{u}", platform, item, f"2024-01-{1 + step:02d}T{u % 24:02d}:00:00Z"))
        splits.append((f"u{u}", "test" if u % 4 == 0 else "valid" if u % 4 == 1 else "train"))
    pd.DataFrame(rows, columns=["user_id", "platform", "item_id", "timestamp"]).to_csv(root / "events.csv",
                                                                                       index=False)
    pd.DataFrame(splits, columns=["user_id", "split"]).to_csv(root / "splits.csv", index=False)
    pd.DataFrame({"sku": [f"x{i}" for i in range(len(GAMES))], "name": GAMES}).to_csv(root / "games.csv",
                                                                                       index=False)
    return root


def genrec(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GENREC_HOME": str(home), "GENREC_DB": str(home / "store.duckdb"), "COLUMNS": "200",
           "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "genrec.cli", *args], capture_output=True, text=True, env=env,
                            timeout=600)
    return result


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def test_platform_add_with_pipeline_makes_the_folder_rank_the_new_platform(tmp_path) -> None:
    files, home = write_shelf(tmp_path / "files"), tmp_path / "home"
    ok(genrec("data", "import-file", str(files / "items.csv"), "--kind", "items", "--create-platforms", home=home))
    ok(genrec("data", "import-file", str(files / "events.csv"), "--dataset", "shelf", home=home))
    ok(genrec("data", "import-file", str(files / "splits.csv"), "--kind", "splits", "--dataset", "shelf", home=home))
    ok(genrec("data", "register", "shelf", "--split-from-store", home=home))
    textseq = {"max_len": 8, "hidden_size": 16, "inner_size": 32, "text_dim": 8, "n_experts": 2, "max_epochs": 2,
               "time_budget_s": None}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({
        "name": "shelf-textseq", "dataset": "shelf", "llm": None,
        "protocol": {"targets": "last-per-platform", "users": "dataset", "seed": 2020},
        "sources": [{"kind": "popularity", "n": 5}, {"kind": "itemknn", "n": 5},
                    {"kind": "textseq", "n": 5, "options": textseq}], "fusion": {"tune_users": 6}}))
    folder = tmp_path / "pipeline"
    ok(genrec("fit", "--config", str(tmp_path / "spec.yaml"), "--out", str(folder), home=home))

    # a folder that is not a pipeline is refused before the store changes
    bad = genrec("platform", "add", "games", "--catalog", str(files / "games.csv"), "--map", "item_id=sku",
                 "--map", "title=name", "--pipeline", str(tmp_path), home=home)
    assert bad.returncode == 2 and "not a pipeline folder" in bad.stderr
    assert "games" not in ok(genrec("platform", "list", home=home)).stdout

    added = ok(genrec("platform", "add", "games", "--catalog", str(files / "games.csv"), "--map", "item_id=sku",
                      "--map", "title=name", "--pipeline", str(folder), "--json", home=home))
    assert json.loads(added.stdout)["pipelines"] == [str(folder)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["files", "home", "pipeline", "spec.yaml"]
    answer = json.loads(ok(genrec("recommend", "--pipeline", str(folder), "--user", "u0", "--platform", "games",
                                  "-k", "3", "--json", home=home)).stdout)
    assert [item["item_id"] in {f"x{i}" for i in range(len(GAMES))} for item in answer["items"]] == [True] * 3
    assert all(item["sources"]["textseq"] != 0.0 for item in answer["items"])
    [record] = json.loads((folder / "fit.json").read_text())["added_platforms"]
    assert (record["platform"], record["items"]) == ("games", len(GAMES))
