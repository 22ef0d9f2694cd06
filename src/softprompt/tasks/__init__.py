"""The task registry: every built-in task by name, plus user tasks from files."""

from __future__ import annotations

from pathlib import Path

from softprompt.tasks.base import Example, Task, TaskDataError, resolve_data_dir
from softprompt.tasks.generic import FileTask, FileTaskSpec
from softprompt.tasks.glue import MRPC, QQP, RTE, SST2
from softprompt.tasks.mrqa import RelationExtraction, SQuAD
from softprompt.tasks.selection import SelectionSplit, selection_split
from softprompt.tasks.superglue import CB, COPA, WSC, BoolQ, MultiRC, ReCoRD, WiC

# Every built-in task, in `softprompt tasks` order: SuperGLUE, GLUE, MRQA.
TASKS: dict[str, type[Task]] = {cls.name: cls for cls in [BoolQ, CB, COPA, MultiRC, ReCoRD, RTE, WiC, WSC,
                                                          MRPC, QQP, SST2, SQuAD, RelationExtraction]}


def builtin_task(name: str) -> Task | None:
    """The built-in task ``name`` (a prompt file's ``task`` field), else None. Never a path: a prompt file's
    metadata must not make the server or ``softprompt predict`` read another file."""
    return TASKS[name]() if name in TASKS else None


def get_task(name: str, **file_options: object) -> Task:
    """A built-in task by name, a YAML task spec, or a data file plus ``file_options`` (template, label_field,
    verbalizer, validation) — see :mod:`softprompt.tasks.generic`."""
    if name in TASKS:
        return TASKS[name]()
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return FileTask(FileTaskSpec.from_yaml(path))
    if path.suffix in (".jsonl", ".json", ".csv", ".tsv") and path.is_file():
        options = {k: v for k, v in file_options.items() if v is not None}
        if "template" not in options:
            raise TaskDataError(f"task file {path} needs --template (e.g. 'Review: {{text}}\\nSentiment:')")
        return FileTask(FileTaskSpec(train=str(path), name=path.stem, **options))  # type: ignore[arg-type]
    raise TaskDataError(f"unknown task {name!r}; built-in tasks: {', '.join(sorted(TASKS))} "
                        "(or give a .jsonl/.csv/.tsv data file or a .yaml task spec)")


__all__ = ["TASKS", "Example", "FileTask", "FileTaskSpec", "SelectionSplit", "Task", "TaskDataError", "builtin_task",
           "get_task", "resolve_data_dir", "selection_split"]
