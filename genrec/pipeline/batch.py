"""Batch scoring: the top ``k`` of a fitted pipeline for every user of the store (or a list of users), written as
one Parquet file, in one process or on a Ray cluster (``genrec batch``).

Users are cut into shards of ``shard_size`` (in sorted id order). Each finished shard is written atomically as its
own part file in a sibling folder (``recs.parquet.parts/shard-00012.parquet``, with a ``manifest.json`` saying what
the parts were computed with); a rerun with the same arguments skips the shards already written, and the final file
is assembled from the parts into a temporary file that is then renamed (a killed run never leaves a half-written
``recs.parquet``). The parts folder is removed once the final file is in place.

The store is DuckDB, which lets one process write a file *or* several processes read it, never both. The driver
opens the store read-only and reads each pending shard's histories itself (one query per shard); workers receive
the contexts and never open the store, so they work on any machine of a Ray cluster and never contend for DuckDB's
file lock (a pipeline with an LLM stage needs the store for its prompts: its workers open it read-only, which
DuckDB allows beside the driver's read-only handle, on a file system the workers share). Under Ray each worker is
one actor of a Ray Data ``map_batches`` over shards that loads ONE pipeline replica and scores one shard per call;
the driver streams the results back and writes the parts.

Output columns: ``user_id``, ``platform``, ``rank`` (1 = best), ``item_id``, ``title``, ``score`` (the fused score),
``sources`` (a struct: each candidate source's own score of the item), ``proposed_by`` (the sources whose top ``n``
held it) and ``llm`` (the LLM's calibrated score; null without an LLM stage).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from genrec.errors import GenrecError, NotFoundError
from genrec.pipeline.spec import SPEC_FILE, Pipeline, PipelineSpec
from genrec.pipeline.types import Context, Interaction

MANIFEST = "manifest.json"
PARTS_SUFFIX = ".parts"
ACTOR_START_S = 600  # how long Ray workers may take to load their pipeline replicas


@dataclass
class BatchResult:
    """What ``run_batch`` did: the output file, its rows, users and shards (how many were computed in this run and
    how many a previous run had written), the seconds it took and the users scored per second in this run."""

    out: Path
    rows: int
    users: int
    platforms: list[str]
    shards: int
    computed: int
    skipped: int
    computed_users: int
    seconds: float
    engine: str
    workers: int = 1
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def users_per_s(self) -> float:
        return self.computed_users / self.seconds if self.seconds > 0 else 0.0


# -- users and contexts --------------------------------------------------------------------------------------------

def read_user_file(path: str | Path, store) -> list[str]:
    """User ids, one a line (blank lines and ``#`` comments skipped), each checked against the store; an unknown
    one fails naming its line."""
    path = Path(path)
    if not path.is_file():
        raise GenrecError(f"users file {path} does not exist")
    users, seen = [], set()
    lines = path.read_text(encoding="utf-8").splitlines()
    wanted = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip() and
              not line.strip().startswith("#")]
    known = set(_known_users(store, [user for _, user in wanted]))
    for n, user in wanted:
        if user not in known:
            raise NotFoundError(f"{path}:{n}: unknown user {user!r}: the store has no events for this user")
        if user not in seen:
            seen.add(user)
            users.append(user)
    if not users:
        raise GenrecError(f"users file {path} names no user")
    return users


def _known_users(store, users: Sequence[str]) -> list[str]:
    where, params = store.users_in(users)
    rows = store.con.execute(f"SELECT DISTINCT user_id FROM events WHERE {where}", params).fetchall()
    return [r[0] for r in rows]


def read_histories(store, users: Sequence[str]) -> dict[str, tuple[Interaction, ...]]:
    """Each user's events on every platform in time order, as ``genrec.pipeline.fitting.user_context`` reads them
    (one query for all of ``users``)."""
    where, params = store.users_in(users)
    rows = store.con.execute(f"SELECT user_id, platform, item_id, timestamp, value FROM events WHERE {where} "
                             "ORDER BY user_id, timestamp, seq", params).fetchall()
    out: dict[str, list[Interaction]] = {user: [] for user in users}
    for user, platform, item, ts, value in rows:
        out[user].append(Interaction(platform, item, ts.replace(tzinfo=UTC).timestamp(), value))
    return {user: tuple(history) for user, history in out.items()}


# -- scoring one shard ---------------------------------------------------------------------------------------------

def score_shard(pipeline: Pipeline, histories: dict[str, tuple[Interaction, ...]], platforms: Sequence[str],
                k: int) -> pa.Table:
    """The top ``k`` of every user of a shard on each platform, as a table in the output schema (users in the
    given order, then platforms, then rank)."""
    sources = list(pipeline.sources)
    per_platform = {}
    for platform in platforms:
        contexts = [Context(user, platform, history) for user, history in histories.items() if history]
        per_platform[platform] = dict(zip([c.user_id for c in contexts],
                                          pipeline.recommend_many(contexts, platform, k) if contexts else [],
                                          strict=True))
    columns: dict[str, list] = {name: [] for name in ("user_id", "platform", "rank", "item_id", "title", "score",
                                                      "sources", "proposed_by", "llm")}
    for user in histories:
        for platform in platforms:
            for item in per_platform[platform].get(user, []):
                columns["user_id"].append(user)
                columns["platform"].append(platform)
                columns["rank"].append(item.rank)
                columns["item_id"].append(item.item_id)
                columns["title"].append(item.title)
                columns["score"].append(item.score)
                columns["sources"].append({name: item.sources.get(name) for name in sources})
                columns["proposed_by"].append(list(item.proposed_by))
                columns["llm"].append(item.llm)
    return pa.Table.from_pydict(columns, schema=output_schema(sources))


def output_schema(sources: Sequence[str]) -> pa.Schema:
    return pa.schema([("user_id", pa.string()), ("platform", pa.string()), ("rank", pa.int32()),
                      ("item_id", pa.string()), ("title", pa.string()), ("score", pa.float64()),
                      ("sources", pa.struct([(name, pa.float64()) for name in sources])),
                      ("proposed_by", pa.list_(pa.string())), ("llm", pa.float64())])


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


class ShardScorer:
    """One pipeline replica (a Ray Data actor holds one): scores shards handed to it as pickled histories and
    answers each with the shard's table in Arrow IPC bytes."""

    def __init__(self, pipeline_dir: str, platforms: Sequence[str], k: int, db: str | None = None) -> None:
        store = None
        if PipelineSpec.from_yaml(Path(pipeline_dir) / SPEC_FILE).llm is not None:  # the LLM reads profiles
            from genrec.data.store import Store

            store = Store(db, read_only=True)
        self.pipeline = Pipeline.load(pipeline_dir, store=store)
        self.platforms, self.k = list(platforms), k

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        tables = [_to_ipc(score_shard(self.pipeline, pickle.loads(blob), self.platforms, self.k))  # noqa: S301
                  for blob in batch["histories"]]
        return {"shard": list(batch["shard"]), "table": tables, "pid": [os.getpid()] * len(tables)}


# -- the run ---------------------------------------------------------------------------------------------------------

def pipeline_platforms(pipeline_dir: Path) -> list[str]:
    """The platforms a pipeline folder ranks (those of the catalog titles it was fitted with)."""
    with (pipeline_dir / "titles.pkl").open("rb") as fh:
        return sorted({platform for platform, _ in pickle.load(fh)})  # noqa: S301 - the user's own artifact


def run_batch(store, pipeline_dir: str | Path, out: str | Path, *, users: Sequence[str] | None = None,
              platforms: Sequence[str] | None = None, k: int = 10, shard_size: int = 256,
              ray_address: str | None = None, workers: int = 1, progress: bool = False,
              on_shard: Callable[[int], None] | None = None) -> BatchResult:
    """Score ``users`` (default: every user of ``store`` with events on a platform the pipeline ranks) on
    ``platforms`` (default: every platform the pipeline ranks) and write ``out``; see the module docstring.
    ``ray_address``: run the shards on Ray (``"local"`` starts a local Ray; a Ray already initialised in this
    process is used as it is) with ``workers`` pipeline replicas. ``on_shard(i)`` is called after shard ``i``'s
    part file is written."""
    started = time.perf_counter()
    from genrec.pipeline.registry import Registry, is_registry

    pipeline_dir, out = Path(pipeline_dir), Path(out)
    if is_registry(pipeline_dir):  # its champion now: every shard (and worker) ranks with the same version
        pipeline_dir = Registry(pipeline_dir).champion_path()
    if not (pipeline_dir / SPEC_FILE).is_file():
        raise GenrecError(f"{pipeline_dir} is not a pipeline folder (no {SPEC_FILE}); make one with `genrec fit`")
    if k < 1:
        raise GenrecError(f"k must be at least 1, got {k}")
    if shard_size < 1 or workers < 1:
        raise GenrecError(f"shard size and workers must be at least 1, got {shard_size} and {workers}")
    known = pipeline_platforms(pipeline_dir)
    chosen = list(platforms) if platforms else known
    unknown = [p for p in chosen if p not in known]
    if unknown:
        raise NotFoundError(f"unknown platform {unknown[0]!r} for pipeline {pipeline_dir}: it ranks "
                            f"{', '.join(known)}")
    if users is None:
        users = [r[0] for r in store.con.execute(
            "SELECT DISTINCT user_id FROM events WHERE platform IN (SELECT unnest(?))", [known]).fetchall()]
    users = sorted(set(users))
    if not users:
        raise GenrecError(f"no users to score: the store has no events on {', '.join(known)}")
    shards = [users[i:i + shard_size] for i in range(0, len(users), shard_size)]
    parts = out.with_name(out.name + PARTS_SUFFIX)
    manifest = {"pipeline": str(pipeline_dir.resolve()), "fit": _fit_digest(pipeline_dir), "platforms": chosen,
                "k": k, "shard_size": shard_size, "users": len(users),
                "users_digest": hashlib.sha256("\n".join(users).encode()).hexdigest()[:16]}
    _prepare_parts(parts, manifest)
    done = {i for i in range(len(shards)) if (parts / _part_name(i)).is_file()}
    pending = [i for i in range(len(shards)) if i not in done]

    from tqdm.auto import tqdm

    bar = tqdm(total=len(users), initial=sum(len(shards[i]) for i in done), desc="scoring users", unit="user",
               disable=not progress)
    schema = output_schema([s.name for s in PipelineSpec.from_yaml(pipeline_dir / SPEC_FILE).sources])

    stamps: list[tuple[float, int]] = []  # (when, users) of each shard written

    def finished(i: int, table: pa.Table) -> None:
        _write_part(parts / _part_name(i), table.cast(schema))
        stamps.append((time.perf_counter() - started, len(shards[i])))
        bar.update(len(shards[i]))
        if on_shard is not None:
            on_shard(i)

    engine, pids = "in-process", set()
    try:
        if pending and ray_address is None:
            pipeline = Pipeline.load(pipeline_dir, store=store)
            for i in pending:
                finished(i, score_shard(pipeline, read_histories(store, shards[i]), chosen, k))
        elif pending:
            engine = f"ray ({ray_address})"
            pids = _run_on_ray(store, pipeline_dir, shards, pending, chosen, k, ray_address, workers, finished)
    finally:
        bar.close()
    rows = _assemble(parts, len(shards), out, schema)
    shutil.rmtree(parts)
    return BatchResult(out, rows, len(users), chosen, len(shards), len(pending), len(done),
                       sum(len(shards[i]) for i in pending), time.perf_counter() - started, engine,
                       workers if ray_address else 1, info={"worker_pids": sorted(pids), **_pace(stamps)})


def _pace(stamps: list[tuple[float, int]]) -> dict[str, float]:
    """When the first shard was written (start-up: the store's first read, loading the pipeline or starting the
    workers) and the users/s from then to the last shard (the steady pace once every replica runs)."""
    if not stamps:
        return {}
    first, last = stamps[0][0], stamps[-1][0]
    later = sum(users for _, users in stamps[1:])
    return {"first_shard_s": round(first, 3),
            "steady_users_per_s": round(later / (last - first), 1) if later and last > first else None}


def _run_on_ray(store, pipeline_dir: Path, shards: list[list[str]], pending: list[int], platforms: list[str],
                k: int, address: str, workers: int, finished: Callable[[int, pa.Table], None]) -> set[int]:
    try:
        import ray
    except ImportError as exc:
        raise GenrecError("--ray needs Ray: pip install 'genrec[ray]'") from exc
    if not ray.is_initialized():
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the caller's bar counts the users
    # every worker loads its replica before shards are dealt, one shard at a time: otherwise the first replica
    # ready takes the queue while the others are still loading
    context.wait_for_min_actors_s = max(context.wait_for_min_actors_s, ACTOR_START_S)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # not a log line per dataset run under that bar
    items = [{"shard": i, "histories": pickle.dumps(read_histories(store, shards[i]))} for i in pending]
    db = str(store.path) if getattr(store, "path", None) is not None else None
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ShardScorer, fn_constructor_kwargs={"pipeline_dir": str(pipeline_dir.resolve()), "platforms": platforms,
                                            "k": k, "db": db},
        batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
        num_cpus=1, batch_format="numpy")
    pids = set()
    for row in dataset.iter_rows():
        pids.add(int(row["pid"]))
        finished(int(row["shard"]), _from_ipc(bytes(row["table"])))
    return pids


def _fit_digest(pipeline_dir: Path) -> str:
    fit = pipeline_dir / "fit.json"
    return hashlib.sha256(fit.read_bytes()).hexdigest()[:16] if fit.is_file() else ""


def _part_name(i: int) -> str:
    return f"shard-{i:05d}.parquet"


def _prepare_parts(parts: Path, manifest: dict[str, Any]) -> None:
    """Create the parts folder, or check that the one a previous run left was made with the same arguments."""
    path = parts / MANIFEST
    if parts.is_dir() and path.is_file():
        previous = json.loads(path.read_text())
        if previous != manifest:
            changed = sorted(key for key in manifest if previous.get(key) != manifest[key])
            raise GenrecError(f"{parts} holds the shards of an unfinished run with other arguments "
                              f"({', '.join(changed)} differ): rerun with the same ones to resume, or delete the "
                              "folder to start again")
    else:
        parts.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{MANIFEST}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, path)
    for stale in parts.glob("*.tmp-*"):  # a write a killed run left unfinished
        stale.unlink()


def _write_part(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _assemble(parts: Path, n: int, out: Path, schema: pa.Schema) -> int:
    """Concatenate the part files in shard order into ``out`` (a temporary sibling renamed at the end)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    rows = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        for i in range(n):
            table = pq.read_table(parts / _part_name(i), schema=schema)
            writer.write_table(table)
            rows += table.num_rows
    os.replace(tmp, out)
    return rows
