"""The `genrec data` commands as a user runs them: real processes, exit codes, messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import datafiles


def genrec(*args: str, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "GENREC_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "genrec.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def test_import_file_with_mapping_then_stats(tmp_path, home):
    f = tmp_path / "plays.csv"
    f.write_text("listener,track,when,stars\nann,t1,2024-01-01T10:00:00Z,5\nann,t2,2024-01-02T10:00:00Z,4\n"
                 "bob,t1,2024-01-03T10:00:00Z,3\n")
    result = genrec("data", "import-file", str(f), "--platform", "music", "--map", "user_id=listener",
                    "--map", "item_id=track", "--map", "timestamp=when", "--map", "value=stars",
                    "--allow-unknown-items", home=home)
    assert result.returncode == 0, result.stderr
    assert "3 events added" in result.stdout
    stats = json.loads(genrec("data", "stats", "--json", home=home).stdout)
    assert stats["users"] == 2 and stats["platforms"][0]["platform"] == "music"
    again = genrec("data", "import-file", str(f), "--platform", "music", "--map", "user_id=listener", "--map",
                   "item_id=track", "--map", "timestamp=when", "--map", "value=stars", "--json", home=home)
    assert again.returncode == 0, again.stderr  # the items created by the first import are in the catalog now
    assert json.loads(again.stdout)["events_added"] == 0


def test_bad_file_exits_non_zero_and_names_the_line(tmp_path, home):
    f = tmp_path / "bad.csv"
    f.write_text("user_id,item_id,timestamp\nu1,i1,1\nu2,i2\n")
    result = genrec("data", "import-file", str(f), "--platform", "shop", home=home)
    assert result.returncode == 2
    assert "bad.csv" in result.stderr and "line 3" in result.stderr
    assert "Traceback" not in result.stderr
    skipped = genrec("data", "import-file", str(f), "--platform", "shop", "--skip-bad-rows", "--json",
                     "--allow-unknown-items", home=home)
    assert skipped.returncode == 0 and json.loads(skipped.stdout)["skipped_rows"] == 1


def test_unknown_platform_in_a_column(tmp_path, home):
    f = tmp_path / "e.csv"
    f.write_text("user_id,platform,item_id,timestamp\nu1,books,b1,1\n")
    result = genrec("data", "import-file", str(f), home=home)
    assert result.returncode == 2 and "unknown platform 'books'" in result.stderr and "line 2" in result.stderr
    assert "--create-platforms" in result.stderr and "genrec platform set books" in result.stderr
    assert genrec("data", "import-file", str(f), "--create-platforms", "--allow-unknown-items",
                  home=home).returncode == 0


def test_import_registered_dataset_from_path_with_cleaning(tmp_path, home):
    path = datafiles.movielens_csv(tmp_path)
    result = genrec("data", "import", "movielens-latest-small", "--path", str(path), "--min-value", "4",
                    "--json", home=home)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rules = {r["rule"]: r["removed"] for r in report["cleaning"]["rules"]}
    assert rules["below-threshold values"] == 1 and report["events_added"] == 3
    export = genrec("data", "export", str(tmp_path / "parquet"), home=home)
    assert export.returncode == 0 and (tmp_path / "parquet" / "events.parquet").is_file()


def test_missing_dataset_message(tmp_path, home):
    result = genrec("data", "import", "movielens-1m", "--data-dir", str(tmp_path), home=home)
    assert result.returncode == 2 and "not found at" in result.stderr and "--download" in result.stderr
    unknown = genrec("data", "import", "netflix-prize", home=home)
    assert unknown.returncode == 2 and "unknown data set" in unknown.stderr


def test_adapter_scale_without_an_adapter_is_refused(home):
    result = genrec("recommend", "--user", "u1", "--platform", "music", "--adapter-scale", "0.5", home=home)
    assert result.returncode == 2 and "adapter_scale needs an adapter" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_engine_is_refused(home):
    result = genrec("recommend", "--user", "u1", "--platform", "music", "--engine", "vllm", home=home)
    assert result.returncode == 2 and "engine must be one of transformers, openvino" in result.stderr
    assert "Traceback" not in result.stderr
