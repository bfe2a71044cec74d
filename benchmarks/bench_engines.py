"""LLM engine benchmark: every installed engine side by side, in one run, on the same prompts and threads.

Measures, for the default SmolLM2-135M-Instruct on this machine (2 threads unless ``--threads``):
- the machine: CPU flags that decide the fast paths (AVX2, AVX-512, native bf16, AMX), the fp32 (and bf16) matrix
  product ceiling in GFLOP/s, the load average before and after (the machine is shared: compare ratios);
- per engine: load time; prefill of a ~400-token profile prompt; greedy decoding of 80 tokens for one prompt and
  for a batch of 8 (tokens written per second); scoring 100 candidate answer lines after one shared prompt
  (transformers: the previous padded batches and the packed tree-masked pass, with their largest difference);
  the same with a LoRA adapter where the engine applies one;
- fidelity: each engine's greedy texts against the reference (transformers fp32);
- install cost: size on disk of each engine's packages and what they require.

Usage: ``python benchmarks/bench_engines.py [--threads 2] [--out benchmarks/results/engines.json] [--note TEXT]``;
it writes the JSON (after every engine, so that a cut run keeps what it measured) and a markdown table beside it
(``engines.md``); ``--note`` adds a line to its notes (e.g. how long a source build of an engine took).
``--scoring-rounds N --out .../scoring.json`` only times the padded and packed scorers, alternated N times.
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.metadata
import importlib.util
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from genrec.config import default_data_dir
from genrec.decoding import answer_tokens
from genrec.engines.base import EngineUnsupportedError
from genrec.llm import LLM, LLMConfig, default_model_dir

CANDIDATES, SCORE_TOKENS, NEW_TOKENS, BATCH = 100, 16, 80, 8
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
ENGINE_PACKAGES = {
    "transformers": ["torch", "transformers", "peft"],
    "openvino": ["openvino", "openvino-genai", "openvino-tokenizers", "openvino-telemetry"],
    "llamacpp": ["llama-cpp-python", "diskcache"],  # its other requirements (numpy, jinja2) genrec has anyway
}


def timed(action: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


def cpu_flags() -> dict[str, bool]:
    flags: set[str] = set()
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {flag: flag in flags for flag in FLAGS}


def matmul_ceiling(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """The best GFLOP/s of a ``size``-square matrix product in ``dtype`` on torch's threads."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b))[1] for _ in range(repeats))
    return round(2 * size**3 / best / 1e9, 1)


def package_cost(names: Sequence[str]) -> dict[str, Any]:
    """Installed size (MB, files listed in each distribution's RECORD) and the requirements of ``names``."""
    size, requires = 0, {}
    for name in names:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        size += sum(Path(dist.locate_file(f)).stat().st_size for f in dist.files or []
                    if Path(dist.locate_file(f)).is_file())
        requires[f"{name} {dist.version}"] = [r for r in dist.requires or [] if "extra ==" not in r]
    return {"installed_mb": round(size / 1e6, 1), "requires": requires}


def profile_prompts(llm: LLM, count: int) -> list[str]:
    """``count`` different recommendation prompts of about 400 tokens: MovieLens histories of 40 rated titles in
    genrec's prompt templates (different histories, so no engine reuses another prompt's cache)."""
    from datetime import timedelta

    from genrec.data.schema import HistoryItem
    from genrec.profile import ProfileBuilder
    from genrec.prompts import PromptTemplates, RecommendPrompt

    with (default_data_dir() / "movielens-latest-small" / "movies.csv").open(newline="") as handle:
        movies = list(csv.DictReader(handle))
    prompts = []
    for number in range(count):
        picked = movies[number * 40 : (number + 1) * 40]
        history = [HistoryItem("u", "movies", m["movieId"], datetime(2020, 1, 1) + timedelta(days=i),
                               value=float(1 + i % 5), title=m["title"], category=m["genres"])
                   for i, m in enumerate(picked)]
        profile = ProfileBuilder(llm, token_budget=400).build(history)
        request = RecommendPrompt(profile.text, "movies", 10, "watched", rationale=True)
        prompts.append(llm.format_chat(PromptTemplates().messages("recommend.j2", request)))
    return prompts


def candidate_lines(llm: LLM, prompt: str) -> tuple[list[int], list[list[int]]]:
    """The scored-decoding inputs: the prompt and answer stem, and 100 candidate answer lines (MovieLens titles)."""
    with (default_data_dir() / "movielens-latest-small" / "movies.csv").open(newline="") as handle:
        titles = [row["title"] for row in csv.DictReader(handle)][1000 : 1000 + CANDIDATES]
    head, bodies = answer_tokens(titles, llm.tokenizer)
    return llm.tokenizer(prompt, add_special_tokens=False)["input_ids"] + head, [b[:SCORE_TOKENS] for b in bodies]


def padded_logprobs(llm: LLM, prompt: Sequence[int], lines: Sequence[Sequence[int]],
                    batch_size: int = 48) -> list[list[float]]:
    """genrec's scorer before packing (kept here as the 'before' measurement): left-aligned padded batches of 48
    lines on 48 copies of the prompt's cache, full vocabulary at every position."""
    model, scores = llm.model, []
    with torch.no_grad():
        head = model(input_ids=torch.tensor([list(prompt)]), use_cache=True)
        first = torch.log_softmax(head.logits[0, -1].float(), dim=-1)
        length = len(prompt)
        for start in range(0, len(lines), batch_size):
            batch = lines[start : start + batch_size]
            width = max(len(c) for c in batch)
            ids = torch.full((len(batch), width), llm.tokenizer.pad_token_id)
            mask = torch.zeros((len(batch), length + width), dtype=torch.long)
            mask[:, :length] = 1
            for row, tokens in enumerate(batch):
                ids[row, : len(tokens)] = torch.tensor(tokens)
                mask[row, length : length + len(tokens)] = 1
            cache = copy.deepcopy(head.cache)
            cache.batch_repeat_interleave(len(batch))
            positions = torch.arange(length, length + width).expand(len(batch), -1)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, tokens in enumerate(batch):
                after = logprobs[row, torch.arange(len(tokens) - 1), ids[row, 1 : len(tokens)]]
                scores.append([float(first[tokens[0]]), *after.tolist()])
    return scores


def written_tokens(llm: LLM, texts: Sequence[str]) -> int:
    return sum(llm.count_tokens(text) for text in texts)


def bench_engine(name: str, config: LLMConfig, prompts: list[str]) -> dict[str, Any]:
    """Load, prefill, greedy single and batch, scoring; ``prompts``: 1 for prefill, 1 single, ``BATCH`` batch."""
    llm, load_s = timed(lambda: LLM.load(config))
    out: dict[str, Any] = {"engine": name, "load_s": round(load_s, 2)}
    prefill_ids = llm.tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
    out["prefill_tokens"] = len(prefill_ids)
    if name == "transformers":
        with torch.no_grad():
            _, seconds = timed(lambda: llm.model(input_ids=torch.tensor([prefill_ids]), logits_to_keep=1))
    else:  # one token written: the prompt's prefill and a single decode step
        _, seconds = timed(lambda: llm.generate([prompts[0]], max_new_tokens=1))
    out["prefill_s"] = round(seconds, 3)
    out["prefill_tokens_per_s"] = round(len(prefill_ids) / seconds, 1)
    single, seconds = timed(lambda: llm.generate([prompts[1]], max_new_tokens=NEW_TOKENS))
    out["greedy_single"] = {"s": round(seconds, 2), "tokens": written_tokens(llm, single[0]),
                            "tokens_per_s": round(written_tokens(llm, single[0]) / seconds, 1)}
    batch_prompts = prompts[2 : 2 + BATCH]
    batch, seconds = timed(lambda: llm.generate(batch_prompts, max_new_tokens=NEW_TOKENS, batch_size=BATCH))
    tokens = written_tokens(llm, [texts[0] for texts in batch])
    out["greedy_batch8"] = {"s": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)}
    out["texts"] = [single[0][0], *[texts[0] for texts in batch]]
    prompt_ids, lines = candidate_lines(llm, prompts[0])
    out["scoring"] = {"prompt_tokens": len(prompt_ids), "lines": len(lines),
                      "line_tokens": sum(map(len, lines))}
    try:
        packed, seconds = timed(lambda: llm.continuation_logprobs(prompt_ids, lines))
        out["scoring"]["packed_s"] = round(seconds, 2)
        out["scores"] = [sum(row) for row in packed]
        if name == "transformers":
            padded, seconds = timed(lambda: padded_logprobs(llm, prompt_ids, lines))
            out["scoring"]["padded_s"] = round(seconds, 2)
            out["scoring"]["max_abs_diff_packed_vs_padded"] = max(
                abs(a - b) for p, q in zip(packed, padded, strict=True) for a, b in zip(p, q, strict=True))
    except EngineUnsupportedError as exc:
        out["scoring"]["unsupported"] = str(exc)
    return out


def bench_adapter(config: LLMConfig, prompts: list[str], folder: Path) -> dict[str, Any]:
    """A random rank-8 LoRA on q/v (B != 0, so it changes the model) on the engine of ``config``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if not (folder / "adapter_config.json").is_file():
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(default_model_dir())
        get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                                        init_lora_weights=False)).save_pretrained(folder)
    try:
        llm, load_s = timed(lambda: LLM.load(LLMConfig(**{**vars(config), "adapter": str(folder)})))
    except EngineUnsupportedError as exc:
        return {"unsupported": str(exc)}
    single, seconds = timed(lambda: llm.generate([prompts[1]], max_new_tokens=NEW_TOKENS))
    out = {"load_s": round(load_s, 2), "greedy_single_s": round(seconds, 2),
           "greedy_single_tokens_per_s": round(written_tokens(llm, single[0]) / seconds, 1)}
    prompt_ids, lines = candidate_lines(llm, prompts[0])
    try:
        _, out["scoring_packed_s"] = timed(lambda: llm.continuation_logprobs(prompt_ids, lines))
    except EngineUnsupportedError as exc:
        out["scoring_unsupported"] = str(exc)
    return out


def scoring_rounds(rounds: int) -> dict[str, Any]:
    """The transformers scorer before (padded) and after (packed) on the same 100 lines, alternated ``rounds``
    times so that both see the same machine load; the best of each and their largest difference."""
    llm = LLM.load(LLMConfig())
    prompt_ids, lines = candidate_lines(llm, profile_prompts(llm, 1)[0])
    times: dict[str, list[float]] = {"padded": [], "packed": []}
    for _ in range(rounds):
        padded, seconds = timed(lambda: padded_logprobs(llm, prompt_ids, lines))
        times["padded"].append(round(seconds, 2))
        packed, seconds = timed(lambda: llm.continuation_logprobs(prompt_ids, lines))
        times["packed"].append(round(seconds, 2))
    return {"prompt_tokens": len(prompt_ids), "lines": len(lines), "line_tokens": sum(map(len, lines)),
            "seconds": times, "speedup_best": round(min(times["padded"]) / min(times["packed"]), 2),
            "max_abs_diff": max(abs(a - b) for p, q in zip(packed, padded, strict=True)
                                for a, b in zip(p, q, strict=True))}


def agreement(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """How close an engine's greedy texts and candidate scores are to the reference engine's."""
    same = [a == b for a, b in zip(reference["texts"], other["texts"], strict=True)]
    prefix = [len(os.path.commonprefix([a, b])) / max(1, len(a)) for a, b in
              zip(reference["texts"], other["texts"], strict=True)]
    out: dict[str, Any] = {"identical_greedy_texts": f"{sum(same)}/{len(same)}",
                           "mean_shared_prefix_of_reference": round(sum(prefix) / len(prefix), 3)}
    if "scores" in other:
        import numpy as np
        from scipy.stats import spearmanr

        a, b = np.array(reference["scores"]), np.array(other["scores"])
        out["score_spearman"] = round(float(spearmanr(a, b)[0]), 4)
        out["top10_overlap"] = len(set(np.argsort(-a)[:10]) & set(np.argsort(-b)[:10]))
    return out


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    rows = ["| engine | load s | prefill tok/s | greedy 1 tok/s | greedy batch 8 tok/s | score 100 lines s | "
            "with LoRA | install MB |", "|---|---|---|---|---|---|---|---|"]
    for r in report["engines"]:
        s = r["scoring"]
        score = f"{s['packed_s']} (padded {s['padded_s']})" if "padded_s" in s else s.get("packed_s", "no")
        lora = r["adapter"]
        lora_cell = "no" if "unsupported" in lora else f"greedy {lora['greedy_single_tokens_per_s']} tok/s, " \
            f"score {round(lora.get('scoring_packed_s', 0), 2)} s"
        rows.append(f"| {r['engine']} | {r['load_s']} | {r['prefill_tokens_per_s']} | "
                    f"{r['greedy_single']['tokens_per_s']} | {r['greedy_batch8']['tokens_per_s']} | {score} | "
                    f"{lora_cell} | {report['install'][r['engine'].split()[0]]['installed_mb']} |")
    lines = [
        f"# LLM engines ({report['date']})", "",
        f"Machine: {m['cpu']}, {m['threads']} threads, flags {', '.join(k for k, v in m['flags'].items() if v)}; "
        f"fp32 matmul ceiling {m['fp32_gflops']} GFLOP/s, bf16 {m['bf16_gflops']} GFLOP/s; load average "
        f"{m['load_average_start']} at start, {m['load_average_end']} at end (shared machine: compare ratios).", "",
        *rows, "",
        f"Fidelity against transformers fp32: {json.dumps(report['agreement'])}", "",
        *[f"- {note}" for note in report["notes"]], "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engines.json"))
    parser.add_argument("--note", action="append", default=[], help="a line for the report's notes")
    parser.add_argument("--scoring-rounds", type=int, default=0,
                        help="only compare the padded and packed scorers, alternated this many times")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.scoring_rounds:
        start = [round(x, 2) for x in os.getloadavg()]
        result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "threads": args.threads,
                  "load_average_start": start, **scoring_rounds(args.scoring_rounds),
                  "load_average_end": [round(x, 2) for x in os.getloadavg()]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result))
        return
    load_start = [round(x, 2) for x in os.getloadavg()]
    flags = cpu_flags()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or _cpu_name(), "threads": args.threads, "flags": flags,
                    "fp32_gflops": matmul_ceiling(torch.float32), "bf16_gflops": matmul_ceiling(torch.bfloat16),
                    "load_average_start": load_start, "python": platform.python_version(),
                    "torch": torch.__version__},
        "install": {name: package_cost(packages) for name, packages in ENGINE_PACKAGES.items()},
        "engines": [], "notes": list(args.note),
    }
    reference = LLM.load(LLMConfig())
    prompts = profile_prompts(reference, 2 + BATCH)
    engines = [("transformers", LLMConfig(), args.threads)]
    if importlib.util.find_spec("openvino_genai") is not None:
        engines.append(("openvino", LLMConfig(engine="openvino"), args.threads))
    if importlib.util.find_spec("llama_cpp") is not None:
        # llama.cpp's threads spin at every operation's barrier: when another process takes a core, its decoding
        # slows down several times, so it also runs on one thread (it reads torch's thread count when it loads)
        engines.append(("llamacpp", LLMConfig(engine="llamacpp"), args.threads))
        if args.threads > 1:
            engines.append(("llamacpp (1 thread)", LLMConfig(engine="llamacpp"), 1))
    with tempfile.TemporaryDirectory(prefix="genrec-engines-") as tmp:
        for name, config, threads in engines:
            torch.set_num_threads(threads)
            result = bench_engine(name, config, prompts)
            result["adapter"] = bench_adapter(config, prompts, Path(tmp, "lora"))
            torch.set_num_threads(args.threads)
            report["engines"].append(result)
            print(json.dumps({k: v for k, v in result.items() if k not in ("texts", "scores")}), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n")
    base = report["engines"][0]
    report["agreement"] = {r["engine"]: agreement(base, r) for r in report["engines"][1:]}
    for r in report["engines"]:
        s = r["scoring"]
        if "packed_s" in s:
            flops = 2 * 135e6 * (s["line_tokens"] + s["prompt_tokens"])
            s["gflops_share_of_fp32_ceiling"] = round(flops / s["packed_s"] / 1e9 / report["machine"]["fp32_gflops"], 3)
    if importlib.util.find_spec("llama_cpp") is None:
        report["notes"].append("llama-cpp-python: not measured (not installed); PyPI has no wheel for this platform, "
                               "pip builds it from source")
    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def _cpu_name() -> str:
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
