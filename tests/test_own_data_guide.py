"""docs/own-data.md, run as written: its files are written from the guide's own blocks and its commands run in
order (``genrec`` as this checkout's CLI, ``serve`` on a free port, ``curl`` against it)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from servers import free_port, wait_ready

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "own-data.md"
BLOCK = re.compile(r"^```(\w+)(?: (\S+))?\n(.*?)^```", re.M | re.S)


def guide_blocks() -> list[tuple[str, str | None, str]]:
    return [(lang, name, body) for lang, name, body in BLOCK.findall(GUIDE.read_text())]


def test_the_guide_names_files_and_commands():
    blocks = guide_blocks()
    files = {name for _, name, _ in blocks if name}
    assert {"items.csv", "events.csv", "music-app.csv", "links.csv", "splits.csv", "shelf-eval.yaml",
            "shelf-pipeline.yaml"} <= files
    commands = [line for lang, _, body in blocks if lang == "bash" for line in body.splitlines()]
    for name in files:
        assert any(name in line for line in commands), f"{name} is never imported"
    assert "own-data.md" in (GUIDE.parents[1] / "README.md").read_text()


@pytest.mark.integration
def test_the_guide_runs_as_written(tmp_path):
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("GENREC_DB", None)
    env.pop("GENREC_API_KEYS", None)
    port = free_port()
    cli = [sys.executable, "-m", "genrec.cli"]
    server = None
    outputs: dict[str, str] = {}
    try:
        for lang, name, body in guide_blocks():
            if name:
                (tmp_path / name).write_text(body)
                continue
            if lang != "bash":
                continue
            for line in body.splitlines():
                line = line.strip().replace("$PWD", str(tmp_path))
                if not line or line.startswith("#"):
                    continue
                if line.startswith("export "):
                    key, value = line.removeprefix("export ").split("=", 1)
                    env[key] = value
                    continue
                args = shlex.split(line.replace("8000", str(port)))
                if args[0] == "genrec" and args[1] == "serve":
                    server = subprocess.Popen(cli + args[1:], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE, text=True)
                    wait_ready(server, f"http://127.0.0.1:{port}", timeout_s=180)
                    continue
                command = cli + args[1:] if args[0] == "genrec" else args
                result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
                assert result.returncode == 0, f"{line}\n{result.stderr}\n{result.stdout}"
                outputs[" ".join(args[:3])] = result.stdout
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    metrics = json.loads((tmp_path / "results" / "shelf-classics" / "metrics.json").read_text())
    assert {row["method"] for row in metrics["results"]} == {"MostPop", "ItemKNN", "shelf-pipeline"}
    assert metrics["variants"]["main"]["data"]["test_users"] == 2  # ann and dan, the imported split
    assert "music for user ann (shelf-pipeline)" in outputs["genrec recommend --pipeline"]
    assert "music for user ann (shelf-classic)" in outputs["genrec recommend --dataset"]  # its default pipeline
    assert (tmp_path / "shelf-pipeline" / "pipeline.yaml").is_file()
    answer = json.loads(outputs["curl -s -X"])
    played = {"m1", "m2", "m3"}  # ann's music: m1 from the shop, m3 and m2 from the app through the link
    assert len(answer["items"]) == 3 and not {item["item_id"] for item in answer["items"]} & played
