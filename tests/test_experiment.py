"""Experiment grids: validation before training, an end-to-end tiny sweep, resume, and the report."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import yaml

from softprompt.cli import main
from softprompt.core.backbone import load_backbone
from softprompt.core.promptfile import load_prompt
from softprompt.core.tiny import save_tiny
from softprompt.experiments.baselines.model_tuning import tune_model
from softprompt.experiments.configfile import ConfigError
from softprompt.experiments.grid import cells, load_config, source_cell
from softprompt.experiments.report import write_report
from softprompt.experiments.runner import (
    CELL_FORMAT,
    StaleCellError,
    cell_path,
    method_config,
    method_settings,
    model_run_files,
    prompt_path,
    reusable,
    run_experiment,
    trained_with,
)
from softprompt.tasks import get_task
from softprompt.tasks.selection import SELECTION_SEED, selection_split
from softprompt.training.prompt_tuning import initial_prompt
from tests.toytask import write_task


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny llama models of different sizes and two small local tasks (for a domain-shift pair)."""
    root = tmp_path_factory.mktemp("sweep")
    save_tiny("llama", root / "tiny-small", hidden=16, layers=1)
    save_tiny("llama", root / "tiny-large", hidden=32, layers=2)
    write_task(root / "toy_a")
    write_task(root / "toy_b", words=("awful", "great"))
    return root


def grid(root: Path, **overrides: object) -> dict:
    config = {
        "name": "tiny",
        "models": [str(root / "tiny-small"), str(root / "tiny-large")],
        "tasks": [str(root / "toy_a" / "toy_a.yaml")],
        "pairs": [{"train_task": str(root / "toy_a" / "toy_a.yaml"), "eval_task": str(root / "toy_b" / "toy_b.yaml")}],
        "methods": ["prompt-tuning", "model-tuning", "prompt-design"],
        "prompt_lengths": [2, 4],
        "inits": ["sampled-vocab", "uniform"],
        "seeds": [0],
        "shots": [0, 2],
        "prompt_tuning": {"steps": 2, "batch_size": 4, "optimizer": "adam", "lr": 1e-2},
        "model_tuning": {"steps": 2, "batch_size": 4, "lr": 1e-3},
        "eval": {"limit": 6, "max_input_tokens": 128},
        "output": str(root / "results"),
        "report_dir": str(root / "docs"),
    }
    config.update(overrides)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_grid_cells(sweep_dir: Path, tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "c.yaml", grid(sweep_dir)))
    ids = [c.id for c in cells(config)]
    assert len(ids) == len(set(ids))
    # per model: prompt tuning 2 P × 2 inits × (1 task + 1 pair), model tuning × 2, prompt design 0- and 2-shot
    assert len(ids) == 2 * (8 + 2 + 2)
    assert not any(c.method == "prompt-design" and c.train_task != c.eval_task for c in cells(config))
    assert config.prompt_tuning.eval_every == 0 and config.model_tuning.eval_every == 0  # grid default: no selection
    assert config.prompt_tuning.steps == 2 and config.model_tuning.lr == 1e-3


def test_a_pair_cell_evaluates_the_prompt_its_in_domain_sibling_trained(sweep_dir: Path, tmp_path: Path) -> None:
    """A domain-shift pair (train A, evaluate B) trains what the in-domain cell (train A, evaluate A) trains: the
    prompt is trained once, and both cells score that one prompt; without the sibling the pair trains its own."""
    raw = grid(sweep_dir, output=str(tmp_path / "results"), models=[str(sweep_dir / "tiny-small")],
               methods=["prompt-tuning"], prompt_lengths=[2], inits=["uniform"], shots=[0],
               prompt_tuning={"steps": 3, "batch_size": 4, "optimizer": "adam", "lr": 1e-2, "eval_every": 2,
                              "eval_limit": 4})
    config = load_config(write_config(tmp_path / "pair.yaml", raw))
    home, pair = sorted(cells(config), key=lambda c: c.train_task != c.eval_task)
    assert trained_with(config, pair) == home and trained_with(config, home) == home
    run_experiment(config, log=lambda _: None)
    a, b = (json.loads(cell_path(config, c).read_text()) for c in (home, pair))
    assert b["prompt_trained_by"] == home.id and "prompt_trained_by" not in a
    assert b["train"]["history"] == a["train"]["history"] and b["train"]["best_step"] == a["train"]["best_step"]
    assert not prompt_path(config, pair).exists()  # one prompt file, the sibling's
    log = prompt_path(config, home).with_suffix("").with_suffix(".metrics.jsonl")
    assert len([line for line in log.read_text().splitlines() if '"loss"' in line]) == 3  # its steps ran once
    # Alone in its grid, the pair trains its own prompt: the same one (same rows, slice and seed).
    alone = load_config(write_config(tmp_path / "alone.yaml", {**raw, "name": "alone", "tasks": []}))
    (only,) = cells(alone)
    assert trained_with(alone, only) == only
    run_experiment(alone, log=lambda _: None)
    assert torch.equal(load_prompt(prompt_path(alone, only)).prompt, load_prompt(prompt_path(config, home)).prompt)


def test_a_model_tuning_pair_cell_evaluates_the_model_its_in_domain_sibling_trained(sweep_dir: Path,
                                                                                   tmp_path: Path) -> None:
    """A model-tuning pair cell trains what its in-domain sibling trains: in one run the model is trained once and
    both cells evaluate it, with the scores a pair trained on its own gets."""
    raw = grid(sweep_dir, output=str(tmp_path / "results"), models=[str(sweep_dir / "tiny-small")],
               methods=["model-tuning"], seeds=[0],
               model_tuning={"steps": 3, "batch_size": 4, "lr": 1e-3, "eval_every": 2, "eval_limit": 4})
    config = load_config(write_config(tmp_path / "mt.yaml", raw))
    home, pair = sorted(cells(config), key=lambda c: c.train_task != c.eval_task)
    assert trained_with(config, pair) == home
    ran = run_experiment(config, log=lambda _: None)
    assert ran.ran == [home.id, pair.id]
    a, b = (json.loads(cell_path(config, c).read_text()) for c in (home, pair))
    assert b["model_trained_by"] == home.id and "model_trained_by" not in a
    assert b["train"] == a["train"] and b["loss_last"] == a["loss_last"]
    assert b["resumed_from_step"] == a["train"]["steps"] == 3  # it took no step of its own
    # Alone in its grid the pair trains its own model: the same one, so the same scores.
    alone = load_config(write_config(tmp_path / "alone.yaml", {**raw, "name": "alone", "tasks": []}))
    (only,) = cells(alone)
    run_experiment(alone, log=lambda _: None)
    c = json.loads(cell_path(alone, only).read_text())
    def untimed(train: dict) -> dict:
        return {k: v for k, v in train.items() if k != "train_seconds"}

    assert "model_trained_by" not in c and untimed(c["train"]) == untimed(b["train"]) and c["metrics"] == b["metrics"]
    assert c["train"]["steps"] == 3 and "best_step" in c["train"]  # the kept step is compared too
    # its selection evals are in the record, as a prompt-tuning cell's are (the report lists them)
    assert [h["step"] for h in c["train"]["history"]] == [2, 3] and all(c["metric"] in h for h in c["train"]["history"])


def test_a_killed_model_tuning_cell_resumes_from_its_checkpoint(sweep_dir: Path, tmp_path: Path) -> None:
    """A model-tuning cell killed part-way continues from its checkpoint beside the cells (no kept model folder
    needed) and records what an uninterrupted cell records; the checkpoint, a few models' worth, goes with the
    record."""
    raw = grid(sweep_dir, models=[str(sweep_dir / "tiny-small")], methods=["model-tuning"], pairs=[],
               model_tuning={"steps": 4, "batch_size": 4, "lr": 1e-3, "eval_every": 2, "eval_limit": 4,
                             "save_every": 2})
    whole = load_config(write_config(tmp_path / "whole.yaml", {**raw, "output": str(tmp_path / "whole")}))
    killed = load_config(write_config(tmp_path / "killed.yaml", {**raw, "output": str(tmp_path / "killed")}))
    run_experiment(whole, log=lambda _: None)
    (cell,) = cells(killed)
    # The run that was killed: its first 2 steps, as the runner trains them, left their checkpoint and logs.
    settings = replace(method_settings(killed, cell), steps=2)
    task = get_task(cell.train_task)
    cut = selection_split(task, None, limit=settings.eval_limit, train_limit=killed.train_limit)
    tune_model(load_backbone(cell.model), task, cut.train, settings, selection=cut.selection, resume=True,
               progress=False, run_files=model_run_files(killed, cell))
    assert model_run_files(killed, cell).checkpoint.is_file()
    assert run_experiment(killed, log=lambda _: None).ran == [cell.id]
    a, b = (json.loads(cell_path(c, cell).read_text()) for c in (whole, killed))
    assert b["resumed_from_step"] == 2 and "resumed_from_step" not in a

    def untimed(train: dict) -> dict:
        return {k: v for k, v in train.items() if k != "train_seconds"}

    assert untimed(b["train"]) == untimed(a["train"]) and b["metrics"] == a["metrics"]
    assert b["loss_last"] == a["loss_last"] and [h["step"] for h in b["train"]["history"]] == [2, 4]
    for c in (whole, killed):
        files = model_run_files(c, cell)
        assert not files.checkpoint.exists() and files.metrics.is_file()  # the curve stays, the resume state goes
    steps = [json.loads(line)["step"] for line in model_run_files(killed, cell).metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the resumed log continues the killed one's, without duplicates


def test_sweep_runs_resumes_and_reports(sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    path = write_config(tmp_path / "tiny.yaml", grid(sweep_dir))
    config = load_config(path)
    first = run_experiment(config, log=lambda _: None)
    assert len(first.ran) == 24 and not first.skipped
    record = json.loads((config.out_dir / "cells" / f"{first.ran[0]}.json").read_text())
    for key in ("cell", "model", "metrics", "score", "seconds", "trainable_params", "versions", "config", "git"):
        assert key in record, key
    assert record["selection"] == {}  # the grid default (eval_every 0): nothing selected, the last step kept
    by_method = {}
    for cell_file in (config.out_dir / "cells").glob("*.json"):
        r = json.loads(cell_file.read_text())
        by_method.setdefault(r["method"], set()).add((r["model"]["parameters"], r["trainable_params"],
                                                      r["cell"]["prompt_length"], r["model"]["hidden_size"]))
    assert all(t == 0 for _, t, _, _ in by_method["prompt-design"])
    assert all(t == n for n, t, _, _ in by_method["model-tuning"])
    assert all(t == p * h for _, t, p, h in by_method["prompt-tuning"])
    assert len({n for n, _, _, _ in by_method["model-tuning"]}) == 2  # two model sizes

    # Resume: nothing left to train; then a lost cell is the only one that runs again.
    second = run_experiment(config, log=lambda _: None)
    assert not second.ran and len(second.skipped) == 24
    (config.out_dir / "cells" / f"{first.ran[5]}.json").unlink()
    third = run_experiment(config, log=lambda _: None)
    assert third.ran == [first.ran[5]]

    assert main(["experiment", str(path), "--report", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = Path(out["report"])
    text = report.read_text()
    assert "24 of 24 cells done" in text and "## Domain shift" in text and "toy_a → toy_b" in text
    for png in ("score_vs_size.png", "prompt_length.png", "init.png"):
        data = (report.parent / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, png


def test_cli_rerun_trains_nothing(sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = grid(sweep_dir, name="cli", output=str(tmp_path / "results"), models=[str(sweep_dir / "tiny-small")],
                 pairs=[], prompt_lengths=[2],
                 inits=["uniform"], shots=[0], methods=["prompt-tuning", "prompt-design"],
                 prompt_tuning={"steps": 2, "batch_size": 4, "eval_every": 1, "eval_limit": 4})
    path = write_config(tmp_path / "cli.yaml", small)
    assert main(["experiment", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ran"] == 2
    assert main(["experiment", str(path), "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["ran"] == 0 and again["skipped"] == 2
    tuned = json.loads(next((tmp_path / "results" / "cli" / "cells").glob("*prompt-tuning*.json")).read_text())
    assert tuned["train"]["best_step"] in (1, 2)  # eval_every > 0: the best step, chosen on the selection slice
    # ... held out from the train task's train split (24 rows: 12 held out, eval_limit 4 of them scored), while the
    # cell reports its eval split: the two never share examples.
    assert tuned["selection"] == {"split": "train", "size": 12, "seed": SELECTION_SEED, "limit": 4, "examples": 4}
    assert tuned["eval"]["split"] == "validation" and "best_selection_accuracy" in tuned["train"]


@pytest.mark.parametrize(("override", "message"), [
    ({"prompt_tuning": {"steps": 2, "learning_rate": 0.1}}, "unknown key"),
    ({"eval": {"limt": 3}}, "unknown key"),
    ({"sedes": [0]}, "unknown key"),
    ({"tasks": ["no-such-task"]}, "unknown task"),
    ({"methods": ["lora"]}, "methods"),
    ({"inits": ["random"]}, "inits"),
    ({"models": ["no-such-model"]}, "unknown model"),
    ({"prompt_tuning": {"init": "uniform"}}, "grid axes"),
    ({"seeds": "0"}, "expected a list"),
    ({"prompt_tuning": {"steps": 0}}, "steps"),
    ({"tasks": ["sst2", "sst2.yaml"]}, "share a file label"),
    ({"reuse": ["tiny"]}, "another grid"),
    ({"reuse": ["../elsewhere"]}, "another grid"),
    ({"transfer": [{"source": "sst2", "target": "rte"}]}, "not one of the grid's tasks"),
    ({"transfer": [{"source": "sst2", "target": "rte"}], "methods": ["model-tuning"]}, "needs method prompt-tuning"),
    ({"inits": ["from:x.safetensors"]}, "transfer"),
    ({"transfer": [{"source": "sst2"}]}, "target"),
    ({"variants": [{"name": "r", "prompt_tuning": {"reparm": "residual"}}]}, "not prompt_tuning settings"),
    ({"variants": [{"name": "r", "prompt_tuning": {"prompt_length": 5}}]}, "grid axes"),
    ({"variants": [{"name": "r", "prompt_tuning": {}}]}, "overrides nothing"),
    ({"variants": [{"name": "r", "prompt_tuning": {"reparam": "lora"}}]}, r"variants\[0\].*lora"),
    ({"variants": [{"name": "r", "prompt_tuning": {"lr": 0.3}, "models": ["other"]}]}, "subset of the grid"),
    ({"variants": [{"name": "a b", "prompt_tuning": {"lr": 0.3}}]}, "letters, digits"),
    ({"variants": [{"name": "r", "prompt_tuning": {"lr": 0.3}}] * 2}, "share a name"),
    ({"exclude": [{}]}, "names no field"),
    ({"exclude": [{"method": "model-tuning", "seed": 7}]}, "matches no cell"),
    ({"exclude": [{"modle": "x"}]}, "unknown key"),
])
def test_bad_config_fails_before_training(sweep_dir: Path, tmp_path: Path, override: dict, message: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import softprompt.experiments.runner as experiment

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(experiment, "train_prompt", no_training)
    monkeypatch.setattr(experiment, "load_backbone", no_training)
    if override.get("tasks") == ["sst2", "sst2.yaml"]:
        override = {"tasks": ["sst2", str(write_task(tmp_path / "sst2"))]}  # a file task whose label is sst2
    path = write_config(tmp_path / "bad.yaml", grid(sweep_dir, **override))
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    assert main(["experiment", str(path)]) == 2  # and train_prompt / load_backbone were never called


def test_transfer_grid_dry_runs_then_runs_the_source_first(sweep_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    a, b = (str(sweep_dir / t / f"{t}.yaml") for t in ("toy_a", "toy_b"))
    model = str(sweep_dir / "tiny-small")
    config = grid(sweep_dir, name="spot", output=str(tmp_path / "results"), models=[model], pairs=[], tasks=[a],
                  transfer=[{"source": a, "target": b}], methods=["prompt-tuning"], prompt_lengths=[2],
                  inits=["uniform"], shots=[0])
    path = write_config(tmp_path / "spot.yaml", config)
    assert main(["experiment", str(path), "--dry-run"]) == 0
    ids = capsys.readouterr().out.split()
    assert ids == ["tiny-small__prompt-tuning__toy_a__P2__uniform__s0",
                   "tiny-small__prompt-tuning__toy_b__P2__from-toy_a__s0"]
    loaded = load_config(path)
    assert run_experiment(loaded, log=lambda _: None).ran == ids  # the source first
    target = cells(loaded)[1]
    source_file = prompt_path(loaded, source_cell(loaded, target))
    settings = method_settings(loaded, target)
    assert settings.init == f"from:{source_file}"
    # The target starts from the source task's trained prompt, row for row.
    start = initial_prompt(load_backbone(model), get_task(b), settings)
    assert torch.equal(start, load_prompt(source_file).prompt)
    record = json.loads(cell_path(loaded, target).read_text())
    assert record["cell"]["init"] == f"from:{a}" and record["config"]["init"] == settings.init
    assert record["eval_task"] == b and load_prompt(prompt_path(loaded, target)).meta.init == settings.init
    assert "from:" in write_report(loaded).read_text()  # reported under its own setting
    # A source that is not a task of the grid, or the target itself, is refused before anything trains.
    for pair, message in (({"source": b, "target": a}, "not one of the grid's tasks"),
                          ({"source": a, "target": a}, "both")):
        with pytest.raises(ConfigError, match=message):
            load_config(write_config(tmp_path / "bad.yaml", {**config, "transfer": [pair]}))


def test_only_shards_a_grid_and_the_shards_compute_what_one_run_does(sweep_dir: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``--only`` runs the matching cells alone (two processes sharing a grid); a transfer cell whose source is
    neither finished nor selected, or a pattern that matches nothing, is refused before anything trains; cell by
    cell, the shards write what one whole run writes."""
    a, b = (str(sweep_dir / t / f"{t}.yaml") for t in ("toy_a", "toy_b"))
    raw = grid(sweep_dir, name="shards", models=[str(sweep_dir / "tiny-small")], pairs=[], tasks=[a],
               transfer=[{"source": a, "target": b}], methods=["prompt-tuning", "prompt-design"],
               prompt_lengths=[2], inits=["uniform"], shots=[0])
    whole = load_config(write_config(tmp_path / "whole.yaml", {**raw, "output": str(tmp_path / "whole")}))
    path = write_config(tmp_path / "shards.yaml", {**raw, "output": str(tmp_path / "shards")})
    sharded = load_config(path)
    source, design, target = (c.id for c in cells(sharded))
    assert "prompt-design" in design and "from-toy_a" in target
    for bad in (["--only", target], ["--only", "no-such-model__*"]):
        assert main(["experiment", str(path), *bad]) == 2
        assert "--only" in capsys.readouterr().err
    assert not (sharded.out_dir / "cells").exists()  # refused before anything trained
    assert main(["experiment", str(path), "--dry-run", "--only", "*__prompt-tuning__*"]) == 0
    assert capsys.readouterr().out.split() == [source, target]
    assert run_experiment(sharded, only=["*__uniform__*"], log=lambda _: None).ran == [source]
    assert run_experiment(sharded, only=[target, design], log=lambda _: None).ran == [design, target]
    assert run_experiment(whole, log=lambda _: None).ran == [source, design, target]
    for cell in cells(sharded):
        one, other = (json.loads(cell_path(c, cell).read_text()) for c in (sharded, whole))
        assert one["score"] == other["score"] and one["metrics"] == other["metrics"]
        if cell.method == "prompt-tuning":
            assert torch.equal(load_prompt(prompt_path(sharded, cell)).prompt,
                               load_prompt(prompt_path(whole, cell)).prompt)


def test_report_with_missing_cells_lists_them(sweep_dir: Path, tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "empty.yaml", grid(sweep_dir, name="empty")))
    text = write_report(config).read_text()
    assert "0 of 24 cells done" in text and "Missing cells (24)" in text


def test_reuse_copies_only_cells_with_the_same_settings(sweep_dir: Path, tmp_path: Path) -> None:
    base = grid(sweep_dir, output=str(tmp_path / "results"), models=[str(sweep_dir / "tiny-small")], pairs=[],
                prompt_lengths=[2], inits=["uniform"], shots=[0], methods=["prompt-tuning", "prompt-design"])
    first = run_experiment(load_config(write_config(tmp_path / "a.yaml", {**base, "name": "a"})), log=lambda _: None)
    assert len(first.ran) == 2
    # Same settings plus a new prompt length: the two finished cells are copied, only P = 4 trains.
    b = load_config(write_config(tmp_path / "b.yaml", {**base, "name": "b", "prompt_lengths": [2, 4], "reuse": ["a"]}))
    second = run_experiment(b, log=lambda _: None)
    assert sorted(second.reused) == sorted(first.ran) and len(second.ran) == 1 and "P4" in second.ran[0]
    tuned = next(i for i in first.ran if "prompt-tuning" in i)  # its prompt comes along (a transfer may start there)
    assert (b.out_dir / "prompts" / f"{tuned}.safetensors").read_bytes() == \
        (tmp_path / "results" / "a" / "prompts" / f"{tuned}.safetensors").read_bytes()
    copied = json.loads((b.out_dir / "cells" / f"{first.ran[0]}.json").read_text())
    original = json.loads((tmp_path / "results" / "a" / "cells" / f"{first.ran[0]}.json").read_text())
    assert copied["reused_from"] == "a" and copied["experiment"] == "b" and copied["score"] == original["score"]
    report = write_report(b)
    assert "Reused" in report.read_text()
    assert (report.parent / "prompt_length.png").read_bytes()[:4] == b"\x89PNG"  # one model: score vs P
    # A different lr (or eval limit) is a different run: nothing is copied.
    c = load_config(write_config(tmp_path / "c.yaml", {
        **base, "name": "c", "reuse": ["a"], "methods": ["prompt-tuning"],
        "prompt_tuning": {**base["prompt_tuning"], "lr": 2e-2}}))
    third = run_experiment(c, log=lambda _: None)
    assert not third.reused and len(third.ran) == 1
    d = load_config(write_config(tmp_path / "d.yaml", {**base, "name": "d", "reuse": ["a"],
                                                        "methods": ["prompt-design"], "eval": {"limit": 5}}))
    assert not run_experiment(d, log=lambda _: None).reused


def test_reuse_fills_a_setting_newer_than_the_record_with_its_default(sweep_dir: Path, tmp_path: Path) -> None:
    """Model tuning's save_every and log_every came with the shared loop: a record written before them is still the
    same run (their defaults are what it ran with), but not when the setting asked for is not the default."""
    base = grid(sweep_dir, output=str(tmp_path / "results"), models=[str(sweep_dir / "tiny-small")], pairs=[],
                methods=["model-tuning"], shots=[0])
    old = load_config(write_config(tmp_path / "old.yaml", {**base, "name": "old"}))
    cell = cells(old)[0]
    config = {k: v for k, v in method_config(old, cell).items() if k not in ("save_every", "log_every")}
    path = cell_path(old, cell)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"config": config, "eval": asdict(old.eval), "train_limit": None, "score": 0.5,
                                "cell_format": CELL_FORMAT}))
    new = load_config(write_config(tmp_path / "new.yaml", {**base, "name": "new", "reuse": ["old"]}))
    assert reusable(new, cell)["reused_from"] == "old"
    other = load_config(write_config(tmp_path / "other.yaml", {
        **base, "name": "other", "reuse": ["old"], "model_tuning": {**base["model_tuning"], "save_every": 7}}))
    assert reusable(other, cell) is None


def test_results_page_marks_scores_selected_on_the_split_they_report() -> None:
    from softprompt.experiments.resultspage import mark, selection_kind, selection_line

    def cell(method: str = "prompt-tuning", eval_every: int = 0, train: str = "cb", **extra: object) -> dict:
        return {"method": method, "config": {"eval_every": eval_every, "steps": 30},
                "cell": {"train_task": train, "eval_task": "cb"}, "eval": {"split": "validation"}, **extra}

    old_dev = cell(eval_every=10)  # a grid before the slice: best step on cb's validation, reported on it too
    assert selection_kind(old_dev) == "reported split" and mark(old_dev) == "†"
    assert selection_kind(cell(eval_every=10, train="rte")) == "train task's validation"
    assert selection_kind(cell(eval_every=30)) == "none"  # one eval, after the last step
    assert selection_kind(cell(eval_every=10, selection={"split": "train", "size": 32})) == "train slice"
    assert selection_kind(cell(selection={})) == selection_kind(cell("prompt-design")) == "none"
    line = selection_line([old_dev, cell()])
    assert "marked †" in line and "1 of 2" in line


def test_provenance_names_the_code_revision() -> None:
    from softprompt.experiments.provenance import provenance

    record = provenance("peft", "no-such-package")
    assert {"versions", "machine", "load_average", "git"} <= set(record)
    assert record["versions"]["peft"][0].isdigit() and record["versions"]["no-such-package"] == "not installed"
    assert {"platform", "cpu", "logical_cpus", "threads"} <= set(record["machine"])
    if (Path(__file__).resolve().parents[1] / ".git").exists():  # a checkout (CI clones one): the commit is known
        assert len(record["git"]["commit"]) == 40 and isinstance(record["git"]["dirty"], bool)


def not_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    """``name`` as on a fresh machine: an empty cache, and none of its carrying packages importable."""
    from dataclasses import replace

    from softprompt.core import builtin_models as models

    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "empty-cache"))
    absent = replace(models.BUILTIN_MODELS[name], chunks=(("softprompt_no_such_chunk_pkg", "data/*"),))
    monkeypatch.setitem(models.BUILTIN_MODELS, name, absent)


def test_dry_run_lists_cells_of_models_not_installed_yet(sweep_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    not_installed(monkeypatch, tmp_path, "gemma3-270m")
    config = grid(sweep_dir, name="fresh", models=["gemma3-270m"], pairs=[], methods=["prompt-design"], shots=[0])
    path = write_config(tmp_path / "fresh.yaml", config)
    assert main(["experiment", str(path), "--dry-run"]) == 0
    out = capsys.readouterr()
    assert out.out.split() == ["gemma3-270m__prompt-design__toy_a__k0"]
    notes = out.err.strip().splitlines()
    assert len(notes) == 1 and "not installed yet: gemma3-270m" in notes[0] and "error" not in out.err
    monkeypatch.setenv("SOFTPROMPT_NO_INSTALL", "1")
    assert main(["experiment", str(path)]) == 2  # a real run still checks, before anything loads
    assert "not installed" in capsys.readouterr().err
    # Without SOFTPROMPT_NO_INSTALL a real run installs them first (here a fake install: nothing is downloaded).
    from softprompt.core import builtin_models as models
    from softprompt.experiments.grid import preflight

    monkeypatch.delenv("SOFTPROMPT_NO_INSTALL")
    calls: list[str] = []
    monkeypatch.setattr(models, "install", lambda name, quiet=False: calls.append(name) or tmp_path / "x.gguf")
    preflight(load_config(path))
    assert calls == ["gemma3-270m"] and "installing built-in model gemma3-270m" in capsys.readouterr().err


def test_a_dry_run_of_a_shard_notes_only_the_shards_missing_models(sweep_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("gemma3-270m", "qwen2.5-0.5b"):
        not_installed(monkeypatch, tmp_path, name)
    config = grid(sweep_dir, name="fresh", models=["gemma3-270m", "qwen2.5-0.5b"], pairs=[],
                  methods=["prompt-design"], shots=[0])
    path = write_config(tmp_path / "fresh.yaml", config)
    assert main(["experiment", str(path), "--dry-run"]) == 0
    assert "not installed yet: gemma3-270m qwen2.5-0.5b" in capsys.readouterr().err
    assert main(["experiment", str(path), "--dry-run", "--only", "qwen2.5-0.5b__*"]) == 0
    out = capsys.readouterr()
    assert out.out.split() == ["qwen2.5-0.5b__prompt-design__toy_a__k0"]
    assert "not installed yet: qwen2.5-0.5b (" in out.err and "gemma3-270m" not in out.err


def test_variants_run_beside_the_grids_recipe_on_the_models_they_name(sweep_dir: Path, tmp_path: Path) -> None:
    small, large = str(sweep_dir / "tiny-small"), str(sweep_dir / "tiny-large")
    config = load_config(write_config(tmp_path / "v.yaml", grid(
        sweep_dir, name="v", output=str(tmp_path / "results"), models=[small, large], pairs=[], prompt_lengths=[2],
        inits=["uniform", "sampled-vocab"], shots=[0], methods=["prompt-tuning"],
        variants=[{"name": "residual", "prompt_tuning": {"reparam": "residual", "reparam_bottleneck": 4}},
                  {"name": "big_lr", "prompt_tuning": {"lr": 5e-2}, "models": [small]}])))
    grid_cells = cells(config)
    variant_cells = [c for c in grid_cells if c.variant]
    # one per model × task × P × seed, with the first init; big_lr only on the small model
    assert sorted((c.model, c.variant, c.init) for c in variant_cells) == [
        (large, "residual", "uniform"), (small, "big_lr", "uniform"), (small, "residual", "uniform")]
    assert all(c.id.endswith(f"__v-{c.variant}__s0") for c in variant_cells)
    big = next(c for c in variant_cells if c.variant == "big_lr")
    assert method_settings(config, big).lr == 5e-2 and method_settings(config, big).prompt_length == 2
    assert method_settings(config, next(c for c in grid_cells if not c.variant)).lr == 1e-2
    summary = run_experiment(config, log=lambda _: None)
    assert len(summary.ran) == len(grid_cells) == 7
    record = json.loads(cell_path(config, big).read_text())
    assert record["config"]["lr"] == 5e-2 and record["cell"]["variant"] == "big_lr"
    residual = next(c for c in variant_cells if c.variant == "residual" and c.model == small)
    assert load_prompt(prompt_path(config, residual)).meta.prompt_length == 2  # folded: a plain [P, H] prompt
    text = write_report(config).read_text()
    assert "P=2, uniform, big_lr" in text and "P=2, uniform, residual" in text


def test_a_finished_cell_with_other_settings_or_older_code_is_refused(sweep_dir: Path, tmp_path: Path) -> None:
    base = grid(sweep_dir, name="s", output=str(tmp_path / "results"), models=[str(sweep_dir / "tiny-small")],
                pairs=[], prompt_lengths=[2], inits=["uniform"], shots=[0], methods=["prompt-tuning"])
    path = write_config(tmp_path / "s.yaml", base)
    first = run_experiment(load_config(path), log=lambda _: None)
    assert len(first.ran) == 1
    # The same grid name and folder with another lr: the finished cell is not what the config asks for.
    write_config(path, {**base, "prompt_tuning": {**base["prompt_tuning"], "lr": 2e-2}})
    with pytest.raises(StaleCellError, match=r"config\.lr: 0\.01 in the record, 0\.02 now"):
        run_experiment(load_config(path), log=lambda _: None)
    # Back to the settings it ran with, but written by older code (no cell format): refused too.
    write_config(path, base)
    config = load_config(path)
    record_path = cell_path(config, cells(config)[0])
    record = json.loads(record_path.read_text())
    assert record["cell_format"] == CELL_FORMAT
    assert not run_experiment(config, log=lambda _: None).ran  # unchanged: skipped
    del record["cell_format"]
    record_path.write_text(json.dumps(record))
    with pytest.raises(StaleCellError, match="cell format 1"):
        run_experiment(config, log=lambda _: None)
    # ... and never reused from another grid either.
    other = load_config(write_config(tmp_path / "o.yaml", {**base, "name": "o", "reuse": ["s"]}))
    assert reusable(other, cells(other)[0]) is None


def test_exclude_drops_exactly_the_cells_it_matches(sweep_dir: Path, tmp_path: Path) -> None:
    small, large = str(sweep_dir / "tiny-small"), str(sweep_dir / "tiny-large")
    task = str(sweep_dir / "toy_a" / "toy_a.yaml")
    base = grid(sweep_dir, pairs=[], prompt_lengths=[2], inits=["uniform"], shots=[0], seeds=[0, 1])
    full = cells(load_config(write_config(tmp_path / "full.yaml", base)))
    config = load_config(write_config(tmp_path / "ex.yaml", {**base, "exclude": [
        {"model": large, "method": "model-tuning"}, {"task": task, "seed": 1, "method": "prompt-tuning"}]}))
    kept = cells(config)
    dropped = [c for c in full if c not in kept]
    assert sorted(c.id for c in dropped) == sorted(c.id for c in full if (
        (c.model == large and c.method == "model-tuning") or (c.seed == 1 and c.method == "prompt-tuning")))
    assert dropped and any(c.model == small and c.method == "model-tuning" for c in kept)


def test_threads_flag(sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--threads`` sets the CPU threads of a run without changing a cell: finished cells stay valid."""
    raw = grid(sweep_dir, output=str(tmp_path / "results"), models=[str(sweep_dir / "tiny-small")], pairs=[],
               methods=["prompt-design"], shots=[0], threads=2)
    path = write_config(tmp_path / "t.yaml", raw)
    before = torch.get_num_threads()
    try:
        assert main(["experiment", str(path), "--threads", "0"]) == 2
        assert "--threads must be >= 1" in capsys.readouterr().err
        assert main(["experiment", str(path), "--threads", "1", "--json"]) == 0
        assert torch.get_num_threads() == 1
        assert main(["experiment", str(path), "--json"]) == 0  # the config's own threads: nothing stale, skipped
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["ran"] == 0 and out["skipped"] == 1
    finally:
        torch.set_num_threads(before)
