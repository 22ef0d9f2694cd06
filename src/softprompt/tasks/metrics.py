"""Metric functions over predicted and gold target texts: the official metrics of GLUE, SuperGLUE and MRQA.

Every score is a fraction in [0, 1] (the official scripts print 100×). Functions take the target texts the tasks
produce (``" yes"``, ``" Denver Broncos"``), so a task's metrics are a few calls on ``predictions`` and its examples.
Conventions follow the reference implementations: an F1 whose precision and recall are both undefined is 0 (as
scikit-learn's ``zero_division=0``); SQuAD-style F1 of an empty prediction or an empty gold is 0 (SQuAD v1.1 / MRQA).
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence


def _check(predictions: Sequence[object], golds: Sequence[object]) -> None:
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} examples")
    if not golds:
        raise ValueError("no examples to score")


def accuracy(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Fraction of exact matches; raises on length mismatch or no examples."""
    _check(predictions, golds)
    return sum(p == g for p, g in zip(predictions, golds, strict=True)) / len(golds)


def _f1(tp: int, fp: int, fn: int) -> float:
    """F1 from counts; 0 when there is nothing to be right about (no true positives)."""
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def binary_f1(predictions: Sequence[str], golds: Sequence[str], positive: str) -> float:
    """F1 of the ``positive`` class (MRPC, QQP: " yes"): harmonic mean of its precision and recall."""
    _check(predictions, golds)
    pairs = list(zip(predictions, golds, strict=True))
    tp = sum(p == positive and g == positive for p, g in pairs)
    fp = sum(p == positive and g != positive for p, g in pairs)
    fn = sum(p != positive and g == positive for p, g in pairs)
    return _f1(tp, fp, fn)


def macro_f1(predictions: Sequence[str], golds: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean of the per-class F1 over ``labels`` (CB's three classes).

    The classes are given, not read off the data, so a class the model never predicts counts with F1 = 0
    instead of silently leaving the average (what CB's official macro-F1 over its three labels does).
    """
    if not labels:
        raise ValueError("macro_f1 needs the list of classes")
    return sum(binary_f1(predictions, golds, label) for label in labels) / len(labels)


def multirc_scores(predictions: Sequence[str], golds: Sequence[str], groups: Sequence[Hashable], positive: str
                   ) -> dict[str, float]:
    """MultiRC's two metrics over answer options, one option per row.

    ``exact_match``: fraction of questions (rows sharing a ``groups`` id) whose every answer option is labelled
    right. ``f1a``: binary F1 of ``positive`` over all answer options of all questions pooled.
    """
    _check(predictions, golds)
    if len(groups) != len(golds):
        raise ValueError(f"{len(groups)} group ids for {len(golds)} examples")
    all_right: dict[Hashable, bool] = defaultdict(lambda: True)
    for p, g, q in zip(predictions, golds, groups, strict=True):
        all_right[q] = all_right[q] and p == g
    return {"exact_match": sum(all_right.values()) / len(all_right),
            "f1a": binary_f1(predictions, golds, positive)}


_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's official answer normalisation: lower case, drop punctuation, drop articles (a, an, the), and
    collapse whitespace. MRQA and ReCoRD use the same function."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals some normalised gold answer, else 0.0."""
    if not golds:
        raise ValueError("no gold answers to compare with")
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def _token_f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_f1(prediction: str, golds: Sequence[str]) -> float:
    """Token-level F1 of the normalised bags of words, the max over gold answers."""
    if not golds:
        raise ValueError("no gold answers to compare with")
    return max(_token_f1(prediction, g) for g in golds)


def squad_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean ``exact_match`` and ``f1`` (each the max over an example's gold answers): the SQuAD v1.1 / MRQA
    official evaluation."""
    _check(predictions, answers)
    return {"exact_match": sum(squad_exact_match(p, a) for p, a in zip(predictions, answers, strict=True))
            / len(answers),
            "f1": sum(squad_f1(p, a) for p, a in zip(predictions, answers, strict=True)) / len(answers)}


def record_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """ReCoRD's official metrics: the evaluation script of ReCoRD is SQuAD v1.1's (same normalisation, EM and
    token F1 max over the gold entity strings), so the scores are :func:`squad_scores` on the chosen entities."""
    return squad_scores(predictions, answers)
