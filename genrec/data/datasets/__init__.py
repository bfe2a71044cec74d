"""The dataset registry: ``genrec data import NAME`` finds a data set's folder and loads it.

Data directory: ``--data-dir`` / ``GENREC_DATA_DIR``, defaulting to ``../shared/data`` when it exists.
MovieLens sets have stable official URLs and can be fetched with ``--download`` (checksum-verified).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from genrec.config import default_data_dir
from genrec.data.datasets import amazon_arts_office, amazon_reviews, movielens
from genrec.data.importers import ImportBatch
from genrec.errors import DatasetNotFoundError, GenrecError

GROUPLENS = "https://files.grouplens.org/datasets/movielens"


@dataclass(frozen=True)
class Download:
    url: str
    folder_in_zip: str
    # sha256 of files inside the archive, checked after extraction (known from a verified copy)
    file_sha256: dict[str, str] = field(default_factory=dict)
    # the archive's md5 is checked against GroupLens' published <url>.md5 companion file
    md5_url: str | None = None


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    folder: str
    loader: Callable[..., ImportBatch]
    platforms: tuple[str, ...]
    download: Download | None = None
    citation: str = ""

    def path(self, data_dir: Path | None = None) -> Path:
        return (data_dir or default_data_dir()) / self.folder

    def locate(self, data_dir: Path | None = None) -> Path:
        path = self.path(data_dir)
        if not path.is_dir() or not any(path.iterdir()):
            how = (f" or run `genrec data import {self.name} --download`" if self.download else "")
            raise DatasetNotFoundError(
                f"data set {self.name!r} not found at {path}. Put its files there (set GENREC_DATA_DIR or "
                f"--data-dir to change the folder){how}.")
        return path


def _movielens(name: str, folder_in_zip: str, description: str, sha: dict[str, str] | None = None) -> Dataset:
    url = f"{GROUPLENS}/{folder_in_zip}.zip"
    return Dataset(
        name=name, description=description, folder=name, loader=movielens.load, platforms=("movies",),
        download=Download(url=url, folder_in_zip=folder_in_zip, file_sha256=sha or {}, md5_url=f"{url}.md5"),
        citation="F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and Context. "
                 "ACM TiiS 5, 4.",
    )


REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in (
        _movielens("movielens-latest-small", "ml-latest-small",
                   "MovieLens latest small (2018): 100,836 ratings, 610 users, 9,742 movies",
                   {"ratings.csv": "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
                    "movies.csv": "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07"}),
        _movielens("movielens-100k", "ml-100k", "MovieLens 100K (1998): 100,000 ratings, 943 users, 1,682 movies"),
        _movielens("movielens-1m", "ml-1m", "MovieLens 1M (2003): 1,000,209 ratings, 6,040 users, 3,706 movies"),
        _movielens("movielens-25m", "ml-25m", "MovieLens 25M (2019): 25M ratings, 162,541 users, 62,423 movies"),
        Dataset(
            name="amazon-arts-office", folder="amazon-arts-office", loader=amazon_arts_office.load,
            platforms=(amazon_arts_office.ARTS.name, amazon_arts_office.OFFICE.name),
            description="Amazon 2018 Arts x Office (URLLM preparation): 9,577 users on both platforms",
            citation="Ni, Li, McAuley (EMNLP 2019); Shen et al., URLLM (2024).",
        ),
        Dataset(
            name="amazon-reviews", folder="amazon-reviews", loader=amazon_reviews.load, platforms=(),
            description="Amazon Review Data 2018/2023 files (<Category>.json[l][.gz] + meta_<Category>...), "
                        "one platform per category",
            citation="Ni, Li, McAuley (EMNLP 2019); Hou et al. (2024).",
        ),
    )
}


def get(name: str) -> Dataset:
    if name not in REGISTRY:
        raise GenrecError(f"unknown data set {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]
