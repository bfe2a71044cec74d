"""Your own data, end to end: faithful multi-platform import, referential checks, user-id namespaces, data sets
defined in the store and evaluated through the CLI, hardware-aware dtype, caches under GENREC_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import torch

from genrec.data.importers import ImportBatch, file_batch
from genrec.data.readers import read_table
from genrec.data.schema import HistoryItem, Platform
from genrec.data.store import Store
from genrec.errors import DataError, GenrecError

BOOKS = ["Dune", "Neuromancer", "Foundation", "Hyperion", "Solaris", "Ubik", "Contact", "Roadside Picnic"]
MUSIC = ["Kind of Blue", "Blue Train", "Giant Steps", "Head Hunters", "Maiden Voyage", "Mingus Ah Um"]


def write_shelf(root: Path, users: int = 24, prefix: str = "u") -> Path:
    """A two-platform data set in the canonical CSV layout: items and events with a ``platform`` column, and a
    user split. Every user alternates books and music, one event a day, each on a few items."""
    root.mkdir(parents=True, exist_ok=True)
    items = [("books", f"b{i}", t) for i, t in enumerate(BOOKS)] + [("music", f"m{i}", t) for i, t in enumerate(MUSIC)]
    pd.DataFrame(items, columns=["platform", "item_id", "title"]).to_csv(root / "items.csv", index=False)
    rows, splits = [], []
    for u in range(users):
        user = f"{prefix}{u}"
        for step in range(6):
            platform, n = ("books", len(BOOKS)) if step % 2 == 0 else ("music", len(MUSIC))
            item = f"{platform[0]}{(u + step // 2 * (1 + u % 3)) % n}"
            rows.append((user, platform, item, f"2024-01-{1 + step:02d}T{u % 24:02d}:00:00Z"))
        splits.append((user, "test" if u % 4 == 0 else "valid" if u % 4 == 1 else "train"))
    pd.DataFrame(rows, columns=["user_id", "platform", "item_id", "timestamp"]).to_csv(root / "events.csv",
                                                                                       index=False)
    pd.DataFrame(splits, columns=["user_id", "split"]).to_csv(root / "splits.csv", index=False)
    return root


def genrec(*args: str, home: Path, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "GENREC_HOME": str(home), "GENREC_DB": str(home / "store.duckdb"),
                   "COLUMNS": "200", **(env or {})}
    environment.pop("MPLCONFIGDIR", None)  # what a user's shell has: genrec chooses
    return subprocess.run([sys.executable, "-m", "genrec.cli", *args], capture_output=True, text=True,
                          env=environment, cwd=cwd, timeout=300)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def batch(path: Path, kind: str = "events", platform: Platform | None = None, **options) -> ImportBatch:
    return file_batch(path, kind=kind, table=read_table(path), platform=platform, **options)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "s.duckdb") as s:
        yield s


# --- 1. a data set of your own files, registered and evaluated through the CLI ------------------------------------


def test_own_two_platform_data_set_is_imported_registered_and_evaluated_through_the_cli(tmp_path):
    files, home, fake_home = write_shelf(tmp_path / "files"), tmp_path / "genrec-home", tmp_path / "user-home"
    fake_home.mkdir()
    env = {"HOME": str(fake_home)}
    ok(genrec("data", "import-file", str(files / "items.csv"), "--kind", "items", "--create-platforms",
              home=home, env=env))
    ok(genrec("data", "import-file", str(files / "events.csv"), "--dataset", "shelf", home=home, env=env))
    ok(genrec("data", "import-file", str(files / "splits.csv"), "--kind", "splits", "--dataset", "shelf",
              home=home, env=env))
    registered = ok(genrec("data", "register", "shelf", "--split-from-store", home=home, env=env))
    assert "books, music" in registered.stdout
    listed = ok(genrec("data", "list", home=home, env=env)).stdout
    assert "shelf" in listed and "imported" in listed
    config = tmp_path / "shelf.yaml"
    config.write_text("name: shelf-classics\ndataset: shelf\nprotocol:\n  users: dataset\n"
                      "methods: [mostpop, itemknn]\nbootstrap: 50\n")
    result = ok(genrec("eval", "--config", str(config), "--out", str(tmp_path / "results"), home=home, env=env))
    metrics = json.loads((tmp_path / "results" / "shelf-classics" / "metrics.json").read_text())
    assert metrics["variants"]["main"]["data"]["test_cases_per_platform"] == {"books": 6, "music": 6}
    assert {row["method"] for row in metrics["results"]} == {"MostPop", "ItemKNN"}
    assert "ItemKNN" in result.stdout
    # every cache (genrec's and the plotting library's) went under GENREC_HOME, nothing into the user's home
    assert list(fake_home.iterdir()) == []
    assert (home / "matplotlib").is_dir()
    stats = json.loads(ok(genrec("data", "stats", "--dataset", "shelf", "--json", home=home, env=env)).stdout)
    assert stats["users"] == 24 and stats["namespaces"][0]["dataset"] == "shelf"


def test_eval_config_can_name_the_store_platforms_inline(tmp_path):
    from genrec.evaluation.config import parse
    from genrec.evaluation.runner import run

    files = write_shelf(tmp_path / "files", users=12)
    with Store(tmp_path / "s.duckdb") as s:
        s.ingest(batch(files / "items.csv", "items"), create_platforms=True)
        s.ingest(batch(files / "events.csv"))
        config = parse({"name": "inline", "dataset": {"name": "shelf", "platforms": ["music"]},
                        "protocol": {"users": "random", "test_fraction": 0.5, "valid_fraction": 0.0},
                        "methods": ["mostpop"], "bootstrap": 20})
        document = run(config, s, tmp_path / "out", progress=False)
    assert document["variants"]["main"]["data"]["test_cases_per_platform"] == {"music": 6}
    assert document["config"]["dataset_platforms"] == ["music"]
    with pytest.raises(GenrecError, match="dataset: expected a data set name"):
        parse({"name": "x", "dataset": {"name": "shelf", "platform": "music"}, "methods": ["mostpop"]})


def test_a_failing_eval_config_writes_nothing(tmp_path):
    home, out = tmp_path / "home", tmp_path / "results"
    for body in ("name: a\ndataset: nowhere\nmethods: [mostpop]\n",  # unknown data set
                 "name: b\ndataset: movielens-latest-small\nmethods: [mostpopp]\n"):  # unknown method
        config = tmp_path / "bad.yaml"
        config.write_text(body)
        result = genrec("eval", "--config", str(config), "--out", str(out), home=home)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert not out.exists()
    assert "genrec data register" in result.stderr or "unknown method 'mostpopp'" in result.stderr


def test_register_refuses_what_it_cannot_evaluate(store, tmp_path):
    from genrec.data.loading import dataset_platforms, register

    files = write_shelf(tmp_path / "files", users=8)
    store.ingest(batch(files / "items.csv", "items"), create_platforms=True)
    store.ingest(_tagged(files / "events.csv", "shelf"))
    with pytest.raises(GenrecError, match="built-in"):
        register(store, "movielens-latest-small", ["books"])
    with pytest.raises(GenrecError, match="unknown platform 'films'"):
        register(store, "mine", ["films"])
    with pytest.raises(GenrecError, match="--kind splits"):
        register(store, "shelf", split_from_store=True)
    defined = register(store, "shelf")  # platforms from the users imported under the name
    assert defined.platforms == ("books", "music") and dataset_platforms(store, "shelf") == ["books", "music"]
    with pytest.raises(GenrecError, match="genrec data register"):
        dataset_platforms(store, "other")


def _tagged(path: Path, dataset: str, **options) -> ImportBatch:
    out = batch(path, **options)
    out.dataset = dataset
    return out


# --- 2. faithful multi-platform import -----------------------------------------------------------------------------


def test_a_platform_column_wins_over_the_platform_option(store, tmp_path):
    f = tmp_path / "events.csv"
    f.write_text("user_id,platform,item_id,timestamp\nann,books,b1,1\nann,,m1,2\nann,music,m2,3\n")
    items = tmp_path / "items.csv"
    items.write_text("platform,item_id,title\nbooks,b1,Dune\nmusic,m1,Kind of Blue\nmusic,m2,Blue Train\n")
    store.add_platform(Platform("books", "read"))
    store.ingest(batch(items, "items", Platform("music")))
    store.ingest(batch(f, platform=Platform("music")))
    assert [(h.platform, h.item_id) for h in store.history("ann")] == [("books", "b1"), ("music", "m1"),
                                                                       ("music", "m2")]


def test_created_platforms_get_the_verb_and_time_kind_asked_for_and_can_be_changed(tmp_path):
    f = tmp_path / "events.csv"
    f.write_text("user_id,platform,item_id,timestamp\nann,music,m1,1\nann,radio,r1,2\n")
    home = tmp_path / "home"
    refused = genrec("data", "import-file", str(f), "--timestamp-kind", "sequence", home=home)
    assert refused.returncode == 2 and "--create-platforms" in refused.stderr
    assert "genrec platform set music --verb" in refused.stderr
    ok(genrec("data", "import-file", str(f), "--timestamp-kind", "sequence", "--create-platforms", "--verb",
              "listened to", "--allow-unknown-items", home=home))
    platforms = {p["platform"]: p for p in json.loads(ok(genrec("platform", "list", "--json", home=home)).stdout)}
    assert (platforms["radio"]["verb"], platforms["radio"]["time_kind"]) == ("listened to", "sequence")
    ok(genrec("platform", "set", "radio", "--verb", "tuned in to", "--time-kind", "time", home=home))
    spec = tmp_path / "platforms.yaml"
    spec.write_text("music: {time_kind: time}\nbooks: {verb: read, time_kind: sequence}\n")
    ok(genrec("platform", "set", "--file", str(spec), home=home))
    platforms = {p["platform"]: p for p in json.loads(ok(genrec("platform", "list", "--json", home=home)).stdout)}
    assert (platforms["radio"]["verb"], platforms["radio"]["time_kind"]) == ("tuned in to", "time")
    assert (platforms["music"]["verb"], platforms["music"]["time_kind"]) == ("listened to", "time")
    assert (platforms["books"]["verb"], platforms["books"]["time_kind"]) == ("read", "sequence")
    bad = genrec("platform", "set", "radio", "--time-kind", "weekly", home=home)
    assert bad.returncode == 2 and "time, sequence" in bad.stderr


# --- 3. referential checks -----------------------------------------------------------------------------------------


def test_events_for_items_missing_from_the_catalog_are_refused_or_created_when_allowed(store, tmp_path):
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\nf1,Flour\nf2,Sugar\n")
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\nu1,f1,1\nu1,f9,2\nu2,f9,3\nu2,f2,4\n")
    food = Platform("food", "bought")
    store.ingest(batch(items, "items", food))
    with pytest.raises(DataError) as error:
        store.ingest(batch(events, platform=food))
    message = str(error.value)
    assert "events.csv" in message and "line 3" in message and "line 4" in message and "'f9'" in message
    assert "--allow-unknown-items" in message and store.events().empty  # nothing was written
    report = store.ingest(batch(events, platform=food), allow_unknown_items=True)
    assert (report.events_added, report.unknown_items_created, report.events_with_unknown_items) == (4, 1, 2)
    assert "empty title" in report.warnings[0]
    assert store.catalog("food").set_index("item_id")["title"].to_dict() == {"f1": "Flour", "f2": "Sugar", "f9": ""}


def test_links_and_splits_naming_unknown_users_are_refused_unless_allowed(store, tmp_path):
    shop = Platform("shop", "bought")
    store.ingest(ImportBatch("items", [shop], items=pd.DataFrame(
        {"platform": ["shop"], "item_id": ["s1"], "title": ["Pencils"], "description": None, "category": None,
         "attributes": None, "year": None, "_file": "i", "_line": [1]})))
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\nann,s1,1\n")
    store.ingest(batch(events, platform=shop))
    splits = tmp_path / "splits.csv"
    splits.write_text("user_id,split\nann,test\nghost,train\n")
    with pytest.raises(DataError, match="splits name 1 user.*'ghost'.*--allow-unknown-users"):
        store.ingest(batch(splits, "splits"))
    links = tmp_path / "links.csv"
    links.write_text("platform,platform_user_id,user_id\nshop,acct-1,ann\nshop,acct-2,nobody\n")
    with pytest.raises(DataError, match="identity links name 1 user.*'nobody'"):
        store.ingest(batch(links, "links"))
    assert store.splits() == {} and store.links().empty
    report = store.ingest(batch(splits, "splits"), allow_unknown_users=True)
    assert report.unknown_users == 1 and store.splits() == {"ann": "test", "ghost": "train"}


# --- 4. user-id namespaces -----------------------------------------------------------------------------------------


def test_a_second_data_set_cannot_silently_take_over_the_first_ones_user_ids(tmp_path):
    first, second = write_shelf(tmp_path / "a", users=4), write_shelf(tmp_path / "b", users=6)
    home = tmp_path / "home"
    ok(genrec("data", "import-file", str(first / "items.csv"), "--kind", "items", "--create-platforms", home=home))
    ok(genrec("data", "import-file", str(first / "events.csv"), "--dataset", "shelf-a", home=home))
    refused = genrec("data", "import-file", str(second / "events.csv"), "--dataset", "shelf-b", home=home)
    assert refused.returncode == 2 and "4 user id(s) of data set 'shelf-b' already belong to" in refused.stderr
    assert "shelf-a" in refused.stderr and "--same-people" in refused.stderr and "--user-prefix" in refused.stderr
    ok(genrec("data", "import-file", str(second / "events.csv"), "--dataset", "shelf-b", "--user-prefix", "b:",
              home=home))
    stats = json.loads(ok(genrec("data", "stats", "--json", home=home)).stdout)
    assert {n["dataset"]: n["users"] for n in stats["namespaces"]} == {"shelf-a": 4, "shelf-b": 6}
    assert stats["namespace_overlap"]["shelf-a"]["shelf-b"] == 0
    same = ok(genrec("data", "import-file", str(first / "splits.csv"), "--kind", "splits", "--dataset", "shelf-b",
                     "--same-people", home=home))
    assert "4 users already belonged to another data set" in same.stderr
    stats = json.loads(ok(genrec("data", "stats", "--json", home=home)).stdout)
    assert stats["namespace_overlap"]["shelf-a"]["shelf-b"] == 4
    table = ok(genrec("data", "stats", home=home)).stdout
    assert "user-id namespaces" in table and "shared with shelf-a" in table


def test_registered_imports_claim_their_users(store, tmp_path):
    from genrec.data.loading import import_dataset

    import datafiles

    path = datafiles.movielens_csv(tmp_path)
    import_dataset(store, "movielens-latest-small", path=path)
    assert store.namespaces()["dataset"].tolist() == ["movielens-latest-small"]
    other = tmp_path / "events.csv"
    other.write_text("user_id,item_id,timestamp\n1,1,5\n")
    with pytest.raises(DataError, match="already belong to data set\\(s\\) movielens-latest-small"):
        store.ingest(_tagged(other, "mine", platform=Platform("movies")))


# --- 5. hardware-aware dtype ---------------------------------------------------------------------------------------

AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16\n"


def test_auto_dtype_picks_bf16_only_with_native_support():
    from genrec.llm import dtype_choice, native_bf16

    cpu = torch.device("cpu")
    assert not native_bf16(cpu, AVX2) and native_bf16(cpu, AVX512_BF16)
    assert native_bf16(cpu, "Features\t: fp asimd bf16\n")  # Arm
    assert dtype_choice("auto", cpu, batch_invariant=False, cpuinfo=AVX2) == (
        torch.float32, "auto: float32 (this CPU lacks native bf16)")
    assert dtype_choice("auto", cpu, batch_invariant=False, cpuinfo=AVX512_BF16)[0] == torch.bfloat16
    assert dtype_choice("auto", cpu, cpuinfo=AVX512_BF16)[0] == torch.float32  # inference: batch-invariant
    dtype, why = dtype_choice("bfloat16", cpu, cpuinfo=AVX2)
    assert dtype == torch.bfloat16 and "slower" in why
    assert "slower" not in dtype_choice("bfloat16", cpu, cpuinfo=AVX512_BF16)[1]


def test_training_accepts_auto_dtype():
    from genrec.training.config import DTYPES

    assert "auto" in DTYPES


# --- 6. the re-ranker's scoring embeds no catalog -------------------------------------------------------------------


def test_scoring_given_candidates_embeds_no_catalog(tmp_path, llm, embedder):
    from genrec.recommender import Recommender, Request

    with Store(tmp_path / "s.duckdb") as s:
        items = pd.DataFrame({"platform": "books", "item_id": [f"b{i}" for i in range(300)],
                              "title": [f"Book number {i}" for i in range(300)], "description": None,
                              "category": None, "attributes": None, "year": None, "_file": "i",
                              "_line": range(300)})
        s.ingest(ImportBatch("items", [Platform("books", "read")], items=items))
        recommender = Recommender(s, llm=llm, embedder=embedder)
        before = embedder.encoded_count
        history = [HistoryItem("x", "books", f"b{i}", datetime(2024, 1, 1 + i), title=f"Book number {i}")
                   for i in (1, 2)]
        [(scored, scores)] = recommender.score_candidates([Request("books", history=history,
                                                                   candidates=["b7", "b8", "b9"])])
        assert scored == ["b7", "b8", "b9"] and scores.shape == (3,)
        assert embedder.encoded_count - before < 10  # not the 300 catalog titles
