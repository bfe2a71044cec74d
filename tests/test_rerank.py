"""The LLM as a re-ranker of classic models' candidates: candidate sets, ordering, calibration, fusion weight, score
and title-prior caches."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from genrec.errors import GenrecError
from genrec.evaluation.rerank import RerankMethod
from genrec.llm import ADAPTER_METADATA, LLMConfig
from genrec.pipeline.types import EvalCase, Interaction, TrainData

CATALOG = ["a", "b", "c", "d", "e", "f"]
TRAIN = TrainData({"u0": [Interaction("p", "a", 1.0)]}, {"p": CATALOG})


class Source:
    """A classic model with fixed scores: ``order`` best first, every other item below."""

    def __init__(self, order: str) -> None:
        self.name, self.history_scope, self.order, self.fits, self.scored = f"source-{order}", "cross", order, 0, 0

    def fit(self, train, valid_cases=None) -> None:
        self.fits += 1

    def score(self, cases, platform) -> np.ndarray:
        self.scored += 1
        row = np.zeros(len(CATALOG))
        for rank, item in enumerate(self.order):
            row[CATALOG.index(item)] = len(self.order) - rank
        return np.tile(row, (len(cases), 1))


class FakeLLM:
    """The GenerativeMethod surface the re-ranker uses; its recommender scores ``liked`` items highest, and its
    title prior is ``famous`` (item -> log-likelihood with an empty profile; 0 for the others)."""

    def __init__(self, liked: str, adapter: str | None = None, famous: dict[str, float] | None = None,
                 title_prior: str = "model") -> None:
        self.name, self.history_scope = "llm", "cross"
        self.llm_config = LLMConfig(adapter=adapter, dtype="float32")
        self.config = SimpleNamespace(score_tokens=16, calibration=0.0, title_prior=title_prior)
        self.scored: list[tuple[str, ...]] = []
        self.priors_asked: list[str] = []
        self.recommender = SimpleNamespace(score_candidates=self._score, title_priors=self._priors)
        self.liked, self.famous = liked, famous or {}

    def fit(self, train, valid_cases=None) -> None:
        pass

    def history(self, case):
        return list(case.history)

    def _score(self, requests):
        out = []
        for request in requests:
            self.scored.append(request.candidates)
            items = list(request.candidates)
            out.append((items, np.array([10.0 - self.liked.index(i) if i in self.liked else 0.0 for i in items])))
        return out

    def _priors(self, platform, items):
        self.priors_asked += items
        return np.array([self.famous.get(i, 0.0) for i in items])


def _cases(target: str, split: str, n: int = 4, owned: str = "") -> list[EvalCase]:
    history = tuple(Interaction("p", item, 0.5) for item in owned)
    return [EvalCase(user_id=f"u{i}", platform="p", target=target, history=history, split=split,
                     timestamp=float(i)) for i in range(n)]


def _top(method: RerankMethod, cases: list[EvalCase], n: int) -> list[list[str]]:
    return [[CATALOG[j] for j in np.argsort(-row, kind="stable")[:n]] for row in method.score(cases, "p")]


def test_candidates_are_each_sources_top_items_without_the_users_own():
    llm = FakeLLM(liked="")
    method = RerankMethod([Source("abc"), Source("dcf")], llm, name="r", per_source=2)
    method.fit(TRAIN)
    [case] = _cases("e", "test", 1, owned="a")
    method.score([case], "p")
    assert llm.scored == [("b", "c", "d")]  # a is owned: b, c from the first source; d, c from the second


def test_the_llms_order_leads_and_the_rest_follows_the_first_source():
    method = RerankMethod([Source("abc"), Source("dcf")], FakeLLM(liked="fd"), name="r", per_source=2)
    method.fit(TRAIN)
    assert _top(method, _cases("e", "test", 2), 6) == [["d", "a", "b", "c", "e", "f"]] * 2
    assert method.weight == 0.0 and method.info == {}


@pytest.mark.parametrize(("target", "expect_prior"), [("b", True), ("d", False)])
def test_the_fusion_weight_follows_whichever_side_is_right_on_validation(tmp_path, target, expect_prior):
    (tmp_path / ADAPTER_METADATA).write_text(json.dumps({"base_model": {"name": "x"}}))
    (tmp_path / "adapter_config.json").write_text("{}")  # the score cache is keyed by the adapter's digest
    prior = Source("bcd")
    method = RerankMethod([Source("abcd")], FakeLLM(liked="dcb", adapter=str(tmp_path)), name="r", per_source=4,
                          prior=prior, tune_users=3)
    method.fit(TRAIN, _cases(target, "valid"))
    assert (method.weight > 0) is expect_prior
    assert method.info["tuning_users"] == 3 and method.info["fused"] == max(method.info["by_weight"].values())
    assert method.info["prior_alone"] == (1.0 if target == "b" else 1 / np.log2(4))  # the prior ranks d third
    assert method.info["llm_alone"] == method.info["by_weight"]["0.0"] and "w * z(prior)" in method.info["rule"]
    assert _top(method, _cases(target, "test", 1), 1) == [[target]]
    saved = json.loads((tmp_path / ADAPTER_METADATA).read_text())
    assert saved["base_model"] == {"name": "x"} and saved["rerank"]["weight"] == method.weight


def test_a_prior_that_is_also_a_source_is_fitted_and_scored_once():
    shared = Source("ab")
    method = RerankMethod([shared], FakeLLM(liked="b"), name="r", prior=shared)
    method.fit(TRAIN, _cases("b", "valid"))
    assert shared.fits == 1
    method.weight, shared.scored = 1.0, 0
    method.score(_cases("b", "test", 2), "p")
    assert shared.scored == 1


def test_the_config_factory_shares_a_prior_with_its_source_and_gives_the_llm_no_generation_cache(tmp_path):
    from genrec.evaluation.config import MethodSpec
    from genrec.evaluation.methods import Resources, create

    resources = Resources(cache_dir=tmp_path, _embedder=object())  # never loaded: nothing is fitted here
    spec = MethodSpec("rerank", label="tuned-rerank", options={"sources": ["mostpop", "itemknn"], "prior": "itemknn",
                                                                "per_source": 7, "llm": {"dtype": "bfloat16"}})
    method = create(spec, "target", resources)
    assert [s.name for s in method.sources] == ["MostPop", "ItemKNN"] and method.prior is method.sources[1]
    assert method.per_source == 7 and method.history_scope == "target" and method.llm.llm_config.dtype == "bfloat16"
    assert method.llm.cache_path is None and method.cache_path.parent == tmp_path
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / ADAPTER_METADATA).write_text(json.dumps({"rerank": {"calibration": 0.5, "title_prior": "base"}}))
    for given, expected in (({}, "model"), ({"recommender": {"title_prior": "base"}}, "base")):
        tuned = create(MethodSpec("rerank", options={"llm": {"adapter": str(adapter)}, **given}), "cross", resources)
        # the row's settings, not what another row's tuning stored with the adapter
        assert (tuned.llm.config.title_prior, tuned.llm.config.calibration) == (expected, 0.0)
    with pytest.raises(GenrecError, match="bad options"):
        create(MethodSpec("rerank", options={"per_sauce": 7}), "cross", resources)


def test_scores_are_cached_per_case_and_candidate_list(tmp_path):
    first = FakeLLM(liked="c")
    method = RerankMethod([Source("abc")], first, name="r", per_source=2, cache_dir=tmp_path)
    method.fit(TRAIN)
    method.score(_cases("c", "test", 2), "p")
    assert len(first.scored) == 2
    with method.cache_path.open("a") as fh:
        fh.write('{"key": "cut sh')  # an interrupted run's last line
    again = FakeLLM(liked="c")
    reloaded = RerankMethod([Source("abc")], again, name="r", per_source=2, cache_dir=tmp_path)
    reloaded.fit(TRAIN)
    reloaded.score(_cases("c", "test", 2), "p")
    assert again.scored == [], "answered from the cache"
    wider = RerankMethod([Source("abc")], again, name="r", per_source=3, cache_dir=tmp_path)
    wider.fit(TRAIN)
    wider.score(_cases("c", "test", 2), "p")
    assert again.scored == [("a", "b", "c")] * 2, "other candidates are scored anew"
    last = FakeLLM(liked="c")
    for per_source, best in ((3, "c"), (2, "a")):  # methods with other candidates alternate: both lists are kept
        reread = RerankMethod([Source("abc")], last, name="r", per_source=per_source, cache_dir=tmp_path)
        reread.fit(TRAIN)
        assert _top(reread, _cases("c", "test", 2), 1) == [[best]] * 2
    assert last.scored == [], "records appended after the cut line are intact"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="candidate source"):
        RerankMethod([], FakeLLM(liked=""), name="r")
    with pytest.raises(ValueError, match="per_source"):
        RerankMethod([Source("a")], FakeLLM(liked=""), name="r", per_source=0)
    with pytest.raises(ValueError, match="validation cases"):
        RerankMethod([Source("a")], FakeLLM(liked=""), name="r", prior=Source("a")).fit(TRAIN, [])
    with pytest.raises(ValueError, match="validation cases"):
        RerankMethod([Source("a")], FakeLLM(liked=""), name="r", calibrations=(0.0, 1.0)).fit(TRAIN, [])
    with pytest.raises(ValueError, match="calibrations must lie"):
        RerankMethod([Source("a")], FakeLLM(liked=""), name="r", calibrations=(1.5,))
    calibrated = FakeLLM(liked="")
    calibrated.config.calibration = 0.5
    with pytest.raises(ValueError, match="raw ones"):
        RerankMethod([Source("a")], calibrated, name="r")


def test_scored_decoding_reads_the_evaluations_calibration_before_the_trainings(tmp_path):
    """An adapter's calibration: the evaluation's (key ``rerank``) when it has run, else the one training's
    re-ranking validation chose for the kept adapter (``metrics.adapter``), else the default."""
    from genrec.recommender import RecommenderConfig

    metadata = {"recommender": {"n_generate": 3}, "metrics": {"adapter": {"NDCG@10": 0.1, "calibration": 0.25}}}
    (tmp_path / ADAPTER_METADATA).write_text(json.dumps(metadata))
    assert RecommenderConfig.for_adapter(str(tmp_path)).calibration == 0.25
    (tmp_path / ADAPTER_METADATA).write_text(json.dumps({**metadata, "rerank": {"calibration": 0.75}}))
    assert RecommenderConfig.for_adapter(str(tmp_path)).calibration == 0.75
    (tmp_path / ADAPTER_METADATA).write_text(json.dumps({"metrics": {"adapter": {"NDCG@10": 0.1}}}))
    assert RecommenderConfig.for_adapter(str(tmp_path)).calibration == RecommenderConfig().calibration


def test_the_calibration_takes_out_the_title_prior_when_validation_asks_for_it(tmp_path):
    """Raw likelihoods put the famous item ``a`` first for everyone; less its title prior, ``c`` leads.
    Validation targets ``c``: a calibration above 0 is chosen, stored with the adapter (and read back as the
    scored-decoding setting) and applied to test cases."""
    from genrec.recommender import RecommenderConfig

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / ADAPTER_METADATA).write_text(json.dumps({"recommender": {"n_generate": 3}}))
    (adapter / "adapter_config.json").write_text("{}")
    llm = FakeLLM(liked="acb", adapter=str(adapter), famous={"a": 4.0, "b": -0.5})
    method = RerankMethod([Source("abc")], llm, name="r", per_source=3, calibrations=(0.0, 0.5, 1.0), tune_users=4,
                          cache_dir=tmp_path / "cache")
    method.fit(TRAIN, _cases("c", "valid"))
    assert method.calibration == 0.5 and method.weight == 0.0  # 0.5 and 1.0 tie: the smaller
    assert method.info["by_calibration"] == {"0.0": 1 / np.log2(3), "0.5": 1.0, "1.0": 1.0}
    assert method.info["llm_alone"] == 1.0
    assert "a * title prior" in method.info["rule"] and "prior" not in method.info
    assert _top(method, _cases("x", "test", 1), 3) == [["c", "b", "a"]]  # 9 - 0, 8 + 0.25, 10 - 2
    assert RecommenderConfig.for_adapter(str(adapter)).calibration == 0.5
    assert RecommenderConfig.for_adapter(str(adapter), calibration=0.25).calibration == 0.25
    assert sorted(llm.priors_asked) == ["a", "b", "c"], "one title prior per item, asked once"
    again = FakeLLM(liked="acb", adapter=str(adapter), famous={"a": 4.0})
    reloaded = RerankMethod([Source("abc")], again, name="r", per_source=3, calibrations=(1.0,),
                            cache_dir=tmp_path / "cache")
    reloaded.fit(TRAIN)
    assert reloaded.calibration == 1.0 and reloaded.info == {}
    assert _top(reloaded, _cases("x", "test", 1), 3) == [["c", "b", "a"]]  # 9 - 0, 8 + 0.5, 10 - 4
    assert again.priors_asked == [] and again.scored == [], "title priors and scores come from the cache files"


def test_a_tuned_model_calibrated_by_its_base_models_priors_shares_them_with_the_zero_shot_model(tmp_path):
    """``title_prior: base``: the tuned model's scores are its own, its title priors the base model's. They are
    cached where the zero-shot model (same prompts) keeps its priors, and the choice is stored with the adapter, so
    scored decoding takes the same priors out."""
    from genrec.recommender import RecommenderConfig

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / ADAPTER_METADATA).write_text("{}")
    (adapter / "adapter_config.json").write_text("{}")

    def method(llm: FakeLLM) -> RerankMethod:
        return RerankMethod([Source("abc")], llm, name="r", per_source=3, calibrations=(0.0, 1.0), tune_users=4,
                            cache_dir=tmp_path / "cache")

    zero_shot, own, base = (method(FakeLLM(liked="acb", adapter=a, title_prior=p))
                            for a, p in ((None, "model"), (str(adapter), "model"), (str(adapter), "base")))
    assert base.priors_path == zero_shot.priors_path != own.priors_path
    assert base.cache_path == own.cache_path != zero_shot.cache_path, "the scores are the tuned model's"
    zero_shot.llm.famous = {"a": 4.0}
    zero_shot.fit(TRAIN, _cases("c", "valid"))
    base.fit(TRAIN, _cases("c", "valid"))
    assert base.llm.priors_asked == [], "the zero-shot model's priors, read from its cache file"
    assert base.calibration == 1.0 and base.info["title_prior"] == "base"
    stored = RecommenderConfig.for_adapter(str(adapter))
    assert (stored.calibration, stored.title_prior) == (1.0, "base")
    with pytest.raises(GenrecError, match="title_prior must be"):
        RecommenderConfig(title_prior="tuned")


def test_a_target_only_history_row_leaves_the_adapters_setting_alone(tmp_path):
    """The library reads every platform's history: only a cross-platform row's tuning is stored with the adapter."""
    (tmp_path / ADAPTER_METADATA).write_text(json.dumps({"rerank": {"calibration": 0.25}}))
    (tmp_path / "adapter_config.json").write_text("{}")
    source, llm = Source("abc"), FakeLLM(liked="acb", adapter=str(tmp_path), famous={"a": 4.0})
    source.history_scope = llm.history_scope = "target"
    method = RerankMethod([source], llm, name="r", per_source=3, calibrations=(0.0, 1.0), tune_users=4)
    method.fit(TRAIN, _cases("c", "valid"))
    assert method.calibration == 1.0 and method.history_scope == "target"
    assert json.loads((tmp_path / ADAPTER_METADATA).read_text()) == {"rerank": {"calibration": 0.25}}


def test_an_infinite_weight_is_the_priors_order_with_the_llm_breaking_its_ties(tmp_path):
    """``w = inf``: the prior ranks (``b``, then ``c``), the LLM orders what the prior ties (``d`` before ``a``);
    chosen when validation favours the prior, and written as "inf" (JSON has no infinity)."""
    (tmp_path / ADAPTER_METADATA).write_text("{}")
    (tmp_path / "adapter_config.json").write_text("{}")
    prior = Source("bc")
    method = RerankMethod([Source("abcd")], FakeLLM(liked="d", adapter=str(tmp_path)), name="r", per_source=4,
                          prior=prior, weights=(0.0, math.inf), tune_users=4)
    method.fit(TRAIN, _cases("b", "valid"))
    assert method.weight == math.inf and method.info["weight"] == "inf" and method.info["by_weight"]["inf"] == 1.0
    assert _top(method, _cases("x", "test", 1), 4) == [["b", "c", "d", "a"]]
    assert json.loads((tmp_path / ADAPTER_METADATA).read_text())["rerank"]["weight"] == "inf"


def test_a_fixed_weight_without_zero_still_records_the_llm_alone(tmp_path):
    """``weights: [inf]`` (a grid without 0) fixes the weight; the LLM alone is still recorded (the calibration grid
    runs at w = 0)."""
    method = RerankMethod([Source("abcd")], FakeLLM(liked="d"), name="r", per_source=4, prior=Source("bc"),
                          weights=(math.inf,), tune_users=4)
    method.fit(TRAIN, _cases("d", "valid"))
    # the prior's order puts d third (b, c, then d before a by the LLM): NDCG@10 1 / log2(4); the LLM ranks d first
    assert method.weight == math.inf and method.info["by_weight"] == {"inf": 0.5}
    assert method.info["llm_alone"] == 1.0
