"""The HTTP service over real sockets: one ``genrec serve`` process (conftest ``server``) with the real models and
both real data sets. Auth, 4xx payloads, events seen by the next recommendation, onboarding, overload."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.integration

AMAZON_USER = "A7PVZNHRTX1J7"
TIMEOUT = 240


def post(server, path: str, **kwargs) -> httpx.Response:
    """A POST with the test key (read and write) unless ``headers`` says otherwise."""
    kwargs.setdefault("headers", server.read_headers)
    kwargs.setdefault("timeout", TIMEOUT)
    return httpx.post(server.url + path, **kwargs)


def get(server, path: str, **kwargs) -> httpx.Response:
    kwargs.setdefault("headers", server.read_headers)
    kwargs.setdefault("timeout", TIMEOUT)
    return httpx.get(server.url + path, **kwargs)


def test_health_docs_and_page(server) -> None:
    health = httpx.get(server.url + "/healthz").json()
    assert health["status"] == "ok" and {"movies", "amazon-arts", "amazon-office"} <= set(health["platforms"])
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert {"/v1/recommend", "/v1/chat", "/v1/events", "/v1/platforms", "/v1/users/{user_id}/report"} <= set(paths)
    assert httpx.get(server.url + "/docs").status_code == 200
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "genrec" in page.text and "/static/app.js" in page.text


def test_write_endpoints_need_an_api_key(server) -> None:
    events = {"events": [{"user_id": "auth-user", "platform": "movies", "item_id": "1", "timestamp": 1}]}
    assert post(server, "/v1/events", json=events, headers={}).status_code == 401
    assert post(server, "/v1/events", json=events, headers={"X-API-Key": "wrong"}).status_code == 401
    missing = post(server, "/v1/platforms", data={"name": "nope"}, files={"catalog": ("c.csv", b"item_id,title\n")},
                   headers={})
    assert missing.status_code == 401 and "API key" in missing.json()["error"]
    assert post(server, "/v1/events", json=events, headers={"Authorization": "Bearer test-key-2"}).status_code == 200
    # platforms are public; user data needs a key with the read scope
    assert httpx.get(server.url + "/v1/platforms").status_code == 200
    for path in ("/v1/users", "/v1/users/1/history", "/v1/users/1/report"):
        assert httpx.get(server.url + path).status_code == 401
    assert post(server, "/v1/recommend", json={"user_id": "1", "platform": "movies"}, headers={}).status_code == 401
    assert post(server, "/v1/chat", json={"user_id": "1", "message": "films"}, headers={}).status_code == 401


@pytest.mark.parametrize(("path", "body", "status", "field"), [
    ("/v1/recommend", {"user_id": "1", "platform": "movies", "k": "ten"}, 422, "k"),
    ("/v1/recommend", {"user_id": "1"}, 422, "platform"),
    ("/v1/recommend", {"user_id": "1", "platform": "movies", "colour": "red"}, 422, "colour"),
    ("/v1/recommend", {"platform": "movies"}, 422, None),  # neither user_id nor history
    ("/v1/recommend", {"user_id": "1", "platform": "movies", "k": 21}, 422, "k"),  # over the server's max_k
    ("/v1/recommend", {"platform": "movies", "history": [{"platform": "movies", "item_id": "1"}] * 41}, 422,
     "history"),  # over max_history
    ("/v1/recommend", {"user_id": "no-such-user", "platform": "movies"}, 404, None),
    ("/v1/recommend", {"user_id": "1", "platform": "books"}, 404, None),
    ("/v1/chat", {"user_id": "1", "message": ""}, 422, "message"),
    ("/v1/chat", {"user_id": "1", "message": "more", "conversation_id": "forged"}, 404, None),
])
def test_bad_payloads_get_4xx_naming_the_field(server, path, body, status, field) -> None:
    response = post(server, path, json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["error"]
    if field:
        assert error["field"] == field and field in error["error"]


def test_bad_events_are_rejected_whole(server) -> None:
    def events(*rows):
        return post(server, "/v1/events", json={"events": list(rows)}, headers=server.write_headers)

    good = {"user_id": "bad-events-user", "platform": "movies", "item_id": "1", "timestamp": 1_500_000_000}
    response = events(good, good | {"item_id": "2", "timestamp": "not a time"})
    assert response.status_code == 422 and response.json()["field"] == "events[1].timestamp"
    response = events(good | {"platform": "books"})
    assert response.status_code == 422 and "unknown platform 'books'" in response.json()["error"]
    response = events(good | {"rating": 5})
    assert response.status_code == 422 and response.json()["field"] == "events.0.rating"
    assert events(*[good | {"item_id": str(i)} for i in range(501)]).json()["field"] == "events"  # max_events
    # nothing of the rejected batches was stored
    assert get(server, "/v1/users/bad-events-user/history").status_code == 404
    too_big = post(server, "/v1/events", content=b"{" + b" " * 300_000 + b"}", headers=server.write_headers
                   | {"Content-Type": "application/json"})
    assert too_big.status_code == 413
    broken = post(server, "/v1/events", content=b'{"events": [', headers=server.write_headers
                  | {"Content-Type": "application/json"})
    assert broken.status_code == 422


def test_recommend_for_a_user_and_for_an_inline_history(server) -> None:
    response = post(server, "/v1/recommend", json={"user_id": AMAZON_USER, "platform": "amazon-office", "k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["rank"] for item in body["items"]] == [1, 2, 3]
    assert all(item["platform"] == "amazon-office" for item in body["items"])
    inline = [{"platform": "movies", "item_id": i} for i in ("1", "2", "3", "6", "10")]
    response = post(server, "/v1/recommend", json={"history": inline, "platform": "movies", "k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] is None and len(body["items"]) == 2
    assert "Toy Story" in body["profile"]["text"]  # catalog titles were filled in
    assert not {item["item_id"] for item in body["items"]} & {"1", "2", "3", "6", "10"}


def test_posted_events_are_seen_by_the_next_recommendation(server) -> None:
    request = {"user_id": "7", "platform": "movies", "k": 3}
    first = post(server, "/v1/recommend", json=request).json()
    top = first["items"][0]
    event = {"user_id": "7", "platform": "movies", "item_id": top["item_id"], "timestamp": "2030-01-01T00:00:00Z",
             "value": 5}
    added = post(server, "/v1/events", json={"events": [event]}, headers=server.write_headers)
    assert added.status_code == 200 and added.json()["added"] == 1
    latest = get(server, "/v1/users/7/history?limit=1").json()
    assert latest[0]["item_id"] == top["item_id"] and latest[0]["timestamp"].startswith("2030-01-01")
    second = post(server, "/v1/recommend", json=request).json()
    assert top["item_id"] not in {item["item_id"] for item in second["items"]}  # now part of the history
    assert top["title"] in second["profile"]["text"]
    again = post(server, "/v1/events", json={"events": [event]}, headers=server.write_headers).json()
    assert again["added"] == 0 and again["already_present"] == 1  # idempotent


CATALOG = "sku,name,genre\n" + "\n".join(f"m{i},{title},{genre}" for i, (title, genre) in enumerate([
    ("Kind of Blue - Miles Davis", "jazz"), ("Blue Train - John Coltrane", "jazz"),
    ("A Love Supreme - John Coltrane", "jazz"), ("Abbey Road - The Beatles", "rock"),
    ("Revolver - The Beatles", "rock"), ("Nevermind - Nirvana", "grunge"), ("Thriller - Michael Jackson", "pop"),
    ("Rumours - Fleetwood Mac", "rock"), ("The Dark Side of the Moon - Pink Floyd", "rock"),
    ("Star Wars - John Williams (soundtrack)", "soundtrack"), ("Toy Story - Randy Newman (soundtrack)", "soundtrack"),
    ("Blue - Joni Mitchell", "folk"),
])) + "\n"
TEMPLATE = ('{{ profile }}\n\nSuggest {{ n }} albums on {{ platform|quote }} for this listener.'
            '{% if instruction is defined and instruction %} Wish: {{ instruction|quote }}.{% endif %}\n'
            'Answer with a numbered list, one title in double quotes per line.')


def test_onboarded_platform_serves_recommendations_and_reports_at_once(server) -> None:
    form = {"name": "albums", "verb": "listened to", "template": TEMPLATE,
            "mapping": ["item_id=sku", "title=name", "category=genre"]}
    files = {"catalog": ("albums.csv", CATALOG.encode())}
    response = post(server, "/v1/platforms", data=form, files=files, headers=server.write_headers)
    assert response.status_code == 201, response.text
    assert response.json()["items"] == 12
    listed = {p["name"]: p for p in httpx.get(server.url + "/v1/platforms").json()}
    assert listed["albums"]["catalog_items"] == 12 and listed["albums"]["verb"] == "listened to"
    again = post(server, "/v1/platforms", data=form, files=files, headers=server.write_headers)
    assert again.status_code == 409
    broken = post(server, "/v1/platforms", data=form | {"name": "albums2", "template": "{{ profile "}, files=files,
                  headers=server.write_headers)
    assert broken.status_code == 422 and broken.json()["field"] == "template"
    unmapped = post(server, "/v1/platforms", data={"name": "albums3"}, files=files, headers=server.write_headers)
    assert unmapped.status_code == 422 and "missing column 'item_id'" in unmapped.json()["error"]

    response = post(server, "/v1/recommend", json={"user_id": "1", "platform": "albums", "k": 3})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert len(items) == 3 and {item["item_id"] for item in items} <= {f"m{i}" for i in range(12)}
    report = get(server, "/v1/users/1/report", params={"platform": "albums", "format": "json"})
    assert report.status_code == 200, report.text
    body = report.json()
    assert [r["platform"] for r in body["recommendations"]] == ["albums"]
    assert all(item["evidence"] for item in body["recommendations"][0]["items"])


def test_overload_answers_503_with_retry_after_and_never_hangs(server) -> None:
    """A slow job occupies the worker; a burst of 60 cheap requests overflows the 24-job queue."""
    slow = threading.Thread(target=post, args=(server, "/v1/recommend"),
                            kwargs={"json": {"user_id": "2", "platform": "movies", "k": 2}})
    slow.start()
    time.sleep(1.0)  # let the slow job reach the worker first
    statuses: list[tuple[int, str | None]] = []

    def burst() -> None:
        response = post(server, "/v1/recommend", json={"user_id": "no-such-user", "platform": "movies"})
        statuses.append((response.status_code, response.headers.get("Retry-After")))

    threads = [threading.Thread(target=burst) for _ in range(60)]
    for thread in threads:
        thread.start()
    for thread in [*threads, slow]:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "a request hung"
    assert len(statuses) == 60
    codes = {code for code, _ in statuses}
    assert codes <= {404, 503} and 503 in codes, codes
    assert all(retry and int(retry) >= 1 for code, retry in statuses if code == 503)
