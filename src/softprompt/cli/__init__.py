"""The ``softprompt`` command: a thin shell over the library. One module per command group; each has
``register(subparsers)`` and sets ``func`` on its parser. Exit codes: 0 ok, 2 usage or bad input, 1 other failure.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import traceback
from collections.abc import Sequence

from softprompt.cli import (
    adaptation,
    common,
    convert,
    ensembles,
    evaluation,
    experiments,
    inspection,
    models,
    resultspage,
    serving,
    tasklist,
    training,
)

# Command groups, in --help order. Add a module here to add commands.
COMMANDS = [training, evaluation, ensembles, experiments, resultspage, adaptation, inspection, models, tasklist,
            serving, convert]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softprompt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"softprompt {common.version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except common.USER_ERRORS as err:
        print(f"softprompt {args.command}: error: {common.describe(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"softprompt {args.command}: interrupted", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`softprompt models | head -1`): stop quietly, as Unix tools do. Point stdout at
        # /dev/null so that the interpreter's own flush at exit does not raise the same error again.
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as err:  # a bug or an environment failure: say it plainly, full trace on request
        if os.environ.get("SOFTPROMPT_DEBUG"):
            traceback.print_exc()
        print(f"softprompt {args.command}: failed: {type(err).__name__}: {err} "
              "(set SOFTPROMPT_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
