"""A task defined by the user: a data file, an input template, a label field and a verbalizer.

On the command line: ``--task data.jsonl --template "Review: {text}\\nSentiment:" --label-field label
--verbalizer '{"0": " negative", "1": " positive"}' [--validation-file dev.jsonl]``, or all of it in a YAML file
(``--task mytask.yaml``) with the keys of :class:`FileTaskSpec`. Without a verbalizer the label field holds free
target text and the task is evaluated by generation (exact match).

The validation file is the reported split; without one the task has no validation split (reading it is an error
that names ``--validation-file``: a train file is no evidence of generalisation). Training selects its checkpoint
on a slice held out from the train file either way (:mod:`softprompt.tasks.selection`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from softprompt.tasks.base import Example, Task, TaskDataError
from softprompt.tasks.metrics import accuracy
from softprompt.tasks.records import field, read_records


@dataclass(frozen=True)
class FileTaskSpec:
    """A user task. Paths are relative to the current folder (or to the YAML file that names them)."""

    train: str
    template: str
    label_field: str = "label"
    verbalizer: dict[str, str] | None = None
    validation: str | None = None
    name: str = "file"
    instruction: str = ""

    @classmethod
    def from_yaml(cls, path: Path) -> FileTaskSpec:
        raw = yaml.safe_load(path.read_text())
        if not isinstance(raw, dict):
            raise TaskDataError(f"{path}: a task spec is a mapping with keys {[f.name for f in fields(cls)]}")
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise TaskDataError(f"{path}: unknown keys {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
        for key in ("train", "validation"):
            if raw.get(key):
                raw[key] = str(path.parent / raw[key])
        try:
            return cls(**raw)
        except TypeError as err:
            raise TaskDataError(f"{path}: {err}") from None


class FileTask(Task):
    """A task read from user files (see the module docstring)."""

    def __init__(self, spec: FileTaskSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.kind = "classification" if spec.verbalizer else "generation"
        self.verbalizer = dict(spec.verbalizer or {})
        self.instruction = spec.instruction
        self.splits = {"train": spec.train, **({"validation": spec.validation} if spec.validation else {})}
        self.primary_metric = "accuracy" if spec.verbalizer else "exact_match"
        self.metric_names = (self.primary_metric,)

    def split_path(self, split: str, data_dir: Path | None) -> Path:
        if split == "validation" and split not in self.splits:
            raise TaskDataError(f"task {self.name!r} has no validation data: pass --validation-file FILE (or "
                                "`validation:` in its YAML spec) to report on held-out examples; training selects "
                                "on a slice of the train file without one (`softprompt eval --split selection`)")
        if split not in self.splits:
            raise TaskDataError(f"task {self.name!r} has no split {split!r}; it has {', '.join(self.splits)}")
        return Path(self.splits[split])

    def read(self, path: Path) -> list[Example]:
        choices = tuple(self.verbalizer.values()) if self.verbalizer else None
        out = []
        for lineno, record in read_records(path):
            try:
                text = self.spec.template.format(**record)
            except KeyError as err:
                raise TaskDataError(f"{path}:{lineno}: template field {err} is missing from the record") from None
            raw = field(record, self.spec.label_field, path, lineno)
            if choices:
                out.append(Example(text, self.label_word(raw, f"{path}:{lineno}"), choices))
            else:
                out.append(Example(text, str(raw), None, (str(raw),)))
        return out

    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        if self.verbalizer:
            return super().metrics(predictions, examples)
        return {"exact_match": accuracy([p.strip() for p in predictions], [e.target.strip() for e in examples])}
