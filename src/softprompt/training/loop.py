"""The one training loop: prompt tuning, model tuning and LM adaptation all take their optimizer steps here.

What differs between the methods is handed in (:class:`Trainable`): the model whose loss is taken (a
:class:`PromptedModel`; a zero-length prompt makes it the bare model), the parameters that train, how a step's
micro-batches are built from the rows the loop draws, and what the best step keeps. Everything else exists once:

- **batches**: the rows of step s are a pure function of (seed, s) (:func:`batch_indices`), so a run resumed from a
  checkpoint takes exactly the steps an uninterrupted run takes;
- **the step's loss**: the mean over all its target tokens, however the step is split into micro-batches
  (``grad_accum``) and processes (:mod:`softprompt.training.steploss`); an fp16 run scales it
  (:mod:`softprompt.training.precision`);
- **resume**: a checkpoint every ``save_every`` steps and at the last (parameters, optimizer state, step, the best step
  so far, torch's RNG, the loss scaler; :mod:`softprompt.training.checkpoint`), written atomically so a SIGKILL leaves
  the previous one whole; ``--resume`` with other settings is refused;
- **selection**: an eval every ``Selection.every`` steps and at the last; the step with the best metric is kept;
- **logging**: one JSON line per logged step or eval and TensorBoard events (:class:`RunFiles`), cut back to the step a
  run resumes from, and a progress bar;
- **data parallel** (``dist``, :mod:`softprompt.training.distributed`): each process takes its block of every
  micro-batch, gradients are summed, only the main process writes files.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.optimization import Adafactor

from softprompt.core.files import atomic_write
from softprompt.core.prompted import PromptedModel
from softprompt.core.tokenize import Batch
from softprompt.training.checkpoint import Checkpoint, TrainState, load_checkpoint, save_checkpoint
from softprompt.training.steploss import backward_step

if TYPE_CHECKING:
    from softprompt.training.distributed import DistContext

# Settings a resumed run may change: how long it runs and how often it evaluates, saves and logs.
RESUMABLE_CHANGES = ("steps", "eval_every", "save_every", "log_every")

Schedule = Literal["constant", "linear"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)

# A setting a saved config (a checkpoint's, an experiment record's) lacks is newer than it: the run behaved as the
# setting's first default, which is its default today unless listed here.
FIRST_DEFAULTS: dict[str, Any] = {"schedule": "constant"}


def saved_defaults(config: LoopConfig) -> dict[str, Any]:
    """What a saved config of ``config``'s type that lacks a setting ran with: the type's defaults, with
    :data:`FIRST_DEFAULTS` for settings whose default changed after they were introduced."""
    return {**asdict(type(config)()), **{k: v for k, v in FIRST_DEFAULTS.items() if hasattr(config, k)}}


@dataclass
class LoopConfig:
    """What every training method sets alike: steps, batching, the optimizer, and how often to save and log. The
    methods' configs extend it (their own defaults where their recipes differ)."""

    steps: int = 150
    """optimizer steps"""
    batch_size: int = 16
    """rows per optimizer step (split into grad_accum micro-batches)"""
    grad_accum: int = 1
    """micro-batches per step; batch_size must divide by it"""
    optimizer: Literal["adafactor", "adam", "adamw"] = "adafactor"
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float | None = None
    """Adafactor's first-moment (momentum) decay; None: no momentum, the paper's Adafactor. Adam and AdamW keep their
    own betas (0.9, 0.999) and ignore it."""
    schedule: Schedule = "constant"
    """the step size over the run: constant (the paper's), or linear decay from lr at the first step to lr / steps at
    the last (:func:`lr_at`)"""
    seed: int = 0
    """draws every step's rows (and whatever a method initialises)"""
    save_every: int = 10
    """steps between resume checkpoints (one is also written at the last step)"""
    log_every: int = 1
    """steps between metric lines (an eval's step is always logged)"""

    auto_lr: ClassVar[bool] = False
    """whether lr "auto" means something to the method (prompt tuning's scale rule)"""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps, batch_size and grad_accum must be >= 1")
        if self.beta1 is not None and not 0.0 <= self.beta1 < 1.0:
            raise ValueError(f"beta1 must be in [0, 1) or None, got {self.beta1}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        if self.lr == "auto" and not self.auto_lr:
            raise ValueError(f"lr 'auto' is prompt tuning's rule (a fraction of the embedding scale); "
                             f"{type(self).__name__} needs a number")
        if self.lr != "auto" and (isinstance(self.lr, str) or self.lr <= 0):
            raise ValueError(f"lr must be a number > 0{' or auto' if self.auto_lr else ''}, got {self.lr!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.save_every < 1 or self.log_every < 1:
            raise ValueError(f"save_every and log_every must be >= 1, got {self.save_every}, {self.log_every}")


def make_optimizer(config: LoopConfig, params: list[nn.Parameter], lr: float | None = None) -> torch.optim.Optimizer:
    """The configured optimizer over ``params`` at step size ``lr`` (default: ``config.lr``, which must be a number)."""
    lr = float(config.lr) if lr is None else lr
    if config.optimizer == "adafactor":
        # The paper's Adafactor: constant lr (no relative step), no parameter scaling, beta2 decay exponent 0.8.
        return Adafactor(params, lr=lr, weight_decay=config.weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False, decay_rate=-0.8, clip_threshold=1.0,
                         beta1=config.beta1)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r} (adafactor, adam, adamw)")


def lr_at(config: LoopConfig, lr: float, step: int) -> float:
    """The step size of step ``step`` (0-based) of a run at base step size ``lr``: a function of the step alone, so a
    resumed run takes the same steps as an uninterrupted one."""
    if config.schedule == "linear":
        return lr * (config.steps - step) / config.steps
    return lr


def resumable_changes(config: LoopConfig) -> tuple[str, ...]:
    """The settings a resumed run may change: :data:`RESUMABLE_CHANGES`, less ``steps`` under a decaying schedule
    (the decay is spread over the steps, so more steps would be another schedule from the first step on)."""
    return RESUMABLE_CHANGES if config.schedule == "constant" else tuple(k for k in RESUMABLE_CHANGES if k != "steps")


def batch_indices(n: int, seed: int, step: int, micro: int, config: LoopConfig) -> list[int]:
    """Row indices of micro-batch ``micro`` of step ``step``: epochs are seeded permutations of 0..n-1."""
    size = config.batch_size // config.grad_accum
    start = (step * config.grad_accum + micro) * size
    out = []
    for pos in range(start, start + size):
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(perm[offset]))
    return out


@dataclass(frozen=True)
class RunFiles:
    """Where a run keeps its resume checkpoint, its JSONL metrics and its TensorBoard events."""

    checkpoint: Path
    metrics: Path
    tensorboard: Path

    @classmethod
    def named(cls, stem: Path) -> RunFiles:
        """``STEM.ckpt.safetensors``, ``STEM.metrics.jsonl``, ``STEM.tb/`` beside a run's output."""
        return cls(Path(f"{stem}.ckpt.safetensors"), Path(f"{stem}.metrics.jsonl"), Path(f"{stem}.tb"))


@dataclass
class Trainable:
    """What one training method hands the loop."""

    model: PromptedModel
    """whose loss a step takes (every row uses its bank's prompt 0)"""
    params: dict[str, nn.Parameter]
    """what trains, by the names the checkpoint stores them under; the optimizer's parameters, in this order"""
    rows: int
    """how many rows (examples, text chunks) the steps draw from"""
    batches: Callable[[int, list[list[int]]], list[Batch]]
    """(step, this process's row indices of each micro-batch) → the step's micro-batches, each [b, T]"""
    snapshot: Callable[[], dict[str, Tensor]]
    """a copy of what the best step keeps (a prompt's fold, a model's weights), taken while that step is current"""
    lr: float
    desc: str
    """the progress bar's label"""
    scaler: torch.amp.GradScaler | None = None
    """fp16 weights: the dynamic loss scaler (skips steps whose gradients overflow)"""
    step_loss: Callable[[list[Batch]], float] | None = None
    """a method whose own forward takes the loss (the PEFT peer's model): backpropagates a step's mean target NLL
    over its micro-batches into ``params`` (:func:`softprompt.training.steploss.step_token_count` weights them) and
    returns it; None: :func:`softprompt.training.steploss.backward_step` on ``model``. Single process only."""


@dataclass
class Selection:
    """How the loop keeps its best step: ``evaluate()`` scores the current parameters (on every process: a sharded
    backbone needs all of them in each forward), a higher ``metric`` is better; every ``every`` steps and at the
    last (0: only at the last)."""

    evaluate: Callable[[], dict[str, float]]
    metric: str
    every: int


@dataclass
class LoopResult:
    state: TrainState
    best: dict[str, Tensor] | None
    """the best step's snapshot; None when the parameters the run ended with are it (or nothing selected)"""
    resumed_from_step: int = 0
    """the step the run went on from (0: it started fresh), so a caller can say which steps this process ran"""

    def summary(self, metric: str) -> dict[str, Any]:
        """What every method records of its run: steps, and the kept step and its selection score ``metric`` (when
        it selected). The same for a resumed run as for one that was not killed (resume is exact)."""
        out: dict[str, Any] = {"steps": self.state.step}
        if self.state.best_metric is not None:
            out.update({f"best_selection_{metric}": self.state.best_metric, "best_step": self.state.best_step})
        return out


def start_run(config: LoopConfig, files: RunFiles | None, resume: bool) -> Checkpoint | None:
    """Seed torch's global RNG and return the checkpoint the run continues from (None: it starts fresh).

    Called before the method builds what trains, so that it can start from the checkpoint rather than an init. A
    checkpoint whose settings differ (other than :data:`RESUMABLE_CHANGES`) is refused.
    """
    torch.manual_seed(config.seed)
    if not resume or files is None or not files.checkpoint.is_file():
        return None
    ckpt = load_checkpoint(files.checkpoint)
    # A setting the checkpoint lacks is newer than the checkpoint; its default is the behaviour it ran with.
    have, defaults = asdict(config), saved_defaults(config)
    differs = {k for k in have if k not in resumable_changes(config) and ckpt.config.get(k, defaults[k]) != have[k]}
    if differs:
        why = (" (the linear schedule spreads its decay over the run's steps, so a run cannot be resumed to more or "
               "fewer; --schedule constant runs can be extended)") if "steps" in differs else ""
        raise ValueError(f"--resume with settings that differ from the checkpoint's: {sorted(differs)}{why}")
    return ckpt


class _Log:
    """JSONL + TensorBoard metrics, truncated back to the resumed step so a resumed log has no duplicates."""

    def __init__(self, files: RunFiles, start_step: int) -> None:
        self.path = files.metrics
        kept = []
        if start_step and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= start_step]
        atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(f"{k}\n" for k in kept)))
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(files.tensorboard), purge_step=start_step + 1 if start_step else None)
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


def _restore(job: Trainable, optimizer: torch.optim.Optimizer, start: Checkpoint) -> None:
    """Put the checkpoint's parameters, optimizer and scaler state and RNG back in place."""
    if set(start.params) != set(job.params):
        raise ValueError(f"the checkpoint holds other parameters than this run trains "
                         f"(missing {sorted(set(job.params) - set(start.params))[:3]}, "
                         f"extra {sorted(set(start.params) - set(job.params))[:3]}); delete it to start over")
    with torch.no_grad():
        for name, p in job.params.items():
            if p.shape != start.params[name].shape:
                raise ValueError(f"checkpoint parameter {name} is {list(start.params[name].shape)}, this run's is "
                                 f"{list(p.shape)}")
            p.copy_(start.params[name])
    # lr "auto" resolves from the code's rule and the model: the same setting can mean another step size than the
    # checkpoint's, which its optimizer state holds.
    # Under a schedule the groups' "lr" is the last step's; "initial_lr" holds the base (older checkpoints lack it
    # and ran at a constant lr).
    ran = [g.get("initial_lr", g.get("lr")) for g in start.optimizer_state.get("param_groups", [])]
    if ran and any(lr is not None and not math.isclose(lr, job.lr, rel_tol=1e-6) for lr in ran):
        raise ValueError(f"--resume with another step size: the checkpoint ran at lr {ran[0]:.6g}, this run's is "
                         f"{job.lr:.6g} (lr auto's rule or the model changed); delete the checkpoint to start over")
    optimizer.load_state_dict(start.optimizer_state)
    if job.scaler is not None and start.scaler_state is not None:
        job.scaler.load_state_dict(start.scaler_state)
    if start.rng is not None:
        # Nothing in the loop draws from the global RNG today (rows and splits are seeded per step, dropout is off);
        # restored so that a method that does resumes exactly too.
        torch.set_rng_state(start.rng)


def train_loop(job: Trainable, config: LoopConfig, files: RunFiles | None, *, start: Checkpoint | None = None,
               selection: Selection | None = None, progress: bool = True, dist: DistContext | None = None
               ) -> LoopResult:
    """Train ``job.params`` for ``config.steps`` steps (from ``start``'s step when given, see :func:`start_run`).

    ``files`` None writes nothing (no checkpoint, no log). With ``dist`` every process calls this with the same
    arguments; only the main process writes.
    """
    main = dist is None or dist.is_main
    if job.step_loss is not None and (dist is not None or job.scaler is not None):
        raise ValueError("a method's own step loss trains in one process without a loss scaler")
    optimizer = make_optimizer(config, list(job.params.values()), job.lr)
    for group in optimizer.param_groups:
        group["initial_lr"] = job.lr  # the base step size, saved with the optimizer state (see _restore)
    state, best = TrainState(), None
    if start is not None:
        _restore(job, optimizer, start)
        state, best = start.state, start.best or None
    first_step = state.step
    if dist is not None:
        # Replicas must start equal; inits are seeded, but a GPU kernel need not be bit-deterministic.
        with torch.no_grad():
            for p in job.params.values():
                dist.broadcast(p)
    log = _Log(files, state.step) if files is not None and main else None
    bar = tqdm(total=config.steps, initial=state.step, desc=job.desc, unit="step", disable=not (progress and main))
    last: dict[str, float] = {}
    try:
        for step in range(state.step, config.steps):
            if best is None and state.best_step == state.step:
                best = job.snapshot()  # the best step's parameters are about to change: keep a copy now
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            rows = []
            for micro in range(config.grad_accum):
                indices = batch_indices(job.rows, config.seed, step, micro, config)
                rows.append(indices if dist is None else dist.shard(indices))
            batches = job.batches(step, rows)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(config, job.lr, step)
            loss = job.step_loss(batches) if job.step_loss is not None else \
                backward_step(job.model, batches, scaler=job.scaler, dist=dist, params=list(job.params.values()))
            if job.scaler is None:
                optimizer.step()
            else:  # skips the step (and lowers the scale) when fp16 gradients overflowed
                job.scaler.step(optimizer)
                job.scaler.update()
            state.step = step + 1
            state.losses.append(loss)
            record: dict[str, Any] = {"step": state.step, "loss": loss, "step_seconds": time.perf_counter() - t0}
            final = state.step == config.steps
            evaluated = selection is not None and ((selection.every and state.step % selection.every == 0) or final)
            if evaluated:
                with torch.no_grad():
                    last = selection.evaluate()
                record.update({f"selection_{k}": v for k, v in last.items()})
                state.history.append({"step": state.step, **last})
                if state.best_metric is None or last[selection.metric] > state.best_metric:
                    # The parameters are the best now; they are copied only once a step is about to change them.
                    state.best_metric, state.best_step, best = last[selection.metric], state.step, None
            if log is not None and (state.step % config.log_every == 0 or evaluated):
                log.write(record)
            bar.set_postfix(loss=f"{loss:.4f}", **({selection.metric: f"{last[selection.metric]:.3f}"}
                                                   if selection is not None and last else {}))
            bar.update(1)
            if files is not None and main and (state.step % config.save_every == 0 or final):
                save_checkpoint(files.checkpoint, job.params, best, optimizer, state, asdict(config), job.scaler)
    finally:
        bar.close()
        if log is not None:
            log.close()
    return LoopResult(state, best, first_step)
