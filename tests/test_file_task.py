"""User tasks from files and YAML specs, and where data is looked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softprompt.core.backbone import load_backbone
from softprompt.tasks import FileTask, FileTaskSpec, TaskDataError, get_task, resolve_data_dir
from softprompt.tasks.selection import selection_split


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_yaml_spec_relative_paths_and_generation(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"q": "2+2", "a": "4"}, {"q": "3+3", "a": "6"}])
    spec = tmp_path / "math.yaml"
    spec.write_text('name: math\ntrain: train.jsonl\ntemplate: "Q: {q}\\nA:"\nlabel_field: a\n')
    task = get_task(str(spec))
    assert isinstance(task, FileTask) and task.kind == "generation" and task.name == "math"
    ex = task.examples("train")
    assert ex[0].input == "Q: 2+2\nA:" and ex[0].target == "4" and ex[0].choices is None
    assert task.metrics(["4", " 7"], ex) == {"exact_match": 0.5}


def test_csv_classification(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text('text,label\n"hello, world",pos\nbad,neg\n')
    task = get_task(str(tmp_path / "d.csv"), template="{text}", label_field="label",
                    verbalizer={"pos": " yes", "neg": " no"})
    ex = task.examples("train")
    assert [e.input for e in ex] == ["hello, world", "bad"] and [e.target for e in ex] == [" yes", " no"]


@pytest.mark.parametrize("content, message", [
    ("name: x\ntrain: t.jsonl\ntemplate: '{q}'\nbogus: 1\n", "unknown keys"),
    ("- a list\n", "a mapping"),
])
def test_bad_yaml_specs(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "s.yaml").write_text(content)
    with pytest.raises(TaskDataError, match=message):
        get_task(str(tmp_path / "s.yaml"))


def test_bad_data_names_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"txt": "b", "label": 1}])
    task = FileTask(FileTaskSpec(train=str(path), template="{text}", verbalizer={"0": " a", "1": " b"}))
    with pytest.raises(TaskDataError, match=r"d.jsonl:2: template field 'text'"):
        task.examples("train")
    (tmp_path / "empty.jsonl").write_text("\n")
    task = FileTask(FileTaskSpec(train=str(tmp_path / "empty.jsonl"), template="{text}"))
    with pytest.raises(TaskDataError, match="empty"):
        task.examples("train")
    (tmp_path / "broken.jsonl").write_text('{"text": "a", "label": 0}\n{not json\n')
    task = FileTask(FileTaskSpec(train=str(tmp_path / "broken.jsonl"), template="{text}"))
    with pytest.raises(TaskDataError, match=r"broken\.jsonl:2: not valid JSON"):
        task.examples("train")


def test_data_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTPROMPT_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir("elsewhere") == Path("elsewhere")
    monkeypatch.delenv("SOFTPROMPT_DATA_DIR")
    assert resolve_data_dir() == Path("../shared/data")
    with pytest.raises(TaskDataError, match="data file not found"):
        get_task("sst2").examples("train", tmp_path)


def test_missing_local_model_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match="model not found"):
        load_backbone("./no/such/model")


def test_without_a_validation_file_there_is_no_validation_split(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(40)])
    options = {"template": "{text}", "verbalizer": {"0": " a", "1": " b"}}
    task = get_task(str(train), **options)
    with pytest.raises(TaskDataError, match="--validation-file"):
        task.examples("validation")  # it used to be the train file, scored as if held out
    # Selection is a slice of the train file, held out from training, whether or not there is a validation file.
    cut = selection_split(task)
    assert len(cut.selection) == 20 and len(cut.train) == 20  # default: at least 32, at most half of train
    assert not {e.input for e in cut.selection} & {e.input for e in cut.train}
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "d", "label": 1}])
    task = get_task(str(train), validation=str(dev), **options)
    assert [e.input for e in task.examples("validation")] == ["d"]
    assert selection_split(task).info == cut.info


def test_the_toy_task_in_memory_is_the_toy_task_on_disk(tmp_path: Path) -> None:
    """tests/toytask.py: the files and the in-memory task give the same examples and labels."""
    from tests.toytask import INSTRUCTION, ToyTask, toy_examples, toy_task

    task = toy_task(tmp_path / "toy", 8, validation=4)
    assert task.examples("train") == toy_examples(8) == ToyTask().read(tmp_path)[:8]
    assert task.verbalizer == ToyTask.verbalizer and task.instruction == INSTRUCTION and task.name == "toy"
    assert len(task.examples("validation")) == 4
