"""The chat page in a real headless Chromium (Debian's ``chromium``, driven by Playwright) against the real server:
choose a user, send a request, see cards; served by a fitted pipeline, each card says where its item came from.
Saves ``artifacts/chat.png`` and ``artifacts/chat-sources.png``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
USER = "A7PVZNHRTX1J7"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make install` (it installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def test_chat_page_shows_recommendation_cards(server, browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url + "/")
    assert page.title() == "genrec chat"
    page.fill("#key", server.api_key)  # user data needs a key with the read scope
    page.dispatch_event("#key", "change")
    page.locator("#users option").first.wait_for(state="attached")  # no wait_for_function: CSP forbids eval
    page.fill("#user", USER)
    page.click("#choose")
    page.wait_for_selector("#history li")
    assert page.locator("#history li").count() == 8
    assert page.is_enabled("#message")

    page.fill("#message", 'something like the pens I bought, but for sketching <img src=x onerror="alert(1)">')
    page.click("#send")
    page.wait_for_selector(".card", timeout=240_000)
    cards = page.locator(".card")
    assert cards.count() == 5
    for index in range(cards.count()):
        card = cards.nth(index)
        assert card.locator(".card-title").inner_text().strip()
        assert card.locator(".card-platform").inner_text() in {"amazon-arts", "amazon-office"}
        assert card.locator(".card-rationale").inner_text().strip()
        assert card.locator(".card-evidence li").count() >= 1
    assert "picks" in page.locator(".bubble.reply").inner_text()
    assert page.locator("#log img").count() == 0  # the message is shown as text, never as HTML
    assert page.locator(".bubble.user").inner_text().endswith('onerror="alert(1)">')
    assert page.locator("#status").inner_text() == ""
    assert not errors
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)
    assert (ARTIFACTS / "chat.png").stat().st_size > 10_000
    page.close()


@pytest.fixture(scope="module")
def pipeline_server(tmp_path_factory):
    """`genrec serve --pipeline DIR` over movielens-latest-small with a fitted popularity + ItemKNN pipeline (chat
    understands messages with rules): its chat answers carry each source's score, the rationale's author and
    evidence."""

    from servers import fitted_classic, serving

    root = tmp_path_factory.mktemp("web-pipeline")
    db, folder = fitted_classic(root, "ml-web", tune_users=60)
    with serving(root, db, folder, "web-key:read", chat_llm=False) as (url, log):
        yield url


def _score(value: float) -> str:
    """As the page writes a score: whole numbers as they are, else two decimals; a true minus sign."""
    return (str(int(value)) if float(value).is_integer() else f"{value:.2f}").replace("-", "\u2212")


def test_chat_page_shows_where_each_item_came_from(pipeline_server, browser) -> None:
    """A pipeline's chat answer: each card says every source's own score, the LLM's (when the pipeline has one)
    and who wrote the rationale, as text, and lists the history titles the rationale rests on."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(pipeline_server + "/")
    page.fill("#key", "web-key")
    page.dispatch_event("#key", "change")
    page.locator("#users option").first.wait_for(state="attached")
    page.fill("#user", "1")
    page.click("#choose")
    page.wait_for_selector("#history li")
    page.fill("#message", "recommend me some movies")
    with page.expect_response(lambda response: response.url.endswith("/v1/chat")) as chat:
        page.click("#send")
    answer = chat.value.json()
    assert answer["pipeline"] == "ml-web" and answer["items"]
    page.wait_for_selector(".card")
    cards = page.locator(".card")
    assert cards.count() == len(answer["items"])
    names = {"popularity": "popularity", "itemknn": "ItemKNN"}
    for index, item in enumerate(answer["items"]):
        card = cards.nth(index)
        assert card.get_attribute("data-item-id") == item["item_id"]
        assert set(item["sources"]) == {"popularity", "itemknn"} and item["rationale_source"] in ("llm", "template")
        expected = [f"{names[name]} {_score(value)}" for name, value in item["sources"].items()]
        if item["llm"] is not None:
            expected.append(f"LLM {_score(item['llm'])}")
        expected.append(f"rationale: {'LLM' if item['rationale_source'] == 'llm' else item['rationale_source']}")
        assert card.locator(".card-sources").inner_text() == " \u00b7 ".join(expected)
        assert item["evidence"]
        assert card.locator(".card-evidence li").all_inner_texts() == [
            f"from your history: {title}" for title in item["evidence"]]
    assert page.locator(".card-sources").first.is_visible()
    assert not errors
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-sources.png"), full_page=True)
    page.close()
