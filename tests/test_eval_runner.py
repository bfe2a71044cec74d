"""The evaluation runner: configs, method selection, results on disk, resumable caches, shared LLM answers."""

from __future__ import annotations

import json

import pytest

from genrec.errors import GenrecError
from genrec.evaluation.config import MethodSpec, parse
from genrec.evaluation.runner import run, select_methods


def _config(**overrides) -> dict:
    return {"name": "tiny", "dataset": "movielens-latest-small", "methods": ["mostpop"], **overrides}


@pytest.mark.parametrize(("change", "message"), [
    ({"colour": "blue"}, "unknown key(s) colour"),
    ({"methods": [{"name": "genrec", "scopes": ["sideways"]}]}, "methods[0]: unknown scope(s) sideways"),
    ({"methods": [{"name": "mostpop", "sample": 3}]}, "methods[0]"),
    ({"ablations": ["everything"]}, "unknown ablation(s) everything"),
    ({"protocol": {"ranking": "partial"}}, "protocol"),
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


@pytest.mark.integration
def test_run_writes_results_resumes_and_shares_llm_answers(real_store, tmp_path):
    raw = _config(protocol={"targets": "last-per-platform", "users": "all"}, bootstrap=50,
                  methods=["mostpop", "itemknn", {"name": "genrec", "sample_users": 3},
                           {"name": "mostpop", "label": "MostPop-2", "sample_users": 2},
                           {"name": "rerank", "label": "rerank-calibrated", "sample_users": 2,
                            "options": {"sources": ["mostpop"], "per_source": 4, "calibrations": [0.0, 1.0],
                                        "tune_users": 2, "llm": {"dtype": "bfloat16"}}}])
    document = run(parse(raw), real_store, tmp_path, limit_users=12, progress=False)
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
    calibrated = rows["rerank-calibrated"]["info"]  # the re-ranker's calibration, chosen on 2 users' validation
    assert set(calibrated["by_calibration"]) == {"0.0", "1.0"} and calibrated["tuning_users"] == 2
    assert f"rerank-calibrated (cross): calibration a = {calibrated['calibration']} " in report
    ndcg = rows["genrec"]["metrics"]["all"]["NDCG@10"]
    assert ndcg["low"] <= ndcg["mean"] <= ndcg["high"]
    assert 0.0 <= rows["genrec"]["generation"]["validity_rate"]["mean"] <= 1.0
    answers = list((out / "cache").glob("generations__cross__*.jsonl"))
    assert len(answers) == 1 and len(answers[0].read_text().splitlines()) == 3

    # a grounding-only change under another label grounds the saved answers again: no new generation
    raw["methods"] = ["mostpop", "itemknn", {"name": "genrec", "label": "genrec-popular", "sample_users": 3,
                                             "options": {"recommender": {"popularity_weight": 1.0}}}]
    again = run(parse(raw), real_store, tmp_path, limit_users=12, progress=False)
    assert len(answers[0].read_text().splitlines()) == 3
    rows_again = {r["method"]: r for r in again["results"]}
    assert rows_again["ItemKNN"]["metrics"] == rows["ItemKNN"]["metrics"]  # loaded from the per-method cache
    assert rows_again["genrec-popular"]["cases"] == 3
