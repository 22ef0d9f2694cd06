"""The built-in tasks: real data read and checked against SOURCES.md, bad data named precisely, one scoring pass
through a tiny model, and `softprompt tasks`."""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pathlib import Path

import pytest
import torch

from softprompt.cli import main
from softprompt.core.bank import PromptBank
from softprompt.core.prompted import PromptedModel
from softprompt.evaluation.scoring import predict
from softprompt.tasks import TASKS, Example, Task, TaskDataError, get_task
from softprompt.tasks.base import hold_out_tail
from softprompt.tasks.glue import QQP
from softprompt.tasks.mrqa import first_line
from softprompt.tasks.selection import SELECTION_SEED, default_selection_size, hold_out, selection_split
from tests.conftest import tiny_backbone

SPLITS = [(name, split) for name, cls in TASKS.items() for split in cls.splits]


@cache
def read(name: str, split: str, data_dir: Path) -> list[Example]:
    """Each real split is parsed once per session (MultiRC, SQuAD and SST-2 take a few tenths of a second)."""
    return TASKS[name]().examples(split, data_dir)


def test_registry_is_explicit_and_complete() -> None:
    assert set(TASKS) == {"boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc", "mrpc", "qqp", "sst2",
                          "squad", "relation_extraction"}
    for name, cls in TASKS.items():
        task = get_task(name)
        assert task.name == name and isinstance(task, cls)
        assert task.primary_metric in task.metric_names, name
        assert task.instruction.strip(), f"{name} has no hand-written instruction for prompt design"
        assert "validation" in task.splits, name


@pytest.mark.parametrize(("name", "split"), SPLITS)
def test_every_split_reads_real_data(name: str, split: str, data_dir: Path) -> None:
    task = TASKS[name]()
    examples = read(name, split, data_dir)
    assert examples
    for e in examples:
        assert e.input.strip() and e.input.endswith(":"), "inputs end in a cue such as 'Answer:'"
        assert e.target.startswith(" ") and e.target.strip(), "targets are space-led words"
        if task.kind == "classification":
            assert e.choices and e.target in e.choices and len(set(e.choices)) == len(e.choices)
        else:
            assert e.choices is None and e.target.strip() == e.answers[0]
    if task.verbalizer:
        assert {e.choices for e in examples} == {tuple(task.verbalizer.values())}


# Label counts of SOURCES.md ("Label distributions"), as target texts.
LABEL_COUNTS = {
    ("boolq", "train"): {" yes": 5874, " no": 3553},
    ("boolq", "validation"): {" yes": 2033, " no": 1237},
    ("cb", "train"): {" yes": 115, " no": 119, " maybe": 16},
    ("cb", "validation"): {" yes": 23, " no": 28, " maybe": 5},
    ("multirc", "train"): {" yes": 12025, " no": 15218},
    ("multirc", "validation"): {" yes": 2075, " no": 2773},
    ("wic", "validation"): {" yes": 319, " no": 319},
    ("wsc", "train"): {" yes": 259, " no": 295},
    ("wsc", "validation"): {" yes": 38, " no": 66},
    ("mrpc", "train"): {" yes": 2474, " no": 1194},
    ("mrpc", "validation"): {" yes": 279, " no": 129},
}


@pytest.mark.parametrize(("name", "split"), list(LABEL_COUNTS))
def test_label_distributions_match_sources(name: str, split: str, data_dir: Path) -> None:
    assert Counter(e.target for e in read(name, split, data_dir)) == LABEL_COUNTS[name, split]


def test_copa_labels_pick_the_right_alternative(data_dir: Path) -> None:
    # SOURCES.md: train label0 195 / label1 205, val 55 / 45. The first choice is choice1 (label 0).
    for split, (first, second) in {"train": (195, 205), "validation": (55, 45)}.items():
        examples = read("copa", split, data_dir)
        assert sum(e.target == e.choices[0] for e in examples) == first  # type: ignore[index]
        assert sum(e.target == e.choices[1] for e in examples) == second  # type: ignore[index]
    assert len({e.choices for e in read("copa", "validation", data_dir)}) == 100  # choices are per example


def test_multirc_groups_options_by_question(data_dir: Path) -> None:
    # SOURCES.md: validation holds 953 questions over 4,848 answer options; train 5,131 over 27,243.
    assert len({e.meta["group"] for e in read("multirc", "validation", data_dir)}) == 953
    assert len({e.meta["group"] for e in read("multirc", "train", data_dir)}) == 5131


def test_qqp_held_out_split_and_malformed_line(data_dir: Path) -> None:
    train, validation = read("qqp", "train", data_dir), read("qqp", "validation", data_dir)
    assert len(validation) == 2000 and len(train) == 23_497 - 2000 - 1  # one malformed line skipped
    assert {e.meta["line"] for e in validation} == set(range(21_498, 23_498))  # the file's last 2,000 lines
    assert min(e.meta["line"] for e in train) == 2  # line 1 is the malformed one
    # SOURCES.md: 8,747 duplicate / 14,749 not duplicate, plus the malformed line.
    assert Counter(e.target for e in train + validation) == {" yes": 8747, " no": 14749}
    task = QQP()
    task.examples("validation", data_dir)
    assert task.skipped_lines == [1]


def test_squad_split_keeps_each_context_on_one_side(data_dir: Path) -> None:
    train, validation = read("squad", "train", data_dir), read("squad", "validation", data_dir)
    assert (len(train), len(validation)) == (8624, 1883)  # 10,507 questions of MRQA's SQuAD dev in all
    assert not {e.meta["context"] for e in train} & {e.meta["context"] for e in validation}
    assert len({e.meta["context"] for e in validation}) == 400
    assert len(read("relation_extraction", "validation", data_dir)) == 2948


def test_record_choices_are_passage_entities(data_dir: Path) -> None:
    for split in ("train", "validation"):
        examples = read("record", split, data_dir)
        assert len(examples) == 32  # FewGLUE: 32 passages with one query each
        for e in examples:
            assert set(e.answers) <= {c.strip() for c in e.choices}  # type: ignore[union-attr]
            assert "@placeholder" in e.input


@pytest.mark.parametrize("name", list(TASKS))
def test_metrics_return_the_declared_keys(name: str, data_dir: Path) -> None:
    task = TASKS[name]()
    examples = read(name, "validation", data_dir)[:50]
    perfect = task.metrics([e.target for e in examples], examples)
    assert set(perfect) == set(task.metric_names)
    assert all(v == pytest.approx(1.0) for v in perfect.values()), perfect


def bare(family: str) -> PromptedModel:
    """A tiny random model with a zero-length prompt: scoring plumbing, not quality."""
    backbone = tiny_backbone(family)
    return PromptedModel(backbone, PromptBank(torch.zeros(1, 0, backbone.hidden_size)))


@pytest.fixture(scope="module")
def tiny_prompted() -> PromptedModel:
    return bare("llama")


@pytest.fixture(scope="module")
def tiny_t5() -> PromptedModel:
    return bare("t5")


@pytest.mark.parametrize("name", list(TASKS))
def test_two_examples_score_end_to_end(name: str, data_dir: Path, tiny_prompted: PromptedModel) -> None:
    task = TASKS[name]()
    examples = read(name, "validation", data_dir)[:2]
    predictions = predict(tiny_prompted, task, examples, instruction=task.instruction, max_input_tokens=64,
                          max_new_tokens=4)
    assert len(predictions) == 2
    if task.kind == "classification":
        assert all(p in e.choices for p, e in zip(predictions, examples, strict=True))  # type: ignore[operator]
    metrics = task.metrics(predictions, examples)
    assert set(metrics) == set(task.metric_names) and all(0.0 <= v <= 1.0 for v in metrics.values())


@pytest.mark.parametrize("name", ["copa", "record", "squad"])
def test_per_example_choices_and_generation_on_an_encoder_decoder(name: str, data_dir: Path,
                                                                   tiny_t5: PromptedModel) -> None:
    task = TASKS[name]()
    examples = read(name, "validation", data_dir)[:2]
    predictions = predict(tiny_t5, task, examples, max_input_tokens=64, max_new_tokens=4)
    if task.kind == "classification":
        assert all(p in e.choices for p, e in zip(predictions, examples, strict=True))  # type: ignore[operator]
    assert set(task.metrics(predictions, examples)) == set(task.metric_names)


def test_generated_answers_are_cut_at_the_first_line() -> None:
    assert first_line(" Denver Broncos\nQuestion: who won?") == "Denver Broncos"
    squad = TASKS["squad"]()
    example = Example("Context: …\nQuestion: …\nAnswer:", " Denver Broncos", None, ("Denver Broncos",))
    assert squad.metrics([" Denver Broncos\nContext: more"], [example]) == {"exact_match": 1.0, "f1": 1.0}


# --- bad input: every error names the file, the line and the field --------------------------------------------


def write_split(root: Path, task: Task, split: str, lines: list[str]) -> Path:
    path = root / task.splits[split]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_unknown_task_name_lists_the_built_in_tasks() -> None:
    with pytest.raises(TaskDataError, match=r"unknown task 'boolk'.*boolq"):
        get_task("boolk")


CB_ROW = {"premise": "It rained.", "hypothesis": "It was wet.", "label": "entailment", "idx": 0}


def test_missing_field_names_file_line_and_field(tmp_path: Path) -> None:
    task = get_task("cb")
    row = {k: v for k, v in CB_ROW.items() if k != "hypothesis"}
    path = write_split(tmp_path, task, "train", [json.dumps(CB_ROW), json.dumps(row)])
    with pytest.raises(TaskDataError, match=rf"{path}:2: missing field 'hypothesis'"):
        task.examples("train", tmp_path)


def test_missing_nested_field_names_the_line(tmp_path: Path) -> None:
    task = get_task("multirc")
    row = {"idx": 0, "passage": {"text": "P.", "questions": [{"question": "Q?", "idx": 0,
                                                               "answers": [{"text": "A", "idx": 0}]}]}}
    path = write_split(tmp_path, task, "validation", [json.dumps(row)])
    with pytest.raises(TaskDataError, match=rf"{path}:1: missing field 'label'"):
        task.examples("validation", tmp_path)


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    task = get_task("boolq")
    path = write_split(tmp_path, task, "validation", [""])
    with pytest.raises(TaskDataError, match=rf"split 'validation' in {path} is empty"):
        task.examples("validation", tmp_path)


@pytest.mark.parametrize(("name", "row", "message"), [
    ("cb", {**CB_ROW, "label": "unsure"}, r"label 'unsure' is not in the verbalizer"),
    ("boolq", {"question": "q", "passage": "p", "label": "yes"}, r"label 'yes' is not in the verbalizer"),
    ("copa", {"premise": "p", "choice1": "a", "choice2": "b", "question": "effect", "label": 2},
     r"field 'label' is 2, expected 0 \(choice1\) or 1 \(choice2\)"),
    ("copa", {"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 0},
     r"field 'question' is 'why'"),
])
def test_label_outside_the_verbalizer(tmp_path: Path, name: str, row: dict, message: str) -> None:
    task = get_task(name)
    path = write_split(tmp_path, task, "train", [json.dumps(row)])
    with pytest.raises(TaskDataError, match=rf"{path}:1: .*{message}"):
        task.examples("train", tmp_path)


def test_glue_tsv_label_outside_the_verbalizer(tmp_path: Path) -> None:
    task = get_task("mrpc")
    path = write_split(tmp_path, task, "validation", ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                                                      "1\t1\t2\tA.\tB.", "2\t3\t4\tC.\tD."])
    with pytest.raises(TaskDataError, match=rf"{path}:3: label '2' is not in the verbalizer"):
        task.examples("validation", tmp_path)


def test_qqp_skips_malformed_lines_up_to_one_percent(tmp_path: Path) -> None:
    good = [f"{i}\t{2 * i}\t{2 * i + 1}\tQuestion {i}?\tOther {i}?\t{i % 2}" for i in range(150)]
    path = tmp_path / "qqp.tsv"
    path.write_text("\n".join(["0\t0\t1\tGlued label?\tHere 0", *good]) + "\n")
    task = QQP()
    assert len(task.read(path)) == 150 and task.skipped_lines == [1]
    path.write_text("\n".join(["0\t0\t1\tGlued?\tHere 0", "broken", *good]) + "\n")  # 2 of 152 lines: > 1%
    with pytest.raises(TaskDataError, match=rf"{path}: 2 of 152 lines do not have the 6 fields.*first: line 1"):
        task.read(path)
    path.write_text("0\t0\t1\tA?\tB?\tmaybe\n")
    with pytest.raises(TaskDataError, match=rf"{path}:1: field 'is_duplicate': label 'maybe'"):
        task.read(path)


def test_hold_out_tail_is_deterministic_and_disjoint() -> None:
    rows = [Example(f"x{i}:", " y", None, ("y",), meta={"context": i // 2}) for i in range(10)]  # 5 contexts
    validation = hold_out_tail(rows, "validation", "context", 2, "f")
    train = hold_out_tail(rows, "train", "context", 2, "f")
    assert [e.input for e in validation] == ["x6:", "x7:", "x8:", "x9:"]
    assert [e.input for e in train] == [f"x{i}:" for i in range(6)]
    with pytest.raises(TaskDataError, match="need more than 5"):
        hold_out_tail(rows, "train", "context", 5, "f")
    with pytest.raises(TaskDataError, match="no split 'test'"):
        hold_out_tail(rows, "test", "context", 2, "f")


def test_mrqa_file_needs_its_header_and_answers(tmp_path: Path) -> None:
    task = get_task("relation_extraction")
    qa = {"question": "Who?", "answers": ["Ann"], "qid": "q1"}
    path = write_split(tmp_path, task, "validation", [json.dumps({"context": "Ann did.", "qas": [qa]})])
    with pytest.raises(TaskDataError, match=rf"{path}:1: an MRQA file starts with a header line"):
        task.examples("validation", tmp_path)
    header = json.dumps({"header": {"dataset": "RelationExtraction"}})
    write_split(tmp_path, task, "validation", [header, json.dumps({"context": "Ann did.", "qas": [qa]})])
    assert [e.answers for e in task.examples("validation", tmp_path)] == [("Ann",)]
    write_split(tmp_path, task, "validation", [header, json.dumps({"context": "Ann did.",
                                                                   "qas": [{**qa, "answers": []}]})])
    with pytest.raises(TaskDataError, match=rf"{path}:2: field 'answers' of question 'q1' is empty"):
        task.examples("validation", tmp_path)
    with pytest.raises(TaskDataError, match="has no split 'train'"):
        task.examples("train", tmp_path)


def test_record_reads_several_queries_per_passage(tmp_path: Path) -> None:
    task = get_task("record")
    text = "Ann met Bob in Rome.\n@highlight\nBob left"
    entity = {"Ann": (0, 2), "Bob": (8, 10), "Rome": (15, 18)}
    queries = [{"query": "@placeholder met Bob", "answers": [{"start": 0, "end": 2, "text": "Ann"}], "idx": 1},
               {"query": "They met in @placeholder", "answers": [{"start": 15, "end": 18, "text": "Rome"}], "idx": 2}]
    row = {"passage": {"text": text, "entities": [{"start": s, "end": e} for s, e in entity.values()]},
           "qas": queries, "idx": 0}
    write_split(tmp_path, task, "validation", [json.dumps(row)])
    examples = task.examples("validation", tmp_path)
    assert [e.target for e in examples] == [" Ann", " Rome"]
    assert examples[0].choices == (" Ann", " Bob", " Rome")
    assert "\n- Bob left\n" in examples[0].input  # @highlight lines shown as bullet points
    row["qas"] = [{**queries[0], "answers": [{"start": 4, "end": 6, "text": "met"}]}]
    path = write_split(tmp_path, task, "validation", [json.dumps(row)])
    with pytest.raises(TaskDataError, match=rf"{path}:1: answer 'met' is not one of the passage entities"):
        task.examples("validation", tmp_path)


# --- `softprompt tasks` -----------------------------------------------------------------------------------------


def test_cli_lists_every_task(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    assert main(["tasks", "--data-dir", str(data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(TASKS)
    by_name = {line.split()[0]: line for line in lines}
    assert by_name["cb"].split()[1] == "classification" and "macro_f1" in by_name["cb"]
    assert "generation" in by_name["squad"] and "f1, exact_match" in by_name["squad"]
    assert by_name["relation_extraction"].endswith("validation") and "no data" not in by_name["qqp"]


def test_cli_tasks_json_marks_missing_data(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["tasks", "--json", "--data-dir", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [t["name"] for t in result["tasks"]] == list(TASKS)
    assert all(not here for t in result["tasks"] for here in t["splits"].values())
    assert next(t for t in result["tasks"] if t["name"] == "multirc")["metrics"] == ["f1a", "exact_match"]


# --- limits and the selection slice never split a group ---------------------------------------------------------


def multirc_rows(questions: int, options: int) -> list[str]:
    """One MultiRC paragraph with ``questions`` questions of ``options`` answer options each."""
    qs = [{"question": f"Q{q}?", "idx": q, "answers": [{"text": f"A{q}.{a}", "idx": a, "label": a % 2}
                                                       for a in range(options)]} for q in range(questions)]
    return [json.dumps({"idx": 0, "passage": {"text": "P.", "questions": qs}})]


def test_multirc_limit_keeps_whole_questions(tmp_path: Path) -> None:
    task = get_task("multirc")
    write_split(tmp_path, task, "validation", multirc_rows(questions=3, options=4))
    for limit, n in [(1, 4), (4, 4), (5, 8), (11, 12), (100, 12), (0, 0)]:
        examples = task.examples("validation", tmp_path, limit=limit)
        assert len(examples) == n, limit
        assert Counter(e.meta["group"] for e in examples) == {f"0/{q}": 4 for q in range(n // 4)}
    # Exact match scores whole questions: all of a limited set's options right is one question right per group.
    examples = task.examples("validation", tmp_path, limit=5)
    assert task.metrics([e.target for e in examples], examples)["exact_match"] == 1.0


@pytest.mark.parametrize("name", ["multirc", "record", "squad", "relation_extraction"])
def test_limits_cut_at_group_boundaries_on_real_data(name: str, data_dir: Path) -> None:
    task = TASKS[name]()
    assert {n for n, cls in TASKS.items() if cls.group_key} == {"multirc", "record", "squad", "relation_extraction"}
    split = "train" if "train" in task.splits else "validation"
    everything = read(name, split, data_dir)
    sizes = Counter(e.meta[task.group_key] for e in everything)
    for limit in (1, 7, 50, 201):
        examples = task.examples(split, data_dir, limit=limit)
        assert len(examples) >= min(limit, len(everything)), (name, limit)
        assert examples == everything[:len(examples)]
        assert Counter(e.meta[task.group_key] for e in examples) == {g: sizes[g] for g in
                                                                     {e.meta[task.group_key] for e in examples}}


# --- the selection slice: held out from train, never the reported split ----------------------------------------

SELECTION_SIZES = {"boolq": 500, "cb": 32, "copa": 40, "multirc": 500, "record": 16, "rte": 249, "wic": 500,
                   "wsc": 55, "mrpc": 367, "qqp": 500, "sst2": 500, "squad": 500}


@pytest.mark.parametrize("name", list(SELECTION_SIZES))
def test_selection_is_a_slice_of_train_never_of_validation(name: str, data_dir: Path) -> None:
    task = TASKS[name]()
    cut = selection_split(task, data_dir)
    train, validation = read(name, "train", data_dir), read(name, "validation", data_dir)
    assert cut.info == {"split": "train", "size": SELECTION_SIZES[name], "seed": SELECTION_SEED, "limit": None,
                        "examples": len(cut.selection)}
    assert len(cut.selection) >= SELECTION_SIZES[name] and len(cut.selection) + len(cut.train) == len(train)
    assert Counter(map(repr, cut.selection + cut.train)) == Counter(map(repr, train))  # a partition of train
    held = {(e.input, e.target) for e in cut.selection}
    if name != "record":  # FewGLUE's two ReCoRD files are both drawn from ReCoRD train (docs/tasks.md)
        assert not held & {(e.input, e.target) for e in validation}
    if task.group_key:  # whole groups on one side
        assert not {e.meta[task.group_key] for e in cut.selection} & {e.meta[task.group_key] for e in cut.train}
    # --train-limit applies after the cut, so it never moves the slice; a limit on the slice keeps its first groups.
    limited = selection_split(task, data_dir, train_limit=10, limit=5)
    assert limited.train == cut.train[:len(limited.train)] and len(limited.train) >= 10
    assert limited.selection == cut.selection[:len(limited.selection)]
    assert limited.info["limit"] == 5 and limited.info["examples"] == len(limited.selection)


def test_selection_slice_rules() -> None:
    assert [default_selection_size(n) for n in (10, 32, 64, 300, 1000, 4990, 67_349)] == [5, 16, 32, 32, 100, 499,
                                                                                          500]
    rows = [Example(f"x{i}:", " y", None, ("y",), meta={"g": i // 3}) for i in range(30)]  # 10 groups of 3
    train, selection = hold_out(rows, 7, group_key="g")
    assert len(selection) == 9 and len({e.meta["g"] for e in selection}) == 3  # whole groups, at least 7 examples
    assert hold_out(rows, 7, group_key="g") == (train, selection)  # deterministic
    assert [e.input for e in train + selection] != [e.input for e in rows]  # not simply the tail
    assert hold_out(rows, 7, seed=1, group_key="g")[1] != selection  # the seed picks the groups
    with pytest.raises(TaskDataError, match="nothing is left to train on"):
        hold_out(rows, 29, group_key="g")
    with pytest.raises(TaskDataError, match="needs 1 to 29"):
        hold_out(rows, 0)
