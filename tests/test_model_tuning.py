"""Model tuning: every weight trains on a copy, the caller's backbone stays frozen, the folder loads and evaluates,
and a run killed mid-way resumes to the weights of an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from softprompt.cli import main
from softprompt.core.backbone import load_backbone
from softprompt.experiments.baselines.model_tuning import ModelTuneConfig, tune_model
from softprompt.experiments.methods import count_parameters, task_parameters
from softprompt.tasks import FileTask, FileTaskSpec, get_task
from softprompt.tasks.selection import selection_split
from softprompt.training.checkpoint import load_checkpoint
from tests.conftest import tiny_backbone
from tests.toytask import write_task


def test_task_parameters_per_method() -> None:
    assert task_parameters("prompt-tuning", model_parameters=10**6, hidden_size=32, prompt_length=5) == 160
    assert task_parameters("model-tuning", model_parameters=10**6, hidden_size=32) == 10**6
    assert task_parameters("prompt-design", model_parameters=10**6, hidden_size=32) == 0
    with pytest.raises(ValueError, match="unknown method"):
        task_parameters("lora", model_parameters=1, hidden_size=1)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_tune_model_learns_on_a_copy(family: str, tmp_path: Path) -> None:
    backbone = tiny_backbone(family)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    task = FileTask(FileTaskSpec.from_yaml(write_task(tmp_path / "toy")))
    cut = selection_split(task, size=8)
    train = cut.train
    config = ModelTuneConfig(steps=12, batch_size=8, lr=3e-3, eval_every=4)
    result = tune_model(backbone, task, train, config, tmp_path / "tuned", selection=cut.selection,
                        selection_info=cut.info, progress=False)
    assert result.losses[-1] < result.losses[0]
    assert result.metrics["trainable_params"] == count_parameters(backbone.model)
    assert result.metrics["best_step"] in (4, 8, 12)
    # The caller's model is untouched and still frozen.
    for k, v in backbone.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(p.requires_grad for p in backbone.model.parameters())
    loaded = load_backbone(str(tmp_path / "tuned"))
    for k, v in loaded.model.state_dict().items():
        assert torch.allclose(v, result.backbone.model.state_dict()[k]), k
    info = json.loads((tmp_path / "tuned" / "model_tuning.json").read_text())
    assert info["method"] == "model-tuning" and info["selection"] == cut.info
    assert "best_selection_accuracy" in result.metrics and "best_val_accuracy" not in result.metrics


def test_cli_train_model_tuning_then_eval(tiny_dirs: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_task(tmp_path / "toy")
    out = tmp_path / "mt"
    rc = main(["train", "--method", "model-tuning", "--model", str(tiny_dirs["llama"]), "--task", str(spec),
               "--out", str(out), "--steps", "3", "--batch-size", "4", "--eval-limit", "4", "--no-progress",
               "--json"])
    assert rc == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["method"] == "model-tuning" and trained["steps"] == 3
    assert trained["trainable_params"] == count_parameters(load_backbone(str(out)).model)
    rc = main(["eval", "--method", "model-tuning", "--model", str(out), "--task", str(spec), "--limit", "6",
               "--json"])
    assert rc == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["method"] == "model-tuning" and ev["examples"] == 6 and 0 <= ev["accuracy"] <= 1
    assert ev["trainable_params"] == trained["trainable_params"]


def test_cli_model_tuning_refuses_a_file_out(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    spec = write_task(tmp_path / "toy")
    rc = main(["train", "--method", "model-tuning", "--model", str(tiny_dirs["llama"]), "--task", str(spec),
               "--out", str(tmp_path / "x.safetensors"), "--steps", "1"])
    assert rc == 2


class Killed(Exception):
    """Stands for a SIGKILL: the run stops inside a step, after its last checkpoint was written."""


def kill_at_step(step: int) -> object:
    """An optimizer hook that aborts the run in the middle of step ``step`` (1-based), before its update."""
    calls = []

    def hook(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        calls.append(1)
        if len(calls) == step:
            raise Killed

    return register_optimizer_step_pre_hook(hook)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_killed_then_resumed_equals_uninterrupted(family: str, tmp_path: Path) -> None:
    task = FileTask(FileTaskSpec.from_yaml(write_task(tmp_path / "toy")))
    cut = selection_split(task, size=8)
    # Selection every 2 steps and a checkpoint every step: the kill at step 5 falls after an eval (step 4) whose
    # best, if it is one, must come back from the checkpoint.
    config = ModelTuneConfig(steps=7, batch_size=4, lr=3e-3, eval_every=2, save_every=1)
    full = tune_model(tiny_backbone(family), task, cut.train, config, tmp_path / "full", selection=cut.selection,
                      selection_info=cut.info, progress=False)
    handle = kill_at_step(5)
    try:
        with pytest.raises(Killed):
            tune_model(tiny_backbone(family), task, cut.train, config, tmp_path / "killed", selection=cut.selection,
                       selection_info=cut.info, progress=False)
    finally:
        handle.remove()
    at_kill = load_checkpoint(tmp_path / "killed.ckpt.safetensors")
    assert at_kill.state.step == 4 and not (tmp_path / "killed").exists()
    assert at_kill.optimizer_state["state"]  # AdamW's moments are in it
    # The best step's weights are in it unless the best step is the checkpoint's own (then the weights are it).
    assert at_kill.state.best_step in (2, 4) and bool(at_kill.best) == (at_kill.state.best_step == 2)
    resumed = tune_model(tiny_backbone(family), task, cut.train, config, tmp_path / "killed", selection=cut.selection,
                         selection_info=cut.info, resume=True, progress=False)
    weights, again = full.backbone.model.state_dict(), resumed.backbone.model.state_dict()
    assert weights.keys() == again.keys()
    for name, value in weights.items():
        assert torch.equal(again[name], value), name
    assert resumed.losses == full.losses and len(full.losses) == 7
    assert {k: v for k, v in resumed.metrics.items() if k != "train_seconds"} == \
        {k: v for k, v in full.metrics.items() if k != "train_seconds"}
    assert any(not torch.equal(v, tiny_backbone(family).model.state_dict()[k]) for k, v in weights.items())
    log = [json.loads(x)["step"] for x in (tmp_path / "killed.metrics.jsonl").read_text().splitlines()]
    assert log == list(range(1, 8))  # the resumed log continues where the killed one stopped, without duplicates
    info = json.loads((tmp_path / "killed" / "model_tuning.json").read_text())
    assert info["history"] == json.loads((tmp_path / "full" / "model_tuning.json").read_text())["history"]
    with pytest.raises(ValueError, match="differ"):
        tune_model(tiny_backbone(family), task, cut.train, ModelTuneConfig(steps=7, batch_size=4, lr=1e-3),
                   tmp_path / "killed", resume=True, progress=False)


def test_cli_model_tuning_resumes(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    spec = write_task(tmp_path / "toy")
    common = ["train", "--method", "model-tuning", "--model", str(tiny_dirs["llama"]), "--task", str(spec),
              "--batch-size", "4", "--lr", "3e-3", "--no-eval", "--save-every", "1", "--no-progress", "--json"]
    assert main([*common, "--out", str(tmp_path / "full"), "--steps", "4"]) == 0
    assert main([*common, "--out", str(tmp_path / "part"), "--steps", "2"]) == 0
    assert main([*common, "--out", str(tmp_path / "part"), "--steps", "4", "--resume"]) == 0
    full, part = load_backbone(str(tmp_path / "full")), load_backbone(str(tmp_path / "part"))
    for name, value in full.model.state_dict().items():
        assert torch.equal(part.model.state_dict()[name], value), name


def test_builtin_task_registry_is_used() -> None:
    assert get_task("sst2").instruction  # prompt design needs every task's hand-written instruction
