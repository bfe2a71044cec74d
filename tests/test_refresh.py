"""Refresh, the registry and champion/challenger promotion: sources brought up to date from what they learned
equal a refit where they count, take on new catalog items, and a sequential model learns new behaviour from a
bounded fine-tune; versions, promotion and rollback; the whole loop on a real store and from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from test_sources import CATALOGS, _random_sequences, cycle_train, events, make_case, small_sasrec

from genrec.errors import GenrecError, NotFoundError
from genrec.pipeline import Pipeline, PipelineSpec
from genrec.pipeline.refresh import judge, split_new
from genrec.pipeline.registry import Registry
from genrec.pipeline.sources import CandidateSource, ItemKNN, MostPop
from genrec.pipeline.types import Interaction, TrainData

GROWN = {"p": ["a", "new1", "b", "c", "d"], "q": ["x", "y", "z", "new2"]}


@pytest.mark.parametrize("make", [MostPop, ItemKNN, lambda: ItemKNN(neighbours=2)])
def test_refresh_with_new_items_equals_a_refit(make, tmp_path) -> None:
    """New users and old users' further items, some of them items added to the catalogs since the fit: the
    refreshed source scores exactly as one fitted on everything, and saves as it scores."""
    old = _random_sequences(0, 12)
    new = _random_sequences(1, 5) | {user: events("p:new1", "q:z", "q:new2") for user in list(old)[:4]}
    everything = TrainData({user: old.get(user, []) + new.get(user, []) for user in old | new}, GROWN)
    refreshed, refitted = make(), make()
    refreshed.fit(TrainData(old, CATALOGS))
    refitted.fit(everything)
    assert refreshed.refresh(everything, new, steps=0) == "counts"
    cases = [make_case("q:new2", "p:new1", "q:y"), make_case("p:a", "p:new1"), make_case("q:z", "q:x", "p:d")]
    for platform in ("p", "q"):
        batch = [case for case in cases if case.platform == platform]
        np.testing.assert_allclose(refreshed.score(batch, platform), refitted.score(batch, platform), rtol=1e-6)
    refreshed.save(tmp_path / "source")
    loaded = CandidateSource.load(tmp_path / "source")
    np.testing.assert_array_equal(loaded.score(cases[:1], "q"), refreshed.score(cases[:1], "q"))


def test_sasrec_fine_tunes_from_its_weights_to_new_behaviour(one_thread: None) -> None:
    """Trained on the cycle a -> b -> c, then new users alternate d and a new item f: a bounded fine-tune teaches
    it (f ranks first after d) while the old transitions stay; known items keep their embeddings."""
    model = small_sasrec(max_epochs=10)
    train = cycle_train()
    model.fit(train)
    before = model._net.items.weight.detach().clone()
    grown = {"p": ["a", "b", "c", "d", "e", "f"]}
    new = {f"n{u}": events(*["p:d", "p:f"] * 4) for u in range(30)}
    everything = TrainData(train.sequences | new, grown)
    assert model.refresh(everything, new, steps=60) == "fine-tuned"
    after_d = model.score([make_case("p:a", "p:f", "p:d")], "p")[0]
    after_a = model.score([make_case("p:a", "p:b", "p:c", "p:a")], "p")[0]
    assert grown["p"][int(np.argmax(after_d))] == "f"
    assert grown["p"][int(np.argmax(after_a))] == "b"
    assert model._vocab.index[("p", "f")] == 6 and before.shape[0] == 6 and model._net.items.weight.shape[0] == 7
    np.testing.assert_array_equal(before[1:6].shape, model._net.items.weight[1:6].shape)


def test_a_source_that_cannot_grow_is_refitted() -> None:
    from genrec.pipeline.sources import ContentOnly

    class Words:
        def encode(self, texts: list[str]) -> np.ndarray:
            return np.array([[t.count("red"), t.count("blue"), 1.0] for t in texts], dtype=np.float32)

    titles = {("p", "a"): "red", ("p", "b"): "blue", ("p", "c"): "red red"}
    source = ContentOnly(encoder=Words())
    source.fit(TrainData({"u": events("p:a")}, {"p": ["a", "b", "c"]}, titles))
    grown = TrainData({"u": events("p:a", "p:d")}, {"p": ["a", "b", "c", "d"]}, titles | {("p", "d"): "blue"})
    assert source.refresh(grown, {"u": events("p:d")}, steps=0) == "embedded"
    scores = source.score([make_case("p:a", "p:b")], "p")[0]
    assert scores[3] == pytest.approx(scores[1])  # the new item was embedded like its twin

    class Frozen(MostPop):
        def grow(self, catalogs):  # a source that only learns by refitting
            return False

    frozen = Frozen()
    frozen.fit(TrainData({"u": events("p:a")}, {"p": ["a", "b"]}))
    assert frozen.refresh(TrainData({"u": events("p:a"), "v": events("p:c")}, {"p": ["a", "b", "c"]}),
                          {"v": events("p:c")}, steps=0) == "refit"
    assert frozen.catalogs == {"p": ["a", "b", "c"]}


def test_split_new_holds_out_each_picked_users_newest_event() -> None:
    seqs = {"u": [Interaction("p", i, float(t)) for t, i in enumerate("abcd")],
            "v": [Interaction("p", i, float(t)) for t, i in enumerate("ab")],
            "w": [Interaction("p", "c", 9.0)]}
    part = split_new(TrainData(seqs, {"p": list("abcd")}), since=1.5, carried=[["v", "p", "b", 1.0]],
                     holdout_users=10)
    # v's newest event was held out before (carried): it is learned now, never held out twice; w has no history
    assert [(c.user_id, c.target, [x.item_id for x in c.history]) for c in part.cases] == [("u", "d", ["a", "b", "c"])]
    assert {u: [x.item_id for x in s] for u, s in part.new.items()} == {"u": ["c"], "v": ["b"], "w": ["c"]}
    assert [x.item_id for x in part.train.sequences["u"]] == ["a", "b", "c"]
    assert [x.item_id for x in part.train.sequences["v"]] == ["a", "b"]


def test_split_new_holds_out_tuning_cases_from_other_users() -> None:
    """The tuning slice is the newest event of users apart from the judged ones; neither is learned, and both
    are recorded for the next refresh."""
    seqs = {f"u{n}": [Interaction("p", i, float(t)) for t, i in enumerate("abc")] for n in range(6)}
    part = split_new(TrainData(seqs, {"p": list("abc")}), since=0.5, holdout_users=2, tune_users=3, seed=1)
    judged, tuned = {c.user_id for c in part.cases}, {c.user_id for c in part.tune}
    assert len(judged) == 2 and len(tuned) == 3 and not judged & tuned
    for user in judged | tuned:
        assert [x.item_id for x in part.train.sequences[user]] == ["a", "b"] and part.new[user][-1].item_id == "b"
    assert sorted(row[0] for row in part.held_out()) == sorted(judged | tuned)
    assert all(row[2] == "c" for row in part.held_out())


def test_refresh_tunes_the_fusion_again_on_held_out_cases() -> None:
    """With tuning cases, a refresh searches the weights again over the refreshed sources (the same search a fit
    runs); without, the weights stay."""
    import copy

    spec = PipelineSpec.from_dict({"name": "two", "llm": None, "fusion": {"tune_users": 100},
                                   "sources": [{"kind": "popularity", "n": 4}, {"kind": "itemknn", "n": 4}]})
    old = _random_sequences(0, 40)
    first = split_new(TrainData(old, CATALOGS), since=-1.0, holdout_users=0, tune_users=40)
    pipeline = Pipeline(spec)
    pipeline.fit(TrainData(old, CATALOGS), first.tune)
    # new users all walk d -> a: item-kNN learns it, popularity barely moves
    new = {f"n{u}": [Interaction("p", item, 10.0 + t) for t, item in enumerate("dada")] for u in range(30)}
    part = split_new(TrainData(old | new, CATALOGS), since=5.0, holdout_users=0, tune_users=30, seed=2)
    kept, tuned = copy.deepcopy(pipeline), copy.deepcopy(pipeline)
    kept.refresh(part.train, part.new, steps=0)
    assert kept.fusion.weights == pipeline.fusion.weights
    tuned.refresh(part.train, part.new, steps=0, valid_cases=part.tune)
    assert tuned.fusion.report["tuning_cases"] == len(part.tune) == 30
    kept.tune_fusion(part.tune)
    assert tuned.fusion.weights == kept.fusion.weights and tuned.info["fusion"] == tuned.fusion.to_dict()
    assert tuned.fusion.report["tuned"] >= tuned.fusion.report["single_components"]["popularity"]


def _pipeline(n: int = 5) -> Pipeline:
    spec = PipelineSpec.from_dict({"name": "tiny", "sources": [{"kind": "popularity", "n": n}], "llm": None})
    pipeline = Pipeline(spec)
    pipeline.fit(TrainData(_random_sequences(0, 12), CATALOGS))
    return pipeline


def test_registry_versions_promotion_and_rollback(tmp_path) -> None:
    registry = Registry(tmp_path / "reg")
    assert registry.versions() == [] and registry.champion() is None
    first = registry.add(_pipeline(), origin="fit", window_end=10.0)
    with pytest.raises(GenrecError, match="no champion"):  # added, not yet promoted: nothing serves
        Pipeline.load(registry.root)
    registry.promote(first.name, reason="registered")
    second = registry.add(_pipeline(), origin="refresh", parent=first.name, window_end=20.0,
                          metrics={"champion_ndcg10": 0.1, "challenger_ndcg10": 0.2, "cases": 5})
    assert [v.name for v in registry.versions()] == ["v0001", "v0002"] and registry.champion().name == "v0001"
    stamp = registry.stamp()
    registry.promote(second.name)
    assert registry.stamp() != stamp
    assert Pipeline.load(registry.root).version == "v0002"  # a registry folder loads as its champion
    registry.rollback("v0001")
    assert registry.champion().name == "v0001"
    assert [e["event"] for e in registry.log()] == ["registered", "promoted", "rollback"]
    with pytest.raises(NotFoundError, match="v0009.*v0001, v0002"):
        registry.rollback("v0009")
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".")]  # nothing half-written left


def test_judge_pairs_the_two_versions_on_the_same_cases() -> None:
    champion, challenger = _pipeline(), _pipeline()
    cases = [make_case("p:a", "q:x", user=f"u{i}") for i in range(20)]
    same = judge(champion, challenger, cases)
    assert same.difference == 0 and same.promote and same.cases == 20
    champion.sources["popularity"]._counts["p"][:] = [9, 1, 2, 3]  # ranks a first
    challenger.sources["popularity"]._counts["p"][:] = [0, 5, 6, 9]  # ranks a last: worse on every case
    worse = judge(champion, challenger, cases)
    assert worse.champion == 1.0 and worse.high < 0 and not worse.promote


# ------------------------------------------------------------------------------------- a real store, the CLI

def _ingest(store, rows: list[dict]) -> None:
    from genrec.data.importers import events_from_records

    store.ingest(events_from_records(rows))


def _live_registry(tmp_path, name: str):
    """movielens-latest-small in a store and a registry whose v0001 is popularity + ItemKNN fitted on it, as the
    server tests serve: the store's path, the registry's, the first version, the users and the last two movies."""
    from genrec.data.store import Store
    from genrec.pipeline.fitting import fit_registered

    db, reg = tmp_path / "store.duckdb", tmp_path / "registry"
    spec = PipelineSpec.from_dict({"name": name, "dataset": "movielens-latest-small",
                                   "sources": [{"kind": "popularity", "n": 20}, {"kind": "itemknn", "n": 20}],
                                   "fusion": {"tune_users": 60}})
    with Store(db) as store:
        _, first = fit_registered(store, spec, Registry(reg))
        users = store.users("movies")
        movies = store.catalog("movies")["item_id"].tolist()[-2:]
    return db, reg, first, users, movies


@pytest.mark.integration
def test_refresh_registry_loop_on_a_real_store(tmp_path) -> None:
    """`genrec fit --registry`, new events, `genrec refresh` (counts updated, SASRec fine-tuned, judged,
    promoted), `genrec versions`, `genrec rollback`; a second refresh with nothing after the window writes
    nothing."""
    from genrec.data.store import Store
    from genrec.pipeline.fitting import fit_registered

    db, reg = tmp_path / "store.duckdb", tmp_path / "registry"
    spec = PipelineSpec.from_dict({
        "name": "ml-refresh", "dataset": "movielens-latest-small",
        "sources": [{"kind": "popularity", "n": 20}, {"kind": "itemknn", "n": 20},
                    {"kind": "sasrec", "n": 20, "options": {"max_epochs": 1, "hidden_size": 16, "inner_size": 16,
                                                             "n_layers": 1, "n_heads": 1, "progress": False}}],
        "fusion": {"tune_users": 60}})
    with Store(db) as store:
        pipeline, first = fit_registered(store, spec, Registry(reg))
        catalog = store.catalog("movies")["item_id"].tolist()
        # 40 users each watch the same three movies one after another, a week after the data window
        start = first.window_end + 7 * 86400
        rows = [{"user_id": user, "platform": "movies", "item_id": item, "timestamp": start + 60 * n + i}
                for i, user in enumerate(store.users("movies")[:40]) for n, item in enumerate(catalog[-3:])]
        _ingest(store, rows)
    run = [sys.executable, "-m", "genrec.cli"]
    out = subprocess.run([*run, "refresh", "--registry", str(reg), "--db", str(db), "--holdout-users", "30",
                          "--tune-users", "5", "--steps", "5", "--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["version"] == "v0002" and result["parent"] == "v0001"
    # every new event plus the fit's held-out ones at the end of a history: learned or judged
    assert result["new_events"] >= 120
    assert result["sources"] == {"popularity": "counts", "itemknn": "counts", "sasrec": "fine-tuned"}
    assert result["judgement"]["cases"] == 30 and result["promoted"] == (result["judgement"]["interval"][1] >= 0)
    registry = Registry(reg)
    version = registry.version("v0002")
    # judged on 30 users' newest events, the fusion tuned again on 5 others'
    assert len(version.holdout) == 35 and version.window_end == start + 60 * 2 + 39
    assert version.decision["tune_cases"] == 5 and version.decision["fusion"]["report"]["tuning_cases"] == 5
    with Store(db, read_only=True) as store:
        refreshed = Pipeline.load(reg / "v0002", store=store)
        gained = refreshed.sources["popularity"]._counts["movies"] - pipeline.sources["popularity"]._counts["movies"]
        # the three movies gained their new watchers (less the ones held out to judge on)
        assert gained[-3:].sum() >= 120 - 35 and gained[-3:].sum() <= 120
    out = subprocess.run([*run, "versions", "--registry", str(reg), "--json"], capture_output=True, text=True,
                         timeout=120)
    listing = json.loads(out.stdout)
    assert [v["name"] for v in listing["versions"]] == ["v0001", "v0002"]
    assert subprocess.run([*run, "rollback", "v0001", "--registry", str(reg)], timeout=120).returncode == 0
    assert registry.champion().name == "v0001"
    bad = subprocess.run([*run, "rollback", "v0042", "--registry", str(reg)], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "v0042" in bad.stderr
    registry.promote("v0002")
    again = subprocess.run([*run, "refresh", "--registry", str(reg), "--db", str(db), "--json"],
                           capture_output=True, text=True, timeout=600)
    assert json.loads(again.stdout) | {"new_events": 0} == {"version": None, "parent": None, "new_events": 0,
                                                             "sources": {}, "judgement": None, "promoted": False}


@pytest.mark.integration
def test_the_server_refreshes_and_swaps_versions_without_dropping_a_request(tmp_path) -> None:
    """`genrec serve --pipeline REGISTRY` serves the champion; posted events, then `POST /v1/admin/refresh`,
    promote a new version the server swaps to while a client keeps asking; a rollback swaps back."""
    import threading

    import httpx
    from servers import serving

    db, reg, first, users, movies = _live_registry(tmp_path, "ml-live")
    users = users[:60]
    keys = {"X-API-Key": "admin-key"}
    with serving(tmp_path, db, reg, "admin-key:admin,reader:read") as (url, log):

        def version() -> str:
            answer = httpx.post(f"{url}/v1/recommend", json={"user_id": users[0], "platform": "movies", "k": 5},
                                headers=keys, timeout=60)
            assert answer.status_code == 200, answer.text
            return answer.json()["version"]

        assert version() == "v0001"
        start = first.window_end + 86400
        events = [{"user_id": user, "platform": "movies", "item_id": movie, "timestamp": start + 60 * n + i}
                  for i, user in enumerate(users) for n, movie in enumerate(movies)]
        assert httpx.post(f"{url}/v1/events", json={"events": events}, headers=keys, timeout=60).status_code == 200
        seen, failures, stop = [], [], threading.Event()

        def client() -> None:
            while not stop.is_set():
                try:
                    seen.append(version())
                except AssertionError as exc:
                    failures.append(str(exc))

        asking = threading.Thread(target=client)
        asking.start()
        try:
            denied = httpx.post(f"{url}/v1/admin/refresh", json={}, headers={"X-API-Key": "reader"}, timeout=60)
            assert denied.status_code == 403
            bad = httpx.post(f"{url}/v1/admin/refresh", json={"steps": -1}, headers=keys, timeout=60)
            assert bad.status_code == 422 and "steps" in bad.text
            done = httpx.post(f"{url}/v1/admin/refresh", json={"holdout_users": 20}, headers=keys, timeout=300)
            assert done.status_code == 200, done.text
            result = done.json()
            assert result["version"] == "v0002" and result["judgement"]["cases"] == 20
            assert result["sources"] == {"popularity": "counts", "itemknn": "counts"}
            Registry(reg).promote("v0002")  # whatever the judgement said: the swap is what is tested here
            for _ in range(120):
                if seen and seen[-1] == "v0002":
                    break
                stop.wait(0.5)
            Registry(reg).rollback("v0001")
            for _ in range(120):
                if seen[-1] == "v0001" and "v0002" in seen:
                    break
                stop.wait(0.5)
        finally:
            stop.set()
            asking.join(timeout=120)
        assert not failures and "v0002" in seen and seen[-1] == "v0001"
        swapped = seen.index("v0002")
        assert set(seen[:swapped]) == {"v0001"}


@pytest.mark.integration
def test_a_swap_keeps_every_event_and_platform_the_served_version_learned(tmp_path) -> None:
    """A refresh snapshots the store; events posted afterwards (the served version counts them at once) and a
    platform onboarded in memory are not in the version it registers. When that version is promoted, the server
    swaps to it having learned them: its popularity and ItemKNN scores equal the served version's, nothing
    counted twice, and the in-memory platform stays rankable with its counts; a rollback swaps back the same."""

    import httpx
    from servers import serving

    from genrec.data.store import Store
    from genrec.pipeline.fitting import fit_registered

    db, reg = tmp_path / "store.duckdb", tmp_path / "registry"
    spec = PipelineSpec.from_dict({"name": "ml-swap", "dataset": "movielens-latest-small",
                                   "sources": [{"kind": "popularity", "n": 20}, {"kind": "itemknn", "n": 20}],
                                   "fusion": {"tune_users": 60}})
    with Store(db) as store:
        _, first = fit_registered(store, spec, Registry(reg))
        users = store.users("movies")
        watchers, asker = users[:60], users[100]
        catalog = store.catalog("movies")["item_id"].tolist()
        stored = store.events(["movies"])
    watched = set(stored["item_id"])
    movies = catalog[-2:]
    had = {movie: stored[stored["item_id"] == movie]["user_id"].nunique() for movie in movies}
    unseen = next(item for item in catalog if item not in watched and item not in movies)
    keys = {"X-API-Key": "admin-key"}

    def post_events(rows: list[dict]) -> None:
        answer = httpx.post(f"{url}/v1/events", json={"events": rows}, headers=keys, timeout=60)
        assert answer.status_code == 200, answer.text

    def ask(platform: str, candidates: list[str] | None = None) -> dict:
        answer = httpx.post(f"{url}/v1/recommend", headers=keys, timeout=60, json={
            "user_id": asker, "platform": platform, "k": 3, "candidates": candidates})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def scores() -> tuple[str, dict, dict]:
        movies_answer, garden = ask("movies", [unseen, *movies]), ask("garden")
        assert movies_answer["version"] == garden["version"]
        return (movies_answer["version"], {item["item_id"]: item["sources"] for item in movies_answer["items"]},
                {item["item_id"]: item["sources"] for item in garden["items"]})

    def swapped_to(name: str) -> tuple[str, dict, dict]:
        for _ in range(240):
            if ask("movies")["version"] == name:
                return scores()
            time.sleep(0.25)
        raise AssertionError(f"the server never swapped to {name}:\n{log.read_text()[-3000:]}")

    import time

    with serving(tmp_path, db, reg, "admin-key:admin", chat_llm=False) as (url, log):
        catalog_file = "sku,name\n" + "".join(f"s{i},Garden seed packet {i}\n" for i in range(6))
        added = httpx.post(f"{url}/v1/platforms", data={"name": "garden", "mapping": ["item_id=sku", "title=name"]},
                           files={"catalog": ("garden.csv", catalog_file.encode())}, headers=keys, timeout=300)
        assert added.status_code == 201 and added.json()["pipelines"] == ["ml-swap"], added.text
        start = first.window_end + 86400
        post_events([{"user_id": f"gardener-{n}", "platform": "garden", "item_id": "s4", "timestamp": start}
                     for n in range(3)])
        post_events([{"user_id": user, "platform": "movies", "item_id": movie, "timestamp": start + 60 * n + i}
                     for i, user in enumerate(watchers) for n, movie in enumerate(movies)])
        refreshed = httpx.post(f"{url}/v1/admin/refresh", json={"holdout_users": 20, "promote": False},
                               headers=keys, timeout=300)
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["version"] == "v0002" and refreshed.json()["champion"] == "v0001"
        # after the refresh's snapshot: five newcomers watch a movie nobody had, a watcher watches one again
        later = start + 86400
        post_events([{"user_id": f"newcomer-{n}", "platform": "movies", "item_id": unseen, "timestamp": later + n}
                     for n in range(5)] +
                    [{"user_id": watchers[0], "platform": "movies", "item_id": movies[0], "timestamp": later + 9}])
        version, served, garden = scores()
        assert version == "v0001" and served[unseen]["popularity"] == 5.0
        assert garden["s4"]["popularity"] == 3.0 and list(garden)[0] == "s4"

        Registry(reg).promote("v0002")  # the registry changes under the running server: it swaps at the next answer
        for name in ("v0002", "v0001"):
            version, after, garden_after = swapped_to(name)
            assert after[unseen]["popularity"] == 5.0  # posted after the snapshot: learned at the swap
            for movie in movies:  # 60 more watchers (the one who watched again counts once), held out or not
                assert after[movie]["popularity"] == served[movie]["popularity"] == had[movie] + 60
            for item in (unseen, *movies):
                assert after[item]["itemknn"] == pytest.approx(served[item]["itemknn"], rel=1e-5)
            assert garden_after == garden  # the in-memory platform is ranked, with its counts
            Registry(reg).rollback("v0001")


def test_a_refresh_schedule_is_a_positive_duration_and_needs_a_registry(tmp_path) -> None:
    from genrec.server.settings import ServerSettings, parse_duration

    assert [parse_duration(text) for text in ("90s", "30m", "6h", "1d", "2", 0.5, "1.5h")] == [
        90, 1800, 21600, 86400, 2, 0.5, 5400]
    for bad in ("", "5x", "-3m", "0s", "h", "1h30m"):
        with pytest.raises(GenrecError, match="--refresh-every: .*duration"):
            parse_duration(bad, "--refresh-every")
    registry = Registry(tmp_path / "registry")
    registry.promote(registry.add(_pipeline(), origin="fit", window_end=1.0).name)
    assert ServerSettings.load(refresh_every="45s", pipeline=registry.root).refresh_every == 45
    with pytest.raises(GenrecError, match="refresh_every.*5 parsecs"):
        ServerSettings.load(refresh_every="5 parsecs", pipeline=registry.root)
    for folder in (None, tmp_path / "registry" / "v0001"):  # no pipeline, a pipeline folder that is no registry
        with pytest.raises(GenrecError, match="scheduled refresh .*needs a registry"):
            ServerSettings.load(refresh_every="30m", pipeline=folder)
    cli = subprocess.run([sys.executable, "-m", "genrec.cli", "serve", "--refresh-every", "soon", "--pipeline",
                          str(registry.root)], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "--refresh-every: expected a duration like 90s, 30m, 6h or 1d" in cli.stderr


@pytest.mark.integration
def test_the_server_refreshes_on_a_schedule(tmp_path) -> None:
    """`genrec serve --pipeline REGISTRY` with a refresh every 2 s: ticks with nothing new write nothing, a tick
    that fails is recorded and the next one runs; once events are posted, a scheduled refresh registers and
    promotes a new version, the server answers with it, and GET /v1/admin/refresh tells when the last scheduled
    run was and what it did."""
    import time

    import httpx
    from servers import serving

    db, reg, first, users, movies = _live_registry(tmp_path, "ml-timer")
    users = users[:60]
    keys = {"X-API-Key": "admin-key"}

    def status(until, what: str) -> dict:
        for _ in range(480):
            answer = httpx.get(f"{url}/v1/admin/refresh", headers=keys, timeout=60)
            assert answer.status_code == 200, answer.text
            if until(answer.json()):
                return answer.json()
            time.sleep(0.25)
        raise AssertionError(f"never {what}: {answer.json()}\n{log.read_text()[-3000:]}")

    def version() -> str:
        answer = httpx.post(f"{url}/v1/recommend", json={"user_id": users[0], "platform": "movies", "k": 5},
                            headers=keys, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()["version"]

    with serving(tmp_path, db, reg, "admin-key:admin,reader:read", refresh_every="2s") as (url, log):
        assert httpx.get(f"{url}/v1/admin/refresh", headers={"X-API-Key": "reader"}, timeout=60).status_code == 403
        idle = status(lambda s: s["last_scheduled"] is not None, "refreshed on schedule")
        assert idle["every_s"] == 2 and idle["next_at"] and idle["champion"] == idle["serving"] == "v0001"
        assert idle["last_scheduled"]["status"] == "ok" and idle["last_scheduled"]["version"] is None  # nothing new
        assert idle["last_scheduled"]["started_at"] <= idle["last_scheduled"]["finished_at"]
        assert version() == "v0001"
        # a refresh that fails (an unreadable registry file) is recorded and logged; the next tick tries again
        state = (reg / "registry.json").read_text()
        (reg / "registry.json").write_text("{not json")
        failed = status(lambda s: (s["last_scheduled"] or {}).get("status") == "failed", "failed")
        assert "not a registry file" in failed["last_scheduled"]["error"]
        (reg / "registry.json").write_text(state)
        status(lambda s: s["last_scheduled"]["status"] == "ok", "recovered")
        assert "the scheduled refresh failed" in log.read_text()
        start = first.window_end + 86400
        events = [{"user_id": user, "platform": "movies", "item_id": movie, "timestamp": start + 60 * n + i}
                  for i, user in enumerate(users) for n, movie in enumerate(movies)]
        assert httpx.post(f"{url}/v1/events", json={"events": events}, headers=keys, timeout=60).status_code == 200
        done = status(lambda s: (s["last_scheduled"] or {}).get("version") == "v0002", "registered v0002")
        last = done["last_scheduled"]
        assert last["status"] == "ok" and last["parent"] == "v0001" and last["new_events"] >= 120
        assert last["promoted"] and done["champion"] == "v0002" and Registry(reg).champion().name == "v0002"
        for _ in range(240):
            if version() == "v0002":
                break
            time.sleep(0.25)
        assert version() == "v0002"
        # the next ticks find nothing new after v0002's window: no third version
        later = status(lambda s: s["last_scheduled"]["started_at"] > last["finished_at"], "ticked again")
        assert later["last_scheduled"]["version"] is None and [v.name for v in Registry(reg).versions()] == [
            "v0001", "v0002"]
        assert version() == "v0002"
