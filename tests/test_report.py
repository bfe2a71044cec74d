"""Explainable reports: the faithfulness check on hand-written rationales, activity charts, and whole reports
(HTML, Markdown, JSON) for a real amazon-arts-office user, from the library and over HTTP."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from genrec.charts import activity_chart
from genrec.faithfulness import FaithfulnessChecker

AMAZON_USER = "A7PVZNHRTX1J7"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

CATALOG = ["Toy Story (1995)", "Heat (1995)", "Godfather, The (1972)", "Jumanji (1995)", "Up (2009)",
           "Matrix, The (1999)", "clover wonder clips red 50 pack", "ranger perfect pens set 2 pack clear",
           "sakura pigma micron fineliner pens assorted colors set of 6"]
HISTORY = ["Toy Story (1995)", "Matrix, The (1999)", "clover wonder clips red 50 pack",
           "ranger perfect pens set 2 pack clear"]


@pytest.fixture(scope="module")
def checker() -> FaithfulnessChecker:
    return FaithfulnessChecker(CATALOG, names=["movies", "amazon-arts", "Comedy", "Sci-Fi"])


@pytest.mark.parametrize(("rationale", "recommended", "status", "cited"), [
    # supported: every named item is in the history (exact, without year or article, shortened, unquoted)
    ('Because you watched "Toy Story".', "Up (2009)", "supported", ["Toy Story"]),
    ("Fans of The Matrix will like this one.", "Heat (1995)", "supported", ["The Matrix"]),
    ('Close to "clover wonder clips" from your history.', "Up (2009)", "supported", ["clover wonder clips"]),
    ("you bought ranger perfect pens set 2 pack clear before", "Up (2009)", "supported",
     ["ranger perfect pens set 2 pack clear"]),
    ('Like "the perfect pens set" you bought.', "Up (2009)", "supported", ["the perfect pens set"]),
    # flagged: names an item the user never had, quoted, unquoted, or quoted but not even a catalog item
    ('Because you loved "The Godfather".', "Heat (1995)", "flagged", ["The Godfather"]),
    ("If you enjoyed Jumanji and Toy Story, try this.", "Heat (1995)", "flagged", ["Jumanji", "Toy Story"]),
    ("Because you liked Godfather, The and Toy Story.", "Heat (1995)", "flagged", ["Godfather", "Toy Story"]),
    ('Goes well with your "sakura pigma micron fineliner pens assorted colors set of 6".', "Up (2009)", "flagged",
     ["sakura pigma micron fineliner pens assorted colors set of 6"]),
    ('Just like "Midnight Harbour Blues", which you adored.', "Up (2009)", "flagged", ["Midnight Harbour Blues"]),
    # no citation: generic text, the recommended item itself, non-item names, ordinary words
    ("A fun adventure for the whole family.", "Up (2009)", "no-citation", []),
    ('"Heat" is a tense crime thriller.', "Heat (1995)", "no-citation", ["Heat"]),
    ('More "Comedy" from your favourite genre on "movies".', "Up (2009)", "no-citation", ["Comedy", "movies"]),
    ("It's a 'classic' you will love, Up there with the best.", "Heat (1995)", "no-citation", ["classic"]),
    (None, "Up (2009)", "no-citation", []),
])
def test_faithfulness_flags_rationales_naming_items_outside_the_history(
        checker, rationale, recommended, status, cited) -> None:
    result = checker.check(rationale, HISTORY, recommended)
    assert result.status == status, result
    assert sorted(c.span for c in result.citations) == sorted(cited)
    assert result.flagged == (status == "flagged")
    if result.flagged:
        assert "never interacted with" in result.reason


def _png(encoded: str) -> bytes:
    data = base64.b64decode(encoded)
    assert data.startswith(b"\x89PNG")
    return data


def test_activity_charts_use_dates_or_sequence_positions() -> None:
    dates = [datetime(2000, 1, 1) + timedelta(days=9 * i) for i in range(30)]
    positions = [datetime(1970, 1, 1) + timedelta(seconds=2 * i) for i in range(8)]
    timed = _png(activity_chart(dates, platform="movies", time_kind="time", verb="watched"))
    sequenced = _png(activity_chart(positions, platform="amazon-arts", time_kind="sequence", verb="bought"))
    assert timed != sequenced and len(timed) > 5000


@pytest.mark.integration
def test_report_for_an_amazon_user_flags_and_supports_rationales(recommender, real_store) -> None:
    from genrec.report import ReportBuilder, render

    builder = ReportBuilder(recommender, k=3)
    requests = [replace(r, explain=False) for r in builder.requests(AMAZON_USER)]
    assert [r.platform for r in requests] == ["amazon-arts", "amazon-office"]
    results = recommender.recommend_many(requests)
    history = [h.title for h in real_store.history(AMAZON_USER)]
    never = "sakura pigma micron size 08 50mm black"
    assert never in set(real_store.catalog("amazon-arts")["title"]) and never not in history
    hand_written = [f'Because you bought "{history[0]}".', f'Pairs well with your "{never}".',
                    "A handy tool for any craft table."]
    results[0].items = [replace(item, rationale=text) for item, text in zip(results[0].items, hand_written,
                                                                          strict=True)]
    report = builder.build(AMAZON_USER, requests, results)

    assert [a.platform for a in report.activity] == ["amazon-arts", "amazon-office"]
    assert all(a.time_kind == "sequence" and a.first.isdigit() for a in report.activity)
    statuses = [item.faithfulness.status for item in report.recommendations[0].items]
    assert statuses == ["supported", "flagged", "no-citation"]
    assert report.recommendations[0].flagged == 1 and report.faithfulness["flagged"] == 1
    for item in report.recommendations[0].items:
        assert len(item.evidence) == 3 and item.evidence[0].similarity >= item.evidence[-1].similarity
        assert {e.platform for e in item.evidence} <= {"amazon-arts", "amazon-office"}

    html = render(report, "html")
    assert len(re.findall(r'<img class="chart"[^>]+src="data:image/png;base64,', html)) == 2
    assert html.count('class="badge flagged"') == 1 and 'class="badge supported"' in html
    assert "position in the user" not in html  # the axis is inside the PNG, not text
    markdown = render(report, "md")
    assert "[FLAGGED]" in markdown and "[SUPPORTED]" in markdown and "![activity on amazon-arts]" in markdown
    data = json.loads(render(report, "json"))
    assert data["recommendations"][0]["items"][1]["faithfulness"]["citations"][0]["match"] == "catalog"
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report.html").write_text(html, encoding="utf-8")


@pytest.mark.integration
def test_report_endpoint_serves_html_markdown_and_json(server) -> None:
    url = f"{server.url}/v1/users/{AMAZON_USER}/report"
    html = httpx.get(url, params={"platform": "amazon-office"}, timeout=240, headers=server.read_headers)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "<h2>Recommended on amazon-office</h2>" in html.text and "data:image/png;base64," in html.text
    assert html.text.count('class="card') == 5  # report_k items, each with its check
    missing = httpx.get(f"{server.url}/v1/users/nobody/report", timeout=240, headers=server.read_headers)
    assert missing.status_code == 404
    bad = httpx.get(url, params={"format": "pdf"}, timeout=240, headers=server.read_headers)
    assert bad.status_code == 422 and bad.json()["field"].endswith("format")
