"""The llama-cpp-python backend: CPU inference of the GGUF file itself with llama.cpp, in-process.

The shipped Q4_1 SmolLM2 stays 4-bit (as on openvino). genrec's tokenizer encodes and decodes, llama.cpp runs token
ids, so every engine sees the same tokens. One llama.cpp context with a unified KV cache serves both jobs:

- generation: prompt by prompt, its return sequences as sequences of one ``llama_decode`` call per step, sharing
  the prompt's cache cells (``llama_memory_seq_cp``). Greedy is the arg-max; sampling draws from
  ``softmax(logits / temperature)`` with a NumPy generator seeded by (seed, prompt, sequence), so results repeat.
  Stop tokens, ``max_new_tokens`` and ``stop_after_lines`` end a sequence. Prompts are not batched together: in a
  unified cache every sequence's attention spans all sequences' cells, which was no faster for ~500-token prompts
  and makes greedy text depend on the batch, and separate KV streams per sequence are far slower per step
  (``benchmarks/results/engines.md``);
- scoring: the prompt runs once as sequence 0, then each group of continuations runs in one call, every line its
  own sequence on the prompt's cells, with logits at each position.

llama.cpp runs on ``torch.get_num_threads()`` threads, read at load. They spin at every operation's barrier, so
on a machine shared with other jobs fewer threads than cores can decode faster (``benchmarks/results/engines.md``).

Limits (``EngineUnsupportedError``): no beams or constrained decoding, no PEFT adapters (llama.cpp needs LoRA files
converted to GGUF), no CUDA (the wheel is built for the CPU). llama-cpp-python has no wheel for every platform: pip
then builds it from source (4.5 min on 2 cores with the Makefile's ``CMAKE_ARGS``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genrec.engines.base import Capabilities, EngineUnsupportedError, GenerationRequest, lines_done

N_BATCH = 512  # tokens per llama_decode call
N_SEQUENCES, N_CTX = 64, 8192  # sequences at once (the prompt and up to 63 lines) and KV cells of them all


class LlamaCppBackend:
    """A llama.cpp model and context on the CPU, fed and read as token ids."""

    name = "llamacpp"
    capabilities = Capabilities(beams=False, constrained=False, adapters=False, training=False, scoring=True)

    def __init__(self, source: Path, tokenizer: Any, stop_token_ids: Sequence[int], *, threads: int = 2) -> None:
        import llama_cpp

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp logs every load at INFO
        self.lib = llama_cpp
        llama_cpp.llama_backend_init()
        self._model = llama_cpp.llama_model_load_from_file(str(source).encode(), llama_cpp.llama_model_default_params())
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {source}")
        self.threads = threads
        self._context = self._make_context()
        self._batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self._model))
        self.tokenizer = tokenizer
        self.stop_token_ids = set(stop_token_ids)

    def _make_context(self) -> Any:
        params = self.lib.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = N_CTX, N_BATCH, N_BATCH, N_SEQUENCES
        params.n_threads = params.n_threads_batch = self.threads
        params.kv_unified = True  # sequences share the prompt's cells; separate streams are far slower
        context = self.lib.llama_init_from_model(self._model, params)
        if not context:
            raise RuntimeError("llama.cpp could not create a context")
        return context

    def __del__(self) -> None:
        lib = getattr(self, "lib", None)
        if lib is None:
            return
        if getattr(self, "_batch", None) is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_context", None):
            lib.llama_free(self._context)
            self._context = None
        if getattr(self, "_model", None):
            lib.llama_model_free(self._model)
            self._model = None

    def without_adapter(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # never has one

    # -- the llama.cpp calls -----------------------------------------------------------------------------------
    def _decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> np.ndarray:
        """Run ``entries`` (token, position, sequence, wants logits) through the model, ``N_BATCH`` per call; the
        logits of the entries that want them, in order (rows x vocabulary)."""
        rows = []
        batch = self._batch
        for start in range(0, len(entries), N_BATCH):
            chunk = entries[start : start + N_BATCH]
            batch.n_tokens = len(chunk)
            for i, (token, position, sequence, logits) in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, position, 1, logits
                batch.seq_id[i][0] = sequence
            status = self.lib.llama_decode(self._context, batch)
            if status != 0:
                raise RuntimeError(f"llama_decode failed ({status}): a prompt too long for the KV cache?")
            for i, entry in enumerate(chunk):
                if entry[3]:
                    pointer = self.lib.llama_get_logits_ith(self._context, i)
                    rows.append(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy())
        return np.stack(rows) if rows else np.empty((0, self.n_vocab), dtype=np.float32)

    def _clear(self) -> Any:
        """Empty the KV cache (its metadata: the cells are overwritten) and return it."""
        memory = self.lib.llama_get_memory(self._context)
        self.lib.llama_memory_clear(memory, False)
        return memory

    # -- generation --------------------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> list[list[str]]:
        r = request
        if r.num_beams > 1 or r.allowed_tokens is not None:
            raise EngineUnsupportedError("engine 'llamacpp' supports greedy and sampled decoding only")
        if r.num_return_sequences > N_SEQUENCES:
            raise EngineUnsupportedError(f"engine 'llamacpp' returns at most {N_SEQUENCES} sequences per prompt")
        return [self._generate_one(index, r) for index in range(len(r.prompts))]

    def _generate_one(self, index: int, r: GenerationRequest) -> list[str]:
        """The ``num_return_sequences`` continuations of prompt ``index`` of ``r``, decoded together."""
        prompt, n = r.prompts[index], r.num_return_sequences
        if (len(prompt) + r.max_new_tokens) * n > N_CTX:
            raise ValueError(f"engine 'llamacpp' holds {N_CTX} tokens: prompt and max_new_tokens exceed it")
        memory = self._clear()
        last = self._decode([(token, position, 0, position == len(prompt) - 1) for position, token in
                             enumerate(prompt)])[0]
        for sequence in range(1, n):  # return sequences share the prompt's cells
            self.lib.llama_memory_seq_cp(memory, 0, sequence, -1, -1)
        logits = dict.fromkeys(range(n), last)
        rngs = [np.random.default_rng([r.seed, index, sequence]) for sequence in range(n)]
        written: list[list[int]] = [[] for _ in range(n)]
        live = list(range(n))
        while live:
            step = []
            for sequence in live:
                token = self._pick(logits[sequence], r, rngs[sequence])
                ids = written[sequence]
                done = token in self.stop_token_ids
                if not done:
                    ids.append(token)
                    done = len(ids) >= r.max_new_tokens or (
                        r.stop_after_lines is not None and lines_done(self._text(ids), r.stop_after_lines))
                if not done:
                    step.append(sequence)
            live = step
            if live:
                rows = self._decode([(written[s][-1], len(prompt) + len(written[s]) - 1, s, True) for s in live])
                logits.update(zip(live, rows, strict=True))
        return [self._text(ids).strip() for ids in written]

    @staticmethod
    def _pick(logits: np.ndarray, r: GenerationRequest, rng: np.random.Generator) -> int:
        if not r.do_sample:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / (r.temperature or 1.0)
        probabilities = np.exp(scaled - scaled.max())
        return int(rng.choice(len(probabilities), p=probabilities / probabilities.sum()))

    def _text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # -- scoring -----------------------------------------------------------------------------------------------
    def continuation_logprobs(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]], *,
                              batch_size: int | None = None) -> list[list[float]]:
        """Per-token log-probabilities of each continuation after ``prompt``: the prompt runs once (sequence 0);
        each group of continuations (``batch_size`` lines, else up to ``N_BATCH`` tokens) runs in one call, each
        line a sequence on the prompt's cache cells."""
        memory = self._clear()
        first = _log_softmax(self._decode([(t, p, 0, p == len(prompt) - 1) for p, t in enumerate(prompt)])[0])
        limit = min(batch_size or N_SEQUENCES - 1, N_SEQUENCES - 1)
        groups: list[list[int]] = []
        tokens = 0
        for index, line in enumerate(continuations):
            if groups and len(groups[-1]) < limit and (batch_size or tokens + len(line) <= N_BATCH):
                groups[-1].append(index)
                tokens += len(line)
            else:
                groups.append([index])
                tokens = len(line)
        scores: list[list[float]] = [[] for _ in continuations]
        for group in groups:
            entries = []
            for slot, index in enumerate(group, start=1):
                self.lib.llama_memory_seq_cp(memory, 0, slot, -1, -1)
                line = continuations[index]
                entries += [(t, len(prompt) + p, slot, p < len(line) - 1) for p, t in enumerate(line)]
            rows = iter(self._decode(entries))
            for index in group:
                line = continuations[index]
                row = [float(first[line[0]])]
                row += [float(_log_softmax(next(rows))[token]) for token in line[1:]]
                scores[index] = row
            for slot in range(1, len(group) + 1):
                self.lib.llama_memory_seq_rm(memory, slot, -1, -1)
        return scores


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    values = logits.astype(np.float64)
    shifted = values - values.max()
    return shifted - np.log(np.exp(shifted).sum())


def load_llamacpp(llm_class: Any, config: Any) -> Any:
    """An ``LLM`` (of ``llm_class``) whose backend is llama-cpp-python, for ``LLMConfig(engine="llamacpp")``:
    ``config.model`` is ``None`` (the shipped GGUF) or a ``.gguf`` file."""
    import importlib.util

    import torch

    from genrec.errors import GenrecError
    from genrec.llm import ModelNotFoundError, gguf_tokenizer, stop_token_ids

    if config.adapter is not None:
        raise EngineUnsupportedError("engine 'llamacpp' cannot apply a PEFT adapter (llama.cpp needs it converted "
                                     "to a GGUF LoRA): use engine 'transformers' for tuned models")
    if config.device == "cuda":
        raise EngineUnsupportedError("engine 'llamacpp' runs on the CPU: use engine 'transformers' for CUDA")
    if config.dtype in ("bfloat16", "float16"):
        raise EngineUnsupportedError(f"engine 'llamacpp' computes in the GGUF file's own types, not {config.dtype}")
    if importlib.util.find_spec("llama_cpp") is None:
        raise GenrecError("engine 'llamacpp' needs the package llama-cpp-python (pip install 'genrec[llamacpp]'); "
                          "where PyPI has no wheel for the platform pip builds it from source: a C++ compiler and "
                          "CMake (minutes)")
    if config.model is None:
        source, tokenizer = gguf_tokenizer()
    else:
        source = Path(config.model).expanduser()
        if not (source.is_file() and source.suffix == ".gguf"):
            raise ModelNotFoundError(f"engine 'llamacpp' needs a .gguf file, got {config.model!r}")
        source, tokenizer = gguf_tokenizer(source)
    stops = stop_token_ids(tokenizer)
    backend = LlamaCppBackend(source, tokenizer, stops, threads=torch.get_num_threads())
    return llm_class(None, tokenizer, config, backend=backend)

