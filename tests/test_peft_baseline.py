"""The PEFT peer (method ``peft-prompt-tuning``): a grid runs it beside prompt tuning, end to end; with an init both
have and the same seed, rows and optimizer it is the same method step for step (tests/test_peft_parity.py checks one
step of the two forwards; here the whole cells are compared); its record carries PEFT's version and every step's
loss; an init PEFT lacks is refused before anything trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from softprompt.cli import main
from softprompt.core.peft_interop import read_peft
from softprompt.core.promptfile import load_prompt
from softprompt.core.tiny import byte_tokenizer, save_tiny, tiny_model
from softprompt.experiments.baselines import peft_prompt_tuning
from softprompt.experiments.baselines.peft_prompt_tuning import label_text, refusals
from softprompt.experiments.configfile import ConfigError
from softprompt.experiments.grid import cells, load_config
from softprompt.experiments.report import write_report
from softprompt.experiments.runner import cell_path, prompt_path, run_experiment
from softprompt.training.prompt_tuning import TrainConfig
from tests.toytask import write_task

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny llama sizes (a BOS-adding tokenizer), one llama whose tokenizer adds no special token, a toy task."""
    root = tmp_path_factory.mktemp("peft")
    save_tiny("llama", root / "tiny-small", hidden=16, layers=1)
    save_tiny("llama", root / "tiny-large", hidden=32, layers=2)
    model, _ = tiny_model("llama", hidden=16, layers=1)
    model.save_pretrained(root / "nobos")
    byte_tokenizer(add_bos=False).save_pretrained(root / "nobos")
    write_task(root / "toy")
    return root


def grid(root: Path, tmp_path: Path, **overrides: object) -> Path:
    config = {
        "name": "peer",
        "models": [str(root / "tiny-small"), str(root / "tiny-large")],
        "tasks": [str(root / "toy" / "toy.yaml")],
        "methods": ["prompt-tuning", "peft-prompt-tuning"],
        "prompt_lengths": [2],
        "inits": ["class-label", "sampled-vocab"],
        "seeds": [0],
        "prompt_tuning": {"steps": 3, "batch_size": 4},  # the recipe's Adafactor, lr auto
        "eval": {"limit": 6, "max_input_tokens": 128},
        "output": str(tmp_path / "results"),
        "report_dir": str(tmp_path / "docs"),
        **overrides,
    }
    path = tmp_path / "peer.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def pt_losses(config: object, cell: object) -> list[float]:
    """Every step's loss of a prompt-tuning cell, from its metrics log beside its prompt file."""
    log = Path(str(prompt_path(config, cell)).removesuffix(".safetensors") + ".metrics.jsonl")
    return [json.loads(line)["loss"] for line in log.read_text().splitlines()]


def test_a_grid_runs_the_peer_beside_prompt_tuning(root: Path, tmp_path: Path) -> None:
    config = load_config(grid(root, tmp_path))
    grid_cells = cells(config)
    peers = [c for c in grid_cells if c.method == "peft-prompt-tuning"]
    # the prompt-tuning axes: model × task × P × init × seed
    assert len(peers) == 4 and len(grid_cells) == 8
    assert peers[0].id.endswith("__peft-prompt-tuning__toy__P2__class-label__s0")
    summary = run_experiment(config, log=lambda _: None)
    assert len(summary.ran) == 8
    for cell in peers:
        record = json.loads(cell_path(config, cell).read_text())
        assert record["peft"]["version"] == peft.__version__
        assert len(record["train"]["losses"]) == 3 and record["loss_first"] == record["train"]["losses"][0]
        assert record["trainable_params"] == 2 * record["model"]["hidden_size"]
        assert record["config"]["init"] == cell.init and record["config"]["steps"] == 3
        want = ("TEXT", " no yes") if cell.init == "class-label" else ("SAMPLE_VOCAB", None)
        assert (record["peft"]["prompt_tuning_init"], record["peft"]["prompt_tuning_init_text"]) == want
        # The evaluated prompt is PEFT's adapter converted to a softprompt file, bound to the model.
        adapter, _ = read_peft(record["peft"]["adapter"])
        converted = load_prompt(prompt_path(config, cell))
        assert torch.equal(adapter, converted.prompt) and converted.meta.prompt_length == 2
    text = write_report(config).read_text()
    assert "| peft-prompt-tuning | P=2, class-label |" in text
    assert (config.report_path / "score_vs_size.png").is_file()
    # A lost peer record is rebuilt from the cell's finished checkpoint (no step is taken again), nothing else runs.
    before = json.loads(cell_path(config, peers[1]).read_text())
    cell_path(config, peers[1]).unlink()
    again = run_experiment(config, log=lambda _: None)
    assert again.ran == [peers[1].id] and len(again.skipped) == 7
    after = json.loads(cell_path(config, peers[1]).read_text())
    assert after["train"]["losses"] == before["train"]["losses"] and after["metrics"] == before["metrics"]


def test_a_killed_peer_resumes_exactly(root: Path, tmp_path: Path) -> None:
    """The peer's steps are the training loop's: a run stopped at step 2 and resumed to 4 is the 4-step run."""
    from softprompt.core.backbone import load_backbone
    from softprompt.tasks import get_task

    backbone = load_backbone(str(root / "tiny-small"))
    task = get_task(str(root / "toy" / "toy.yaml"))
    train = task.examples("train")
    selection = task.examples("validation")[:4]
    # A constant step size: the cut run is resumed to more steps (a linear decay would refuse that).
    config = TrainConfig(steps=4, batch_size=4, grad_accum=2, prompt_length=2, eval_every=2, save_every=1,
                         schedule="constant")
    whole = peft_prompt_tuning.tune_peft_prompt(backbone, task, train, config, tmp_path / "whole.safetensors",
                                                selection=selection)
    short = TrainConfig(**{**config.__dict__, "steps": 2})
    peft_prompt_tuning.tune_peft_prompt(backbone, task, train, short, tmp_path / "cut.safetensors",
                                        selection=selection)
    resumed = peft_prompt_tuning.tune_peft_prompt(backbone, task, train, config, tmp_path / "cut.safetensors",
                                                  selection=selection, resume=True)
    assert resumed.losses == whole.losses and len(whole.losses) == 4
    assert resumed.history == whole.history and resumed.metrics == whole.metrics
    assert torch.equal(resumed.prompt, whole.prompt)
    # A prompt-tuning checkpoint is not the peer's: refused, not half-resumed.
    from softprompt.training.prompt_tuning import train_prompt

    train_prompt(backbone, task, train, short, tmp_path / "pt.safetensors", progress=False)
    with pytest.raises(ValueError, match="not a PEFT prompt-tuning checkpoint"):
        peft_prompt_tuning.tune_peft_prompt(backbone, task, train, short, tmp_path / "pt.safetensors",
                                            resume=True)


@pytest.mark.parametrize(("optimizer", "lr", "grad_accum"), [("adafactor", "auto", 1), ("adam", 0.05, 2)])
def test_the_peer_is_prompt_tuning_step_for_step(root: Path, tmp_path: Path, optimizer: str, lr: object,
                                                 grad_accum: int) -> None:
    # A tokenizer that adds no special token and an init text of at least P tokens: PEFT's TEXT init and softprompt's
    # text init are the same rows, so the two cells differ only in whose code steps.
    config = load_config(grid(
        root, tmp_path, models=[str(root / "nobos")], prompt_lengths=[4], inits=["text"],
        prompt_tuning={"steps": 3, "batch_size": 4, "grad_accum": grad_accum, "optimizer": optimizer, "lr": lr,
                       "init_text": "Is this review good?", "eval_every": 2, "eval_limit": 4}))
    ours, theirs = cells(config)
    run_experiment(config, log=lambda _: None)
    a, b = (json.loads(cell_path(config, c).read_text()) for c in (ours, theirs))
    assert a["train"]["lr"] == b["train"]["lr"]  # lr auto resolved alike
    losses = pt_losses(config, ours)
    assert b["train"]["losses"][0] == pytest.approx(losses[0], rel=1e-6)  # the same method: the same first loss
    assert b["train"]["losses"] == pytest.approx(losses, rel=1e-5)  # later: float order only
    torch.testing.assert_close(load_prompt(prompt_path(config, theirs)).prompt,
                               load_prompt(prompt_path(config, ours)).prompt, rtol=1e-5, atol=1e-6)
    # The same selection (slice, evals, step kept) and the same evaluation.
    assert b["selection"] == a["selection"] and a["selection"]
    assert [h["step"] for h in b["train"]["history"]] == [h["step"] for h in a["train"]["history"]] == [2, 3]
    assert b["train"]["best_step"] == a["train"]["best_step"]
    assert b["metrics"] == pytest.approx(a["metrics"])


@pytest.mark.parametrize(("override", "message"), [
    ({"inits": ["class-label", "uniform"]}, "init 'uniform' has no PEFT counterpart"),
    ({"prompt_tuning": {"steps": 3, "reparam": "residual"}}, "no reparameterisation"),
])
def test_what_peft_lacks_is_refused_before_training(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    override: dict, message: str) -> None:
    import softprompt.experiments.runner as runner

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(runner, "tune_peft_prompt", no_training)
    monkeypatch.setattr(runner, "load_backbone", no_training)
    path = grid(root, tmp_path, **override)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    assert main(["experiment", str(path)]) == 2
    # The same inits and settings without the peer are a valid grid.
    load_config(grid(root, tmp_path, **override, methods=["prompt-tuning"]))


def test_refusals_and_the_label_text(monkeypatch: pytest.MonkeyPatch) -> None:
    assert refusals(["class-label", "text", "sampled-vocab"], TrainConfig()) == []
    assert label_text([" no", " yes"]) == " no yes"
    assert label_text(["positive", "negative", " neutral"]) == "positive negative neutral"
    monkeypatch.setattr(peft_prompt_tuning, "has_sample_vocab", lambda: False)  # a PEFT older than SAMPLE_VOCAB
    assert refusals(["class-label", "text"], TrainConfig()) == []
    assert "lacks: upgrade PEFT" in refusals(["sampled-vocab"], TrainConfig())[0]
    monkeypatch.setattr(peft_prompt_tuning.importlib.util, "find_spec", lambda name: None)
    assert refusals(["class-label"], TrainConfig()) == ["method peft-prompt-tuning needs PEFT: pip install peft"]


def test_a_resumed_cell_records_the_step_it_went_on_from(root: Path, tmp_path: Path) -> None:
    """A cell continued from its checkpoint times only the steps after it: the record says from which step, so that
    seconds per step are not the continuation's seconds spread over every step."""
    short = {"prompt_tuning": {"steps": 2, "batch_size": 4, "schedule": "constant", "save_every": 1}}
    config = load_config(grid(root, tmp_path, models=[str(root / "tiny-small")], inits=["class-label"], **short))
    run_experiment(config, log=lambda _: None)
    first = {c.id: json.loads(cell_path(config, c).read_text()) for c in cells(config)}
    assert all("resumed_from_step" not in r for r in first.values())
    # The same cells, two steps longer (a constant step size may be extended): each goes on from its step 2.
    for c in cells(config):
        cell_path(config, c).unlink()
    longer = {"prompt_tuning": {**short["prompt_tuning"], "steps": 4}}
    config = load_config(grid(root, tmp_path, models=[str(root / "tiny-small")], inits=["class-label"], **longer))
    run_experiment(config, log=lambda _: None)
    tuned = [json.loads(cell_path(config, c).read_text()) for c in cells(config) if c.method != "prompt-design"]
    assert len(tuned) == 2 and all(r["train"]["steps"] == 4 and r["resumed_from_step"] == 2 for r in tuned)
