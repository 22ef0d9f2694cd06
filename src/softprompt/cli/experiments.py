"""``softprompt experiment CONFIG.yaml``: run a grid of cells (resumable), or write its report.

After a run it prints, per model and task, prompt design next to the tuned cells and how each chose its checkpoint
(:func:`softprompt.experiments.report.summary_lines`); ``--json`` prints only the summary line.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from softprompt.cli.common import emit
from softprompt.experiments.grid import cells, load_config, missing_models, narrowed, preflight, select
from softprompt.experiments.runner import run_experiment


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="run an experiment grid from a YAML config (skips finished cells), or "
                                          "--report its results as markdown + PNG plots")
    p.add_argument("config", type=Path, help="experiment config (.yaml), see configs/")
    p.add_argument("--report", action="store_true", help="only write the report from the finished cells")
    p.add_argument("--output", type=Path, default=None,
                   help="folder of the grid's cells, <output>/<name>/ (default: the config's output, else runs/, "
                        "which git ignores; --output results to commit a campaign's cells)")
    p.add_argument("--report-dir", type=Path, default=None,
                   help="report folder (default: the config's report_dir/<name>/, else <output>/<name>/report/)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="data root (default: the config's data_dir, else $SOFTPROMPT_DATA_DIR, else ../shared/data)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: the config's threads); not a cell setting, so finished cells stay "
                        "valid (two runs side by side on a small machine: one thread each)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and list the cells (models need not be installed); train nothing")
    p.add_argument("--only", action="append", default=[], metavar="PATTERN",
                   help="run (or list) only the cells whose id matches PATTERN (shell-style, e.g. "
                        "'qwen2.5-1.5b__*'); repeatable. Two processes that share a grid give patterns that do not "
                        "overlap: each runs its own cells, and the report covers every finished cell")
    p.add_argument("--progress", action="store_true", help="per-step progress bars")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from softprompt.experiments.report import summary_lines, write_report
    from softprompt.experiments.runner import load_cells

    config = load_config(args.config)
    if args.output is not None:
        config = replace(config, output=str(args.output))
    if args.data_dir is not None:
        config = replace(config, data_dir=str(args.data_dir))
    if args.threads is not None:
        if args.threads < 1:
            print(f"softprompt experiment: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        config = replace(config, threads=args.threads)
    if args.dry_run:
        shard = select(cells(config), args.only)
        preflight(narrowed(config, shard), check_models=False)
        for c in shard:
            print(c.id)
        missing = missing_models(narrowed(config, shard))
        if missing:  # a note on stderr: stdout stays one cell id a line
            print(f"softprompt experiment: not installed yet: {' '.join(missing)} (a run installs them first; or: "
                  f"softprompt models install {' '.join(missing)})", file=sys.stderr)
        return 0
    if not args.report:
        summary = run_experiment(config, progress=args.progress, only=args.only)
        result = {"ran": len(summary.ran), "skipped": len(summary.skipped), "reused": len(summary.reused),
                  "seconds": round(summary.seconds, 2), "cells_dir": str(config.out_dir / "cells")}
        if not args.json:
            print("\n".join(summary_lines(load_cells(config))))
    else:
        result = {}
    result["report"] = str(write_report(config, args.report_dir))
    emit({"experiment": config.name, "cells": len(cells(config)), **result}, args.json)
    return 0
