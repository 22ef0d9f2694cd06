"""The scale-aware default step size (``lr auto``) and the named ``paper`` recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from softprompt.cli import main
from softprompt.core.promptfile import load_prompt
from softprompt.experiments.configfile import ConfigError, build
from softprompt.training.loop import make_optimizer
from softprompt.training.prompt_tuning import AUTO_LR_SCALE, RECIPES, TrainConfig, resolve_lr, train_prompt
from tests.conftest import tiny_backbone
from tests.test_trainer import toy_task


def test_auto_is_the_default_and_scales_with_the_embeddings() -> None:
    assert TrainConfig().lr == "auto"
    bb = tiny_backbone("llama")
    base = resolve_lr(TrainConfig(), bb)
    assert base == pytest.approx(AUTO_LR_SCALE * bb.embedding_std())
    with torch.no_grad():
        bb.model.get_input_embeddings().weight.mul_(10)
    assert resolve_lr(TrainConfig(), bb) == pytest.approx(10 * base, rel=1e-4)
    assert resolve_lr(TrainConfig(lr=0.3), bb) == 0.3  # a number is used as given


def test_gemma_auto_lr_uses_the_consumed_scale() -> None:
    """Gemma scales its embeddings by sqrt(H) inside the embedding module: the rule reads the consumed values."""
    bb = tiny_backbone("gemma3")
    raw_std = float(bb.model.get_input_embeddings().weight.std())
    assert resolve_lr(TrainConfig(), bb) > 2 * AUTO_LR_SCALE * raw_std  # sqrt(32) ≈ 5.7 × the stored rows


@pytest.mark.parametrize("bad", [0.0, -1.0, "fast"])
def test_bad_lr_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=bad)  # type: ignore[arg-type]


def test_yaml_config_takes_auto_or_a_number() -> None:
    assert build(TrainConfig, {"lr": "auto"}, "pt").lr == "auto"
    assert build(TrainConfig, {"lr": 0.3}, "pt").lr == 0.3
    with pytest.raises(ConfigError):
        build(TrainConfig, {"lr": "quick"}, "pt")


def test_optimizer_needs_a_resolved_number() -> None:
    param = torch.nn.Parameter(torch.zeros(3))
    assert make_optimizer(TrainConfig(), [param], 0.05).param_groups[0]["lr"] == 0.05
    assert make_optimizer(TrainConfig(lr=0.2), [param]).param_groups[0]["lr"] == 0.2


def test_the_run_records_the_resolved_lr(tmp_path: Path) -> None:
    bb = tiny_backbone("llama")
    task = toy_task(tmp_path)
    out = tmp_path / "p.safetensors"
    train_prompt(bb, task, task.examples("train"), TrainConfig(steps=2, batch_size=4, prompt_length=2,
                                                               eval_every=0), out, progress=False)
    meta = load_prompt(out).meta
    assert meta.train_config["lr"] == "auto"
    assert meta.metrics["lr"] == pytest.approx(resolve_lr(TrainConfig(), bb))


def test_cli_recipe_paper_and_explicit_lr(tmp_path: Path, tiny_dirs: dict[str, Path], capsys) -> None:
    task = toy_task(tmp_path)
    common = ["train", "--model", str(tiny_dirs["llama"]), "--task", task.spec.train, "--template", "{text} ->",
              "--verbalizer", '{"0": " no", "1": " yes"}', "--steps", "1", "--batch-size", "2",
              "--prompt-length", "2", "--no-eval", "--no-progress", "--json"]
    assert main([*common, "--out", str(tmp_path / "a.safetensors"), "--recipe", "paper"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["lr"] == RECIPES["paper"]["lr"]
    assert main([*common, "--out", str(tmp_path / "b.safetensors"), "--recipe", "paper", "--lr", "0.05"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["lr"] == 0.05
    with pytest.raises(SystemExit) as exc:
        main([*common, "--out", str(tmp_path / "c.safetensors"), "--lr", "zero"])
    assert exc.value.code == 2


def test_default_recipe_has_momentum_and_the_paper_none(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    """The default Adafactor keeps a first moment (momentum 0.9: bench/lr_bench.py's P = 50 spikes without it); the
    paper recipe and --beta1 none do not; the checkpoint holds the optimizer's state either way."""
    from softprompt.cli import build_parser
    from softprompt.cli.training import _optimizer_args

    assert TrainConfig().beta1 == 0.9 and RECIPES["default"]["beta1"] == 0.9 and RECIPES["paper"]["beta1"] is None
    assert (TrainConfig().schedule, RECIPES["default"]["schedule"], RECIPES["paper"]["schedule"]) == \
        ("linear", "linear", "constant")
    param = torch.nn.Parameter(torch.zeros(2, 3))
    param.grad = torch.ones(2, 3)
    with_momentum = make_optimizer(TrainConfig(lr=0.1), [param])
    with_momentum.step()
    assert "exp_avg" in with_momentum.state[param]
    plain = make_optimizer(TrainConfig(lr=0.1, beta1=None), [param])
    plain.step()
    assert "exp_avg" not in plain.state[param]
    parser = build_parser()
    base = ["train", "--model", str(tiny_dirs["llama"]), "--task", "sst2", "--out", str(tmp_path / "x.safetensors")]
    assert _optimizer_args(parser.parse_args(base), TrainConfig())["beta1"] == 0.9
    assert _optimizer_args(parser.parse_args([*base, "--recipe", "paper"]), TrainConfig())["beta1"] is None
    assert _optimizer_args(parser.parse_args([*base, "--beta1", "none"]), TrainConfig())["beta1"] is None
    assert _optimizer_args(parser.parse_args(base), TrainConfig())["schedule"] == "linear"
    assert _optimizer_args(parser.parse_args([*base, "--recipe", "paper"]), TrainConfig())["schedule"] == "constant"
    assert _optimizer_args(parser.parse_args([*base, "--schedule", "constant"]), TrainConfig())["schedule"] == \
        "constant"
    assert _optimizer_args(parser.parse_args([*base, "--recipe", "paper", "--beta1", "0.5"]),
                           TrainConfig())["beta1"] == 0.5
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--beta1", "1.5"])
    with pytest.raises(ValueError, match="beta1"):
        TrainConfig(beta1=1.0)


def test_a_changed_auto_rule_is_never_silently_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """lr "auto" is the code's rule: a --resume whose rule (so step size) changed is refused, not continued at
    another lr; the checkpoint's optimizer state holds the step it ran at."""
    import softprompt.training.prompt_tuning as pt

    bb = tiny_backbone("llama")
    task = toy_task(tmp_path)
    out = tmp_path / "p.safetensors"
    examples = task.examples("train")
    # A constant step size, so the resumed run may be longer (a linear decay fixes the steps).
    train_prompt(bb, task, examples, TrainConfig(steps=2, batch_size=2, prompt_length=2, eval_every=0,
                                                 schedule="constant"), out, progress=False)
    longer = TrainConfig(steps=3, batch_size=2, prompt_length=2, eval_every=0, schedule="constant")
    monkeypatch.setattr(pt, "AUTO_LR_SCALE", 2 * AUTO_LR_SCALE)
    with pytest.raises(ValueError, match="another step size"):
        train_prompt(bb, task, examples, longer, out, resume=True, progress=False)
    monkeypatch.setattr(pt, "AUTO_LR_SCALE", AUTO_LR_SCALE)
    assert train_prompt(bb, task, examples, longer, out, resume=True, progress=False).state.step == 3


def test_an_experiment_cell_records_the_auto_rule_and_goes_stale_when_it_changes(tmp_path: Path) -> None:
    from softprompt.core.tiny import save_tiny
    from softprompt.experiments.grid import cells, load_config
    from softprompt.experiments.runner import cell_path, run_experiment, stale_reasons
    from softprompt.training.prompt_tuning import LEGACY_AUTO_LR_SCALE
    from tests.test_experiment import grid, write_config
    from tests.toytask import write_task

    save_tiny("llama", tmp_path / "tiny-small", hidden=16, layers=1)
    write_task(tmp_path / "toy_a")
    raw = grid(tmp_path, output=str(tmp_path / "results"), models=[str(tmp_path / "tiny-small")], pairs=[],
               methods=["prompt-tuning"], prompt_lengths=[2], inits=["uniform"], shots=[0],
               prompt_tuning={"steps": 2, "batch_size": 4})  # lr auto (the default)
    config = load_config(write_config(tmp_path / "auto.yaml", raw))
    run_experiment(config, log=lambda _: None)
    (cell,) = cells(config)
    record = json.loads(cell_path(config, cell).read_text())
    assert record["lr_rule"] == {"auto_lr_scale": AUTO_LR_SCALE} and not stale_reasons(config, cell, record)
    older = {k: v for k, v in record.items() if k != "lr_rule"}  # a cell from before cells recorded the rule
    stale = stale_reasons(config, cell, older)
    assert (LEGACY_AUTO_LR_SCALE != AUTO_LR_SCALE) == bool(stale)
    assert not stale or "lr auto" in stale[0]
    # A record from before the schedule setting ran at a constant step size: under today's linear default it is stale.
    constant = {**record, "config": {k: v for k, v in record["config"].items() if k != "schedule"}}
    assert record["config"]["schedule"] == "linear"
    assert any("schedule" in r and "constant" in r for r in stale_reasons(config, cell, constant))
