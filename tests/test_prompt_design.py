"""Prompt design: instruction + seeded demonstrations that fit the context window; the eval CLI uses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softprompt.cli import main
from softprompt.experiments.baselines.prompt_design import DEMO_SEPARATOR, design_prompt
from softprompt.tasks import Example, FileTask, FileTaskSpec
from tests.conftest import tiny_backbone
from tests.toytask import write_task


@pytest.fixture()
def task(tmp_path: Path) -> FileTask:
    return FileTask(FileTaskSpec.from_yaml(write_task(tmp_path / "toy")))


def test_zero_shot_is_the_instruction(task: FileTask) -> None:
    tok = tiny_backbone("llama").tokenizer
    design = design_prompt(task, tok, task.examples("train")[:3], shots=0)
    assert design.prefix == task.instruction and design.shots == 0


def test_demonstrations_are_seeded_and_solved(task: FileTask) -> None:
    tok = tiny_backbone("llama").tokenizer
    pool = task.examples("train")
    queries = pool[:2]
    a = design_prompt(task, tok, queries, shots=3, pool=pool, seed=1, max_input_tokens=512)
    b = design_prompt(task, tok, queries, shots=3, pool=pool, seed=1, max_input_tokens=512)
    c = design_prompt(task, tok, queries, shots=3, pool=pool, seed=2, max_input_tokens=512)
    assert a == b and a.prefix != c.prefix and a.shots == 3
    demos = a.prefix.removeprefix(task.instruction).split(DEMO_SEPARATOR)[:-1]
    by_input = {e.input: e.target for e in pool}
    for demo in demos:
        text, answer = demo.rsplit("?", 1)
        assert by_input[text + "?"] == answer  # each demonstration carries its gold answer


def test_demonstrations_respect_the_context_window(task: FileTask) -> None:
    tok = tiny_backbone("llama").tokenizer  # byte-level: one token per byte
    pool = task.examples("train")
    queries = [Example("q" * 40, " yes", (" no", " yes"))]
    budget = 40 + 1 + len(task.instruction) + 2 * len(pool[0].input + " yes" + DEMO_SEPARATOR) + 3
    design = design_prompt(task, tok, queries, shots=8, pool=pool, max_input_tokens=budget)
    assert 1 <= design.shots < 8 and design.requested == 8
    assert len(tok(design.prefix + queries[0].input)["input_ids"]) <= budget
    none_fit = design_prompt(task, tok, queries, shots=4, pool=pool, max_input_tokens=45)
    assert none_fit.shots == 0 and none_fit.prefix == task.instruction


def test_shots_need_a_pool(task: FileTask) -> None:
    with pytest.raises(ValueError, match="demonstrations"):
        design_prompt(task, tiny_backbone("llama").tokenizer, task.examples("train"), shots=2)


def test_cli_eval_prompt_design_with_shots(tiny_dirs: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_task(tmp_path / "toy")
    base = ["eval", "--method", "prompt-design", "--model", str(tiny_dirs["gpt2"]), "--task", str(spec),
            "--limit", "4", "--json"]
    assert main([*base, "--shots", "2", "--seed", "3"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["shots"] == 2 and out["shots_requested"] == 2 and out["trainable_params"] == 0
    assert main(base) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["shots"] == 0
    assert main(["eval", "--method", "model-tuning", "--model", str(tiny_dirs["gpt2"]), "--task", str(spec),
                 "--shots", "2"]) == 2
