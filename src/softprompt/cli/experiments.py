"""``softprompt experiment CONFIG.yaml``: run a grid of cells (resumable), or write its report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from softprompt.cli.common import emit
from softprompt.experiments.grid import cells, load_config, missing_models, preflight
from softprompt.experiments.runner import run_experiment


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="run an experiment grid from a YAML config (skips finished cells), or "
                                          "--report its results as markdown + PNG plots")
    p.add_argument("config", type=Path, help="experiment config (.yaml), see configs/")
    p.add_argument("--report", action="store_true", help="only write the report from the finished cells")
    p.add_argument("--report-dir", type=Path, default=None, help="report folder (default: the config's)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and list the cells (models need not be installed); train nothing")
    p.add_argument("--progress", action="store_true", help="per-step progress bars")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from softprompt.experiments.report import write_report

    config = load_config(args.config)
    if args.dry_run:
        preflight(config, check_models=False)
        for c in cells(config):
            print(c.id)
        missing = missing_models(config)
        if missing:  # a note on stderr: stdout stays one cell id a line
            print(f"softprompt experiment: not installed yet: {' '.join(missing)} (a run installs them first; or: "
                  f"softprompt models install {' '.join(missing)})", file=sys.stderr)
        return 0
    if not args.report:
        summary = run_experiment(config, progress=args.progress)
        result = {"ran": len(summary.ran), "skipped": len(summary.skipped), "reused": len(summary.reused),
                  "seconds": round(summary.seconds, 2)}
    else:
        result = {}
    result["report"] = str(write_report(config, args.report_dir))
    emit({"experiment": config.name, "cells": len(cells(config)), **result}, args.json)
    return 0
