"""Classic baselines on tiny hand-made data where the right answer is obvious."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genrec.pipeline.sources import (
    CandidateSource,
    ContentOnly,
    ItemKNN,
    ItemVocabulary,
    Method,
    MostPop,
    SASRec,
    rank_cases,
)
from genrec.pipeline.sources.sasrec import train_parts, windows
from genrec.pipeline.types import EvalCase, Interaction, TrainData, scoped_history


def events(*items: str) -> list[Interaction]:
    """``"p:a"`` is item ``a`` on platform ``p``; timestamps are positions."""
    return [Interaction(item.split(":")[0], item.split(":")[1], float(t)) for t, item in enumerate(items)]


def make_case(target: str, *history: str, user: str = "t") -> EvalCase:
    platform, item = target.split(":")
    return EvalCase(user_id=user, platform=platform, target=item, history=tuple(events(*history)))


CATALOGS = {"p": ["a", "b", "c", "d"], "q": ["x", "y", "z"]}


def test_every_baseline_is_a_method() -> None:
    for method in (MostPop(), ItemKNN(), SASRec(), ContentOnly(encoder=BagOfWords())):
        assert isinstance(method, Method)


def test_scoped_history_and_vocabulary() -> None:
    c = make_case("q:x", "p:a", "q:y", "p:b")
    assert [e.item_id for e in scoped_history(c, "cross")] == ["a", "y", "b"]
    assert [e.item_id for e in scoped_history(c, "target")] == ["y"]
    vocab = ItemVocabulary(CATALOGS, offset=1)
    assert vocab.size == 8 and vocab.block("q") == slice(5, 8)
    assert vocab.encode(events("q:x", "p:zz", "p:a")) == [5, 1]


# ------------------------------------------------------------------------------------------------------ MostPop


def test_mostpop_orders_by_distinct_users_and_ignores_history() -> None:
    train = TrainData(
        sequences={"1": events("p:a", "p:b", "p:b"), "2": events("p:b", "q:x"), "3": events("p:c", "p:b")},
        catalogs=CATALOGS,
    )
    method = MostPop()
    method.fit(train)
    scores = method.score([make_case("p:a"), make_case("p:a", "p:c")], "p")
    np.testing.assert_array_equal(scores, [[1, 3, 1, 0], [1, 3, 1, 0]])
    np.testing.assert_array_equal(method.score([make_case("q:x")], "q"), [[1, 0, 0]])


def test_ranking_excludes_history_items() -> None:
    train = TrainData(sequences={"1": events("p:a", "p:b"), "2": events("p:a", "p:c")}, catalogs=CATALOGS)
    method = MostPop()
    method.fit(train)
    cases = [make_case("p:b", "p:a"), make_case("p:a", "p:a"), make_case("q:x", "p:a")]
    ranks = rank_cases(method, cases, CATALOGS)
    assert ranks[0] == 2  # a (the most popular) is history; b ties with c, and ties count against the target
    assert ranks[1] == math.inf  # the target is already in the history
    assert ranks[2] == 3  # all of q ties at 0


# ------------------------------------------------------------------------------------------------------ ItemKNN


KNN_TRAIN = TrainData(
    sequences={
        "1": events("p:a", "q:x"),
        "2": events("p:a", "q:x", "p:c"),
        "3": events("p:b", "q:y"),
        "4": events("p:b", "q:y", "q:z"),
    },
    catalogs=CATALOGS,
)


def test_itemknn_follows_cross_platform_co_occurrence() -> None:
    method = ItemKNN()
    method.fit(KNN_TRAIN)
    x, y, z = method.score([make_case("q:z", "p:a")], "q")[0]
    assert x == pytest.approx(1.0)  # a and x share both of their users
    assert y == z == 0.0
    scores = method.score([make_case("q:x", "p:b")], "q")[0]
    assert scores[1] == pytest.approx(1.0) and scores[2] == pytest.approx(1 / math.sqrt(2))


def test_itemknn_sums_similarities_and_never_scores_an_item_as_its_own_neighbour() -> None:
    method = ItemKNN()
    method.fit(KNN_TRAIN)
    a, b, c, d = method.score([make_case("p:d", "q:x", "p:a")], "p")[0]
    # sim(x, a) = 2/2; sim(x, c) = sim(a, c) = 1/sqrt(2); a gets nothing from itself
    assert a == pytest.approx(1.0)
    assert c == pytest.approx(2 / math.sqrt(2))
    assert b == d == 0.0


def test_itemknn_target_scope_ignores_other_platforms() -> None:
    method = ItemKNN(history_scope="target")
    method.fit(KNN_TRAIN)
    np.testing.assert_array_equal(method.score([make_case("q:z", "p:a")], "q"), [[0, 0, 0]])
    assert method.score([make_case("q:z", "q:y")], "q")[0, 2] > 0


def test_itemknn_neighbourhood_and_shrinkage() -> None:
    full, pruned, shrunk = ItemKNN(), ItemKNN(neighbours=1), ItemKNN(shrink=1.0)
    for method in (full, pruned, shrunk):
        method.fit(KNN_TRAIN)
    history = make_case("p:d", "q:x", "p:a")
    # c's most similar items are a and x (tied at 1/sqrt(2)); with one neighbour only one of them contributes
    assert pruned.score([history], "p")[0, 2] == pytest.approx(1 / math.sqrt(2))
    assert full.score([history], "p")[0, 2] == pytest.approx(2 / math.sqrt(2))
    assert shrunk.score([history], "p")[0, 2] == pytest.approx(2 / (math.sqrt(2) + 1))
    with pytest.raises(ValueError):
        ItemKNN(neighbours=0)


# ------------------------------------------------------------------------------------------------------- SASRec


def cycle_train(users: int = 40) -> TrainData:
    """Sequences that walk the cycle a -> b -> c -> a from random starts; d and e never occur."""
    rng = np.random.default_rng(0)
    cycle = ["a", "b", "c"]
    sequences = {}
    for u in range(users):
        start, length = rng.integers(3), rng.integers(4, 10)
        sequences[str(u)] = events(*(f"p:{cycle[(start + i) % 3]}" for i in range(length)))
    return TrainData(sequences, {"p": ["a", "b", "c", "d", "e"]})


def small_sasrec(**overrides: object) -> SASRec:
    settings: dict = dict(
        max_len=8,
        hidden_size=32,
        inner_size=32,
        n_layers=1,
        n_heads=1,
        dropout=0.0,
        attn_dropout=0.0,
        lr=0.01,
        batch_size=32,
        max_epochs=15,
        window_stride=4,
        seed=2,
        progress=False,
    )
    settings.update(overrides)
    return SASRec(**settings)


def _random_sequences(seed: int, users: int) -> dict[str, list[Interaction]]:
    rng = np.random.default_rng(seed)
    out = {}
    for u in range(users):
        platforms = rng.choice(["p", "q"], size=int(rng.integers(1, 7)))
        out[f"u{seed}-{u}"] = [Interaction(p, str(rng.choice(CATALOGS[p])), float(t)) for t, p in enumerate(platforms)]
    return out


@pytest.mark.parametrize("make", [MostPop, ItemKNN, lambda: ItemKNN(shrink=1.0), lambda: ItemKNN(neighbours=2)])
def test_updates_with_new_interactions_equal_a_refit(make, tmp_path) -> None:
    """Folding new events in (old users' further items, new users) scores exactly as fitting on all of them, and
    the updated source saves and loads as it scores."""
    old = _random_sequences(0, 12)
    new = _random_sequences(1, 5) | {user: events("p:a", "q:z", "p:a") for user in list(old)[:4]}
    everything = {user: old.get(user, []) + new.get(user, []) for user in old | new}
    updated, refitted = make(), make()
    updated.fit(TrainData(old, CATALOGS))
    refitted.fit(TrainData(everything, CATALOGS))
    for user, added in new.items():
        assert updated.update(old.get(user, []), added)
    cases = [make_case("q:x", "p:a", "q:y"), make_case("p:a", "p:b"), make_case("q:z", "q:x", "p:d")]
    for platform in ("p", "q"):
        batch = [case for case in cases if case.platform == platform]
        np.testing.assert_allclose(updated.score(batch, platform), refitted.score(batch, platform), rtol=1e-6)
    updated.update([], events("p:b", "q:x"))  # pending until saved
    updated.save(tmp_path / "source")
    loaded = CandidateSource.load(tmp_path / "source")
    np.testing.assert_array_equal(loaded.score(cases[:1], "q"), updated.score(cases[:1], "q"))


def test_only_sources_that_keep_counts_update() -> None:
    assert not SASRec().update([], events("p:a"))


def test_sasrec_learns_a_cycle(one_thread: None) -> None:
    method = small_sasrec()
    method.fit(cycle_train())
    assert len(method.log) == 15 and method.log[-1]["loss"] < 0.1
    for history, expected in ((("p:c", "p:a"), 1), (("p:a", "p:b"), 2), (("p:b", "p:c", "p:a", "p:b"), 2)):
        scores = method.score([make_case("p:e", *history)], "p")[0]
        assert int(np.argmax(scores)) == expected
    np.testing.assert_array_equal(method.score([make_case("p:a")], "p"), [[0, 0, 0, 0, 0]])


def test_sasrec_stops_early_on_validation_ndcg(one_thread: None) -> None:
    valid = [make_case("p:c", "p:a", "p:b", user="v1"), make_case("p:a", "p:b", "p:c", user="v2")]
    method = small_sasrec(patience=2)
    method.fit(cycle_train(), valid)
    ndcg = [row["valid_ndcg10"] for row in method.log]
    assert len(ndcg) < 15  # a perfect score cannot improve, so patience runs out
    assert max(ndcg) == pytest.approx(1.0)
    assert ndcg[-3] == max(ndcg) and ndcg[-1] <= ndcg[-3]


def test_sasrec_is_seeded_and_restricts_scores_to_the_platform(one_thread: None) -> None:
    train = TrainData({"1": events("p:a", "q:x", "p:b", "q:y"), "2": events("q:x", "p:b", "q:z")}, CATALOGS)

    def fitted() -> SASRec:
        method = SASRec(max_len=4, hidden_size=8, inner_size=8, max_epochs=2, window_stride=2, progress=False, seed=5)
        method.fit(train)
        return method

    first, second = fitted(), fitted()
    c = make_case("q:z", "p:a", "q:x")
    assert first.score([c], "q").shape == (1, 3)
    np.testing.assert_array_equal(first.score([c], "q"), second.score([c], "q"))


def test_sasrec_target_scope_splits_train_sequences_per_platform() -> None:
    parts = train_parts(events("p:a", "q:x", "p:b"), "target")
    assert [[e.item_id for e in part] for part in parts] == [["a", "b"], ["x"]]
    assert [[e.item_id for e in part] for part in train_parts(events("p:a", "q:x"), "cross")] == [["a", "x"]]


def test_sasrec_windows_give_each_target_once() -> None:
    inputs, targets = windows([[1, 2, 3, 4, 5, 6, 7]], max_len=4, stride=2)
    assert inputs.tolist() == [[1, 2, 3, 4], [3, 4, 5, 6]]
    assert targets.tolist() == [[2, 3, 4, 5], [0, 0, 6, 7]]
    # non-overlapping (TextSeq's): the last item, which has no target, is an input only by default
    inputs, targets = windows([[1, 2, 3, 4, 5, 6]], max_len=4)
    assert inputs.tolist() == [[1, 2, 3, 4], [5, 6, 0, 0]] and targets.tolist() == [[2, 3, 4, 5], [6, 0, 0, 0]]
    inputs, targets = windows([[1, 2, 3, 4, 5, 6]], max_len=4, untargeted_input=False)
    assert inputs.tolist() == [[1, 2, 3, 4], [5, 0, 0, 0]] and targets.tolist() == [[2, 3, 4, 5], [6, 0, 0, 0]]


# -------------------------------------------------------------------------------------------------- ContentOnly


class BagOfWords:
    """A stand-in embedder: normalised word counts over a fixed vocabulary."""

    words = ["space", "ship", "love", "paris", "pasta", "sauce"]

    def encode(self, texts: list[str]) -> np.ndarray:
        rows = np.array([[text.split().count(w) for w in self.words] for text in texts], dtype=np.float32)
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)


CONTENT_TRAIN = TrainData(
    sequences={},
    catalogs={"movies": ["m1", "m2"], "books": ["b1", "b2", "b3"]},
    titles={
        ("movies", "m1"): "space ship",
        ("movies", "m2"): "love paris",
        ("books", "b1"): "pasta sauce",
        ("books", "b2"): "space space ship",
        ("books", "b3"): "love in paris",
    },
)


def test_content_only_uses_an_injected_embedder_across_platforms() -> None:
    method = ContentOnly(encoder=BagOfWords())
    method.fit(CONTENT_TRAIN)
    scores = method.score([make_case("books:b1", "movies:m1"), make_case("books:b1", "movies:m2")], "books")
    assert scores.shape == (2, 3)
    assert np.argmax(scores[0]) == 1 and np.argmax(scores[1]) == 2
    target_only = ContentOnly(encoder=BagOfWords(), history_scope="target")
    target_only.fit(CONTENT_TRAIN)
    np.testing.assert_array_equal(target_only.score([make_case("books:b1", "movies:m1")], "books"), [[0, 0, 0]])


@pytest.mark.integration
def test_content_only_with_the_default_embedder_picks_the_closest_title() -> None:
    train = TrainData(
        sequences={},
        catalogs={
            "movies": ["m1"],
            "books": ["b1", "b2", "b3"],
        },
        titles={
            ("movies", "m1"): "star wars a new hope",
            ("books", "b1"): "italian pasta cookbook",
            ("books", "b2"): "a history of space exploration and rockets",
            ("books", "b3"): "knitting patterns for winter",
        },
    )
    method = ContentOnly()
    method.fit(train)
    scores = method.score([make_case("books:b1", "movies:m1")], "books")[0]
    assert np.argmax(scores) == 1
