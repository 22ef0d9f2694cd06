"""GLUE-style sentence tasks: SST-2 and RTE."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from softprompt.tasks.base import Example, Task
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


class RTE(Task):
    """Recognizing Textual Entailment (SuperGLUE release): premise + hypothesis → " yes" / " no"."""

    name = "rte"
    splits: ClassVar = {"train": "superglue/RTE/train.jsonl", "validation": "superglue/RTE/val.jsonl"}
    verbalizer: ClassVar = {"entailment": " yes", "not_entailment": " no"}
    instruction = "Does the premise entail the hypothesis? Answer yes or no.\n"

    def read(self, path: Path) -> list[Example]:
        choices = tuple(self.verbalizer.values())
        out = []
        for lineno, r in read_records(path):
            premise = field(r, "premise", path, lineno)
            hypothesis = field(r, "hypothesis", path, lineno)
            target = self.label_word(field(r, "label", path, lineno), f"{path}:{lineno}")
            out.append(Example(f"Premise: {premise}\nHypothesis: {hypothesis}\nEntailment:", target, choices))
        return out
