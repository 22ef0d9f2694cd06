"""Training checkpoints as safetensors (no pickle): tensors for the prompt, the best prompt, the optimizer state and
the bank's other parameters (a reparameterisation's MLP, :mod:`softprompt.training.reparam`); JSON for everything else,
including an fp16 run's loss scaler (its scale and growth tracker decide whether the next steps are taken or skipped,
so a resumed run without them is not the run it continues). Written atomically, so a SIGKILL leaves the previous
checkpoint intact."""

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
BANK_PREFIX = "bank."


@dataclass
class TrainState:
    """Where a run stands after ``step`` optimizer steps."""

    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # eval records so far


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, Tensor):
                tensors[f"{OPT_PREFIX}{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, values in info["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    for name, value in tensors.items():
        pid, key = name[len(OPT_PREFIX):].split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(path: Path, prompt: Tensor, best_prompt: Tensor | None, optimizer: torch.optim.Optimizer,
                    state: TrainState, config: dict[str, Any], scaler: torch.amp.GradScaler | None = None,
                    bank: dict[str, Tensor] | None = None) -> None:
    """Write the resume state; ``scaler`` (fp16) is saved after its ``update()``, as the next step will find it.

    ``prompt`` is the trained parameter [P, H] (before any reparameterisation), ``best_prompt`` the folded prompt a
    prompt file would hold, ``bank`` the bank's other tensors by state-dict name (empty for a plain bank).
    """
    tensors, opt_info = _flatten_optimizer(optimizer.state_dict())
    tensors["prompt"] = prompt.detach().cpu().contiguous()
    tensors.update({BANK_PREFIX + k: v.detach().cpu().contiguous() for k, v in (bank or {}).items()})
    if best_prompt is not None:
        tensors["best_prompt"] = best_prompt.detach().cpu().contiguous()
    meta = {"state": json.dumps(state.__dict__), "optimizer": json.dumps(opt_info),
            "config": json.dumps(config, sort_keys=True)}
    if scaler is not None:  # its state_dict is Python floats and ints
        meta["scaler"] = json.dumps(scaler.state_dict())
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


@dataclass
class Checkpoint:
    prompt: Tensor
    best_prompt: Tensor | None
    optimizer_state: dict[str, Any]
    state: TrainState
    config: dict[str, Any]
    scaler_state: dict[str, Any] | None = None  # GradScaler.state_dict() of an fp16 run
    bank: dict[str, Tensor] = field(default_factory=dict)  # the bank's tensors besides its weight (an MLP's)


def load_checkpoint(path: Path) -> Checkpoint:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: unreadable checkpoint ({err}); delete it to start over") from None
    opt = {k: v for k, v in tensors.items() if k.startswith(OPT_PREFIX)}
    return Checkpoint(
        prompt=tensors["prompt"],
        best_prompt=tensors.get("best_prompt"),
        optimizer_state=_unflatten_optimizer(opt, json.loads(meta["optimizer"])),
        state=TrainState(**json.loads(meta["state"])),
        config=json.loads(meta["config"]),
        scaler_state=json.loads(meta["scaler"]) if "scaler" in meta else None,
        bank={k[len(BANK_PREFIX):]: v for k, v in tensors.items() if k.startswith(BANK_PREFIX)},
    )
