"""Store benchmark: real-data import times, history query latency, synthetic large import throughput.

    python benchmarks/bench_store.py [--events 10000000 [100000000 ...]] [--synthetic-only]
                                     [--out benchmarks/results/store.json]

Each measurement runs in a fresh subprocess so that peak RSS (ru_maxrss) belongs to that step alone. A synthetic
import is timed on a store that already holds the items' catalog (3 platforms x 200,000 items); its Parquet file
and the catalog are written by a separate process first (in chunks), so generating the data costs the import
neither time nor memory. Each synthetic store is then read like the real-data one (history of 1,000 random users:
p50 / p95 latency) and appended to like ``POST /v1/events`` does (20 batches of 10 events of existing users). The
machine may be shared: the load average is recorded at the start and end of each synthetic step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np


def _child(step: str, db: str, n_events: int) -> dict:
    from genrec.data.loading import import_dataset
    from genrec.data.store import Store

    out: dict = {}
    if step in ("movielens-latest-small", "amazon-arts-office"):
        with Store(db) as store:
            started = time.perf_counter()
            report = import_dataset(store, step)
            out = {"seconds": time.perf_counter() - started, "events": report.events_added}
    elif step == "history":
        with Store(db) as store:
            users = store.users()
            random.Random(0).shuffle(users)
            del users[1001:]
            store.history(users[0])  # warm the title cache
            times = []
            for user in users[:1000]:
                t0 = time.perf_counter()
                store.history(user)
                times.append(time.perf_counter() - t0)
            out = {"queries": len(times), "p50_ms": float(np.median(times) * 1e3),
                   "p95_ms": float(np.percentile(times, 95) * 1e3)}
    elif step == "append":
        out = _append(db)
    elif step == "generate":
        out = _generate(db, n_events)
    elif step == "synthetic":
        out = _synthetic(db, n_events)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


PLATFORMS = ("shop", "video", "music")
CATALOG = 200_000  # items per platform
CHUNK = 1_000_000  # rows generated (and written as one row group) at a time


def _events_path(db: str) -> Path:
    return Path(db).with_suffix(".events.parquet")


def _generate(db: str, n: int) -> dict:
    """Write the synthetic events file (chunk by chunk: 100M rows fit in little memory) and import the catalog."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genrec.data.importers import ImportBatch
    from genrec.data.schema import Platform
    from genrec.data.store import Store

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(_events_path(db), pa.schema([
            ("user_id", pa.string()), ("platform", pa.string()), ("item_id", pa.string()),
            ("timestamp", pa.int64()), ("event", pa.string()), ("value", pa.float64())])) as writer:
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            writer.write_table(pa.table({
                "user_id": pa.array(rng.integers(0, max(n // 50, 1), m).astype(str)),
                "platform": pa.array(np.array(PLATFORMS)[rng.integers(0, 3, m)]),
                "item_id": pa.array(rng.zipf(1.3, m).clip(max=CATALOG).astype(str)),
                "timestamp": pa.array(1_600_000_000 + rng.integers(0, 86_400 * 365, m)),
                "event": pa.array(np.array(["view", "buy"])[rng.integers(0, 2, m)]),
                "value": pa.array(rng.random(m)),
            }))
    ids = np.arange(1, CATALOG + 1).astype(str)
    items = pd.DataFrame({"platform": np.repeat(PLATFORMS, CATALOG), "item_id": np.tile(ids, len(PLATFORMS))})
    items["title"] = "item " + items["item_id"]
    for column in ("description", "category", "attributes", "year"):
        items[column] = None
    items["_file"], items["_line"] = "catalog", np.arange(1, len(items) + 1)
    with Store(db) as store:
        store.ingest(ImportBatch("catalog", platforms=[Platform(p) for p in PLATFORMS], items=items))
    return {"seconds": time.perf_counter() - started, "file_mib": _events_path(db).stat().st_size / 2**20}


def _synthetic(db: str, n: int) -> dict:
    from genrec.data.importers import file_batch
    from genrec.data.readers import read_table
    from genrec.data.store import Store

    path = _events_path(db)
    load_start = os.getloadavg()
    cpu_start = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    table = read_table(path)
    batch = file_batch(path, kind="events", table=table)
    with Store(db) as store:
        report = store.ingest(batch)
    seconds = time.perf_counter() - started
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    path.unlink()
    # the CPU time (user + system, all threads) depends less on what else runs on a shared machine than the wall time
    return {"events_in": n, "events_added": report.events_added, "seconds": seconds,
            "cpu_seconds": cpu.ru_utime - cpu_start.ru_utime + cpu.ru_stime - cpu_start.ru_stime,
            "events_per_second": n / seconds, "store_mib": Path(db).stat().st_size / 2**20,
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()]}


def _append(db: str) -> dict:
    """Small appends (the ``POST /v1/events`` path: a batch of 10 events of existing users) into a large store."""
    import pandas as pd

    from genrec.data.importers import ImportBatch
    from genrec.data.store import Store

    rng = np.random.default_rng(1)
    times = []
    with Store(db) as store:
        users = [r[0] for r in store.con.execute("SELECT user_id FROM events USING SAMPLE 200 ROWS").fetchall()]
        for i in range(20):
            events = pd.DataFrame({"user_id": rng.choice(users, 10), "platform": "shop",
                                   "item_id": rng.integers(1, CATALOG, 10).astype(str),
                                   "timestamp": pd.Timestamp("2030-01-01") + pd.to_timedelta(np.arange(10) + 10 * i,
                                                                                            unit="s"),
                                   "event": "view", "value": 1.0, "_file": "append", "_line": np.arange(1, 11)})
            t0 = time.perf_counter()
            report = store.ingest(ImportBatch("append", events=events))
            times.append(time.perf_counter() - t0)
            assert report.events_added == 10, report
            assert all(len(store.history(u)) for u in events["user_id"])
    return {"batches": len(times), "events_per_batch": 10, "p50_ms": float(np.median(times) * 1e3),
            "max_ms": float(np.max(times) * 1e3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, nargs="+", default=[10_000_000],
                        help="synthetic import sizes; the first is reported as 'synthetic', all under "
                             "'synthetic_runs'")
    parser.add_argument("--synthetic-only", action="store_true", help="skip the real-data steps")
    parser.add_argument("--tmp", type=Path, default=None, help="where the stores and files go (default: $TMPDIR)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/store.json"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        step, db, n = args.child
        print(json.dumps(_child(step, db, int(n))))
        return
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "processor": platform.machine()}, "date": date.today().isoformat()}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        db = str(Path(tmp) / "bench.duckdb")
        steps = [] if args.synthetic_only else ["movielens-latest-small", "amazon-arts-office", "history"]
        for step in steps:
            results[step] = _run(step, db, 0)
        runs = []
        for n in args.events:
            synthetic = str(Path(tmp) / f"synthetic-{n}.duckdb")
            generated = _run("generate", synthetic, n)
            run = _run("synthetic", synthetic, n) | {"generate_seconds": generated["seconds"],
                                                      "file_mib": generated["file_mib"]}
            run["history"] = _run("history", synthetic, n) | {"load_average": [round(x, 2) for x in os.getloadavg()]}
            run["append"] = _run("append", synthetic, n)
            print(json.dumps(run), file=sys.stderr)
            runs.append(run)
            for leftover in Path(tmp).glob(f"synthetic-{n}.*"):
                if leftover.is_file():
                    leftover.unlink()
        results["synthetic"] = runs[0]
        results["synthetic_runs"] = runs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def _run(step: str, db: str, n: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", step, db, str(n)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"step {step} ({n:,} events) failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
