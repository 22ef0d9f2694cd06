"""Training checkpoints as safetensors (no pickle), one format for every method the loop trains.

Tensors: ``param.<name>`` the trainable parameters by the method's names (a prompt bank's ``weight`` and any
reparameterisation MLP, or every weight of a model), ``best.<name>`` what the best step so far keeps (absent when the
best step is the checkpoint's own: then the parameters are it), ``optimizer.<id>.<key>`` the optimizer state, ``rng``
torch's global CPU generator. JSON metadata: the step, best step and eval history, the optimizer's scalars, the config,
and an fp16 run's loss scaler (its scale and growth tracker decide whether the next steps are taken or skipped, so a
resumed run without them is not the run it continues). Written atomically, so a SIGKILL leaves the previous checkpoint
intact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from softprompt.core.files import atomic_write

OPT_PREFIX = "optimizer."
PARAM_PREFIX = "param."
BEST_PREFIX = "best."
RNG_KEY = "rng"


@dataclass
class TrainState:
    """Where a run stands after ``step`` optimizer steps."""

    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # eval records so far
    losses: list[float] = field(default_factory=list)  # every step's loss so far (step s at index s - 1)


@dataclass
class Checkpoint:
    params: dict[str, Tensor]  # the trainable parameters by name
    best: dict[str, Tensor]  # the best step's snapshot; empty when it is the checkpoint's step (or nothing selects)
    optimizer_state: dict[str, Any]
    state: TrainState
    config: dict[str, Any]
    scaler_state: dict[str, Any] | None = None  # GradScaler.state_dict() of an fp16 run
    rng: Tensor | None = None  # torch.get_rng_state() at the save


def _flatten_optimizer(state: dict[str, Any], seen: set[int]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, Tensor):
                tensors[f"{OPT_PREFIX}{pid}.{key}"] = _own(value, seen)
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, Tensor], info: dict[str, Any]) -> dict[str, Any]:
    """The optimizer state_dict from ``tensors`` named ``<id>.<key>`` (the prefix stripped) and the JSON part."""
    state: dict[int, dict[str, Any]] = {}
    for pid, values in info["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": info["param_groups"]}


def _own(t: Tensor, seen: set[int]) -> Tensor:
    """``t`` as safetensors takes it: a CPU tensor that is all of its storage, which no other saved tensor shares
    (``seen``: the storages saved so far). Only a tensor that is not gets copied: a model's weights and its best
    step's are each a model's worth of memory, which a copy would double while a model-tuning checkpoint is written."""
    t = t.detach()
    storage = t.untyped_storage()
    whole = t.is_contiguous() and t.storage_offset() == 0 and storage.nbytes() == t.numel() * t.element_size()
    if t.device.type != "cpu" or not whole or storage.data_ptr() in seen:
        t = t.to("cpu", copy=True).contiguous()
    seen.add(t.untyped_storage().data_ptr())
    return t


def save_checkpoint(path: Path, params: dict[str, Tensor], best: dict[str, Tensor] | None,
                    optimizer: torch.optim.Optimizer, state: TrainState, config: dict[str, Any],
                    scaler: torch.amp.GradScaler | None = None) -> None:
    """Write the resume state; ``scaler`` (fp16) is saved after its ``update()``, as the next step will find it."""
    seen: set[int] = set()
    tensors, opt_info = _flatten_optimizer(optimizer.state_dict(), seen)
    tensors.update({PARAM_PREFIX + k: _own(v, seen) for k, v in params.items()})
    tensors.update({BEST_PREFIX + k: _own(v, seen) for k, v in (best or {}).items()})
    tensors[RNG_KEY] = torch.get_rng_state()
    meta = {"state": json.dumps(state.__dict__), "optimizer": json.dumps(opt_info),
            "config": json.dumps(config, sort_keys=True)}
    if scaler is not None:  # its state_dict is Python floats and ints
        meta["scaler"] = json.dumps(scaler.state_dict())
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _from_prompt_format(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """A prompt-tuning checkpoint written before the loop was shared (``prompt`` [P, H], ``bank.*``,
    ``best_prompt``), renamed to this format, so a run started then still resumes."""
    out = {k: v for k, v in tensors.items() if k.startswith(OPT_PREFIX)}
    out[PARAM_PREFIX + "weight"] = tensors["prompt"].unsqueeze(0)
    out.update({PARAM_PREFIX + k[len("bank."):]: v for k, v in tensors.items() if k.startswith("bank.")})
    if "best_prompt" in tensors:
        out[BEST_PREFIX + "prompt"] = tensors["best_prompt"]
    return out


def load_checkpoint(path: Path) -> Checkpoint:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: unreadable checkpoint ({err}); delete it to start over") from None
    if "prompt" in tensors and not any(k.startswith(PARAM_PREFIX) for k in tensors):
        tensors = _from_prompt_format(tensors)

    def group(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    return Checkpoint(
        params=group(PARAM_PREFIX),
        best=group(BEST_PREFIX),
        optimizer_state=_unflatten_optimizer(group(OPT_PREFIX), json.loads(meta["optimizer"])),
        state=TrainState(**json.loads(meta["state"])),
        config=json.loads(meta["config"]),
        scaler_state=json.loads(meta["scaler"]) if "scaler" in meta else None,
        rng=tensors.get(RNG_KEY),
    )
