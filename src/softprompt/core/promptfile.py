"""Prompt files: one ``.safetensors`` with the ``prompt`` tensor ``[P, H]`` (float32) and JSON metadata that says
which model it belongs to. See docs/prompt-format.md. No pickle: safetensors holds only tensors and strings.

Format version 2 (written) fingerprints every weight tensor and records the weight dtype; version 1 (still read)
fingerprinted 64 embedding rows. The fingerprints themselves are in :mod:`softprompt.core.fingerprint`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from softprompt.core.backbone import Backbone
from softprompt.core.files import atomic_write
from softprompt.core.fingerprint import (
    Fingerprint,
    embedding_fingerprint_v1,
    model_fingerprint,
    probe_mismatch,
    probe_mismatch_v1,
)

FORMAT_NAME = "softprompt"
FORMAT_VERSION = 2
# Version-1 files record no dtype, so their embedding probe sums get one tolerance for every case: within this
# fraction of the chunk's magnitude sum. bf16 rounding moves a sum by at most 2^-8 of it; two different models' sums
# differ by ~1/sqrt(n) of it (n ≥ 256 values a chunk), so 1% separates the two cases in every chunk at once.
V1_PROBE_RTOL = 1e-2
OVERRIDE_FLAG = "--allow-other-model"


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message says why."""


@dataclass
class PromptMeta:
    """Everything a prompt file says about itself (stored as JSON in the safetensors header).

    Fields and the defaults a version-1 file gets are in docs/prompt-format.md; :data:`VERSION_FIELDS` says which
    fields each format version holds.
    """

    base_model: str
    model_type: str
    hidden_size: int
    prompt_length: int
    # The model's identity (core/fingerprint.py): exact hash of sampled weights, per-chunk sums for another dtype.
    model_fingerprint: str = ""
    model_probe: list[float] = field(default_factory=list)
    model_magnitude: list[float] = field(default_factory=list)
    dtype: str = ""  # the backbone's weight dtype at training time ("float32", "bfloat16"); "" in a version-1 file
    init: str = ""
    task: str = ""
    template: str = ""  # the task's input template ({text}, or a file task's {field}s); "" when not recorded
    instruction: str = ""  # text prepended to every input in training ("" for prompt tuning)
    verbalizer: dict[str, str] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)  # what selected the checkpoint: split, size, seed
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # Version 1's identity: 64 embedding rows. Read from version-1 files, never written into version 2.
    embedding_fingerprint: str = ""
    embedding_probe: list[float] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    @classmethod
    def for_backbone(cls, backbone: Backbone, prompt_length: int, **extra: Any) -> PromptMeta:
        fp = model_fingerprint(backbone.model)
        return cls(base_model=backbone.name, model_type=backbone.model_type, hidden_size=backbone.hidden_size,
                   prompt_length=prompt_length, model_fingerprint=fp.digest, model_probe=fp.probe,
                   model_magnitude=fp.magnitude, dtype=fp.dtype, **extra)

    def to_json(self) -> dict[str, Any]:
        """The JSON object a file of this meta's version holds (only that version's fields)."""
        if self.format_version not in VERSION_FIELDS:
            raise PromptFileError(f"cannot write format version {self.format_version!r} (this softprompt writes "
                                  f"{', '.join(map(str, VERSION_FIELDS))})")
        values = asdict(self)
        return {k: values[k] for k in VERSION_FIELDS[self.format_version]}


_COMMON_OPTIONAL = ("init", "task", "verbalizer", "train_config", "metrics", "format_version")
# Fields of each format version: name → required. An optional field a file lacks takes PromptMeta's default; a field
# not listed is an error (a writer that adds a field bumps the version, so an unknown key is a file softprompt did
# not write, or one edited by hand).
VERSION_FIELDS: dict[int, dict[str, bool]] = {
    1: {**dict.fromkeys(("base_model", "model_type", "hidden_size", "prompt_length", "embedding_fingerprint",
                         "embedding_probe"), True), **dict.fromkeys(_COMMON_OPTIONAL, False)},
    2: {**dict.fromkeys(("base_model", "model_type", "hidden_size", "prompt_length", "model_fingerprint",
                         "model_probe", "model_magnitude", "dtype"), True),
        **dict.fromkeys(("template", "instruction", "selection", *_COMMON_OPTIONAL), False)},
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_numbers(v: Any) -> bool:
    return isinstance(v, list) and all((_is_int(x) or isinstance(x, float)) for x in v)


def _is_sha256(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _is_selection(v: Any) -> bool:
    return (isinstance(v, dict) and isinstance(v.get("split", ""), str)
            and all(_is_int(v[k]) for k in ("size", "seed") if k in v))


# What each field must hold: (test, description for the error message).
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "base_model": (lambda v: isinstance(v, str), "a string"),
    "model_type": (lambda v: isinstance(v, str), "a string"),
    "hidden_size": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "prompt_length": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "model_fingerprint": (_is_sha256, "a sha256 hex digest"),
    "model_probe": (_is_numbers, "a list of numbers"),
    "model_magnitude": (_is_numbers, "a list of numbers"),
    "dtype": (lambda v: isinstance(v, str) and bool(v), "a dtype name such as 'float32'"),
    "embedding_fingerprint": (_is_sha256, "a sha256 hex digest"),
    "embedding_probe": (_is_numbers, "a list of numbers"),
    "init": (lambda v: isinstance(v, str), "a string"),
    "task": (lambda v: isinstance(v, str), "a string"),
    "template": (lambda v: isinstance(v, str), "a string"),
    "instruction": (lambda v: isinstance(v, str), "a string"),
    "verbalizer": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
                   "an object of label → text"),
    "selection": (_is_selection, "an object with 'split' (string), 'size' and 'seed' (integers)"),
    "train_config": (lambda v: isinstance(v, dict), "an object"),
    "metrics": (lambda v: isinstance(v, dict), "an object"),
    "format_version": (_is_int, "an integer"),
}


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def meta_from_json(obj: Any, version: int, where: str) -> PromptMeta:
    """Validate a file's metadata object (``version`` from its header); every problem names the field."""
    if not isinstance(obj, dict):
        raise PromptFileError(f"{where}: corrupt metadata (a JSON {type(obj).__name__}, not an object)")
    fields = VERSION_FIELDS[version]
    unknown = sorted(set(obj) - set(fields))
    if unknown:
        raise PromptFileError(f"{where}: unknown metadata field(s) {unknown} for format version {version}")
    missing = [k for k, required in fields.items() if required and k not in obj]
    if missing:
        raise PromptFileError(f"{where}: metadata field(s) {missing} missing (format version {version})")
    for key, value in obj.items():
        test, what = _RULES[key]
        if not test(value):
            raise PromptFileError(f"{where}: metadata field {key!r} must be {what}, got {_shown(value)}")
    if obj.get("format_version", version) != version:
        raise PromptFileError(f"{where}: metadata field 'format_version' is {obj['format_version']}, the header "
                              f"says {version}")
    if version >= 2 and len(obj["model_magnitude"]) != len(obj["model_probe"]):
        raise PromptFileError(f"{where}: metadata field 'model_magnitude' has {len(obj['model_magnitude'])} sums "
                              f"for {len(obj['model_probe'])} in 'model_probe'")
    values = {k: [float(x) for x in v] if _RULES[k][0] is _is_numbers else v for k, v in obj.items()}
    return PromptMeta(**{**values, "format_version": version})


@dataclass
class PromptFile:
    prompt: Tensor  # [P, H] float32
    meta: PromptMeta


def check_finite(prompt: Tensor, where: str) -> None:
    if not bool(torch.isfinite(prompt).all()):
        bad = int((~torch.isfinite(prompt)).sum())
        raise PromptFileError(f"{where}: prompt has {bad} NaN/Inf values")


def save_prompt(path: str | Path, prompt: Tensor, meta: PromptMeta) -> None:
    """Write a prompt file atomically. prompt: [P, H]. The metadata is validated as a reader would."""
    prompt = prompt.detach().float().cpu().contiguous()
    if prompt.dim() != 2 or tuple(prompt.shape) != (meta.prompt_length, meta.hidden_size):
        raise PromptFileError(f"prompt shape {tuple(prompt.shape)} does not match metadata "
                              f"[{meta.prompt_length}, {meta.hidden_size}]")
    check_finite(prompt, str(path))
    obj = meta.to_json()
    meta_from_json(obj, meta.format_version, f"{path} (writing)")
    header = {"format": FORMAT_NAME, "format_version": str(meta.format_version),
              "softprompt": json.dumps(obj, sort_keys=True)}
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
    raw = header.get("format_version")
    if raw is None or not (raw.isascii() and raw.isdigit()):  # ASCII digits only ("²" is a digit to str)
        raise PromptFileError(f"{path}: header field 'format_version' must be an integer, got {raw!r}")
    version = int(raw)
    if version > FORMAT_VERSION:
        raise PromptFileError(f"{path}: format version {version} is newer than this softprompt "
                              f"(reads up to {FORMAT_VERSION}); upgrade softprompt")
    if version not in VERSION_FIELDS:
        raise PromptFileError(f"{path}: header field 'format_version' is {version}; versions are "
                              f"{', '.join(map(str, VERSION_FIELDS))}")
    try:
        obj = json.loads(header["softprompt"])
    except (ValueError, RecursionError) as err:  # ValueError: bad JSON, or an integer of > 4300 digits
        raise PromptFileError(f"{path}: corrupt metadata ({err})") from None
    meta = meta_from_json(obj, version, str(path))
    if not prompt.is_floating_point() or prompt.dim() != 2:
        raise PromptFileError(f"{path}: prompt must be a 2-D float tensor, got {prompt.dtype} "
                              f"{tuple(prompt.shape)}")
    if tuple(prompt.shape) != (meta.prompt_length, meta.hidden_size):
        raise PromptFileError(f"{path}: prompt shape {tuple(prompt.shape)} disagrees with its metadata "
                              f"[{meta.prompt_length}, {meta.hidden_size}]")
    check_finite(prompt, str(path))
    return PromptFile(prompt.float(), meta)


def identity_mismatch(meta: PromptMeta, backbone: Backbone) -> str | None:
    """Why ``backbone`` is not the model ``meta`` was trained on (None: it is).

    Version 2: the same hash is the same model. The same dtype with another hash is another model — the hash is
    exact, so no tolerance applies. Only across dtypes are the probe sums compared, within the rounding bound of the
    two dtypes (softprompt.core.fingerprint.probe_mismatch). Version 1 (no dtype recorded): today's rule then as now,
    the embedding hash or the embedding probe sums within :data:`V1_PROBE_RTOL`.
    """
    if meta.format_version == 1:
        loaded = embedding_fingerprint_v1(backbone)
        if loaded.digest == meta.embedding_fingerprint:
            return None
        stored = Fingerprint(meta.embedding_fingerprint, meta.embedding_probe, [], "")
        return probe_mismatch_v1(stored, loaded, V1_PROBE_RTOL)
    loaded = model_fingerprint(backbone.model)
    if loaded.digest == meta.model_fingerprint:
        return None
    if loaded.dtype == meta.dtype:
        return (f"its weights differ (both {loaded.dtype}; fingerprint {loaded.digest[:12]}, the prompt's "
                f"{meta.model_fingerprint[:12]})")
    stored = Fingerprint(meta.model_fingerprint, meta.model_probe, meta.model_magnitude, meta.dtype)
    return probe_mismatch(stored, loaded)


def check_compatible(pf: PromptFile, backbone: Backbone, where: str = "prompt", *,
                     allow_other_model: bool = False) -> str | None:
    """Refuse a prompt trained for another model: hidden size (always), then the model's identity.

    ``allow_other_model`` turns an identity mismatch into a one-line warning on stderr (returned too); a prompt of
    another hidden size cannot run at all and is refused regardless.
    """
    meta = pf.meta
    if meta.hidden_size != backbone.hidden_size:
        raise PromptFileError(f"{where}: hidden size {meta.hidden_size} (trained on {meta.base_model!r}) "
                              f"does not match the model's {backbone.hidden_size} ({backbone.name!r})")
    why = identity_mismatch(meta, backbone)
    if why is None:
        return None
    trained = ", ".join(x for x in (meta.model_type, meta.dtype) if x)
    message = f"{where}: trained on a different model ({meta.base_model!r}, {trained}) than {backbone.name!r}: {why}"
    if not allow_other_model:
        raise PromptFileError(f"{message}; pass {OVERRIDE_FLAG} (allow_other_model=True) to use it anyway")
    print(f"softprompt: warning: {message}; used anyway ({OVERRIDE_FLAG})", file=sys.stderr)
    return message
