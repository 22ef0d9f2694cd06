"""Arguments and loaders shared by the commands."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from softprompt.backbone import Backbone, load_backbone
from softprompt.models import DEFAULT_MODEL, ModelNotInstalledError
from softprompt.precision import DTYPES, resolve_precision
from softprompt.promptfile import PromptFileError
from softprompt.tasks import Task, TaskDataError, get_task


class UsageError(ValueError):
    """Bad command-line input (exit 2)."""


USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, PromptFileError, TaskDataError,
                                                 ModelNotInstalledError, FileNotFoundError, ValueError, KeyError)


def describe(err: BaseException) -> str:
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def version() -> str:
    from softprompt import __version__

    return __version__


def add_model(parser: argparse.ArgumentParser, default: str | None = DEFAULT_MODEL) -> None:
    parser.add_argument("--model", default=default, required=default is None,
                        help=f"built-in name (see `softprompt models`), .gguf file, local folder or hub id "
                             f"(default {default})")
    parser.add_argument("--device", default=None, help="torch device (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def add_allow_other_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-other-model", action="store_true",
                        help="use a prompt even when the model's weights differ from the ones it was trained on (a "
                             "one-line warning instead of an error; another hidden size is still refused)")


def add_task(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--task", required=required,
                        help="built-in task (see `softprompt tasks`), a .yaml task spec, or a data file")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data root (default: $SOFTPROMPT_DATA_DIR, else ../shared/data)")
    parser.add_argument("--template", help="data-file tasks: input template with {field} placeholders")
    parser.add_argument("--label-field", help="data-file tasks: field with the label or target text")
    parser.add_argument("--verbalizer", help='data-file tasks: JSON label → text, e.g. \'{"0": " no", "1": " yes"}\'')
    parser.add_argument("--validation-file", help="data-file tasks: validation data (default: the train file)")


def task_from_args(args: argparse.Namespace) -> Task:
    verbalizer = None
    if getattr(args, "verbalizer", None):
        try:
            verbalizer = json.loads(args.verbalizer)
        except json.JSONDecodeError as err:
            raise UsageError(f"--verbalizer is not valid JSON: {err.msg}") from None
        if not isinstance(verbalizer, dict) or not verbalizer:
            raise UsageError("--verbalizer must be a non-empty JSON object of label → text")
        verbalizer = {str(k): str(v) for k, v in verbalizer.items()}
    return get_task(args.task, template=getattr(args, "template", None),
                    label_field=getattr(args, "label_field", None), verbalizer=verbalizer,
                    validation=getattr(args, "validation_file", None))


def backbone_from_args(args: argparse.Namespace) -> Backbone:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    name = args.model
    if not Path(name).exists() and "/" not in name and name.endswith(".gguf"):
        raise UsageError(f"model file not found: {name}")
    # `softprompt train` adds --precision (bf16/fp16 weights); other commands load float32 unless Accelerate says
    # otherwise. See softprompt.precision.
    precision = resolve_precision(getattr(args, "precision", None))
    return load_backbone(name, device=args.device, dtype=DTYPES[precision])


def emit(result: dict[str, Any], as_json: bool) -> None:
    """Print a result: one compact JSON line (``--json``: always the last stdout line) or indented JSON."""
    if as_json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(json.dumps(result, indent=2, sort_keys=True))


def offline_default() -> None:
    """Tests and CI never reach a hub; an online user leaves HF_HUB_OFFLINE unset."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
