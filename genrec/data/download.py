"""Fetch a registered data set from its official URL, verify checksums, and unpack it atomically."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from genrec.data.datasets import Dataset
from genrec.errors import GenrecError


class ChecksumError(GenrecError):
    pass


def _fetch(url: str, target: Path, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                          TransferSpeedColumn(), transient=True) as progress:
                task = progress.add_task(f"download {url.rsplit('/', 1)[-1]}", total=total)
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    progress.advance(task, len(chunk))
    except OSError as exc:
        raise GenrecError(f"cannot download {url}: {exc}") from exc


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download(dataset: Dataset, data_dir: Path, *, timeout: float = 60.0) -> Path:
    """Download, verify and unpack ``dataset`` into ``data_dir/<folder>``; returns that folder."""
    spec = dataset.download
    if spec is None:
        raise GenrecError(f"data set {dataset.name!r} has no official download URL; put its files in "
                          f"{dataset.path(data_dir)}")
    target = dataset.path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=f".{dataset.name}-") as tmp:
        archive = Path(tmp) / "archive.zip"
        _fetch(spec.url, archive, timeout)
        if spec.md5_url:
            md5_file = Path(tmp) / "archive.md5"
            _fetch(spec.md5_url, md5_file, timeout)
            expected = md5_file.read_text().split()[0].strip().lower()
            actual = _digest(archive, "md5")
            if actual != expected:
                raise ChecksumError(f"{spec.url}: md5 {actual} does not match the published {expected}")
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(unpacked)
        except zipfile.BadZipFile as exc:
            raise ChecksumError(f"{spec.url}: not a valid zip archive ({exc})") from exc
        folder = unpacked / spec.folder_in_zip
        if not folder.is_dir():
            raise GenrecError(f"{spec.url}: the archive has no folder {spec.folder_in_zip!r}")
        for name, sha in spec.file_sha256.items():
            actual = _digest(folder / name, "sha256") if (folder / name).is_file() else "missing"
            if actual != sha:
                raise ChecksumError(f"{spec.url}: {name} sha256 {actual} does not match the expected {sha}")
        if target.exists():
            shutil.rmtree(target)
        folder.rename(target)
    return target
