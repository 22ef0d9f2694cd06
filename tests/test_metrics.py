"""Metric functions against values computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import pytest

from softprompt.tasks.metrics import (
    accuracy,
    binary_f1,
    macro_f1,
    multirc_scores,
    normalize_answer,
    record_scores,
    squad_exact_match,
    squad_f1,
    squad_scores,
)

Y, N, M = " yes", " no", " maybe"


def test_accuracy() -> None:
    assert accuracy([Y, N, N, Y], [Y, Y, N, N]) == 0.5
    with pytest.raises(ValueError, match="3 predictions for 2"):
        accuracy([Y, N, Y], [Y, N])
    with pytest.raises(ValueError, match="no examples"):
        accuracy([], [])


def test_binary_f1() -> None:
    # tp = rows 0 and 4, fp = row 1, fn = row 2: F1 = 2·2 / (2·2 + 1 + 1) = 2/3.
    assert binary_f1([Y, Y, N, N, Y], [Y, N, Y, N, Y], positive=Y) == pytest.approx(2 / 3)
    # The positive class decides: with " no" positive, tp = row 3, fp = row 2, fn = row 1: 2 / (2 + 1 + 1).
    assert binary_f1([Y, Y, N, N, Y], [Y, N, Y, N, Y], positive=N) == pytest.approx(0.5)
    assert binary_f1([N, N], [N, N], positive=Y) == 0.0  # nothing positive anywhere: F1 is 0, not an error
    assert binary_f1([Y, Y], [Y, Y], positive=Y) == 1.0


def test_macro_f1_counts_a_class_never_predicted() -> None:
    golds = [Y, Y, N, N, M]
    predictions = [Y, N, N, N, Y]
    # yes: tp 1, fp 1 (row 4), fn 1 (row 1) → 2/4 = 0.5; no: tp 2, fp 1 (row 1), fn 0 → 4/5 = 0.8;
    # maybe: never predicted → 0. Macro-F1 = (0.5 + 0.8 + 0) / 3.
    assert macro_f1(predictions, golds, [Y, N, M]) == pytest.approx(1.3 / 3)
    # Averaging only over the classes that were predicted would give (0.5 + 0.8) / 2: the wrong, kinder number.
    assert macro_f1(predictions, golds, [Y, N, M]) != pytest.approx(0.65)
    with pytest.raises(ValueError, match="classes"):
        macro_f1(predictions, golds, [])


def test_multirc_groups_by_question_id_not_by_position() -> None:
    # Questions a (3 options), b (2), c (1), interleaved to show grouping is by id.
    groups = ["a", "b", "a", "c", "b", "a"]
    golds = [Y, N, N, Y, N, N]
    predictions = [Y, N, Y, Y, N, N]  # a's second option (row 2) is wrong; b and c are all right
    scores = multirc_scores(predictions, golds, groups, positive=Y)
    assert scores["exact_match"] == pytest.approx(2 / 3)  # b and c of {a, b, c}
    # F1a over all 6 options: tp rows 0 and 3, fp row 2, fn none → 4 / (4 + 1) = 0.8.
    assert scores["f1a"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="group ids"):
        multirc_scores(predictions, golds, groups[:-1], positive=Y)


def test_normalize_answer_is_squads() -> None:
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear and THE plum") == "apple pear and plum"
    assert normalize_answer("theory of anatomy") == "theory of anatomy"  # articles only as whole words
    assert normalize_answer(" Levi's  Stadium. ") == "levis stadium"


def test_squad_em_and_f1_take_the_max_over_golds() -> None:
    assert squad_exact_match(" Denver Broncos", ["Carolina Panthers", "the denver broncos."]) == 1.0
    assert squad_exact_match("Broncos", ["Denver Broncos"]) == 0.0
    # "the Broncos of Denver" → [broncos, of, denver] vs [denver, broncos]: 2 shared, P 2/3, R 1 → F1 0.8.
    assert squad_f1("the Broncos of Denver", ["Carolina", "Denver Broncos"]) == pytest.approx(0.8)
    # Repeated tokens count once per match: [x, x, y] vs [x, y, y] share {x: 1, y: 1}: P = R = 2/3.
    assert squad_f1("x x y", ["x y y"]) == pytest.approx(2 / 3)
    assert squad_f1("", ["Denver"]) == 0.0
    assert squad_f1("the", ["a"]) == 0.0  # both normalise to nothing: SQuAD v1.1 scores that 0
    with pytest.raises(ValueError, match="no gold"):
        squad_f1("x", [])


def test_squad_and_record_scores_average_over_examples() -> None:
    predictions = ["Denver Broncos", "Santa Clara", "nothing"]
    answers = [["Denver Broncos"], ["Levi's Stadium", "Santa Clara, California"], ["Super Bowl"]]
    # EM: 1, 0, 0. F1: 1; "santa clara" vs "santa clara california" → P 1, R 2/3 → 0.8; 0.
    expected = {"exact_match": pytest.approx(1 / 3), "f1": pytest.approx(1.8 / 3)}
    assert squad_scores(predictions, answers) == expected
    assert record_scores(predictions, answers) == expected
    with pytest.raises(ValueError, match="2 predictions for 3"):
        squad_scores(predictions[:2], answers)
