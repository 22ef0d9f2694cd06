"""Prompt files: one ``.safetensors`` with the ``prompt`` tensor ``[P, H]`` (float32) and JSON metadata that says
which model it belongs to. See docs/prompt-format.md. No pickle: safetensors holds only tensors and strings.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from softprompt.backbone import Backbone

FORMAT_NAME = "softprompt"
FORMAT_VERSION = 1
# Probe sums of the fingerprint slice must agree within this fraction of the slice's magnitude sum when the exact
# hash differs (another dtype). bf16 rounding moves a sum by at most 2^-9 of it; two different models' sums differ
# by ~1/sqrt(n) of it (n ≥ 256 values a chunk), so 1% separates the two cases in every chunk at once.
PROBE_RTOL = 1e-2


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message says why."""


@dataclass
class PromptMeta:
    """Everything a prompt file says about itself (stored as JSON in the safetensors header)."""

    base_model: str
    model_type: str
    hidden_size: int
    prompt_length: int
    embedding_fingerprint: str
    embedding_probe: list[float]
    init: str = ""
    task: str = ""
    verbalizer: dict[str, str] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @classmethod
    def for_backbone(cls, backbone: Backbone, prompt_length: int, **extra: Any) -> PromptMeta:
        digest, probe, _ = backbone.fingerprint()
        return cls(base_model=backbone.name, model_type=backbone.model_type, hidden_size=backbone.hidden_size,
                   prompt_length=prompt_length, embedding_fingerprint=digest, embedding_probe=probe, **extra)


@dataclass
class PromptFile:
    prompt: Tensor  # [P, H] float32
    meta: PromptMeta


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_finite(prompt: Tensor, where: str) -> None:
    if not bool(torch.isfinite(prompt).all()):
        bad = int((~torch.isfinite(prompt)).sum())
        raise PromptFileError(f"{where}: prompt has {bad} NaN/Inf values")


def save_prompt(path: str | Path, prompt: Tensor, meta: PromptMeta) -> None:
    """Write a prompt file atomically. prompt: [P, H]."""
    prompt = prompt.detach().float().cpu().contiguous()
    if prompt.dim() != 2 or tuple(prompt.shape) != (meta.prompt_length, meta.hidden_size):
        raise PromptFileError(f"prompt shape {tuple(prompt.shape)} does not match metadata "
                              f"[{meta.prompt_length}, {meta.hidden_size}]")
    check_finite(prompt, str(path))
    header = {"format": FORMAT_NAME, "format_version": str(meta.format_version),
              "softprompt": json.dumps(asdict(meta), sort_keys=True)}
    atomic_write(Path(path), lambda tmp: save_file({"prompt": prompt}, tmp, metadata=header))


def load_prompt(path: str | Path) -> PromptFile:
    """Read and validate a prompt file; every problem is a :class:`PromptFileError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no such prompt file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT_NAME or "softprompt" not in header:
                raise PromptFileError(f"{path}: a safetensors file, but not a softprompt prompt file "
                                      "(import PEFT or .npy prompts with `softprompt convert`)")
            keys = list(f.keys())
            if "prompt" not in keys:
                raise PromptFileError(f"{path}: no 'prompt' tensor (tensors: {keys})")
            prompt = f.get_tensor("prompt")
    except (SafetensorError, OSError, RuntimeError) as err:
        raise PromptFileError(f"{path}: not a readable safetensors file ({err})") from None
    version = int(header.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise PromptFileError(f"{path}: format version {version} is newer than this softprompt "
                              f"(reads up to {FORMAT_VERSION}); upgrade softprompt")
    try:
        meta = PromptMeta(**json.loads(header["softprompt"]))
    except (json.JSONDecodeError, TypeError) as err:
        raise PromptFileError(f"{path}: corrupt metadata ({err})") from None
    if not prompt.is_floating_point() or prompt.dim() != 2:
        raise PromptFileError(f"{path}: prompt must be a 2-D float tensor, got {prompt.dtype} "
                              f"{tuple(prompt.shape)}")
    if tuple(prompt.shape) != (meta.prompt_length, meta.hidden_size):
        raise PromptFileError(f"{path}: prompt shape {tuple(prompt.shape)} disagrees with its metadata "
                              f"[{meta.prompt_length}, {meta.hidden_size}]")
    check_finite(prompt, str(path))
    return PromptFile(prompt.float(), meta)


def check_compatible(pf: PromptFile, backbone: Backbone, where: str = "prompt") -> None:
    """Refuse a prompt trained for another model: hidden size, then the embedding fingerprint."""
    if pf.meta.hidden_size != backbone.hidden_size:
        raise PromptFileError(f"{where}: hidden size {pf.meta.hidden_size} (trained on {pf.meta.base_model!r}) "
                              f"does not match the model's {backbone.hidden_size} ({backbone.name!r})")
    digest, probe, magnitude = backbone.fingerprint()
    if digest == pf.meta.embedding_fingerprint:
        return
    close = len(probe) == len(pf.meta.embedding_probe) and all(
        abs(a - b) <= PROBE_RTOL * m for a, b, m in zip(probe, pf.meta.embedding_probe, magnitude, strict=True))
    if not close:
        raise PromptFileError(f"{where}: trained on a different model ({pf.meta.base_model!r}, "
                              f"{pf.meta.model_type}); its embedding fingerprint does not match {backbone.name!r}")
