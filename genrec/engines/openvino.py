"""The openvino-genai backend: CPU inference from the GGUF file itself, with continuous batching and prefix caching.

openvino-genai (a runtime of about 200 MB installed, no torch) builds its model straight from a ``.gguf`` file (the
shipped Q4_1 SmolLM2, kept 4-bit) or opens an OpenVINO IR directory (``openvino_model.xml``). One
``ContinuousBatchingPipeline`` serves both jobs:

- generation: every prompt is a request of the pipeline's scheduler (continuous batching); stop tokens and
  ``max_new_tokens`` are its own, ``stop_after_lines`` is checked after every step and stops a request early;
- no scoring: ``echo`` with ``logprobs=1`` does return the log-probability of each input token of a request
  ``prompt + line``, but sharing the prompt needs prefix caching, and then only the positions it recomputes get
  values, which changed with the cache's state (the same 100 lines scored in reverse order ranked with Spearman
  0.05 against the first order); without it every line re-reads the whole prompt (20 lines after a 688-token
  prompt took 107 s on a loaded 2-core machine).

Limits (raised as ``EngineUnsupportedError``): no scoring (``decoding="scored"``), no constrained decoding or beams
(``decoding="catalog"``), no PEFT
adapters (the GGUF model's layer names do not match PEFT's, so openvino-genai would ignore the LoRA tensors), no
CUDA. Numerics differ from transformers' fp32 model: the GGUF weights stay 4-bit here, where transformers
dequantizes them (``benchmarks/bench_engines.py`` measures the agreement).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genrec.engines.base import Capabilities, EngineUnsupportedError, GenerationRequest, lines_done

PRECISIONS = {"auto": "f32", "float32": "f32", "bfloat16": "bf16", "float16": "f16"}


class OpenVINOBackend:
    """A ``ContinuousBatchingPipeline`` on the CPU, fed and read as token ids (genrec's own tokenizer, so both
    engines see the same tokens)."""

    name = "openvino"
    capabilities = Capabilities(beams=False, constrained=False, adapters=False, training=False, scoring=False)

    def __init__(self, source: Path, tokenizer: Any, stop_token_ids: Sequence[int], *, precision: str = "f32",
                 threads: int = 2, cache_gb: int = 1) -> None:
        import openvino_genai as og

        scheduler = og.SchedulerConfig()
        scheduler.enable_prefix_caching = True
        scheduler.cache_size = cache_gb
        properties = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision}
        if precision == "f32":
            properties["KV_CACHE_PRECISION"] = "f32"  # the CPU default compresses the KV cache to u8
        self.pipeline = og.ContinuousBatchingPipeline(str(source), scheduler, "CPU", properties)
        self.tokenizer = tokenizer
        self.stop_token_ids = list(stop_token_ids)
        self._ids = itertools.count()

    def without_adapter(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # never has one

    def _config(self, **settings: Any) -> Any:
        import openvino_genai as og

        config = og.GenerationConfig()
        config.apply_chat_template = False
        config.stop_token_ids = set(self.stop_token_ids)
        for key, value in settings.items():
            setattr(config, key, value)
        return config

    def _submit(self, ids: Sequence[int], config: Any) -> Any:
        """Queue one request (a prompt of token ids) and return its handle."""
        import numpy as np
        import openvino as ov

        return self.pipeline.add_request(next(self._ids), ov.Tensor(np.array([list(ids)], dtype=np.int64)), config)

    def _run(self, on_step: Any = None) -> None:
        while self.pipeline.has_non_finished_requests():
            self.pipeline.step()
            if on_step is not None:
                on_step()

    # -- generation --------------------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> list[list[str]]:
        r = request
        if r.num_beams > 1 or r.allowed_tokens is not None:
            raise EngineUnsupportedError("engine 'openvino' supports greedy and sampled decoding only")
        settings: dict[str, Any] = {"max_new_tokens": r.max_new_tokens, "num_return_sequences": r.num_return_sequences}
        if r.do_sample:
            settings.update(do_sample=True, temperature=r.temperature or 1.0, top_k=0, top_p=1.0, rng_seed=r.seed)
        handles = [self._submit(ids, self._config(**settings)) for ids in r.prompts]
        tokens: list[dict[int, list[int]]] = [{} for _ in handles]
        stopped = [False] * len(handles)

        def collect() -> None:
            for row, handle in enumerate(handles):
                if stopped[row] or not handle.can_read():
                    continue
                for sequence, output in handle.read().items():
                    tokens[row].setdefault(sequence, []).extend(output.generated_ids)
                if r.stop_after_lines and all(
                    lines_done(self._decode(ids), r.stop_after_lines) for ids in tokens[row].values()
                ) and len(tokens[row]) == r.num_return_sequences:
                    handle.stop()
                    stopped[row] = True

        self._run(collect)
        collect()
        results = []
        for row in range(len(handles)):
            texts = [self._decode(tokens[row][key]).strip() for key in sorted(tokens[row])]
            results.append((texts + [""] * r.num_return_sequences)[: r.num_return_sequences])
        return results

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # -- scoring -----------------------------------------------------------------------------------------------
    def continuation_logprobs(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]], *,
                              batch_size: int | None = None) -> list[list[float]]:
        raise EngineUnsupportedError(
            "engine 'openvino' cannot score candidate lines (decoding='scored'): its echo log-probabilities are "
            "recomputed per candidate without prefix caching, and with it they depend on what the cache holds; "
            "use engine 'transformers'")


def load_openvino(llm_class: Any, config: Any) -> Any:
    """An ``LLM`` (of ``llm_class``) whose backend is openvino-genai, for ``LLMConfig(engine="openvino")``."""
    import torch
    from transformers import AutoTokenizer

    from genrec.errors import GenrecError
    from genrec.llm import ModelNotFoundError, gguf_tokenizer, stop_token_ids

    if config.adapter is not None:
        raise EngineUnsupportedError("engine 'openvino' cannot apply a PEFT adapter (its GGUF model's layer names "
                                     "differ from PEFT's): use engine 'transformers' for tuned models")
    if config.device == "cuda":
        raise EngineUnsupportedError("engine 'openvino' runs on the CPU: use engine 'transformers' for CUDA")
    if importlib_missing("openvino_genai"):
        raise GenrecError("engine 'openvino' needs the package openvino-genai (pip install 'openvino-genai>=2026.4')")
    if config.model is None:
        source, tokenizer = gguf_tokenizer()
    else:
        source = Path(config.model).expanduser()
        if source.is_file() and source.suffix == ".gguf":
            source, tokenizer = gguf_tokenizer(source)
        elif (source / "openvino_model.xml").is_file():
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        else:
            raise ModelNotFoundError(f"engine 'openvino' needs a .gguf file or an OpenVINO IR directory "
                                     f"(openvino_model.xml), got {config.model!r}")
    stops = stop_token_ids(tokenizer)
    backend = OpenVINOBackend(source, tokenizer, stops, precision=PRECISIONS[config.dtype],
                              threads=torch.get_num_threads())
    return llm_class(None, tokenizer, config, backend=backend)


def importlib_missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None
