"""Untrusted templates (a platform's own prompt) render in a separate process with hard limits: every template of
the attack campaign is refused at onboarding naming its line, a template that is slow at recommend time fails
within its limit, and a renderer that stops answering is killed and replaced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from fastapi.testclient import TestClient

from genrec.errors import DataError
from genrec.onboarding import check_template
from genrec.prompts import PromptTemplates, RecommendPrompt
from genrec.template_sandbox import TemplateError, TemplateLimits, TemplateSandbox

FAST_FOR_NEW_ONLY = ("{% if platform == 'new' %}{{ profile }}{% else %}\n"
                     "{% for a in profile %}{% for b in profile %}{% for c in profile %}{% endfor %}"
                     "{% endfor %}{% endfor %}{% endif %}")
NESTED_RANGES = ("{{ profile }}\n{% for i in range(100000) %}\n{% for j in range(100000) %}\n"
                 "{% for k in range(100000) %}{% endfor %}{% endfor %}{% endfor %}")


@pytest.mark.parametrize(("source", "line", "message"), [
    (FAST_FOR_NEW_ONLY, 2, "longer than"),  # fast for the name it was tried with, endless for 'movies'
    ("{{ profile }}\n{% for i in range(10**9) %}{{ i }}{% endfor %}", 2, "range()"),
    (NESTED_RANGES, 3, "range()"),
    ("{{ n }}\n\n{% include 'platform-template-check.j2' %}", 3, "recurses"),
    ("{{ profile }}\n{{ ('a' * 300000000)|length }}", 2, "'*' would build"),
    ("{{ profile }}\n{{ [1, 2] * 100000000 }}", 2, "'*' would build"),
    ("{{ profile }}\n{{ 7 ** 100000000 }}", 2, "'**'"),
    ("{{ profile }}\n{% for i in range(90000) %}{{ i }}{{ profile }}{% endfor %}", 2, "writes more than"),
    ("{{ profile }}\n{{ 'a'|center(2000000000)|length }}", 2, "MB"),
])
def test_campaign_templates_are_refused_naming_the_line(source, line, message):
    started = time.monotonic()
    with pytest.raises(DataError) as exc:
        check_template(source, ["movies", "amazon-arts"])
    assert exc.value.field == "template" and message in str(exc.value), str(exc.value)
    assert exc.value.line == line, str(exc.value)
    assert time.monotonic() - started < 60  # liveness: the check always ends


def test_a_slow_template_cannot_hold_the_caller_and_the_renderer_recovers():
    """What the model worker does for a platform with its own template (PromptTemplates.render)."""
    templates = PromptTemplates(limits=TemplateLimits(seconds=0.5))
    name = templates.register("platforms/slow/recommend.j2", FAST_FOR_NEW_ONLY)
    prompt = RecommendPrompt(profile="x" * 3000, platform="movies", n=5)
    outcome: list[BaseException] = []
    thread = threading.Thread(target=lambda: _capture(outcome, templates.render, name, prompt), daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the render still holds its caller after 30 s"
    assert isinstance(outcome[0], TemplateError) and outcome[0].kind == "limit" and outcome[0].line == 2
    assert templates.render(name, RecommendPrompt(profile="fine", platform="new", n=5)) == "fine"


def _capture(outcome: list, call, *args) -> None:
    try:
        call(*args)
    except BaseException as exc:  # noqa: B036 - handed to the test thread
        outcome.append(exc)


def test_a_renderer_that_stops_answering_is_killed_and_replaced():
    sandbox = TemplateSandbox()
    limits = TemplateLimits(seconds=0.5)
    try:
        assert sandbox.render([], "t.j2", "{{ a }}!", {"a": "hi"}, limits) == "hi!"
        first = sandbox._child.pid
        os.kill(first, signal.SIGSTOP)  # frozen: not even SIGALRM can help; the parent must give up and kill it
        with pytest.raises(TemplateError, match="took too long"):
            sandbox.render([], "t.j2", "{{ a }}!", {"a": "hi"}, limits)
        assert sandbox.render([], "t.j2", "{{ a }}?", {"a": "again"}, limits) == "again?"
        assert sandbox._child.pid != first
    finally:
        sandbox.close()


def test_templates_from_files_keep_working_in_process():
    templates = PromptTemplates()
    text = templates.render("recommend.j2", RecommendPrompt(profile="P" * 20_000, platform="movies", n=5))
    assert text.startswith("P" * 20_000)


def test_the_api_answers_422_naming_the_template_line(tmp_path, monkeypatch):
    from genrec.server import ServerSettings, create_app

    monkeypatch.delenv("GENREC_API_KEYS", raising=False)
    app = create_app(ServerSettings(db=tmp_path / "api.duckdb", warm_up=False, api_keys=["k"]))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/v1/platforms", data={"name": "evil", "template": NESTED_RANGES},
                               files={"catalog": ("c.csv", b"item_id,title\n1,One\n")}, headers={"X-API-Key": "k"})
        assert response.status_code == 422, response.text
        assert response.json()["field"] == "template" and "line 3" in response.json()["error"]
        assert client.get("/v1/platforms").json() == []


def test_cli_platform_add_refuses_nested_loops_at_once(tmp_path):
    template = tmp_path / "prompt.j2"
    template.write_text(NESTED_RANGES)
    catalog = tmp_path / "c.csv"
    catalog.write_text("item_id,title\n1,One\n")
    env = {**os.environ, "GENREC_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-m", "genrec.cli", "platform", "add", "evil", "--catalog", str(catalog),
                             "--template", str(template)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "line 3" in result.stderr and "range()" in result.stderr
