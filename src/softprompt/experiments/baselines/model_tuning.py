"""Model tuning, the paper's baseline: train every weight of a copy of the backbone, with no soft prompt.

It runs through the same pieces as prompt tuning so the comparison is fair: the same seeded batches
(:func:`softprompt.training.loop.batch_indices`), the same optimizer factory, the same loss (a :class:`PromptedModel`
whose bank holds one zero-length prompt is the bare model) and the same eval-based selection of the best step.

Defaults: AdamW, lr 3e-5, weight decay 0.01 — the usual full fine-tuning range (1e-5 … 5e-5) for models of 100M–1B
parameters. The paper's T5 recipe (Adafactor, lr 1e-3) is one ``--optimizer adafactor --lr 1e-3`` away.
Dropout stays off (as in prompt tuning), which keeps a run deterministic for a seed.

The caller's backbone is never modified: the weights are copied before they are unfrozen. The selected model is
written as a Hugging Face folder (``save_pretrained`` + tokenizer + ``model_tuning.json``) that every ``--model``
flag accepts. No resume: a killed run starts over (it would need the full optimizer state, 2× the model, on disk).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from softprompt.core.backbone import Backbone
from softprompt.core.bank import PromptBank
from softprompt.core.files import atomic_write_dir
from softprompt.core.prompted import PromptedModel
from softprompt.core.tokenize import make_batch
from softprompt.evaluation.scoring import evaluate
from softprompt.experiments.methods import count_parameters
from softprompt.tasks.base import Example, Task
from softprompt.training.loop import TrainConfig, batch_indices, make_optimizer
from softprompt.training.steploss import backward_step

DEFAULT_LR = 3e-5


@dataclass
class ModelTuneConfig:
    """Model-tuning settings; the batching fields mean what they mean in
    :class:`softprompt.training.loop.TrainConfig`."""

    steps: int = 150
    batch_size: int = 16
    grad_accum: int = 1
    optimizer: Literal["adafactor", "adam", "adamw"] = "adamw"
    lr: float = DEFAULT_LR
    weight_decay: float = 0.01
    seed: int = 0
    eval_every: int = 50
    """steps between selection evals (0: only at the end); the best model by the task's metric is kept"""
    eval_limit: int | None = 200
    eval_batch_size: int = 32
    max_input_tokens: int = 256

    def __post_init__(self) -> None:
        self.as_train_config()  # one place validates batching and lr

    def as_train_config(self) -> TrainConfig:
        """The prompt-tuning config with the same batching and optimizer: what the shared pieces take."""
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, grad_accum=self.grad_accum, prompt_length=0,
                           optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay, seed=self.seed,
                           eval_every=self.eval_every, eval_limit=self.eval_limit,
                           eval_batch_size=self.eval_batch_size, max_input_tokens=self.max_input_tokens)


@dataclass
class ModelTuneResult:
    backbone: Backbone  # the tuned copy (the selected step's weights when a selection set was given)
    metrics: dict[str, Any] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


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


def tune_model(
    backbone: Backbone,
    task: Task,
    train_examples: list[Example],
    config: ModelTuneConfig,
    out: Path | None = None,
    *,
    selection: list[Example] | None = None,
    selection_info: dict[str, Any] | None = None,
    progress: bool = True,
) -> ModelTuneResult:
    """Fine-tune all weights of a copy of ``backbone`` on ``train_examples``; write the selected model to ``out`` (when
    given). With ``selection`` (a slice held out from train, see :func:`softprompt.training.loop.train_prompt`) the best
    step by the task's primary metric is kept, else the last."""
    if not train_examples:
        raise ValueError("no training examples")
    tc = config.as_train_config()
    torch.manual_seed(config.seed)
    tuned = unfrozen_copy(backbone)
    pm = PromptedModel(tuned, PromptBank(torch.zeros(1, 0, tuned.hidden_size)))
    optimizer = make_optimizer(tc, list(tuned.model.parameters()))
    add_eos = task.kind == "generation"
    n_params = count_parameters(tuned.model)
    losses: list[float] = []
    history: list[dict[str, Any]] = []
    best_metric: float | None = None
    best_step: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    t0 = time.perf_counter()
    bar = tqdm(total=config.steps, desc=f"model-tune {task.name}", unit="step", disable=not progress)
    try:
        for step in range(config.steps):
            optimizer.zero_grad(set_to_none=True)
            batches = []
            for micro in range(config.grad_accum):
                rows = [train_examples[i] for i in batch_indices(len(train_examples), config.seed, step, micro, tc)]
                batches.append(make_batch(tuned.tokenizer, [e.input for e in rows], [e.target for e in rows],
                                          encoder_decoder=tuned.is_encoder_decoder, add_eos=add_eos,
                                          max_input_tokens=config.max_input_tokens))
            total = backward_step(pm, batches)
            optimizer.step()
            losses.append(total)
            done = step + 1
            if selection and ((config.eval_every and done % config.eval_every == 0) or done == config.steps):
                with torch.no_grad():
                    scores, _ = evaluate(pm, task, selection, batch_size=config.eval_batch_size,
                                         max_input_tokens=config.max_input_tokens)
                history.append({"step": done, **scores})
                metric = scores[task.primary_metric]
                if best_metric is None or metric > best_metric:
                    best_metric, best_step = metric, done
                    # Kept in memory (one model's worth) rather than written at every improvement.
                    best_state = None if done == config.steps else {
                        k: v.detach().clone() for k, v in tuned.model.state_dict().items()}
            bar.set_postfix(loss=f"{total:.4f}")
            bar.update(1)
    finally:
        bar.close()
    if best_state is not None:
        tuned.model.load_state_dict(best_state)
    for p in tuned.model.parameters():
        p.requires_grad_(False)
    metrics: dict[str, Any] = {"steps": config.steps, "trainable_params": n_params,
                               "train_seconds": round(time.perf_counter() - t0, 2)}
    if best_metric is not None:
        metrics.update({f"best_selection_{task.primary_metric}": best_metric, "best_step": best_step})
    if out is not None:
        save_model_folder(tuned, Path(out), {"method": "model-tuning", "base_model": backbone.name,
                                             "task": task.name, "train_config": asdict(config),
                                             "metrics": metrics, "history": history,
                                             "selection": {**(selection_info or {}), "examples": len(selection)}
                                             if selection else {},
                                             "loss_first": losses[0], "loss_last": losses[-1]})
    return ModelTuneResult(tuned, metrics, losses)
