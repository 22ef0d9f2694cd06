"""Prompt tuning: train one ``[P, H]`` prompt on a frozen backbone.

The optimizer is the paper's: Adafactor, constant lr, weight decay 1e-5, no parameter scaling. The step size is
not the paper's 0.3 by default but ``lr="auto"``: :data:`AUTO_LR_SCALE` × the standard deviation of the embeddings
the model consumes (:func:`resolve_lr`); the paper's value is the named recipe ``paper`` (:data:`RECIPES`).
Runs are deterministic on CPU for a seed: the batch at step s is a pure function of (seed, s), so a run resumed from
a checkpoint (``--resume``, after any kill) takes exactly the steps an uninterrupted run takes.

Files beside ``out`` (``x.safetensors``): ``x.ckpt.safetensors`` (resume state), ``x.metrics.jsonl`` (one JSON record
per logged step or eval) and ``x.tb/`` (TensorBoard events).

Several processes (``dist``, see :mod:`softprompt.training.distributed`) split each step's rows and sum the prompt's
gradient; only the main process writes files. An fp16 backbone trains with a dynamic loss scale
(:mod:`softprompt.training.precision`), checkpointed with the rest. A step's loss is the mean over all its target tokens
(:mod:`softprompt.training.steploss`).

With ``reparam="residual"`` the prompt trains through a residual MLP (:mod:`softprompt.training.reparam`): the same
loop, bank gather and splice, the MLP's weights and optimizer state in the checkpoint, and every saved prompt folded
into a plain ``[P, H]`` tensor.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from tqdm.auto import tqdm
from transformers.optimization import Adafactor

from softprompt.core.backbone import Backbone
from softprompt.core.files import atomic_write
from softprompt.core.prompted import PromptedModel
from softprompt.core.promptfile import PromptMeta, save_prompt
from softprompt.core.tokenize import make_batch
from softprompt.evaluation.scoring import evaluate
from softprompt.tasks.base import Example, Task
from softprompt.tasks.generic import FileTask
from softprompt.training.checkpoint import TrainState, load_checkpoint, save_checkpoint
from softprompt.training.initializers import INITS, TRANSFER_PREFIX, init_prompt, is_init
from softprompt.training.precision import grad_scaler
from softprompt.training.reparam import DEFAULT_BOTTLENECK, REPARAMS, Reparam, fold, make_bank
from softprompt.training.steploss import backward_step

if TYPE_CHECKING:
    from softprompt.training.distributed import DistContext


@dataclass
class TrainConfig:
    """Prompt-tuning settings (defaults: the paper's recipe, scaled down to a CPU)."""

    steps: int = 150
    """optimizer steps"""
    batch_size: int = 16
    """examples per optimizer step (split into grad_accum micro-batches)"""
    grad_accum: int = 1
    """micro-batches per step; batch_size must divide by it"""
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
    optimizer: Literal["adafactor", "adam", "adamw"] = "adafactor"
    lr: float | Literal["auto"] = "auto"
    """a step size, or "auto": AUTO_LR_SCALE × the model's consumed-embedding std (see resolve_lr)"""
    weight_decay: float = 1e-5
    seed: int = 0
    eval_every: int = 50
    """steps between selection evals (0: only at the end); the best prompt by the task's metric is kept"""
    eval_limit: int | None = 200
    """selection examples per eval (None: all)"""
    eval_batch_size: int = 32
    save_every: int = 10
    """steps between resume checkpoints"""
    max_input_tokens: int = 256
    log_every: int = 1
    loss_scale_growth_interval: int = 2000
    """fp16 only: steps without an overflow before the loss scale doubles (torch.amp.GradScaler's default)"""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.prompt_length < 0:
            raise ValueError("steps, batch_size and grad_accum must be >= 1 and prompt_length >= 0")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        if self.lr != "auto" and (isinstance(self.lr, str) or self.lr <= 0):
            raise ValueError(f"lr must be a number > 0 or 'auto', got {self.lr!r}")
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


# Adafactor without parameter scaling (and Adam) moves every prompt value by about lr per step, whatever the size of
# the gradient: the step is in the units of the embeddings, so the right lr is a fraction of their scale. The paper's
# 0.3 suits T5, whose embeddings are large; smollm2's consumed embeddings have std 0.14 (0.3 made its loss spike),
# Gemma 3's ~1.0 (0.3 trains well), Qwen 2.5's ~0.02 (0.3 diverged). Adafactor here has no momentum, so every step
# is a full-size noisy step: on smollm2 at P = 5, 0.5 × std spiked the loss by 7.8 nats and 0.2 × std by 2.2, while
# 0.1 and 0.05 × std stayed within 0.75 nats over 100 steps and reached the same loss (bench/lr_bench.py; the check on
# every built-in model × P in {5, 20, 50, 100} is in bench/results/lr_auto_cpu.json as its cells finish).
AUTO_LR_SCALE = 0.1

# Named recipes: settings a user asks for by name (``softprompt train --recipe paper``).
RECIPES: dict[str, dict[str, Any]] = {
    "default": {"optimizer": "adafactor", "lr": "auto", "weight_decay": 1e-5},
    "paper": {"optimizer": "adafactor", "lr": 0.3, "weight_decay": 1e-5},  # Lester et al. (2021), section 3
}


def resolve_lr(config: TrainConfig, backbone: Backbone) -> float:
    """The step size a run uses: ``config.lr``, or for "auto" AUTO_LR_SCALE × the consumed-embedding std."""
    if config.lr == "auto":
        return AUTO_LR_SCALE * backbone.embedding_std()
    return float(config.lr)


def make_optimizer(config: TrainConfig, params: list[torch.nn.Parameter], lr: float | None = None
                   ) -> torch.optim.Optimizer:
    """The configured optimizer over ``params`` at step size ``lr`` (default: ``config.lr``, which must be a number)."""
    lr = float(config.lr) if lr is None else lr
    if config.optimizer == "adafactor":
        # The paper's Adafactor: constant lr (no relative step), no parameter scaling, beta2 decay exponent 0.8.
        return Adafactor(params, lr=lr, weight_decay=config.weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False, decay_rate=-0.8, clip_threshold=1.0)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r} (adafactor, adam, adamw)")


def batch_indices(n: int, seed: int, step: int, micro: int, config: TrainConfig) -> list[int]:
    """Example indices of micro-batch ``micro`` of step ``step``: epochs are seeded permutations of 0..n-1."""
    size = config.batch_size // config.grad_accum
    start = (step * config.grad_accum + micro) * size
    out = []
    for pos in range(start, start + size):
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(perm[offset]))
    return out


def initial_prompt(backbone: Backbone, task: Task, config: TrainConfig, *, allow_other_model: bool = False
                   ) -> torch.Tensor:
    """The raw prompt a run starts from: [P, H] (``allow_other_model``: a ``from:`` file of other weights)."""
    strategy = config.init
    labels = list(dict.fromkeys(task.verbalizer.values()))
    if strategy == "class-label" and not labels:
        strategy = "sampled-vocab"
    return init_prompt(backbone, strategy, config.prompt_length, seed=config.seed, label_words=labels,
                       text=config.init_text, allow_other_model=allow_other_model)


class _Log:
    """JSONL + TensorBoard metrics, truncated back to the resumed step so a resumed log has no duplicates."""

    def __init__(self, out: Path, start_step: int) -> None:
        self.path = out.with_suffix(".metrics.jsonl")
        kept = []
        if start_step and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= start_step]
        atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(f"{k}\n" for k in kept)))
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out.with_suffix(".tb")), purge_step=start_step + 1 if start_step else None)
        except ImportError:  # tensorboard is a dependency, but a trimmed install still trains
            pass

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


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
    ckpt_path = out.with_suffix(".ckpt.safetensors")
    config_dict = asdict(config)
    torch.manual_seed(config.seed)
    state = TrainState()
    best_prompt = None
    if resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        # A setting the checkpoint lacks is newer than the checkpoint; its default is the behaviour it ran with.
        defaults = asdict(TrainConfig())
        differs = {k for k in config_dict if k not in ("steps", "eval_every", "save_every", "log_every")
                   and ckpt.config.get(k, defaults[k]) != config_dict[k]}
        if differs:
            raise ValueError(f"--resume with settings that differ from the checkpoint's: {sorted(differs)}")
        prompt0, state, best_prompt = ckpt.prompt, ckpt.state, ckpt.best_prompt
    else:
        ckpt = None
        prompt0 = initial_prompt(backbone, task, config, allow_other_model=allow_other_model)
    main = dist is None or dist.is_main
    if dist is not None:
        # Replicas must start equal; the inits are seeded, but a GPU kernel need not be bit-deterministic.
        dist.broadcast(prompt0)
    # A reparameterisation's MLP is drawn on the CPU from the seed, so replicas start with the same one too.
    bank = make_bank(prompt0.unsqueeze(0), config.reparam, config.reparam_bottleneck, seed=config.seed)
    if ckpt is not None and ckpt.bank:
        bank.load_state_dict({**bank.state_dict(), **ckpt.bank})
    pm = PromptedModel(backbone, bank)
    lr = resolve_lr(config, backbone)
    # One optimizer, one lr and weight decay for the prompt and any MLP (as the authors of residual prompt tuning).
    optimizer = make_optimizer(config, list(pm.bank.parameters()), lr)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt.optimizer_state)
    scaler = grad_scaler(backbone.model, config.loss_scale_growth_interval)
    if scaler is not None and ckpt is not None and ckpt.scaler_state is not None:
        scaler.load_state_dict(ckpt.scaler_state)
    log = _Log(out, state.step) if main else None
    add_eos = task.kind == "generation"
    bar = tqdm(total=config.steps, initial=state.step, desc=f"train {task.name}", unit="step",
               disable=not (progress and main))
    last_eval: dict[str, float] = {}
    try:
        for step in range(state.step, config.steps):
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            batches = []
            for micro in range(config.grad_accum):
                indices = batch_indices(len(train_examples), config.seed, step, micro, config)
                if dist is not None:
                    indices = dist.shard(indices)
                rows = [train_examples[i] for i in indices]
                batches.append(make_batch(backbone.tokenizer, [e.input for e in rows], [e.target for e in rows],
                                          encoder_decoder=backbone.is_encoder_decoder, add_eos=add_eos,
                                          max_input_tokens=config.max_input_tokens))
            total = backward_step(pm, batches, scaler=scaler, dist=dist)
            if scaler is None:
                optimizer.step()
            else:  # skips the step (and lowers the scale) when fp16 gradients overflowed
                scaler.step(optimizer)
                scaler.update()
            state.step = step + 1
            record: dict[str, Any] = {"step": state.step, "loss": total, "step_seconds": time.perf_counter() - t0}
            final = state.step == config.steps
            if selection and ((config.eval_every and state.step % config.eval_every == 0) or final):
                with torch.no_grad():
                    last_eval, _ = evaluate(pm, task, selection, batch_size=config.eval_batch_size,
                                            max_input_tokens=config.max_input_tokens)
                metric = last_eval[task.primary_metric]
                record.update({f"selection_{k}": v for k, v in last_eval.items()})
                state.history.append({"step": state.step, **last_eval})
                if state.best_metric is None or metric > state.best_metric:
                    state.best_metric, state.best_step = metric, state.step
                    best_prompt = fold(pm.bank)
            if log is not None and (state.step % config.log_every == 0 or "selection_" + task.primary_metric in record):
                log.write(record)
            bar.set_postfix(loss=f"{total:.4f}", **({task.primary_metric: f"{last_eval[task.primary_metric]:.3f}"}
                                                    if last_eval else {}))
            bar.update(1)
            if main and (state.step % config.save_every == 0 or final):
                save_checkpoint(ckpt_path, pm.bank.weight[0], best_prompt, optimizer, state, config_dict,
                                scaler, {k: v for k, v in pm.bank.state_dict().items() if k != "weight"})
    finally:
        bar.close()
        if log is not None:
            log.close()
    chosen = best_prompt if best_prompt is not None else fold(pm.bank)
    metrics: dict[str, Any] = {"steps": state.step, "lr": lr}
    if state.best_metric is not None:
        metrics.update({f"best_selection_{task.primary_metric}": state.best_metric, "best_step": state.best_step})
    # The input format the prompt was trained under; prompt tuning prepends no instruction (prompt design does).
    template = task.spec.template if isinstance(task, FileTask) else task.text_template
    meta = PromptMeta.for_backbone(backbone, config.prompt_length, init=config.init, task=task.name,
                                   verbalizer=dict(task.verbalizer), train_config=config_dict, metrics=metrics,
                                   template=template, instruction="",
                                   selection={**(selection_info or {}), "examples": len(selection)} if selection
                                   else {})
    if main:
        save_prompt(out, chosen, meta)
    if dist is not None:
        dist.barrier()  # every process returns only once the files exist
    return TrainResult(chosen.cpu(), metrics, state)
