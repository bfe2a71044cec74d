"""The recommender: candidate sources -> pool -> LLM scoring -> fusion, described by a ``PipelineSpec`` and saved
as one folder.

``Pipeline`` is what every entry point runs: ``genrec fit`` fits it on the store and saves it, ``genrec
recommend|serve`` load it, and the evaluation ranks test cases with the very same object (``fit``/``score`` are
the harness's ``Method`` protocol). A saved folder holds ``pipeline.yaml`` (the spec), ``sources/<name>/`` (each
fitted source), ``fusion.json`` (the tuned weights and how they were chosen), ``titles.pkl`` (the catalog titles
the LLM's prompts name) and ``fit.json`` (validation metrics, the store fingerprint, the time it was fitted).
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from genrec.config import read_yaml
from genrec.errors import ConflictError, GenrecError, NotFoundError
from genrec.pipeline.fusion import LLM, Fusion, FusionSpec, TuningCase, order, scale_rows, tune, tuning_cases
from genrec.pipeline.pool import Pool, candidate_pool
from genrec.pipeline.scorer import LLMScorer, LLMSpec
from genrec.pipeline.sources import CandidateSource, build
from genrec.pipeline.sources.base import CandidateSource as _Base
from genrec.pipeline.types import Context, EvalCase, HistoryScope, Interaction, ScoredItem, TrainData

SPEC_FILE = "pipeline.yaml"
FUSION_FILE = "fusion.json"
TITLES_FILE = "titles.pkl"
FIT_FILE = "fit.json"
LEAD = 10.0  # pooled items score LEAD - position / pool size: above every non-candidate (scaled to [0, 1])


@dataclass
class SourceSpec:
    """One candidate source: its ``kind`` (popularity, itemknn, sasrec, content, textseq, generation), a unique ``name``
    (default: the kind), how many items it proposes (``n``) and its own ``options``."""

    kind: str
    name: str | None = None
    n: int = 50
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.name or self.kind
        if self.n < 1:
            raise GenrecError(f"source {self.name!r}: n must be at least 1, got {self.n}")


@dataclass
class PipelineSpec:
    """What to build. ``dataset`` and ``protocol`` say what ``genrec fit`` fits on (the protocol's training data;
    its validation cases tune the fusion); ``llm: null`` is a pipeline of classic sources only."""

    name: str
    sources: list[SourceSpec]
    dataset: str | None = None
    protocol: dict[str, Any] = field(default_factory=dict)
    history_scope: HistoryScope = "cross"
    llm: LLMSpec | None = None
    fusion: FusionSpec = field(default_factory=FusionSpec)

    def __post_init__(self) -> None:
        if not self.sources:
            raise GenrecError(f"pipeline {self.name!r}: at least one candidate source is needed")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names) or LLM in names:
            raise GenrecError(f"pipeline {self.name!r}: source names must be unique and not {LLM!r}: {names}")
        if self.history_scope not in ("cross", "target"):
            raise GenrecError(f"history_scope must be 'cross' or 'target', got {self.history_scope!r}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "pipeline spec") -> PipelineSpec:
        if not isinstance(raw, dict):
            raise GenrecError(f"{where}: expected a mapping at the top level")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(raw) - known
        if unknown:
            raise GenrecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: "
                              f"{', '.join(sorted(known))}")
        if "name" not in raw or "sources" not in raw:
            raise GenrecError(f"{where}: 'name' and 'sources' are required")
        try:
            sources = [SourceSpec(**({"kind": s} if isinstance(s, str) else s)) for s in raw["sources"]]
            llm = LLMSpec(**raw["llm"]) if raw.get("llm") else None
            fusion = FusionSpec(**(raw.get("fusion") or {}))
            rest = {k: v for k, v in raw.items() if k not in ("sources", "llm", "fusion")}
            return cls(sources=sources, llm=llm, fusion=fusion, **rest)
        except TypeError as exc:
            raise GenrecError(f"{where}: {exc}") from exc

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineSpec:
        return cls.from_dict(read_yaml(path, "pipeline spec"), where=str(path))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Pipeline:
    """Candidate sources, the LLM scorer and the fusion of one spec; see the module docstring."""

    def __init__(self, spec: PipelineSpec, *, store=None, embedder: object | None = None,
                 cache_dir: Path | None = None) -> None:
        self.spec = spec
        self.store, self._embedder, self._explainer = store, embedder, None
        self.name = spec.name
        self.history_scope = spec.history_scope
        self._llms: dict[str, Any] = {}  # loaded LLMs by their settings (the scorer's is its own)
        self.sources: dict[str, CandidateSource] = {
            s.name: build(s.kind, s.options, spec.history_scope, **self._resources()) for s in spec.sources}
        stored = [name for name, source in self.sources.items() if source.needs_store]
        if stored and store is None:
            raise GenrecError(f"pipeline {spec.name!r}: source(s) {', '.join(stored)} read the event store (the "
                              "catalogs the LLM's titles are grounded in): it needs the store")
        self.scorer: LLMScorer | None = None
        if spec.llm is not None:
            if store is None:
                raise GenrecError(f"pipeline {spec.name!r} scores with an LLM: it needs the event store")
            self.scorer = LLMScorer(spec.llm, store, history_scope=spec.history_scope, embedder=embedder,
                                    cache_dir=cache_dir)
        self.fusion: Fusion | None = None
        self.fit_info: dict[str, Any] = {}
        self.info: dict[str, Any] = {}  # what the harness records of the fit
        self.version: str | None = None  # the registry version it was loaded from

    def _resources(self) -> dict[str, Any]:
        """What sources share: the embedder, the store and the loaded LLM (``shared_llm``)."""
        return {"encoder": self._embedder, "store": self.store, "llm_loader": self.shared_llm}

    def shared_llm(self, settings: dict[str, Any] | None = None):
        """The loaded LLM of ``settings`` (``LLMConfig`` fields; ``None``: the spec's ``llm``, else the default
        model), loaded once: the LLM scorer's own model when it names the same one."""
        from genrec.llm import LLM, LLMConfig

        config = LLMConfig(**settings) if settings is not None else \
            self.spec.llm.config if self.spec.llm is not None else LLMConfig()
        if self.scorer is not None and config == self.scorer.spec.config:
            return self.scorer.recommender.llm
        key = json.dumps(config.identity(), sort_keys=True, default=str)
        if key not in self._llms:
            self._llms[key] = LLM.load(config)
        return self._llms[key]

    def update(self, before: Sequence[Interaction], new: Sequence[Interaction]) -> list[str]:
        """Fold one user's new interactions into every source that keeps counts (popularity, ItemKNN) without a
        refit; the names of the sources updated (the others learn them at the next fit)."""
        return [name for name, source in self.sources.items() if source.update(before, new)]

    def add_platform(self, platform: str, items: Sequence[str], titles: Mapping[tuple[str, str], str],
                     details: Mapping[tuple[str, str], str] | None = None) -> None:
        """Make a platform onboarded after fitting (its catalog ``items``, ``titles``: ``(platform, item_id)`` ->
        title) rankable without a refit: the text-aware sources score its items from their titles, popularity and
        item-kNN start it with no counts (posted events fill them). Refused, changing nothing, when a source cannot
        take a new platform (SASRec, content: refit), the platform is known or an item has no title."""
        self.check_add_platform(platform)
        if not items:
            raise GenrecError(f"pipeline {self.name!r}: platform {platform!r} has an empty catalog")
        untitled = [item for item in items if not (titles.get((platform, item)) or "").strip()]
        if untitled:
            raise GenrecError(f"pipeline {self.name!r}: {len(untitled)} item(s) of platform {platform!r} have no "
                              f"title, e.g. {', '.join(map(repr, untitled[:3]))}")
        # text-aware sources first: embedding is the step that can still fail, before any source has changed
        for source in sorted(self.sources.values(), key=lambda s: s.kind != "textseq"):
            source.add_platform(platform, items, titles, details)
        self.titles = {**self.titles, **{(platform, item): titles[(platform, item)] for item in items}}
        if self.scorer is not None:
            self.scorer.titles = self.titles
        self.fit_info.setdefault("added_platforms", []).append(
            {"platform": platform, "items": len(items), "added_at": datetime.now(UTC).isoformat(timespec="seconds")})

    def check_add_platform(self, platform: str) -> None:
        """``add_platform``'s refusals that need no catalog: a known platform, a source that cannot take one."""
        if any(source._catalog_known(platform) for source in self.sources.values()):
            raise ConflictError(f"pipeline {self.name!r} already ranks platform {platform!r}")
        unable = [f"{name} ({source.kind})" for name, source in self.sources.items() if not source.adds_platforms]
        if unable:
            raise GenrecError(f"pipeline {self.name!r}: {', '.join(unable)} cannot score a platform added after "
                              f"fitting; refit the pipeline to rank {platform!r}")

    def refresh(self, train: TrainData, new: Mapping[str, Sequence[Interaction]], *, steps: int = 10_000,
                valid_cases: Sequence[EvalCase] | None = None) -> dict[str, str]:
        """Bring every source up to ``train`` from what it learned (``new``: each user's interactions since the
        last fit or refresh, the end of their sequence in ``train``): counts updated, new catalog items taken on,
        sequential models fine-tuned for ``steps`` batches. With ``valid_cases`` (events none of the sources
        learned) the fusion is tuned again on them, as a fit tunes it, since the sources' relative strength moves
        as they learn; without, the weights stay. Returns how each source was brought up to date
        (``CandidateSource.refresh``)."""
        how = {name: source.refresh(train, new, steps=steps) for name, source in self.sources.items()}
        if self.scorer is not None:
            self.scorer.fit(train)
        self.titles = dict(train.titles)
        if valid_cases:
            self.tune_fusion(valid_cases)
            self.info = {"fusion": self.fusion.to_dict()}
        self.fit_info["refreshed_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        return how

    def share_scorer(self, other: Pipeline) -> None:
        """Score with ``other``'s LLM scorer (its loaded model and score caches) when both name the same LLM: a
        second version of one pipeline then loads no second model (nor do its generation sources, which share
        ``other``'s loaded LLMs)."""
        other._llms.update(self._llms)
        self._llms = other._llms
        if self.scorer is not None and other.scorer is not None and self.spec.llm == other.spec.llm:
            self.scorer = other.scorer
            self.scorer.titles = self.titles

    @property
    def searches_fusion(self) -> bool:
        """Whether the fusion is searched on validation cases (not fixed in the spec, more than one component)."""
        return self.spec.fusion.fixed is None and len(self.components) > 1

    @property
    def components(self) -> list[str]:
        return [*self.sources, *([LLM] if self.scorer else [])]

    # -- fitting ---------------------------------------------------------------------------------------
    def fit(self, train: TrainData, valid_cases: Sequence[EvalCase] | None = None, *,
            progress: bool = False) -> None:
        """Fit every source on ``train`` (``valid_cases`` for early stopping), then tune the fusion on the
        validation cases of a seeded sample of users (``progress``: a bar over the LLM's tuning cases)."""
        started = time.perf_counter()
        for source in self.sources.values():
            source.fit(train, valid_cases)
        if self.scorer is not None:
            self.scorer.fit(train)
        self.titles = dict(train.titles)
        self.tune_fusion(valid_cases, progress=progress)
        self.fit_info = {"fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
                         "fit_seconds": round(time.perf_counter() - started, 2),
                         "train_users": len(train.sequences),
                         "train_interactions": sum(len(s) for s in train.sequences.values()),
                         "valid_cases": len(valid_cases or [])}
        self.info = {"fusion": self.fusion.to_dict()}

    def tune_fusion(self, valid_cases: Sequence[EvalCase] | None, *, progress: bool = False) -> None:
        """Set the fusion: the spec's fixed weights, the single component's, or the weights and calibration
        searched by NDCG@10 on the validation cases of a seeded sample of users (``progress``: a bar over the
        LLM's tuning cases)."""
        fixed = self.spec.fusion.fixed
        if fixed is not None:
            unknown = set(fixed["weights"]) - set(self.components)
            if unknown:
                raise GenrecError(f"pipeline {self.name!r}: fusion.fixed names unknown component(s) "
                                  f"{', '.join(sorted(unknown))}; components: {', '.join(self.components)}")
            self.fusion = Fusion({c: float(fixed["weights"].get(c, 0.0)) for c in self.components},
                                 float(fixed.get("calibration", 0.0)),
                                 report={"rule": "fixed in the spec", **{k: v for k, v in fixed.items()
                                                                         if k not in ("weights", "calibration")}})
        elif not self.searches_fusion:
            self.fusion = Fusion({self.components[0]: 1.0}, report={"rule": "a single component"})
        else:
            tune_on = tuning_cases(valid_cases or [], self.spec.fusion.tune_users, self.spec.fusion.seed)
            if not tune_on:
                raise GenrecError(f"pipeline {self.name!r}: tuning the fusion needs validation cases")
            cases = self._tuning_cases(tune_on, progress)
            calibrations = self.spec.llm.calibrations if self.spec.llm else [0.0]
            self.fusion = tune(cases, self.components, self.spec.fusion, calibrations)

    def _tuning_cases(self, cases: Sequence[EvalCase], progress: bool = False) -> list[TuningCase]:
        from tqdm.auto import tqdm

        out = []
        bar = tqdm(total=len(cases), desc="tuning cases", unit="case", disable=not progress)
        for platform in sorted({c.platform for c in cases}):
            batch = [c for c in cases if c.platform == platform]
            for case, (pool, llm, priors) in zip(batch, self._pools(batch, platform, bar), strict=True):
                components = dict(pool.scores)
                if llm is not None:
                    components[LLM] = llm
                target = pool.items.index(case.target) if case.target in pool.items else None
                out.append(TuningCase(components, priors, target))
        bar.close()
        return out

    # -- ranking ---------------------------------------------------------------------------------------
    def _pools(self, contexts: Sequence[Context], platform: str, bar=None, *,
               candidates: Sequence[str] | None = None, exclude: Sequence[str] = (),
               ) -> list[tuple[Pool, np.ndarray | None, np.ndarray | None]]:
        """Per context: its candidate pool (``candidates``: only these items), the LLM's raw scores of the pool and
        their title priors. The user's own items and ``exclude`` never enter a pool."""
        catalog = self._catalog(platform)
        rows = {name: source.score(contexts, platform) for name, source in self.sources.items()}
        floors = {name: source.floor for name, source in self.sources.items() if source.floor is not None}
        n: int | dict[str, int] = {s.name: s.n for s in self.spec.sources}
        keep = None
        if candidates is not None:
            known = set(catalog)
            unknown = [item for item in candidates if item not in known]
            if unknown:
                raise NotFoundError(f"candidates not in the {platform!r} catalog: {', '.join(unknown[:5])}")
            keep, n = set(candidates).__contains__, len(set(candidates))
        out = []
        for r, context in enumerate(contexts):
            pool = candidate_pool({name: rows[name][r] for name in rows}, catalog, context.owned() | set(exclude), n,
                                  keep=keep, floors=floors)
            llm = priors = None
            if self.scorer is not None and pool.items:
                llm = self.scorer.score(context, pool.items)
                priors = self.scorer.priors(platform, pool.items)
            out.append((pool, llm, priors))
            if bar is not None:
                bar.update()
        return out

    def rank(self, contexts: Sequence[Context], platform: str, *, candidates: Sequence[str] | None = None,
             exclude: Sequence[str] = ()) -> list[tuple[Pool, np.ndarray, np.ndarray | None]]:
        """Per context: its pool, the fused score of each pooled item and the LLM's calibrated scores."""
        if self.fusion is None:
            raise RuntimeError(f"pipeline {self.name!r}: fit() or load() first")
        out = []
        for pool, llm, priors in self._pools(contexts, platform, candidates=candidates, exclude=exclude):
            components = dict(pool.scores)
            if llm is not None:
                components[LLM] = llm
            fused = self.fusion.combine(components, priors) if pool.items else np.zeros(0)
            calibrated = llm - self.fusion.calibration * priors if llm is not None else None
            out.append((pool, fused, calibrated))
        return out

    def score(self, cases: Sequence[Context], platform: str) -> np.ndarray:
        """Full-catalog scores (the harness's ``Method`` protocol): the pool in fused order leads, every other
        item follows in the first source's order."""
        catalog = self._catalog(platform)
        position = {item: j for j, item in enumerate(catalog)}
        first = next(iter(self.sources.values())).score(cases, platform).astype(np.float64)
        out = scale_rows(first)
        for row, (pool, fused, _) in enumerate(self.rank(cases, platform)):
            if not pool.items:
                continue
            columns = np.array([position[item] for item in pool.items], dtype=int)
            ranked = order(fused)
            out[row, columns[ranked]] = LEAD - np.arange(len(ranked)) / len(ranked)
        return out.astype(np.float32)

    def recommend(self, context: Context, k: int = 10, *, explain: bool = False,
                  candidates: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> list[ScoredItem]:
        """The ``k`` best pooled items for one context, each with every component's score (and, with
        ``explain``, a rationale citing the user's history: ``genrec.pipeline.explain``). ``candidates``: rank
        only these items; ``exclude``: items never to recommend (besides the user's own)."""
        if k < 1:
            raise GenrecError(f"k must be at least 1, got {k}")
        reasons = {name: source.no_preference(context) for name, source in self.sources.items()}
        if all(reasons.values()):  # no source can rank for this context: an error, not an arbitrary order
            raise GenrecError(f"pipeline {self.name!r} cannot rank {context.platform!r} items for user "
                              f"{context.user_id!r}: " + "; ".join(f"{n}: {r}" for n, r in reasons.items()))
        [ranked] = self.rank([context], context.platform, candidates=candidates, exclude=exclude)
        items = self._top(ranked, context.platform, k)
        return self.explain(context, items) if explain else items

    def recommend_many(self, contexts: Sequence[Context], platform: str, k: int = 10) -> list[list[ScoredItem]]:
        """``recommend`` (no rationales) for many contexts of one platform at once: the sources score them as one
        batch (``genrec batch`` runs this)."""
        if k < 1:
            raise GenrecError(f"k must be at least 1, got {k}")
        return [self._top(ranked, platform, k) for ranked in self.rank(contexts, platform)]

    def _top(self, ranked: tuple[Pool, np.ndarray, np.ndarray | None], platform: str, k: int) -> list[ScoredItem]:
        pool, fused, calibrated = ranked
        items = []
        for rank, j in enumerate(order(fused)[:k], 1):
            item = pool.items[j]
            items.append(ScoredItem(
                rank=rank, item_id=item, title=self.titles.get((platform, item), ""), platform=platform,
                score=float(fused[j]), sources={name: float(values[j]) for name, values in pool.scores.items()},
                proposed_by=tuple(pool.proposed_by[item]),
                llm=None if calibrated is None else float(calibrated[j])))
        return items

    def explain(self, context: Context, items: Sequence[ScoredItem]) -> list[ScoredItem]:
        """``items`` (of ``context.platform``) with the explain stage's rationales citing the context's history."""
        [out] = self.explain_many([(context, items)])
        return out

    def explain_many(self, lists: Sequence[tuple[Context, Sequence[ScoredItem]]]) -> list[list[ScoredItem]]:
        """``explain`` for several (context, items) pairs with one batched generation."""
        return self.explainer.explain_many([
            (items, [self.titles.get((x.platform, x.item_id), "") for x in context.history],
             self._verb(context.platform)) for context, items in lists])

    @property
    def explainer(self):
        """The explain stage, on the scorer's LLM and embedder (the default ones for a pipeline without LLM)."""
        if self._explainer is None:
            from genrec.pipeline.explain import Explainer
            from genrec.prompts import PromptTemplates

            if self.scorer is not None:
                llm, embedder = self.scorer.recommender.llm, self.scorer.recommender.embedder
            else:
                from genrec.embedding import Embedder

                llm, embedder = self.shared_llm(), self._embedder or Embedder()
            self._explainer = Explainer(llm, embedder, PromptTemplates(), list(self.titles.values()),
                                        names=sorted({platform for platform, _ in self.titles}))
        return self._explainer

    def _verb(self, platform: str) -> str:
        from genrec.data.schema import default_verb

        if self.store is not None:
            known = {p.name: p for p in self.store.platforms()}.get(platform)
            if known is not None and known.verb:
                return known.verb
        return default_verb(platform)

    def _catalog(self, platform: str) -> list[str]:
        return next(iter(self.sources.values()))._catalog(platform)

    # -- save / load -----------------------------------------------------------------------------------
    def save(self, directory: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
        """Write the pipeline folder (into a temporary sibling first, so a failed save leaves nothing behind)."""
        if self.fusion is None:
            raise RuntimeError(f"pipeline {self.name!r}: fit() before save()")
        directory = Path(directory)
        tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
        if tmp.exists():
            _remove(tmp)
        tmp.mkdir(parents=True)
        (tmp / SPEC_FILE).write_text(yaml.safe_dump(self.spec.to_dict(), sort_keys=False))
        for name, source in self.sources.items():
            source.save(tmp / "sources" / name)
        (tmp / FUSION_FILE).write_text(json.dumps(self.fusion.to_dict(), indent=2) + "\n")
        with (tmp / TITLES_FILE).open("wb") as fh:
            pickle.dump(self.titles, fh, protocol=pickle.HIGHEST_PROTOCOL)
        (tmp / FIT_FILE).write_text(json.dumps({**self.fit_info, **(extra or {})}, indent=2, default=str) + "\n")
        if directory.exists():  # the old folder stays whole until the new one is in place
            old = directory.with_name(f"{directory.name}.old-{os.getpid()}")
            if old.exists():
                _remove(old)
            directory.rename(old)
            tmp.rename(directory)
            _remove(old)
        else:
            tmp.rename(directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, store=None, embedder: object | None = None,
             cache_dir: Path | None = None) -> Pipeline:
        """A saved pipeline folder, or a registry folder's champion (``genrec.pipeline.registry``)."""
        from genrec.pipeline.registry import VERSION_FILE, Registry, is_registry

        directory = Registry(directory).champion_path() if is_registry(directory) else Path(directory)
        if not (directory / SPEC_FILE).is_file():
            raise GenrecError(f"{directory} is not a pipeline folder (no {SPEC_FILE}); make one with `genrec fit`")
        spec = PipelineSpec.from_yaml(directory / SPEC_FILE)
        pipeline = cls(spec, store=store, embedder=embedder, cache_dir=cache_dir)
        for name in pipeline.sources:
            pipeline.sources[name] = _Base.load(directory / "sources" / name, **pipeline._resources())
        fused = json.loads((directory / FUSION_FILE).read_text())
        pipeline.fusion = Fusion(fused["weights"], fused["calibration"], fused.get("report", {}))
        with (directory / TITLES_FILE).open("rb") as fh:
            pipeline.titles = pickle.load(fh)  # noqa: S301 - a pipeline folder is the user's own artifact
        if pipeline.scorer is not None:
            pipeline.scorer.titles = pipeline.titles
        pipeline.fit_info = json.loads((directory / FIT_FILE).read_text())
        pipeline.version = directory.name if (directory / VERSION_FILE).is_file() else None
        return pipeline


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path)
