"""The main job: prompt-tune the default model on SST-2, print accuracy before and after, record the evidence.

Before = prompt design (the task's hand-written instruction, no soft prompt). After = the trained prompt alone.
Both on the full SST-2 validation set (872). The checkpoint is selected on the selection slice held out from
*train* (softprompt.tasks.selection: 500 examples by default, the cut `softprompt train` makes), so the validation
set is never used for selection. Writes ``results/sst2_<model>.json`` and regenerates
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

from softprompt.core.backbone import load_backbone
from softprompt.core.bank import PromptBank
from softprompt.core.builtin_models import DEFAULT_MODEL, install
from softprompt.core.prompted import PromptedModel
from softprompt.evaluation.scoring import evaluate
from softprompt.tasks import get_task
from softprompt.tasks.selection import selection_split
from softprompt.training.prompt_tuning import TrainConfig, train_prompt

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
    ap.add_argument("--selection-size", type=int, default=None,
                    help="train examples held out for checkpoint selection (default: softprompt train's, 500 here)")
    ap.add_argument("--limit", type=int, default=None, help="validation examples (default: all 872)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "sst2.safetensors")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.model == DEFAULT_MODEL:
        install(args.model, quiet=True)
    task = get_task("sst2")
    cut = selection_split(task, args.data_dir, size=args.selection_size)
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
    result = train_prompt(backbone, task, cut.train, config, args.out, selection=cut.selection,
                          selection_info=cut.info, resume=True)
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
                  "selection": f"best of every {args.eval_every} steps on {len(cut.selection)} held-out train "
                               f"examples (the selection slice: size {cut.info['size']}, seed {cut.info['seed']})",
                  "selection_slice": cut.info,
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
