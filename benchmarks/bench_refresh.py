"""Streaming replay of movielens-latest-small: is refreshing a fitted pipeline as good as refitting it, and cheaper?

The pipeline (popularity + ItemKNN + SASRec, fused; the shipped movielens classic spec with a shorter SASRec time
budget so that a refit per batch fits the run) is fitted on the events of the first 70% of the data's time span
(each user's last event there validates: SASRec's early stopping and the fusion weights). The remaining events
arrive in N batches of equal size. After each batch, three versions of the pipeline are measured on the
following batch (prequential: each of up to ``--cases`` sampled events of that batch is predicted from every
event before it, NDCG@10 over the full catalog, history excluded):

- (a) never refreshed: the first fit;
- (b) refreshed after every batch as `genrec refresh` does by default (``Pipeline.refresh``: counts updated, SASRec
  fine-tuned from its weights over every user's windows for 2 passes, fusion weights kept);
- (c) refitted from scratch on every event so far after every batch (sources and fusion weights).

A fourth arm, ``refresh-new``, is the cheaper refresh option (SASRec's ``refresh_windows: new``): fine-tuned for at
most ``--new-steps`` batches and 3 passes over the windows of the newest events and as many replayed ones.

Cost is CPU seconds of this process (``time.process_time``; wall seconds beside it), so other work on the
machine moves it less than wall time. Writes ``results/refresh.json`` and the curves ``results/refresh.png``.
"""

from __future__ import annotations

import argparse
import bisect
import copy
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_server import machine, save_result

from genrec.data.loading import ensure_dataset
from genrec.data.store import Store
from genrec.evaluation.metrics import bootstrap, case_metrics
from genrec.evaluation.protocol import cases_at, snapshot
from genrec.pipeline import Pipeline, PipelineSpec, shipped_spec
from genrec.pipeline.refresh import split_new
from genrec.pipeline.sources import rank_cases
from genrec.pipeline.types import EvalCase, TrainData

DATASET, PLATFORM = "movielens-latest-small", "movies"


def upto(everything: TrainData, t: float) -> TrainData:
    sequences = {u: [x for x in seq if x.timestamp <= t] for u, seq in everything.sequences.items()}
    return TrainData({u: s for u, s in sequences.items() if s}, everything.catalogs, everything.titles)


def fit_full(spec: PipelineSpec, data: TrainData) -> tuple[Pipeline, list[list]]:
    """Fit as `genrec fit` does: each user's last event validates, the rest trains; returns the held-out events."""
    train, valid = {}, []
    for user, seq in data.sequences.items():
        cases = cases_at(user, seq, [len(seq) - 1], "valid") if len(seq) > 1 else []
        valid += cases
        train[user] = seq[:-1] if cases else seq
    pipeline = Pipeline(spec)
    pipeline.fit(TrainData(train, data.catalogs, data.titles), valid)
    return pipeline, [[c.user_id, c.platform, c.target, c.timestamp] for c in valid]


def batch_cases(everything: TrainData, t0: float, t1: float, n: int, seed: int) -> list[EvalCase]:
    """Up to ``n`` events with ``t0 < time <= t1`` (seeded sample), each predicted from every earlier event."""
    cases = []
    for user, seq in everything.sequences.items():
        times = [x.timestamp for x in seq]
        lo, hi = bisect.bisect_right(times, t0), bisect.bisect_right(times, t1)
        cases += [c for i in range(lo, hi) for c in cases_at(user, seq, [i], "test")]
    return sorted(random.Random(seed).sample(cases, min(n, len(cases))), key=lambda c: (c.user_id, c.timestamp))


def ndcg(pipeline: Pipeline, cases: list[EvalCase], catalogs) -> np.ndarray:
    return case_metrics(rank_cases(pipeline, cases, catalogs), ks=(10,))["NDCG@10"]


def timed(work):
    cpu, wall = time.process_time(), time.perf_counter()
    out = work()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=8, help="equal-size event batches after the first 70%% of time")
    parser.add_argument("--cases", type=int, default=1000, help="events of the next batch measured per point")
    parser.add_argument("--new-steps", type=int, default=200, help="SASRec fine-tuning batches of the refresh-new arm")
    parser.add_argument("--sasrec-budget", type=float, default=120.0, help="SASRec time budget per fit, seconds")
    parser.add_argument("--sasrec-epochs", type=int, default=None,
                        help="instead of the time budget, at most this many epochs per fit (early stopping on "
                             "validation still applies): the same fits whatever else loads the machine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "refresh.json")
    args = parser.parse_args()

    raw = PipelineSpec.from_yaml(shipped_spec("movielens-latest-small-classic")).to_dict()
    for source in raw["sources"]:
        if source["kind"] == "sasrec":
            budget = {"time_budget_s": None, "max_epochs": args.sasrec_epochs} if args.sasrec_epochs else \
                {"time_budget_s": args.sasrec_budget}
            source["options"] = {**source["options"], **budget, "progress": False}
    spec = PipelineSpec.from_dict(raw)
    info = machine()
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "replay.duckdb") as store:
        ensure_dataset(store, DATASET, data_dir=args.data_dir)
        everything = snapshot(store, [PLATFORM])
    times = np.sort([x.timestamp for seq in everything.sequences.values() for x in seq])
    cut = times[0] + 0.7 * (times[-1] - times[0])
    later = times[times > cut]
    bounds = [float(cut)] + [float(part[-1]) for part in np.array_split(later, args.batches)]
    catalogs = everything.catalogs

    (first, held_out), fit_cpu, fit_wall = timed(lambda: fit_full(spec, upto(everything, bounds[0])))
    refreshed = {"refresh": 10_000, "refresh-new": args.new_steps}  # arm -> fine-tuning steps (the CLI's defaults)
    arms = {"never": first, **{name: copy.deepcopy(first) for name in refreshed}, "refit": first}
    arms["refresh-new"].sources["sasrec"].refresh_windows = "new"
    arms["refresh-new"].sources["sasrec"].fine_tune_passes = 3
    carried = {name: held_out for name in refreshed}
    points = []
    for i in range(args.batches):
        if i:  # batch i (bounds[i-1], bounds[i]] has arrived
            data = upto(everything, bounds[i])
            runs = {}
            for name, steps in refreshed.items():
                part = split_new(data, bounds[i - 1], carried=carried[name], holdout_users=0)
                runs[name] = (part, *timed(lambda p=part, a=arms[name], s=steps: a.refresh(p.train, p.new, steps=s)))
                carried[name] = part.held_out()
            (arms["refit"], _), refit_cpu, refit_wall = timed(lambda d=data: fit_full(spec, d))
        cases = batch_cases(everything, bounds[i], bounds[i + 1], args.cases, args.seed + i)
        values = {name: ndcg(p, cases, catalogs) for name, p in arms.items()}
        diffs = bootstrap({"refresh-refit": values["refresh"] - values["refit"],
                           "refresh-never": values["refresh"] - values["never"]}, seed=args.seed)
        point = {"after_batch": i, "data_until": bounds[i], "cases": len(cases),
                 "ndcg10": {name: float(v.mean()) for name, v in values.items()},
                 "paired": {k: vars(e) for k, e in diffs.items()}}
        if i:
            point |= {"new_events": int(sum(len(v) for v in runs["refresh"][0].new.values())),
                      "refresh_sources": runs["refresh"][1],
                      "refit_fusion": arms["refit"].fusion.weights,
                      **{f"{name}_cpu_s": round(run[2], 2) for name, run in runs.items()},
                      **{f"{name}_wall_s": round(run[3], 2) for name, run in runs.items()},
                      "refit_cpu_s": round(refit_cpu, 2), "refit_wall_s": round(refit_wall, 2)}
        points.append(point)
        print(point, flush=True)

    measured = points[1:]
    mean = {name: float(np.mean([p["ndcg10"][name] for p in measured])) for name in arms}
    cost = {f"{name}_{unit}_s": float(np.sum([p[f"{name}_{unit}_s"] for p in measured]))
            for name in (*refreshed, "refit") for unit in ("cpu", "wall")}
    summary = {"mean_ndcg10_after_updates": mean,
               "vs_refit_ndcg": {name: mean[name] / mean["refit"] for name in refreshed} if mean["refit"] else None,
               "cost_share": {name: cost[f"{name}_cpu_s"] / cost["refit_cpu_s"] for name in refreshed}
               if cost["refit_cpu_s"] else None,
               **cost, "first_fit_cpu_s": round(fit_cpu, 2), "first_fit_wall_s": round(fit_wall, 2),
               "targets": {"refresh_within_5pct_of_refit": mean["refresh"] >= 0.95 * mean["refit"],
                           "refresh_cost_at_most_20pct": cost["refresh_cpu_s"] <= 0.2 * cost["refit_cpu_s"],
                           "refresh_above_never": mean["refresh"] > mean["never"]}}
    result = {"benchmark": "refresh", "protocol": "prequential replay: fit on the first 70% of the time span, "
              f"then {args.batches} equal event batches; NDCG@10 on the next batch's events, full catalog, "
              "history excluded", "data": DATASET, "spec": spec.name,
              "steps": refreshed,
              "sasrec_budget_s": None if args.sasrec_epochs else args.sasrec_budget,
              "sasrec_max_epochs": args.sasrec_epochs, "cases_per_point": args.cases, "seed": args.seed,
              "machine": info, "points": points, "summary": summary}
    save_result(result, args.out)
    plot(points, args.out.with_suffix(".png"))


def plot(points: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    x = [p["after_batch"] for p in points]
    for name, label in (("never", "(a) never refreshed"), ("refresh", "(b) refreshed every batch"),
                        ("refresh-new", "refreshed on the newest windows"), ("refit", "(c) refitted every batch")):
        ax.plot(x, [p["ndcg10"][name] for p in points], marker="o", label=label)
    ax.set_xlabel("batches arrived")
    ax.set_ylabel("NDCG@10 on the next batch")
    ax.set_title("movielens-latest-small, prequential replay")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
