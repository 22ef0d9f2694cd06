"""Running an experiment grid (:mod:`softprompt.experiments.grid`): every cell's result is one JSON file
``<output>/<name>/cells/<cell id>.json`` holding its settings, the model, metrics, seconds, task-specific parameter
count and library versions. A rerun skips every cell whose JSON exists, so an interrupted sweep resumes where it stopped
(a tuned cell also resumes from its own checkpoint).
:mod:`softprompt.experiments.report` turns the cells into a markdown table and plots.

Selection: with ``eval_every: 0`` (the grid default) the last step is kept, trained on the whole train split; with
``eval_every > 0`` the best step is chosen on the selection slice held out from the *train* task's train split
(:mod:`softprompt.tasks.selection`, the one cut ``softprompt train`` makes), never on a split a cell reports. The
cell's record says which (``selection``).

Prompt transfer: a transfer cell (:class:`softprompt.experiments.grid.Transfer`) trains with init ``from:`` its source
cell's prompt file, ``<output>/<name>/prompts/<source cell id>.safetensors``; the source cell comes earlier in the grid,
and a source copied from another grid (``reuse``) brings its prompt file along.

The PEFT peer (``peft-prompt-tuning``, :mod:`softprompt.experiments.baselines.peft_prompt_tuning`): PEFT trains the
prompt with the grid's ``prompt_tuning`` settings and the same seeded batches; the cell evaluates the converted prompt
exactly as a prompt-tuning cell evaluates its own, and records PEFT's version (``peft``) and every step's loss
(``train.losses``).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from softprompt.core.backbone import Backbone, load_backbone
from softprompt.core.bank import PromptBank
from softprompt.core.files import atomic_write
from softprompt.core.prompted import PromptedModel
from softprompt.evaluation.scoring import evaluate
from softprompt.experiments.baselines.model_tuning import ModelTuneConfig, ModelTuneResult, tune_model
from softprompt.experiments.baselines.peft_prompt_tuning import tune_peft_prompt
from softprompt.experiments.baselines.prompt_design import design_prompt
from softprompt.experiments.configfile import ConfigError
from softprompt.experiments.grid import (
    Cell,
    ExperimentConfig,
    cells,
    narrowed,
    preflight,
    select,
    source_cell,
    variant_settings,
)
from softprompt.experiments.methods import count_parameters, task_parameters
from softprompt.experiments.provenance import provenance
from softprompt.tasks import Example, Task, get_task
from softprompt.tasks.selection import SelectionSplit, selection_split
from softprompt.training.initializers import TRANSFER_PREFIX
from softprompt.training.loop import RunFiles, saved_defaults
from softprompt.training.prompt_tuning import AUTO_LR_SCALE, LEGACY_AUTO_LR_SCALE, TrainConfig, train_prompt

__all__ = ["RunSummary", "load_cells", "reusable", "run_cell", "run_experiment"]


# What a cell's record means. Bumped whenever code changes what a cell with the same settings computes (format 2:
# checkpoints selected on a slice held out from train, exact gradient accumulation, lr "auto" resolved per model,
# one row per input for one-token labels); a finished cell of another format is refused, never silently reused.
CELL_FORMAT = 2


@dataclass
class RunSummary:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    """copied from another grid (``reuse``) instead of trained"""
    seconds: float = 0.0


class _Data:
    """Tasks and their examples, read once per sweep."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir) if config.data_dir else None
        self._tasks: dict[str, Task] = {}
        self._examples: dict[tuple[str, str], list[Example]] = {}
        self._cuts: dict[tuple[str, int | None], SelectionSplit] = {}

    def task(self, name: str) -> Task:
        if name not in self._tasks:
            self._tasks[name] = get_task(name)
        return self._tasks[name]

    def examples(self, name: str, split: str, limit: int | None) -> list[Example]:
        key = (name, f"{split}:{limit}")
        if key not in self._examples:
            self._examples[key] = self.task(name).examples(split, self.data_dir, limit=limit)
        return self._examples[key]

    def cut(self, name: str, limit: int | None) -> SelectionSplit:
        """The train split less its selection slice (cut to the grid's train_limit) and the slice (cut to ``limit``)."""
        key = (name, limit)
        if key not in self._cuts:
            self._cuts[key] = selection_split(self.task(name), self.data_dir, limit=limit,
                                              train_limit=self.config.train_limit)
        return self._cuts[key]

    def training(self, name: str, eval_every: int, eval_limit: int | None
                 ) -> tuple[list[Example], list[Example] | None, dict[str, Any]]:
        """(train, selection, what identifies the slice): the whole train split when nothing is selected."""
        if not eval_every:
            return self.examples(name, "train", self.config.train_limit), None, {}
        cut = self.cut(name, eval_limit)
        return cut.train, cut.selection, cut.info


def cell_path(config: ExperimentConfig, cell: Cell) -> Path:
    return config.out_dir / "cells" / f"{cell.id}.json"


def prompt_path(config: ExperimentConfig, cell: Cell) -> Path:
    """A prompt-tuning cell's prompt file (its resume checkpoint lies beside it); a PEFT cell's converted prompt
    (PEFT's adapter folder lies beside it)."""
    return config.out_dir / "prompts" / f"{cell.id}.safetensors"


def model_run_files(config: ExperimentConfig, cell: Cell) -> RunFiles:
    """A model-tuning cell's resume checkpoint, metrics and TensorBoard events, ``models/<cell id>.*`` beside the
    cells (its model folder ``models/<cell id>/`` too, with ``keep_models``). The checkpoint, about 3x the model,
    only resumes the unfinished cell: :func:`run_experiment` deletes it once the cell's record is written."""
    return RunFiles.named(config.out_dir / "models" / cell.id)


def trained_with(config: ExperimentConfig, cell: Cell) -> Cell:
    """The cell whose training ``cell`` shares. A tuned cell evaluated on another task (a ``pairs`` entry) trains
    exactly what its in-domain sibling trains (the same train task, slice, settings and seed): when the grid has that
    sibling, a prompt is trained once, under the sibling's name, and both cells evaluate it; a tuned model is trained
    once per process, kept in memory while its pair cells are still to run (:func:`run_experiment`)."""
    if cell.method not in ("prompt-tuning", "model-tuning") or cell.train_task == cell.eval_task:
        return cell
    sibling = replace(cell, eval_task=cell.train_task)
    return sibling if sibling in cells(config) else cell


def method_settings(config: ExperimentConfig, cell: Cell) -> TrainConfig | ModelTuneConfig | None:
    """The training settings of a tuned cell: the grid's section with the cell's axes filled in (None: prompt
    design, which trains nothing)."""
    if cell.method == "prompt-tuning":
        init = cell.init if cell.source_task is None else \
            TRANSFER_PREFIX + str(prompt_path(config, source_cell(config, cell)))
        base = config.prompt_tuning
        if cell.variant:
            base = variant_settings(config, next(v for v in config.variants if v.name == cell.variant))
        return replace(base, prompt_length=cell.prompt_length, init=init, seed=cell.seed)
    if cell.method == "peft-prompt-tuning":  # the grid's own prompt-tuning recipe, trained by PEFT
        return replace(config.prompt_tuning, prompt_length=cell.prompt_length, init=cell.init, seed=cell.seed)
    if cell.method == "model-tuning":
        return replace(config.model_tuning, seed=cell.seed)
    return None


def method_config(config: ExperimentConfig, cell: Cell) -> dict[str, Any]:
    """What a cell's record stores under ``config``."""
    settings = method_settings(config, cell)
    return asdict(settings) if settings is not None else {"shots": cell.shots, "seed": cell.seed}


def _same_run(config: ExperimentConfig, cell: Cell) -> dict[str, Any]:
    """Everything besides the cell id that decides a cell's result, as JSON would store it."""
    return json.loads(json.dumps({"config": method_config(config, cell), "eval": asdict(config.eval),
                                  "train_limit": config.train_limit}))


def reusable(config: ExperimentConfig, cell: Cell) -> dict[str, Any] | None:
    """A finished record of ``cell`` in one of ``config.reuse``'s grids that ran with the same settings, marked with
    where it came from; None if there is none."""
    found = _reusable_in(config, cell)
    return None if found is None else found[0]


def _reusable_in(config: ExperimentConfig, cell: Cell) -> tuple[dict[str, Any], str] | None:
    """(:func:`reusable`'s record, the grid it was found in)."""
    for name in config.reuse:
        path = Path(config.output) / name / "cells" / f"{cell.id}.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        if not stale_reasons(config, cell, record):
            return {**record, "experiment": config.name, "reused_from": record.get("reused_from", name)}, name
    return None


def stale_reasons(config: ExperimentConfig, cell: Cell, record: dict[str, Any]) -> list[str]:
    """Why a finished record is not what ``cell`` would compute now (empty: it is): another cell format (older
    code), or other settings — the method's config, the eval settings, the train limit."""
    reasons = []
    if record.get("cell_format", 1) != CELL_FORMAT:
        reasons.append(f"cell format {record.get('cell_format', 1)} (this code writes {CELL_FORMAT})")
    want = _same_run(config, cell)
    settings = method_settings(config, cell)
    # A setting a record lacks is newer than the record; its default is the behaviour the cell ran with.
    defaults = json.loads(json.dumps(saved_defaults(settings))) if settings is not None else {}
    stored = record.get("config")
    have = {"config": {**defaults, **stored} if isinstance(stored, dict) else stored,
            "eval": {k: v for k, v in record.get("eval", {}).items() if k != "examples"},
            "train_limit": record.get("train_limit")}
    for part in ("config", "eval"):
        if isinstance(want[part], dict) and isinstance(have[part], dict):
            keys = sorted(k for k in set(want[part]) | set(have[part]) if want[part].get(k) != have[part].get(k))
            reasons += [f"{part}.{k}: {have[part].get(k)!r} in the record, {want[part].get(k)!r} now" for k in keys]
        elif want[part] != have[part]:
            reasons.append(f"{part} differs")
    if want["train_limit"] != have["train_limit"]:
        reasons.append(f"train_limit: {have['train_limit']!r} in the record, {want['train_limit']!r} now")
    # lr "auto" is a rule of the code, not a setting: a record says which scale it ran with.
    if isinstance(settings, TrainConfig) and settings.lr == "auto":
        ran = (record.get("lr_rule") or {}).get("auto_lr_scale", LEGACY_AUTO_LR_SCALE)
        if ran != AUTO_LR_SCALE:
            reasons.append(f"lr auto: {ran} x the embedding std in the record, {AUTO_LR_SCALE} now")
    return reasons


class StaleCellError(RuntimeError):
    """A finished cell's record was computed with other settings or older code than the grid's now."""


def run_cell(config: ExperimentConfig, cell: Cell, backbone: Backbone, data: _Data, *, progress: bool = False,
             tuned_models: dict[str, ModelTuneResult] | None = None) -> dict[str, Any]:
    """Train (when the method trains) and evaluate one cell; returns its result record.

    ``tuned_models``: model-tuning results by cell id. A model-tuning pair cell whose in-domain sibling is in it
    evaluates that model instead of training the same one again; a cell that trains adds its own result to it (the
    caller drops what no later cell needs)."""
    train_task, eval_task = data.task(cell.train_task), data.task(cell.eval_task)
    ev = config.eval
    eval_examples = data.examples(cell.eval_task, ev.split, ev.limit)
    n_params = count_parameters(backbone.model)
    t0 = time.perf_counter()
    instruction = ""
    extra: dict[str, Any] = {}
    train_metrics: dict[str, Any] = {}
    selection_info: dict[str, Any] = {}
    resumed_from = 0  # a resumed cell's train_seconds cover only the steps this process ran: it says from which
    tuned: Backbone | None = None
    settings = method_settings(config, cell)
    if cell.method == "peft-prompt-tuning" and isinstance(settings, TrainConfig):
        train, selection, selection_info = data.training(cell.train_task, settings.eval_every, settings.eval_limit)
        # Its resume checkpoint lies beside the cells, as a prompt-tuning cell's: a killed cell continues where it was.
        peer = tune_peft_prompt(backbone, train_task, train, settings, prompt_path(config, cell),
                                selection=selection, resume=True, progress=progress)
        pm = PromptedModel(backbone, PromptBank(peer.prompt.unsqueeze(0)))
        train_metrics = {**peer.metrics, "losses": peer.losses, "history": peer.history}
        extra = {"loss_first": peer.losses[0], "loss_last": peer.losses[-1], "peft": peer.peft}
        resumed_from = peer.resumed_from_step
    elif isinstance(settings, TrainConfig):
        tc = settings
        train, selection, selection_info = data.training(cell.train_task, tc.eval_every, tc.eval_limit)
        if cell.source_task is not None:
            source = source_cell(config, cell)
            if not prompt_path(config, source).is_file():
                raise FileNotFoundError(f"{cell.id}: the prompt of its source cell {source.id} is missing "
                                        f"({prompt_path(config, source)}); delete {cell_path(config, source)} to "
                                        "train the source again")
        # The prompt file and its resume checkpoint live beside the cells: a killed cell continues where it was, and
        # a cell whose in-domain sibling trained the same prompt resumes from its finished checkpoint (no step).
        owner = trained_with(config, cell)
        result = train_prompt(backbone, train_task, train, tc, prompt_path(config, owner), selection=selection,
                              selection_info=selection_info, resume=True, progress=progress)
        if owner != cell:
            extra = {"prompt_trained_by": owner.id}
        pm = PromptedModel(backbone, PromptBank(result.prompt.unsqueeze(0)))
        # The selection scores of every eval, so a record shows why its step was kept (empty: nothing selected).
        train_metrics = {**result.metrics, "history": result.state.history}
        resumed_from = result.resumed_from_step
    elif isinstance(settings, ModelTuneConfig):
        mc = settings
        train, selection, selection_info = data.training(cell.train_task, mc.eval_every, mc.eval_limit)
        owner = trained_with(config, cell)
        mt = (tuned_models or {}).get(owner.id) if owner != cell else None
        shared = mt is not None
        if shared:
            extra["model_trained_by"] = owner.id
        else:
            out = config.out_dir / "models" / cell.id if config.keep_models else None
            # Its resume checkpoint lies beside the cells, kept model folder or not: a killed cell continues where it
            # was (a model-tuning cell is the longest of a grid's), and the checkpoint goes once the record is written.
            mt = tune_model(backbone, train_task, train, mc, out, selection=selection, selection_info=selection_info,
                            resume=True, progress=progress, run_files=model_run_files(config, cell))
            if tuned_models is not None:
                tuned_models[cell.id] = mt
        tuned = mt.backbone
        pm = PromptedModel(tuned, PromptBank(torch.zeros(1, 0, tuned.hidden_size)))
        train_metrics = {**mt.metrics, "history": mt.history}
        # a shared model went on from its sibling's last step, as a shared prompt resumes from its last checkpoint
        resumed_from = mt.metrics["steps"] if shared else mt.resumed_from_step
        extra.update(loss_first=mt.losses[0], loss_last=mt.losses[-1])
    else:
        pool = data.examples(cell.eval_task, "train", config.train_limit) if cell.shots else []
        design = design_prompt(eval_task, backbone.tokenizer, eval_examples, shots=cell.shots, pool=pool,
                               seed=cell.seed, max_input_tokens=ev.max_input_tokens)
        pm = PromptedModel(backbone, PromptBank(torch.zeros(1, 0, backbone.hidden_size)))
        instruction = design.prefix
        extra = {"shots_used": design.shots}
    train_seconds = time.perf_counter() - t0
    metrics, _ = evaluate(pm, eval_task, eval_examples, batch_size=ev.batch_size, instruction=instruction,
                          max_input_tokens=ev.max_input_tokens, max_new_tokens=ev.max_new_tokens)
    del tuned, pm  # a model-tuned copy is a whole model: free it before the next cell
    return {
        "id": cell.id,
        "experiment": config.name,
        "cell": asdict(cell),
        "model": {"name": cell.model, "type": backbone.model_type, "parameters": n_params,
                  "hidden_size": backbone.hidden_size},
        "method": cell.method,
        "train_task": cell.train_task,
        "eval_task": cell.eval_task,
        "metric": eval_task.primary_metric,
        "score": metrics[eval_task.primary_metric],
        "metrics": metrics,
        "eval": {**asdict(ev), "examples": len(eval_examples)},
        "trainable_params": task_parameters(cell.method, model_parameters=n_params,
                                            hidden_size=backbone.hidden_size, prompt_length=cell.prompt_length),
        "train": train_metrics,
        "selection": selection_info,
        "config": method_config(config, cell),
        "train_limit": config.train_limit,
        **({"lr_rule": {"auto_lr_scale": AUTO_LR_SCALE}}
           if isinstance(settings, TrainConfig) and settings.lr == "auto" else {}),
        "seconds": round(time.perf_counter() - t0, 2),
        "train_seconds": round(train_seconds, 2),
        **({"resumed_from_step": resumed_from} if resumed_from else {}),
        **extra,
        **provenance(),
        "cell_format": CELL_FORMAT,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _write_record(config: ExperimentConfig, cell: Cell, record: dict[str, Any]) -> None:
    # Written last and atomically: a cell's JSON exists only once the cell is complete.
    atomic_write(cell_path(config, cell),
                 lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n"))


def run_experiment(config: ExperimentConfig, *, progress: bool = False, only: Sequence[str] = (),
                   log: Callable[[str], None] | None = None,
                   load: Callable[[str], Backbone] = load_backbone) -> RunSummary:
    """Run every cell whose JSON does not exist yet; returns which cells ran and which were skipped.

    ``only``: run just the cells whose id matches one of these patterns (:func:`~softprompt.experiments.grid.select`);
    the finished cells of the whole grid are still checked for staleness, and a selected transfer cell needs its
    source cell selected or finished, so that nothing fails half-way through."""
    everything = cells(config)
    grid = select(everything, only)
    for cell in grid:
        if cell.source_task is not None:
            source = source_cell(config, cell)
            if source not in grid and not cell_path(config, source).is_file():
                raise ConfigError(f"--only selects {cell.id}, whose prompt starts from {source.id}: that cell is "
                                  "neither finished nor selected; select it too")
    preflight(narrowed(config, grid))
    if config.threads:
        torch.set_num_threads(config.threads)
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    summary = RunSummary()
    t0 = time.perf_counter()
    data = _Data(config)
    stale = {c.id: why for c in everything if cell_path(config, c).is_file()
             and (why := stale_reasons(config, c, json.loads(cell_path(config, c).read_text())))}
    if stale:
        first, why = next(iter(stale.items()))
        raise StaleCellError(
            f"{len(stale)} finished cell(s) in {config.out_dir / 'cells'} were computed with other settings or "
            f"older code than {config.name!r} gives now, e.g. {first}: {'; '.join(why[:3])}. A finished cell is "
            "never silently reused: delete those cell files to compute them again, or give the grid another name "
            "or output folder")
    for model in dict.fromkeys(c.model for c in grid):
        todo = [c for c in grid if c.model == model and not cell_path(config, c).is_file()]
        summary.skipped += [c.id for c in grid if c.model == model and c not in todo]
        for cell in list(todo):
            found = _reusable_in(config, cell)
            if found is not None:
                record, source_grid = found
                # A prompt-tuning cell's prompt comes along: a transfer cell of this grid may start from it.
                other = Path(config.output) / source_grid / "prompts" / f"{cell.id}.safetensors"
                if other.is_file():
                    atomic_write(prompt_path(config, cell), lambda tmp, src=other: shutil.copyfile(src, tmp))
                _write_record(config, cell, record)
                summary.reused.append(cell.id)
                todo.remove(cell)
                say(f"    {cell.id}: reused from {record['reused_from']}")
        if not todo:
            continue
        backbone = load(model)
        # A tuned model is a whole model's memory: it is kept only while a pair cell still to run evaluates it.
        tuned_models: dict[str, ModelTuneResult] = {}
        owners = [trained_with(config, c).id for c in todo]  # once: each call expands the grid
        for i, cell in enumerate(todo):
            say(f"[{len(summary.ran) + len(summary.skipped) + 1}/{len(grid)}] {cell.id} ...")
            record = run_cell(config, cell, backbone, data, progress=progress, tuned_models=tuned_models)
            _write_record(config, cell, record)
            if cell.method == "model-tuning":
                model_run_files(config, cell).checkpoint.unlink(missing_ok=True)
            summary.ran.append(cell.id)
            say(f"    {record['metric']} {record['score']:.4f} ({record['seconds']:.1f} s)")
            tuned_models = {k: v for k, v in tuned_models.items() if k in owners[i + 1:]}
        del backbone, tuned_models
    summary.seconds = time.perf_counter() - t0
    return summary


def load_cells(config: ExperimentConfig) -> list[dict[str, Any]]:
    """The results of the grid's cells that exist (in grid order)."""
    out = []
    for c in cells(config):
        path = cell_path(config, c)
        if path.is_file():
            out.append(json.loads(path.read_text()))
    return out
