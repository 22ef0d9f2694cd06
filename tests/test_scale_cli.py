"""`softprompt train` scale flags in one process: --precision, --gradient-checkpointing, and --fsdp's guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softprompt.cli import main
from softprompt.core.promptfile import load_prompt
from tests.toytask import TEMPLATE, VERBALIZER, toy_rows, write_jsonl


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "toy.jsonl", toy_rows(16))


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--task", str(data), "--template", TEMPLATE, "--verbalizer",
            json.dumps(VERBALIZER), "--out", str(out), "--steps", "2", "--batch-size", "4",
            "--prompt-length", "3", "--no-eval", "--no-progress", "--json", *extra]


def test_train_bf16_with_checkpointing(tiny_dirs: dict[str, Path], data_file: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "p.safetensors"
    args = train_args(tiny_dirs["llama"], data_file, out, "--precision", "bf16", "--gradient-checkpointing")
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
    pf = load_prompt(out)  # the prompt file is fp32 whatever the backbone's dtype
    assert pf.prompt.shape == (3, 32)


def test_fsdp_needs_a_launcher(tiny_dirs: dict[str, Path], data_file: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(train_args(tiny_dirs["llama"], data_file, tmp_path / "p.safetensors", "--fsdp")) == 2
    assert "torchrun" in capsys.readouterr().err
