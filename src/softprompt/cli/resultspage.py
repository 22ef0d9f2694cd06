"""``softprompt report``: regenerate docs/results.md from the repository's stored records alone
(:mod:`softprompt.experiments.resultspage`); ``--floors`` first measures the majority floors from the data sets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="regenerate docs/results.md from the committed records (results/, "
                                      "docs/data/, bench/results/); measures nothing")
    p.add_argument("--root", type=Path, default=Path("."), help="the repository checkout to read (default: .)")
    p.add_argument("--out", type=Path, default=None, help="page to write (default: ROOT/docs/results.md)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when the page differs from what the records give")
    p.add_argument("--floors", action="store_true",
                   help="first measure the majority floor of every task the committed grids evaluate from the data "
                        "sets and write ROOT/results/majority.json (the one step that reads data)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="--floors: data root (default: $SOFTPROMPT_DATA_DIR, else ../shared/data)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from softprompt.experiments.records import measure_floors
    from softprompt.experiments.resultspage import PAGE, render, write_page

    if args.floors:
        print(f"wrote {measure_floors(args.root, args.data_dir)}")
    out = args.out if args.out is not None else args.root / PAGE
    if args.check:
        if out.is_file() and out.read_text() == render(args.root):
            print(f"{out} is what the records give")
            return 0
        print(f"softprompt report: {out} differs from what the records give; run `softprompt report`",
              file=sys.stderr)
        return 1
    print(f"wrote {write_page(args.root, out)}")
    return 0
