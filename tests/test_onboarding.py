"""Zero-shot onboarding: template and name checks, the transactional library call, and the CLI as a user runs it
(``genrec platform add`` / ``platform list`` / ``report`` on the new platform, real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from genrec.data.importers import ImportBatch, Mapping
from genrec.data.schema import Platform
from genrec.data.store import Store
from genrec.errors import ConflictError, DataError
from genrec.onboarding import check_platform_name, check_template, onboard

PODCASTS = [
    {"id": "p1", "name": "The Daily Sketch: drawing every day", "topic": "art"},
    {"id": "p2", "name": "Paper Talk: stationery reviews", "topic": "office"},
    {"id": "p3", "name": "Quilting Hour", "topic": "crafts"},
    {"id": "p4", "name": "Movie Nights: classic films discussed", "topic": "film"},
    {"id": "p5", "name": "Science Fiction Double Feature", "topic": "film"},
    {"id": "p6", "name": "The Pen Addict", "topic": "office"},
]
TEMPLATE = ('{{ profile }}\n\nRecommend {{ n }} podcasts on {{ platform|quote }} for this person.\n'
            'Answer with a numbered list, one title in double quotes per line.')


@pytest.mark.parametrize(("source", "message"), [
    ("{{ profile ", "syntax error"),
    ("{{ profile }} {{ listener_age }}", "'listener_age' is undefined"),
    ("{{ ''.__class__.__mro__ }}", "cannot be rendered"),
    ("{# nothing #}", "empty prompt"),
])
def test_bad_templates_are_refused_naming_the_field(source: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as error:
        check_template(source)
    assert error.value.field == "template"


def test_templates_and_names_that_are_fine() -> None:
    check_template(TEMPLATE)
    check_template("{{ profile }} {% if instruction is defined and instruction %}{{ instruction|quote }}{% endif %}")
    assert check_platform_name("podcasts.v2") == "podcasts.v2"
    for bad in ("", "-x", "has space", "x" * 65, "../etc"):
        with pytest.raises(DataError, match="platform name"):
            check_platform_name(bad)


def _tiny_store(path) -> None:
    with Store(path) as store:
        events = pd.DataFrame({"user_id": ["u1"] * 3, "platform": ["films"] * 3, "item_id": ["f1", "f2", "f3"],
                               "timestamp": pd.to_datetime(["2024-01-01", "2024-02-01", "2024-03-01"]),
                               "event": ["watch"] * 3, "value": [5.0, 4.0, 5.0], "_file": "t", "_line": [1, 2, 3]})
        items = pd.DataFrame({"platform": ["films"] * 3, "item_id": ["f1", "f2", "f3"],
                              "title": ["Star Wars (1977)", "Alien (1979)", "<script>alert(1)</script> Blade Runner"],
                              "description": None, "category": "Sci-Fi", "attributes": None, "year": None,
                              "_file": "t", "_line": [1, 2, 3]})
        store.ingest(ImportBatch("tiny", [Platform("films", "watched")], events=events, items=items))


def test_onboarding_is_one_transaction_and_refuses_a_second_registration(tmp_path) -> None:
    catalog = tmp_path / "podcasts.jsonl"
    catalog.write_text("\n".join(json.dumps(row) for row in PODCASTS) + "\n")
    db = tmp_path / "store.duckdb"
    _tiny_store(db)

    class IndexOnly:  # stands in for a Recommender: onboarding only needs its index and embedder
        def __init__(self, store):
            self.store = store
            self.embedder = type("E", (), {"encoded_count": 0})()

        def index(self, name):
            return self.store.catalog(name)

    with Store(db) as store:
        with pytest.raises(DataError, match="missing column 'item_id'"):
            onboard(store, "podcasts", catalog, recommender=IndexOnly(store))
        assert [p.name for p in store.platforms()] == ["films"]  # the failed import left nothing behind
        report = onboard(store, "podcasts", catalog, recommender=IndexOnly(store), template=TEMPLATE,
                         mapping=Mapping({"item_id": "id", "title": "name", "category": "topic"}))
        assert report.items == 6 and store.platform("podcasts").verb == "interacted with"
        assert store.platform_template("podcasts") == TEMPLATE
        with pytest.raises(ConflictError, match="already registered"):
            onboard(store, "podcasts", catalog, recommender=IndexOnly(store))


def genrec(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "genrec.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.integration
def test_cli_platform_add_then_report_on_the_new_platform(tmp_path) -> None:
    db = tmp_path / "store.duckdb"
    _tiny_store(db)
    catalog = tmp_path / "podcasts.jsonl"
    catalog.write_text("\n".join(json.dumps(row) for row in PODCASTS) + "\n")
    template = tmp_path / "podcasts.j2"
    template.write_text(TEMPLATE)
    added = genrec("platform", "add", "podcasts", "--catalog", str(catalog), "--map", "item_id=id", "--map",
                   "title=name", "--map", "category=topic", "--verb", "listened to", "--template", str(template),
                   "--db", str(db), "--json")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["items"] == 6
    listed = json.loads(genrec("platform", "list", "--db", str(db), "--json").stdout)
    assert {row["platform"]: row["own_template"] for row in listed} == {"films": False, "podcasts": True}

    out = tmp_path / "report.html"
    report = genrec("report", "--user", "u1", "--platform", "podcasts", "-k", "3", "--out", str(out), "--db", str(db))
    assert report.returncode == 0, report.stderr
    html = out.read_text()
    assert "<h2>Recommended on podcasts</h2>" in html and html.count('class="card') == 3
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "data:image/png;base64," in html
