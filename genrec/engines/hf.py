"""The transformers backend: the reference engine (eager PyTorch) and the one genrec trains with.

Generation is transformers' ``generate`` with left-padded, length-sorted batches; beams share one prefill per
prompt; ``allowed_tokens`` constrains decoding. Scoring packs the candidate lines into one tree-masked sequence
after the prompt's KV cache (``genrec.engines.packing``) and computes the vocabulary only where a scored token is
predicted.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from typing import Any

import torch

from genrec.engines.base import Capabilities, GenerationRequest, lines_done
from genrec.engines.packing import PackedLines, group_by_tokens

PACK_TOKENS = 1024  # candidate tokens per packed forward pass: bounds the N x (prompt + N) attention mask
HEAD_ROWS = 256  # positions per chunk of the vocabulary projection (256 x 49k floats = 50 MB)


class TransformersBackend:
    """Runs a (PEFT-wrapped or plain) transformers causal LM in-process."""

    name = "transformers"
    capabilities = Capabilities(beams=True, constrained=True, adapters=True, training=True, scoring=True)

    def __init__(self, model: Any, tokenizer: Any, stop_token_ids: Sequence[int]) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.stop_token_ids = list(stop_token_ids)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def without_adapter(self) -> contextlib.AbstractContextManager:
        disable = getattr(self.model, "disable_adapter", None)
        return disable() if disable is not None else contextlib.nullcontext()

    # -- generation --------------------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> list[list[str]]:
        from tqdm.auto import tqdm
        from transformers import GenerationConfig

        r = request
        generation = GenerationConfig(
            max_new_tokens=r.max_new_tokens,
            do_sample=r.do_sample,
            temperature=r.temperature if r.do_sample else None,
            top_p=None,
            top_k=None,
            num_beams=r.num_beams,
            num_return_sequences=r.num_return_sequences,
            # constrained beams that finish early leave no children to refill the beam, so their slots take
            # penalised repeats; a search that stops at num_beams finished hypotheses would return those
            early_stopping=(r.allowed_tokens is None) if r.num_beams > 1 else None,
            eos_token_id=self.stop_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        encoded = r.prompts
        order = sorted(range(len(encoded)), key=lambda index: len(encoded[index]))
        results: list[list[str]] = [[] for _ in encoded]
        if r.do_sample:
            torch.manual_seed(r.seed)
        batches = [order[start : start + r.batch_size] for start in range(0, len(order), r.batch_size)]
        for batch in tqdm(batches, desc="generating", unit="batch", disable=not r.progress):
            inputs = self.tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
            inputs = inputs.to(self.device)
            start = inputs["input_ids"].shape[1]
            stopping = [_LineStop(self.tokenizer, start, r.stop_after_lines)] if r.stop_after_lines else None
            constrain = None
            if r.allowed_tokens is not None:
                def constrain(row: int, ids: torch.Tensor, start: int = start, batch: list[int] = batch,
                              allowed: Any = r.allowed_tokens) -> list[int]:
                    return allowed(batch[row], ids[start:].tolist())
            with torch.no_grad():
                shared = self._shared_prefill(inputs, r.num_beams) if r.num_beams > 1 else {}
                output = self.model.generate(**inputs, generation_config=generation, stopping_criteria=stopping,
                                             prefix_allowed_tokens_fn=constrain, **shared)
            texts = self.tokenizer.batch_decode(output[:, start:], skip_special_tokens=True)
            n = r.num_return_sequences
            for position, index in enumerate(batch):
                results[index] = [text.strip() for text in texts[position * n : (position + 1) * n]]
        return results

    def _shared_prefill(self, inputs: Any, copies: int) -> dict[str, Any]:
        """The KV cache of every prompt but its last token, computed once and repeated ``copies`` times.

        Beam search copies each prompt once per beam before its first forward pass; with a long prompt and a
        short answer (a title), that prefill is most of the work. Given this cache, generation only runs the last
        prompt token per beam.
        """
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        if ids.shape[1] < 2:
            return {}
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        cache = self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                           use_cache=True).cache
        cache.batch_repeat_interleave(copies)
        return {"cache": cache}

    # -- scoring -----------------------------------------------------------------------------------------------
    def continuation_logprobs(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]], *,
                              batch_size: int | None = None) -> list[list[float]]:
        """Per-token log-probabilities of each continuation after ``prompt``: the prompt runs once, then each
        group of continuations (``batch_size`` lines, else about ``PACK_TOKENS`` tokens) runs as one packed,
        tree-masked sequence on a copy of the prompt's cache."""
        device = self.device
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        decoder, head = base.get_decoder(), base.get_output_embeddings()
        if batch_size is not None:
            groups = [range(s, min(s + batch_size, len(continuations))) for s in range(0, len(continuations),
                                                                                        batch_size)]
        else:
            groups = group_by_tokens(continuations, PACK_TOKENS)
        scores: list[list[float]] = [[] for _ in continuations]
        with torch.no_grad():
            out = decoder(input_ids=torch.tensor([list(prompt)], device=device), use_cache=True)
            first = torch.log_softmax(head(out.last_hidden_state[:, -1:]).float()[0, -1], dim=-1)
            for number, group in enumerate(groups):
                cache = out.cache if number == len(groups) - 1 else copy.deepcopy(out.cache)
                packed = PackedLines.build([continuations[i] for i in group])
                node_logprobs = self._packed_logprobs(decoder, head, packed, len(prompt), cache, first)
                for line, path in zip(group, packed.paths, strict=True):
                    scores[line] = node_logprobs[path].tolist()
        return scores

    def _packed_logprobs(self, decoder: Any, head: Any, packed: PackedLines, prompt_length: int, cache: Any,
                         first: torch.Tensor) -> torch.Tensor:
        """The log-probability of every node of ``packed`` given its ancestors and the prompt (in ``cache``)."""
        device, dtype = self.device, next(self.model.parameters()).dtype
        size = len(packed)
        allowed = torch.ones((size, prompt_length + size), dtype=torch.bool)
        allowed[:, prompt_length:] = packed.tree_mask()
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        positions = torch.tensor(packed.depths, device=device) + prompt_length
        ids = torch.tensor([packed.tokens], device=device)
        hidden = decoder(input_ids=ids, attention_mask=mask[None, None].to(device), position_ids=positions[None],
                         cache=cache, use_cache=True).last_hidden_state[0]
        tokens = torch.tensor(packed.tokens, device=device)
        parents = torch.tensor(packed.parents, device=device)
        logprobs = torch.empty(size, device=device)
        roots = parents < 0
        logprobs[roots] = first[tokens[roots]]
        inner = packed.inner_nodes()
        row_of = torch.full((size,), -1, dtype=torch.long, device=device)
        row_of[torch.tensor(inner, dtype=torch.long, device=device)] = torch.arange(len(inner), device=device)
        child_rows = torch.where(roots, -1, row_of[parents.clamp(min=0)])
        for start in range(0, len(inner), HEAD_ROWS):
            rows = inner[start : start + HEAD_ROWS]
            logits = head(hidden[rows][None]).float()[0]
            norm = torch.logsumexp(logits, dim=-1)
            children = ((child_rows >= start) & (child_rows < start + len(rows))).nonzero()[:, 0]
            local = child_rows[children] - start
            logprobs[children] = logits[local, tokens[children]] - norm[local]
        return logprobs


class _LineStop:
    """Stopping criterion: a sequence is done after ``max_lines`` complete non-empty lines, or a repeated line."""

    def __init__(self, tokenizer: Any, prompt_length: int, max_lines: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.max_lines = max_lines

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        return torch.tensor([lines_done(text, self.max_lines) for text in texts], dtype=torch.bool,
                            device=input_ids.device)
