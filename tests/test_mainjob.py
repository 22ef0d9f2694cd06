"""The README's first command, `softprompt experiment configs/sst2.yaml`, end to end on a tiny model and a tiny task:
prompt design before, prompt tuning after, the selection slice's scores, cells under runs/ and nothing in the repo."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from softprompt.cli import main
from softprompt.core.tiny import save_tiny
from softprompt.experiments.grid import load_config
from tests.toytask import write_task

ROOT = Path(__file__).resolve().parents[1]
MAIN_JOB = ROOT / "configs" / "sst2.yaml"


def repo_files() -> set[str]:
    """Every file of the checkout, tracked, untracked or ignored (compiled bytecode aside)."""
    out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return {line for line in out.splitlines() if "__pycache__" not in line}


def test_main_job_config_is_the_readme_first_command() -> None:
    readme = (ROOT / "README.md").read_text()
    first = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    assert "softprompt experiment configs/sst2.yaml" in first and "scripts/" not in first
    config = load_config(MAIN_JOB)
    assert config.methods == ["prompt-design", "prompt-tuning"] and config.shots == [0]
    assert config.prompt_tuning.eval_every > 0  # the best step, chosen on the slice held out from train
    assert config.output == "runs" and config.report_path == Path("runs") / "sst2" / "report"  # git-ignored


def test_main_job_runs_into_runs_and_writes_nothing_in_the_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    model = save_tiny("llama", tmp_path / "tiny-llama", hidden=16, layers=1)
    task = write_task(tmp_path / "toy")
    # The shipped config with a tiny model, a tiny task and a tiny budget; everything else as the README runs it.
    raw = yaml.safe_load(MAIN_JOB.read_text())
    raw.update(models=[str(model)], tasks=[str(task)], threads=1)
    raw["prompt_tuning"].update(steps=4, batch_size=4, optimizer="adam", lr=1e-2, eval_every=2)
    config = tmp_path / "sst2.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    before = repo_files()
    monkeypatch.chdir(tmp_path)

    assert main(["experiment", str(config)]) == 0
    out = capsys.readouterr().out
    cells = sorted((tmp_path / "runs" / "sst2" / "cells").glob("*.json"))
    assert [c.name for c in cells] == ["tiny-llama__prompt-design__toy__k0.json",
                                       "tiny-llama__prompt-tuning__toy__P20__class-label__s0.json"]
    design, tuned = (json.loads(c.read_text()) for c in cells)
    assert f"before: prompt design (the task's hand-written instruction, zero-shot): {design['score']:.4f}" in out
    assert f"after: prompt tuning (P = 20, class-label init, 4 steps of batch 4, seed 0): {tuned['score']:.4f}" in out
    # The selection rule: the best of the evals at steps 2 and 4 on the slice held out from train (24 rows: 12).
    assert tuned["selection"]["split"] == "train" and tuned["selection"]["examples"] == 12
    assert [h["step"] for h in tuned["train"]["history"]] == [2, 4]
    best = tuned["train"]["best_step"]
    assert f"checkpoint: step {best} of 4, chosen on 12 examples held out from train" in out
    assert all(f"step {h['step']} {h['accuracy']:.4f}" in out for h in tuned["train"]["history"])
    assert tuned["eval"] == {**tuned["eval"], "split": "validation", "limit": None, "examples": 12}
    assert tuned["git"] is None or len(tuned["git"]["commit"]) == 40  # provenance, as every cell

    # Resumable: a rerun trains nothing; --output puts a campaign's cells where asked.
    assert main(["experiment", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 2
    assert main(["experiment", str(config), "--output", str(tmp_path / "elsewhere"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ran"] == 2 and Path(summary["cells_dir"]) == tmp_path / "elsewhere" / "sst2" / "cells"
    assert repo_files() == before
