"""Ranking metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genrec.evaluation.metrics import (
    average_popularity,
    bootstrap,
    case_metrics,
    catalog_coverage,
    generation_quality,
    popularity_percentiles,
    rank_of_target,
    ranks_for_cases,
    sample_negatives,
    summarize,
    summarize_by,
    top_k,
    top_k_for_cases,
)
from genrec.pipeline.sources import popularity_counts
from genrec.pipeline.types import EvalCase, Interaction, TrainData


def case(target: str, history: list[str], platform: str = "p", user: str = "u") -> EvalCase:
    events = tuple(Interaction(platform, item, float(t)) for t, item in enumerate(history))
    return EvalCase(user_id=user, platform=platform, target=target, history=events)


# ----------------------------------------------------------------------------------------------- rank_of_target


def test_rank_counts_strictly_better_items() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.7])
    assert rank_of_target(scores, 1) == 1
    assert rank_of_target(scores, 3) == 2
    assert rank_of_target(scores, 0) == 4


def test_excluded_items_do_not_count_and_an_excluded_target_is_unranked() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.7])
    assert rank_of_target(scores, 2, excluded_indices=[1, 3]) == 1
    assert rank_of_target(scores, 1, excluded_indices=[1]) == math.inf


@pytest.mark.parametrize(("ties", "expected"), [("pessimistic", 4.0), ("optimistic", 2.0), ("mean", 3.0)])
def test_tie_rules(ties: str, expected: float) -> None:
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.1])  # target 2 ties with items 1 and 3
    assert rank_of_target(scores, 2, ties=ties) == expected


def test_constant_scorer_gets_the_worst_rank_by_default() -> None:
    assert rank_of_target(np.zeros(100), 0) == 100
    assert rank_of_target(np.zeros(100), 0, excluded_indices=[5, 6]) == 98


def test_nan_scores_rank_last() -> None:
    scores = np.array([np.nan, 0.2, 0.1])
    assert rank_of_target(scores, 2) == 2
    assert rank_of_target(scores, 0) == 3


def test_unknown_tie_rule_is_rejected() -> None:
    with pytest.raises(ValueError):
        rank_of_target(np.zeros(3), 0, ties="random")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------ metrics


def test_case_metrics_by_hand() -> None:
    values = case_metrics([1, 3, 12, None], ks=(1, 5, 10, 20))
    np.testing.assert_allclose(values["HR@1"], [1, 0, 0, 0])
    np.testing.assert_allclose(values["HR@5"], [1, 1, 0, 0])
    np.testing.assert_allclose(values["HR@10"], [1, 1, 0, 0])
    np.testing.assert_allclose(values["HR@20"], [1, 1, 1, 0])
    np.testing.assert_allclose(values["NDCG@1"], [1, 0, 0, 0])
    np.testing.assert_allclose(values["NDCG@5"], [1, 0.5, 0, 0])  # 1/log2(3+1) = 0.5
    np.testing.assert_allclose(values["NDCG@20"], [1, 0.5, 1 / math.log2(13), 0])
    np.testing.assert_allclose(values["MRR"], [1, 1 / 3, 1 / 12, 0])  # MRR is not cut at any K


def test_ranks_below_one_are_rejected() -> None:
    with pytest.raises(ValueError):
        case_metrics([0])


def test_summarize_means_and_deterministic_intervals() -> None:
    rng = np.random.default_rng(1)
    ranks = rng.integers(1, 50, size=300).astype(float)
    first = summarize(ranks, ks=(10,), n_boot=500, seed=7)
    again = summarize(ranks, ks=(10,), n_boot=500, seed=7)
    assert first == again
    hr = first["HR@10"]
    assert hr.mean == pytest.approx(np.mean(ranks <= 10))
    assert hr.low < hr.mean < hr.high
    assert hr.n == 300
    assert first["MRR"].mean == pytest.approx(np.mean(1 / ranks))
    assert summarize(ranks, ks=(10,), n_boot=500, seed=8)["MRR"] != first["MRR"]


def test_bootstrap_interval_of_a_constant_is_a_point() -> None:
    estimate = bootstrap({"x": np.full(10, 0.25)}, n_boot=50)["x"]
    assert (estimate.mean, estimate.low, estimate.high) == (0.25, 0.25, 0.25)


def test_bootstrap_skips_missing_values() -> None:
    estimate = bootstrap({"x": np.array([1.0, np.nan, 3.0])}, n_boot=200)["x"]
    assert estimate.mean == 2.0 and estimate.n == 2
    assert 1.0 <= estimate.low <= estimate.high <= 3.0


def test_summarize_by_platform() -> None:
    out = summarize_by([1, 2, 1, None], ["a", "a", "b", "b"], ks=(1,), n_boot=50)
    assert set(out) == {"all", "a", "b"}
    assert out["all"]["HR@1"].mean == 0.5
    assert out["a"]["HR@1"].mean == 0.5
    assert out["b"]["MRR"].mean == 0.5
    assert out["a"]["MRR"].mean == pytest.approx(0.75)


# ------------------------------------------------------------------------------------------ cases and sampling


def test_ranks_for_cases_excludes_the_target_platforms_history() -> None:
    catalog = ["a", "b", "c", "d"]
    scores = np.array([[0.9, 0.8, 0.1, 0.5], [0.9, 0.8, 0.1, 0.5]])
    cases = [case("d", ["a", "b"]), case("a", ["a"])]
    ranks = ranks_for_cases(scores, cases, catalog)
    assert ranks[0] == 1  # a and b are history, so only c competes
    assert ranks[1] == math.inf  # the target is in the history: a miss


def test_history_on_another_platform_is_not_excluded() -> None:
    other = Interaction("q", "a", 0.0)
    c = EvalCase(user_id="u", platform="p", target="b", history=(other,))
    assert ranks_for_cases(np.array([[0.9, 0.1]]), [c], ["a", "b"])[0] == 2


def test_target_outside_the_catalog_is_unranked() -> None:
    assert ranks_for_cases(np.zeros((1, 2)), [case("zz", [])], ["a", "b"])[0] == math.inf


def test_score_shape_is_checked() -> None:
    with pytest.raises(ValueError):
        ranks_for_cases(np.zeros((1, 3)), [case("a", [])], ["a", "b"])


def test_sample_negatives_avoid_target_and_history() -> None:
    rng = np.random.default_rng(0)
    negatives = sample_negatives(20, 3, [0, 1, 2], 10, rng)
    assert len(negatives) == len(set(negatives.tolist())) == 10
    assert not {0, 1, 2, 3} & set(negatives.tolist())
    assert len(sample_negatives(5, 0, [1], 99, rng)) == 3  # only 3 candidates remain


def test_sampled_ranking_is_seeded_and_order_free() -> None:
    catalog = [str(i) for i in range(200)]
    scores = np.tile(np.linspace(1, 0, 200), (2, 1))  # item 0 best, item 199 worst
    cases = [case("100", ["0", "1"], user="x"), case("50", [], user="y")]
    ranks = ranks_for_cases(scores, cases, catalog, num_negatives=99, seed=3)
    again = ranks_for_cases(scores[::-1], cases[::-1], catalog, num_negatives=99, seed=3)[::-1]
    np.testing.assert_array_equal(ranks, again)
    assert 1 <= ranks.min() and ranks.max() <= 100
    assert ranks[0] > 30 and ranks[1] > 10  # a middling item among 99 uniform negatives is far from the top
    other = ranks_for_cases(scores, cases, catalog, num_negatives=99, seed=4)
    assert not np.array_equal(ranks, other)


def test_sampled_ranking_with_the_target_in_history_is_a_miss() -> None:
    ranks = ranks_for_cases(np.zeros((1, 3)), [case("a", ["a"])], ["a", "b", "c"], num_negatives=1)
    assert ranks[0] == math.inf


# ----------------------------------------------------------------------------------------------- beyond accuracy


def test_top_k_skips_excluded_and_breaks_ties_by_index() -> None:
    scores = np.array([0.5, 0.9, 0.5, 0.7, 0.1])
    np.testing.assert_array_equal(top_k(scores, 3), [1, 3, 0])
    np.testing.assert_array_equal(top_k(scores, 3, excluded_indices=[1]), [3, 0, 2])
    np.testing.assert_array_equal(top_k(scores, 10, excluded_indices=[0, 1, 2]), [3, 4])


def test_top_k_for_cases_excludes_history() -> None:
    scores = np.array([[0.9, 0.8, 0.1]])
    np.testing.assert_array_equal(top_k_for_cases(scores, [case("c", ["a"])], ["a", "b", "c"], 2), [[1, 2]])


def test_catalog_coverage() -> None:
    assert catalog_coverage([[0, 1], [1, 2]], 10) == pytest.approx(0.3)
    assert catalog_coverage(np.array([[4, 4]]), 4) == pytest.approx(0.25)


def test_popularity_percentiles_and_average_popularity() -> None:
    counts = np.array([10, 0, 5, 5])
    np.testing.assert_allclose(popularity_percentiles(counts), [1.0, 0.0, 0.5, 0.5])
    stats = average_popularity([[0, 2], [0, 1]], counts)
    assert stats.mean_count == pytest.approx(6.25)
    assert stats.mean_percentile == pytest.approx((1 + 0.5 + 1 + 0) / 4)


def test_popularity_counts_distinct_users_per_platform() -> None:
    train = TrainData(
        sequences={
            "u1": [Interaction("p", "a", 0), Interaction("p", "a", 1), Interaction("q", "a", 2)],
            "u2": [Interaction("p", "b", 0), Interaction("p", "a", 1), Interaction("p", "zz", 2)],
        },
        catalogs={"p": ["a", "b", "c"], "q": ["a"]},
    )
    np.testing.assert_array_equal(popularity_counts(train, "p"), [2, 1, 0])
    np.testing.assert_array_equal(popularity_counts(train, "q"), [1])


def test_generation_quality() -> None:
    out = generation_quality([1.0, 0.5, 0.0], [0.8, 0.6, None], n_boot=100)
    assert out["validity_rate"].mean == pytest.approx(0.5)
    assert out["grounding_similarity"].mean == pytest.approx(0.7)
    assert out["grounding_similarity"].n == 2
