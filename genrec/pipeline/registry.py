"""Versions of a fitted pipeline and which one serves: a registry folder.

Each version is a pipeline folder (``v0001/``, ``v0002/``, ...) with ``version.json`` beside the pipeline's own
files: where it came from (``fit`` or ``refresh`` of a parent version), its data window (the newest event time it
has learned from), the events it held out to be judged on (the next refresh learns them), its metrics on that
slice and the promotion decision. ``registry.json`` names the champion, the version every entry point serves, and
keeps the log of promotions and rollbacks. Every write goes to a temporary file first and is renamed into place,
so a reader (a serving process watching the champion) never sees half a registry.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from genrec.errors import GenrecError, NotFoundError

REGISTRY_FILE = "registry.json"
VERSION_FILE = "version.json"
NAME = re.compile(r"^v(\d{4,})$")


@dataclass
class Version:
    """One registered pipeline: see the module docstring."""

    name: str
    origin: str  # "fit" or "refresh"
    created_at: str
    window_end: float  # seconds since the epoch: the newest event time the version has learned from
    parent: str | None = None
    holdout: list[list[Any]] = field(default_factory=list)  # [user, platform, item, timestamp] judged, not learned
    metrics: dict[str, Any] = field(default_factory=dict)
    decision: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # how a refresh brought each source up to date

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Version:
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


class Registry:
    """A registry folder (created on the first ``add``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- reading -----------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        path = self.root / REGISTRY_FILE
        if not path.is_file():
            return {"champion": None, "log": []}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise GenrecError(f"{path}: not a registry file ({exc})") from exc

    def versions(self) -> list[Version]:
        if not self.root.is_dir():
            return []
        found = sorted((p for p in self.root.iterdir() if NAME.match(p.name) and (p / VERSION_FILE).is_file()),
                       key=lambda p: int(NAME.match(p.name).group(1)))
        return [Version.from_dict(json.loads((p / VERSION_FILE).read_text())) for p in found]

    def version(self, name: str) -> Version:
        path = self.root / name / VERSION_FILE
        if not NAME.match(name) or not path.is_file():
            known = ", ".join(v.name for v in self.versions()) or "none"
            raise NotFoundError(f"no version {name!r} in the registry {self.root} (versions: {known})")
        return Version.from_dict(json.loads(path.read_text()))

    def path(self, name: str) -> Path:
        self.version(name)
        return self.root / name

    def champion(self) -> Version | None:
        name = self._state()["champion"]
        return self.version(name) if name else None

    def champion_path(self) -> Path:
        champion = self.champion()
        if champion is None:
            raise GenrecError(f"the registry {self.root} has no champion yet: register a pipeline with "
                              "`genrec fit --config SPEC --registry DIR`")
        return self.root / champion.name

    def log(self) -> list[dict[str, Any]]:
        return self._state()["log"]

    def stamp(self) -> tuple[int, int] | None:
        """Changes whenever the champion may have changed (cheap: one ``stat``); None without a registry file."""
        try:
            stat = (self.root / REGISTRY_FILE).stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_ino

    # -- writing -----------------------------------------------------------------------------------------
    def add(self, pipeline, *, origin: str, window_end: float, parent: str | None = None,
            holdout: list[list[Any]] | None = None, metrics: dict[str, Any] | None = None,
            decision: dict[str, Any] | None = None, sources: dict[str, str] | None = None) -> Version:
        """Save ``pipeline`` as the next version (not yet the champion: ``promote`` it)."""
        numbers = [int(NAME.match(v.name).group(1)) for v in self.versions()]
        version = Version(f"v{max(numbers, default=0) + 1:04d}", origin, _now(), float(window_end), parent,
                          holdout or [], metrics or {}, decision or {}, sources or {})
        self.root.mkdir(parents=True, exist_ok=True)
        folder = pipeline.save(self.root / f".{version.name}")  # hidden until complete: versions() skips it
        _write(folder / VERSION_FILE, asdict(version))
        folder.rename(self.root / version.name)
        if not (self.root / REGISTRY_FILE).is_file():  # a registry from its first version on, champion or not
            _write(self.root / REGISTRY_FILE, self._state())
        return version

    def promote(self, name: str, *, reason: str = "promoted") -> Version:
        """Make ``name`` the champion (``reason`` goes into the log: promoted, rollback, ...)."""
        version = self.version(name)
        state = self._state()
        state["log"].append({"at": _now(), "event": reason, "version": name, "previous": state["champion"]})
        state["champion"] = name
        _write(self.root / REGISTRY_FILE, state)
        return version

    def rollback(self, name: str) -> Version:
        return self.promote(name, reason="rollback")


def is_registry(folder: str | Path) -> bool:
    """Whether ``folder`` is a registry (rather than one pipeline folder)."""
    return (Path(folder) / REGISTRY_FILE).is_file()


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
