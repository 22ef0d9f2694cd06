"""``softprompt tasks``: the built-in tasks, one per line: name, kind, metrics (primary first), splits."""

from __future__ import annotations

import argparse
from pathlib import Path

from softprompt.cli.common import emit
from softprompt.tasks import TASKS, resolve_data_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tasks", help="list the built-in tasks: kind, metrics, splits (and whether their data is here)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="data root to check for the split files (default: $SOFTPROMPT_DATA_DIR, else ../shared/data)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = resolve_data_dir(args.data_dir)
    rows = []
    for name, cls in TASKS.items():
        # The primary metric (the one training selects prompts by) first, then the others the task reports.
        metrics = [cls.primary_metric, *(m for m in cls.metric_names if m != cls.primary_metric)]
        splits = {split: (root / file).is_file() for split, file in cls.splits.items()}
        rows.append({"name": name, "kind": cls.kind, "metrics": metrics, "splits": splits})
    if args.json:
        emit({"data_dir": str(root), "tasks": rows}, True)
        return 0
    for r in rows:
        splits = ", ".join(s if here else f"{s} (no data)" for s, here in r["splits"].items())
        print(f"{r['name']:<20} {r['kind']:<15} {', '.join(r['metrics']):<22} {splits}")
    return 0
