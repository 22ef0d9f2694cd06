"""``softprompt train``: prompt-tune a frozen model on a task and write a prompt file, or (``--method model-tuning``)
fine-tune every weight and write a model folder."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from softprompt.cli.common import (
    UsageError,
    add_allow_other_model,
    add_model,
    add_task,
    backbone_from_args,
    emit,
    task_from_args,
)
from softprompt.core.promptfile import load_prompt
from softprompt.experiments.baselines.model_tuning import ModelTuneConfig, tune_model
from softprompt.experiments.methods import task_parameters
from softprompt.tasks import Example, Task
from softprompt.tasks.selection import SELECTION_SEED, selection_split
from softprompt.training.distributed import DistContext, fsdp_requested, shard_backbone
from softprompt.training.initializers import INITS, TRANSFER_PREFIX, is_init
from softprompt.training.loop import SCHEDULES
from softprompt.training.precision import PRECISIONS, enable_gradient_checkpointing
from softprompt.training.prompt_tuning import AUTO_LR_SCALE, RECIPES, TrainConfig, train_prompt
from softprompt.training.reparam import REPARAMS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="prompt-tune a frozen model (writes a .safetensors prompt file) or fine-tune it "
                                      "(--method model-tuning, writes a model folder)")
    add_model(p)
    add_task(p)
    p.add_argument("--method", choices=["prompt-tuning", "model-tuning"], default="prompt-tuning",
                   help="prompt-tuning: a soft prompt on the frozen model; model-tuning: every weight trained, no "
                        "prompt (the baseline)")
    p.add_argument("--out", type=Path, required=True,
                   help="prompt file to write (.safetensors); a model folder for --method model-tuning")
    d = TrainConfig()
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--grad-accum", type=int, default=d.grad_accum)
    p.add_argument("--prompt-length", type=int, default=d.prompt_length, help="P, soft-prompt vectors")
    p.add_argument("--init", type=_init, default=d.init, metavar="{" + ",".join(INITS) + f",{TRANSFER_PREFIX}FILE}}",
                   help=f"prompt initialisation (default {d.init}); {TRANSFER_PREFIX}FILE.safetensors starts from "
                        "another prompt file of this model (prompt transfer): its first P rows, or all of them "
                        "followed by sampled-vocab rows when it is shorter")
    p.add_argument("--init-text", default=None, help="string for --init text")
    add_allow_other_model(p)
    p.add_argument("--reparam", choices=REPARAMS, default=d.reparam,
                   help="residual: train each prompt vector through a shared residual MLP (P + LayerNorm(W_up "
                        "ReLU(W_down P)), Razdaibiedina et al. 2023); the MLP is folded into the saved prompt, which "
                        f"is a plain prompt file (default {d.reparam})")
    p.add_argument("--reparam-bottleneck", type=int, default=d.reparam_bottleneck,
                   help=f"--reparam residual: the MLP's hidden width (default {d.reparam_bottleneck}, the authors')")
    m = ModelTuneConfig()
    p.add_argument("--optimizer", choices=["adafactor", "adam", "adamw"], default=None,
                   help=f"default {d.optimizer} (prompt tuning), {m.optimizer} (model tuning)")
    p.add_argument("--lr", type=_lr, default=None,
                   help=f"a number, or 'auto' = {AUTO_LR_SCALE} × the model's embedding std (default for prompt "
                        f"tuning); default {m.lr} for model tuning")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="named prompt-tuning settings: 'paper' = Lester et al.'s Adafactor lr 0.3 without momentum "
                        "(tuned to T5's embedding scale); 'default' = Adafactor lr auto, momentum 0.9. "
                        "--optimizer/--lr/--weight-decay/--beta1 override it")
    p.add_argument("--beta1", type=_beta1, default=None,
                   help=f"Adafactor's momentum, a number in [0, 1) or 'none' (default {d.beta1} for prompt tuning; "
                        "the paper recipe has none)")
    p.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help=f"the step size over the run: constant, or linear decay to lr / steps at the last step "
                        f"(default {d.schedule} for prompt tuning, {m.schedule} for model tuning)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help=f"default {d.weight_decay} (prompt tuning), {m.weight_decay} (model tuning)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds, e.g. 1,2,3: one run per seed, each written to OUT-seed{S}.safetensors "
                        "(the prompts of an ensemble)")
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="steps between evals on the selection slice; the best step is kept (0: evaluate only at "
                        "the end)")
    p.add_argument("--selection-size", type=int, default=None,
                   help="examples held out from the train split to select the best step on (default: 10%% of "
                        "train, at least 32 and at most 500, at most half; whole groups, fixed seed "
                        f"{SELECTION_SEED}; cut before --train-limit). The validation split (a file task's "
                        "--validation-file) is never used for selection: it is what `softprompt eval` reports")
    p.add_argument("--eval-limit", type=int, default=None,
                   help="score only the first N examples of the selection slice per eval (default: all of it)")
    p.add_argument("--no-eval", action="store_true",
                   help="no selection: train on the whole train split and keep the last step")
    p.add_argument("--save-every", type=int, default=None,
                   help=f"steps between resume checkpoints (default {d.save_every} for prompt tuning, "
                        f"{m.save_every} for model tuning: each of its checkpoints holds the weights and the "
                        "optimizer's state)")
    p.add_argument("--max-input-tokens", type=int, default=d.max_input_tokens)
    p.add_argument("--train-limit", type=int, default=None,
                   help="use only the first N training examples (of those the selection slice leaves)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT's checkpoint if there is one (OUT.ckpt.safetensors beside a prompt file, "
                        "DIR.ckpt.safetensors beside a model folder)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="backbone weights dtype; the prompt stays fp32 (default: accelerate's --mixed_precision, "
                        "else fp32)")
    p.add_argument("--loss-scale-growth-interval", type=int, default=d.loss_scale_growth_interval,
                   help="fp16: steps without an overflow before the loss scale doubles")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute block activations in backward (less memory, ~1 extra forward)")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun/accelerate launch: shard the frozen blocks over the processes (FSDP2); "
                        "also on with `accelerate launch --use_fsdp`")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.set_defaults(func=run)


def _init(text: str) -> str:
    """``--init``: a named init or ``from:FILE``."""
    if not is_init(text):
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(INITS)} or {TRANSFER_PREFIX}FILE, got {text!r}")
    return text


def _lr(text: str) -> float | str:
    """``--lr``: a positive number or ``auto``."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _beta1(text: str) -> float | str:
    """``--beta1``: a number in [0, 1), or ``none`` (no momentum)."""
    if text.lower() == "none":
        return "none"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) or 'none', got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) or 'none', got {text!r}")
    return value


def _optimizer_args(args: argparse.Namespace, defaults: TrainConfig | ModelTuneConfig) -> dict:
    """--optimizer/--lr/--weight-decay/--beta1/--schedule, each falling back to --recipe's value, then to the
    method's own default."""
    recipe = RECIPES[args.recipe] if getattr(args, "recipe", None) else {}
    chosen = {k: (recipe.get(k, getattr(defaults, k)) if getattr(args, k, None) is None else getattr(args, k))
              for k in ("optimizer", "lr", "weight_decay", "beta1", "schedule")}
    return {**chosen, "beta1": None if chosen["beta1"] == "none" else chosen["beta1"]}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                       prompt_length=args.prompt_length, init=args.init, init_text=args.init_text,
                       reparam=args.reparam, reparam_bottleneck=args.reparam_bottleneck,
                       **_optimizer_args(args, TrainConfig()), seed=args.seed,
                       eval_every=args.eval_every, eval_limit=args.eval_limit,
                       save_every=TrainConfig.save_every if args.save_every is None else args.save_every,
                       max_input_tokens=args.max_input_tokens,
                       loss_scale_growth_interval=args.loss_scale_growth_interval)


def parse_seeds(text: str) -> list[int]:
    """``"1,2,3"`` → [1, 2, 3]; duplicates and non-integers are usage errors."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds needs distinct integers, got {text!r}")
    return seeds


def seed_out(out: Path, seed: int) -> Path:
    """``runs/sst2.safetensors`` → ``runs/sst2-seed3.safetensors``."""
    return out.with_name(f"{out.stem}-seed{seed}{out.suffix}")


def model_tune_config_from_args(args: argparse.Namespace) -> ModelTuneConfig:
    return ModelTuneConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                           **_optimizer_args(args, ModelTuneConfig()), seed=args.seed, eval_every=args.eval_every,
                           eval_limit=args.eval_limit, max_input_tokens=args.max_input_tokens,
                           save_every=ModelTuneConfig.save_every if args.save_every is None else args.save_every)


def split_train(task: Task, args: argparse.Namespace, eval_limit: int | None
                ) -> tuple[list[Example], list[Example] | None, dict]:
    """(train, selection, what identifies the selection slice); with --no-eval all of train and no selection."""
    if args.no_eval:
        return task.examples("train", args.data_dir, limit=args.train_limit), None, {}
    cut = selection_split(task, args.data_dir, size=args.selection_size, limit=eval_limit,
                          train_limit=args.train_limit)
    return cut.train, cut.selection, cut.info


def run_model_tuning(args: argparse.Namespace) -> int:
    if args.out.suffix == ".safetensors" or args.out.is_file():
        raise UsageError(f"--method model-tuning writes a model folder; --out {args.out} looks like a file")
    if args.lr == "auto":
        raise UsageError("--lr auto is for prompt tuning (it scales the prompt's step to the embeddings); give "
                         "model tuning a number")
    for flag, value in (("--seeds", args.seeds), ("--fsdp", args.fsdp),
                        ("--recipe", args.recipe), ("--reparam", args.reparam != "none"),
                        ("--init from:", args.init.startswith(TRANSFER_PREFIX))):
        if value:
            raise UsageError(f"{flag} is for prompt tuning, not --method model-tuning")
    config = model_tune_config_from_args(args)
    task = task_from_args(args)
    train, selection, info = split_train(task, args, config.eval_limit)
    backbone = backbone_from_args(args)
    t0 = time.perf_counter()
    result = tune_model(backbone, task, train, config, args.out, selection=selection, selection_info=info,
                        resume=args.resume, progress=not args.no_progress)
    emit({"out": str(args.out), "task": task.name, "model": args.model, "method": "model-tuning",
          "seconds": round(time.perf_counter() - t0, 2), "selection": info, **result.metrics}, args.json)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.method == "model-tuning":
        return run_model_tuning(args)
    if args.out.suffix != ".safetensors":
        raise UsageError(f"--out must end in .safetensors, got {args.out}")
    seeds = parse_seeds(args.seeds) if args.seeds else None
    config = config_from_args(args)
    if config.init.startswith(TRANSFER_PREFIX):
        load_prompt(config.init[len(TRANSFER_PREFIX):])  # a missing or broken file is refused before a model loads
    task = task_from_args(args)
    # One slice for every seed: the prompts of an ensemble are selected on the same held-out examples.
    train, selection, info = split_train(task, args, config.eval_limit)
    dist = DistContext.from_env()
    if dist is not None and args.device is None:
        args.device = str(dist.device)  # cuda:LOCAL_RANK on a GPU node
    if args.fsdp and dist is None:
        raise UsageError("--fsdp needs several processes: launch with torchrun or accelerate launch")
    backbone = backbone_from_args(args)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(backbone.model)
    if dist is not None and (args.fsdp or fsdp_requested()):
        shard_backbone(backbone, dist)
    trainable = task_parameters("prompt-tuning", model_parameters=0, hidden_size=backbone.hidden_size,
                                prompt_length=config.prompt_length)
    # One run per seed on the one loaded backbone; a single --seed keeps OUT as given.
    runs = [(config, args.out)] if seeds is None else [
        (replace(config, seed=s), seed_out(args.out, s)) for s in seeds]
    for cfg, out in runs:
        t0 = time.perf_counter()
        result = train_prompt(backbone, task, train, cfg, out, selection=selection, selection_info=info,
                              resume=args.resume, progress=not args.no_progress, dist=dist,
                              allow_other_model=args.allow_other_model)
        if dist is not None and not dist.is_main:
            continue  # the main process reports
        emit({"out": str(out), "task": task.name, "model": args.model, "method": "prompt-tuning",
              **({"seed": cfg.seed} if seeds else {}), "seconds": round(time.perf_counter() - t0, 2),
              "trainable_params": trainable, "selection": info, **result.metrics}, args.json)
    if dist is not None:  # on success only: after a failure the others may be inside a collective, never at a barrier
        dist.close()
    return 0
