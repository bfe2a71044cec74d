"""MovieLens in any of its public layouts, as one platform of rating events plus a movie catalog.

- ``ratings.csv`` + ``movies.csv`` (ml-latest, ml-latest-small, ml-20m, ml-25m, ml-32m);
- ``ratings.dat`` + ``movies.dat`` with ``::`` separators (ml-1m, ml-10m; ml-1m is latin-1);
- ``u.data`` (tab-separated) + ``u.item`` (``|``-separated, latin-1) (ml-100k).

Every rating is an interaction event (``event = "rating"``, ``value`` = stars); the title keeps its year
("Toy Story (1995)"), which also fills ``year``; genres become the item's category ("|"-separated, the
canonical separator of multi-valued categories).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from genrec.data.importers import ImportBatch, Mapping, events_from_table, items_from_table
from genrec.data.readers import LINE, Table, read_table
from genrec.data.schema import Platform
from genrec.errors import DataError

PLATFORM = Platform("movies", verb="watched", time_kind="time", description="MovieLens movie ratings")
_YEAR = re.compile(r"\((\d{4})\)\s*$")
U_ITEM_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western")


def layout(path: Path) -> str:
    """Which MovieLens layout a folder holds: "csv", "dat" or "100k"."""
    if (path / "ratings.csv").is_file() and (path / "movies.csv").is_file():
        return "csv"
    if (path / "ratings.dat").is_file() and (path / "movies.dat").is_file():
        return "dat"
    if (path / "u.data").is_file() and (path / "u.item").is_file():
        return "100k"
    raise DataError("not a MovieLens folder", file=path,
                    expected="ratings.csv + movies.csv, ratings.dat + movies.dat, or u.data + u.item")


def load(path: Path, *, platform: Platform = PLATFORM, skip_bad_rows: bool = False) -> ImportBatch:
    kind = layout(path)
    if kind == "csv":
        ratings = read_table(path / "ratings.csv", skip_bad_rows=skip_bad_rows)
        movies = read_table(path / "movies.csv", skip_bad_rows=skip_bad_rows)
    elif kind == "dat":
        ratings = _read_double_colon(path / "ratings.dat", ["userId", "movieId", "rating", "timestamp"])
        movies = _read_double_colon(path / "movies.dat", ["movieId", "title", "genres"])
    else:
        ratings = read_table(path / "u.data", "tsv", header=False,
                             column_names=["userId", "movieId", "rating", "timestamp"], skip_bad_rows=skip_bad_rows)
        movies = read_table(path / "u.item", "csv", delimiter="|", header=False, encoding="latin-1",
                            column_names=["movieId", "title", "release", "video_release", "url",
                                          *U_ITEM_GENRES], skip_bad_rows=skip_bad_rows)
        flags = movies.frame[list(U_ITEM_GENRES)] == "1"
        movies.frame["genres"] = flags.apply(lambda row: "|".join(row.index[row.to_numpy()]), axis=1)
    movies.frame["year"] = movies.frame["title"].map(_year)
    movies.frame["category"] = movies.frame["genres"].map(_genres)
    mapping = Mapping(columns={"user_id": "userId", "item_id": "movieId", "value": "rating"},
                      constants={"platform": platform.name, "event": "rating"})
    events, skipped_events = events_from_table(ratings, mapping, timestamp_kind="seconds",
                                               skip_bad_rows=skip_bad_rows)
    items, skipped_items = items_from_table(
        movies, Mapping(columns={"item_id": "movieId"}, constants={"platform": platform.name}),
        skip_bad_rows=skip_bad_rows)
    return ImportBatch(source=f"movielens:{path}", platforms=[platform], events=events, items=items,
                       skipped_rows=ratings.skipped_rows + movies.skipped_rows + skipped_events + skipped_items)


def _year(title: str | None) -> str | None:
    match = _YEAR.search(title or "")
    return match.group(1) if match else None


def _genres(genres: str | None) -> str | None:
    if not genres or genres == "(no genres listed)":
        return None
    return "|".join(g for g in genres.split("|") if g)


def _read_double_colon(path: Path, names: list[str]) -> Table:
    """``::``-separated files (ml-1m, ml-10m): UTF-8 when valid, else latin-1."""
    if not path.is_file():
        raise DataError("file not found", file=path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    rows, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) != len(names):
            raise DataError(f"found {len(fields)} fields", file=path, line=number,
                            expected=f"{len(names)} fields separated by '::' ({', '.join(names)})")
        rows.append(fields)
        lines.append(number)
    if not rows:
        raise DataError("the file is empty", file=path, expected="at least one data row")
    frame = pd.DataFrame(rows, columns=names, dtype="string")
    frame[LINE] = lines
    return Table(path, frame)
