"""Arguments and loaders shared by the commands."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from softprompt.core.backbone import Backbone, load_backbone
from softprompt.core.builtin_models import DEFAULT_MODEL, ModelNotInstalledError
from softprompt.core.promptfile import PromptFileError
from softprompt.tasks import Example, Task, TaskDataError, get_task
from softprompt.tasks.base import first_examples
from softprompt.tasks.selection import SELECTION_SEED, recorded_selection, selected_on, selection_split
from softprompt.training.precision import DTYPES, resolve_precision


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
    parser.add_argument("--validation-file",
                        help="data-file tasks: the validation split, what `eval` reports (without it the task has "
                             "none); training selects on a slice held out from the train file either way")


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


def add_split(parser: argparse.ArgumentParser) -> None:
    """--split, --limit and --selection-size of the commands that score a split."""
    parser.add_argument("--split", default="validation",
                        help="validation (default: the reported split), train, or selection: the slice held out "
                             "from train that training chose the checkpoint on, scored under that name (a prompt "
                             "file's own slice, as its file records it)")
    parser.add_argument("--limit", type=int, default=None,
                        help="first N examples of the split (extended to the end of a group, e.g. a MultiRC question)")
    parser.add_argument("--selection-size", type=int, default=None,
                        help=f"--split selection without a prompt file: the slice's size (default as in `train`; "
                             f"seed {SELECTION_SEED})")


def selection_record(path: str | Path, selection: dict[str, Any], metrics: dict[str, Any],
                     train_config: dict[str, Any]) -> tuple[str, str | None, dict[str, Any]]:
    """(where, the split it was selected on, its selection record) for a prompt file or a model folder."""
    return str(path), selected_on(selection, metrics, train_config), selection


def model_folder_record(model: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    """The selection record of a model folder written by ``train --method model-tuning`` (none for other models)."""
    info_path = Path(model) / "model_tuning.json"
    if not info_path.is_file():
        return []
    info = json.loads(info_path.read_text())
    return [selection_record(model, info.get("selection") or {}, info.get("metrics") or {},
                             info.get("train_config") or {})]


def split_examples(task: Task, args: argparse.Namespace, records: list[tuple[str, str | None, dict[str, Any]]]
                   ) -> tuple[list[Example], dict[str, Any]]:
    """The examples ``--split`` names and, for ``--split selection``, the slice's record.

    Refuses (exit 2) to score a prompt or model on the split it was selected on: that score is not a held-out one.
    ``records``: (where, selected on, selection record) of each prompt file or model folder being scored.
    """
    for where, selected, info in records:
        if selected is not None and selected == args.split:
            legacy = "" if info else (" (its file predates held-out selection: the best step was picked on the first "
                                   "examples of the validation split; retrain it to report a validation score)")
            raise UsageError(f"{where} was selected on the {selected!r} split{legacy}; a score there is not a "
                             "held-out score. Report --split validation, or score the selection slice under its own "
                             "name with --split selection")
    if args.split != "selection":
        return task.examples(args.split, args.data_dir, limit=args.limit), {}
    if not records:
        cut = selection_split(task, args.data_dir, size=args.selection_size)
        return first_examples(cut.selection, args.limit, task.group_key), cut.info
    slices = {json.dumps({k: v for k, v in info.items() if k != "examples"}, sort_keys=True) for *_, info in records}
    where, _, info = records[0]
    if not info:
        raise UsageError(f"{where} records no selection slice (trained with --no-eval, or before slices were "
                         "recorded): there is no selection split to score")
    if len(slices) > 1:
        raise UsageError("the prompts were selected on different slices; score them one at a time")
    if args.selection_size is not None and args.selection_size != info.get("size"):
        raise UsageError(f"--selection-size {args.selection_size} differs from the slice {where} was selected on "
                         f"({info.get('size')} examples); leave it out")
    try:
        examples = recorded_selection(task, info, args.data_dir)
    except TaskDataError as err:
        raise UsageError(f"{where}: {err}") from None
    return first_examples(examples, args.limit, task.group_key), info


def backbone_from_args(args: argparse.Namespace) -> Backbone:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    name = args.model
    if not Path(name).exists() and "/" not in name and name.endswith(".gguf"):
        raise UsageError(f"model file not found: {name}")
    # `softprompt train` adds --precision (bf16/fp16 weights); other commands load float32 unless Accelerate says
    # otherwise. See softprompt.training.precision.
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
