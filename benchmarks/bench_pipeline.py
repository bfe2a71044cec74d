"""The default pipelines as users get them: fit time, warm latency, and the rationales' faithfulness.

    python benchmarks/bench_pipeline.py [--requests 20] [--out benchmarks/results/pipeline.json]

For each shared data set's default pipeline (``pipelines/defaults.yaml``), fitted on first use in a fresh store:
- fit seconds (first use) and load seconds (the cached folder);
- warm ``Pipeline.recommend`` for one user, k=10: p50 / p95 latency without rationales, and with LLM rationales for
  the top 5;
- of those rationales: the share written by the LLM (the rest are evidence sentences) and the share that pass the
  faithfulness check (every item a rationale names is in the user's history).
Users: amazon-arts-office test users (target amazon-office) and MovieLens users (movies). The load average is
recorded before and after: absolute times on a shared 2-core machine drift with it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from bench_server import machine, save_result


def _percentiles(seconds: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(seconds, 50)), "p95": float(np.percentile(seconds, 95)), "n": len(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--datasets", nargs="*", default=["amazon-arts-office", "movielens-latest-small"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pipeline.json"))
    args = parser.parse_args()

    from genrec.data.store import Store
    from genrec.faithfulness import FaithfulnessChecker
    from genrec.pipeline import Pipeline
    from genrec.pipeline.fitting import default_spec, fit_pipeline, user_context

    results: dict = {"machine": machine(),
                     "date": date.today().isoformat(), "datasets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        with Store(Path(tmp) / "bench.duckdb") as store:
            for dataset in args.datasets:
                started = time.perf_counter()
                fit_pipeline(store, default_spec(dataset)).save(Path(tmp) / dataset)  # what first use costs
                fit_seconds = time.perf_counter() - started
                started = time.perf_counter()
                pipeline = Pipeline.load(Path(tmp) / dataset, store=store)
                load_seconds = time.perf_counter() - started
                if dataset == "amazon-arts-office":
                    platform_, users = "amazon-office", sorted(u for u, s in store.splits().items() if s == "test")
                else:
                    platform_, users = "movies", sorted(store.users("movies"), key=int)
                users = users[: args.requests]
                contexts = [user_context(store, user, platform_) for user in users]
                pipeline.recommend(contexts[0], 10)  # warm: the model and caches load here
                plain, explained, written, faithful, total = [], [], 0, 0, 0
                checker: FaithfulnessChecker = pipeline.explainer.checker
                for context in contexts:
                    started = time.perf_counter()
                    pipeline.recommend(context, 10)
                    plain.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    items = pipeline.recommend(context, 5, explain=True)
                    explained.append(time.perf_counter() - started)
                    history = [pipeline.titles.get((x.platform, x.item_id), "") for x in context.history]
                    for item in items:
                        total += 1
                        written += item.rationale_source == "llm"
                        faithful += checker.check(item.rationale, history, item.title).status != "flagged"
                results["datasets"][dataset] = {
                    "pipeline": pipeline.name, "components": pipeline.components,
                    "fusion": pipeline.fusion.to_dict(), "fit_seconds_first_use": fit_seconds,
                    "load_seconds_cached": load_seconds, "requests": len(contexts),
                    "recommend_k10_seconds": _percentiles(plain),
                    "recommend_k5_with_rationales_seconds": _percentiles(explained),
                    "rationales": {"total": total, "llm_written_share": written / max(total, 1),
                                   "faithful_share": faithful / max(total, 1)}}
    save_result(results, args.out)


if __name__ == "__main__":
    main()
