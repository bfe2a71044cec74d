"""Dataset loaders on small hand-written files in each public layout, and the checksum-verified download."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from dataclasses import replace
from functools import partial
from pathlib import Path

import pandas as pd
import pytest

from genrec.data import datasets
from genrec.data.datasets import Dataset, Download, amazon_reviews, movielens
from genrec.data.download import ChecksumError, download
from genrec.data.store import Store
from genrec.errors import DataError, DatasetNotFoundError

import datafiles


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "s.duckdb") as s:
        yield s


@pytest.mark.parametrize("layout", ["csv", "dat", "100k"])
def test_movielens_layouts(tmp_path, store, layout):
    path = {"csv": datafiles.movielens_csv, "dat": datafiles.movielens_1m,
            "100k": datafiles.movielens_100k}[layout](tmp_path)
    assert movielens.layout(path) == layout
    report = store.ingest(movielens.load(path))
    catalog = store.catalog("movies").set_index("item_id")
    if layout == "csv":
        assert report.events_added == 4 and len(catalog) == 3
        assert catalog.loc["1", "category"] == "Adventure|Animation|Children"
        assert catalog.loc["3", "title"] == "Grumpier Old Men, The (1995)" and catalog.loc["3", "year"] == 1995
        assert pd.isna(catalog.loc["3", "category"])
    elif layout == "dat":
        assert report.events_added == 3 and catalog.loc["661", "category"] == "Animation|Children's|Musical"
    else:
        assert report.events_added == 5
        assert catalog.loc["3", "title"] == "Caf\xe9 au lait (1993)"  # latin-1 decoded
        assert catalog.loc["1", "category"] == "Animation|Children's|Comedy"
    hist = store.history("1")
    assert [h.timestamp for h in hist] == sorted(h.timestamp for h in hist)
    assert all(h.event == "rating" and h.value is not None for h in hist)


def test_not_a_movielens_folder(tmp_path):
    with pytest.raises(DataError, match="not a MovieLens folder"):
        movielens.load(tmp_path)


def test_amazon_2018_reviews_and_metadata(tmp_path, store):
    path = datafiles.amazon_2018(tmp_path)
    report = store.ingest(amazon_reviews.load(path))
    assert report.platforms_added == ["amazon-arts-crafts-and-sewing"] and report.events_added == 3
    platform = "amazon-arts-crafts-and-sewing"
    catalog = store.catalog(platform).set_index("item_id")
    assert catalog.loc["B0001", "category"] == "Arts, Crafts & Sewing > Painting, Drawing & Art Supplies"
    assert catalog.loc["B0001", "attributes"] == "Prismacolor"
    hist = store.history("AUSER1")
    assert [(h.item_id, h.value, h.title) for h in hist] == [
        ("B0001", 5.0, "Prismacolor Premier Colored Pencils, 72 Pack"),
        ("B0002", 4.0, "Strathmore 400 Series Sketch Pad")]
    assert hist[0].timestamp.year == 2018


def test_amazon_2023_uses_parent_asin_and_millisecond_times(tmp_path, store):
    path = datafiles.amazon_2023(tmp_path)
    store.ingest(amazon_reviews.load(path))
    hist = store.history("AGUSER1")
    assert [h.item_id for h in hist] == ["B00P1", "B00P2"]
    assert hist[0].timestamp.year == 2020 and hist[0].title.startswith("Pilot G2")
    catalog = store.catalog("amazon-office-products").set_index("item_id")
    assert catalog.loc["B00P1", "category"] == "Office Products > Writing & Correction Supplies > Pens"
    assert pd.isna(catalog.loc["B00P2", "category"])


def test_amazon_reviews_unknown_layout(tmp_path):
    (tmp_path / "Books.jsonl").write_text('{"who": "x", "what": "y"}\n')
    with pytest.raises(DataError, match="unknown Amazon review layout"):
        amazon_reviews.load(tmp_path)
    with pytest.raises(DataError, match="no Amazon review files"):
        amazon_reviews.load(tmp_path / "..")


def test_missing_dataset_says_where_to_put_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as exc:
        datasets.get("movielens-100k").locate(tmp_path)
    assert str(tmp_path / "movielens-100k") in str(exc.value) and "--download" in str(exc.value)
    with pytest.raises(DatasetNotFoundError) as exc:
        datasets.get("amazon-arts-office").locate(tmp_path)
    assert "--download" not in str(exc.value)


def _zip_of(folder: Path, name: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"{name}/{f.name}")
    return buffer.getvalue()


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_checksums_over_http(tmp_path, http_root):
    root, base = http_root
    source = datafiles.movielens_csv(tmp_path / "src")
    archive = _zip_of(source, "ml-csv")
    (root / "ml-csv.zip").write_bytes(archive)
    (root / "ml-csv.zip.md5").write_text(f"{hashlib.md5(archive).hexdigest()}  ml-csv.zip\n")
    sha = hashlib.sha256((source / "ratings.csv").read_bytes()).hexdigest()
    spec = Dataset("ml-test", "test", "ml-test", movielens.load, ("movies",),
                   Download(f"{base}/ml-csv.zip", "ml-csv", {"ratings.csv": sha}, f"{base}/ml-csv.zip.md5"))
    data_dir = tmp_path / "data"
    target = download(spec, data_dir)
    assert target == data_dir / "ml-test" and (target / "movies.csv").is_file()
    assert [p.name for p in data_dir.iterdir()] == ["ml-test"]  # no temporary leftovers

    (root / "ml-csv.zip.md5").write_text("0" * 32 + "  ml-csv.zip\n")
    with pytest.raises(ChecksumError, match="md5"):
        download(spec, tmp_path / "data2")
    (root / "ml-csv.zip.md5").write_text(f"{hashlib.md5(archive).hexdigest()}\n")
    wrong = replace(spec, download=replace(spec.download, file_sha256={"ratings.csv": "0" * 64}))
    with pytest.raises(ChecksumError, match="sha256"):
        download(wrong, tmp_path / "data3")
    assert not (tmp_path / "data3" / "ml-test").exists()
