"""Extractive question answering from the MRQA 2019 shared task, cast as generation: context + question → the
answer span as text, scored by SQuAD's official EM and F1 (max over the gold answers).

MRQA files are jsonl (optionally gzipped) whose first line is a header object (``{"header": {...}}``) and whose
other lines each hold one ``context`` and its ``qas`` (``question``, ``answers``, ``qid``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from softprompt.tasks.base import Example, Task, TaskDataError, first_examples, hold_out_tail
from softprompt.tasks.metrics import squad_scores
from softprompt.tasks.records import field, read_records


def first_line(text: str) -> str:
    """The answer part of a generated continuation: a decoder-only model that has answered goes on to write the
    next line (a new "Question:", say), which is not part of the answer."""
    return text.strip().split("\n", 1)[0]


class MRQATask(Task):
    """An MRQA dataset: one example per question, the target the first gold answer, ``answers`` all of them."""

    kind = "generation"
    primary_metric = "f1"
    metric_names = ("exact_match", "f1")
    group_key = "context"  # the questions of one context are taken or left together
    instruction = "Answer the question with a short span copied from the context.\n"

    def read(self, path: Path) -> list[Example]:
        out = []
        for number, (lineno, r) in enumerate(read_records(path)):
            if number == 0:
                if "header" not in r:
                    raise TaskDataError(f"{path}:{lineno}: an MRQA file starts with a header line {{\"header\": ...}}")
                continue
            context = field(r, "context", path, lineno)
            for qa in field(r, "qas", path, lineno):
                question = field(qa, "question", path, lineno)
                answers = tuple(dict.fromkeys(str(a) for a in field(qa, "answers", path, lineno)))
                if not answers:
                    raise TaskDataError(f"{path}:{lineno}: field 'answers' of question {qa.get('qid')!r} is empty")
                out.append(Example(f"Context: {context}\nQuestion: {question}\nAnswer:", f" {answers[0]}", None,
                                   answers, meta={"context": number, "qid": qa.get("qid")}))
        return out

    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        return squad_scores([first_line(p) for p in predictions], [e.answers for e in examples])


class SQuAD(MRQATask):
    """SQuAD v1.1 as MRQA's in-domain dev file (2,067 contexts, 10,507 questions).

    No SQuAD train file exists locally, so both splits are cut from this one: validation is the questions of its
    last 400 contexts (1,883 questions), train those of the other 1,667 contexts (8,624). Cut at a context, so no
    context appears on both sides (one Wikipedia article may: the file has no titles to cut at).
    """

    name = "squad"
    splits: ClassVar = {"train": "mrqa/in_domain_dev/SQuAD.jsonl.gz", "validation": "mrqa/in_domain_dev/SQuAD.jsonl.gz"}
    validation_contexts: ClassVar = 400

    def examples(self, split: str, data_dir: Path | None = None, limit: int | None = None) -> list[Example]:
        path = self.split_path(split, data_dir)
        rows = hold_out_tail(super().examples(split, data_dir), split, "context", self.validation_contexts, str(path))
        return first_examples(rows, limit, self.group_key)


class RelationExtraction(MRQATask):
    """MRQA's out-of-domain RelationExtraction dev set (2,948 questions from zero-shot relation extraction, Levy et
    al. 2017): only a validation split, for evaluating a prompt trained on SQuAD out of domain, as Lester et al.
    2021 do."""

    name = "relation_extraction"
    splits: ClassVar = {"validation": "mrqa/out_of_domain_dev/RelationExtraction.jsonl"}
