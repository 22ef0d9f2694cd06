"""Model tuning, the paper's baseline: train every weight of a copy of the backbone, with no soft prompt.

It runs through the loop prompt tuning runs through (:mod:`softprompt.training.loop`), so the comparison is fair
and the machinery is the same: the same seeded batches, optimizer factory, step loss (a :class:`PromptedModel` whose
bank holds one zero-length prompt is the bare model), eval-based selection of the best step, logs and resume. What
differs is what trains (every weight) and what is written (a model folder).

Defaults: AdamW, lr 3e-5, weight decay 0.01 — the usual full fine-tuning range (1e-5 … 5e-5) for models of 100M–1B
parameters. The paper's T5 recipe (Adafactor, lr 1e-3) is one ``--optimizer adafactor --lr 1e-3`` away.
Dropout stays off (as in prompt tuning), which keeps a run deterministic for a seed.

The caller's backbone is never modified: the weights are copied before they are unfrozen. The selected model is
written as a Hugging Face folder (``save_pretrained`` + tokenizer + ``model_tuning.json``) that every ``--model``
flag accepts. Beside the folder ``DIR``: ``DIR.ckpt.safetensors`` (resume state: every weight, the optimizer's
state, the step, the best step's weights when that is an earlier one; about 3× the model with AdamW),
``DIR.metrics.jsonl`` and ``DIR.tb/``; a run killed at any point continues with ``resume=True`` (``--resume``).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from softprompt.core.backbone import Backbone
from softprompt.core.bank import PromptBank
from softprompt.core.files import atomic_write_dir
from softprompt.core.prompted import PromptedModel
from softprompt.experiments.methods import count_parameters
from softprompt.tasks.base import Example, Task
from softprompt.training.loop import RunFiles, Trainable, start_run, train_loop
from softprompt.training.supervised import TaskTrainConfig, example_batches, task_selection

DEFAULT_LR = 3e-5


@dataclass
class ModelTuneConfig(TaskTrainConfig):
    """Model-tuning settings; every field means what it means for prompt tuning
    (:class:`softprompt.training.supervised.TaskTrainConfig`)."""

    optimizer: Literal["adafactor", "adam", "adamw"] = "adamw"
    lr: float = DEFAULT_LR
    weight_decay: float = 0.01
    save_every: int = 50
    """steps between resume checkpoints, each about 3× the model (weights + AdamW's two moments)"""


@dataclass
class ModelTuneResult:
    backbone: Backbone  # the tuned copy (the selected step's weights when a selection set was given)
    metrics: dict[str, Any] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # each selection eval: {"step": s, metric: value}
    resumed_from_step: int = 0  # the step this process went on from (0: it started fresh)


def unfrozen_copy(backbone: Backbone) -> Backbone:
    """A trainable deep copy of the backbone's model (the tokenizer is shared; it is never modified)."""
    model = copy.deepcopy(backbone.model)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()  # no dropout: see the module docstring
    return Backbone(model, backbone.tokenizer, backbone.name)


def save_model_folder(backbone: Backbone, out: Path, info: dict[str, Any], info_name: str = "model_tuning.json"
                      ) -> None:
    """Write a loadable model folder (+ ``info_name``, how it was made) atomically: a temporary sibling renamed
    over ``out``."""

    def write(tmp: Path) -> None:
        backbone.model.save_pretrained(tmp)
        backbone.tokenizer.save_pretrained(tmp)
        (tmp / info_name).write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")

    atomic_write_dir(out, write)


def whole_model(backbone: Backbone) -> tuple[PromptedModel, dict[str, torch.nn.Parameter]]:
    """A trainable copy of ``backbone`` as the bare model (a zero-length prompt) and its weights by name (tied
    weights once, as ``named_parameters`` gives them)."""
    tuned = unfrozen_copy(backbone)
    return PromptedModel(tuned, PromptBank(torch.zeros(1, 0, tuned.hidden_size))), dict(tuned.model.named_parameters())


def weights_snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """A copy of every weight: what the best step keeps (one model's worth, in memory and in the checkpoint)."""
    return {name: p.detach().clone() for name, p in params.items()}


def finish(params: dict[str, torch.nn.Parameter], best: dict[str, torch.Tensor] | None) -> None:
    """Put the selected step's weights in place (``best`` None: the last step's are) and freeze them."""
    with torch.no_grad():
        for name, p in params.items():
            if best is not None:
                p.copy_(best[name])
            p.requires_grad_(False)


def tune_model(
    backbone: Backbone,
    task: Task,
    train_examples: list[Example],
    config: ModelTuneConfig,
    out: Path | None = None,
    *,
    selection: list[Example] | None = None,
    selection_info: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    run_files: RunFiles | None = None,
) -> ModelTuneResult:
    """Fine-tune all weights of a copy of ``backbone`` on ``train_examples``; write the selected model to ``out`` (when
    given). With ``selection`` (a slice held out from train, see :func:`softprompt.training.prompt_tuning.train_prompt`)
    the best step by the task's primary metric is kept, else the last.

    The resume checkpoint and logs go to ``run_files`` (default: beside ``out``, see the module docstring), and
    ``resume`` continues from that checkpoint; with neither, nothing but the returned copy is kept."""
    if not train_examples:
        raise ValueError("no training examples")
    files = run_files if run_files is not None else RunFiles.named(Path(out)) if out is not None else None
    start = start_run(config, files, resume)
    pm, params = whole_model(backbone)
    tuned = pm.backbone
    job = Trainable(pm, params, len(train_examples),
                    example_batches(tuned, task, train_examples, config.max_input_tokens),
                    snapshot=lambda: weights_snapshot(params), lr=float(config.lr), desc=f"model-tune {task.name}")
    t0 = time.perf_counter()
    done = train_loop(job, config, files, start=start, selection=task_selection(pm, task, selection, config),
                      progress=progress)
    finish(params, done.best)
    state = done.state
    metrics: dict[str, Any] = {**done.summary(task.primary_metric), "trainable_params": count_parameters(tuned.model),
                               "train_seconds": round(time.perf_counter() - t0, 2)}
    if out is not None:
        save_model_folder(tuned, Path(out), {"method": "model-tuning", "base_model": backbone.name,
                                             "task": task.name, "train_config": asdict(config),
                                             "metrics": metrics, "history": state.history,
                                             "selection": {**(selection_info or {}), "examples": len(selection)}
                                             if selection else {},
                                             "loss_first": state.losses[0], "loss_last": state.losses[-1]})
    return ModelTuneResult(tuned, metrics, state.losses, state.history, done.resumed_from_step)
