"""Collaborative-aware grounding: the fusion weight is chosen on validation cases and stored with the adapter."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from genrec.evaluation.fusion import FusedMethod, llm_component, scale_rows
from genrec.evaluation.generative import LEAD
from genrec.llm import ADAPTER_METADATA
from genrec.pipeline.types import EvalCase, Interaction, TrainData

CATALOG = ["a", "b", "c", "d"]
TRAIN = TrainData({"u0": [Interaction("p", "a", 1.0)]}, {"p": CATALOG})


class Fixed:
    """A method whose scores put one item first for every case (``LEAD`` marks a grounded LLM item)."""

    def __init__(self, first: str, lead: bool = False, adapter: str | None = None) -> None:
        self.name, self.history_scope, self.first, self.lead = "fixed", "cross", first, lead
        self.llm_config = SimpleNamespace(adapter=adapter)
        self.fitted = False

    def fit(self, train, valid_cases=None) -> None:
        self.fitted = True

    def score(self, cases, platform) -> np.ndarray:
        scores = np.tile(np.linspace(0.4, 0.1, len(CATALOG)), (len(cases), 1))
        scores[:, CATALOG.index(self.first)] = LEAD if self.lead else 1.0
        return scores

    def case_stats(self, cases):
        return {"validity": [1.0] * len(cases), "grounding_similarity": [1.0] * len(cases)}


def _cases(target: str, split: str, n: int = 6) -> list[EvalCase]:
    return [EvalCase(user_id=f"u{i}", platform="p", target=target, history=(), split=split, timestamp=float(i))
            for i in range(n)]


def test_components_are_scaled_to_unit_range():
    rows = np.array([[2.0, 4.0, 3.0], [1.0, 1.0, 1.0]])
    assert np.allclose(scale_rows(rows), [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]])
    assert np.allclose(llm_component(np.array([[LEAD, LEAD - 0.5, 0.3]])), [[1.0, 0.5, 0.0]])


@pytest.mark.parametrize(("llm_right", "expect_weight_positive"), [(True, True), (False, False)])
def test_weight_follows_whichever_side_is_right_on_validation(llm_right, expect_weight_positive):
    prior, llm = Fixed("b"), Fixed("c", lead=True)
    fused = FusedMethod(prior, llm, name="fused", tune_users=4, seed=1)
    fused.fit(TRAIN, _cases("c" if llm_right else "b", "valid"))
    assert prior.fitted and llm.fitted
    assert (fused.weight > 0) is expect_weight_positive
    assert fused.info["tuning_users"] == 4 and fused.info["prior"] == "fixed"
    assert fused.info["fused"] == max(fused.info["by_weight"].values())
    top = np.argmax(fused.score(_cases("c", "test", 2), "p"), axis=1)
    assert [CATALOG[j] for j in top] == (["c", "c"] if llm_right else ["b", "b"])


def test_chosen_weight_is_stored_with_the_adapter(tmp_path):
    (tmp_path / ADAPTER_METADATA).write_text(json.dumps({"base_model": {"name": "x"}}))
    fused = FusedMethod(Fixed("b"), Fixed("c", lead=True, adapter=str(tmp_path)), name="fused", tune_users=3)
    fused.fit(TRAIN, _cases("c", "valid"))
    saved = json.loads((tmp_path / ADAPTER_METADATA).read_text())
    assert saved["base_model"] == {"name": "x"} and saved["fusion"]["weight"] == fused.weight


def test_bad_weights_and_missing_validation_are_refused():
    with pytest.raises(ValueError, match="weights"):
        FusedMethod(Fixed("b"), Fixed("c", lead=True), name="f", weights=[0.5, 1.0])
    with pytest.raises(ValueError, match="validation cases"):
        FusedMethod(Fixed("b"), Fixed("c", lead=True), name="f").fit(TRAIN, [])
