"""Experiment grids as typed config: models × methods × tasks (or train→eval task pairs) × prompt lengths × inits ×
seeds (× shots), read from YAML and validated before anything trains. :mod:`softprompt.experiments.runner` runs the
cells.

Which cells a grid holds:

- prompt-tuning: every task × prompt length × init × seed;
- peft-prompt-tuning (PEFT's prompt tuning, the peer): the same cells as prompt-tuning, with the grid's
  ``prompt_tuning`` settings; only the inits PEFT has (class-label, text, sampled-vocab: see
  :mod:`softprompt.experiments.baselines.peft_prompt_tuning`), else the grid is refused;
- model-tuning: every task × seed (prompt length and init do not apply);
- prompt-design: every in-domain task × shots (× seed when shots > 0: the seed picks the demonstrations);
  train→eval pairs (domain shift) are for the two tuned methods only;
- prompt transfer (SPoT): every ``transfer`` pair × prompt length × seed, a prompt-tuning cell of the target task
  whose init is ``from:<source task>``: the prompt of the source task's cell at the same model, P and seed (and the
  first init), which comes earlier in the grid and so trains first.

:func:`load_config` checks what is cheap (schema, unknown keys and types, methods, inits, task and model names);
:func:`preflight` what touches the disk (data files, installed models).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from softprompt.core.builtin_models import BUILTIN_MODELS, NO_INSTALL_ENV, auto_install_enabled, fetch, is_installed
from softprompt.experiments.baselines.model_tuning import ModelTuneConfig
from softprompt.experiments.baselines.peft_prompt_tuning import refusals as peft_refusals
from softprompt.experiments.configfile import ConfigError, build
from softprompt.experiments.methods import METHODS, PAPER_METHODS, PROMPT_METHODS
from softprompt.tasks import TaskDataError, get_task
from softprompt.training.initializers import INITS, TRANSFER_PREFIX
from softprompt.training.prompt_tuning import TrainConfig


@dataclass
class TaskPair:
    """Domain shift: train on one task, evaluate on another (the paper's QQP ↔ MRPC)."""

    train_task: str
    eval_task: str


@dataclass
class Transfer:
    """Prompt transfer (SPoT, Vu et al., 2022): the source task's prompt initialises a prompt tuned on the target."""

    source: str
    """a task of the grid's ``tasks``: its prompt-tuning cells train first"""
    target: str
    """the task the transferred prompt is tuned and evaluated on (in-domain)"""


@dataclass
class Variant:
    """A named prompt-tuning recipe beside the grid's own (``prompt_tuning``): its cells are the prompt-tuning cells
    (every task × P × seed, the first init) with ``prompt_tuning`` settings overridden, e.g. ``{reparam: residual}``
    or the paper's ``{lr: 0.3}``; ``models`` limits them to some of the grid's models."""

    name: str
    prompt_tuning: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields to override (not the grid axes prompt_length, init, seed)"""
    models: list[str] | None = None
    """a subset of the grid's models (None: all)"""


@dataclass
class Exclude:
    """Cells to leave out of a grid: every cell matching all the fields given (e.g. model tuning of a model too
    large for memory, or the extra seeds of all but one task)."""

    model: str | None = None
    method: str | None = None
    task: str | None = None
    """the cell's training task"""
    seed: int | None = None
    variant: str | None = None

    def matches(self, cell: Cell) -> bool:
        want = {"model": self.model, "method": self.method, "train_task": self.task, "seed": self.seed,
                "variant": self.variant}
        return all(v is None or getattr(cell, k) == v for k, v in want.items())


@dataclass
class EvalSettings:
    split: str = "validation"
    limit: int | None = 200
    """first N examples of the split (None: all)"""
    batch_size: int = 32
    max_input_tokens: int = 256
    max_new_tokens: int = 32


def _pt_default() -> TrainConfig:
    return TrainConfig(eval_every=0)


def _mt_default() -> ModelTuneConfig:
    return ModelTuneConfig(eval_every=0)


@dataclass
class ExperimentConfig:
    """One grid. Relative paths (output, report_dir, data_dir, task and model files) are from the current folder."""

    name: str
    models: list[str]
    """built-in names, local model folders, .gguf files or hub ids"""
    tasks: list[str] = field(default_factory=list)
    """in-domain tasks: built-in names or .yaml task specs"""
    pairs: list[TaskPair] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)
    """named prompt-tuning recipes run beside the grid's own (residual reparameterisation, the paper's lr, ...)"""
    exclude: list[Exclude] = field(default_factory=list)
    """cells left out: each entry drops the cells matching all its fields"""
    transfer: list[Transfer] = field(default_factory=list)
    """source → target prompt transfer: one prompt-tuning cell per pair × P × seed, initialised from the source
    task's cell (same model, P and seed; the first init)"""
    methods: list[str] = field(default_factory=lambda: list(PAPER_METHODS))
    """any of METHODS (default: the paper's three; ``peft-prompt-tuning`` is the PEFT peer of prompt tuning)"""
    prompt_lengths: list[int] = field(default_factory=lambda: [20])
    """P values; the first is the headline setting of the report"""
    inits: list[str] = field(default_factory=lambda: ["class-label"])
    """prompt initialisations; the first is the headline setting"""
    seeds: list[int] = field(default_factory=lambda: [0])
    shots: list[int] = field(default_factory=lambda: [0])
    """prompt-design demonstrations; the first is the headline setting"""
    prompt_tuning: TrainConfig = field(default_factory=_pt_default)
    """TrainConfig without prompt_length, init and seed (the grid sets them)"""
    model_tuning: ModelTuneConfig = field(default_factory=_mt_default)
    """ModelTuneConfig without seed"""
    eval: EvalSettings = field(default_factory=EvalSettings)
    train_limit: int | None = None
    """first N training examples of each task (None: all)"""
    data_dir: str | None = None
    output: str = "runs"
    """cells go to <output>/<name>/cells/ (the default, ``runs``, is git-ignored: committing a campaign's cells is a
    choice, ``output: results`` or ``softprompt experiment --output results``)"""
    report_dir: str | None = None
    """the report goes to <report_dir>/<name>/ (None: <output>/<name>/report/, beside the cells)"""
    threads: int | None = None
    keep_models: bool = False
    """keep each model-tuning cell's model folder (one full model per cell)"""
    reuse: list[str] = field(default_factory=list)
    """names of other grids under the same ``output``: a cell already finished there with the same settings (method
    config, eval settings, train_limit) is copied instead of trained again"""
    description: str = ""

    @property
    def out_dir(self) -> Path:
        return Path(self.output) / self.name

    @property
    def report_path(self) -> Path:
        return Path(self.report_dir) / self.name if self.report_dir is not None else self.out_dir / "report"


# Grid axes may not be set inside the per-method sections: the grid would silently override them.
AXIS_KEYS = {"prompt_tuning": ("prompt_length", "init", "seed"), "model_tuning": ("seed",)}


def slug(name: str) -> str:
    """A file-name-safe label for a model or task given as a name or a path."""
    p = Path(name)
    base = p.stem if p.suffix in (".yaml", ".yml", ".gguf") else (p.name or name)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-") or "x"


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    model: str
    method: str
    train_task: str
    eval_task: str
    prompt_length: int = 0
    init: str = ""
    seed: int = 0
    shots: int = 0
    variant: str = ""
    """a prompt-tuning cell's recipe: the name of one of the grid's ``variants`` ("" = the grid's own)"""

    @property
    def source_task(self) -> str | None:
        """The task whose prompt initialises this cell (``init`` ``from:<task>``: a transfer cell), else None."""
        return self.init[len(TRANSFER_PREFIX):] if self.init.startswith(TRANSFER_PREFIX) else None

    @property
    def id(self) -> str:
        tasks = slug(self.train_task) if self.train_task == self.eval_task else \
            f"{slug(self.train_task)}-to-{slug(self.eval_task)}"
        parts = [slug(self.model), self.method, tasks]
        if self.method in PROMPT_METHODS:
            source = self.source_task
            parts += [f"P{self.prompt_length}", self.init if source is None else f"from-{slug(source)}"]
            if self.variant:
                parts.append(f"v-{self.variant}")
        if self.method == "prompt-design":
            parts.append(f"k{self.shots}")
        if self.method != "prompt-design" or self.shots:
            parts.append(f"s{self.seed}")
        return "__".join(parts)


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a grid: schema, methods, inits, task names and model names. Cheap: loads no model and reads
    no data."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if isinstance(raw, dict):
        for section, keys in AXIS_KEYS.items():
            fixed = sorted(set(raw.get(section) or {}) & set(keys))
            if fixed:
                raise ConfigError(f"{path}: {section}.{fixed} are grid axes; set them with the top-level lists "
                                  "(prompt_lengths, inits, seeds)")
            if isinstance(raw.get(section), dict):
                # A grid's default is no selection (see softprompt.experiments.runner), also when a section is given.
                raw[section] = {"eval_every": 0, **raw[section]}
    config = build(ExperimentConfig, raw, str(path))
    validate(config, str(path))
    return config


def validate(config: ExperimentConfig, where: str = "config") -> None:
    if not config.models:
        raise ConfigError(f"{where}: models is empty")
    if not config.tasks and not config.pairs:
        raise ConfigError(f"{where}: no tasks and no pairs")
    for name in config.reuse:
        if name == config.name or slug(name) != name:
            raise ConfigError(f"{where}: reuse entry {name!r} must name another grid (its folder under output)")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", config.name):
        raise ConfigError(f"{where}: name {config.name!r} must be a plain file name (letters, digits, . _ -)")
    for key, values, known in (("methods", config.methods, METHODS), ("inits", config.inits, INITS)):
        bad = [v for v in values if v not in known]
        if bad or not values:
            hint = ("; a grid chains a task's prompt into another with `transfer: [{source: A, target: B}]`"
                    if any(v.startswith(TRANSFER_PREFIX) for v in bad) else "")
            raise ConfigError(f"{where}: {key} {bad or values} not in {list(known)}{hint}")
    validate_transfer(config, where)
    validate_variants(config, where)
    validate_excludes(config, where)
    for key in ("prompt_lengths", "seeds", "shots"):
        values = getattr(config, key)
        if not values or any(v < 0 for v in values) or len(set(values)) != len(values):
            raise ConfigError(f"{where}: {key} must be a non-empty list of distinct values >= 0, got {values}")
    if set(PROMPT_METHODS) & set(config.methods) and 0 in config.prompt_lengths:
        raise ConfigError(f"{where}: prompt length 0 is the bare model; use method prompt-design or model-tuning")
    if "text" in config.inits and not config.prompt_tuning.init_text:
        raise ConfigError(f"{where}: init 'text' needs prompt_tuning.init_text")
    if "peft-prompt-tuning" in config.methods:
        # Refused rather than approximated: a PEFT cell named for an init must have been trained from it.
        problems = peft_refusals(config.inits, config.prompt_tuning)
        if problems:
            raise ConfigError(f"{where}: " + "; ".join(problems))
    for name in task_names(config):
        try:
            get_task(name)
        except TaskDataError as err:
            raise ConfigError(f"{where}: {err}") from None
    for name in config.models:
        check_model_name(name, where)
    if config.threads is not None and config.threads < 1:
        raise ConfigError(f"{where}: threads must be >= 1")
    grid = cells(config)
    ids = [c.id for c in grid]
    if len(set(ids)) != len(ids):
        clash = sorted({i for i in ids if ids.count(i) > 1})[0]
        raise ConfigError(f"{where}: two models or tasks share a file label (cell {clash!r}); give their folders "
                          "distinct names")


def validate_transfer(config: ExperimentConfig, where: str) -> None:
    """Every transfer pair's source must be a prompt-tuning task of the grid, so its prompt exists before the target
    trains; checked before anything trains."""
    for i, t in enumerate(config.transfer):
        at = f"{where}: transfer[{i}]"
        if "prompt-tuning" not in config.methods:
            raise ConfigError(f"{at}: prompt transfer needs method prompt-tuning in methods")
        if t.source not in config.tasks:
            raise ConfigError(f"{at}: source {t.source!r} is not one of the grid's tasks {config.tasks}; its "
                              f"prompt-tuning cells are what initialise {t.target!r}")
        if t.source == t.target:
            raise ConfigError(f"{at}: source and target are both {t.source!r}")
    pairs = [(t.source, t.target) for t in config.transfer]
    if len(set(pairs)) != len(pairs):
        raise ConfigError(f"{where}: transfer lists a source → target pair twice")


def validate_variants(config: ExperimentConfig, where: str) -> None:
    """Names are plain and distinct, models are the grid's, and the overrides make a valid TrainConfig."""
    names = [v.name for v in config.variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: two variants share a name")
    known = {f.name for f in fields(TrainConfig)}
    for i, v in enumerate(config.variants):
        at = f"{where}: variants[{i}]"
        if not re.fullmatch(r"[A-Za-z0-9_]+", v.name):
            raise ConfigError(f"{at}: name {v.name!r} must be letters, digits or _")
        if "prompt-tuning" not in config.methods:
            raise ConfigError(f"{at}: a variant is a prompt-tuning recipe; add prompt-tuning to methods")
        bad = sorted(set(v.prompt_tuning) - known)
        axes = sorted(set(v.prompt_tuning) & set(AXIS_KEYS["prompt_tuning"]))
        if bad or axes:
            raise ConfigError(f"{at}: {bad or axes} " + ("are not prompt_tuning settings" if bad else
                              "are grid axes (prompt_lengths, inits, seeds), not a recipe"))
        if not v.prompt_tuning:
            raise ConfigError(f"{at}: prompt_tuning overrides nothing; it would repeat the grid's own cells")
        others = sorted(set(v.models or []) - set(config.models))
        if others or v.models == []:
            raise ConfigError(f"{at}: models {others or v.models} are not a non-empty subset of the grid's models")
        try:
            variant_settings(config, v)
        except (ConfigError, ValueError, TypeError) as err:
            raise ConfigError(f"{at}: {err}") from None


def validate_excludes(config: ExperimentConfig, where: str) -> None:
    """An entry names something of the grid, and drops at least one cell (a typo would otherwise drop nothing)."""
    full = cells(replace(config, exclude=[]))
    for i, e in enumerate(config.exclude):
        at = f"{where}: exclude[{i}]"
        if all(v is None for v in asdict(e).values()):
            raise ConfigError(f"{at}: names no field; it would drop every cell")
        if not any(e.matches(c) for c in full):
            raise ConfigError(f"{at}: {({k: v for k, v in asdict(e).items() if v is not None})} matches no cell of "
                              "the grid")


def variant_settings(config: ExperimentConfig, variant: Variant) -> TrainConfig:
    """The grid's prompt_tuning section with the variant's overrides, type-checked like the section itself."""
    raw = {**json.loads(json.dumps(asdict(config.prompt_tuning))), **variant.prompt_tuning}
    return build(TrainConfig, raw, f"variant {variant.name}")


def task_names(config: ExperimentConfig) -> list[str]:
    names = (list(config.tasks) + [n for p in config.pairs for n in (p.train_task, p.eval_task)]
             + [t.target for t in config.transfer])
    return list(dict.fromkeys(names))


def check_model_name(name: str, where: str) -> None:
    """A model is a built-in name, an existing model folder or .gguf file, or a hub id (``owner/name``)."""
    if name in BUILTIN_MODELS:
        return
    p = Path(name)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ConfigError(f"{where}: model folder {name} has no config.json")
        return
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ConfigError(f"{where}: model file not found: {name}")
        return
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not p.parent.exists():
        return  # a hub id, for online users
    raise ConfigError(f"{where}: unknown model {name!r}: not a built-in ({', '.join(BUILTIN_MODELS)}), a model "
                      "folder, a .gguf file or a hub id")


def cells(config: ExperimentConfig) -> list[Cell]:
    """Every cell of the grid, grouped by model (one backbone load per model)."""
    out: list[Cell] = []
    pairs = [(t, t) for t in config.tasks] + [(p.train_task, p.eval_task) for p in config.pairs]
    for model in config.models:
        for train_task, eval_task in pairs:
            base = Cell(model, "", train_task, eval_task)
            for method in config.methods:
                if method in PROMPT_METHODS:
                    out += [replace(base, method=method, prompt_length=p, init=i, seed=s)
                            for p in config.prompt_lengths for i in config.inits for s in config.seeds]
                elif method == "model-tuning":
                    out += [replace(base, method=method, seed=s) for s in config.seeds]
                elif train_task == eval_task:
                    out += [replace(base, method=method, shots=k, seed=s)
                            for k in config.shots for s in (config.seeds if k else config.seeds[:1])]
        out += [Cell(model, "prompt-tuning", t, t, p, config.inits[0], s, variant=v.name)
                for v in config.variants if v.models is None or model in v.models
                for t in config.tasks for p in config.prompt_lengths for s in config.seeds]
        # After every cell of the model, so each source cell (a task of ``tasks``) precedes its targets.
        out += [Cell(model, "prompt-tuning", t.target, t.target, p, TRANSFER_PREFIX + t.source, s)
                for t in config.transfer for p in config.prompt_lengths for s in config.seeds]
    return [c for c in dict.fromkeys(out) if not any(e.matches(c) for e in config.exclude)]


def select(grid: Sequence[Cell], patterns: Sequence[str]) -> list[Cell]:
    """The cells whose id matches one of ``patterns`` (shell-style, ``*`` and ``?``; case-sensitive), in grid
    order; every cell when there are none. Lets two processes (or machines) share a grid without running the same
    cell: e.g. ``qwen2.5-1.5b__*`` in one and ``smollm2-135m__*`` in the other. A pattern that matches no cell is an
    error, not an empty run: it is almost always a typo."""
    if not patterns:
        return list(grid)
    for pattern in patterns:
        if not any(fnmatchcase(c.id, pattern) for c in grid):
            raise ConfigError(f"--only {pattern!r} matches no cell of the grid (--dry-run lists the cell ids)")
    return [c for c in grid if any(fnmatchcase(c.id, pattern) for pattern in patterns)]


def narrowed(config: ExperimentConfig, grid: Sequence[Cell]) -> ExperimentConfig:
    """``config`` with only the models that ``grid`` (a shard of its cells) uses: a shard installs, and a dry run
    reports missing, only what that shard needs."""
    return replace(config, models=list(dict.fromkeys(c.model for c in grid)))


def source_cell(config: ExperimentConfig, cell: Cell) -> Cell:
    """The cell whose prompt initialises a transfer cell: the source task's, same model, P and seed, first init."""
    source = cell.source_task
    if source is None:
        raise ValueError(f"{cell.id} is not a transfer cell")
    return replace(cell, train_task=source, eval_task=source, init=config.inits[0])


def needed_files(config: ExperimentConfig) -> list[tuple[str, str, Path]]:
    """(task, split, file) for every data file the grid reads."""
    data_dir = Path(config.data_dir) if config.data_dir else None
    need: set[tuple[str, str]] = set()
    for c in cells(config):
        need.add((c.eval_task, config.eval.split))
        if c.method != "prompt-design":
            need.add((c.train_task, "train"))  # selection (eval_every > 0) holds out a slice of it
        elif c.shots:
            need.add((c.eval_task, "train"))
    return [(t, s, get_task(t).split_path(s, data_dir)) for t, s in sorted(need)]


def missing_models(config: ExperimentConfig) -> list[str]:
    """The grid's built-in models that are not installed yet."""
    return [m for m in config.models if m in BUILTIN_MODELS and not is_installed(m)]


def preflight(config: ExperimentConfig, *, check_models: bool = True) -> None:
    """What :func:`load_config` leaves out because it touches the disk: data files and installed models.

    Built-in models not installed yet are installed here, before anything trains, so that a failed install stops the
    grid at once rather than at its second model (``SOFTPROMPT_NO_INSTALL=1``: refused instead).
    ``check_models=False`` (a dry run) checks the data files only: listing a grid's cells needs no model."""
    for task, split, path in needed_files(config):
        if not path.is_file():
            raise TaskDataError(f"task {task!r}, split {split!r}: data file not found: {path}")
    missing = missing_models(config) if check_models else []
    if missing and not auto_install_enabled():
        raise ConfigError(f"built-in model(s) not installed: {missing}; run: softprompt models install "
                          f"{' '.join(missing)} ({NO_INSTALL_ENV}=1 turned off installing them first)")
    for name in missing:
        fetch(name)
