"""The recommender: candidate sources -> pool -> LLM scoring -> fusion, fitted, saved, served and evaluated as one
object (``Pipeline``), described by a ``PipelineSpec`` (YAML; shipped ones under ``pipelines/``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from genrec.errors import GenrecError
from genrec.pipeline.fusion import Fusion, FusionSpec
from genrec.pipeline.pool import Pool, candidate_pool
from genrec.pipeline.scorer import LLMScorer, LLMSpec
from genrec.pipeline.sources import CandidateSource, ContentOnly, ItemKNN, MostPop, SASRec
from genrec.pipeline.spec import Pipeline, PipelineSpec, SourceSpec
from genrec.pipeline.types import Context, EvalCase, Interaction, ScoredItem, TrainData

SPEC_PACKAGE = "genrec._pipelines"
DEFAULTS_FILE = "defaults.yaml"  # data set -> the shipped spec it gets when none is named


def specs_dir() -> Path:
    """The shipped pipeline specs: the top-level ``pipelines/`` folder, installed as ``genrec._pipelines``."""
    spec = importlib.util.find_spec(SPEC_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[2] / "pipelines"


def shipped_names() -> list[str]:
    return sorted(p.stem for p in specs_dir().glob("*.yaml") if p.name != DEFAULTS_FILE)


def shipped_spec(name: str) -> Path:
    """The path of a shipped spec by name (``amazon-arts-office-hybrid`` or ``pipelines/....yaml``)."""
    path = specs_dir() / f"{Path(name).stem}.yaml"
    if not path.is_file() or path.name == DEFAULTS_FILE:
        known = shipped_names()
        raise GenrecError(f"no pipeline spec {name!r}: not a file, and not a shipped spec ({', '.join(known)})")
    return path


__all__ = ["CandidateSource", "ContentOnly", "Context", "EvalCase", "Fusion", "FusionSpec", "Interaction", "ItemKNN",
           "LLMScorer", "LLMSpec", "MostPop", "Pipeline", "PipelineSpec", "Pool", "SASRec", "ScoredItem",
           "SourceSpec", "TrainData", "candidate_pool", "shipped_names", "shipped_spec", "specs_dir"]
