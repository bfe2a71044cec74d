"""Evaluation run configs (YAML under eval/configs/): data set, protocol, methods, ablations.

``dataset`` names a built-in data set, a data set defined in the store (``genrec data register``), or is a
mapping ``{name: NAME, platforms: [a, b]}`` naming the store's platforms directly; the protocol's ``users`` says
whose split is used (``dataset``: the imported one; ``random``: a seeded fraction).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from genrec.config import read_yaml
from genrec.errors import GenrecError
from genrec.evaluation.protocol import Protocol

ABLATIONS = ("history_scope", "zero_shot_platform")
DISPLAY_NAMES = {"mostpop": "MostPop", "itemknn": "ItemKNN", "sasrec": "SASRec", "content": "ContentOnly",
                 "textseq": "TextSeq",
                 "genrec": "genrec", "pipeline": "pipeline"}


@dataclass
class MethodSpec:
    name: str  # registry name: mostpop, itemknn, sasrec, content, textseq, genrec, pipeline
    label: str | None = None  # shown in tables; defaults to the name
    options: dict = field(default_factory=dict)
    sample_users: int | None = None  # evaluate on a seeded sample of this many test users (slow methods)
    scopes: list[str] | None = None  # history scopes (cross, target) for this method [default: the ablations']
    variants: list[str] | None = None  # run only in these variants (main, "zero-shot <platform>") [default: all]

    @property
    def title(self) -> str:
        return self.label or DISPLAY_NAMES.get(self.name, self.name)


@dataclass
class EvalConfig:
    name: str
    dataset: str
    protocol: Protocol
    methods: list[MethodSpec]
    ablations: list[str] = field(default_factory=list)
    zero_shot_platforms: list[str] = field(default_factory=list)
    bootstrap: int = 1000
    comparisons: list[list[str]] = field(default_factory=list)  # [method, baseline] label pairs: paired differences
    source: str | None = None
    dataset_platforms: list[str] | None = None  # the store's platforms named by the config (dataset: {platforms})

    def to_dict(self) -> dict:
        data = asdict(self)
        data["protocol"] = self.protocol.to_dict()
        if self.dataset_platforms is None:  # configs naming a data set keep the document they always had
            del data["dataset_platforms"]
        return data


def load(path: str | Path) -> EvalConfig:
    return parse(read_yaml(path, "evaluation config"), source=str(path))


def parse(raw: dict, source: str | None = None) -> EvalConfig:
    where = source or "config"
    if not isinstance(raw, dict):
        raise GenrecError(f"{where}: expected a mapping at the top level")
    known = {"name", "dataset", "protocol", "methods", "ablations", "zero_shot_platforms", "bootstrap", "comparisons"}
    unknown = set(raw) - known
    if unknown:
        raise GenrecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    for key in ("name", "dataset", "methods"):
        if key not in raw:
            raise GenrecError(f"{where}: missing '{key}'")
    try:
        protocol = Protocol.from_dict(raw.get("protocol") or {})
    except (TypeError, ValueError) as exc:
        raise GenrecError(f"{where}: protocol: {exc}") from exc
    dataset, dataset_platforms = _dataset(raw["dataset"], where)
    methods = []
    for i, entry in enumerate(raw["methods"]):
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        try:
            methods.append(MethodSpec(**entry))
        except TypeError as exc:
            raise GenrecError(f"{where}: methods[{i}]: {exc}") from exc
        if methods[-1].name not in DISPLAY_NAMES:
            raise GenrecError(f"{where}: methods[{i}]: unknown method {methods[-1].name!r}; known: "
                              f"{', '.join(DISPLAY_NAMES)}")
        bad_scopes = set(methods[-1].scopes or []) - {"cross", "target"}
        if bad_scopes:
            raise GenrecError(f"{where}: methods[{i}]: unknown scope(s) {', '.join(sorted(bad_scopes))}; "
                              "known: cross, target")
    ablations = list(raw.get("ablations") or [])
    bad = set(ablations) - set(ABLATIONS)
    if bad:
        raise GenrecError(f"{where}: unknown ablation(s) {', '.join(sorted(bad))}; known: {', '.join(ABLATIONS)}")
    comparisons = list(raw.get("comparisons") or [])
    titles = {m.title for m in methods}
    for i, pair in enumerate(comparisons):
        if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            raise GenrecError(f"{where}: comparisons[{i}]: expected [method, baseline] (two method labels), "
                              f"got {pair!r}")
        missing = [x for x in pair if x not in titles]
        if missing:
            raise GenrecError(f"{where}: comparisons[{i}]: {', '.join(missing)} not among the config's methods")
    return EvalConfig(name=raw["name"], dataset=dataset, protocol=protocol, methods=methods,
                      ablations=ablations, zero_shot_platforms=list(raw.get("zero_shot_platforms") or []),
                      bootstrap=int(raw.get("bootstrap", 1000)), comparisons=comparisons, source=source,
                      dataset_platforms=dataset_platforms)


def _dataset(value: object, where: str) -> tuple[str, list[str] | None]:
    """``dataset``: a name, or ``{name, platforms}``."""
    if isinstance(value, str) and value.strip():
        return value, None
    if isinstance(value, dict):
        unknown = set(value) - {"name", "platforms"}
        platforms = value.get("platforms")
        if (not unknown and isinstance(value.get("name"), str) and isinstance(platforms, list) and platforms
                and all(isinstance(p, str) and p for p in platforms)):
            return value["name"], list(platforms)
    raise GenrecError(f"{where}: dataset: expected a data set name or {{name: NAME, platforms: [a, b]}}, "
                      f"got {value!r}")
