"""Precision and memory settings for the frozen backbone: bf16/fp16 weights with an fp32 master prompt, and
gradient checkpointing.

The prompt (:class:`softprompt.core.bank.PromptBank`) is always a float32 parameter. Under ``bf16``/``fp16`` only the
backbone's *weights* are cast (they never train, so there is no fp32 copy to keep and memory halves); the splice
casts the prompt to the model's dtype on the way in, and autograd casts its gradient back to float32 on the way
out, so the optimizer updates an fp32 prompt with fp32 gradients. Log-probabilities are computed in float32.
``fp16`` (5 exponent bits) needs loss scaling for small gradients not to flush to zero: :func:`grad_scaler`.
Alternative rejected: autocast over fp32 weights — it keeps the fp32 weights *and* makes half copies per op,
which costs memory for a model that never updates them.

Attention: transformers (5.x) already picks PyTorch SDPA (flash / memory-efficient kernels on GPUs) for every
supported family; ``Backbone.model.config._attn_implementation`` says which one a model got.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# `accelerate launch --mixed_precision X` / an accelerate config export this; "no" means fp32.
ACCELERATE_PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"


def resolve_precision(flag: str | None) -> str:
    """An explicit ``--precision`` wins; else Accelerate's ``--mixed_precision`` (bf16/fp16); else fp32."""
    if flag is not None:
        if flag not in PRECISIONS:
            raise ValueError(f"unknown precision {flag!r}; choose one of {', '.join(PRECISIONS)}")
        return flag
    env = os.environ.get(ACCELERATE_PRECISION_ENV, "no").lower()
    if env in ("bf16", "fp16"):
        return env
    if env in ("no", "fp32", ""):
        return "fp32"
    raise ValueError(f"{ACCELERATE_PRECISION_ENV}={env!r} is not supported here (no, bf16, fp16)")


def backbone_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def grad_scaler(model: nn.Module, growth_interval: int = 2000) -> torch.amp.GradScaler | None:
    """A dynamic loss scaler when the backbone holds fp16 weights (None otherwise: fp32 and bf16 need none).

    The scale halves at every step whose gradients overflow (the step is skipped) and doubles after
    ``growth_interval`` steps in a row without one.
    """
    if backbone_dtype(model) != torch.float16:
        return None
    return torch.amp.GradScaler(next(model.parameters()).device.type, growth_interval=growth_interval)


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute each transformer block's activations in the backward pass instead of storing them; returns the
    number of blocks that will checkpoint.

    Costs about one extra forward per step; activation memory falls from every layer's to one layer's (plus the
    block inputs). Non-reentrant checkpointing: the reentrant variant needs block inputs that require grad,
    which ours do (the prompt is in them), but the non-reentrant one is the one PyTorch recommends.

    Transformers checkpoints a block only while the block's ``training`` flag is set, and a frozen backbone
    runs in eval mode (no dropout). So a pre-forward hook sets the flag on each block to "gradients are being
    recorded": set on the block alone, not recursively, so its submodules (attention, MLP, dropout) stay in eval
    mode and compute exactly what they compute without checkpointing; cleared under ``torch.no_grad`` so that
    evaluation and generation keep their KV cache (a checkpointing block drops it).
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the older name is deprecated
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    # The blocks and the model classes above them: those read the same flags to switch the KV cache off, which
    # the blocks then drop anyway (GPT-2 breaks if the two disagree).
    flagged = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for module in flagged:
        module.register_forward_pre_hook(_checkpoint_when_recording)
    return sum(not isinstance(m, PreTrainedModel) for m in flagged)


def _checkpoint_when_recording(module: nn.Module, args: tuple) -> None:
    module.training = torch.is_grad_enabled()  # not .train(): that would switch dropout on inside the block
