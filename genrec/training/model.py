"""The model being tuned: a local causal LM with a fresh LoRA adapter, in bf16 (CPU default) or 4-bit (QLoRA).

QLoRA follows Dettmers et al.: the base weights are bitsandbytes NF4 with double quantisation and bf16 compute,
``prepare_model_for_kbit_training`` freezes them and upcasts the small non-quantised parameters (norms,
embeddings) to float32, and only the LoRA matrices train. On CPU, 4-bit training works but is slow; it carries the
bitsandbytes zero-gradient trap, which ``genrec.llm.disable_bnb_cpu_repack`` defuses (see ``load_for_training``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genrec.errors import GenrecError
from genrec.llm import (
    ModelNotFoundError,
    contiguous_head_input,
    default_model_dir,
    disable_bnb_cpu_repack,
    four_bit_config,
)
from genrec.training.config import LoraSettings

NON_REENTRANT = {"use_reentrant": False}  # activation checkpointing that works under DDP and with frozen inputs


def base_model_path(model: str | None) -> Path:
    """The local Hugging Face directory of the base model (``None``: the default SmolLM2-135M-Instruct copy)."""
    if model is None:
        return default_model_dir()
    path = Path(model).expanduser()
    if path.is_file():
        raise GenrecError(f"{model}: training needs a Hugging Face model directory, not a .gguf file")
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"model {model!r} is not a local Hugging Face model directory (no config.json); "
                                 "genrec never downloads models")
    return path


def lora_config(settings: LoraSettings, num_layers: int) -> Any:
    """The PEFT ``LoraConfig`` for ``settings`` on a model with ``num_layers`` transformer blocks."""
    from peft import LoraConfig

    layers = None
    if settings.top_layers is not None:
        layers = list(range(max(0, num_layers - settings.top_layers), num_layers))
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=list(settings.target_modules), layers_to_transform=layers, bias="none",
                      task_type="CAUSAL_LM")


def load_for_training(path: Path, lora: LoraSettings, *, device: torch.device, dtype: torch.dtype,
                      load_in_4bit: bool = False, gradient_checkpointing: bool = False) -> tuple[Any, Any]:
    """The base model at ``path`` wrapped with a trainable LoRA adapter, in train mode, and its tokenizer.

    With ``load_in_4bit`` the base is quantised to NF4 on ``device`` and prepared for k-bit training; on CPU the
    bitsandbytes repacking is disabled on every 4-bit layer, since after any forward pass without gradients
    (validation, generation) it would silently zero every later gradient.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if load_in_4bit:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.bfloat16,
                                                     quantization_config=four_bit_config(),
                                                     device_map={"": device})
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs=NON_REENTRANT)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype).to(device)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=NON_REENTRANT)
    model.config.use_cache = False
    contiguous_head_input(model)
    model = get_peft_model(model, lora_config(lora, model.config.num_hidden_layers))
    adapter_dtype = getattr(torch, lora.dtype)  # PEFT makes the adapter float32; bfloat16 keeps the base's dtype
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.to(adapter_dtype)
    if load_in_4bit and device.type == "cpu":
        disable_bnb_cpu_repack(model)
    model.train()  # from_pretrained returns eval mode, where gradient checkpointing does not run
    return model, tokenizer


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (4-bit weights count as stored)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
