"""GLUE-style sentence and sentence-pair tasks: SST-2, RTE, MRPC and QQP."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from softprompt.tasks.base import Example, Task, TaskDataError, first_examples, hold_out_tail
from softprompt.tasks.metrics import accuracy, binary_f1
from softprompt.tasks.records import field, read_records


class SST2(Task):
    """Stanford Sentiment Treebank (GLUE SST-2): review sentence → " positive" / " negative"."""

    name = "sst2"
    splits: ClassVar = {"train": "glue/SST-2/train.tsv", "validation": "glue/SST-2/dev.tsv"}
    verbalizer: ClassVar = {"0": " negative", "1": " positive"}
    instruction = "Is the sentiment of this movie review positive or negative?\n"
    text_template = "Sentence: {text}\nSentiment:"

    def read(self, path: Path) -> list[Example]:
        choices = tuple(self.verbalizer.values())
        out = []
        for lineno, r in read_records(path):
            where = f"{path}:{lineno}"
            text = str(field(r, "sentence", path, lineno)).strip()
            out.append(Example(self.text_template.format(text=text), self.label_word(field(r, "label", path, lineno),
                                                                                where), choices))
        return out


def entailment_examples(task: Task, path: Path) -> list[Example]:
    """Premise/hypothesis records (RTE, CB) in one input format, labels through the task's verbalizer."""
    choices = tuple(task.verbalizer.values())
    out = []
    for lineno, r in read_records(path):
        premise = field(r, "premise", path, lineno)
        hypothesis = field(r, "hypothesis", path, lineno)
        target = task.label_word(field(r, "label", path, lineno), f"{path}:{lineno}")
        out.append(Example(f"Premise: {premise}\nHypothesis: {hypothesis}\nEntailment:", target, choices))
    return out


class RTE(Task):
    """Recognizing Textual Entailment (SuperGLUE release): premise + hypothesis → " yes" / " no"."""

    name = "rte"
    splits: ClassVar = {"train": "superglue/RTE/train.jsonl", "validation": "superglue/RTE/val.jsonl"}
    verbalizer: ClassVar = {"entailment": " yes", "not_entailment": " no"}
    instruction = "Does the premise entail the hypothesis? Answer yes or no.\n"

    def read(self, path: Path) -> list[Example]:
        return entailment_examples(self, path)


def _accuracy_and_f1(task: Task, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    """GLUE's paraphrase metrics: accuracy and F1 of the positive class (" yes", a paraphrase / duplicate)."""
    golds = [e.target for e in examples]
    return {"accuracy": accuracy(predictions, golds), "f1": binary_f1(predictions, golds, task.verbalizer["1"])}


class MRPC(Task):
    """Microsoft Research Paraphrase Corpus: two sentences → " yes" (paraphrases) / " no"."""

    name = "mrpc"
    splits: ClassVar = {"train": "glue/MRPC/train.tsv", "validation": "glue/MRPC/dev.tsv"}
    verbalizer: ClassVar = {"1": " yes", "0": " no"}
    instruction = "Do the two sentences mean the same thing? Answer yes or no.\n"
    metric_names = ("accuracy", "f1")

    def read(self, path: Path) -> list[Example]:
        choices = tuple(self.verbalizer.values())
        out = []
        for lineno, r in read_records(path):
            s1, s2 = field(r, "#1 String", path, lineno), field(r, "#2 String", path, lineno)
            target = self.label_word(field(r, "Quality", path, lineno), f"{path}:{lineno}")
            out.append(Example(f"Sentence 1: {s1}\nSentence 2: {s2}\nQuestion: Do both sentences mean the same "
                               "thing?\nAnswer:", target, choices))
        return out

    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        return _accuracy_and_f1(self, predictions, examples)


class QQP(Task):
    """Quora Question Pairs: two questions → " yes" (duplicates) / " no".

    Only a 23,497-line sample of GLUE QQP train exists locally (no header; columns id, qid1, qid2, question1,
    question2, is_duplicate), so both splits are cut from it: validation is its last 2,000 lines, train the rest.
    Policy for malformed rows: a line without exactly six tab-separated fields is skipped (the file has one, line 1,
    whose label is joined to question2 by a space; guessing where the label starts would be a repair of unknown
    safety), and its line number is kept in ``skipped_lines``. More than 1% malformed lines means a wrong file and
    is a :class:`TaskDataError`.
    """

    name = "qqp"
    splits: ClassVar = {"train": "glue/QQP/train_subset.tsv", "validation": "glue/QQP/train_subset.tsv"}
    verbalizer: ClassVar = {"1": " yes", "0": " no"}
    instruction = "Do the two questions ask the same thing? Answer yes or no.\n"
    metric_names = ("accuracy", "f1")
    columns: ClassVar = ("id", "qid1", "qid2", "question1", "question2", "is_duplicate")
    validation_lines: ClassVar = 2_000
    max_malformed_fraction: ClassVar = 0.01

    def __init__(self) -> None:
        self.skipped_lines: list[int] = []

    def examples(self, split: str, data_dir: Path | None = None, limit: int | None = None) -> list[Example]:
        path = self.split_path(split, data_dir)
        rows = hold_out_tail(super().examples(split, data_dir), split, "line", self.validation_lines, str(path))
        return first_examples(rows, limit, self.group_key)

    def read(self, path: Path) -> list[Example]:
        choices = tuple(self.verbalizer.values())
        out, skipped, lines = [], [], 0
        with open(path, encoding="utf-8") as f:
            # QUOTE_NONE: Quora questions hold unbalanced quotes, and GLUE's tsv files are not quoted.
            for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
                lines += 1
                if len(row) != len(self.columns):
                    skipped.append(lineno)
                    continue
                r = dict(zip(self.columns, row, strict=True))
                target = self.label_word(r["is_duplicate"], f"{path}:{lineno}: field 'is_duplicate'")
                out.append(Example(f"Question 1: {r['question1']}\nQuestion 2: {r['question2']}\nQuestion: Do both "
                                   "questions ask the same thing?\nAnswer:", target, choices, meta={"line": lineno}))
        if len(skipped) > self.max_malformed_fraction * max(lines, 1):
            raise TaskDataError(f"{path}: {len(skipped)} of {lines} lines do not have the {len(self.columns)} fields "
                                f"{list(self.columns)} (first: line {skipped[0]})")
        self.skipped_lines = skipped
        return out

    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        return _accuracy_and_f1(self, predictions, examples)
