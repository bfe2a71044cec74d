"""The evaluation runner: configs, method selection, results on disk, resumable caches, shared LLM answers."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from genrec.errors import GenrecError
from genrec.evaluation.config import MethodSpec, parse
from genrec.evaluation.report import write_markdown
from genrec.evaluation.runner import Outcome, _recorded, compare, outcome_fingerprint, run, select_methods


def _config(**overrides) -> dict:
    return {"name": "tiny", "dataset": "movielens-latest-small", "methods": ["mostpop"], **overrides}


@pytest.mark.parametrize(("change", "message"), [
    ({"colour": "blue"}, "unknown key(s) colour"),
    ({"methods": [{"name": "genrec", "scopes": ["sideways"]}]}, "methods[0]: unknown scope(s) sideways"),
    ({"methods": [{"name": "mostpop", "sample": 3}]}, "methods[0]"),
    ({"ablations": ["everything"]}, "unknown ablation(s) everything"),
    ({"protocol": {"ranking": "partial"}}, "protocol"),
    ({"comparisons": [["MostPop"]]}, "comparisons[0]: expected [method, baseline]"),
    ({"comparisons": [["MostPop", "SASRec"]]}, "comparisons[0]: SASRec not among the config's methods"),
])
def test_bad_configs_name_the_field(change, message):
    with pytest.raises(GenrecError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse(_config(**change), source="x.yaml")


def test_a_label_picks_one_method_and_a_name_picks_every_method_of_its_kind():
    specs = [MethodSpec("mostpop"), MethodSpec("genrec"), MethodSpec("genrec", label="genrec-tuned"),
             MethodSpec("sasrec")]
    assert [s.title for s in select_methods(specs, ["genrec"])] == ["genrec"]
    assert [s.title for s in select_methods(specs, ["genrec-tuned", "sasrec"])] == ["genrec-tuned", "SASRec"]
    assert len(select_methods(specs, None)) == 4
    with pytest.raises(GenrecError, match="nope not in the config"):
        select_methods(specs, ["nope"])


def _outcome(method: str, users: list[str], ranks: list[float], scope: str = "cross") -> Outcome:
    return Outcome("main", method, scope, users, ["p"] * len(users), ranks, [[] for _ in users], 0.0, 0.0)


def test_paired_differences_use_the_cases_both_ranked(tmp_path):
    tuned = _outcome("tuned", ["u1", "u2", "u3", "u4"], [1.0, 3.0, 50.0, 2.0])
    base = _outcome("base", ["u0", "u2", "u1", "u3", "u4"], [1.0, 1.0, 4.0, 7.0, 2.0])  # another order, one more
    other_scope = _outcome("base", ["u1"], [1.0], scope="target")
    [row] = compare([["tuned", "base"]], [tuned, base, other_scope], 200, 0)
    assert row["cases"] == 4 and row["history"] == "cross"
    ndcg = lambda r: 1 / np.log2(r + 1) if r <= 10 else 0.0  # noqa: E731
    expected = np.mean([ndcg(1) - ndcg(4), ndcg(3) - ndcg(1), ndcg(50) - ndcg(7), 0.0])
    difference = row["difference"]["NDCG@10"]
    assert difference["mean"] == pytest.approx(expected) and difference["low"] <= expected <= difference["high"]
    assert row["difference"]["HR@10"]["mean"] == pytest.approx(-0.25)
    assert row["method_ndcg@10"] - row["baseline_ndcg@10"] == pytest.approx(expected)
    assert compare([["tuned", "missing"]], [tuned, base], 200, 0) == []
    # a method paired with itself: its cross-platform row against its target-only row
    [scoped] = compare([["base", "base"]], [tuned, base, other_scope], 200, 0)
    assert scoped["history"] == "cross vs target" and scoped["cases"] == 1
    assert scoped["method_ndcg@10"] == pytest.approx(ndcg(4)) and scoped["baseline_ndcg@10"] == pytest.approx(1.0)
    # a user with two cases on one platform (final-timestamp targets): each is paired with its own counterpart
    twice = compare([["tuned", "base"]], [_outcome("tuned", ["u1", "u1"], [1.0, 40.0]),
                                          _outcome("base", ["u1", "u1"], [40.0, 1.0])], 200, 0)[0]
    assert twice["cases"] == 2 and twice["method_ndcg@10"] == twice["baseline_ndcg@10"] == pytest.approx(0.5)
    document = {"run": "r", "config": {"dataset": "d", "bootstrap": 200}, "variants": {"main": {
        "description": "x", "protocol": {"seed": 0}, "evaluated_cases": 5, "data": {
            "test_cases": 5, "test_users": 5, "test_cases_per_platform": {}, "train_users": 1,
            "train_interactions": 1}}}, "machine": {"cpus": 2, "processor": "x", "torch_threads": 2,
                                                    "python": "3", "date": "d", "git_commit": None},
        "results": [{"variant": "main", "method": "tuned", "history": "cross", "sampled_users": None, "cases": 4,
                     "metrics": {"all": dict.fromkeys(("HR@10", "NDCG@10", "MRR", "NDCG@20"), difference)},
                     "beyond_accuracy": {}, "fit_seconds": 0, "cases_per_second": None}],
        "comparisons": [row]}
    write_markdown(document, tmp_path / "r.md")
    report = (tmp_path / "r.md").read_text()
    assert "Paired differences" in report and "| tuned | base | cross | 4 | " in report
    assert f"{difference['mean']:.4f} [{difference['low']:.4f}, {difference['high']:.4f}]" in report


def _results(methods: dict[str, dict], rows: list[tuple[str, float]], pairs: list[tuple[str, str, float]],
             commit: str) -> dict:
    """A metrics document of a config with ``methods`` (label -> options) and the comparisons b - a and c - a: its
    cross-platform ``rows`` (method, NDCG@10) and ``pairs`` (method, baseline, difference) on 4 cases."""
    def estimate(value: float) -> dict:
        return {"mean": value, "low": value, "high": value, "n": 4}

    return {"run": "r", "machine": {"cpus": 2, "processor": "x", "torch_threads": 2, "python": "3",
                                    "date": "2026-11-28", "git_commit": commit},
            "config": {"dataset": "d", "protocol": {"seed": 0}, "bootstrap": 10,
                       "methods": [{"name": "pipeline", "label": label, "options": options, "sample_users": None,
                                    "scopes": None, "variants": None} for label, options in methods.items()],
                       "comparisons": [["b", "a"], ["c", "a"]]},
            "variants": {"main": {"description": "x", "protocol": {"seed": 0}, "evaluated_cases": 4, "data": {
                "test_cases": 4, "test_users": 4, "test_cases_per_platform": {}, "train_users": 1,
                "train_interactions": 1}}},
            "results": [{"variant": "main", "method": method, "history": "cross", "sampled_users": None, "cases": 4,
                         "metrics": {"all": dict.fromkeys(("HR@10", "NDCG@10", "MRR", "NDCG@20"), estimate(value))},
                         "beyond_accuracy": {}, "fit_seconds": 0, "cases_per_second": None} for method, value in rows],
            "comparisons": [{"variant": "main", "method": m, "baseline": b, "history": "cross", "cases": 4,
                             "difference": dict.fromkeys(("HR@10", "NDCG@10", "MRR"), estimate(d)),
                             "method_ndcg@10": 0.0, "baseline_ndcg@10": 0.0} for m, b, d in pairs]}


def test_earlier_rows_without_a_record_are_carried_while_their_method_is_unchanged(tmp_path):
    """A run of some methods keeps the earlier rows of the others (no per-case record to replay), marked with
    the run they come from, unless the method's settings changed; rows that ran replace their earlier ones."""
    from genrec.evaluation.runner import carry_earlier

    methods = {"a": {}, "b": {"x": 1}, "c": {"x": 2}}
    earlier = _results(methods, [("a", 0.1), ("b", 0.2), ("c", 0.3)], [("b", "a", 0.1), ("c", "a", 0.2)], "old")
    (tmp_path / "metrics.json").write_text(json.dumps(earlier))
    changed = {**methods, "c": {"x": 3}}  # c's settings changed since: its earlier numbers no longer hold
    document = _results(changed, [("a", 0.15)], [], "new")
    carry_earlier(document, tmp_path / "metrics.json")
    assert [(r["method"], r["metrics"]["all"]["NDCG@10"]["mean"], r.get("carried")) for r in document["results"]] \
        == [("a", 0.15, None), ("b", 0.2, {"date": "2026-11-28", "git_commit": "old"})]
    # b - a of the earlier run (its own NDCG of both sides recorded with it); c's changed: c - a is not
    assert [(c["method"], c["baseline"], "carried" in c) for c in document["comparisons"]] == [("b", "a", True)]
    write_markdown(document, tmp_path / "r.md")
    report = (tmp_path / "r.md").read_text()
    assert "| a | cross |" in report and "| b ‡ | cross |" in report and "| b ‡ | a | cross |" in report
    assert "‡ carried from the run of 2026-11-28 (commit old)" in report
    document["results"][1]["sampled_users"], document["results"][1]["same_sample"] = 2, {"a (cross)": {
        k: document["results"][0]["metrics"]["all"][k] for k in ("HR@10", "NDCG@10", "MRR")}}
    write_markdown(document, tmp_path / "r.md")
    assert "for comparison with b (cross) ‡, every row as of its run:" in (tmp_path / "r.md").read_text()
    document["variants"]["main"]["evaluated_cases"] = 2  # a run on fewer users (--limit-users): nothing carried
    document["results"], document["comparisons"] = [], []
    carry_earlier(document, tmp_path / "metrics.json")
    assert document["results"] == []
    (tmp_path / "metrics.json").write_text("{")
    with pytest.raises(GenrecError, match="metrics.json: unreadable earlier results"):
        carry_earlier(document, tmp_path / "metrics.json")


def test_a_recorded_tuned_outcome_is_reused_unless_the_adapter_here_differs(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"first weights")
    spec = MethodSpec("genrec", label="tuned", options={"llm": {"adapter": str(adapter)}})
    data = SimpleNamespace(protocol=SimpleNamespace(to_dict=lambda: {"seed": 0}))
    outcome = _outcome("tuned", ["u1", "u2"], [1.0, 3.0])
    record = {"fingerprint": outcome_fingerprint(spec, 2, {"seed": 0}), "outcome": vars(outcome)}
    assert "adapter" in record["fingerprint"]
    (tmp_path / f"{outcome.key}.json").write_text(json.dumps(record))
    two_cases = [None, None]
    assert _recorded(spec, "cross", "main", data, two_cases, tmp_path) == outcome  # the weights it was made with
    assert _recorded(spec, "cross", "main", data, [None], tmp_path) is None  # other cases
    (adapter / "adapter_model.safetensors").write_bytes(b"retrained")
    assert _recorded(spec, "cross", "main", data, two_cases, tmp_path) is None
    shutil.rmtree(adapter)  # a fresh clone: the adapter is not here to contradict the record
    assert _recorded(spec, "cross", "main", data, two_cases, tmp_path) == outcome
    (tmp_path / f"{outcome.key}.json").write_text('{"outcome": {"ranks": []}}')  # a broken record: named, not skipped
    with pytest.raises(GenrecError, match=f"{outcome.key}.json: not a recorded outcome"):
        _recorded(spec, "cross", "main", data, two_cases, tmp_path)

@pytest.mark.integration
def test_run_writes_results_resumes_and_shares_llm_answers(real_store, tmp_path):
    raw = _config(protocol={"targets": "last-per-platform", "users": "all"}, bootstrap=50,
                  methods=["mostpop", "itemknn", {"name": "genrec", "sample_users": 3},
                           {"name": "mostpop", "label": "MostPop-2", "sample_users": 2},
                           {"name": "pipeline", "label": "pipeline-llm", "sample_users": 2,
                            "options": {"sources": [{"kind": "popularity", "n": 4}, {"kind": "itemknn", "n": 4}],
                                        "llm": {"calibrations": [0.0, 1.0], "llm": {"dtype": "bfloat16"}},
                                        "fusion": {"weights": [0.0, 1.0], "tune_users": 2, "rounds": 1}}}],
                  comparisons=[["MostPop-2", "ItemKNN"]])
    first_methods = raw["methods"]
    document = run(parse(raw), real_store, tmp_path, limit_users=12, progress=False)
    [paired] = document["comparisons"]
    assert paired["method"] == "MostPop-2" and paired["cases"] == 2
    out = tmp_path / "tiny"
    assert json.loads((out / "metrics.json").read_text())["results"] == json.loads(json.dumps(document["results"]))
    report = (out / "results.md").read_text()
    assert "| MostPop | cross | 12 |" in report
    assert (out / "ndcg_at_k.png").stat().st_size > 10_000
    rows = {r["method"]: r for r in document["results"]}
    assert rows["ItemKNN"]["cases"] == 12 and rows["genrec"]["cases"] == 3
    assert rows["genrec"]["sampled_users"] == 3
    assert set(rows["genrec"]["same_sample"]) == {"MostPop (cross)", "ItemKNN (cross)"}
    # a smaller seeded sample lies inside the larger one: it is compared with every method covering its users
    assert set(rows["MostPop-2"]["same_sample"]) == {"MostPop (cross)", "ItemKNN (cross)", "genrec (cross)"}
    assert rows["MostPop-2"]["same_sample"]["MostPop (cross)"] == rows["MostPop-2"]["metrics"]["all"]
    fusion = rows["pipeline-llm"]["info"]["fusion"]  # the LLM stage's weight and calibration, tuned on validation
    assert set(fusion["report"]["single_components"]) == {"popularity", "itemknn", "llm(a=0.0)", "llm(a=1.0)"}
    assert fusion["report"]["tuned"] >= max(fusion["report"]["single_components"].values())
    assert "pipeline-llm (cross): fusion " in report
    assert (f"calibration a = {fusion['calibration']}," in report) == bool(fusion["weights"]["llm"])
    ndcg = rows["genrec"]["metrics"]["all"]["NDCG@10"]
    assert ndcg["low"] <= ndcg["mean"] <= ndcg["high"]
    assert 0.0 <= rows["genrec"]["generation"]["validity_rate"]["mean"] <= 1.0
    answers = list((out / "cache").glob("generations__cross__*.jsonl"))
    assert len(answers) == 1 and len(answers[0].read_text().splitlines()) == 3

    # a grounding-only change under another label grounds the saved answers again: no new generation
    del raw["comparisons"]
    raw["methods"] = ["mostpop", "itemknn", {"name": "genrec", "label": "genrec-popular", "sample_users": 3,
                                             "options": {"recommender": {"popularity_weight": 1.0}}}]
    again = run(parse(raw), real_store, tmp_path, limit_users=12, progress=False)
    assert len(answers[0].read_text().splitlines()) == 3
    rows_again = {r["method"]: r for r in again["results"]}
    assert rows_again["ItemKNN"]["metrics"] == rows["ItemKNN"]["metrics"]  # loaded from its recorded outcome
    assert rows_again["genrec-popular"]["cases"] == 3

    # a clean clone holds the recorded outcomes but no LLM cache: a run of one method re-aggregates every recorded
    # one with it, without running a model
    clone = tmp_path / "clone"
    shutil.copytree(out / "outcomes", clone / "tiny" / "outcomes")
    raw["methods"] = first_methods
    replayed = run(parse(raw), real_store, clone, methods=["MostPop"], limit_users=12, progress=False)
    assert {r["method"]: r["metrics"] for r in replayed["results"]} == {m: r["metrics"] for m, r in rows.items()}
    assert not list((clone / "tiny" / "cache").iterdir())
