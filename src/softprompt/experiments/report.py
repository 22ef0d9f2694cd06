"""The report of an experiment grid: a markdown results table and PNG plots, from the cells' JSON files alone.

Plots (written only when the grid has the data for them):

- ``score_vs_size.png``: score against model parameter count (log scale) for model tuning, prompt tuning and prompt
  design — the paper's Figure 1 — and PEFT's prompt tuning when the grid runs it (its own series). Each point is
  the mean over the in-domain tasks (and seeds) at the headline setting: the *first* prompt length, init and shots
  listed in the config.
- ``prompt_length.png`` / ``init.png``: prompt-tuning ablations against model size, one line per prompt length (at
  the first init) or per init (at the first length) — the paper's Figure 3.
- Domain shift (train→eval pairs) is a table: train task, eval task, and the score per model and method.

:func:`summary_lines` is the short text ``softprompt experiment`` prints after a run: per model and task, prompt
design (before) next to the tuned cells (after), and how each tuned cell chose its checkpoint.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from softprompt.core.files import atomic_write
from softprompt.experiments.grid import ExperimentConfig, cells, slug
from softprompt.experiments.methods import PROMPT_METHODS
from softprompt.experiments.runner import load_cells

METHOD_STYLE = {"model-tuning": ("tab:orange", "s"), "prompt-tuning": ("tab:green", "o"),
                "prompt-design": ("tab:blue", "^"), "peft-prompt-tuning": ("tab:purple", "D")}


def _key(r: dict[str, Any]) -> tuple:
    c = r["cell"]
    return (c["model"], c["method"], c["train_task"], c["eval_task"], c["prompt_length"], c["init"], c["shots"],
            c.get("variant", ""))


def aggregate(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells grouped over seeds: one row per setting with mean, std and n of the score."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[_key(r)].append(r)
    rows = []
    for key, rs in groups.items():
        scores = [r["score"] for r in rs]
        model, method, train_task, eval_task, p, init, shots, variant = key
        rows.append({"model": model, "method": method, "train_task": train_task, "eval_task": eval_task,
                     "prompt_length": p, "init": init, "shots": shots, "variant": variant,
                     "series": f"{method} ({variant})" if variant else method, "metric": rs[0]["metric"],
                     "parameters": rs[0]["model"]["parameters"], "trainable_params": rs[0]["trainable_params"],
                     "mean": statistics.fmean(scores), "std": statistics.pstdev(scores) if len(scores) > 1 else 0.0,
                     "n": len(scores), "seconds": statistics.fmean(r["seconds"] for r in rs)})
    return rows


def _headline(row: dict[str, Any], config: ExperimentConfig) -> bool:
    if row["method"] in PROMPT_METHODS:
        return row["prompt_length"] == config.prompt_lengths[0] and row["init"] == config.inits[0]
    if row["method"] == "prompt-design":
        return row["shots"] == config.shots[0]
    return True


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _task_label(row: dict[str, Any]) -> str:
    if row["train_task"] == row["eval_task"]:
        return slug(row["train_task"])
    return f"{slug(row['train_task'])} → {slug(row['eval_task'])}"


def _by_model_size(rows: list[dict[str, Any]], group: str) -> dict[Any, list[tuple[int, float]]]:
    """group value → [(model parameters, mean score over in-domain tasks)], sorted by size."""
    acc: dict[Any, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["train_task"] == r["eval_task"]:
            acc[r[group]][r["parameters"]].append(r["mean"])
    return {g: sorted((size, statistics.fmean(v)) for size, v in sizes.items()) for g, sizes in acc.items()}


def _by_setting(rows: list[dict[str, Any]], axis: str, order: list[Any]) -> dict[Any, list[tuple[Any, float]]]:
    """model → [(axis value, mean score over in-domain tasks)], in ``order``: an ablation on one model size, where
    a score-vs-size plot would be a single column of dots."""
    acc: dict[Any, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["train_task"] == r["eval_task"]:
            acc[slug(r["model"])][r[axis]].append(r["mean"])
    return {m: [(v, statistics.fmean(by[v])) for v in order if v in by] for m, by in acc.items()}


def _plot(series: dict[Any, list[tuple[Any, float]]], path: Path, title: str, legend: str,
          styles: dict[Any, tuple[str, str]] | None = None, xlabel: str = "model parameters") -> None:
    """One line per series; numeric x on a log axis (model size, prompt length), other x as categories (init)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    categories = list(dict.fromkeys(x for points in series.values() for x, _ in points
                                    if not isinstance(x, int | float)))
    for name, points in series.items():
        color, marker = (styles or {}).get(name, (None, "o"))
        xs, ys = zip(*points, strict=True)
        xs = tuple(categories.index(x) if x in categories else x for x in xs)
        ax.plot(xs, [100 * y for y in ys], marker=marker, color=color, label=str(name))
    if categories:
        ax.set_xticks(range(len(categories)), [str(c) for c in categories])
        ax.set_xlim(-0.5, len(categories) - 0.5)
    else:
        ax.set_xscale("log")
        # Label the few values tried (model sizes as 135M, prompt lengths as is), not the log axis's decades.
        values = sorted({x for points in series.values() for x, _ in points})
        ax.set_xticks(values, [_human(v) if xlabel == "model parameters" else str(v) for v in values])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("score (mean over tasks, %)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title=legend)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def write_report(config: ExperimentConfig, folder: Path | None = None) -> Path:
    """Write ``README.md`` and the plots to ``folder`` (default: the config's report path); returns the markdown
    file."""
    folder = Path(folder) if folder is not None else config.report_path
    folder.mkdir(parents=True, exist_ok=True)
    records = load_cells(config)
    total = len(cells(config))
    rows = aggregate(records)
    rows.sort(key=lambda r: (r["parameters"], r["model"], _task_label(r), r["method"], r["prompt_length"],
                             r["init"], r["shots"], r["variant"]))
    ev = config.eval
    lines = [f"# Results: {config.name}", ""]
    if config.description:
        lines += [config.description.strip(), ""]
    lines += [f"{len(records)} of {total} cells done. Score: each eval task's primary metric on its `{ev.split}` "
              f"split ({'all' if ev.limit is None else f'first {ev.limit}'} examples), mean ± std over seeds (n). "
              "Task params: what each task stores (P·H for prompt tuning, the whole model for model tuning, 0 for "
              "prompt design). Generated by `softprompt experiment CONFIG --report` from the cell JSON files "
              f"in `{config.out_dir}/cells/`.", ""]
    reused = [r for r in records if r.get("reused_from")]
    if reused:
        lines += ["Reused (copied from another grid with the same settings, not trained again): "
                  + ", ".join(f"`{r['id']}` from `{r['reused_from']}`" for r in reused) + ".", ""]
    plots = []
    headline = [r for r in rows if _headline(r, config)]
    if headline:
        _plot(_by_model_size(headline, "series"), folder / "score_vs_size.png",
              "Score vs model size", "method", METHOD_STYLE)
        plots.append(("Score vs model size (headline settings)", "score_vs_size.png"))
    pt = [r for r in rows if r["method"] == "prompt-tuning" and not r["variant"]]  # ablations: the grid's recipe
    one_size = len({r["parameters"] for r in pt}) == 1
    for axis, order, fixed, name, title, legend in (
            ("prompt_length", sorted(config.prompt_lengths), ("init", config.inits[0]), "prompt_length.png",
             f"Prompt length (init {config.inits[0]})", "P"),
            ("init", config.inits, ("prompt_length", config.prompt_lengths[0]), "init.png",
             f"Prompt initialisation (P = {config.prompt_lengths[0]})", "init")):
        line = [r for r in pt if r[fixed[0]] == fixed[1]]
        if len(order) < 2 or not line:
            continue
        if one_size:  # the paper's Figure 3 has size on x; with one model the axis itself goes there
            _plot(_by_setting(line, axis, order), folder / name, title, "model", xlabel=legend)
        else:
            _plot(_by_model_size(line, axis), folder / name, title, legend)
        plots.append((f"{'Prompt-length' if axis == 'prompt_length' else 'Initialisation'} ablation", name))
    for title, name in plots:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    shift = [r for r in rows if r["train_task"] != r["eval_task"]]
    if shift:
        lines += ["## Domain shift", "", "| train → eval | model | method | setting | score |", "|---|---|---|---|---|"]
        for r in sorted(shift, key=lambda r: (_task_label(r), r["parameters"], r["method"])):
            lines.append(f"| {_task_label(r)} | {slug(r['model'])} | {r['method']} | {_setting(r)} | {_score(r)} |")
        lines.append("")
    lines += ["## All results", "",
              "| model | params | task | method | setting | metric | score | n | task params | s / cell |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {slug(r['model'])} | {_human(r['parameters'])} | {_task_label(r)} | {r['method']} | "
                     f"{_setting(r)} | {r['metric']} | {_score(r)} | {r['n']} | {_human(r['trainable_params'])} | "
                     f"{r['seconds']:.1f} |")
    missing = [c.id for c in cells(config) if c.id not in {r["id"] for r in records}]
    if missing:
        lines += ["", f"Missing cells ({len(missing)}): " + ", ".join(f"`{m}`" for m in missing)]
    out = folder / "README.md"
    atomic_write(out, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    return out


def _setting(r: dict[str, Any]) -> str:
    if r["method"] in PROMPT_METHODS:
        return f"P={r['prompt_length']}, {r['init']}" + (f", {r['variant']}" if r.get("variant") else "")
    if r["method"] == "prompt-design":
        return f"{r['shots']}-shot"
    return "all weights"


def _score(r: dict[str, Any]) -> str:
    text = f"{100 * r['mean']:.1f}"
    return f"{text} ± {100 * r['std']:.1f}" if r["n"] > 1 else text


def checkpoint_line(r: dict[str, Any]) -> str:
    """How a tuned cell chose the step it kept, from its record: the selection slice and its score at every eval."""
    sel, train = r.get("selection") or {}, r.get("train") or {}
    steps = r["config"].get("steps")
    if not sel:
        return f"checkpoint: the last of {steps} steps (no selection, eval_every 0)"
    history = ", ".join(f"step {h['step']} {h[r['metric']]:.4f}" for h in train.get("history", []))
    return (f"checkpoint: step {train.get('best_step')} of {steps}, chosen on {sel.get('examples')} examples held out "
            f"from {sel.get('split')} (the selection slice: {sel.get('size')} examples, seed {sel.get('seed')}), "
            f"never on the reported split; selection {r['metric']}: {history or 'not recorded'}")


def summary_lines(records: Iterable[dict[str, Any]]) -> list[str]:
    """Per (model, train task, eval task) of the finished cells: prompt design (the task's hand-written instruction;
    "before") and the tuned cells ("after", with the points gained over zero-shot prompt design and how the
    checkpoint was chosen)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["cell"]["model"], r["cell"]["train_task"], r["cell"]["eval_task"])].append(r)
    order = {"prompt-design": 0, "prompt-tuning": 1, "peft-prompt-tuning": 2, "model-tuning": 3}
    lines = []
    for (model, train_task, eval_task), rs in groups.items():
        rs = sorted(rs, key=lambda r: order.get(r["method"], len(order)))
        first = rs[0]
        task = slug(eval_task) if train_task == eval_task else f"{slug(train_task)} → {slug(eval_task)}"
        lines.append(f"{task} on {slug(model)} ({first['eval']['split']}, {first['eval']['examples']} examples, "
                     f"{first['metric']}):")
        zero_shot = next((r["score"] for r in rs if r["method"] == "prompt-design" and r["cell"]["shots"] == 0), None)
        for r in rs:
            c, cfg = r["cell"], r["config"]
            if r["method"] == "prompt-design":
                what = "the task's hand-written instruction" + (f" + {r.get('shots_used', c['shots'])} solved "
                                                                 "examples" if c["shots"] else ", zero-shot")
                lines.append(f"  before: prompt design ({what}): {r['score']:.4f}")
                continue
            what = f"P = {c['prompt_length']}, {c['init']} init" if r["method"] in PROMPT_METHODS else "all weights"
            if r["method"] == "peft-prompt-tuning":
                what += f", PEFT {r.get('peft', {}).get('version')} {r.get('peft', {}).get('prompt_tuning_init')}"
            what += f", {cfg.get('steps')} steps of batch {cfg.get('batch_size')}, seed {c['seed']}"
            gain = "" if zero_shot is None else f" ({100 * (r['score'] - zero_shot):+.1f} points over prompt design)"
            lines += [f"  after: {r['method'].replace('-', ' ')} ({what}): {r['score']:.4f}{gain}",
                      f"    {checkpoint_line(r)}"]
    return lines
