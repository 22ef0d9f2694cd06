"""Metric functions over predicted and gold target texts."""

from __future__ import annotations

from collections.abc import Sequence


def accuracy(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Fraction of exact matches; raises on length mismatch or no examples."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} examples")
    if not golds:
        raise ValueError("no examples to score")
    return sum(p == g for p, g in zip(predictions, golds, strict=True)) / len(golds)
