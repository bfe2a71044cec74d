"""Batch scoring (`genrec batch`, genrec.pipeline.batch): the output is what `Pipeline.recommend` answers per user,
an interrupted run resumes by shards, the CLI's errors name what is wrong, and Ray (a local cluster started by
the test, two workers with one pipeline replica each) writes the same file as the in-process run.

The store is synthetic (60 users over two platforms, a cycle an item-item model learns) and the pipeline classic
(popularity + ItemKNN, fusion tuned on validation cases), so everything but Ray's start-up takes seconds."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from genrec.data.importers import ImportBatch
from genrec.data.schema import Platform
from genrec.data.store import Store
from genrec.errors import GenrecError, NotFoundError
from genrec.evaluation.protocol import Protocol, build
from genrec.pipeline import Pipeline, PipelineSpec
from genrec.pipeline.batch import run_batch
from genrec.pipeline.fitting import user_context

N_USERS, N_ITEMS = 60, 20


def _import(path: Path) -> None:
    rng = random.Random(7)
    rows = []
    for u in range(N_USERS):
        start, t = rng.randrange(N_ITEMS), 0
        for step in range(rng.randint(4, 10)):
            t += rng.choice([1, 2, 0]) if step else 1
            platform = "ab"[step % 3 == 2]
            rows.append((f"u{u:02d}", platform, f"{platform}{(start + step) % N_ITEMS}", t))
    events = pd.DataFrame(rows, columns=["user_id", "platform", "item_id", "timestamp"])
    events["timestamp"] = pd.to_datetime(events["timestamp"], unit="s").astype("datetime64[us]")
    events["event"], events["value"] = "x", None
    events["_file"], events["_line"] = "t", range(1, len(events) + 1)
    items = pd.DataFrame({"platform": ["a"] * N_ITEMS + ["b"] * N_ITEMS,
                          "item_id": [f"a{i}" for i in range(N_ITEMS)] + [f"b{i}" for i in range(N_ITEMS)]})
    items["title"] = [f"Thing {p}{i}" for p in "ab" for i in range(N_ITEMS)]
    for col in ("description", "category", "attributes", "year"):
        items[col] = None
    items["_file"], items["_line"] = "t", range(1, len(items) + 1)
    with Store(path) as store:
        store.ingest(ImportBatch("t", platforms=[Platform("a"), Platform("b")], events=events, items=items))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, Path]:
    """(store file, pipeline folder): the synthetic store and a popularity + ItemKNN pipeline fitted on it."""
    root = tmp_path_factory.mktemp("batch")
    db = root / "store.duckdb"
    _import(db)
    spec = PipelineSpec.from_dict({"name": "batch-test", "sources": [{"kind": "popularity", "n": 8},
                                                                     {"kind": "itemknn", "n": 8}],
                                   "llm": None, "fusion": {"tune_users": 40}})
    with Store(db, read_only=True) as store:
        data = build(store, Protocol(targets="last-per-platform", users="all"), ["a", "b"])
    pipeline = Pipeline(spec)
    pipeline.fit(data.train, data.valid)
    pipeline.save(root / "pipeline")
    return db, root / "pipeline"


@pytest.fixture
def store(fitted):
    with Store(fitted[0], read_only=True) as s:
        yield s


def test_batch_output_is_what_recommend_answers_for_each_user(fitted, store, tmp_path) -> None:
    _, folder = fitted
    result = run_batch(store, folder, tmp_path / "recs.parquet", k=5, shard_size=7)
    assert result.users == N_USERS and result.shards == 9 and result.computed == 9 and result.skipped == 0
    assert result.platforms == ["a", "b"] and result.rows == N_USERS * 2 * 5
    assert [p.name for p in tmp_path.iterdir()] == ["recs.parquet"]  # parts and temporary files are gone
    table = pq.read_table(tmp_path / "recs.parquet")
    assert table.column_names == ["user_id", "platform", "rank", "item_id", "title", "score", "sources",
                                  "proposed_by", "llm"]
    frame = table.to_pandas()
    pipeline = Pipeline.load(folder, store=store)
    for (user, platform), rows in frame.groupby(["user_id", "platform"], sort=False):
        expected = pipeline.recommend(user_context(store, user, platform), 5)
        assert rows["rank"].tolist() == [item.rank for item in expected]
        assert rows["item_id"].tolist() == [item.item_id for item in expected]
        assert rows["title"].tolist() == [item.title for item in expected]
        assert rows["score"].tolist() == pytest.approx([item.score for item in expected], abs=1e-9)
        assert [dict(s) for s in rows["sources"]] == [pytest.approx(item.sources, abs=1e-9) for item in expected]
        assert [list(p) for p in rows["proposed_by"]] == [list(item.proposed_by) for item in expected]
        assert rows["llm"].isna().all()
    assert frame["user_id"].is_monotonic_increasing  # shards in user order


KILL_AFTER_SHARD_2 = """
import os, signal, sys
from genrec.data.store import Store
from genrec.pipeline.batch import run_batch

def kill(shard):
    if shard == 2:
        os.kill(os.getpid(), signal.SIGKILL)

with Store(sys.argv[1], read_only=True) as store:
    run_batch(store, sys.argv[2], sys.argv[3], platforms=["b"], k=4, shard_size=10, on_shard=kill)
"""


def test_a_killed_run_resumes_and_skips_finished_shards(fitted, store, tmp_path) -> None:
    db, folder = fitted
    clean = run_batch(store, folder, tmp_path / "clean.parquet", platforms=["b"], k=4, shard_size=10)
    out = tmp_path / "recs.parquet"
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SHARD_2, str(db), str(folder), str(out)],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr  # kill -9 right after shard 2's part file was written
    parts = tmp_path / "recs.parquet.parts"
    assert not out.exists()
    assert sorted(p.name for p in parts.glob("shard-*")) == ["shard-00000.parquet", "shard-00001.parquet",
                                                            "shard-00002.parquet"]
    (parts / "shard-00003.parquet.tmp-999").write_bytes(b"half a file")  # what a kill during a write leaves
    with pytest.raises(GenrecError, match="k differ"):  # other arguments do not mix with the parts
        run_batch(store, folder, out, platforms=["b"], k=5, shard_size=10)
    rerun: list[int] = []
    resumed = run_batch(store, folder, out, platforms=["b"], k=4, shard_size=10, on_shard=rerun.append)
    assert rerun == [3, 4, 5] and resumed.skipped == 3 and resumed.computed == 3 and resumed.computed_users == 30
    assert not parts.exists()
    assert pq.read_table(out).equals(pq.read_table(clean.out))


def test_user_lists_and_errors(fitted, store, tmp_path) -> None:
    _, folder = fitted
    users = tmp_path / "users.txt"
    users.write_text("# a comment\nu05\n\nu01\nu05\n")
    from genrec.pipeline.batch import read_user_file

    assert read_user_file(users, store) == ["u05", "u01"]
    result = run_batch(store, folder, tmp_path / "two.parquet", users=read_user_file(users, store), k=3)
    assert sorted(set(pq.read_table(result.out).column("user_id").to_pylist())) == ["u01", "u05"]
    users.write_text("u01\nnobody\n")
    with pytest.raises(NotFoundError, match=r"users.txt:2: unknown user 'nobody'"):
        read_user_file(users, store)
    with pytest.raises(NotFoundError, match="unknown platform 'c'.*ranks a, b"):
        run_batch(store, folder, tmp_path / "x.parquet", platforms=["c"])
    with pytest.raises(GenrecError, match="not a pipeline folder"):
        run_batch(store, tmp_path / "missing", tmp_path / "x.parquet")


def test_a_registry_folder_scores_with_its_champion(fitted, store, tmp_path) -> None:
    from genrec.pipeline.registry import Registry

    _, folder = fitted
    registry = Registry(tmp_path / "registry")
    registry.promote(registry.add(Pipeline.load(folder), origin="fit", window_end=0.0).name)
    direct = run_batch(store, folder, tmp_path / "direct.parquet", k=3)
    champion = run_batch(store, tmp_path / "registry", tmp_path / "champion.parquet", k=3)
    assert pq.read_table(champion.out).equals(pq.read_table(direct.out))


def _genrec(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "genrec.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_the_cli_writes_the_file_and_names_bad_input(fitted, tmp_path) -> None:
    db, folder = fitted
    users = tmp_path / "users.txt"
    users.write_text("u03\nu04\n")
    done = _genrec("batch", "--pipeline", str(folder), "--out", str(tmp_path / "r.parquet"), "--users", str(users),
                   "--platform", "a", "--k", "3", "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert "2 users x a: 6 rows" in done.stdout
    assert pq.read_table(tmp_path / "r.parquet").num_rows == 6
    users.write_text("u03\nghost\n")
    bad = _genrec("batch", "--pipeline", str(folder), "--out", str(tmp_path / "r.parquet"), "--users", str(users),
                  "--db", str(db))
    assert bad.returncode == 2 and "users.txt:2: unknown user 'ghost'" in bad.stderr  # (the rest: library tests)


@pytest.mark.integration
def test_ray_with_two_workers_writes_what_the_in_process_run_writes(fitted, store, tmp_path) -> None:
    ray = pytest.importorskip("ray")
    _, folder = fitted
    local = run_batch(store, folder, tmp_path / "local.parquet", k=5, shard_size=6)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        distributed = run_batch(store, folder, tmp_path / "ray.parquet", k=5, shard_size=6, ray_address="local",
                                workers=2)
    finally:
        ray.shutdown()
    assert distributed.computed == local.computed == 10 and distributed.engine.startswith("ray")
    assert len(distributed.info["worker_pids"]) == 2 and os.getpid() not in distributed.info["worker_pids"]
    assert pq.read_table(distributed.out).equals(pq.read_table(local.out))
