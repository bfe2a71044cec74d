"""TextSeqRec on tiny synthetic cross-platform data: what text lets it do that an ID-only model cannot."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest

from genrec.errors import GenrecError
from genrec.evaluation.metrics import case_metrics
from genrec.pipeline.sources import KINDS, CandidateSource, Method, SASRec, TextSeqRec, build, rank_cases
from genrec.pipeline.sources.textseq import target_last
from genrec.pipeline.types import EvalCase, Interaction, TrainData

TOPICS = 6


class HashedWords:
    """A stand-in sentence embedder: the mean of one fixed random vector per word (seeded by the word)."""

    dim = 32

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        rows = []
        for text in texts:
            words = text.split()
            vectors = [np.random.default_rng(zlib.crc32(w.encode())).standard_normal(self.dim) for w in words]
            rows.append(np.mean(vectors, axis=0) if vectors else np.zeros(self.dim))
        return np.asarray(rows, dtype=np.float32)


def topic_word(k: int) -> str:
    return f"topic{k}"


def world(seed: int = 0) -> tuple[TrainData, list[EvalCase], list[EvalCase]]:
    """Platform A ("arts"): 5 items per topic; platform B ("office"): 4 items per topic seen in training and 3 that
    no train sequence holds. A user follows one topic on both platforms: A items, then B items. Test (and
    validation) targets are B items never seen in training, predicted from the user's A history alone."""
    rng = random.Random(seed)
    arts = {k: [f"a{k}_{i}" for i in range(5)] for k in range(TOPICS)}
    seen = {k: [f"b{k}_{i}" for i in range(4)] for k in range(TOPICS)}
    unseen = {k: [f"b{k}_{i}" for i in range(4, 7)] for k in range(TOPICS)}
    catalogs = {"arts": [x for k in range(TOPICS) for x in arts[k]],
                "office": [x for k in range(TOPICS) for x in seen[k] + unseen[k]]}
    titles = {("arts", x): f"{topic_word(k)} paint {x}" for k in range(TOPICS) for x in arts[k]}
    titles |= {("office", x): f"{topic_word(k)} desk {x}" for k in range(TOPICS) for x in seen[k] + unseen[k]}

    def history(k: int) -> list[Interaction]:
        items = [("arts", x) for x in rng.sample(arts[k], 3)]
        return [Interaction(p, x, float(t)) for t, (p, x) in enumerate(items)]

    sequences = {}
    for u in range(240):
        k = u % TOPICS
        events = history(k)
        events += [Interaction("office", x, float(len(events) + t)) for t, x in enumerate(rng.sample(seen[k], 2))]
        sequences[f"u{u}"] = events
    train = TrainData(sequences=sequences, catalogs=catalogs, titles=titles)

    def cases(split: str, n: int) -> list[EvalCase]:
        out = []
        for u in range(n):
            k = u % TOPICS
            out.append(EvalCase(user_id=f"{split}{u}", platform="office", history=tuple(history(k)),
                                target=rng.choice(unseen[k]), split=split))
        return out

    return train, cases("valid", 30), cases("test", 60)


SMALL = {"max_len": 8, "hidden_size": 32, "n_layers": 1, "n_heads": 2, "inner_size": 64, "text_dim": 16,
         "n_experts": 2, "dropout": 0.1, "attn_dropout": 0.1, "batch_size": 128, "max_epochs": 40, "patience": 8,
         "lr": 3e-3, "time_budget_s": None, "progress": False}


@pytest.fixture(scope="module")
def fitted() -> tuple[TextSeqRec, TrainData, list[EvalCase]]:
    train, valid, test = world()
    model = TextSeqRec(encoder=HashedWords(), **SMALL)
    model.fit(train, valid)
    return model, train, test


def ndcg(method: Method, cases: list[EvalCase], catalogs: dict[str, list[str]]) -> float:
    return float(case_metrics(rank_cases(method, cases, catalogs), ks=(10,))["NDCG@10"].mean())


def test_registered_and_built_with_the_shared_encoder() -> None:
    encoder = HashedWords()
    source = build("textseq", {"hidden_size": 16}, "target", encoder=encoder)
    assert KINDS["textseq"] is TextSeqRec and isinstance(source, TextSeqRec) and isinstance(source, Method)
    assert source.history_scope == "target" and source.encoder is encoder and source.hidden_size == 16


def test_learns_cross_platform_transfer_to_unseen_items_that_id_only_sasrec_cannot(fitted) -> None:
    model, train, test = fitted
    mine = ndcg(model, test, train.catalogs)
    sasrec = SASRec(max_len=8, hidden_size=32, n_layers=1, inner_size=64, max_epochs=40, patience=8, progress=False)
    sasrec.fit(train, world()[1])
    theirs = ndcg(sasrec, test, train.catalogs)
    # 42 office items, 7 of the user's topic of which 3 are the unseen candidates: chance NDCG@10 is about 0.1
    assert mine > 0.35, model.log
    assert mine > theirs + 0.2, (mine, theirs)
    assert model.info["valid_ndcg10"] > 0.3 and model.info["items_with_id"] == 5 * TOPICS + 4 * TOPICS


def test_save_load_round_trip_gives_identical_scores(fitted, tmp_path) -> None:
    model, train, test = fitted
    model.save(tmp_path / "textseq")
    loaded = CandidateSource.load(tmp_path / "textseq", encoder=HashedWords())
    assert isinstance(loaded, TextSeqRec) and loaded.options() == model.options()
    assert np.array_equal(loaded.score(test[:10], "office"), model.score(test[:10], "office"))
    assert loaded.candidates(test[0], 5) == model.candidates(test[0], 5)


def test_fitting_is_seeded() -> None:
    train, valid, test = world()
    options = {**SMALL, "max_epochs": 2}
    a, b = TextSeqRec(encoder=HashedWords(), **options), TextSeqRec(encoder=HashedWords(), **options)
    a.fit(train, valid)
    b.fit(train, valid)
    assert np.array_equal(a.score(test[:5], "office"), b.score(test[:5], "office"))


def test_a_platform_added_after_fitting_is_scored_from_its_text_alone(fitted, tmp_path) -> None:
    model, _, test = fitted
    with pytest.raises(GenrecError, match="without platform 'garden'"):
        model.score(test[:1], "garden")
    items = [f"g{k}_{i}" for k in range(TOPICS) for i in range(3)]
    titles = {("garden", f"g{k}_{i}"): f"{topic_word(k)} seeds g{k}_{i}" for k in range(TOPICS) for i in range(3)}
    model.add_platform("garden", items, titles)
    cases = [EvalCase(user_id=c.user_id, platform="garden", history=c.history, target=f"g{i % TOPICS}_0")
             for i, c in enumerate(test)]
    scores = model.score(cases, "garden")
    assert scores.shape == (len(cases), len(items))
    hits = [top[0][0].split("_")[0] == f"g{i % TOPICS}" for i, top in
            enumerate(model.candidates(c, 3) for c in cases)]
    assert np.mean(hits) > 0.8  # the best garden item is of the user's topic
    model.save(tmp_path / "garden")
    loaded = CandidateSource.load(tmp_path / "garden")
    assert np.array_equal(loaded.score(cases[:4], "garden"), scores[:4])
    with pytest.raises(GenrecError, match="already known"):
        model.add_platform("garden", items, titles)


def test_bad_input_gives_clear_errors(fitted) -> None:
    model, train, test = fitted
    with pytest.raises(GenrecError, match="have no text"):
        model.add_platform("shop", ["s1", "s2"], {("shop", "s1"): "a lamp"})
    with pytest.raises(GenrecError, match="empty catalog"):
        model.add_platform("shop", [], {})
    untitled = TrainData(sequences=train.sequences, catalogs=train.catalogs,
                         titles={k: v for k, v in train.titles.items() if k != ("arts", "a0_0")})
    with pytest.raises(GenrecError, match=r"1 item\(s\) of platform 'arts' have no text.*'a0_0'"):
        TextSeqRec(encoder=HashedWords(), **SMALL).fit(untitled)
    with pytest.raises(GenrecError, match="at least one train sequence"):
        TextSeqRec(encoder=HashedWords(), **SMALL).fit(TrainData(sequences={}, catalogs=train.catalogs,
                                                                 titles=train.titles))
    with pytest.raises(RuntimeError, match="fit"):
        TextSeqRec(encoder=HashedWords()).score(test[:1], "office")
    with pytest.raises(GenrecError, match="history_order must be one of time, target_last"):
        TextSeqRec(history_order="newest")


def test_an_empty_usable_history_is_an_error_asked_directly_and_no_preference_in_a_batch(fitted) -> None:
    model, train, test = fitted
    empty = EvalCase(user_id="e", platform="office", history=(), target="b0_4")
    with pytest.raises(GenrecError, match="TextSeq cannot rank 'office' items for user 'e': the history is empty"):
        model.candidates(empty, 2)
    unknown = EvalCase(user_id="x", platform="office", history=(Interaction("arts", "nope", 0.0),), target="b0_4")
    with pytest.raises(GenrecError, match="user 'x': none of the history's 1 item.* fitted on \\(arts, office\\)"):
        model.candidates(unknown, 2)
    # the batch path (the evaluation, a pipeline's other sources) still answers: no preference, equal scores
    assert np.all(model.score([empty, unknown, test[0]], "office")[:2] == 0.0)
    assert model.no_preference(test[0]) is None and model.candidates(test[0], 2)


def test_target_scope_reads_only_the_target_platform(fitted) -> None:
    train, valid, test = world()
    model = TextSeqRec(encoder=HashedWords(), history_scope="target", **{**SMALL, "max_epochs": 3})
    model.fit(train, valid)
    # the test users have no office history: with target-only history there is nothing to go on
    assert np.all(model.score(test[:3], "office") == 0.0)
    with pytest.raises(GenrecError, match="user 'test0': the history has no 'office' item.*history_scope 'target'"):
        model.candidates(test[0], 3)


def test_target_last_order_puts_the_other_platforms_first_and_trains_each_target_once() -> None:
    train, valid, test = world()
    model = TextSeqRec(encoder=HashedWords(), history_order="target_last", **SMALL)
    history = (Interaction("office", "b0_0", 0.0), Interaction("arts", "a0_0", 1.0),
               Interaction("office", "b0_1", 2.0), Interaction("arts", "a0_1", 3.0))
    assert [x.item_id for x in target_last(history, "office")] == ["a0_0", "a0_1", "b0_0", "b0_1"]
    model.fit(train, valid)
    vocab = model._vocab
    parts, marks = model._train_sequences([list(history)], vocab)
    # one sequence per platform the user has, the other platform's items first; only that platform's targets train
    assert parts == [[vocab.get(history[i]) for i in (1, 3, 0, 2)], [vocab.get(history[i]) for i in (0, 2, 1, 3)]]
    assert marks == [[2, 2, 1, 1], [2, 2, 1, 1]]
    # every item of these two-platform users is trained once as a target (a platform's first item too: the other
    # platform's items are its context); in time order a user's first item never is
    trained = [sum(m[1:].count(1) for m in model._train_sequences([seq], vocab)[1]) for seq in train.sequences.values()]
    assert trained == [len(seq) for seq in train.sequences.values()]
    assert ndcg(model, test, train.catalogs) > 0.35, model.log
    assert model.options()["history_order"] == "target_last"
    assert TextSeqRec().options()["history_order"] == "time"  # the default is unchanged


def test_title_and_details_carry_what_the_title_alone_does_not() -> None:
    """The titles name no topic; the details (a category) do: only ``item_text="title+details"`` transfers."""
    train, valid, test = world()
    titles = {key: " ".join(w for w in title.split() if not w.startswith("topic"))
              for key, title in train.titles.items()}
    details = {key: title.split()[0] for key, title in train.titles.items()}  # "topic3"
    bare = TrainData(train.sequences, train.catalogs, titles, details)
    scores = {}
    for item_text in ("title", "title+details"):
        model = TextSeqRec(encoder=HashedWords(), item_text=item_text, **SMALL)
        model.fit(bare, valid)
        scores[item_text] = ndcg(model, test, train.catalogs)
    assert scores["title+details"] > 0.35 and scores["title+details"] > scores["title"] + 0.15, scores
    with pytest.raises(GenrecError, match="item_text must be one of title, title\\+details"):
        TextSeqRec(item_text="everything")


def test_item_details_join_category_attributes_and_description() -> None:
    import pandas as pd

    from genrec.evaluation.protocol import item_details

    frame = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["A", "B", "C"],
                          "category": ["pens", None, ""], "attributes": [None, "blue", None],
                          "description": ["fine tip", "", None]}, dtype="string")
    assert item_details(frame) == ["pens. fine tip", "blue", ""]
