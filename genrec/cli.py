"""The ``genrec`` command: a thin typer + rich layer over the library."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from genrec.config import read_yaml
from genrec.errors import GenrecError

app = typer.Typer(help="genrec: generative cross-platform recommendation with LLMs.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Import, clean, inspect and export the event store.", no_args_is_help=True)
app.add_typer(data_app, name="data")
platform_app = typer.Typer(help="Register platforms (zero-shot onboarding) and list them.", no_args_is_help=True)
app.add_typer(platform_app, name="platform")
console = Console()
err = Console(stderr=True)

DbOption = Annotated[Path | None, typer.Option("--db", help="DuckDB store file [default: $GENREC_DB or "
                                                             "~/.cache/genrec/genrec.duckdb]")]
DataDirOption = Annotated[Path | None, typer.Option("--data-dir", help="Where data sets live [default: "
                                                                         "$GENREC_DATA_DIR or ../shared/data]")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _store(db: Path | None, read_only: bool = False):
    from genrec.data.store import Store

    return Store(db, read_only=read_only)


def _cleaning(config: Path | None, drop_event_type: list[str] | None, no_dedup: bool, min_value: float | None,
              max_per_minute: int | None, k_core_users: int, k_core_items: int, hash_user_ids: bool,
              salt: str | None):
    from genrec.data.cleaning import CleaningConfig

    base = {}
    if config is not None:
        base = read_yaml(config, "cleaning config") or {}
        base = base.get("cleaning", base)
    try:
        cfg = CleaningConfig.from_dict(base)
    except (TypeError, ValueError) as exc:
        raise GenrecError(f"{config}: {exc}") from exc
    if drop_event_type:
        cfg.drop_event_types = tuple(drop_event_type)
    if no_dedup:
        cfg.drop_duplicates = False
    cfg.min_value = min_value if min_value is not None else cfg.min_value
    cfg.max_events_per_minute = max_per_minute or cfg.max_events_per_minute
    cfg.k_core_users = k_core_users or cfg.k_core_users
    cfg.k_core_items = k_core_items or cfg.k_core_items
    cfg.hash_user_ids = hash_user_ids or cfg.hash_user_ids
    cfg.salt = salt or cfg.salt
    return cfg


CleanConfig = Annotated[Path | None, typer.Option("--clean", help="YAML file with cleaning options.")]
DropType = Annotated[list[str] | None, typer.Option("--drop-event-type", help="Event types to drop "
                                                                                "[default: ad_click].")]
NoDedup = Annotated[bool, typer.Option("--keep-duplicates", help="Keep exact duplicate events.")]
MinValue = Annotated[float | None, typer.Option("--min-value", help="Drop events whose value is below this.")]
Burst = Annotated[int | None, typer.Option("--max-events-per-minute", help="Drop bot-like bursts.")]
KUsers = Annotated[int, typer.Option("--k-core-users", help="Keep users with at least this many events.")]
KItems = Annotated[int, typer.Option("--k-core-items", help="Keep items with at least this many events.")]
HashIds = Annotated[bool, typer.Option("--hash-user-ids", help="Replace user ids by salted hashes.")]
Salt = Annotated[str | None, typer.Option("--salt", help="Salt for --hash-user-ids [default: $GENREC_SALT].")]
SkipBad = Annotated[bool, typer.Option("--skip-bad-rows", help="Skip malformed rows (counted) instead of "
                                                               "failing.")]
AllowItems = Annotated[bool, typer.Option("--allow-unknown-items", help="Events may name items missing from the "
                                                                        "catalog: create them with an empty title "
                                                                        "(counted) instead of failing.")]
SamePeople = Annotated[bool, typer.Option("--same-people", help="User ids that already belong to another data set "
                                                                "are the same people (they then belong to both).")]


def _print_import(report, as_json: bool) -> None:
    from dataclasses import asdict

    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if as_json:
        console.print_json(json.dumps(asdict(report) | {"warnings": report.warnings}, default=str))
        return
    console.print(f"[bold]{report.source}[/]: {report.events_added:,} events added "
                  f"({report.events_present:,} already present), {report.items_added:,} items added, "
                  f"{report.items_updated:,} updated, {report.links_added:,} links, {report.splits_set:,} "
                  f"split entries, {report.skipped_rows:,} bad rows skipped, {report.seconds:.2f} s")
    table = Table("cleaning rule", "rows removed", "detail", title="cleaning")
    for rule in report.cleaning.rules:
        table.add_row(rule.rule, f"{rule.removed:,}", rule.detail)
    console.print(table)


@data_app.command("import")
def data_import(
    name: Annotated[str, typer.Argument(help="Registered data set (see `genrec data list`).")],
    db: DbOption = None,
    data_dir: DataDirOption = None,
    path: Annotated[Path | None, typer.Option("--path", help="Read the data set from this folder.")] = None,
    download: Annotated[bool, typer.Option("--download", help="Fetch it from its official URL if missing.")] = False,
    clean: CleanConfig = None, drop_event_type: DropType = None, keep_duplicates: NoDedup = False,
    min_value: MinValue = None, max_events_per_minute: Burst = None, k_core_users: KUsers = 0,
    k_core_items: KItems = 0, hash_user_ids: HashIds = False, salt: Salt = None,
    skip_bad_rows: SkipBad = False, allow_unknown_items: AllowItems = False, same_people: SamePeople = False,
    as_json: JsonOption = False,
) -> None:
    """Import a registered data set into the store (idempotent, transactional); its users belong to NAME."""
    from genrec.data.loading import import_dataset

    cleaning = _cleaning(clean, drop_event_type, keep_duplicates, min_value, max_events_per_minute,
                         k_core_users, k_core_items, hash_user_ids, salt)
    with _store(db) as store:
        report = import_dataset(store, name, data_dir=data_dir, path=path, download=download,
                                cleaning=cleaning, skip_bad_rows=skip_bad_rows,
                                allow_unknown_items=allow_unknown_items, same_people=same_people)
    _print_import(report, as_json)


@data_app.command("import-file")
def data_import_file(
    file: Annotated[Path, typer.Argument(help="CSV, TSV, JSONL or Parquet file (optionally .gz).")],
    kind: Annotated[str, typer.Option("--kind", help="events, items, links or splits")] = "events",
    mapping: Annotated[list[str] | None, typer.Option(
        "--map", help="Column mapping CANONICAL=SOURCE (or CANONICAL:=CONSTANT); repeatable.")] = None,
    platform: Annotated[str | None, typer.Option("--platform", help="Platform of rows whose platform is missing "
                                                                       "(a platform column wins); registered when "
                                                                       "new.")] = None,
    verb: Annotated[str | None, typer.Option("--verb", help="Verb for platforms this import creates (e.g. "
                                                            "watched) [default: by name, else 'interacted "
                                                            "with'].")] = None,
    timestamp_kind: Annotated[str, typer.Option("--timestamp-kind", help="auto, seconds, milliseconds, iso "
                                                                         "or sequence")] = "auto",
    fmt: Annotated[str | None, typer.Option("--format", help="csv, tsv, jsonl or parquet [default: from "
                                                                "the name]")] = None,
    encoding: Annotated[str, typer.Option("--encoding")] = "utf-8",
    delimiter: Annotated[str | None, typer.Option("--delimiter")] = None,
    create_platforms: Annotated[bool, typer.Option("--create-platforms", help="Register unknown platforms "
                                                                              "found in the file (with --verb and, "
                                                                              "for --timestamp-kind sequence, "
                                                                              "sequence time).")] = False,
    dataset: Annotated[str | None, typer.Option("--dataset", help="The data set these users belong to (their "
                                                                  "user-id namespace; see `genrec data "
                                                                  "register`).")] = None,
    same_people: SamePeople = False,
    user_prefix: Annotated[str | None, typer.Option("--user-prefix", help="Prepend this to every user id of the "
                                                                          "file (keeps data sets with the same "
                                                                          "ids apart).")] = None,
    allow_unknown_items: AllowItems = False,
    allow_unknown_users: Annotated[bool, typer.Option("--allow-unknown-users", help="Links and splits may name "
                                                                                    "users without events "
                                                                                    "(counted).")] = False,
    db: DbOption = None,
    clean: CleanConfig = None, drop_event_type: DropType = None, keep_duplicates: NoDedup = False,
    min_value: MinValue = None, max_events_per_minute: Burst = None, k_core_users: KUsers = 0,
    k_core_items: KItems = 0, hash_user_ids: HashIds = False, salt: Salt = None,
    skip_bad_rows: SkipBad = False, as_json: JsonOption = False,
) -> None:
    """Import one generic file (events, items, links or splits) with a column mapping."""
    from genrec.data.importers import file_batch, parse_mapping
    from genrec.data.readers import check_options, read_table
    from genrec.data.schema import Platform, default_verb
    from genrec.data.timestamps import check_kind

    check_kind(timestamp_kind)
    check_options(encoding, delimiter)
    cleaning = _cleaning(clean, drop_event_type, keep_duplicates, min_value, max_events_per_minute,
                         k_core_users, k_core_items, hash_user_ids, salt)
    table = read_table(file, fmt, encoding=encoding, delimiter=delimiter, skip_bad_rows=skip_bad_rows)
    plat = None
    if platform:
        plat = Platform(platform, verb=verb or default_verb(platform),
                        time_kind="sequence" if timestamp_kind == "sequence" else "time")
    batch = file_batch(file, kind=kind, table=table, mapping=parse_mapping(mapping or [], file), platform=plat,
                       timestamp_kind=timestamp_kind, skip_bad_rows=skip_bad_rows)
    batch.dataset, batch.verb = dataset, verb
    with _store(db) as store:
        report = store.ingest(batch, cleaning, create_platforms=create_platforms,
                              allow_unknown_items=allow_unknown_items, allow_unknown_users=allow_unknown_users,
                              same_people=same_people, user_prefix=user_prefix)
    _print_import(report, as_json)


@data_app.command("list")
def data_list(data_dir: DataDirOption = None, db: DbOption = None) -> None:
    """Built-in data sets and whether their files are present; data sets defined in the store."""
    from genrec.config import default_data_dir, default_db_path
    from genrec.data.datasets import REGISTRY

    root = data_dir or default_data_dir()
    table = Table("name", "platforms", "present", "download", "description", title=f"data sets in {root}")
    for d in REGISTRY.values():
        present = d.path(root).is_dir()
        table.add_row(d.name, ", ".join(d.platforms) or "(from files)", "yes" if present else "no",
                      "yes" if d.download else "-", d.description)
    console.print(table)
    if (db or default_db_path()).is_file():
        with _store(db, read_only=True) as store:
            own = store.datasets()
            if own:
                mine = Table("name", "platforms", "user split", "users", "description",
                             title="data sets defined in the store (genrec data register)")
                for d in own:
                    mine.add_row(d.name, ", ".join(d.platforms), "imported" if d.split == "store" else "none",
                                 f"{store.namespace_users(d.name):,}", d.description or "")
                console.print(mine)


@data_app.command("register")
def data_register(
    name: Annotated[str, typer.Argument(help="The data set's name (used by eval configs, train, recommend "
                                             "--dataset).")],
    platforms: Annotated[str | None, typer.Option("--platforms", help="Comma-separated platforms [default: those "
                                                                      "of the users imported with --dataset "
                                                                      "NAME].")] = None,
    split_from_store: Annotated[bool, typer.Option("--split-from-store", help="Its user split is the imported "
                                                                              "one (protocol users: "
                                                                              "dataset).")] = False,
    description: Annotated[str | None, typer.Option("--description")] = None,
    db: DbOption = None,
) -> None:
    """Define a data set from data already in the store, so that eval, train and recommend can use it."""
    from genrec.data.loading import register

    names = [p.strip() for p in (platforms or "").split(",") if p.strip()]
    with _store(db) as store:
        dataset = register(store, name, names or None, split_from_store=split_from_store, description=description)
    split = "the imported user split" if dataset.split == "store" else "no split of its own (use protocol users: " \
        "random or all)"
    console.print(f"[bold]{dataset.name}[/]: platforms {', '.join(dataset.platforms)}; {split}. Use it as "
                  f"`dataset: {dataset.name}` in an eval config or with --dataset {dataset.name}.")


@data_app.command("stats")
def data_stats(
    db: DbOption = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Only this data set's platforms.")] = None,
    platform: Annotated[list[str] | None, typer.Option("--platform", help="Only these platforms.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Per-platform users / items / events / sparsity / history lengths, the user-overlap matrix and the data
    sets' user-id namespaces (with users shared between data sets)."""
    from genrec.data.loading import dataset_platforms

    with _store(db) as store:
        platforms = list(platform or []) or (dataset_platforms(store, dataset) if dataset else None)
        _show_stats(store, platforms, as_json, title=dataset)


def _show_stats(store, platforms: list[str] | None, as_json: bool, title: str | None = None) -> None:
    from genrec.data.stats import compute

    stats = compute(store, platforms)
    namespaces = store.namespaces()
    overlap_ns = store.namespace_overlap()
    ns_names = namespaces["dataset"].tolist()
    if as_json:
        document = stats.to_dict() | {
            "namespaces": [{"dataset": r.dataset, "users": int(r.users), "events": int(r.events),
                            "platforms": list(r.platforms)} for r in namespaces.itertuples()],
            "namespace_overlap": {a: {b: int(overlap_ns.loc[a, b]) for b in ns_names} for a in ns_names}}
        console.print_json(json.dumps(document))
        return
    table = Table("platform", "users", "catalog items", "items used", "events", "sparsity",
                  "history min / median / mean / p90 / max", title=title or "store")
    for p in stats.platforms:
        table.add_row(p.platform, f"{p.users:,}", f"{p.items_in_catalog:,}", f"{p.items_with_events:,}",
                      f"{p.events:,}", f"{p.sparsity:.4%}",
                      f"{p.history_min} / {p.history_median:g} / {p.history_mean:.1f} / {p.history_p90:g} / "
                      f"{p.history_max}")
    console.print(table)
    names = [p.platform for p in stats.platforms]
    overlap = Table("users on both", *names, title="cross-platform user overlap")
    for a in names:
        overlap.add_row(a, *(f"{stats.overlap[a][b]:,}" for b in names))
    console.print(overlap)
    console.print(f"{len(names)} platform(s), {stats.users:,} users, {stats.events:,} events; "
                  f"{stats.users_on_all_platforms:,} users are on all {len(names)} platform(s)")
    if ns_names:
        spaces = Table("data set", "users", "events", "platforms", *(f"shared with {n}" for n in ns_names),
                       title="user-id namespaces (imports tagged with a data set)")
        for row in namespaces.itertuples():
            spaces.add_row(row.dataset, f"{row.users:,}", f"{row.events:,}", ", ".join(row.platforms),
                           *("-" if b == row.dataset else f"{overlap_ns.loc[row.dataset, b]:,}" for b in ns_names))
        console.print(spaces)


@data_app.command("export")
def data_export(directory: Annotated[Path, typer.Argument(help="Folder for the Parquet files.")],
                db: DbOption = None) -> None:
    """Export every table of the store to Parquet."""
    with _store(db) as store:
        for path in store.export_parquet(directory):
            console.print(f"wrote {path}")


ModelOption = Annotated[str | None, typer.Option("--model", help="Local Hugging Face causal-LM directory or "
                                                                   ".gguf file [default: SmolLM2-135M-Instruct]")]
AdapterOption = Annotated[str | None, typer.Option("--adapter", help="PEFT LoRA adapter directory.")]
AdapterScaleOption = Annotated[float, typer.Option("--adapter-scale", min=0.0,
                                                   help="Multiply the adapter's update: 1 = the tuned model, 0 = "
                                                        "the base model, between = their weights interpolated.")]
DtypeOption = Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu or cuda")]
FourBitOption = Annotated[bool, typer.Option("--4bit", help="Load the LLM in 4-bit (bitsandbytes NF4; CUDA).")]
EngineOption = Annotated[str, typer.Option("--engine", help="transformers (every feature), openvino (CPU "
                                                            "generation from the GGUF file; no scored or catalog "
                                                            "decoding, no adapters), llamacpp (CPU generation and "
                                                            "scoring from the GGUF file; no catalog decoding, no "
                                                            "adapters) or openai (a server: --llm-url)")]
LLMUrlOption = Annotated[str | None, typer.Option("--llm-url", help="Base URL of an OpenAI-compatible server that "
                                                                   "runs the LLM, e.g. http://localhost:8000/v1 "
                                                                   "(vLLM); selects engine openai. --adapter then "
                                                                   "names a LoRA it serves; API key from "
                                                                   "$GENREC_LLM_API_KEY.")]
DecodingOption = Annotated[str | None, typer.Option("--decoding", help="free (generate, then ground), catalog "
                                                                      "(beam search over the target catalog's "
                                                                      "titles) or scored (the LLM ranks popular "
                                                                      "and profile-near candidates) [default: the "
                                                                      "adapter's, else free]")]
CalibrationOption = Annotated[float | None, typer.Option("--calibration", min=0.0, max=1.0,
                                                        help="scored decoding: subtract this share of each "
                                                             "title's likelihood with no profile (0 = raw "
                                                             "likelihood) [default: the adapter's tuned value, "
                                                             "else 0]")]
TemplatesOption = Annotated[Path | None, typer.Option("--templates", help="Folder of Jinja2 templates that "
                                                                            "override the packaged ones.")]


def _recommender(store, model, adapter, dtype, device, four_bit, templates, decoding=None, calibration=None,
                 adapter_scale=1.0, engine="transformers", llm_url=None):
    from genrec.llm import LLMConfig
    from genrec.prompts import PromptTemplates
    from genrec.recommender import Recommender, RecommenderConfig

    config = LLMConfig(model=model, adapter=adapter, dtype=dtype, device=device, load_in_4bit=four_bit,
                       adapter_scale=adapter_scale, engine=engine, llm_url=llm_url)
    settings = RecommenderConfig.for_adapter(adapter, decoding=decoding, calibration=calibration)
    return Recommender(store, llm_config=config, templates=PromptTemplates(templates), config=settings)


PipelineOption = Annotated[Path | None, typer.Option("--pipeline", help="A pipeline folder from `genrec fit` "
                                                                      "(or a registry folder: its champion): its "
                                                                      "sources, LLM scorer and fusion rank the "
                                                                      "items.")]


@app.command()
def fit(
    config: Annotated[str, typer.Option("--config", help="Pipeline spec: a YAML file or a shipped spec's name "
                                                         "(pipelines/*.yaml).")],
    out: Annotated[Path | None, typer.Option("--out", help="Folder to write the fitted pipeline to.")] = None,
    registry: Annotated[Path | None, typer.Option("--registry", help="Or: add it to this registry folder as a "
                                                                     "new version and make it the champion.")] = None,
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Fit a pipeline (candidate sources, LLM scorer, fusion weights tuned on validation users) and save it."""
    from genrec.pipeline import PipelineSpec, shipped_spec
    from genrec.pipeline.fitting import fit_pipeline, fit_registered
    from genrec.pipeline.registry import Registry

    if (out is None) == (registry is None):
        raise GenrecError("say where the fitted pipeline goes: --out DIR or --registry DIR (one of them)")
    path = Path(config) if Path(config).is_file() else shipped_spec(config)
    spec = PipelineSpec.from_yaml(path)
    with _store(db) as store:
        if registry is not None:
            pipeline, version = fit_registered(store, spec, Registry(registry), data_dir=data_dir, progress=True)
            out = registry / version.name
        else:
            pipeline = fit_pipeline(store, spec, data_dir=data_dir, progress=True)
            pipeline.save(out)
    _show_fusion(pipeline)
    console.print(f"pipeline {spec.name!r} fitted in {pipeline.fit_info['fit_seconds']:.1f} s -> {out}  "
                  f"(use it with --pipeline {registry or out})")


RegistryArgument = Annotated[Path, typer.Option("--registry", help="A registry folder (`genrec fit --registry`).")]


@app.command()
def refresh(
    registry: RegistryArgument,
    steps: Annotated[int, typer.Option("--steps", min=0, help="At most this many fine-tuning batches for "
                                       "sequential sources (their passes usually bind first).")] = 10_000,
    holdout_users: Annotated[int, typer.Option("--holdout-users", min=1, help="Users whose newest event judges "
                                                                              "the challenger.")] = 200,
    tune_users: Annotated[int, typer.Option("--tune-users", min=0, help="Other users whose newest event tunes the "
                                                                        "challenger's fusion weights (when its spec "
                                                                        "searches them; 0: keep the weights).")] = 0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    promote: Annotated[bool, typer.Option("--promote/--no-promote", help="Promote the challenger when it is not "
                                                                         "worse than the champion.")] = True,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Bring the champion up to date with the events since its data window (a challenger version), judge both on
    the newest held-out events and promote the challenger unless it is worse."""
    from genrec.pipeline.refresh import refresh as run_refresh
    from genrec.pipeline.registry import Registry

    with _store(db, read_only=True) as store:
        outcome = run_refresh(store, Registry(registry), steps=steps, holdout_users=holdout_users,
                              tune_users=tune_users, seed=seed, promote=promote)
    if as_json:
        console.print_json(json.dumps(outcome.to_dict()))
        return
    if outcome.version is None:
        waiting = f" ({outcome.new_events:,} held-out events wait for fresh ones)" if outcome.new_events else ""
        console.print(f"no event after the champion's data window: nothing to refresh{waiting}")
        return
    j = outcome.judgement
    console.print(f"{outcome.version.name} from {outcome.version.parent}: {outcome.new_events:,} new events; "
                  f"sources: {', '.join(f'{k} {v}' for k, v in outcome.version.sources.items())}")
    console.print(f"held-out NDCG@10 on {j.cases} cases: champion {j.champion:.4f}, challenger {j.challenger:.4f}, "
                  f"difference {j.difference:+.4f} [{j.low:+.4f}, {j.high:+.4f}] -> "
                  + ("[green]promoted[/]" if outcome.promoted else "[yellow]kept the champion[/]"))


@app.command()
def versions(registry: RegistryArgument, as_json: JsonOption = False) -> None:
    """The registry's versions: origin, data window, held-out metrics, which one serves."""
    from datetime import UTC, datetime

    from genrec.pipeline.registry import Registry

    reg = Registry(registry)
    found, champion = reg.versions(), reg.champion()
    if as_json:
        console.print_json(json.dumps({"champion": champion.name if champion else None,
                                       "versions": [vars(v) | {"holdout": len(v.holdout)} for v in found],
                                       "log": reg.log()}))
        return
    table = Table("version", "origin", "created", "data until", "held-out NDCG@10 (champion -> this)", "serving",
                  title=str(registry))
    for v in found:
        m = v.metrics
        judged = f"{m['champion_ndcg10']:.4f} -> {m['challenger_ndcg10']:.4f} ({m['cases']} cases)" \
            if "challenger_ndcg10" in m else "-"
        table.add_row(v.name, v.origin + (f" of {v.parent}" if v.parent else ""), v.created_at,
                      datetime.fromtimestamp(v.window_end, UTC).strftime("%Y-%m-%d %H:%M"), judged,
                      "champion" if champion and v.name == champion.name else "")
    console.print(table)


@app.command()
def rollback(
    version: Annotated[str, typer.Argument(help="The version to serve again, e.g. v0003.")],
    registry: RegistryArgument,
) -> None:
    """Make an earlier version the champion again (a server on this registry swaps to it)."""
    from genrec.pipeline.registry import Registry

    Registry(registry).rollback(version)
    console.print(f"{version} is the champion of {registry}")


def _show_fusion(pipeline) -> None:
    fusion = pipeline.fusion
    table = Table("component", "weight", "alone (valid NDCG@10)", title=f"{pipeline.name}: fusion")
    singles = fusion.report.get("single_components", {})
    for name, weight in fusion.weights.items():
        alone = [v for k, v in singles.items() if k == name or k.startswith(f"{name}(")]
        table.add_row(name + (f" (calibration {fusion.calibration})" if name == "llm" else ""), f"{weight:g}",
                      f"{max(alone):.4f}" if alone else "-")
    console.print(table)
    if "tuned" in fusion.report:
        console.print(f"fused: validation NDCG@10 {fusion.report['tuned']:.4f} on {fusion.report['tuning_cases']} "
                      "cases")


@app.command()
def recommend(
    user: Annotated[str, typer.Option("--user", help="User id in the store.")],
    platform: Annotated[str, typer.Option("--platform", help="Target platform.")],
    k: Annotated[int, typer.Option("-k", "--k", help="How many items.")] = 10,
    explain: Annotated[bool, typer.Option("--explain", help="Add a rationale to every item.")] = False,
    dataset: Annotated[str | None, typer.Option("--dataset", help="A built-in data set (imported on first use) "
                                                                     "or one defined with `genrec data "
                                                                     "register`.")] = None,
    as_json: JsonOption = False,
    db: DbOption = None,
    data_dir: DataDirOption = None,
    model: ModelOption = None, adapter: AdapterOption = None, dtype: DtypeOption = "auto",
    device: DeviceOption = "auto", four_bit: FourBitOption = False, templates: TemplatesOption = None,
    decoding: DecodingOption = None, calibration: CalibrationOption = None, adapter_scale: AdapterScaleOption = 1.0,
    pipeline: PipelineOption = None, engine: EngineOption = "transformers", llm_url: LLMUrlOption = None,
) -> None:
    """Recommend k items of a target platform to a user, from their cross-platform history."""
    from genrec.data.loading import ensure_dataset

    with _store(db) as store:
        if dataset:
            ensure_dataset(store, dataset, data_dir=data_dir)
        legacy = any(v is not None for v in (decoding, model, adapter, templates, calibration)) or four_bit \
            or adapter_scale != 1.0 or engine != "transformers" or llm_url is not None
        if pipeline is not None or not legacy:
            from genrec.pipeline import Pipeline
            from genrec.pipeline.fitting import dataset_of, default_pipeline

            known = dataset or dataset_of(platform, store)
            if pipeline is not None:
                _recommend_with_pipeline(store, Pipeline.load(pipeline, store=store), user, platform, k, explain,
                                         as_json)
                return
            if known is not None:
                with console.status(f"loading the default pipeline of {known} (fitted on first use)"):
                    fitted = default_pipeline(store, known, data_dir=data_dir)
                _recommend_with_pipeline(store, fitted, user, platform, k, explain, as_json)
                return
        recommender = _recommender(store, model, adapter, dtype, device, four_bit, templates, decoding,
                                   calibration, adapter_scale, engine, llm_url)
        result = recommender.recommend(user, platform=platform, k=k, explain=explain)
    if as_json:
        console.print_json(json.dumps(result.to_dict(), default=str))
        return
    _show_recommendations(result, explain)


def _recommend_with_pipeline(store, pipeline, user: str, platform: str, k: int, explain: bool,
                             as_json: bool) -> None:
    import time

    from genrec.pipeline.fitting import user_context

    started = time.perf_counter()
    items = pipeline.recommend(user_context(store, user, platform), k, explain=explain)
    seconds = time.perf_counter() - started
    if as_json:
        console.print_json(json.dumps({"user_id": user, "platform": platform, "k": k, "pipeline": pipeline.name,
                                       "items": [vars(item) | {"origin": item.origin} for item in items],
                                       "seconds": seconds}, default=str))
        return
    _show_pipeline_items(pipeline, items, f"{platform} for user {user} ({pipeline.name})", explain)
    console.print(f"{seconds:.2f} s")


def _show_pipeline_items(pipeline, items, title: str, explain: bool) -> None:
    """The pipeline's answer: each item, the sources that proposed it, the fused score and every component's."""
    table = Table("#", "item", "title", "from", "score", *pipeline.components,
                  *(("rationale",) if explain else ()), title=title, show_lines=explain)
    for item in items:
        values = [item.sources[name] for name in pipeline.sources] + ([item.llm] if pipeline.scorer else [])
        rationale = (f"{item.rationale} [{item.rationale_source}]",) if explain else ()
        table.add_row(str(item.rank), item.item_id, item.title, item.origin, f"{item.score:.3f}",
                      *(f"{v:.3f}" for v in values), *rationale)
    console.print(table)


@app.command()
def batch(
    pipeline: Annotated[Path, typer.Option("--pipeline", help="A pipeline folder from `genrec fit` (or a "
                                                              "registry folder: its champion).")],
    out: Annotated[Path, typer.Option("--out", help="Parquet file to write (user_id, platform, rank, item_id, "
                                                    "title, score, sources, proposed_by, llm).")],
    users: Annotated[Path | None, typer.Option("--users", help="Score only these user ids (a file, one a line) "
                                                               "[default: every user of the store with events on "
                                                               "the pipeline's platforms].")] = None,
    platform: Annotated[list[str] | None, typer.Option("--platform", help="Target platform (repeat for several) "
                                                                           "[default: every platform the "
                                                                           "pipeline ranks].")] = None,
    k: Annotated[int, typer.Option("--k", "-k", help="Items per user and platform.")] = 10,
    ray: Annotated[str | None, typer.Option("--ray", help="Run the shards on Ray: a cluster address, or 'local' "
                                                          "to start Ray on this machine (pip install "
                                                          "'genrec[ray]').")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Ray workers, each holding one pipeline "
                                                           "replica.")] = 2,
    shard_size: Annotated[int, typer.Option("--shard-size", help="Users per shard (the unit a rerun "
                                                                 "resumes by).")] = 256,
    db: DbOption = None,
) -> None:
    """Score every user (or a list) with a fitted pipeline into one Parquet file; resumable by user shards,
    in this process or on a Ray cluster."""
    from genrec.pipeline.batch import read_user_file, run_batch

    with _store(db, read_only=True) as store:  # workers never open the store: the driver reads the histories
        chosen = read_user_file(users, store) if users is not None else None
        result = run_batch(store, pipeline, out, users=chosen, platforms=platform, k=k, shard_size=shard_size,
                           ray_address=ray, workers=workers, progress=True)
    resumed = f", {result.skipped} done by an earlier run" if result.skipped else ""
    console.print(f"{result.users:,} users x {', '.join(result.platforms)}: {result.rows:,} rows -> {result.out}  "
                  f"({result.shards} shards{resumed}; {result.engine}, {result.users_per_s:,.1f} users/s)")


def _show_recommendations(result, explain: bool) -> None:
    table = Table("#", "item", "title", "from", "score", *(("rationale",) if explain else ()),
                  title=f"{result.platform} for user {result.user_id}", show_lines=explain)
    for item in result.items:
        origin = item.source if not item.generated_text or item.source not in ("exact", "neighbour") else \
            f"{item.source}: {item.generated_text}"
        table.add_row(str(item.rank), item.item_id, item.title, origin, f"{item.score:.3f}",
                      *((item.rationale or "",) if explain else ()))
    console.print(table)
    console.print(f"{result.n_generated} titles generated ({result.validity:.0%} exact catalog titles), "
                  f"{result.invalid_lines} unparsable lines, {result.seconds:.2f} s")


@app.command("eval")
def evaluate(
    config: Annotated[Path, typer.Option("--config", help="Evaluation config (eval/configs/*.yaml).")],
    methods: Annotated[list[str] | None, typer.Option("--methods", help="Run only these methods (repeatable; "
                                                                          "names or labels); the others' recorded "
                                                                          "outcomes are still reported.")] = None,
    limit_users: Annotated[int | None, typer.Option("--limit-users", help="Evaluate a seeded sample of this "
                                                                             "many test users.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Results root; the run writes <out>/<name>/.")] = Path(
        "eval/results"),
    fresh: Annotated[bool, typer.Option("--fresh", help="Re-run the chosen methods even where a recorded "
                                                        "outcome matches.")] = False,
    db: DbOption = None,
) -> None:
    """Evaluate methods under a declared protocol; writes metrics.json, results.md and a plot."""
    from genrec.evaluation.config import load
    from genrec.evaluation.runner import run

    cfg = load(config)
    console.print(f"[bold]{cfg.name}[/]: {cfg.protocol.describe()}")
    with _store(db) as store:
        run(cfg, store, out, methods=methods, limit_users=limit_users, resume=not fresh)
    console.print((out / cfg.name / "results.md").read_text())


@app.command()
def report(
    user: Annotated[str, typer.Option("--user", help="User id in the store.")],
    platform: Annotated[list[str] | None, typer.Option("--platform", help="Target platform (repeatable) "
                                                                          "[default: the user's own].")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write here [default: standard output].")] = None,
    fmt: Annotated[str, typer.Option("--format", help="html, md or json")] = "html",
    k: Annotated[int, typer.Option("-k", "--k", help="Recommendations per platform.")] = 5,
    db: DbOption = None,
    model: ModelOption = None, adapter: AdapterOption = None, dtype: DtypeOption = "auto",
    device: DeviceOption = "auto", four_bit: FourBitOption = False, templates: TemplatesOption = None,
    adapter_scale: AdapterScaleOption = 1.0, pipeline: PipelineOption = None,
) -> None:
    """Explainable report: profile, activity charts, recommendations with evidence and a faithfulness check.

    A platform of a data set gets its default pipeline's ranking and rationales (or those of ``--pipeline``);
    ``--model``/``--adapter``/``--templates`` run the generate-then-ground recommender instead."""
    from genrec.pipeline.serving import Pipelines
    from genrec.report import FORMATS, build_report, render

    if fmt not in FORMATS:
        raise GenrecError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    legacy = any(v is not None for v in (model, adapter, templates)) or four_bit or adapter_scale != 1.0
    with _store(db) as store:
        recommender = _recommender(store, model, adapter, dtype, device, four_bit, templates,
                                   adapter_scale=adapter_scale)
        pipelines = Pipelines(store, folder=pipeline, defaults=not legacy)
        with err.status("ranking (a data set's default pipeline is fitted on first use)"):
            built = build_report(recommender, user, platform or [], k=k, pipelines=pipelines)
        text = render(built, fmt, recommender.templates)
    if out is None:
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    err.print(f"wrote {out}")


@platform_app.command("add")
def platform_add(
    name: Annotated[str, typer.Argument(help="The new platform's name.")],
    catalog: Annotated[Path, typer.Option("--catalog", help="Catalog file: CSV, TSV, JSONL or Parquet.")],
    verb: Annotated[str | None, typer.Option("--verb", help="What users do there (e.g. listened to).")] = None,
    template: Annotated[Path | None, typer.Option("--template", help="Jinja2 recommend prompt for this "
                                                                       "platform (context of recommend.j2).")] = None,
    mapping: Annotated[list[str] | None, typer.Option(
        "--map", help="Column mapping CANONICAL=SOURCE, e.g. item_id=sku; repeatable.")] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    time_kind: Annotated[str, typer.Option("--time-kind", help="time, or sequence for position-only "
                                                               "events")] = "time",
    fmt: Annotated[str | None, typer.Option("--format", help="csv, tsv, jsonl or parquet [default: from "
                                                                "the name]")] = None,
    skip_bad_rows: SkipBad = False,
    pipeline: Annotated[list[Path] | None, typer.Option(
        "--pipeline", help="A pipeline folder from `genrec fit` that should rank the new platform at once "
                           "(repeatable): its sources take the new catalog (textseq scores it from the titles) and "
                           "the folder is saved again.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Zero-shot onboarding: register a platform with its catalog and build its embedding index (no training)."""
    from genrec.data.importers import parse_mapping
    from genrec.onboarding import onboard
    from genrec.recommender import Recommender

    source = None
    if template is not None:
        try:
            source = template.read_text(encoding="utf-8")
        except OSError as exc:
            raise GenrecError(f"{template}: cannot read the template ({exc})") from exc
    with _store(db) as store:
        pipelines = {}
        if pipeline:  # every folder is loaded and checked before the store changes
            from genrec.pipeline import Pipeline

            for folder in pipeline:
                pipelines[folder] = loaded = Pipeline.load(folder, store=store)
                loaded.check_add_platform(name)
        result = onboard(store, name, catalog, recommender=Recommender(store), mapping=parse_mapping(mapping or [],
                         catalog), fmt=fmt, verb=verb, template=source, time_kind=time_kind,
                         description=description, skip_bad_rows=skip_bad_rows)
        if pipelines:
            from genrec.pipeline.fitting import catalog_titles

            items, titles, details = catalog_titles(store, name)
            for folder, loaded in pipelines.items():
                loaded.add_platform(name, items, titles, details)
                loaded.save(folder)
    if as_json:
        console.print_json(json.dumps(result.to_dict() | {"pipelines": [str(f) for f in pipelines]}))
        return
    console.print(f"[bold]{result.platform}[/]: {result.items:,} catalog items ({result.skipped_rows:,} bad rows "
                  f"skipped), {result.embedded:,} embedded; import {result.import_seconds:.1f} s, index "
                  f"{result.index_seconds:.1f} s. Ready: genrec recommend --platform {result.platform} ...")
    for folder, loaded in pipelines.items():
        console.print(f"pipeline {loaded.name} ({folder}) ranks {result.platform} now: genrec recommend --platform "
                      f"{result.platform} --pipeline {folder} ...")


@platform_app.command("set")
def platform_set(
    name: Annotated[str | None, typer.Argument(help="The platform (created when new).")] = None,
    verb: Annotated[str | None, typer.Option("--verb", help="What users do there (e.g. listened to).")] = None,
    time_kind: Annotated[str | None, typer.Option("--time-kind", help="time (real times) or sequence (positions "
                                                                      "only)")] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="YAML: platform name -> {verb, time_kind, "
                                                             "description}, for several at once.")] = None,
    db: DbOption = None,
) -> None:
    """Create a platform with its verb and time kind, or change them (no catalog needed)."""
    from genrec.data.schema import TIME_KINDS

    wanted: dict[str, dict] = {}
    if file is not None:
        raw = read_yaml(file, "platforms file") or {}
        if not isinstance(raw, dict) or not all(isinstance(v, dict | None) for v in raw.values()):
            raise GenrecError(f"{file}: expected a mapping of platform name -> {{verb, time_kind, description}}")
        for key, fields in raw.items():
            unknown = set(fields or {}) - {"verb", "time_kind", "description"}
            if unknown:
                raise GenrecError(f"{file}: platform {key!r}: unknown key(s) {', '.join(sorted(unknown))}; known: "
                                  "verb, time_kind, description")
            wanted[str(key)] = dict(fields or {})
    if name is not None:
        wanted[name] = {"verb": verb, "time_kind": time_kind, "description": description}
    if not wanted:
        raise GenrecError("name a platform (genrec platform set NAME --verb ... --time-kind ...) or give --file")
    for key, fields in wanted.items():
        if fields.get("time_kind") not in (None, *TIME_KINDS):
            raise GenrecError(f"platform {key!r}: --time-kind {fields['time_kind']!r}; expected one of "
                              f"{', '.join(TIME_KINDS)}")
    with _store(db) as store:
        for key, fields in wanted.items():
            platform, created = store.set_platform(key, **fields)
            console.print(f"{'created' if created else 'updated'} [bold]{platform.name}[/]: verb "
                          f"{platform.verb!r}, time kind {platform.time_kind}")


@platform_app.command("list")
def platform_list(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Registered platforms with their verbs and catalog sizes."""
    with _store(db, read_only=True) as store:
        sizes = store.catalog_sizes()
        rows = [{"platform": p.name, "verb": p.verb, "time_kind": p.time_kind, "catalog_items": sizes.get(p.name, 0),
                 "own_template": store.platform_template(p.name) is not None} for p in store.platforms()]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("platform", "verb", "time", "catalog items", "own prompt", title="platforms")
    for row in rows:
        table.add_row(row["platform"], row["verb"], row["time_kind"], f"{row['catalog_items']:,}",
                      "yes" if row["own_template"] else "-")
    console.print(table)


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    db: DbOption = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML server settings (api_keys, "
                                                                   "cors_origins, limits, batching).")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option("--cors-origin", help="Allow this browser origin "
                                                                                 "(repeatable; CORS is off by "
                                                                                 "default).")] = None,
    max_batch: Annotated[int | None, typer.Option("--max-batch", help="Most jobs per model batch.")] = None,
    max_queue: Annotated[int | None, typer.Option("--max-queue", help="Queued jobs before 503.")] = None,
    no_chat_llm: Annotated[bool, typer.Option("--no-chat-llm", help="Understand chat messages with rules "
                                                                    "only.")] = False,
    model: ModelOption = None, adapter: AdapterOption = None, dtype: DtypeOption = None,
    device: DeviceOption = None, four_bit: FourBitOption = False, templates: TemplatesOption = None,
    decoding: DecodingOption = None, calibration: CalibrationOption = None,
    adapter_scale: Annotated[float | None, typer.Option("--adapter-scale", min=0.0,
                                                        help="See recommend --adapter-scale [default: 1]")] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    pipeline: PipelineOption = None,
    default_pipelines: Annotated[bool | None, typer.Option(
        "--default-pipelines/--no-default-pipelines",
        help="Serve a registered data set's platforms with its default pipeline (fitted on first use) "
             "[default: on]")] = None,
    refresh_every: Annotated[str | None, typer.Option(
        "--refresh-every", metavar="DURATION",
        help="Refresh the served registry (--pipeline REGISTRY) on a timer, e.g. 30m, 6h, 1d: the refresh of "
             "POST /v1/admin/refresh (`genrec refresh`), never two at once")] = None,
) -> None:
    """Run the HTTP service (API, chat page at /, OpenAPI docs at /docs). Write endpoints need an API key from
    GENREC_API_KEYS or the config file."""
    import uvicorn

    from genrec.server import ServerSettings, create_app
    from genrec.server.app import GRACEFUL_S
    from genrec.server.settings import parse_duration

    settings = ServerSettings.load(config, db=db, cors_origins=cors_origin or None, max_batch=max_batch,
                                   max_queue=max_queue, chat_llm=False if no_chat_llm else None, model=model,
                                   adapter=adapter, dtype=dtype, device=device, load_in_4bit=four_bit or None,
                                   templates=templates, decoding=decoding, calibration=calibration,
                                   adapter_scale=adapter_scale, pipeline=pipeline,
                                   default_pipelines=default_pipelines,
                                   refresh_every=parse_duration(refresh_every, "--refresh-every")
                                   if refresh_every is not None else None)
    if not settings.api_keys:
        err.print("[yellow]no API key configured: write endpoints (events, platforms) are disabled[/]")
    app = create_app(settings)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            app.state.stopping.set()  # requests waiting for the model answer 503 now instead of at the deadline
            super().handle_exit(sig, frame)

    # SIGINT/SIGTERM: requests in flight get GRACEFUL_S, then the worker its STOP_WAIT_S: down within 10 s
    try:
        Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                              timeout_graceful_shutdown=GRACEFUL_S)).run()
    finally:
        service = getattr(app.state, "service", None)
        if service is not None and service.worker.running:
            # the worker is still inside native code (a model load, a generation step); the store is closed, so
            # end now rather than let interpreter teardown wait for it
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


@app.command()
def train(
    config: Annotated[Path, typer.Option("--config", help="Training config (training/configs/*.yaml).")],
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its last checkpoint.")] = False,
    output: Annotated[Path | None, typer.Option("--output", help="Run folder [default: the config's output_dir, "
                                                                   "else training/runs/<name>].")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Optimiser steps (overrides the "
                                                                       "config).")] = None,
    db: DbOption = None,
) -> None:
    """Instruction-tune the LLM (LoRA; QLoRA on CUDA) on a data set's training histories; writes an adapter."""
    from genrec.data.loading import ensure_dataset
    from genrec.evaluation.config import load as load_eval_config
    from genrec.training.config import load
    from genrec.training.trainer import Trainer

    cfg = load(config)
    if output is not None:
        cfg.output_dir = str(output)
    if max_steps is not None:
        cfg.train.max_steps = max_steps
    evaluation = load_eval_config(cfg.eval_config)
    # the only write: importing the data set on first use. DuckDB lets one process write the file or several read
    # it, so under `accelerate launch` the main process imports while the others wait, then all of them read
    state = _launched(cfg)
    with state.main_process_first() if state is not None else contextlib.nullcontext():
        if state is None or state.is_main_process:
            with _store(db) as store:
                ensure_dataset(store, evaluation.dataset, platforms=evaluation.dataset_platforms)
    with _store(db, read_only=True) as store:  # other readers may share the store while this runs
        result = Trainer(cfg, store).run(resume=resume)
    state = result.state
    console.print(f"[bold]{cfg.name}[/]: {state.stopped} after {state.step} steps, {state.tokens:,} tokens; "
                  f"best {cfg.validation.metric} {state.best_metric} (step {state.best_step}), zero-shot "
                  f"{(state.zero_shot or {}).get(cfg.validation.metric)}")
    console.print(f"adapter: {result.adapter_dir}  (use it with --adapter {result.adapter_dir})")


def _launched(cfg):
    """accelerate's process state when this is one of several processes (`accelerate launch`), else ``None``."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    from accelerate import PartialState

    from genrec.llm import resolve_device

    return PartialState(cpu=resolve_device(cfg.train.device).type == "cpu")  # what the trainer's Accelerator asks


@app.command()
def demo(db: DbOption = None, data_dir: DataDirOption = None,
         recommendations: Annotated[bool, typer.Option("--recommend/--no-recommend",
                                                       help="Also show recommendations.")] = True) -> None:
    """Import both real data sets, show what genrec sees in them, and recommend across platforms."""
    from genrec.data import datasets
    from genrec.data.loading import import_dataset

    with _store(db) as store:
        for name in ("movielens-latest-small", "amazon-arts-office"):
            report = import_dataset(store, name, data_dir=data_dir)
            console.rule(f"[bold]{name}")
            console.print(f"imported in {report.seconds:.2f} s: {report.events_added:,} new events, "
                          f"{report.events_present:,} already present")
            _show_stats(store, list(datasets.get(name).platforms), False, title=name)
        if not recommendations:
            return
        import time

        from genrec.pipeline.fitting import default_pipeline, user_context

        test_users = sorted(u for u, split in store.splits().items() if split == "test")
        for dataset, user, platform, what in (
                ("amazon-arts-office", test_users[0], "amazon-office", "amazon-arts-office test user"),
                ("movielens-latest-small", "1", "movies", "movielens-latest-small user")):
            with console.status(f"loading the default pipeline of {dataset} (fitted on first use)"):
                pipeline = default_pipeline(store, dataset, data_dir=data_dir)
            context = user_context(store, user, platform)
            by_platform = {p: sum(x.platform == p for x in context.history) for p in {x.platform for x in
                                                                                     context.history}}
            console.rule(f"[bold]{platform} recommendations for {what} {user}")
            console.print("history: " + ", ".join(f"{n} events on {p}" for p, n in sorted(by_platform.items())))
            started = time.perf_counter()
            items = pipeline.recommend(context, 10, explain=True)
            _show_pipeline_items(pipeline, items, f"{platform} for user {user} ({pipeline.name})", True)
            written = sum(item.rationale_source == "llm" for item in items)
            console.print(f"{time.perf_counter() - started:.2f} s; {written} of {len(items)} rationales written by "
                          "the LLM (the rest: evidence sentences)")


def main() -> None:
    try:
        app()
    except GenrecError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
