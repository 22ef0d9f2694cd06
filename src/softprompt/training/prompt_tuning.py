"""Prompt tuning: train one ``[P, H]`` prompt on a frozen backbone, through the shared loop
(:mod:`softprompt.training.loop`: resume, accumulation, selection, logging, data parallel).

The optimizer is the paper's: Adafactor, weight decay 1e-5, no parameter scaling. The step size is not the paper's
constant 0.3 by default but ``lr="auto"`` with momentum and linear decay: :data:`AUTO_LR_SCALE` × the standard
deviation of the embeddings the model consumes (:func:`resolve_lr`); the paper's setting is the named recipe
``paper`` (:data:`RECIPES`).

Files beside ``out`` (``x.safetensors``): ``x.ckpt.safetensors`` (resume state), ``x.metrics.jsonl`` (one JSON record
per logged step or eval) and ``x.tb/`` (TensorBoard events). An fp16 backbone trains with a dynamic loss scale
(:mod:`softprompt.training.precision`), checkpointed with the rest.

With ``reparam="residual"`` the prompt trains through a residual MLP (:mod:`softprompt.training.reparam`): the same
loop, bank gather and splice, the MLP's weights and optimizer state in the checkpoint, and every saved prompt folded
into a plain ``[P, H]`` tensor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from softprompt.core.backbone import Backbone
from softprompt.core.prompted import PromptedModel
from softprompt.core.promptfile import PromptMeta, save_prompt
from softprompt.tasks.base import Example, Task
from softprompt.tasks.generic import FileTask
from softprompt.training.checkpoint import TrainState
from softprompt.training.initializers import INITS, TRANSFER_PREFIX, init_prompt, is_init
from softprompt.training.loop import RunFiles, Schedule, Trainable, start_run, train_loop
from softprompt.training.precision import grad_scaler
from softprompt.training.reparam import DEFAULT_BOTTLENECK, REPARAMS, Reparam, fold, make_bank
from softprompt.training.supervised import TaskTrainConfig, example_batches, task_selection

if TYPE_CHECKING:
    from softprompt.training.distributed import DistContext


@dataclass
class TrainConfig(TaskTrainConfig):
    """Prompt-tuning settings (defaults: the paper's recipe, scaled down to a CPU)."""

    lr: float | Literal["auto"] = "auto"
    """a step size, or "auto": AUTO_LR_SCALE × the model's consumed-embedding std (see resolve_lr)"""
    weight_decay: float = 1e-5
    beta1: float | None = 0.9
    """Adafactor's momentum: 0.9 by default (the step-size rule below); None is the paper's Adafactor, without"""
    schedule: Schedule = "linear"
    """linear decay of the step size by default (the step-size rule below); constant is the paper's"""
    prompt_length: int = 20
    """P, number of soft-prompt vectors"""
    init: str = "class-label"
    """uniform | sampled-vocab | class-label | text (class-label falls back to sampled-vocab without labels) |
    from:FILE.safetensors (another prompt file's rows, fingerprint-checked: prompt transfer)"""
    init_text: str | None = None
    """the string for init=text"""
    reparam: Reparam = "none"
    """none | residual: train each prompt vector through a shared residual MLP, folded away at every save"""
    reparam_bottleneck: int = DEFAULT_BOTTLENECK
    """reparam=residual: the MLP's hidden width (the authors' default)"""
    loss_scale_growth_interval: int = 2000
    """fp16 only: steps without an overflow before the loss scale doubles (torch.amp.GradScaler's default)"""

    auto_lr: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompt_length < 0:
            raise ValueError(f"prompt_length must be >= 0, got {self.prompt_length}")
        if self.loss_scale_growth_interval < 1:
            raise ValueError(f"loss_scale_growth_interval must be >= 1, got {self.loss_scale_growth_interval}")
        if not is_init(self.init):
            raise ValueError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)} or "
                             f"{TRANSFER_PREFIX}FILE.safetensors")
        if self.reparam not in REPARAMS:
            raise ValueError(f"unknown reparam {self.reparam!r}; choose one of {', '.join(REPARAMS)}")
        if self.reparam_bottleneck < 1:
            raise ValueError(f"reparam_bottleneck must be >= 1, got {self.reparam_bottleneck}")


@dataclass
class TrainResult:
    prompt: torch.Tensor  # [P, H], the selected (best or last) prompt
    metrics: dict[str, Any] = field(default_factory=dict)
    state: TrainState = field(default_factory=TrainState)
    resumed_from_step: int = 0  # the step this process went on from (0: it started fresh)


# Adafactor without parameter scaling (and Adam) moves every prompt value by about lr per step, whatever the size of
# the gradient: the step is in the units of the embeddings, so the right lr is a fraction of their scale. The paper's
# 0.3 suits T5, whose embeddings are large; smollm2's consumed embeddings have std 0.14 (0.3 made its loss spike),
# Gemma 3's ~1.0 (0.3 trains well), Qwen 2.5's ~0.02 (0.3 diverged). Without momentum every step is a full-size step
# in one batch's noisy direction, and a small constant alone did not stop late spikes: on smollm2, SST-2, P = 50,
# 100 steps of batch 16 (bench/lr_bench.py), the largest loss jump was 1.34 nats at 0.1 × std, 1.18 at 0.05 and
# 1.35 at 0.02, each a transient the prompt itself recovered from. With momentum 0.9 (``beta1``), which averages the
# steps' directions, 0.1 × std stayed at 0.86 nats at P = 50 but jumped 1.09 at P = 20 (the default length); 0.05 × std
# with momentum jumped 0.71 there and ended at the same loss (last 10 steps 0.43 vs 0.45 nats). But at P = 50 it
# jumped 1.04 late in the run (step 86: the prompt 0.6 nats worse than the final one on the same batch), where a
# constant step keeps chasing the latest batches; decaying the step linearly to lr / steps at the last step (the
# same lr and batches) kept the jump at 0.74 and ended lower (last 10 steps 0.39 vs 0.56 nats). So the rule is 0.05
# × std with momentum 0.9 and linear decay (bench/results/lr_auto/; whether it holds on every built-in model × P in
# {5, 20, 50, 100} is in bench/results/lr_auto_cpu.json as its cells finish).
AUTO_LR_SCALE = 0.05
LEGACY_AUTO_LR_SCALE = 0.1
"""what lr "auto" meant before experiment cells recorded the rule they ran with (``lr_rule``)"""

# Named recipes: settings a user asks for by name (``softprompt train --recipe paper``).
RECIPES: dict[str, dict[str, Any]] = {
    "default": {"optimizer": "adafactor", "lr": "auto", "weight_decay": 1e-5, "beta1": 0.9, "schedule": "linear"},
    # Lester et al. (2021), section 3: Adafactor without momentum, constant lr 0.3
    "paper": {"optimizer": "adafactor", "lr": 0.3, "weight_decay": 1e-5, "beta1": None, "schedule": "constant"},
}


def resolve_lr(config: TrainConfig, backbone: Backbone) -> float:
    """The step size a run uses: ``config.lr``, or for "auto" AUTO_LR_SCALE × the consumed-embedding std."""
    if config.lr == "auto":
        return AUTO_LR_SCALE * backbone.embedding_std()
    return float(config.lr)


def initial_prompt(backbone: Backbone, task: Task, config: TrainConfig, *, allow_other_model: bool = False
                   ) -> torch.Tensor:
    """The raw prompt a run starts from: [P, H] (``allow_other_model``: a ``from:`` file of other weights)."""
    strategy = config.init
    labels = list(dict.fromkeys(task.verbalizer.values()))
    if strategy == "class-label" and not labels:
        strategy = "sampled-vocab"
    return init_prompt(backbone, strategy, config.prompt_length, seed=config.seed, label_words=labels,
                       text=config.init_text, allow_other_model=allow_other_model)


def train_prompt(
    backbone: Backbone,
    task: Task,
    train_examples: list[Example],
    config: TrainConfig,
    out: Path,
    *,
    selection: list[Example] | None = None,
    selection_info: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    dist: DistContext | None = None,
    allow_other_model: bool = False,
) -> TrainResult:
    """Train a prompt and write it to ``out`` (the best one by the task's metric on ``selection`` when given).

    ``selection`` must not share examples with any split that is reported: a slice held out from train
    (:func:`softprompt.tasks.selection.selection_split`), whose ``info`` is ``selection_info``, recorded in the file.

    With ``dist``, every process calls this with the same arguments; each takes its block of every micro-batch,
    only the main process writes ``out``, the checkpoint and the logs, and the result is the main process's.

    ``allow_other_model``: an init ``from:FILE`` trained on other weights (same hidden size) is used, with a warning.
    """
    if not train_examples:
        raise ValueError("no training examples")
    out = Path(out)
    files = RunFiles.named(out.with_suffix(""))
    start = start_run(config, files, resume)
    if start is not None and "weight" not in start.params:
        raise ValueError(f"{files.checkpoint} is not a prompt-tuning checkpoint; delete it to start over")
    # A resumed run starts from the checkpoint's prompt: the init (perhaps another file) is not needed again.
    prompt0 = start.params["weight"][0] if start is not None else \
        initial_prompt(backbone, task, config, allow_other_model=allow_other_model)
    # A reparameterisation's MLP is drawn on the CPU from the seed, so replicas start with the same one.
    bank = make_bank(prompt0.unsqueeze(0), config.reparam, config.reparam_bottleneck, seed=config.seed)
    pm = PromptedModel(backbone, bank)
    lr = resolve_lr(config, backbone)
    # One optimizer, one lr and weight decay for the prompt and any MLP (as the authors of residual prompt tuning).
    job = Trainable(pm, dict(pm.bank.named_parameters()), len(train_examples),
                    example_batches(backbone, task, train_examples, config.max_input_tokens),
                    snapshot=lambda: {"prompt": fold(pm.bank)}, lr=lr, desc=f"train {task.name}",
                    scaler=grad_scaler(backbone.model, config.loss_scale_growth_interval))
    done = train_loop(job, config, files, start=start, selection=task_selection(pm, task, selection, config),
                      progress=progress, dist=dist)
    state = done.state
    chosen = done.best["prompt"] if done.best is not None else fold(pm.bank)
    metrics: dict[str, Any] = {**done.summary(task.primary_metric), "lr": lr}
    # The input format the prompt was trained under; prompt tuning prepends no instruction (prompt design does).
    template = task.spec.template if isinstance(task, FileTask) else task.text_template
    meta = PromptMeta.for_backbone(backbone, config.prompt_length, init=config.init, task=task.name,
                                   verbalizer=dict(task.verbalizer), train_config=asdict(config), metrics=metrics,
                                   template=template, instruction="",
                                   selection={**(selection_info or {}), "examples": len(selection)} if selection
                                   else {})
    if dist is None or dist.is_main:
        save_prompt(out, chosen, meta)
    if dist is not None:
        dist.barrier()  # every process returns only once the files exist
    return TrainResult(chosen.cpu(), metrics, state, done.resumed_from_step)
