"""Store benchmark: real-data import times, history query latency, synthetic large import throughput.

    python benchmarks/bench_store.py [--events 10000000] [--out benchmarks/results/store.json]

Each measurement runs in a fresh subprocess so that peak RSS (ru_maxrss) belongs to that step alone.
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
            store.history(users[0])  # warm the title cache
            times = []
            for user in users[:1000]:
                t0 = time.perf_counter()
                store.history(user)
                times.append(time.perf_counter() - t0)
            out = {"queries": len(times), "p50_ms": float(np.median(times) * 1e3),
                   "p95_ms": float(np.percentile(times, 95) * 1e3)}
    elif step == "synthetic":
        out = _synthetic(db, n_events)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _synthetic(db: str, n: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genrec.data.importers import file_batch
    from genrec.data.readers import read_table
    from genrec.data.schema import Platform
    from genrec.data.store import Store

    rng = np.random.default_rng(0)
    folder = Path(tempfile.mkdtemp())
    path = folder / "events.parquet"
    users = rng.integers(0, n // 50, n)
    pq.write_table(pa.table({
        "user_id": pa.array(users.astype(str)),
        "platform": pa.array(np.array(["shop", "video", "music"])[rng.integers(0, 3, n)]),
        "item_id": pa.array(rng.zipf(1.3, n).clip(max=200_000).astype(str)),
        "timestamp": pa.array(1_600_000_000 + rng.integers(0, 86_400 * 365, n)),
        "event": pa.array(np.array(["view", "buy"])[rng.integers(0, 2, n)]),
        "value": pa.array(rng.random(n)),
    }), path)
    started = time.perf_counter()
    table = read_table(path)
    batch = file_batch(path, kind="events", table=table)
    batch.platforms = [Platform("shop"), Platform("video"), Platform("music")]
    with Store(db) as store:
        report = store.ingest(batch)
    seconds = time.perf_counter() - started
    path.unlink()
    return {"events_in": n, "events_added": report.events_added, "seconds": seconds,
            "events_per_second": n / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/store.json"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        step, db, n = args.child
        print(json.dumps(_child(step, db, int(n))))
        return
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "processor": platform.machine()}, "date": date.today().isoformat()}
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.duckdb")
        steps = ["movielens-latest-small", "amazon-arts-office", "history"]
        for step in steps:
            results[step] = _run(step, db, 0)
        results["synthetic"] = _run("synthetic", str(Path(tmp) / "synthetic.duckdb"), args.events)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def _run(step: str, db: str, n: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", step, db, str(n)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
