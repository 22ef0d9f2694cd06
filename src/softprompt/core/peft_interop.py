"""Prompts in other tools' formats: Hugging Face PEFT prompt-tuning adapters and the authors' T5X ``.npy`` arrays.

P prompt length, H hidden size, S PEFT's ``num_transformer_submodules``.

PEFT (``PeftType.PROMPT_TUNING``) stores a folder: ``adapter_config.json`` and ``adapter_model.safetensors`` whose
``prompt_embeddings`` tensor is ``[S·P, H]``. Its forward prepends the raw rows to ``word_embeddings(input_ids)``
— the output of the model's input-embedding module, the same space as ours (Gemma's sqrt(H) scaling included) —
with an all-ones prompt mask, and positions that count the prompt, as our splice does. For encoder-decoder
models PEFT's default is S = 2 (P rows meant for the encoder, then P for the decoder), but its prompt-tuning
forward only ever prepends the first P rows, to the encoder input; the other P are allocated and never used.
So an import takes rows ``[0, P)``: exactly what PEFT itself feeds the model, and the encoder prompt of the paper.
Exports write S = 1 for every model type, which PEFT accepts for seq2seq models too.

T5X (google-research/prompt-tuning) saves a bare ``[P, H]`` numpy array and nothing about its model, so importing
one names the model (``--model``) to take the fingerprint from. Arrays are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from transformers import AutoConfig

from softprompt.core.backbone import Backbone
from softprompt.core.files import atomic_write
from softprompt.core.promptfile import PromptFile, PromptFileError, PromptMeta, check_finite, save_prompt

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_KEY = "prompt_embeddings"


def is_encoder_decoder(model_type: str) -> bool:
    """Whether a transformers ``model_type`` (``t5``, ``llama``, ...) is an encoder-decoder."""
    try:
        return bool(AutoConfig.for_model(model_type).is_encoder_decoder)
    except ValueError:
        raise PromptFileError(f"unknown model type {model_type!r}: cannot tell CAUSAL_LM from SEQ_2_SEQ_LM") from None


def peft_config(meta: PromptMeta) -> dict[str, Any]:
    """The ``adapter_config.json`` of a prompt: the fields ``peft.PromptTuningConfig`` reads."""
    seq2seq = is_encoder_decoder(meta.model_type)
    return {
        "peft_type": "PROMPT_TUNING",
        "task_type": "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM",
        "num_virtual_tokens": meta.prompt_length,
        "token_dim": meta.hidden_size,
        "num_transformer_submodules": 1,
        "base_model_name_or_path": meta.base_model,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "inference_mode": True,
        "revision": None,
    }


def export_peft(pf: PromptFile, out_dir: str | Path) -> Path:
    """Write ``pf`` as a PEFT prompt-tuning adapter folder; returns the folder."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PromptFileError(f"{out_dir} exists and is not a folder")
    config = peft_config(pf.meta)
    weights = {PEFT_KEY: pf.prompt.float().contiguous()}
    # PEFT reads "format"; the softprompt metadata rides along so nothing is lost on a round trip.
    header = {"format": "pt", "softprompt": json.dumps(pf.meta.to_json(), sort_keys=True)}
    atomic_write(out_dir / PEFT_WEIGHTS, lambda tmp: save_file(weights, tmp, metadata=header))
    atomic_write(out_dir / PEFT_CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    return out_dir


def read_peft(folder: str | Path) -> tuple[Tensor, dict[str, Any]]:
    """(prompt [P, H] float32, adapter config) of a PEFT prompt-tuning folder; see the module doc for the rows."""
    folder = Path(folder)
    config_path = folder / PEFT_CONFIG
    if not config_path.is_file():
        raise PromptFileError(f"{folder}: not a PEFT adapter folder (no {PEFT_CONFIG})")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise PromptFileError(f"{config_path}: not valid JSON ({err.msg})") from None
    kind = config.get("peft_type")
    if kind != "PROMPT_TUNING":
        raise PromptFileError(f"{config_path}: peft_type {kind!r}; only PROMPT_TUNING adapters are input prompts "
                              "(prefix tuning and P-tuning are not)")
    weights = folder / PEFT_WEIGHTS
    if not weights.is_file():
        pickled = " (adapter_model.bin is pickle, which softprompt does not load: re-save with safetensors)" \
            if (folder / "adapter_model.bin").is_file() else ""
        raise PromptFileError(f"{folder}: no {PEFT_WEIGHTS}{pickled}")
    try:
        with safe_open(str(weights), framework="pt") as f:
            if PEFT_KEY not in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                raise PromptFileError(f"{weights}: no {PEFT_KEY!r} tensor (tensors: {list(f.keys())})")
            rows = f.get_tensor(PEFT_KEY)
    except (SafetensorError, OSError) as err:
        raise PromptFileError(f"{weights}: unreadable safetensors file ({err})") from None
    p = config.get("num_virtual_tokens")
    if not isinstance(p, int) or p < 1:
        raise PromptFileError(f"{config_path}: num_virtual_tokens must be a positive integer, got {p!r}")
    submodules = config.get("num_transformer_submodules") or (2 if config.get("task_type") == "SEQ_2_SEQ_LM" else 1)
    if rows.dim() != 2 or rows.shape[0] != p * submodules:
        raise PromptFileError(f"{weights}: {PEFT_KEY} has shape {tuple(rows.shape)}; expected "
                              f"[{p * submodules}, H] for {p} virtual tokens × {submodules} submodules")
    token_dim = config.get("token_dim")
    if token_dim is not None and token_dim != rows.shape[1]:
        raise PromptFileError(f"{config_path}: token_dim {token_dim} disagrees with the tensor's {rows.shape[1]}")
    prompt = rows[:p].float().contiguous()  # the rows PEFT prepends to the (encoder) input
    check_finite(prompt, str(weights))
    return prompt, config


def read_npy(path: str | Path) -> Tensor:
    """A T5X prompt: a ``[P, H]`` float array (a leading batch axis of 1 is dropped)."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no such file")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:  # object arrays need pickle; corrupt files fail the header parse
        raise PromptFileError(f"{path}: not a plain numeric .npy array ({err})") from None
    if not isinstance(array, np.ndarray):
        raise PromptFileError(f"{path}: a .npz archive, not one .npy array")
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise PromptFileError(f"{path}: expected a [P, H] float array, got {array.dtype} {array.shape}")
    prompt = torch.from_numpy(array.astype(np.float32))
    check_finite(prompt, str(path))
    return prompt


def write_npy(pf: PromptFile, path: str | Path) -> Path:
    """The prompt as a bare ``[P, H]`` float32 array, as T5X saves them (the metadata is lost)."""
    path = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to the temporary name
            np.save(f, pf.prompt.numpy().astype(np.float32), allow_pickle=False)

    atomic_write(path, write)
    return path


def import_prompt(prompt: Tensor, backbone: Backbone, out: str | Path, *, source: str,
                  extra: dict[str, Any] | None = None) -> PromptFile:
    """Write an outside ``[P, H]`` prompt as a softprompt file bound to ``backbone`` (its fingerprint)."""
    if prompt.shape[1] != backbone.hidden_size:
        raise PromptFileError(f"{source}: prompt hidden size {prompt.shape[1]} does not match {backbone.name!r} "
                              f"({backbone.hidden_size})")
    meta = PromptMeta.for_backbone(backbone, int(prompt.shape[0]), init=f"imported:{source}",
                                   metrics={"imported": extra or {}})
    save_prompt(out, prompt, meta)
    return PromptFile(prompt, meta)
