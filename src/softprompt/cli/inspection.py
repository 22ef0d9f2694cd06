"""``softprompt inspect``: what a prompt file says about itself."""

from __future__ import annotations

import argparse

from softprompt.cli.common import emit
from softprompt.promptfile import load_prompt


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show a prompt file's metadata (exit 2 on a bad file)")
    p.add_argument("file", help="prompt file (.safetensors)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    pf = load_prompt(args.file)
    meta = dict(pf.meta.__dict__)
    meta["prompt_norm_mean"] = round(float(pf.prompt.norm(dim=-1).mean()), 4) if pf.prompt.numel() else 0.0
    emit({"file": args.file, **meta}, args.json)
    return 0
