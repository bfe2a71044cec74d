"""Render an evaluation metrics document as Markdown tables and an NDCG@K plot."""

from __future__ import annotations

from pathlib import Path


def _ci(estimate: dict | None, digits: int = 4) -> str:
    if not estimate or estimate.get("n", 0) == 0:
        return "-"
    return f"{estimate['mean']:.{digits}f} [{estimate['low']:.{digits}f}, {estimate['high']:.{digits}f}]"


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


CARRIED_MARK = " ‡"
CLASSIC = ("MostPop", "ItemKNN", "SASRec", "ContentOnly", "TextSeq")  # one-source rows


def write_markdown(document: dict, path: Path) -> None:
    config, machine = document["config"], document["machine"]
    lines = [f"# {document['run']}: evaluation results", "",
             f"- data set: `{config['dataset']}`; config: `{config.get('source') or '-'}`",
             f"- machine: {machine['cpus']} CPU cores ({machine['processor']}), torch threads "
             f"{machine['torch_threads']}, Python {machine['python']}; date {machine['date']}; "
             f"commit {machine['git_commit'] or '-'}",
             f"- intervals: 95% percentile bootstrap over cases ({config['bootstrap']} resamples); "
             "MRR is not cut at any K", "", *_leaderboard(document)]
    for variant, info in document["variants"].items():
        rows = [r for r in document["results"] if r["variant"] == variant]
        if not rows:
            continue
        platforms = sorted({p for r in rows for p in r["metrics"] if p != "all"})
        lines += [f"## {variant}", "", f"Protocol: {info['description']}.", "",
                  f"Data: {info['data']['test_cases']:,} test cases from {info['data']['test_users']:,} users "
                  f"({info['data']['test_cases_per_platform']}); {info['data']['train_users']:,} train users, "
                  f"{info['data']['train_interactions']:,} train interactions; evaluated cases: "
                  f"{info['evaluated_cases']:,}. Seed {info['protocol']['seed']}.", ""]
        header = ["method", "history", "cases", "HR@10", "NDCG@10", "MRR"]
        header += [f"NDCG@10 {p}" for p in platforms] if len(platforms) > 1 else []
        header += ["NDCG@20", "coverage@10", "pop. pct@10", "fit s", "cases/s"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            m = r["metrics"]["all"]
            cells = [r["method"] + (f" (sample of {r['sampled_users']} users)" if r["sampled_users"] else "")
                     + (CARRIED_MARK if "carried" in r else ""),
                     r["history"], f"{r['cases']:,}", _ci(m["HR@10"]), _ci(m["NDCG@10"]), _ci(m["MRR"])]
            if len(platforms) > 1:
                cells += [_ci(r["metrics"].get(p, {}).get("NDCG@10")) for p in platforms]
            beyond = r["beyond_accuracy"]
            coverage = sum(b["coverage@10"] for b in beyond.values()) / max(1, len(beyond))
            pct = sum(b["popularity_percentile@10"] for b in beyond.values()) / max(1, len(beyond))
            cells += [_ci(m.get("NDCG@20")), f"{coverage:.3f}", f"{pct:.3f}", _num(r["fit_seconds"]),
                      _num(r["cases_per_second"], ".2f")]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [*_carried_notes(rows), ""]
        for r in (r for r in rows if r.get("generation")):
            g = r["generation"]
            lines.append(f"- {r['method']} ({r['history']}): validity rate {_ci(g['validity_rate'], 3)}, mean "
                         f"grounding similarity {_ci(g['grounding_similarity'], 3)}")
        for r, f in ((r, _tuned_fusion(r)) for r in rows):
            if f is None:
                continue
            weights = ", ".join(f"{name} {w:g}" for name, w in f["weights"].items() if w)
            alone = ", ".join(f"{name} {v:.4f}" for name, v in f["report"]["single_components"].items())
            calibration = f", calibration a = {f['calibration']}" if f["weights"].get("llm") else ""
            lines.append(f"- {r['method']} ({r['history']}): fusion {weights}{calibration}, "
                         f"chosen on {f['report']['tuning_cases']} validation cases by "
                         f"{f['report']['tuning_metric']} ({f['report']['tuned']:.4f}; each component alone: "
                         f"{alone})")
        for r in (r for r in rows if r.get("same_sample")):
            carried = f"{CARRIED_MARK}, every row as of its run" if "carried" in r else ""
            lines += ["", f"Same {r['sampled_users']} sampled users, for comparison with {r['method']} "
                      f"({r['history']}){carried}:", "", "| method | HR@10 | NDCG@10 | MRR |", "|---|---|---|---|"]
            m = r["metrics"]["all"]
            lines.append(f"| {r['method']} ({r['history']}) | {_ci(m['HR@10'])} | {_ci(m['NDCG@10'])} | "
                         f"{_ci(m['MRR'])} |")
            for name, other in r["same_sample"].items():
                lines.append(f"| {name} | {_ci(other['HR@10'])} | {_ci(other['NDCG@10'])} | {_ci(other['MRR'])} |")
        paired = [c for c in document.get("comparisons", []) if c["variant"] == variant]
        if paired:
            lines += ["", "Paired differences (method - baseline) on the cases both ranked, 95% bootstrap intervals "
                      "over those cases:", "", "| method | baseline | history | cases | NDCG@10 (method / baseline) "
                      "| NDCG@10 difference | HR@10 difference | MRR difference |", "|---|---|---|---|---|---|---|---|"]
            for c in paired:
                d = c["difference"]
                lines.append(f"| {c['method']}{CARRIED_MARK if 'carried' in c else ''} | {c['baseline']} | "
                             f"{c['history']} | {c['cases']:,} | "
                             f"{c['method_ndcg@10']:.4f} / {c['baseline_ndcg@10']:.4f} | {_ci(d['NDCG@10'])} | "
                             f"{_ci(d['HR@10'])} | {_ci(d['MRR'])} |")
            lines += _carried_notes(paired)
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def _leaderboard(document: dict) -> list[str]:
    """The main variant's classic models and pipelines, best NDCG@10 first: every test case (a pipeline row on a
    sample of users says so), with per-platform columns and the pipelines' paired differences."""
    rows = [r for r in document["results"] if r["variant"] == "main"
            and (r["method"] in CLASSIC or r["method"].startswith("pipeline"))]
    if not rows:
        return []
    platforms = sorted({p for r in rows for p in r["metrics"] if p != "all"})
    header = ["method", "history", "cases", "NDCG@10", "HR@10"]
    header += [f"NDCG@10 {p}" for p in platforms] if len(platforms) > 1 else []
    lines = ["## Leaderboard", "", "The main protocol's classic models and pipelines (genrec/pipeline: what `genrec "
             "recommend` and `genrec serve` run), best first; the full tables follow.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(rows, key=lambda r: -r["metrics"]["all"]["NDCG@10"]["mean"]):
        m = r["metrics"]["all"]
        cells = [r["method"] + (f" (sample of {r['sampled_users']} users)" if r["sampled_users"] else ""),
                 r["history"], f"{r['cases']:,}", _ci(m["NDCG@10"]), _ci(m["HR@10"])]
        if len(platforms) > 1:
            cells += [_ci(r["metrics"].get(p, {}).get("NDCG@10")) for p in platforms]
        lines.append("| " + " | ".join(cells) + " |")
    paired = [c for c in document.get("comparisons", []) if c["variant"] == "main"
              and c["method"].startswith("pipeline")]
    if paired:
        lines += ["", "| pipeline | baseline | history | cases | NDCG@10 difference (paired) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {c['method']} | {c['baseline']} | {c['history']} | {c['cases']:,} | "
                  f"{_ci(c['difference']['NDCG@10'])} |" for c in paired]
    return [*lines, ""]


def _carried_notes(entries: list[dict]) -> list[str]:
    """The footnote of the carried rows of a table (``runner.carry_earlier``), one per run they come from."""
    runs = sorted({(e["carried"]["date"] or "-", e["carried"]["git_commit"] or "-") for e in entries if "carried" in e})
    return [f"{CARRIED_MARK.strip()} carried from the run of {day} (commit {commit}): its per-case outcomes were not "
            "recorded, so it is neither re-run nor paired with rows run since." for day, commit in runs]


def plot_ndcg(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = document["config"]["protocol"]["ks"]
    variants = [v for v in document["variants"] if any(r["variant"] == v for r in document["results"])]
    fig, axes = plt.subplots(1, len(variants), figsize=(6 * len(variants), 4.2), squeeze=False)
    for ax, variant in zip(axes[0], variants, strict=True):
        for r in (r for r in document["results"] if r["variant"] == variant):
            m = r["metrics"]["all"]
            means = [m[f"NDCG@{k}"]["mean"] for k in ks]
            errors = [[mean - m[f"NDCG@{k}"]["low"] for k, mean in zip(ks, means, strict=True)],
                      [m[f"NDCG@{k}"]["high"] - mean for k, mean in zip(ks, means, strict=True)]]
            ax.errorbar(ks, means, yerr=errors, marker="o", capsize=3, label=f"{r['method']} ({r['history']})")
        ax.set_title(f"{document['run']}: {variant}")
        ax.set_xlabel("K")
        ax.set_ylabel("NDCG@K (95% CI)")
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _tuned_fusion(row: dict) -> dict | None:
    """A pipeline row's fusion when it was tuned on validation cases (not fixed in its spec), else ``None``."""
    fusion = (row.get("info") or {}).get("fusion") or {}
    return fusion if fusion.get("report", {}).get("tuned") is not None else None
