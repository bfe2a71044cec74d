"""Small hand-written data files in the public layouts genrec reads, written into a test's folder.

They are generated rather than committed so that no file in the repository looks like a copy of a real data set.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

U_ITEM_FLAGS = 19


def _flags(*on: int) -> str:
    return "|".join("1" if i in on else "0" for i in range(U_ITEM_FLAGS))


def movielens_100k(root: Path) -> Path:
    path = root / "ml-100k"
    path.mkdir(parents=True)
    (path / "u.data").write_text("1\t1\t5\t874965758\n1\t2\t3\t876893171\n2\t1\t4\t888550871\n"
                                 "2\t3\t2\t888551000\n3\t2\t5\t880000000\n")
    items = [f"1|Toy Story (1995)|01-Jan-1995||http://imdb/1|{_flags(3, 4, 5)}",
             f"2|GoldenEye (1995)|01-Jan-1995||http://imdb/2|{_flags(1, 2, 16)}",
             f"3|Caf\xe9 au lait (1993)|01-Jan-1993||http://imdb/3|{_flags(8)}"]
    (path / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    return path


def movielens_1m(root: Path) -> Path:
    path = root / "ml-1m"
    path.mkdir(parents=True)
    (path / "ratings.dat").write_bytes(b"1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    (path / "movies.dat").write_bytes("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                                      "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
                                      "7::Sabrina (1995)::Comedy|Romance\n".encode("latin-1"))
    return path


def movielens_csv(root: Path) -> Path:
    path = root / "ml-csv"
    path.mkdir(parents=True)
    (path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n"
                                      "2,1,3.5,964982000\n2,2,5.0,964983000\n")
    (path / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children\n"
                                     "2,Jumanji (1995),Adventure|Children|Fantasy\n"
                                     '3,"Grumpier Old Men, The (1995)",(no genres listed)\n')
    return path


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def amazon_2018(root: Path) -> Path:
    path = root / "amazon-2018"
    path.mkdir(parents=True)
    reviews = [
        {"overall": 5.0, "verified": True, "reviewerID": "AUSER1", "asin": "B0001", "reviewText": "great",
         "unixReviewTime": 1514764800},
        {"overall": 4.0, "verified": True, "reviewerID": "AUSER1", "asin": "B0002", "unixReviewTime": 1517443200},
        {"overall": 2.0, "verified": False, "reviewerID": "AUSER2", "asin": "B0001", "unixReviewTime": 1519862400},
    ]
    with gzip.open(path / "Arts_Crafts_and_Sewing.json.gz", "wt") as fh:
        fh.write(_jsonl(reviews))
    meta = [
        {"asin": "B0001", "title": "Prismacolor Premier Colored Pencils, 72 Pack",
         "category": ["Arts, Crafts &amp; Sewing", "Painting, Drawing &amp; Art Supplies"],
         "brand": "Prismacolor", "description": ["Soft, thick cores"]},
        {"asin": "B0002", "title": "Strathmore 400 Series Sketch Pad", "category": ["Arts, Crafts &amp; Sewing"],
         "brand": "Strathmore", "description": []},
    ]
    (path / "meta_Arts_Crafts_and_Sewing.json").write_text(_jsonl(meta))
    return path


def amazon_2023(root: Path) -> Path:
    path = root / "amazon-2023"
    path.mkdir(parents=True)
    reviews = [
        {"rating": 5.0, "title": "Love it", "text": "x", "asin": "B00V1", "parent_asin": "B00P1",
         "user_id": "AGUSER1", "timestamp": 1588687728923, "verified_purchase": True},
        {"rating": 3.0, "title": "ok", "text": "y", "asin": "B00V2", "parent_asin": "B00P2",
         "user_id": "AGUSER1", "timestamp": 1588787728923, "verified_purchase": True},
        {"rating": 4.0, "title": "fine", "text": "z", "asin": "B00V3", "parent_asin": "B00P1",
         "user_id": "AGUSER2", "timestamp": 1598687728923, "verified_purchase": False},
    ]
    (path / "Office_Products.jsonl").write_text(_jsonl(reviews))
    meta = [
        {"main_category": "Office Products", "title": "Pilot G2 Gel Pens, Fine Point, Black, 12 Pack",
         "description": ["Gel ink"], "store": "PILOT",
         "categories": ["Office Products", "Writing & Correction Supplies", "Pens"], "parent_asin": "B00P1"},
        {"main_category": "Office Products", "title": "Post-it Notes, 3x3 in, 12 Pads", "description": [],
         "store": "Post-it", "categories": [], "parent_asin": "B00P2"},
    ]
    with gzip.open(path / "meta_Office_Products.jsonl.gz", "wt") as fh:
        fh.write(_jsonl(meta))
    return path


def catalog(platform: str, item_ids: list[str]):
    """A canonical items frame (the store's catalog rows) titled "Item <id>", for stores built in a test."""
    import pandas as pd

    return pd.DataFrame({"platform": platform, "item_id": item_ids, "title": [f"Item {i}" for i in item_ids],
                         "description": None, "category": None, "attributes": None, "year": None, "_file": "catalog",
                         "_line": range(1, len(item_ids) + 1)})
