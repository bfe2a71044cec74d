"""Run an evaluation config: every method through the same protocol, candidate sets and metrics.

Results go to ``<out>/<run name>/``: ``metrics.json`` (config, protocol, data summary, machine, per-method metrics
with bootstrap intervals and per-platform breakdowns), ``results.md`` (tables), ``ndcg_at_k.png`` and, per method,
its per-case outcome under ``outcomes/`` (small, meant to be committed: any later run re-aggregates it and compares
new methods with it case by case instead of re-running it). A run resumes from them; the LLM methods' per-case
answers and scores are cached under ``cache/`` (large, not committed), so an interrupted run also resumes mid-method.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform as host
import random
import re
import subprocess
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from genrec.data.loading import ensure_dataset
from genrec.data.store import Store
from genrec.errors import GenrecError
from genrec.evaluation import metrics
from genrec.evaluation.config import EvalConfig, MethodSpec
from genrec.evaluation.methods import Resources, create
from genrec.evaluation.protocol import EvalData, build
from genrec.llm import ModelNotFoundError, adapter_digest
from genrec.pipeline.sources import popularity_counts
from genrec.pipeline.types import EvalCase

TOP_K = 10  # list length for coverage and popularity bias


@dataclass
class Outcome:
    """What one method produced on one case set (kept per case, so any subset can be re-aggregated)."""

    variant: str
    method: str
    scope: str
    users: list[str]
    platforms: list[str]
    ranks: list[float]
    tops: list[list[str]]  # top-K item ids per case
    fit_seconds: float
    score_seconds: float
    extra: dict[str, list[float | None]] = field(default_factory=dict)  # e.g. validity, grounding similarity
    info: dict = field(default_factory=dict)  # what the method chose while fitting (e.g. a fusion weight)

    @property
    def key(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.variant}__{self.method}__{self.scope}")


def _variants(config: EvalConfig) -> list[tuple[str, object]]:
    variants = [("main", config.protocol)]
    if "zero_shot_platform" in config.ablations:
        for platform in config.zero_shot_platforms:
            variants.append((f"zero-shot {platform}", replace(
                config.protocol, platforms=[platform], exclude_from_training=[platform])))
    return variants


def _sample_users(users: set[str], n: int | None, seed: int) -> set[str] | None:
    """A seeded sample of ``n`` users (``None``: all of them)."""
    if n is None or n >= len(users):
        return None
    return set(random.Random(seed).sample(sorted(users), n))


def evaluate_method(method, data: EvalData, cases: Sequence[EvalCase], *, variant: str, label: str,
                    progress: Progress | None = None, batch_size: int = 256, fit: bool = True) -> Outcome:
    """Fit on the protocol's training data (unless ``fit`` is false: the method is fitted already), then rank every
    case's target; per-case results."""
    started = time.perf_counter()
    if fit:
        method.fit(data.train, data.valid)
    fit_seconds = time.perf_counter() - started
    ranks = np.full(len(cases), np.inf)
    tops: list[list[str]] = [[] for _ in cases]
    by_platform: dict[str, list[int]] = defaultdict(list)
    for i, case in enumerate(cases):
        by_platform[case.platform].append(i)
    protocol = data.protocol
    negatives = protocol.negatives if protocol.ranking == "sampled" else None
    task = progress.add_task(f"{label} [{variant}]", total=len(cases)) if progress else None
    started = time.perf_counter()
    for platform, rows in by_platform.items():
        catalog = data.train.catalogs[platform]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = [cases[i] for i in chunk]
            scores = method.score(batch, platform)
            ranks[chunk] = metrics.ranks_for_cases(scores, batch, catalog, num_negatives=negatives,
                                                   seed=protocol.seed)
            for i, top in zip(chunk, metrics.top_k_for_cases(scores, batch, catalog, TOP_K), strict=True):
                tops[i] = [catalog[j] for j in top]
            if progress:
                progress.advance(task, len(chunk))
    score_seconds = time.perf_counter() - started
    extra = method.case_stats(cases) if hasattr(method, "case_stats") else {}
    return Outcome(variant, label, method.history_scope, [c.user_id for c in cases],
                   [c.platform for c in cases], ranks.tolist(), tops, fit_seconds, score_seconds, extra,
                   getattr(method, "info", {}))


def aggregate(outcome: Outcome, data: EvalData, ks: Sequence[int], n_boot: int, seed: int,
              users: set[str] | None = None) -> dict:
    """Metrics with bootstrap intervals (all cases and per platform), coverage, popularity bias, extras."""
    keep = [i for i, u in enumerate(outcome.users) if users is None or u in users]
    ranks = np.asarray(outcome.ranks, dtype=float)[keep]
    groups = [outcome.platforms[i] for i in keep]
    summary = metrics.summarize_by(ranks, groups, ks, n_boot, seed)
    out: dict = {"cases": len(keep), "users": len({outcome.users[i] for i in keep}),
                 "metrics": {g: {m: vars(e) for m, e in est.items()} for g, est in summary.items()}}
    beyond = {}
    for platform in sorted(set(groups)):
        catalog = data.train.catalogs[platform]
        index = {item: j for j, item in enumerate(catalog)}
        lists = [[index[x] for x in outcome.tops[i] if x in index] for i in keep if outcome.platforms[i] == platform]
        counts = popularity_counts(data.train, platform)
        pop = metrics.average_popularity(lists, counts)
        beyond[platform] = {f"coverage@{TOP_K}": metrics.catalog_coverage(lists, len(catalog)),
                            f"popularity_percentile@{TOP_K}": pop.mean_percentile,
                            f"popularity_count@{TOP_K}": pop.mean_count}
    out["beyond_accuracy"] = beyond
    if outcome.extra:
        validity = [outcome.extra["validity"][i] for i in keep]
        similarity = [outcome.extra["grounding_similarity"][i] for i in keep]
        out["generation"] = {m: vars(e) for m, e in
                             metrics.generation_quality(validity, similarity, n_boot, seed).items()}
    if outcome.info:
        out["info"] = outcome.info
    out["fit_seconds"] = outcome.fit_seconds
    out["score_seconds"] = outcome.score_seconds
    out["cases_per_second"] = len(outcome.ranks) / outcome.score_seconds if outcome.score_seconds else None
    return out


def compare(pairs: Sequence[Sequence[str]], outcomes: Sequence[Outcome], n_boot: int, seed: int) -> list[dict]:
    """Paired differences ``method - baseline`` of HR@10, NDCG@10 and MRR on the cases both ranked (the same case
    of the same user on the same target platform, ``_case_keys``), per history scope both ran, with
    percentile-bootstrap intervals over those cases (resampling cases, not each method apart: the comparison the
    per-row intervals cannot make). A method paired with itself compares its cross-platform row with its
    target-only row (``history``: ``cross vs target``)."""
    by_name = {(o.method, o.scope): o for o in outcomes}
    out = []
    for method, baseline in pairs:
        scopes = [("cross", "target", "cross vs target")] if method == baseline else \
            [("cross", "cross", "cross"), ("target", "target", "target")]
        for scope, baseline_scope, history in scopes:
            mine, theirs = by_name.get((method, scope)), by_name.get((baseline, baseline_scope))
            if mine is None or theirs is None:
                continue
            position = {key: j for j, key in enumerate(_case_keys(theirs))}
            rows = [(i, position[key]) for i, key in enumerate(_case_keys(mine)) if key in position]
            if not rows:
                continue
            a = metrics.case_metrics(np.array([mine.ranks[i] for i, _ in rows]), (10,))  # HR@10, NDCG@10, MRR
            b = metrics.case_metrics(np.array([theirs.ranks[j] for _, j in rows]), (10,))
            estimates = metrics.bootstrap({name: a[name] - b[name] for name in a}, n_boot, seed)
            out.append({"variant": mine.variant, "method": method, "baseline": baseline, "history": history,
                        "cases": len(rows), "difference": {name: vars(e) for name, e in estimates.items()},
                        "method_ndcg@10": float(a["NDCG@10"].mean()), "baseline_ndcg@10": float(b["NDCG@10"].mean())})
    return out


def _case_keys(outcome: Outcome) -> list[tuple[str, str, int]]:
    """Each case's (user, target platform, how many of that user's cases on that platform came before it): a user
    can have several cases on one platform (``final-timestamp``: every event at the last timestamp), which every
    method ranks in the protocol's order."""
    seen: dict[tuple[str, str], int] = defaultdict(int)
    keys = []
    for key in zip(outcome.users, outcome.platforms, strict=True):
        keys.append((*key, seen[key]))
        seen[key] += 1
    return keys


def _machine() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False).stdout.strip() or None
    except OSError:
        commit = None
    return {"cpus": os.cpu_count(), "processor": host.machine(), "python": host.python_version(),
            "torch_threads": _torch_threads(), "date": date.today().isoformat(), "git_commit": commit}


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return None


def run(config: EvalConfig, store: Store, out_root: Path, *, methods: list[str] | None = None,
        limit_users: int | None = None, resume: bool = True, progress: bool = True) -> dict:
    """Run ``config`` and write its results; returns the metrics document.

    ``methods`` (labels or registry names) limits what runs; the results still hold every other method of the
    config whose recorded outcome matches it, so a run of one new method is compared with everything recorded.
    Rows and comparisons of the previous ``metrics.json`` that neither ran nor have a recorded outcome now are
    carried over (``carry_earlier``)."""
    platforms = ensure_dataset(store, config.dataset, platforms=config.dataset_platforms)
    chosen = {id(spec) for spec in select_methods(config.methods, methods)}
    out = out_root / config.name  # written only once the data set and the methods are known
    cache, recorded = out / "cache", out / "outcomes"
    cache.mkdir(parents=True, exist_ok=True)
    recorded.mkdir(exist_ok=True)
    scopes = ["cross", "target"] if "history_scope" in config.ablations else ["cross"]
    resources = Resources(store=store, cache_dir=cache)
    document: dict = {"run": config.name, "config": config.to_dict(), "machine": _machine(), "variants": {},
                      "results": [], "comparisons": []}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not progress) as bar:
        population: set[str] = set()
        for variant, protocol in _variants(config):
            data = build(store, protocol, platforms)
            cases = data.test
            # samples are drawn from the main variant's users, so every variant evaluates the same people
            population = population or {c.user_id for c in cases}
            limited = _sample_users(population, limit_users, protocol.seed)
            if limited is not None:
                cases = [c for c in cases if c.user_id in limited]
            document["variants"][variant] = {"protocol": protocol.to_dict(), "description": protocol.describe(),
                                             "data": data.summary(), "evaluated_cases": len(cases)}
            outcomes: list[tuple[MethodSpec, Outcome]] = []
            for spec in config.methods:
                if spec.variants is not None and variant not in spec.variants:
                    continue
                sample = _sample_users(population, spec.sample_users, protocol.seed)
                method_cases = [c for c in cases if sample is None or c.user_id in sample]
                runs = id(spec) in chosen
                for scope in spec.scopes or scopes:
                    outcome = None if runs and not resume else _recorded(spec, scope, variant, data, method_cases,
                                                                         recorded)
                    if outcome is None and runs:
                        outcome = _run(spec, scope, variant, data, method_cases, recorded, resources, bar)
                    if outcome is not None:
                        outcomes.append((spec, outcome))
            for spec, outcome in outcomes:
                sample = _sample_users(population, spec.sample_users, protocol.seed)
                row = {"variant": variant, "method": outcome.method, "history": outcome.scope,
                       "sampled_users": spec.sample_users if sample is not None else None,
                       **aggregate(outcome, data, protocol.ks, config.bootstrap, protocol.seed)}
                if sample is not None:  # every method that covers these users (all, or a larger sample) on them
                    mine = set(outcome.users)
                    row["same_sample"] = {
                        f"{o.method} ({o.scope})": aggregate(o, data, protocol.ks, config.bootstrap, protocol.seed,
                                                              sample)["metrics"]["all"]
                        for o in (o for _, o in outcomes if o is not outcome)
                        if mine <= set(o.users) and len(set(o.users)) > len(mine)}
                document["results"].append(row)
            document["comparisons"] += compare(config.comparisons, [o for _, o in outcomes], config.bootstrap,
                                               protocol.seed)
    carry_earlier(document, out / "metrics.json")
    (out / "metrics.json").write_text(json.dumps(document, indent=1, default=float) + "\n")
    from genrec.evaluation.report import plot_ndcg, write_markdown

    write_markdown(document, out / "results.md")
    plot_ndcg(document, out / "ndcg_at_k.png")
    return document


def carry_earlier(document: dict, path: Path) -> None:
    """Add to ``document`` the rows and comparisons of the earlier results at ``path`` that it lacks, where they
    still hold: same data set and protocol, and a method the config still has with the same settings. They are
    marked ``carried`` (the run they come from), so a table keeps the rows of methods that ran before their per-case
    outcomes were recorded. A carried comparison pairs the earlier outcomes of both sides (it records both NDCGs);
    a carried row cannot be paired with a row run since (no per-case outcome to pair)."""
    if not path.is_file():
        return
    try:
        earlier = json.loads(path.read_text())
        old_config, machine = earlier["config"], earlier["machine"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise GenrecError(f"{path}: unreadable earlier results ({exc!r}); move it away to write new ones") from exc
    config = document["config"]
    if (old_config.get("dataset"), old_config.get("protocol")) != (config["dataset"], config["protocol"]):
        return

    def title(spec: dict) -> str:
        return MethodSpec(**spec).title

    current = {title(spec): spec for spec in config["methods"]}
    unchanged = {title(spec) for spec in old_config["methods"] if current.get(title(spec)) == spec}
    variants = [v for v, info in document["variants"].items()  # the same cases (no other --limit-users)
                if (earlier.get("variants", {}).get(v) or {}).get("evaluated_cases") == info["evaluated_cases"]]
    origin = {"date": machine.get("date"), "git_commit": machine.get("git_commit")}
    rows = {(r["variant"], r["method"], r["history"]) for r in document["results"]}
    for row in earlier.get("results", []):
        if (row["variant"] in variants and row["method"] in unchanged
                and (row["variant"], row["method"], row["history"]) not in rows):
            document["results"].append({**row, "carried": row.get("carried", origin)})
    pairs = {(c["variant"], c["method"], c["baseline"], c["history"]) for c in document["comparisons"]}
    wanted = [tuple(pair) for pair in config["comparisons"]]
    for c in earlier.get("comparisons", []):
        if (c["variant"] in variants and {c["method"], c["baseline"]} <= unchanged
                and (c["method"], c["baseline"]) in wanted
                and (c["variant"], c["method"], c["baseline"], c["history"]) not in pairs):
            document["comparisons"].append({**c, "carried": c.get("carried", origin)})
    order = list(document["variants"])  # config order: variants, then methods (comparisons) as listed
    document["results"].sort(key=lambda r: (order.index(r["variant"]), list(current).index(r["method"]),
                                            r["history"]))
    document["comparisons"].sort(key=lambda c: (order.index(c["variant"]), wanted.index((c["method"], c["baseline"])),
                                                c["history"]))


def select_methods(specs: Sequence[MethodSpec], wanted: Sequence[str] | None) -> list[MethodSpec]:
    """The specs ``wanted`` names: a label picks that one method, a registry name every method of that kind."""
    if not wanted:
        return list(specs)
    titles = {s.title for s in specs}
    chosen = [s for s in specs if s.title in wanted or (s.name in wanted and s.name not in titles)]
    unknown = [w for w in wanted if w not in titles and w not in {s.name for s in specs}]
    if unknown:
        raise GenrecError(f"--methods: {', '.join(unknown)} not in the config; it has: {', '.join(sorted(titles))}")
    return chosen


def outcome_fingerprint(spec: MethodSpec, cases: int, protocol: dict) -> dict:
    """What a recorded outcome must match to be reused: the method's options, the case count, the protocol and, for
    a tuned LLM whose adapter is here, its adapter's weights (a retrained adapter in the same folder is a different
    method; an adapter that is not here, as in a fresh clone, cannot contradict its record)."""
    fingerprint = {"options": spec.options, "cases": cases, "protocol": protocol}
    adapter = (spec.options.get("llm") or {}).get("adapter")
    if adapter:
        with contextlib.suppress(ModelNotFoundError):  # not here
            fingerprint["adapter"] = adapter_digest(adapter)
    return fingerprint


def _outcome_path(recorded: Path, spec: MethodSpec, scope: str, variant: str) -> Path:
    return recorded / f"{Outcome(variant, spec.title, scope, [], [], [], [], 0.0, 0.0).key}.json"


def _recorded(spec: MethodSpec, scope: str, variant: str, data: EvalData, cases: list[EvalCase],
              recorded: Path) -> Outcome | None:
    """The method's recorded outcome on ``cases``, if there is one that matches it (see ``outcome_fingerprint``)."""
    path = _outcome_path(recorded, spec, scope, variant)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        outcome = Outcome(**saved["outcome"])
        recorded_for = dict(saved["fingerprint"])
    except (ValueError, KeyError, TypeError) as error:
        raise GenrecError(f"{path}: not a recorded outcome ({error}); delete it to run the method again") from None
    fingerprint = outcome_fingerprint(spec, len(cases), data.protocol.to_dict())
    if "adapter" not in fingerprint:
        recorded_for.pop("adapter", None)
    return outcome if recorded_for == fingerprint else None


def _run(spec: MethodSpec, scope: str, variant: str, data: EvalData, cases: list[EvalCase], recorded: Path,
         resources: Resources, bar: Progress) -> Outcome:
    """Run the method on ``cases`` and record its outcome (written whole, or not at all)."""
    method = create(spec, scope, resources)
    outcome = evaluate_method(method, data, cases, variant=variant, label=spec.title, progress=bar)
    path = _outcome_path(recorded, spec, scope, variant)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": outcome_fingerprint(spec, len(cases), data.protocol.to_dict()),
                               "outcome": vars(outcome)}, default=float))
    tmp.replace(path)
    return outcome
