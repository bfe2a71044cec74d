"""Recommendation latency and throughput on the real data (issue 3's performance targets).

    python benchmarks/bench_recommend.py [--requests 20] [--batch 64] [--out benchmarks/results/recommend.json]

Measures, with the default model and embedder (catalog embeddings cached, model warm):
- warm ``recommend`` for one user, k=10, without and with rationales: p50 / p95 latency;
- a batch of ``--batch`` users without rationales through ``recommend_many``: users/s;
- CLI cold start to the first printed recommendation (a fresh ``genrec recommend`` process);
- peak RSS of this process.
Users alternate between amazon-arts-office test users (target amazon-office) and MovieLens users (movies).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from bench_server import machine, save_result


def _users(store, n: int) -> list[tuple[str, str]]:
    amazon = sorted(u for u, s in store.splits().items() if s == "test")
    movies = sorted(store.users("movies"), key=int)
    pairs = [pair for a, m in zip(amazon, movies, strict=False) for pair in ((a, "amazon-office"), (m, "movies"))]
    return pairs[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/recommend.json"))
    args = parser.parse_args()

    from genrec.data.loading import ensure_dataset
    from genrec.data.store import Store
    from genrec.recommender import Recommender, Request

    results: dict = {"machine": machine(),
                     "date": date.today().isoformat()}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        with Store(db) as store:
            ensure_dataset(store, "movielens-latest-small")
            ensure_dataset(store, "amazon-arts-office")
            recommender = Recommender(store)
            started = time.perf_counter()
            for p in ("movies", "amazon-office"):
                recommender.index(p)
            results["catalog_indexes_seconds"] = time.perf_counter() - started
            users = _users(store, args.requests + 1)
            recommender.recommend(users[0][0], platform=users[0][1], k=10)  # warm-up: model load, caches
            for explain in (False, True):
                times = []
                for user, target in users[1:]:
                    t0 = time.perf_counter()
                    recommender.recommend(user, platform=target, k=10, explain=explain)
                    times.append(time.perf_counter() - t0)
                key = "recommend_with_rationales" if explain else "recommend_without_rationales"
                results[key] = {"requests": len(times), "p50_s": float(np.median(times)),
                                "p95_s": float(np.percentile(times, 95))}
            batch_users = _users(store, args.batch)
            requests = [Request(target, user_id=user, k=10) for user, target in batch_users]
            t0 = time.perf_counter()
            recommender.recommend_many(requests)
            seconds = time.perf_counter() - t0
            results["batch"] = {"users": len(requests), "seconds": seconds, "users_per_second": len(requests) / seconds}
            user, target = users[1]
        results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "genrec.cli", "recommend", "--db", str(db), "--user", user,
                               "--platform", target, "-k", "10"], capture_output=True, text=True)
        results["cli_cold_start_s"] = time.perf_counter() - t0
        if done.returncode:
            raise SystemExit(done.stderr)
    save_result(results, args.out)


if __name__ == "__main__":
    main()
