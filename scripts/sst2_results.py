"""The main job: prompt-tune the default model on SST-2, print accuracy before and after, record the evidence.

Before = prompt design (the task's hand-written instruction, no soft prompt). After = the trained prompt alone.
Both on the full SST-2 validation set (872). The checkpoint is selected on 500 examples held out from *train*, so
the validation set is never used for selection. Writes ``results/sst2_<model>.json`` and regenerates
``docs/results.md`` (see scripts/write_results_md.py).

    python scripts/sst2_results.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers

from softprompt.backbone import load_backbone
from softprompt.bank import PromptBank
from softprompt.evaluate import evaluate
from softprompt.models import DEFAULT_MODEL, install
from softprompt.prompted import PromptedModel
from softprompt.tasks import get_task
from softprompt.trainer import TrainConfig, train_prompt

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--prompt-length", type=int, default=20)
    ap.add_argument("--init", default="class-label")
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--holdout", type=int, default=500, help="train examples held out for checkpoint selection")
    ap.add_argument("--limit", type=int, default=None, help="validation examples (default: all 872)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "sst2.safetensors")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.model == DEFAULT_MODEL:
        install(args.model, quiet=True)
    task = get_task("sst2")
    train_all = task.examples("train", args.data_dir)
    train, selection = train_all[: -args.holdout], train_all[-args.holdout:]
    validation = task.examples("validation", args.data_dir, limit=args.limit)
    t0 = time.perf_counter()
    backbone = load_backbone(args.model)
    load_s = time.perf_counter() - t0

    bare = PromptedModel(backbone, PromptBank(torch.zeros(1, 0, backbone.hidden_size)))
    t0 = time.perf_counter()
    before, _ = evaluate(bare, task, validation, instruction=task.instruction, progress=True)
    before_s = time.perf_counter() - t0
    print(f"before (prompt design, text prompt only): accuracy {before['accuracy']:.4f} "
          f"on {len(validation)} validation examples", flush=True)

    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, prompt_length=args.prompt_length,
                         init=args.init, lr=args.lr, eval_every=args.eval_every, eval_limit=None,
                         save_every=10)
    t0 = time.perf_counter()
    result = train_prompt(backbone, task, train, config, args.out, validation=selection, resume=True)
    train_s = time.perf_counter() - t0

    tuned = PromptedModel(backbone, PromptBank(result.prompt.unsqueeze(0)))
    t0 = time.perf_counter()
    after, _ = evaluate(tuned, task, validation, progress=True)
    after_s = time.perf_counter() - t0
    print(f"after (prompt tuning, P={args.prompt_length}, {args.steps} steps): accuracy {after['accuracy']:.4f}",
          flush=True)

    record = {
        "task": "sst2", "model": args.model, "split": "validation", "examples": len(validation),
        "before": {"method": "prompt-design", **before, "seconds": round(before_s, 1)},
        "after": {"method": "prompt-tuning", **after, "seconds": round(after_s, 1)},
        "train": {"steps": args.steps, "batch_size": args.batch_size, "prompt_length": args.prompt_length,
                  "init": args.init, "optimizer": config.optimizer, "lr": args.lr,
                  "selection": f"best of every {args.eval_every} steps on {args.holdout} held-out train examples",
                  "seconds": round(train_s, 1), "seconds_per_step": round(train_s / args.steps, 2),
                  "history": result.state.history, **result.metrics},
        "load_seconds": round(load_s, 1),
        "command": "python scripts/sst2_results.py " + " ".join(sys.argv[1:]),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()},
    }
    out = ROOT / "results" / f"sst2_{args.model}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "write_results_md.py")], check=True)


if __name__ == "__main__":
    main()
