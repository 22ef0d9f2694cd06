"""The results page, ``docs/results.md``, from the repository's stored records alone (``softprompt report``).

Nothing here measures anything or reads a data set; every number on the page is formatted from one of these
committed records (paths from the repository root):

- ``results/<grid>/cells/*.json``: experiment cells (``softprompt experiment``), one section per grid of
  :data:`GRIDS`, each listing the settings its cells recorded;
- ``results/sst2_<model>.json``: the SST-2 headline measured by the script that ``configs/sst2.yaml`` replaced;
- ``results/majority.json``: the majority floor of every (task, split, limit) the grids evaluate, measured from the
  data sets by ``softprompt report --floors`` (:func:`softprompt.experiments.records.measure_floors`), the one step
  that reads data;
- ``docs/data/ensembles/``: ensemble results (``softprompt ensemble --out``), the prompts' ``train --json`` lines and
  the nearest-token JSON; ``results/ensembles_cpu/*.safetensors``: the ensemble's prompt files (their settings);
- ``bench/results/*.json``: the benchmarks, listed with the documents that read them.

The records are read by :mod:`softprompt.experiments.records`; the ensemble tables are
:mod:`softprompt.experiments.ensemblepage`'s.

The prose readings are a person's, kept as files beside the records and included as they are:
``docs/data/results/reading.md`` and ``docs/data/ensembles/reading.md``. ``tests/test_resultspage.py`` regenerates the
page from the committed records and compares it with the committed page byte for byte.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from softprompt.core.files import atomic_write
from softprompt.experiments.campaignpage import campaign_section, draw_figure
from softprompt.experiments.ensemblepage import ensemble_chose_nothing, ensemble_runs, ensembles_section
from softprompt.experiments.grid import load_config, slug
from softprompt.experiments.records import COMMAND, Records, fmt, pct_or_blank, run_command, values
from softprompt.experiments.report import checkpoint_line
from softprompt.training.loop import FIRST_DEFAULTS

__all__ = ["GRIDS", "MAIN_JOB", "PAGE", "render", "write_page"]

PAGE = Path("docs") / "results.md"
MAIN_JOB = "sst2"
"""the grid of ``configs/sst2.yaml``, the README's first command, when its cells are committed (``--output results``)"""
GRIDS = ("paper_cpu", "ablation_length_cpu", "ablation_init_cpu", "pt_budget_cpu", "pt_budget_gemma_cpu",
         "domain_shift_cpu")
"""the committed grids the page reads, in the order of their sections"""
METHODS = ("prompt-design", "prompt-tuning", "model-tuning")
SHORT = {"prompt-design": "PD", "prompt-tuning": "PT", "model-tuning": "MT"}


def settings_line(cells: list[dict[str, Any]]) -> str:
    """The settings the cells recorded (models, each method's budget, inputs, evaluated examples, threads)."""
    by_size = sorted(cells, key=lambda c: c["model"]["parameters"])
    parts = ["models " + ", ".join(dict.fromkeys(slug(c["cell"]["model"]) for c in by_size))]
    by = {m: [c for c in cells if c["method"] == m] for m in METHODS}
    if by["prompt-design"]:
        shots = {c["cell"]["shots"] for c in by["prompt-design"]}
        parts.append("prompt design " + ("zero-shot" if shots == {0} else f"{values(shots)}-shot"))
    for method in ("prompt-tuning", "model-tuning"):
        rs = by[method]
        if not rs:
            continue
        cfg = [r["config"] for r in rs]
        what = f"P = {values(r['cell']['prompt_length'] for r in rs)}, {values(r['cell']['init'] for r in rs)} " \
               "init, " if method == "prompt-tuning" else ""
        # A record without a schedule ran a constant step size (FIRST_DEFAULTS).
        schedules = values(c.get("schedule", FIRST_DEFAULTS["schedule"]) for c in cfg)
        parts.append(f"{method.replace('-', ' ')} {what}{values(c['optimizer'] for c in cfg)} lr "
                     f"{values(c['lr'] for c in cfg)} ({schedules}), {values(c['steps'] for c in cfg)} steps of batch "
                     f"{values(c['batch_size'] for c in cfg)}")
    tokens = [c["eval"]["max_input_tokens"] for c in cells] + \
        [c["config"]["max_input_tokens"] for c in cells if "max_input_tokens" in c["config"]]
    parts.append(f"inputs cut to their last {values(tokens)} tokens")
    limits = {c["eval"]["limit"] for c in cells}
    split = values(c["eval"]["split"] for c in cells)
    parts.append(f"all {split} examples" if limits == {None} else
                 f"first {values(x for x in limits if x is not None)} {split} examples per task")
    threads = {c["machine"]["threads"] for c in cells}
    parts.append(f"{values(threads)} CPU thread{'' if threads == {1} else 's'}")
    reused = Counter(c["reused_from"] for c in cells if c.get("reused_from"))
    parts += [f"{n} of the cells copied from `{grid}` (same settings, not trained again)" for grid, n in reused.items()]
    return "Settings, as the cells recorded them: " + "; ".join(parts) + "."


def selection_kind(cell: dict[str, Any]) -> str:
    """How a cell's checkpoint was chosen: "none" (the last step), "train slice", or "reported split" (selected on
    the first examples of the very split it reports: grids before softprompt.tasks.selection with eval_every > 0)."""
    if cell["method"] not in ("prompt-tuning", "model-tuning"):
        return "none"
    if cell.get("selection"):
        return "train slice" if cell["selection"].get("split") == "train" else "reported split"
    every, steps = cell["config"].get("eval_every", 0), cell["config"].get("steps", 0)
    if "selection" in cell or not 0 < every < steps:
        return "none"
    # Before the slice existed a grid selected on the *train* task's validation split: the reported one in-domain.
    in_domain = cell["cell"]["train_task"] == cell["cell"]["eval_task"]
    return "reported split" if in_domain and cell["eval"]["split"] == "validation" else "train task's validation"


def mark(cell: dict[str, Any]) -> str:
    """A dagger after a score whose checkpoint was selected on the examples it is scored on."""
    return "†" if selection_kind(cell) == "reported split" else ""


def selection_line(cells: list[dict[str, Any]]) -> str:
    """One sentence: how the tuned cells of a table chose their checkpoint (the page's selection rule)."""
    tuned = [c for c in cells if c["method"] in ("prompt-tuning", "model-tuning")]
    if not tuned:
        return ""
    counts = Counter(selection_kind(c) for c in tuned)
    words = {"none": "no selection (`eval_every: 0`: the last step is kept)",
             "train slice": "selected on the slice held out from train",
             "reported split": "**selected on the split they report (marked †; not a held-out score)**",
             "train task's validation": "selected on the train task's validation split"}
    parts = [f"{words[k]}: {n} of {len(tuned)}" for k, n in counts.most_common()]
    return "Checkpoint selection of the tuned cells: " + "; ".join(parts) + "."


def score_of(cells: list[dict[str, Any]], model: str, method: str, train_task: str, eval_task: str) -> str:
    hits = [c for c in cells if c["cell"]["model"] == model and c["method"] == method
            and c["cell"]["train_task"] == train_task and c["cell"]["eval_task"] == eval_task]
    return f"{100 * hits[0]['score']:.1f}{mark(hits[0])}" if hits else ""


def _report_link(rec: Records, name: str) -> str:
    return f"[`docs/results/{name}/`](results/{name}/README.md)"


def _image(rec: Records, name: str, png: str, title: str) -> list[str]:
    path = f"results/{name}/{png}"
    return ["", f"![{title}]({path})"] if (rec.root / "docs" / path).is_file() else []


def _provenance(r: dict[str, Any]) -> str:
    v, git = r.get("versions", {}), r.get("git") or {}
    code = f"; code {git['commit'][:12]}{' with uncommitted changes' if git.get('dirty') else ''}" if git else ""
    return f"torch {v.get('torch')}, transformers {v.get('transformers')}{code}"


# --------------------------------------------------------------------------------------------------------- sections


def main_job_section(rec: Records) -> list[str]:
    """The main job's cells (``configs/sst2.yaml`` run with ``--output results``): prompt design vs prompt tuning."""
    cells = [c for c in rec.cells(MAIN_JOB) if c["cell"]["train_task"] == c["cell"]["eval_task"]]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        groups[(c["cell"]["model"], c["cell"]["eval_task"])].append(c)
    lines: list[str] = []
    for (model_name, task_name), group in groups.items():
        model, task = slug(model_name), slug(task_name)
        first = group[0]
        ev = first["eval"]
        which = "all" if ev["limit"] is None else "the first"
        lines += [f"## {task} on `{model}`: prompt design vs prompt tuning (`configs/{MAIN_JOB}.yaml`)", "",
                  settings_line(group), "",
                  f"{first['metric'].capitalize()} on {which} {ev['examples']} {task} {ev['split']} examples.", "",
                  f"| method | what the model sees | {first['metric']} |", "|---|---|---|"]
        for c in group:
            if c["method"] == "prompt-design":
                shots = c["cell"]["shots"]
                lines.append(f"| prompt design ({f'{shots}-shot' if shots else 'zero-shot'}) | the task's "
                             f"hand-written instruction + input | {c['score']:.4f} |")
        for c in group:
            if c["method"] == "prompt-tuning":
                lines.append(f"| prompt tuning | {c['cell']['prompt_length']} learned vectors + input | "
                             f"{c['score']:.4f} |")
        lines.append("")
        for c in group:
            if c["method"] == "prompt-tuning":
                lines += [f"Prompt tuning's {checkpoint_line(c)}. {c['train_seconds']:.0f} s of training (with its "
                          f"selection evals) and {c['seconds'] - c['train_seconds']:.0f} s of evaluation on "
                          f"{c['machine']['threads']} CPU threads; {_provenance(c)}.", ""]
        lines += [f"Reproduce: `{run_command(MAIN_JOB)} && {COMMAND}`; the cells: `results/{MAIN_JOB}/cells/`.", ""]
    return lines


def sst2_selection(t: dict[str, Any]) -> str:
    """Where the legacy SST-2 run's checkpoint was chosen, from its record."""
    if "selection_slice" in t:
        return ("the selection slice held out from train (`softprompt.tasks.selection`), disjoint from the "
                "validation set reported here")
    return ("the last lines of the train file, held out by hand (before `softprompt.tasks.selection`), disjoint "
            "from the validation set reported here")


def _same_budget(rec: Records, t: dict[str, Any]) -> bool:
    """Whether ``configs/sst2.yaml`` runs the legacy record's training budget (what its section may then say)."""
    import yaml

    path = rec.root / "configs" / f"{MAIN_JOB}.yaml"
    if not path.is_file():
        return False
    raw = yaml.safe_load(path.read_text())
    pt = raw.get("prompt_tuning") or {}
    return (pt.get("steps"), pt.get("batch_size"), (raw.get("prompt_lengths") or [None])[0],
            (raw.get("inits") or [None])[0], pt.get("optimizer"), pt.get("lr")) == \
        (t["steps"], t["batch_size"], t["prompt_length"], t["init"], t["optimizer"], t["lr"])


def sst2_section(rec: Records, path: Path) -> list[str]:
    """The SST-2 headline of the script that preceded ``configs/sst2.yaml`` (its own record schema)."""
    r = json.loads(path.read_text())
    t = r["train"]
    now = (f" The README's first command, `softprompt experiment configs/{MAIN_JOB}.yaml`, now runs this budget."
           if _same_budget(rec, t) else "")
    return [
        f"## SST-2 on `{r['model']}`: prompt design vs prompt tuning",
        "",
        f"Validation accuracy on all {r['examples']} SST-2 validation examples (rank classification over "
        '" positive" / " negative").',
        "",
        "| method | what the model sees | accuracy |",
        "|---|---|---|",
        f"| prompt design (zero-shot) | the task's hand-written instruction + input | {r['before']['accuracy']:.4f} |",
        f"| prompt tuning | {t['prompt_length']} learned vectors + input | {r['after']['accuracy']:.4f} |",
        "",
        f"Training: {t['steps']} steps × batch {t['batch_size']}, P = {t['prompt_length']}, init `{t['init']}`, "
        f"{t['optimizer']} lr {t['lr']}; checkpoint: {t['selection']} (best at step "
        f"{t.get('best_step')}). {t['seconds']:.0f} s of training ({t['seconds_per_step']} s/step) on "
        f"{r['machine']['torch_threads']} CPU threads; torch {r['versions']['torch']}, transformers "
        f"{r['versions']['transformers']}.",
        "",
        "Selection-set accuracy during training: "
        + ", ".join(f"step {h['step']}: {h['accuracy']:.3f}" for h in t.get("history", []))
        + f". Selection: {sst2_selection(t)}.",
        "",
        f"Record: `{path.relative_to(rec.root)}`, written by `{r['command']}` (a script since replaced).{now}",
        "",
    ]


def comparison_section(rec: Records, name: str) -> list[str]:
    """Tasks × (model, method) at the grid's headline settings, with per-model averages and the PT − MT gap."""
    cells = [c for c in rec.cells(name) if c["cell"]["train_task"] == c["cell"]["eval_task"]]
    if not cells:
        return []
    models = list(dict.fromkeys(c["cell"]["model"] for c in sorted(cells, key=lambda c: c["model"]["parameters"])))
    tasks = list(dict.fromkeys(c["cell"]["eval_task"] for c in cells))
    key = {(c["cell"]["model"], c["cell"]["eval_task"], c["method"]): c for c in cells}
    score = {k: 100 * c["score"] for k, c in key.items()}
    floors = {t: rec.cell_floor(next(c for c in cells if c["cell"]["eval_task"] == t)) for t in tasks}
    head = [f"{m} {SHORT[k]}" for m in models for k in METHODS] + ["majority"]
    lines = [f"## Prompt tuning vs model tuning vs prompt design (`configs/{name}.yaml`)", "",
             settings_line(cells), "",
             "Score: each task's primary metric (accuracy; CB: accuracy, its macro-F1 is in the cell JSON) on the "
             "first validation examples, ×100. PD = zero-shot prompt design, PT = prompt tuning, MT = model tuning. "
             "Majority: always answering the evaluated examples' most common label (COPA: a coin flip between its "
             "two choices), the floor a score must clear to show the task was learned. A blank: that cell has not "
             "run. " + selection_line(cells), "",
             "| task | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for t in tasks:
        row = [f"{score[m, t, k]:.1f}{mark(key[m, t, k])}" if (m, t, k) in score else "" for m in models
               for k in METHODS]
        lines.append(f"| {t} | " + " | ".join(row) + f" | {pct_or_blank(floors[t])} |")
    averages, complete = [], []
    for m in models:
        done = [t for t in tasks if all((m, t, k) in score for k in METHODS)]
        complete.append((m, done))
        for k in METHODS:
            averages.append(f"{sum(score[m, t, k] for t in done) / len(done):.1f}" if done else "")
    known = [f for f in floors.values() if f is not None]
    floor = f"{sum(known) / len(known):.1f}" if known and len(known) == len(floors) else ""
    lines += ["| **average** (tasks with all three) | " + " | ".join(averages) + f" | {floor} |", ""]
    for m, done in complete:
        if done:
            mean = {k: sum(score[m, t, k] for t in done) / len(done) for k in METHODS}
            pt = mean["prompt-tuning"]
            lines.append(f"- `{m}` ({len(done)} tasks): PT − PD = {pt - mean['prompt-design']:+.1f}, "
                         f"PT − MT = {pt - mean['model-tuning']:+.1f} points.")
    lines.append("")
    for m in models:
        above = {k: [t for t in tasks if (m, t, k) in score and (f := floors[t]) is not None and score[m, t, k] > f]
                 for k in METHODS}
        lines.append(f"- `{m}` above the majority floor: " + "; ".join(
            f"{SHORT[k]} on {len(v)} of {len(tasks)} ({', '.join(v) or 'none'})" for k, v in above.items()) + ".")
    lines += _image(rec, name, "score_vs_size.png", f"Score vs model size, {name}")
    lines += ["", f"Every cell with its settings, parameters and time, and the Figure-1 plot: "
              f"[`docs/results/{name}/README.md`](results/{name}/README.md). Reproduce: `{run_command(name)} && "
              f"{run_command(name)} --report && {COMMAND}`.", ""]
    return lines


def ablation_section(rec: Records, name: str, axis: str, title: str) -> list[str]:
    """One ablation line; a point copied from another grid (the config's ``reuse``) says where it came from."""
    cells = rec.cells(name)
    if not cells:
        return []
    lines = [f"## {title} (`configs/{name}.yaml`)", "", settings_line(cells), "", selection_line(cells), "",
             f"| model | task | {axis.replace('_', ' ')} | score | trained in |", "|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c["cell"]["model"], c["cell"]["eval_task"], c["cell"][axis])):
        cell = c["cell"]
        lines.append(f"| {cell['model']} | {cell['eval_task']} | {cell[axis]} | {100 * c['score']:.1f}{mark(c)} | "
                     f"`{c.get('reused_from', name)}` |")
    lines += _image(rec, name, f"{'prompt_length' if axis == 'prompt_length' else 'init'}.png", title)
    lines += ["", f"Reproduce: `{run_command(name)} && {run_command(name)} --report && {COMMAND}`; every cell in "
              f"{_report_link(rec, name)}.", ""]
    return lines


def _budget(cells: list[dict[str, Any]], method: str) -> tuple[str, str]:
    """(steps, lr) of a method's cells, as recorded."""
    rs = [c for c in cells if c["method"] == method]
    return values(c["config"]["steps"] for c in rs), values(c["config"]["lr"] for c in rs)


def budget_section(rec: Records, names: list[str], reference: str = "paper_cpu") -> list[str]:
    """Prompt tuning at a longer budget (one grid per model: each has its own lr), read against ``reference``'s
    prompt design, short prompt tuning and model tuning on the same tasks."""
    from softprompt.training.prompt_tuning import RECIPES

    grids = [(name, [c for c in rec.cells(name) if c["method"] == "prompt-tuning"]) for name in names]
    grids = [(name, cells) for name, cells in grids if cells]
    if not grids:
        return []
    ref = rec.cells(reference)
    pt_steps, pt_lr = _budget(ref, "prompt-tuning")
    mt_steps, _ = _budget(ref, "model-tuning")
    paper = "the paper's " if pt_lr == fmt(RECIPES["paper"]["lr"]) else ""
    lines = ["## Prompt tuning with a longer budget (" + ", ".join(f"`configs/{n}.yaml`" for n, _ in grids) + ")",
             ""]
    lines += [f"- `{name}`: {settings_line(cells)} {selection_line(cells)}" for name, cells in grids]
    lines += ["", f"PD, PT ({pt_steps} steps at {paper}lr {pt_lr}) and MT ({mt_steps} steps) are `{reference}`'s "
              "cells; \"PT longer\" is the longer grid. Model tuning was not rerun at the longer budget, so PT − MT "
              "here is not a matched comparison.",
              "", f"| model | task | PD | PT ({pt_steps} steps) | PT longer | MT ({mt_steps} steps) | majority |",
              "|---|---|---|---|---|---|---|"]
    summary = []
    for _, cells in grids:
        done: list[tuple[float, float, float]] = []
        for c in cells:
            m, t = c["cell"]["model"], c["cell"]["eval_task"]
            pd, pt, mt = (score_of(ref, m, k, t, t) for k in METHODS)
            lines.append(f"| {m} | {t} | {pd} | {pt} | **{100 * c['score']:.1f}**{mark(c)} | {mt} | "
                         f"{pct_or_blank(rec.cell_floor(c))} |")
            if pd and pt:
                done.append((float(pd.rstrip("†")), float(pt.rstrip("†")), 100 * c["score"]))
        if done:
            n = len(done)
            pd_avg, pt_avg, long_avg = (sum(x[i] for x in done) / n for i in range(3))
            summary.append(f"- `{cells[0]['cell']['model']}` ({n} tasks): PD {pd_avg:.1f}, PT {pt_steps} steps "
                           f"{pt_avg:.1f}, PT longer {long_avg:.1f}: PT longer − PD = {long_avg - pd_avg:+.1f} points.")
    lines += ["", *summary, ""]
    lines += ["Reproduce: " + "; ".join(f"`{run_command(n)}`" for n, _ in grids)
              + f"; then `{COMMAND}`; every cell in " + ", ".join(_report_link(rec, n) for n, _ in grids) + ".", ""]
    return lines


def domain_shift_section(rec: Records, name: str) -> list[str]:
    """Train → eval pairs next to the evaluated task's in-domain score and its majority floor."""
    cells = rec.cells(name)
    shifted = [c for c in cells if c["cell"]["train_task"] != c["cell"]["eval_task"]]
    if not shifted:
        return []
    lines = [f"## Domain shift (`configs/{name}.yaml`)", "", settings_line(cells), "",
             "Each row: trained on the first task, evaluated zero-shot on the second, next to a model trained on the "
             "evaluated task itself (in-domain) and the majority floor. QQP's evaluation examples are a held-out tail "
             "of its train sample (the only QQP file here). MRPC and QQP have the labels yes/no but opposite "
             "majorities (MRPC mostly paraphrases, QQP mostly not): a score equal to the minority share is what "
             "answering, for every example, the label the training task favours scores: a carried-over label prior, "
             "not paraphrase detection. " + selection_line(cells), "",
             "| model | method | train → eval | shifted | in-domain | majority |", "|---|---|---|---|---|---|"]
    for c in sorted(shifted, key=lambda c: (c["cell"]["model"], c["method"], c["cell"]["train_task"])):
        cell = c["cell"]
        floor = rec.cell_floor(c)
        # On a two-label task, the minority share is what answering one label everywhere scores.
        flag = " (= minority share)" if floor is not None and abs(100 * c["score"] - (100 - floor)) < 0.05 \
            else ""
        lines.append(f"| {cell['model']} | {c['method']} | {cell['train_task']} → {cell['eval_task']} | "
                     f"{100 * c['score']:.1f}{flag} | "
                     f"{score_of(cells, cell['model'], c['method'], cell['eval_task'], cell['eval_task'])} | "
                     f"{pct_or_blank(floor)} |")
    lines += ["", f"Reproduce: `{run_command(name)}`; then `{COMMAND}`; every cell in {_report_link(rec, name)}.", ""]
    return lines


QA_METHODS = ("prompt-design", "prompt-tuning", "model-tuning")


def qa_domain_shift_section(rec: Records, name: str) -> list[str]:
    """The paper's Table 1 at CPU scale: each method trained on SQuAD, F1 / exact match in-domain (SQuAD validation)
    and out of domain (the evaluated task of the grid's pair), with the out-of-domain drop; cells not run yet show
    a dash."""
    cells = rec.cells(name)
    if not cells:
        return []
    source = cells[0]["cell"]["train_task"]
    # The out-of-domain tasks: the grid's pairs from the source (so a pair not run yet still has its columns).
    config = rec.root / "configs" / f"{name}.yaml"
    pairs = load_config(config).pairs if config.is_file() else []
    targets = sorted({c["cell"]["eval_task"] for c in cells if c["cell"]["eval_task"] != source}
                     | {pr.eval_task for pr in pairs if pr.train_task == source})

    def hit(model: str, method: str, eval_task: str) -> dict[str, Any] | None:
        return next((c for c in cells if c["cell"]["model"] == model and c["method"] == method
                     and c["cell"]["train_task"] == source and c["cell"]["eval_task"] == eval_task), None)

    def pair(c: dict[str, Any] | None) -> str:
        if c is None:
            return "— | —"
        return f"{100 * c['metrics']['f1']:.1f}{mark(c)} | {100 * c['metrics']['exact_match']:.1f}"

    head = f"| model | method | {source} F1 | EM | " + " | ".join(f"→ {t} F1 | EM | Δ F1" for t in targets) + " |"
    lines = [f"## Domain shift in question answering (`configs/{name}.yaml`)", "", settings_line(cells), "",
             f"The paper's Table 1 at this scale: every method trained (or prompted) on {source}, scored in-domain on "
             f"{source} validation and out of domain on " + ", ".join(targets) + " (no training split of its own), "
             "F1 and exact match ×100 with the official SQuAD normalisation, greedy generation; Δ F1 = out of domain "
             "− in-domain. A dash: the cell has not run yet; prompt design runs in-domain only. "
             + selection_line(cells), "",
             head, "|---|---|---|---|" + "---|---|---|" * len(targets)]
    for model in dict.fromkeys(c["cell"]["model"] for c in cells):
        for method in QA_METHODS:
            home = hit(model, method, source)
            row = [pair(home)]
            for t in targets:
                away = hit(model, method, t)
                delta = f"{100 * (away['metrics']['f1'] - home['metrics']['f1']):+.1f}" if home and away else "—"
                # Train → eval pairs are for the tuned methods only: prompt design has no out-of-domain cell.
                row.append(" | | " if method == "prompt-design" and away is None else f"{pair(away)} | {delta}")
            lines.append(f"| {model} | {method} | " + " | ".join(row) + " |")
    lines += ["", f"Reproduce: `{run_command(name)}`; then `{COMMAND}`; every cell in `results/{name}/cells/`.", ""]
    return lines


def reading_section(rec: Records) -> list[str]:
    """The selection rule, counted from the records, then a person's reading of the tables (a file beside them)."""
    runs = {(c.get("reused_from", name), c["id"]): c for name in (MAIN_JOB, *GRIDS) for c in rec.cells(name)
            if c["method"] in ("prompt-tuning", "model-tuning")}  # a reused cell is one run, copied
    kinds = Counter(selection_kind(c) for c in runs.values())
    words = {"none": "with no selection (`eval_every: 0`: the last step kept)",
             "train slice": "selected on the train slice", "reported split": "selected on the split they report",
             "train task's validation": "selected on the train task's validation split"}
    grids = ", ".join(f"{n} {words[k]}" for k, n in kinds.most_common())
    headline = [json.loads(p.read_text())["train"]["selection"]
                for p in sorted((rec.root / "results").glob("sst2_*.json"))]
    ensembles = ensemble_runs(rec)
    text = ("**Selection never touches a reported example.** A tuned run may keep its best step only by scores on "
            "the selection slice held out from the *train* split (`softprompt.tasks.selection`); the validation "
            "split is only reported. Every table says how its cells chose their checkpoint; a score selected on the "
            f"examples it reports carries a † ({kinds.get('reported split', 0)} here). The committed grids' "
            f"{len(runs)} tuned runs: {grids}."
            + "".join(f" The SST-2 headline: {h}." for h in headline)
            + (" The ensemble prompts chose nothing (one score after the last step)."
               if ensembles and ensemble_chose_nothing(ensembles) else ""))
    reading = rec.root / "docs" / "data" / "results" / "reading.md"
    lines = ["## How to read these numbers", ""]
    if reading.is_file():
        lines += [f"_The first point is counted from the records; the others are a person's reading of the tables "
                  f"(`{reading.relative_to(rec.root)}`)._", ""]
    lines += [*textwrap.wrap(text, 116, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False)]
    if reading.is_file():
        lines += reading.read_text().strip().splitlines()
    return [*lines, ""]


def bench_section(rec: Records) -> list[str]:
    """The benchmark records and the documents that read them."""
    records = sorted((rec.root / "bench" / "results").glob("*.json"))
    if not records:
        return []
    docs = {p: p.read_text() for p in sorted((rec.root / "docs").glob("*.md")) if p.name != PAGE.name}
    lines = ["## Benchmarks", "", "Speed, memory and lr checks, each a JSON record in `bench/results/` written by its "
             "script in `bench/`; the documents named read them.", ""]
    for path in records:
        r = json.loads(path.read_text())
        about = [x for x in (r.get("model"), r.get("what")) if isinstance(x, str)]
        readers = [f"[`docs/{p.name}`]({p.name})" for p, text in docs.items() if path.name in text]
        lines.append(f"- `bench/results/{path.name}`" + (f" ({'; '.join(about)})" if about else "")
                     + (f", read in {', '.join(readers)}" if readers else ""))
    return [*lines, ""]


# ------------------------------------------------------------------------------------------------------------ page


def render(root: str | Path = ".") -> str:
    """The whole page, from the records under ``root`` (a repository checkout)."""
    return _render(Records(root))


def _render(rec: Records) -> str:
    lines = ["# Results", "",
             f"_Generated by `{COMMAND}` from the JSON records in this repository; do not edit by hand. Measured "
             "numbers come from the grids' cells (`results/<grid>/cells/`), the SST-2 record (`results/sst2_*.json`), "
             "the majority floors (`results/majority.json`, measured by `softprompt report --floors`), the ensemble "
             "records (`docs/data/ensembles/`, `results/ensembles_cpu/`) and the benchmarks (`bench/results/`); "
             "each section names the command that wrote them. The readings are a person's, kept beside the records "
             "(`docs/data/results/reading.md`, `docs/data/ensembles/reading.md`)._", ""]
    lines += main_job_section(rec)
    for path in sorted((rec.root / "results").glob("sst2_*.json")):
        lines += sst2_section(rec, path)
    lines += comparison_section(rec, "paper_cpu")
    lines += campaign_section(rec)
    lines += reading_section(rec)
    lines += ablation_section(rec, "ablation_length_cpu", "prompt_length", "Prompt length ablation")
    lines += ablation_section(rec, "ablation_init_cpu", "init", "Initialisation ablation")
    lines += budget_section(rec, ["pt_budget_cpu", "pt_budget_gemma_cpu"])
    lines += domain_shift_section(rec, "domain_shift_cpu")
    lines += qa_domain_shift_section(rec, "domain_shift_qa")
    lines += ensembles_section(rec)
    lines += bench_section(rec)
    reports = sorted(d.name for d in (rec.root / "docs" / "results").glob("*") if (d / "README.md").is_file())
    if reports:
        lines += ["## Other reports", "", *[f"- {_report_link(rec, n)}" for n in reports], ""]
    return "\n".join(lines)


def write_page(root: str | Path = ".", out: str | Path | None = None) -> Path:
    """Write :func:`render`'s page to ``out`` (default: ``<root>/docs/results.md``); returns its path."""
    path = Path(out) if out is not None else Path(root) / PAGE
    rec = Records(root)  # each record read once, for the figure and the page
    draw_figure(rec)  # the campaign's Figure 1, which the page links when it exists
    text = _render(rec)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


