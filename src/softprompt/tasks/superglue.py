"""SuperGLUE tasks (RTE lives in :mod:`softprompt.tasks.glue`): BoolQ, CB, COPA, MultiRC, ReCoRD, WiC, WSC.

Every input ends with an ``Answer:`` cue and every target starts with a space, so one format serves encoder-decoder
and decoder-only models alike. Files are the SuperGLUE v2 release jsonl (one JSON object per line).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from softprompt.tasks.base import Example, Task, TaskDataError
from softprompt.tasks.glue import entailment_examples
from softprompt.tasks.metrics import accuracy, macro_f1, multirc_scores, record_scores
from softprompt.tasks.records import field, read_records

# Yes/no questions whose raw labels are JSON booleans (str(True) == "True").
_BOOL_YES_NO = {"True": " yes", "False": " no"}


class BoolQ(Task):
    """Boolean questions about a Wikipedia passage: passage + question → " yes" / " no"."""

    name = "boolq"
    splits: ClassVar = {"train": "superglue/BoolQ/train.jsonl", "validation": "superglue/BoolQ/val.jsonl"}
    verbalizer: ClassVar = _BOOL_YES_NO
    instruction = "Read the passage and answer the question with yes or no.\n"

    def read(self, path: Path) -> list[Example]:
        choices = tuple(self.verbalizer.values())
        out = []
        for lineno, r in read_records(path):
            passage = field(r, "passage", path, lineno)
            question = str(field(r, "question", path, lineno)).rstrip("?")
            target = self.label_word(field(r, "label", path, lineno), f"{path}:{lineno}")
            out.append(Example(f"Passage: {passage}\nQuestion: {question}?\nAnswer:", target, choices))
        return out


class CB(Task):
    """CommitmentBank: premise + hypothesis → " yes" (entailment) / " no" (contradiction) / " maybe" (neutral).

    Scored by accuracy and by macro-F1 over the three classes (the classes are unbalanced: 5 of 56 validation
    examples are neutral, so a model that never says " maybe" loses a third of the macro-F1).
    """

    name = "cb"
    splits: ClassVar = {"train": "superglue/CB/train.jsonl", "validation": "superglue/CB/val.jsonl"}
    verbalizer: ClassVar = {"entailment": " yes", "contradiction": " no", "neutral": " maybe"}
    instruction = "Does the premise entail the hypothesis? Answer yes, no, or maybe.\n"
    metric_names = ("accuracy", "macro_f1")

    def read(self, path: Path) -> list[Example]:
        return entailment_examples(self, path)

    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        golds = [e.target for e in examples]
        return {"accuracy": accuracy(predictions, golds),
                "macro_f1": macro_f1(predictions, golds, list(self.verbalizer.values()))}


class COPA(Task):
    """Choice of Plausible Alternatives: premise + "cause"/"effect" → the more plausible of two alternatives.

    The two choices are the example's own alternatives (``Example.choices`` differs per example), so there is no
    verbalizer; the raw label is the index (0 or 1) of the right alternative.
    """

    name = "copa"
    splits: ClassVar = {"train": "superglue/COPA/train.jsonl", "validation": "superglue/COPA/val.jsonl"}
    instruction = "Pick the more plausible cause or effect of the premise.\n"
    _QUESTIONS: ClassVar = {"cause": "What was the cause?", "effect": "What happened as a result?"}

    def read(self, path: Path) -> list[Example]:
        out = []
        for lineno, r in read_records(path):
            where = f"{path}:{lineno}"
            kind = field(r, "question", path, lineno)
            if kind not in self._QUESTIONS:
                raise TaskDataError(f"{where}: field 'question' is {kind!r}, expected 'cause' or 'effect'")
            choices = (f" {field(r, 'choice1', path, lineno)}", f" {field(r, 'choice2', path, lineno)}")
            label = field(r, "label", path, lineno)
            if label not in (0, 1) or isinstance(label, bool):
                raise TaskDataError(f"{where}: field 'label' is {label!r}, expected 0 (choice1) or 1 (choice2)")
            premise = field(r, "premise", path, lineno)
            out.append(Example(f"Premise: {premise}\nQuestion: {self._QUESTIONS[kind]}\nAnswer:", choices[label],
                               choices))
        return out


class MultiRC(Task):
    """Multi-sentence reading comprehension: every answer option of every question is one binary example,
    paragraph + question + option → " yes" (a correct answer) / " no".

    ``meta["group"]`` names the option's question ("<paragraph idx>/<question idx>"): exact match counts a question
    right only when all its options are; F1a pools every option (the official MultiRC metrics). It is the task's
    ``group_key``: a limit or the selection slice never splits a question's options.
    """

    name = "multirc"
    splits: ClassVar = {"train": "superglue/MultiRC/train.jsonl", "validation": "superglue/MultiRC/val.jsonl"}
    verbalizer: ClassVar = {"1": " yes", "0": " no"}
    instruction = "Read the paragraph and say whether the candidate answer to the question is correct (yes or no).\n"
    primary_metric = "f1a"
    metric_names = ("exact_match", "f1a")
    group_key = "group"

    def read(self, path: Path) -> list[Example]:
        choices = tuple(self.verbalizer.values())
        out = []
        for lineno, r in read_records(path):
            where = f"{path}:{lineno}"
            passage = field(r, "passage", path, lineno)
            text = field(passage, "text", path, lineno)
            for question in field(passage, "questions", path, lineno):
                q_text = field(question, "question", path, lineno)
                group = f"{field(r, 'idx', path, lineno)}/{field(question, 'idx', path, lineno)}"
                for answer in field(question, "answers", path, lineno):
                    option = field(answer, "text", path, lineno)
                    target = self.label_word(field(answer, "label", path, lineno), where)
                    out.append(Example(f"Paragraph: {text}\nQuestion: {q_text}\nCandidate answer: {option}\n"
                                       "Is the candidate answer correct?\nAnswer:", target, choices,
                                       meta={"group": group}))
        return out

    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        return multirc_scores(predictions, [e.target for e in examples], [e.meta["group"] for e in examples],
                              positive=self.verbalizer["1"])


class ReCoRD(Task):
    """Reading comprehension with commonsense reasoning: a news passage + a cloze query with ``@placeholder`` →
    the passage entity that fills it, chosen by rank classification over the passage's entities.

    ``choices`` are the example's distinct entity strings (spans of ``passage.entities``, ``end`` inclusive);
    ``answers`` are every gold string and the target is the first. Metrics are the official max-over-golds EM and
    F1. Reads the full ReCoRD format (several queries per passage); only FewGLUE's 32 + 32 passages exist locally,
    both drawn from ReCoRD train (see docs/tasks.md).
    """

    name = "record"
    splits: ClassVar = {"train": "superglue/ReCoRD/fewglue_train32.jsonl",
                        "validation": "superglue/ReCoRD/fewglue_dev32.jsonl"}
    instruction = "Which entity from the passage should replace @placeholder in the query?\n"
    primary_metric = "f1"
    metric_names = ("exact_match", "f1")
    group_key = "passage"  # the line number of the passage: its queries are taken or left together

    def read(self, path: Path) -> list[Example]:
        out = []
        for lineno, r in read_records(path):
            where = f"{path}:{lineno}"
            passage = field(r, "passage", path, lineno)
            text = str(field(passage, "text", path, lineno))
            spans = field(passage, "entities", path, lineno)
            entities = dict.fromkeys(text[field(s, "start", path, lineno):field(s, "end", path, lineno) + 1]
                                     for s in spans)
            if not entities:
                raise TaskDataError(f"{where}: field 'passage.entities' is empty; ReCoRD needs candidate entities")
            choices = tuple(f" {e}" for e in entities)
            # "@highlight" lines are the article's bullet-point summary; show them as such.
            shown = text.replace("\n@highlight\n", "\n- ")
            for qa in field(r, "qas", path, lineno):
                query = field(qa, "query", path, lineno)
                answers = tuple(dict.fromkeys(str(field(a, "text", path, lineno))
                                              for a in field(qa, "answers", path, lineno)))
                if not answers:
                    raise TaskDataError(f"{where}: field 'answers' is empty (unlabelled test data?)")
                if answers[0] not in entities:
                    raise TaskDataError(f"{where}: answer {answers[0]!r} is not one of the passage entities")
                out.append(Example(f"Passage: {shown}\nQuery: {query}\nAnswer:", f" {answers[0]}", choices, answers,
                                   meta={"idx": qa.get("idx"), "passage": lineno}))
        return out

    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        return record_scores(predictions, [e.answers for e in examples])


class WiC(Task):
    """Word-in-Context: two sentences sharing a word → " yes" (same sense) / " no"."""

    name = "wic"
    splits: ClassVar = {"train": "superglue/WiC/train.jsonl", "validation": "superglue/WiC/val.jsonl"}
    verbalizer: ClassVar = _BOOL_YES_NO
    instruction = "Is the word used with the same meaning in both sentences? Answer yes or no.\n"

    def read(self, path: Path) -> list[Example]:
        choices = tuple(self.verbalizer.values())
        out = []
        for lineno, r in read_records(path):
            word = field(r, "word", path, lineno)
            s1, s2 = field(r, "sentence1", path, lineno), field(r, "sentence2", path, lineno)
            target = self.label_word(field(r, "label", path, lineno), f"{path}:{lineno}")
            out.append(Example(f"Sentence 1: {s1}\nSentence 2: {s2}\nQuestion: Is the word '{word}' used with the "
                               "same meaning in both sentences?\nAnswer:", target, choices))
        return out


class WSC(Task):
    """Winograd Schema Challenge (SuperGLUE's coreference form): text + pronoun + candidate noun phrase →
    " yes" (the pronoun refers to it) / " no".

    The pronoun is marked ``*like this*`` in the text (as T5 does) so that a repeated pronoun is unambiguous; the
    mark is left out where ``span2_index`` does not point at ``span2_text`` (one training row); the question still
    names the pronoun.
    """

    name = "wsc"
    splits: ClassVar = {"train": "superglue/WSC/train.jsonl", "validation": "superglue/WSC/val.jsonl"}
    verbalizer: ClassVar = _BOOL_YES_NO
    instruction = "Does the marked pronoun refer to the given noun phrase? Answer yes or no.\n"

    def read(self, path: Path) -> list[Example]:
        choices = tuple(self.verbalizer.values())
        out = []
        for lineno, r in read_records(path):
            text = str(field(r, "text", path, lineno))
            target_spans = field(r, "target", path, lineno)
            noun = field(target_spans, "span1_text", path, lineno)
            pronoun = str(field(target_spans, "span2_text", path, lineno))
            index = field(target_spans, "span2_index", path, lineno)
            label = self.label_word(field(r, "label", path, lineno), f"{path}:{lineno}")
            out.append(Example(f"Text: {_mark(text, index, pronoun)}\nQuestion: Does the pronoun '{pronoun}' refer to "
                               f"'{noun}'?\nAnswer:", label, choices))
        return out


def _mark(text: str, index: int, span: str) -> str:
    """``text`` with the ``span`` that starts at word ``index`` (space-separated words) wrapped in asterisks."""
    words = text.split(" ")
    n = len(span.split(" "))
    found = " ".join(words[index:index + n])
    core = found.rstrip(string.punctuation)  # 'him,"' holds the pronoun 'him'
    if core.lower() != span.lower():
        return text
    return " ".join([*words[:index], f"*{core}*{found[len(core):]}", *words[index + n:]])
