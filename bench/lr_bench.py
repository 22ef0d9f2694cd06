"""Is the default step size stable on every built-in model? Prompt-tune SST-2 for ``--steps`` steps at each prompt
length and record each run's largest loss jump: max over t of (loss_t − min over s < t of loss_s), in nats.

The target (the trust issue): ≤ 1 nat over 100 steps for ``lr auto`` on all four built-in models × P ∈ {5, 20, 50,
100}. The paper's setting runs beside it on request (``--lr 0.3 --beta1 none --schedule constant --label paper``)
to show what the rule fixes.

A step's loss is that of its own 16 examples, so part of any jump is batch difficulty, not the step size. Each cell
therefore also scores its *final* prompt, held fixed, on the same batches in the same order: ``noise_floor_jump`` is
the largest jump of that fixed prompt (what batch difficulty alone gives), and ``paired_jump`` the largest jump of
loss_t − fixed_t (the training prompt against the fixed one on the same batch: an unstable step shows there, an
unlucky batch does not). Cells written before these fields get them from their saved prompt on the next run.

One JSON per run under ``bench/results/lr_auto/`` (a resumable cell: a finished run is skipped, a killed one
resumes from its training checkpoint under ``runs/lr_bench/``); the summary ``bench/results/lr_auto_cpu.json``
collects every finished cell, and ``--plot`` draws the loss curves. ``--results`` and ``--work`` move those folders
(the tests run it on a tiny model and a toy ``--task`` into a temporary folder).

    PYTHONPATH=src python bench/lr_bench.py --models smollm2-135m --prompt-lengths 5 20 50 100
    PYTHONPATH=src python bench/lr_bench.py --models smollm2-135m --prompt-lengths 20 --lr 0.3 --beta1 none \
        --schedule constant --label paper
    PYTHONPATH=src python bench/lr_bench.py --summary-only --plot docs/results/lr_auto.png
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).resolve().parents[1] / "runs" / "lr_bench"
JUMP_LIMIT = 1.0  # nats
MODELS = ["smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b"]
PROMPT_LENGTHS = [5, 20, 50, 100]
MAX_INPUT_TOKENS = 128


def cells_dir(results: Path) -> Path:
    return results / "lr_auto"


def summary_path(results: Path) -> Path:
    return results / "lr_auto_cpu.json"


def cell_name(model: str, p: int, label: str) -> str:
    """A cell's file stem: the model's name (a model folder's own name), P and the lr label."""
    return f"{Path(model).name}_P{p}_{label}"


def write_cell(path: Path, cell: dict) -> None:
    from softprompt.core.files import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(cell, indent=1) + "\n"))


def auto_rule_mismatch(cell: dict) -> list[str]:
    """Why a cell labelled ``auto`` did not run lr auto's rule as the code has it now (empty: it did): its step size,
    momentum or schedule (a cell without a schedule ran a constant one)."""
    from softprompt.training.loop import FIRST_DEFAULTS
    from softprompt.training.prompt_tuning import AUTO_LR_SCALE, TrainConfig

    now = TrainConfig()
    wrong = [] if math.isclose(cell["lr"], AUTO_LR_SCALE * cell["embedding_std"], rel_tol=1e-6) else ["lr"]
    ran = {"beta1": cell.get("beta1"), "schedule": cell.get("schedule", FIRST_DEFAULTS["schedule"])}
    return wrong + [k for k, v in ran.items() if v != getattr(now, k)]


def largest_jump(losses: list[float]) -> float:
    """max over t of (loss_t − min over s < t of loss_s); 0 for a loss that never rises above its past minimum."""
    best, jump = float("inf"), 0.0
    for loss in losses:
        jump = max(jump, loss - best)
        best = min(best, loss)
    return jump


def fixed_prompt_losses(backbone: Any, task: Any, train: list, prompt: Any, cell: dict) -> list[float]:
    """The loss a fixed ``prompt`` [P, H] gets on each step's batch of ``cell``'s run (same rows, same order)."""
    import torch

    from softprompt.core.bank import PromptBank
    from softprompt.core.prompted import PromptedModel
    from softprompt.training.loop import LoopConfig, batch_indices
    from softprompt.training.steploss import step_token_count
    from softprompt.training.supervised import example_batches

    config = LoopConfig(steps=cell["steps"], batch_size=cell["batch_size"], grad_accum=cell["grad_accum"],
                        seed=cell["seed"])
    pm = PromptedModel(backbone, PromptBank(prompt.unsqueeze(0).to(backbone.device)))
    build = example_batches(backbone, task, train, MAX_INPUT_TOKENS)
    out = []
    with torch.no_grad():
        for step in range(config.steps):
            batches = build(step, [batch_indices(len(train), config.seed, step, m, config)
                                   for m in range(config.grad_accum)])
            # the step's mean target NLL over all its micro-batches' tokens, as the trainer's loss
            nll = sum(float(-pm.target_logprobs(b, torch.zeros(len(b.target_lengths), dtype=torch.long))[0].sum())
                      for b in batches)
            out.append(nll / float(step_token_count(batches, backbone.device)))
    return out


def add_noise_floor(cell: dict, backbone: Any, task: Any, train: list, prompt_file: Path) -> dict:
    """``cell`` with its final prompt's fixed-prompt losses and the two jumps they give (see the module doc)."""
    from softprompt.core.promptfile import load_prompt

    fixed = fixed_prompt_losses(backbone, task, train, load_prompt(prompt_file).prompt, cell)
    return {**cell, "fixed_prompt_losses": [round(x, 5) for x in fixed],
            "noise_floor_jump": round(largest_jump(fixed), 5),
            "paired_jump": round(largest_jump([a - b for a, b in zip(cell["losses"], fixed, strict=True)]), 5)}


def run_cell(model: str, p: int, args: argparse.Namespace, backbone: Any, task: Any, train: list) -> dict:
    import torch

    from softprompt.experiments.provenance import load_average, provenance
    from softprompt.training.prompt_tuning import TrainConfig, resolve_lr, train_prompt

    lr: float | str = args.lr if args.lr == "auto" else float(args.lr)
    beta1 = {} if args.beta1 is None else {"beta1": None if args.beta1 == "none" else float(args.beta1)}
    schedule = {} if args.schedule is None else {"schedule": args.schedule}
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, prompt_length=p,
                         init=args.init, lr=lr, **beta1, **schedule, seed=args.seed, eval_every=0,
                         max_input_tokens=MAX_INPUT_TOKENS, save_every=10)
    out = args.work / f"{cell_name(model, p, args.label)}.safetensors"
    load_before = load_average()
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    train_prompt(backbone, task, train, config, out, resume=True, progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    log = [json.loads(line) for line in out.with_suffix(".metrics.jsonl").read_text().splitlines() if line.strip()]
    records = [r for r in sorted(log, key=lambda r: r["step"]) if "loss" in r]
    losses = [r["loss"] for r in records]
    # The log's own step times: a cell resumed in another process (or on another day) counts all its steps, and
    # the median is not moved by a run paused for a while.
    step_seconds = [r["step_seconds"] for r in records if "step_seconds" in r]
    cell = {
        "model": model, "prompt_length": p, "label": args.label, "lr_setting": args.lr,
        "lr": resolve_lr(config, backbone), "embedding_std": backbone.embedding_std(), "init": args.init,
        "steps": len(losses), "batch_size": args.batch_size, "grad_accum": args.grad_accum, "beta1": config.beta1,
        "schedule": config.schedule, "seed": args.seed,
        "task": task.name,
        "losses": [round(x, 5) for x in losses], "largest_jump": round(largest_jump(losses), 5),
        "first_loss": losses[0], "last10_mean_loss": sum(losses[-10:]) / len(losses[-10:]),
        # seconds: this process's wall time around training; train_seconds: every logged step's, resumed or not
        "seconds": round(seconds, 1), "train_seconds": round(sum(step_seconds), 1),
        "seconds_per_step": round(sum(step_seconds) / max(1, len(step_seconds)), 3),
        "median_step_seconds": round(statistics.median(step_seconds), 3) if step_seconds else None,
        "load_average_before": load_before, **provenance(),
    }
    return add_noise_floor(cell, backbone, task, train, out)


def summarize(results: Path) -> dict:
    cells = [json.loads(p.read_text()) for p in sorted(cells_dir(results).glob("*.json"))]
    rows = [{k: c[k] for k in ("model", "prompt_length", "label", "lr", "embedding_std", "steps", "largest_jump",
                               "first_loss", "last10_mean_loss", "seconds_per_step")}
            | {k: c.get(k) for k in ("noise_floor_jump", "paired_jump")} for c in cells]
    earlier = [c["label"] == "auto" and bool(auto_rule_mismatch(c)) for c in cells]
    stale = [cell_name(c["model"], c["prompt_length"], "auto") for c, e in zip(cells, earlier, strict=True) if e]
    auto = [r for r, e in zip(rows, earlier, strict=True) if r["label"] == "auto" and not e]
    paired = [r["paired_jump"] for r in auto if r["paired_jump"] is not None]
    have = {cell_name(r["model"], r["prompt_length"], "auto") for r in auto}
    targets = [cell_name(m, p, "auto") for m in MODELS for p in PROMPT_LENGTHS]
    missing = [n for n in targets if n not in have]
    summary = {
        "what": "largest loss jump (nats) of SST-2 prompt tuning, per model and prompt length; target <= 1 for lr auto",
        "jump_limit": JUMP_LIMIT,
        # the target's cells: every built-in model x P; the verdicts below count only when all have run
        "auto_target_cells": targets,
        "auto_missing_cells": missing,
        # labelled auto but run under an earlier rule: not counted (relabel them by what they ran)
        "auto_stale_cells": stale,
        "auto_all_within_limit": bool(auto) and all(r["largest_jump"] <= JUMP_LIMIT for r in auto),
        "auto_all_within_limit_on_every_target_cell": not missing and all(r["largest_jump"] <= JUMP_LIMIT
                                                                           for r in auto),
        "auto_runs": len(auto),
        "auto_worst_jump": max((r["largest_jump"] for r in auto), default=None),
        "auto_worst_noise_floor_jump": max((r["noise_floor_jump"] or 0 for r in auto), default=None),
        "auto_paired_all_within_limit": bool(paired) and len(paired) == len(auto) and max(paired) <= JUMP_LIMIT,
        "auto_worst_paired_jump": max(paired, default=None),
        "runs": rows,
    }
    summary_path(results).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def plot(results: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [json.loads(p.read_text()) for p in sorted(cells_dir(results).glob("*.json"))]
    found = list(dict.fromkeys(c["model"] for c in cells))
    models = [m for m in MODELS if m in found] + [m for m in found if m not in MODELS]  # smallest first
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models, strict=True):
        mine = sorted((c for c in cells if c["model"] == model), key=lambda c: (c["label"], c["prompt_length"]))
        auto = [c for c in mine if c["label"] == "auto"]
        others = [c for c in mine if c["label"] not in ("auto", "paper")]
        # lr auto's cells stand out, the paper's setting beside them; the other step sizes tried while choosing the
        # rule are drawn faint behind, with one legend entry (their numbers are in the summary JSON)
        for i, c in enumerate(others):
            ax.plot(range(1, len(c["losses"]) + 1), c["losses"], ":", color="0.6", lw=0.8, alpha=0.5, zorder=1,
                    label=f"{len(others)} other step sizes tried" if i == 0 else None)
        for c in mine:
            if c["label"] == "paper":
                ax.plot(range(1, len(c["losses"]) + 1), c["losses"], "--", color="black", lw=1.0, zorder=2,
                        label=f"paper lr {c['lr']:.3g}, P={c['prompt_length']} (jump {c['largest_jump']:.2f})")
        for c in auto:
            ax.plot(range(1, len(c["losses"]) + 1), c["losses"], "-", lw=1.2, zorder=3,
                    label=f"P={c['prompt_length']} (jump {c['largest_jump']:.2f})")
        lrs = sorted({f"{c['lr']:.3g}" for c in auto})
        ax.set_title(f"{model}: lr auto = {', '.join(lrs)}" if lrs else model, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("training loss (nats)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    from softprompt.training.loop import SCHEDULES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--prompt-lengths", nargs="+", type=int, default=PROMPT_LENGTHS)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16, help="the trainer's default batch")
    ap.add_argument("--grad-accum", type=int, default=1,
                    help="micro-batches per step (the same update as one batch; less memory for the 1.5B model)")
    ap.add_argument("--beta1", default=None,
                    help="Adafactor momentum: a number, or 'none' (the paper's); default: the trainer's default")
    ap.add_argument("--schedule", choices=SCHEDULES, default=None,
                    help="the step size over the run; default: the trainer's default")
    ap.add_argument("--lr", default="auto", help="'auto' or a number")
    ap.add_argument("--label", default="auto", help="name of this lr setting in the cell files (auto, paper, ...)")
    ap.add_argument("--init", default="class-label")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--plot", type=Path, default=None, help="also draw the loss curves to this PNG")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--task", default="sst2", help="the task tuned (a built-in name or a task spec)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the cells and the summary go")
    ap.add_argument("--work", type=Path, default=WORK, help="where the runs' prompts and checkpoints go")
    args = ap.parse_args(argv)
    if not args.summary_only:
        import torch

        from softprompt.core.backbone import load_backbone
        from softprompt.tasks import get_task

        torch.set_num_threads(args.threads)
        task = get_task(args.task)
        train = task.examples("train", args.data_dir)
        cells = cells_dir(args.results)
        cells.mkdir(parents=True, exist_ok=True)
        for model in args.models:
            names = {p: cells / f"{cell_name(model, p, args.label)}.json" for p in args.prompt_lengths}
            stale = [f.name for f in names.values() if args.label == "auto" and f.is_file()
                     and auto_rule_mismatch(json.loads(f.read_text()))]
            if stale:
                sys.exit(f"cells labelled auto ran an earlier rule of lr auto: {', '.join(stale)}; rename them "
                         "(file and label) by what they ran, and their runs in --work, then rerun")
            todo = [p for p, f in names.items() if not f.is_file()]
            # finished cells from before the noise floor, whose prompt is still here
            floors = [p for p, f in names.items() if f.is_file() and "noise_floor_jump" not in json.loads(f.read_text())
                      and (args.work / f"{f.stem}.safetensors").is_file()]
            if not todo and not floors:
                continue
            backbone = load_backbone(model)
            for p in floors:
                cell = add_noise_floor(json.loads(names[p].read_text()), backbone, task, train,
                                       args.work / f"{names[p].stem}.safetensors")
                write_cell(names[p], cell)
                print(f"{model} P={p} {args.label}: noise floor {cell['noise_floor_jump']:.3f}, paired jump "
                      f"{cell['paired_jump']:.3f} nats", flush=True)
            for p in todo:
                cell = run_cell(model, p, args, backbone, task, train)
                write_cell(names[p], cell)
                print(f"{model} P={p} {args.label}: lr {cell['lr']:.4g}, largest jump {cell['largest_jump']:.3f} "
                      f"nats (noise floor {cell['noise_floor_jump']:.3f}, paired {cell['paired_jump']:.3f}), "
                      f"{cell['seconds_per_step']:.2f} s/step", flush=True)
            del backbone
    summary = summarize(args.results)
    if args.plot:
        plot(args.results, args.plot)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
