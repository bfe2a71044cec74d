"""`genrec serve --pipeline DIR`: the server answers with the fitted pipeline, ranking exactly as the library object
does for the same user, and honours `candidates` and `exclude`; chat and reports run on the same pipeline."""

from __future__ import annotations

import httpx
import pytest
from servers import fitted_classic, serving

pytestmark = pytest.mark.integration

KEY = "pipeline-test-key"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from genrec.data.store import Store
    from genrec.pipeline import Pipeline
    from genrec.pipeline.fitting import user_context

    root = tmp_path_factory.mktemp("pipeline-server")
    db, folder = fitted_classic(root, "ml-classic", tune_users=100)
    with Store(db) as store:
        loaded = Pipeline.load(folder, store=store)
        context = user_context(store, "1", "movies")
        expected = [item.item_id for item in loaded.recommend(context, 10)]
        chosen = expected[3:8]
        restricted = [item.item_id for item in loaded.recommend(context, 3, candidates=chosen, exclude=[chosen[0]])]
        # a movie no train user watched, and user 1's items: new users who watch both make it user 1's neighbour
        counts = loaded.sources["popularity"].score([context], "movies")[0]
        owned = {e.item_id for e in context.history}
        unseen = next(item for item, count in zip(loaded.sources["popularity"].catalogs["movies"], counts, strict=True)
                      if count == 0 and item not in owned)
        neighbourhood = (unseen, [e.item_id for e in context.history][-30:])
        # a conversation: three picks, three more, then the first of those rejected and one more in its place
        more = [item.item_id for item in loaded.recommend(context, 3, exclude=expected[:3])]
        instead = loaded.recommend(context, 1, exclude=expected[:3] + more)[0].item_id
        conversation = (expected[:3], more, instead)
        own_top = {item.item_id for item in loaded.recommend(context, 12)}  # what chat asks for, focused, k=4
    # chat understands messages with rules here, so that what it asks the pipeline for is known in advance
    with serving(root, db, folder, KEY, chat_llm=False) as (url, log):
        yield url, expected, (chosen, restricted), neighbourhood, conversation, own_top


def _recommend(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/recommend", json=body, headers={"X-API-Key": KEY}, timeout=120)


def test_the_server_ranks_as_the_pipeline_object(served) -> None:
    url, expected, *_ = served
    answer = _recommend(url, user_id="1", platform="movies", k=10)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["pipeline"] == "ml-classic" and body["generation"] is None
    assert [item["item_id"] for item in body["items"]] == expected
    first = body["items"][0]
    assert set(first["sources"]) == {"popularity", "itemknn"} and first["source"]


def test_candidates_and_exclude_restrict_the_answer(served) -> None:
    url, _, (chosen, restricted), *_ = served
    answer = _recommend(url, user_id="1", platform="movies", k=3, candidates=chosen, exclude=[chosen[0]])
    assert answer.status_code == 200, answer.text
    items = [item["item_id"] for item in answer.json()["items"]]
    assert items == restricted and set(items) <= set(chosen[1:])  # fused over the candidates alone
    unknown = _recommend(url, user_id="1", platform="movies", k=3, candidates=["no-such-movie"])
    assert unknown.status_code == 404 and "no-such-movie" in unknown.text


def test_an_inline_history_needs_no_stored_user(served) -> None:
    url, *_ = served
    history = [{"platform": "movies", "item_id": "1", "timestamp": "2020-01-01T00:00:00"},
               {"platform": "movies", "item_id": "2", "timestamp": "2020-01-02T00:00:00"}]
    answer = httpx.post(f"{url}/v1/recommend", json={"history": history, "platform": "movies", "k": 5}, timeout=120)
    assert answer.status_code == 200, answer.text
    items = [item["item_id"] for item in answer.json()["items"]]
    assert len(items) == 5 and not {"1", "2"} & set(items)


def test_the_report_ranks_and_explains_with_the_pipeline(served) -> None:
    url, expected, *_ = served
    answer = httpx.get(f"{url}/v1/users/1/report", params={"format": "json", "platform": "movies"},
                       headers={"X-API-Key": KEY}, timeout=300)
    assert answer.status_code == 200, answer.text
    movies = answer.json()["recommendations"][0]
    assert movies["pipeline"] == "ml-classic" and movies["platform"] == "movies"
    items = movies["items"]
    assert [item["item_id"] for item in items] == expected[: len(items)] and items  # the pipeline's ranking
    for item in items:
        assert item["rationale"] and item["evidence"] and item["faithfulness"]["status"] != "flagged"
    page = httpx.get(f"{url}/v1/users/1/report", params={"platform": "movies"}, headers={"X-API-Key": KEY},
                     timeout=300)
    assert page.status_code == 200 and "Ranked and explained by pipeline ml-classic" in page.text


def test_concurrent_clients_rationales_are_written_in_shared_batches(served) -> None:
    """Clients asking for rationales at the same time get them from shared worker batches (one generation for
    all their lists), each ranked as it would be alone."""
    from concurrent.futures import ThreadPoolExecutor

    url, expected, *_ = served
    warm = _recommend(url, user_id="1", platform="movies", k=1, explain=True)  # loads the LLM, measures a batch
    assert warm.status_code == 200, warm.text
    before = httpx.get(f"{url}/healthz", timeout=30).json()["worker"]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _recommend(url, user_id="1", platform="movies", k=2, explain=True),
                                range(4)))
    after = httpx.get(f"{url}/healthz", timeout=30).json()["worker"]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        items = answer.json()["items"]
        assert [item["item_id"] for item in items] == expected[:2]
        assert all(item["rationale"] and item["evidence"] for item in items)
    assert after["jobs"] - before["jobs"] == 4 and after["batches"] - before["batches"] < 4


def _chat(url: str, message: str, conversation: str | None, k: int = 3) -> dict:
    answer = httpx.post(f"{url}/v1/chat", headers={"X-API-Key": KEY}, timeout=300, json={
        "user_id": "1", "message": message, "conversation_id": conversation, "k": k})
    assert answer.status_code == 200, answer.text
    return answer.json()


def _from_the_pipeline(answer: dict) -> None:
    assert answer["pipeline"] == "ml-classic" and answer["platform"] == "movies"
    for item in answer["items"]:
        assert set(item["sources"]) == {"popularity", "itemknn"} and item["source"]  # every source's own score
        assert item["rationale"] and item["evidence"] and item["rationale_source"] in ("llm", "template")


def test_chat_answers_with_the_pipelines_ranking(served) -> None:
    """A plain request answers the pipeline's top k; "more" and "not that one" ask it again without what was
    shown, and the answers are the library object's for the same exclusions."""
    url, *_, (first_ids, more_ids, instead), _ = served
    first = _chat(url, "recommend me some movies", None)
    _from_the_pipeline(first)
    assert [item["item_id"] for item in first["items"]] == first_ids
    conversation = first["conversation_id"]

    more = _chat(url, "show me more", conversation)
    _from_the_pipeline(more)
    assert [item["item_id"] for item in more["items"]] == more_ids

    rejected = _chat(url, "not that one", conversation)
    _from_the_pipeline(rejected)
    assert [item["item_id"] for item in rejected["items"]] == [*more_ids[1:], instead]
    assert more["items"][0]["title"] in rejected["reply"]


def test_chat_ranks_the_neighbours_of_a_focus_through_the_pipeline(served) -> None:
    """Movies like one of the user's own: the pipeline's candidates and the catalog neighbours of the focus, all
    scored by the pipeline, in order of similarity to the focus."""
    url, *_, own_top = served
    answer = _chat(url, "movies like Toy Story", None, k=4)
    assert answer["focus"] and all(f["origin"] == "history" and "Toy Story" in f["title"] for f in answer["focus"])
    _from_the_pipeline(answer)
    assert {item["item_id"] for item in answer["items"]} - own_top  # neighbours joined the pipeline's own picks
    similarities = [item["similarity"] for item in answer["items"]]
    assert len(similarities) == 4 and similarities == sorted(similarities, reverse=True)


def test_a_platform_onboarded_while_serving_is_ranked_by_the_configured_pipeline(served) -> None:
    """`POST /v1/platforms` adds the new catalog to the configured pipeline (on the worker thread): its sources rank
    the platform at once, with no counts yet, and posted events on it reach them as on a fitted platform."""
    url, *_ = served
    catalog = "sku,name\n" + "".join(f"s{i},Garden seed packet {i}\n" for i in range(6))
    added = httpx.post(f"{url}/v1/platforms", data={"name": "garden", "mapping": ["item_id=sku", "title=name"]},
                       files={"catalog": ("garden.csv", catalog.encode())}, headers={"X-API-Key": KEY}, timeout=300)
    assert added.status_code == 201, added.text
    assert added.json()["items"] == 6 and added.json()["pipelines"] == ["ml-classic"]
    answer = _recommend(url, user_id="1", platform="garden", k=3)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["pipeline"] == "ml-classic" and [item["item_id"] for item in body["items"]] == ["s0", "s1", "s2"]
    assert body["items"][0]["sources"] == {"popularity": 0.0, "itemknn": 0.0}
    events = [{"user_id": f"gardener-{n}", "platform": "garden", "item_id": "s4", "timestamp": "2030-01-01T00:00:00"}
              for n in range(3)]
    posted = httpx.post(f"{url}/v1/events", json={"events": events}, headers={"X-API-Key": KEY}, timeout=120)
    assert posted.status_code == 200, posted.text
    first = _recommend(url, user_id="1", platform="garden", k=1).json()["items"][0]
    assert first["item_id"] == "s4" and first["sources"]["popularity"] == 3.0


def test_posted_events_reach_the_served_counts_without_a_refit(served) -> None:
    """Runs last in this module: it changes the served pipeline's counts. Twenty new users watch user 1's recent
    movies and one movie nobody had watched; popularity and ItemKNN count them at the next answer."""
    url, _, _, (unseen, recent), *_ = served

    def scores() -> dict[str, float]:
        answer = _recommend(url, user_id="1", platform="movies", k=1, candidates=[unseen])
        assert answer.status_code == 200, answer.text
        return answer.json()["items"][0]["sources"]

    assert scores() == {"popularity": 0.0, "itemknn": 0.0}
    events = [{"user_id": f"newcomer-{n}", "platform": "movies", "item_id": item,
               "timestamp": f"2030-01-01T00:{minute:02d}:00"}
              for n in range(20) for minute, item in enumerate([*recent, unseen])]
    posted = httpx.post(f"{url}/v1/events", json={"events": events}, headers={"X-API-Key": KEY}, timeout=120)
    assert posted.status_code == 200 and posted.json()["added"] == len(events), posted.text
    after = scores()
    assert after["popularity"] == 20.0 and after["itemknn"] > 1.0  # 20 users; similar to each of 30 history items
