"""The chat page in a real headless Chromium (Debian's ``chromium``, driven by Playwright) against the real server:
choose a user, send a request, see cards. Saves ``artifacts/chat.png``."""

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
