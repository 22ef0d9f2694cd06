"""``softprompt ensemble``: several prompts for one task, scored in one batched pass and combined (the paper's
Table 3: each prompt, their average, the best one, majority vote, mean probability)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from softprompt.cli.common import (
    UsageError,
    add_allow_other_model,
    add_model,
    add_split,
    add_task,
    backbone_from_args,
    emit,
    selection_record,
    split_examples,
    task_from_args,
)
from softprompt.core.files import atomic_write
from softprompt.core.promptfile import load_prompt
from softprompt.evaluation.ensemble import Ensemble, EnsembleResult


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ensemble", help="evaluate several prompts and their vote / mean-probability ensemble")
    add_model(p)
    add_task(p)
    p.add_argument("--prompt", action="append", required=True, metavar="FILE",
                   help="prompt file (.safetensors); repeat for each member of the ensemble")
    add_split(p)
    add_allow_other_model(p)
    p.add_argument("--batch-size", type=int, default=64,
                   help="rows per forward pass (examples × choices × prompts are chunked into rows): the memory budget")
    p.add_argument("--max-input-tokens", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON to this file")
    p.add_argument("--json", action="store_true", help="last stdout line is one JSON object")
    p.set_defaults(func=run)


def format_table(result: EnsembleResult) -> str:
    """A plain-text table: one row per prompt, then average, best single, majority vote, mean probability."""
    rows = result.rows()
    width = max(len(label) for label, _ in rows)
    lines = [f"{result.task}: {result.examples} examples, {len(result.names)} prompts",
             f"{'':<{width}}  {result.metric}", "-" * (width + 2 + max(8, len(result.metric)))]
    for i, (label, value) in enumerate(rows):
        if i == len(result.names):
            lines.append("-" * (width + 2 + max(8, len(result.metric))))
        lines.append(f"{label:<{width}}  {100 * value:6.2f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    task = task_from_args(args)
    metas = [load_prompt(p).meta for p in args.prompt]
    examples, selection = split_examples(task, args, [selection_record(p, m.selection, m.metrics, m.train_config)
                                                      for p, m in zip(args.prompt, metas, strict=True)])
    backbone = backbone_from_args(args)
    names = [Path(p).stem for p in args.prompt]
    if len(set(names)) != len(names):  # two runs/x.safetensors from different folders: keep them apart
        names = list(args.prompt)
    ensemble = Ensemble(backbone, args.prompt, names=names, allow_other_model=args.allow_other_model)
    t0 = time.perf_counter()
    result = ensemble.evaluate(task, examples, batch_size=args.batch_size, max_input_tokens=args.max_input_tokens,
                               max_new_tokens=args.max_new_tokens, progress=args.progress)
    summary = {"model": args.model, "split": args.split, **({"selection": selection} if selection else {}),
               "seconds": round(time.perf_counter() - t0, 2),
               "prompt_files": list(args.prompt), **result.to_dict()}
    if args.out is not None:
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n"))
    print(format_table(result))
    if args.json:
        emit(summary, True)
    return 0
