"""The OpenAI-compatible backend: the model runs in a server (vLLM, SGLang, ``transformers serve``, ...) that genrec
reaches with the official ``openai`` client (``LLMConfig(llm_url="http://host:8000/v1")``).

The tokenizer stays local (``LLM`` formats and encodes the prompts), so both sides see the same tokens:

- generation: one ``/v1/completions`` request per prompt (``n`` return sequences, ``temperature`` 0 for greedy,
  ``seed`` for sampling), sent concurrently (``batch_size`` at a time) so that the server batches them. Prompts go
  as token ids; a server that refuses those (``transformers serve``, llama-cpp-python's server, which answers HTTP
  500) gets the decoded text. ``stop_after_lines``
  streams the answer and closes the stream once it holds that many lines; the text is then cut at the token that
  completed the line, as the other engines do. The server stops at the model's end-of-sequence token.
- scoring: every continuation is a prompt ``prompt + line`` of one ``/v1/completions`` request (``echo=True``,
  ``logprobs=1``, ``max_tokens=1``); the echoed prompt log-probabilities of the line's tokens are its scores (vLLM's
  prefix caching runs the shared prompt once). A server that takes only text prompts gets one request per line, its
  decoded text; the line's values are then the echoed entries just before the generated token, kept only if their
  token texts spell the line (the server may drop entries of special tokens, as llama-cpp-python does, or tokenize
  the text otherwise). A server that returns no prompt log-probabilities (``transformers serve``) raises
  ``EngineUnsupportedError``.
- adapters: ``LLMConfig.adapter`` names a LoRA the server serves (vLLM ``--lora-modules NAME=PATH``): requests ask
  for that model name; ``without_adapter`` asks for the base model's. A local adapter folder (whose
  ``genrec_adapter.json`` then applies) stands for the LoRA the server loaded from it (vLLM lists its path as the
  model's ``root``), else the model served under its path or folder name.

Connection failures, timeouts and HTTP errors raise ``LLMServerError`` naming the URL. The API key comes from
``$GENREC_LLM_API_KEY`` (default ``none``: local servers ignore it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from genrec.engines.base import Capabilities, EngineUnsupportedError, GenerationRequest, lines_done
from genrec.errors import GenrecError

API_KEY_ENV = "GENREC_LLM_API_KEY"
DEFAULT_TIMEOUT_S = 600.0
SCORING_CHUNK = 64  # continuations per scoring request when no batch_size is given
NO_LOGPROBS = "it returned no log-probabilities for the prompt's tokens"


class LLMServerError(GenrecError):
    """The OpenAI-compatible LLM server could not be reached, timed out or answered with an error."""


class OpenAIBackend:
    """Sends token ids to an OpenAI-compatible ``/v1/completions`` endpoint and decodes the answers locally."""

    name = "openai"
    capabilities = Capabilities(beams=False, constrained=False, adapters=True, training=False, scoring=True)

    def __init__(self, url: str, tokenizer: Any, *, served_model: str | None = None, adapter: str | None = None,
                 api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, max_retries: int = 2) -> None:
        import openai

        self.url = url.rstrip("/")
        self.tokenizer = tokenizer
        self.client = openai.OpenAI(base_url=self.url, api_key=api_key or os.environ.get(API_KEY_ENV, "none"),
                                    timeout=timeout_s, max_retries=max_retries)
        self.base_model, self.adapter = self._resolve_models(served_model, adapter)
        self._base_only = False
        self._token_prompts = True  # cleared once the server refuses token-id prompts

    # -- models ------------------------------------------------------------------------------------------------
    def _resolve_models(self, served_model: str | None, adapter: str | None) -> tuple[str, str | None]:
        """The base model's and the adapter's names on the server, checked against its ``/v1/models``."""
        with self._errors("listing the served models"):
            models = {entry.id: entry for entry in self.client.models.list().data}
        if adapter is not None and adapter not in models and Path(adapter).expanduser().is_dir():
            adapter = _served_name(Path(adapter).expanduser().resolve(), models)
        served = ", ".join(sorted(models)) or "none"
        if adapter is not None and adapter not in models:
            raise LLMServerError(f"the LLM server at {self.url} does not serve the adapter {adapter!r} (it serves: "
                                 f"{served}); serve it with vLLM's --enable-lora --lora-modules {adapter}=PATH")
        if served_model is None and adapter is not None:
            served_model = getattr(models[adapter], "parent", None)  # vLLM lists a LoRA's base model as its parent
        if served_model is None:
            bases = [name for name, entry in models.items() if getattr(entry, "parent", None) is None]
            if len(bases) != 1:
                raise LLMServerError(f"the LLM server at {self.url} serves {served}: name the base model "
                                     "(LLMConfig.served_model, --served-model)")
            served_model = bases[0]
        elif served_model not in models:
            raise LLMServerError(f"the LLM server at {self.url} does not serve the model {served_model!r} (it "
                                 f"serves: {served})")
        return served_model, adapter

    @property
    def model_name(self) -> str:
        """The model requests ask for: the adapter's name, or the base model's (no adapter, or ``without_adapter``)."""
        return self.base_model if self._base_only or self.adapter is None else self.adapter

    @contextlib.contextmanager
    def _base(self) -> Iterator[None]:
        previous, self._base_only = self._base_only, True
        try:
            yield
        finally:
            self._base_only = previous

    def without_adapter(self) -> contextlib.AbstractContextManager:
        return self._base()

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn the client's exceptions into ``LLMServerError``s that name the URL and what genrec was doing."""
        import openai

        try:
            yield
        except openai.APITimeoutError as exc:
            raise LLMServerError(f"the LLM server at {self.url} timed out ({doing}, after "
                                 f"{self.client.timeout} s)") from exc
        except openai.APIConnectionError as exc:
            raise LLMServerError(f"cannot reach the LLM server at {self.url} ({doing}): {exc.__cause__ or exc}; is "
                                 "it running, and is the URL its /v1 base?") from exc
        except openai.APIStatusError as exc:
            raise LLMServerError(f"the LLM server at {self.url} answered HTTP {exc.status_code} ({doing}): "
                                 f"{_detail(exc)}") from exc

    # -- generation --------------------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> list[list[str]]:
        r = request
        if r.num_beams > 1 or r.allowed_tokens is not None:
            raise EngineUnsupportedError("engine 'openai' supports greedy and sampled decoding only")
        workers = max(1, min(r.batch_size, len(r.prompts)))
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda ids: self._generate_one(ids, r), r.prompts))

    def _generate_one(self, ids: Sequence[int], r: GenerationRequest) -> list[str]:
        texts: list[str] = []
        while len(texts) < r.num_return_sequences:  # a server that ignores n returns fewer: ask again, reseeded
            texts += self._complete(ids, r, r.num_return_sequences - len(texts), seed=r.seed + len(texts))
        return [self._finish(text, r.stop_after_lines) for text in texts[: r.num_return_sequences]]

    def _complete(self, ids: Sequence[int], r: GenerationRequest, n: int, seed: int) -> list[str]:
        options: dict[str, Any] = {"model": self.model_name, "max_tokens": r.max_new_tokens, "n": n}
        if r.do_sample:
            options.update(temperature=r.temperature or 1.0, top_p=1.0, seed=seed)
        else:
            options.update(temperature=0.0)
        stream = r.stop_after_lines is not None
        with self._errors("generating"):
            response = self._create(ids, stream=stream, **options)
            if not stream:
                return [choice.text for choice in sorted(response.choices, key=lambda choice: choice.index)]
            parts: dict[int, str] = {}
            with response:
                for chunk in response:
                    for choice in chunk.choices:
                        parts[choice.index] = parts.get(choice.index, "") + (choice.text or "")
                    if len(parts) == n and all(lines_done(text, r.stop_after_lines) for text in parts.values()):
                        break  # closing the stream stops the generation on the server
            return [parts[index] for index in sorted(parts)]

    def _create(self, ids: Sequence[int], **options: Any) -> Any:
        """One completion request for the prompt ``ids``: as token ids, else (once refused) as its text."""
        if self._token_prompts:
            try:
                return self.client.completions.create(prompt=list(ids), **options)
            except _refusals() as exc:
                if "prompt" not in _detail(exc):
                    raise
                self._token_prompts = False  # e.g. transformers serve: "prompt must be a string."
        text = self.tokenizer.decode(list(ids), skip_special_tokens=False)
        return self.client.completions.create(prompt=text, **options)

    def _finish(self, text: str, max_lines: int | None) -> str:
        """The answer as the other engines return it: without special tokens, stripped, and with ``max_lines``
        cut after the token that completed the last line (a streamed chunk can hold several tokens)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if max_lines is not None:
            for end in range(1, len(ids) + 1):
                if lines_done(self.tokenizer.decode(ids[:end], skip_special_tokens=True), max_lines):
                    ids = ids[:end]
                    break
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # -- scoring -----------------------------------------------------------------------------------------------
    def continuation_logprobs(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]], *,
                              batch_size: int | None = None) -> list[list[float]]:
        size = batch_size or SCORING_CHUNK
        groups = [range(start, min(start + size, len(continuations))) for start in range(0, len(continuations),
                                                                                        size)]
        scores: list[list[float]] = []
        for group in groups:
            scores += self._score_group(list(prompt), [list(continuations[i]) for i in group])
        return scores

    def _cannot_score(self, why: str) -> EngineUnsupportedError:
        return EngineUnsupportedError(f"the LLM server at {self.url} cannot score candidate lines (decoding="
                                      "'scored'): it needs /v1/completions with echo=True and prompt logprobs (vLLM "
                                      f"and SGLang have them); {why}")

    def _score_group(self, prompt: list[int], lines: list[list[int]]) -> list[list[float]]:
        if not self._token_prompts:
            return [self._score_text(prompt, line) for line in lines]
        with self._errors("scoring"):
            try:
                response = self.client.completions.create(
                    model=self.model_name, prompt=[prompt + line for line in lines], echo=True, logprobs=1,
                    max_tokens=1, temperature=0.0)
            except _refusals() as exc:
                if "prompt" in _detail(exc):
                    self._token_prompts = False  # a server of text prompts only
                    return [self._score_text(prompt, line) for line in lines]
                raise self._cannot_score(f"it answered HTTP {exc.status_code}: {_detail(exc)}") from exc
        choices = sorted(response.choices, key=lambda choice: choice.index)
        if len(choices) != len(lines):
            raise self._cannot_score(f"it answered {len(choices)} choices for {len(lines)} prompts")
        scores = []
        for line, choice in zip(lines, choices, strict=True):
            values = getattr(choice.logprobs, "token_logprobs", None) or []
            row = values[len(prompt) : len(prompt) + len(line)]
            if len(row) != len(line) or any(value is None for value in row):
                raise self._cannot_score(NO_LOGPROBS)
            scores.append([float(value) for value in row])
        return scores

    def _score_text(self, prompt: list[int], line: list[int]) -> list[float]:
        """One line's scores from a server of text prompts: the echoed entries just before the generated token
        (none when it stopped at once), checked against the line's own text."""
        text = self.tokenizer.decode(prompt + line, skip_special_tokens=False)
        with self._errors("scoring"):
            try:
                response = self.client.completions.create(model=self.model_name, prompt=text, echo=True, logprobs=1,
                                                          max_tokens=1, temperature=0.0)
            except _refusals() as exc:
                raise self._cannot_score(f"it answered HTTP {exc.status_code}: {_detail(exc)}") from exc
        choice = response.choices[0]
        values = list(getattr(choice.logprobs, "token_logprobs", None) or [])
        tokens = list(getattr(choice.logprobs, "tokens", None) or [])
        usage = getattr(response, "usage", None)
        generated = min(1, usage.completion_tokens) if usage is not None and usage.completion_tokens is not None \
            else int(choice.text.startswith(text) and len(choice.text) > len(text))
        end = len(values) - generated
        row = values[end - len(line) : end] if end >= len(line) else []
        spelled = "".join(tokens[end - len(line) : end]) if len(tokens) == len(values) else None
        if len(row) != len(line) or any(value is None for value in row):
            raise self._cannot_score(NO_LOGPROBS)
        if spelled != self.tokenizer.decode(line, skip_special_tokens=False):
            raise self._cannot_score(f"its echoed tokens do not spell the scored line ({spelled!r}): it tokenizes "
                                     "the text otherwise")
        return [float(value) for value in row]


def _refusals() -> tuple[type[Exception], ...]:
    """The HTTP errors of a server refusing a request as sent (a token-id prompt, echo, logprobs): 400, 422, and
    500 from llama-cpp-python's server."""
    import openai

    return openai.BadRequestError, openai.UnprocessableEntityError, openai.InternalServerError


def _served_name(folder: Path, models: dict[str, Any]) -> str:
    """The name a local adapter folder is served under: the model whose ``root`` is that folder (vLLM lists a LoRA
    of ``--lora-modules NAME=PATH`` with ``root`` PATH), else the one named by its path, else its folder's name."""
    for name, entry in models.items():
        root = getattr(entry, "root", None)
        if root and Path(root).expanduser().resolve() == folder:
            return name
    return str(folder) if str(folder) in models else folder.name


def _detail(exc: Any) -> str:
    """The server's own error message from an ``openai.APIStatusError``."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        for key in ("detail", "message", "error"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message")
            if value:
                return str(value)
    return str(getattr(exc, "message", exc))


def load_openai(llm_class: Any, config: Any) -> Any:
    """An ``LLM`` (of ``llm_class``) whose backend is an OpenAI-compatible server, for
    ``LLMConfig(engine="openai", llm_url=...)``: the tokenizer is ``config.model``'s (local, default
    SmolLM2-135M-Instruct's), the model ``config.served_model`` on the server (default: the one it serves)."""
    from transformers import AutoTokenizer

    from genrec.llm import ModelNotFoundError, gguf_tokenizer

    if importlib.util.find_spec("openai") is None:
        raise GenrecError("engine 'openai' needs the package openai (pip install 'genrec[openai]')")
    if config.adapter_scale != 1.0:
        raise EngineUnsupportedError("engine 'openai' cannot scale an adapter (adapter_scale): the server applies "
                                     "it as served")
    if config.model is None:
        _, tokenizer = gguf_tokenizer()
    else:
        source = Path(config.model).expanduser()
        if source.is_file() and source.suffix == ".gguf":
            _, tokenizer = gguf_tokenizer(source)
        elif source.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        else:
            raise ModelNotFoundError(f"engine 'openai' reads the tokenizer from LLMConfig.model: a local model "
                                     f"directory or .gguf file, got {config.model!r}")
    backend = OpenAIBackend(config.llm_url, tokenizer, served_model=config.served_model, adapter=config.adapter)
    return llm_class(None, tokenizer, config, backend=backend)
