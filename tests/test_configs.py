"""Every shipped experiment config (configs/*.yaml) loads, validates, lists its grid in ``--dry-run``, and runs.

A config that cannot run is a failure here. The run is the config's own grid cut to one cell of each kind it has
(every model and method; the first task, train→eval pair and transfer; the first value of every other axis), with
this substitution, and nothing else changed:

- each built-in model → a tiny random model of the same architecture in a folder of the same name, so the cell ids
  are the config's own (llama for smollm2-135m, gemma3 for gemma3-270m, ...);
- each task → the toy task (tests/toytask.py) in a spec file of the same name;
- budgets → tiny: 2 training steps of 2 rows, the first 4 evaluation examples, the first 8 training examples,
  one thread, output and report in a temporary folder.

The method settings (optimizer, learning rate, reparameterisation, input length, ...) stay the config's.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from softprompt.cli import main
from softprompt.core.builtin_models import BUILTIN_MODELS
from softprompt.core.tiny import save_tiny
from softprompt.experiments.configfile import build
from softprompt.experiments.grid import Exclude, ExperimentConfig, TaskPair, cells, load_config, task_names, validate
from softprompt.tasks import TASKS
from tests.conftest import DATA_DIR
from tests.toytask import write_task

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
TINY_BUDGET = {"steps": 2, "batch_size": 2}


def test_configs_are_shipped() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"paper_small", "ablation_length", "ablation_init", "domain_shift"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates(path: Path) -> None:
    config = build(ExperimentConfig, yaml.safe_load(path.read_text()), str(path))  # the schema, always
    assert config.name == path.stem
    missing = [t for t in task_names(config) if t not in TASKS]
    if not missing:
        config = load_config(path)
    else:
        # Tasks of the full suite land in the registry on another branch; check everything else now.
        known = [t for t in config.tasks if t in TASKS]
        pairs = [p for p in config.pairs if p.train_task in TASKS and p.eval_task in TASKS]
        validate(replace(config, tasks=known or ["sst2"], pairs=pairs or [TaskPair("sst2", "rte")]), str(path))
    assert cells(config)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_dry_run_lists_its_grid(path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """``softprompt experiment CONFIG --dry-run``: every data file the grid reads is found (no model is needed)."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"data root {DATA_DIR} not found")
    monkeypatch.setenv("SOFTPROMPT_DATA_DIR", str(DATA_DIR))
    assert main(["experiment", str(path), "--dry-run"]) == 0
    listed = capsys.readouterr().out.split()
    assert listed == [c.id for c in cells(load_config(path))]


def one_cell_each(raw: dict, root: Path) -> dict:
    """The config's grid cut to one cell of each kind, on tiny models and the toy task (see the module docstring)."""
    out = dict(raw)
    models: dict[str, Path] = {}
    for name in raw["models"]:
        family = BUILTIN_MODELS[name].architecture if name in BUILTIN_MODELS else "llama"
        models[name] = save_tiny(family, root / "models" / name)
    tasks: dict[str, str] = {}

    def toy(name: str) -> str:
        if name not in tasks:
            tasks[name] = str(write_task(root / "tasks" / name, 8, validation=4))
        return tasks[name]

    transfer = raw.get("transfer") or []
    pairs = raw.get("pairs") or []
    out["models"] = [str(models[m]) for m in models]
    firsts = raw.get("tasks", [])[:1] + ([transfer[0]["source"]] if transfer else [])
    out["tasks"] = [toy(t) for t in dict.fromkeys(firsts)]
    out["pairs"] = [{"train_task": toy(p["train_task"]), "eval_task": toy(p["eval_task"])} for p in pairs[:1]]
    out["transfer"] = [{"source": toy(t["source"]), "target": toy(t["target"])} for t in transfer[:1]]
    for axis in ("prompt_lengths", "inits", "seeds", "shots"):
        if axis in raw:
            out[axis] = raw[axis][:1]
    for section in ("prompt_tuning", "model_tuning"):
        out[section] = {**(raw.get(section) or {}), **TINY_BUDGET}
    out["eval"] = {**(raw.get("eval") or {}), "limit": 4, "batch_size": 4}
    out.update(train_limit=8, threads=1, output=str(root / "results"), report_dir=str(root / "docs"), reuse=[],
               data_dir=None)
    # Every variant, on the tiny stand-ins of its models; the exclude entries that still match a cell of the cut grid.
    out["variants"] = [{**v, **({"models": [str(models[m]) for m in v["models"]]} if v.get("models") else {})}
                       for v in raw.get("variants") or []]
    renamed = [{**e, **({"model": str(models[e["model"]])} if "model" in e else {}),
                **({"task": tasks[e["task"]]} if "task" in e else {})}
               for e in raw.get("exclude") or [] if e.get("task") is None or e["task"] in tasks]
    full = cells(build(ExperimentConfig, {**out, "exclude": []}, "cut"))
    out["exclude"] = [e for e in renamed if any(build(Exclude, e, "exclude").matches(c) for c in full)]
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_runs_one_cell_of_each_kind(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``softprompt experiment CONFIG`` (the run and its report) on the config's own settings, cut to tiny sizes."""
    raw = yaml.safe_load(path.read_text())
    small = tmp_path / path.name
    small.write_text(yaml.safe_dump(one_cell_each(raw, tmp_path), sort_keys=False))
    config = load_config(small)
    methods = {c.method for c in cells(config)}
    assert methods == set(raw.get("methods", methods))  # every method of the config has a cell
    assert main(["experiment", str(small), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ran"] == len(cells(config)) and result["skipped"] == 0
    assert Path(result["report"]).is_file()
    # The cut grid's cell ids are the shipped grid's own (same model and task labels).
    assert {c.id for c in cells(config)} <= {c.id for c in cells(build(ExperimentConfig, raw, str(path)))}
