"""Evaluation run configs (YAML under eval/configs/): data set, protocol, methods, ablations."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from genrec.config import read_yaml
from genrec.errors import GenrecError
from genrec.evaluation.protocol import Protocol

ABLATIONS = ("history_scope", "zero_shot_platform")
DISPLAY_NAMES = {"mostpop": "MostPop", "itemknn": "ItemKNN", "sasrec": "SASRec", "content": "ContentOnly",
                 "genrec": "genrec", "fusion": "genrec-fused",
                 "rerank": "genrec-rerank"}


@dataclass
class MethodSpec:
    name: str  # registry name: mostpop, itemknn, sasrec, content, genrec, fusion, rerank, pipeline
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

    def to_dict(self) -> dict:
        data = asdict(self)
        data["protocol"] = self.protocol.to_dict()
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
    methods = []
    for i, entry in enumerate(raw["methods"]):
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        try:
            methods.append(MethodSpec(**entry))
        except TypeError as exc:
            raise GenrecError(f"{where}: methods[{i}]: {exc}") from exc
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
    return EvalConfig(name=raw["name"], dataset=raw["dataset"], protocol=protocol, methods=methods,
                      ablations=ablations, zero_shot_platforms=list(raw.get("zero_shot_platforms") or []),
                      bootstrap=int(raw.get("bootstrap", 1000)), comparisons=comparisons, source=source)
