"""What a task is: examples cast text-to-text, a way to predict (rank classification or generation), metrics.

A task turns raw records into :class:`Example` s: the model input text, the target text (the verbalized gold label
or the gold answer), and for classification the candidate target texts (``choices``) that rank classification scores.
Tasks are registered explicitly in :mod:`softprompt.tasks` (no import-time magic).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal


class TaskDataError(ValueError):
    """Bad or missing task data; the message names the file, line and field."""


@dataclass(frozen=True)
class Example:
    """One text-to-text example.

    ``choices`` are the candidate targets of rank classification (None: a generation task); ``target`` is one of
    them for classification. ``answers`` are every acceptable answer of a generation task (metrics take the max).
    ``meta`` carries what grouped metrics need (MultiRC's question id, say) and the task's ``group_key``.
    """

    input: str
    target: str
    choices: tuple[str, ...] | None = None
    answers: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)


class Task(ABC):
    """A text-to-text task. Subclasses set the class attributes and implement :meth:`read`."""

    name: ClassVar[str]
    kind: ClassVar[Literal["classification", "generation"]] = "classification"
    splits: ClassVar[Mapping[str, str]] = {}  # split name → file, relative to the data root
    verbalizer: ClassVar[Mapping[str, str]] = {}  # raw label → target text
    instruction: ClassVar[str] = ""  # hand-written prompt for prompt design
    primary_metric: ClassVar[str] = "accuracy"
    metric_names: ClassVar[tuple[str, ...]] = ("accuracy",)  # the keys :meth:`metrics` returns
    text_template: ClassVar[str] = "{text}"  # how `softprompt predict` formats one raw text into an input
    group_key: ClassVar[str | None] = None
    """``Example.meta`` key of the unit that is never split (a MultiRC question, a ReCoRD or SQuAD passage): limits
    and the selection slice (:mod:`softprompt.tasks.selection`) take or leave a group whole. None: every example
    stands alone."""

    def examples(self, split: str, data_dir: Path | None = None, limit: int | None = None) -> list[Example]:
        """Read a split from the data root (``--data-dir``, ``SOFTPROMPT_DATA_DIR``, or ``../shared/data``);
        ``limit``: the first ``limit`` examples, cut at a group boundary (see :func:`first_examples`)."""
        path = self.split_path(split, data_dir)
        if not path.is_file():
            raise TaskDataError(f"task {self.name!r}: data file not found: {path}")
        rows = self.read(path)
        if not rows:
            raise TaskDataError(f"task {self.name!r}: split {split!r} in {path} is empty")
        return first_examples(rows, limit, self.group_key)

    def split_path(self, split: str, data_dir: Path | None) -> Path:
        if split not in self.splits:
            raise TaskDataError(f"task {self.name!r} has no split {split!r}; it has {', '.join(self.splits)}")
        return resolve_data_dir(data_dir) / self.splits[split]

    @abstractmethod
    def read(self, path: Path) -> list[Example]:
        """Parse one data file."""

    def label_word(self, label: Any, where: str) -> str:
        """The verbalizer's target text for a raw label; an unknown label names its place in the data."""
        key = str(label)
        if key not in self.verbalizer:
            raise TaskDataError(f"{where}: label {label!r} is not in the verbalizer {dict(self.verbalizer)}")
        return self.verbalizer[key]

    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        """Metrics of predicted target texts; accuracy unless a task says otherwise."""
        from softprompt.tasks.metrics import accuracy

        return {"accuracy": accuracy(predictions, [e.target for e in examples])}


def resolve_data_dir(data_dir: Path | str | None = None) -> Path:
    """The data root: the argument, else ``SOFTPROMPT_DATA_DIR``, else ``../shared/data`` from the current folder."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get("SOFTPROMPT_DATA_DIR")
    return Path(env) if env else Path("..") / "shared" / "data"


def first_examples(rows: Sequence[Example], limit: int | None, group_key: str | None = None) -> list[Example]:
    """The first ``limit`` examples (None: all), extended to the end of the group the last of them is in.

    Rounding up rather than down keeps every limit non-empty and never leaves part of a group behind: a MultiRC
    question's answer options are scored together (exact match needs all of them), so half a question would be
    scored as a different question. Groups are contiguous in every task's files.
    """
    if limit is None or limit >= len(rows):
        return list(rows)
    if limit < 0:
        raise ValueError(f"a limit must be >= 0, got {limit}")
    end = limit
    if group_key is not None and end > 0:
        last = rows[end - 1].meta[group_key]
        while end < len(rows) and rows[end].meta[group_key] == last:
            end += 1
    return list(rows[:end])


def hold_out_tail(rows: Sequence[Example], split: str, key: str, size: int, where: str) -> list[Example]:
    """Deterministic train/validation parts of one file that has no official validation split.

    Validation is the examples whose ``meta[key]`` (a line number, a context number) is among the last ``size``
    distinct values in file order; train is the rest. Cutting by ``key`` keeps the questions of one passage on one
    side, and cutting the tail needs no seed, so every run and every machine gets the same parts.
    """
    if split not in ("train", "validation"):
        raise TaskDataError(f"{where}: no split {split!r}; this file is cut into 'train' and 'validation'")
    keys = list(dict.fromkeys(e.meta[key] for e in rows))
    if len(keys) <= size:
        raise TaskDataError(f"{where}: {len(keys)} distinct {key!r} values, need more than {size} to hold out "
                            f"{size} for validation")
    held = set(keys[-size:])
    return [e for e in rows if (e.meta[key] in held) == (split == "validation")]
