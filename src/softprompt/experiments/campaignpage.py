"""The scale campaign's section of the results page (``configs/scale_campaign.yaml``): the paper's Figure 1 on the
built-in model sizes, the recipe comparison, the PEFT side-by-side and the prompt-tuning − model-tuning gap, each
quality bar of the campaign checked from the cells alone.

A cell's *recipe* is what trained it: prompt design, prompt tuning at the grid's settings ("vanilla": lr auto),
a named variant of it (``variants``: the residual reparameterisation, the paper's recipe), a transfer cell (its
prompt initialised from a source task's), model tuning, or PEFT's prompt tuning. The reported tasks are those with a
prompt-design cell (a transfer source such as RTE is only trained on). Scores are means over the seeds that ran,
± their sample standard deviation.

The PEFT side-by-side is followed by ``configs/peft_init_cpu.yaml``'s cells when they exist: softprompt's prompt
tuning from the rows PEFT's init gives, which isolates the start from the rest of the two implementations.

The *best new recipe* of a (size, task) is chosen among the new recipes (the variants but the paper's, and transfer)
by the score on the selection slice held out from train (``best_selection_<metric>`` in the cell), never by the
reported score; the bar compares its reported score, averaged over the reported tasks, with vanilla prompt tuning's.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softprompt.core.files import atomic_write
from softprompt.experiments.grid import slug
from softprompt.experiments.records import COMMAND, Records, run_command
from softprompt.experiments.report import _human
from softprompt.training.initializers import TRANSFER_PREFIX

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CAMPAIGN = "scale_campaign"
FIGURE = "figure1.png"
LEGEND_INCHES = 1.5
"""the strip right of Figure 1's panels that holds its one legend"""
RECIPE_MARGIN = 5.0
"""points the best new recipe must gain over vanilla prompt tuning, averaged over the tasks, on the smallest sizes"""
RECIPE_SIZES = 2
"""how many of the smallest sizes that bar is checked on"""
PEFT_POOLED_SDS = 2.0
"""|softprompt − PEFT| must stay within this many pooled standard deviations (over at least PEFT_MIN_SEEDS seeds)"""
PEFT_MIN_SEEDS = 3
PEFT_INIT = "peft_init_cpu"
"""the grid that starts softprompt's prompt tuning from PEFT's init rows (``configs/peft_init_cpu.yaml``)"""
SHORT_TEXT = 32
"""characters of an init text the page shows"""
PAPER = "paper"
"""the variant that is the paper's recipe (shown beside the others, never a new recipe)"""

VANILLA, DESIGN, MODEL, PEER = "PT", "PD", "MT", "PEFT PT"
INTRO = ("Score: each task's primary metric on its validation split, ×100, mean ± sample standard deviation over "
         "seeds where more than one ran. PD = zero-shot prompt design, PT = prompt tuning at the default "
         "(scale-aware) step size, `PT <variant>` = a variant of it, `PT from <task>` = its prompt initialised from "
         "that task's, MT = model tuning, PEFT PT = PEFT's own prompt tuning at the same budget. Every tuned cell "
         "kept its best step by the selection slice held out from train.")


def recipe(cell: dict[str, Any]) -> str:
    """The recipe label of a cell (the module docstring)."""
    method, c = cell["method"], cell["cell"]
    if method == "prompt-tuning":
        if c["init"].startswith(TRANSFER_PREFIX):
            return f"PT from {slug(c['init'].removeprefix(TRANSFER_PREFIX))}"
        return f"PT {c['variant']}" if c.get("variant") else VANILLA
    return {"prompt-design": DESIGN, "model-tuning": MODEL, "peft-prompt-tuning": PEER}[method]


def is_new(name: str) -> bool:
    return name.startswith("PT ") and name != f"PT {PAPER}"


def count(n: int, noun: str) -> str:
    """``1 task``, ``3 tasks``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def mean_sd(xs: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def show(xs: list[float] | None) -> str:
    """``mean ± sd (n seeds)``, one seed as its score, nothing as a blank."""
    if not xs:
        return ""
    m, sd = mean_sd(xs)
    return f"{m:.1f}" if sd is None else f"{m:.1f} ± {sd:.1f} (n={len(xs)})"


class Campaign:
    """The campaign's cells, indexed by (model, reported task, recipe)."""

    def __init__(self, rec: Records, name: str = CAMPAIGN) -> None:
        self.cells = [c for c in rec.cells(name) if c["cell"]["train_task"] == c["cell"]["eval_task"]
                      or c["method"] == "prompt-tuning"]
        by_size = sorted(self.cells, key=lambda c: c["model"]["parameters"])
        self.models = list(dict.fromkeys(c["cell"]["model"] for c in by_size))
        self.params = {c["cell"]["model"]: c["model"]["parameters"] for c in self.cells}
        self.tasks = list(dict.fromkeys(c["cell"]["eval_task"] for c in self.cells if c["method"] == "prompt-design"))
        self.scores: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        self.selected: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        self.step_seconds: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        for c in self.cells:
            key = (c["cell"]["model"], c["cell"]["eval_task"], recipe(c))
            self.scores[key].append(100 * c["score"])
            sel = (c.get("train") or {}).get(f"best_selection_{c['metric']}")
            if sel is not None:
                self.selected[key].append(100 * sel)
            # the median of its logged steps: a step's cost without the selection evals, and a few steps slowed by
            # another job on the machine do not move it
            steps = rec.step_seconds(name, c)
            if steps:
                self.step_seconds[key].append(statistics.median(steps))
        order = [DESIGN, VANILLA, *sorted({r for *_, r in self.scores if r.startswith("PT ")}), MODEL, PEER]
        self.recipes = [r for r in order if any(k[2] == r for k in self.scores)]
        self.floors = {t: rec.cell_floor(next(c for c in self.cells if c["cell"]["eval_task"] == t))
                       for t in self.tasks}

    def size(self, model: str) -> str:
        return _human(self.params[model])

    def mean(self, model: str, task: str, name: str) -> float | None:
        xs = self.scores.get((model, task, name))
        return statistics.fmean(xs) if xs else None

    def task_average(self, model: str, name: str) -> float | None:
        """The recipe's mean score over every reported task on ``model``; None if one is missing."""
        means = [self.mean(model, t, name) for t in self.tasks]
        return None if not means or any(m is None for m in means) else statistics.fmean(means)  # type: ignore[arg-type]

    def best_new(self, model: str, task: str) -> str | None:
        """The new recipe with the best selection score on (model, task); None if none has one."""
        scored = [(statistics.fmean(self.selected[model, task, r]), r) for r in self.recipes
                  if is_new(r) and self.selected.get((model, task, r)) and (model, task, r) in self.scores]
        return max(scored)[1] if scored else None


# ---------------------------------------------------------------------------------------------------------- figure


def draw_figure(rec: Records, name: str = CAMPAIGN) -> Path | None:
    """Figure 1 (:func:`figure`) to ``docs/results/<name>/figure1.png``. None when the campaign has no cells."""
    camp = Campaign(rec, name)
    if not camp.cells or not camp.tasks:
        return None
    import matplotlib.pyplot as plt

    fig = figure(camp)
    path = rec.root / "docs" / "results" / name / FIGURE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def figure(camp: Campaign) -> Figure:
    """Figure 1: score vs model parameters (log axis) per recipe, averaged over the reported tasks and per task, the
    majority floor dotted. A recipe has one colour in every panel and the one legend lists them all: a panel draws only
    the recipes that ran on its task, so the colour cycle of each axis would give one recipe several colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]  # matplotlib's default cycle, fixed per recipe
    colour = {r: palette[i % len(palette)] for i, r in enumerate(camp.recipes)}
    panels = ["average", *camp.tasks]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels) + LEGEND_INCHES, 3.6), dpi=110, squeeze=False,
                             sharey=True)
    legend: dict[str, Any] = {}
    for ax, panel in zip(axes[0], panels, strict=True):
        for r in camp.recipes:
            points = []
            for m in camp.models:
                if panel == "average":
                    y, sd = camp.task_average(m, r), None
                else:
                    xs = camp.scores.get((m, panel, r))
                    y, sd = mean_sd(xs) if xs else (None, None)
                if y is not None:
                    points.append((camp.params[m], y, sd or 0.0))
            if points:
                xs_, ys, sds = zip(*points, strict=True)
                legend.setdefault(r, ax.errorbar(xs_, ys, yerr=sds, marker="o", capsize=3, label=r, color=colour[r],
                                                 linestyle="-" if r in (VANILLA, DESIGN, MODEL) else "--"))
        known = [camp.floors[t] for t in camp.tasks if camp.floors[t] is not None]
        floor = camp.floors.get(panel) if panel != "average" else \
            (statistics.fmean(known) if len(known) == len(camp.tasks) else None)
        if floor is not None:
            legend.setdefault("majority", ax.axhline(floor, color="grey", linestyle=":", label="majority"))
        ax.set_xscale("log")
        ax.set_xticks([camp.params[m] for m in camp.models], [camp.size(m) for m in camp.models])
        ax.minorticks_off()
        ax.set_title(panel if panel == "average" else slug(panel))
        ax.set_xlabel("model parameters")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("score (%)")
    order = [r for r in camp.recipes if r in legend] + [k for k in legend if k not in camp.recipes]
    fig.legend([legend[k] for k in order], order, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0.0, 0.0, 1 - LEGEND_INCHES / fig.get_figwidth(), 1.0))
    return fig


# --------------------------------------------------------------------------------------------------------- section


def sizes_sentence(camp: Campaign) -> str:
    """Which model each size column is, and what the size counts."""
    named = ", ".join(f"{camp.size(m)} = `{m}`" for m in camp.models)
    # A GGUF file may store the LM head apart from the input embeddings (at another quantization): dequantized,
    # the two are separate weights, so a model counts more than its tied-weights name says.
    return (f"Sizes: {named}; a size is the weights of the model as loaded (tied weights once, an LM head its file "
            "stores apart from the input embeddings counted).")


def campaign_section(rec: Records, name: str = CAMPAIGN) -> list[str]:
    """The campaign's tables and its quality bars (the module docstring), from its committed cells."""
    camp = Campaign(rec, name)
    if not camp.cells or not camp.tasks:
        return []
    sizes = [camp.size(m) for m in camp.models]
    lines = [f"## Figure 1 across model sizes (`configs/{name}.yaml`)", "",
             f"{count(len(camp.cells), 'cell')} so far, on {len(camp.models)} of the grid's "
             f"model sizes. " + INTRO + " " + sizes_sentence(camp), ""]
    lines += ["| task | recipe | " + " | ".join(sizes) + " | majority |", "|---|---|" + "---|" * (len(sizes) + 1)]
    for t in camp.tasks:
        for r in camp.recipes:
            row = [show(camp.scores.get((m, t, r))) for m in camp.models]
            if any(row):
                floor = "" if camp.floors[t] is None else f"{camp.floors[t]:.1f}"
                lines.append(f"| {slug(t)} | {r} | " + " | ".join(row) + f" | {floor} |")
    for r in camp.recipes:
        row = [camp.task_average(m, r) for m in camp.models]
        if any(x is not None for x in row):
            lines.append(f"| **average** | {r} | " + " | ".join("" if x is None else f"{x:.1f}" for x in row) + " | |")
    figure = rec.root / "docs" / "results" / name / FIGURE
    if figure.is_file():
        lines += ["", f"![Figure 1: score vs model size, {name}](results/{name}/{FIGURE})"]
    for block in (recipe_lines(camp), peer_lines(camp), peft_init_lines(rec, camp), gap_lines(camp),
                  time_lines(rec, name)):
        if block:
            lines += ["", *block]
    lines += ["", f"Reproduce: `{run_command(name)}` (resumable cell by cell; days of two-core CPU in all), then "
              f"`{COMMAND}`.", ""]
    return lines


def time_lines(rec: Records, name: str = CAMPAIGN) -> list[str]:
    """The hours each size's finished cells took, from their own ``seconds`` (what a rerun should plan for)."""
    hours: dict[str, float] = defaultdict(float)
    cells: dict[str, int] = defaultdict(int)
    resumed: dict[str, int] = defaultdict(int)
    params: dict[str, int] = {}
    for c in rec.cells(name):  # every cell, the transfer sources too: they cost time like the others
        m = c["cell"]["model"]
        hours[m] += c["seconds"] / 3600
        cells[m] += 1
        resumed[m] += bool(c.get("resumed_from_step"))
        params[m] = c["model"]["parameters"]
    if not cells:
        return []
    sizes = sorted(cells, key=params.__getitem__)
    shown = "; ".join(f"{_human(params[m])}: {count(cells[m], 'cell')}, {hours[m]:.1f} h"
                      + (f" ({resumed[m]} resumed)" if resumed[m] else "") for m in sizes)
    return ["**Time so far** (each cell's own `seconds` on the machine and threads its record names; a resumed "
            f"cell counts only the run that finished it, so these are lower bounds): {shown}."]


def recipe_lines(camp: Campaign) -> list[str]:
    """Vanilla vs each new recipe per size, and the bar: the best new recipe (chosen on selection scores)."""
    news = [r for r in camp.recipes if is_new(r)]
    if not news:
        return []
    shown = [*news, *[r for r in camp.recipes if r == f"PT {PAPER}"]]
    out = ["**Recipes.** Δ = recipe − vanilla PT, mean over the reported tasks both ran (points). The best new recipe "
           "of each task is chosen by its selection score (held-out train), not by the reported score.", "",
           "| size | " + " | ".join(f"{r} Δ" for r in shown) + " | best new recipe Δ (chosen per task) |",
           "|---|" + "---|" * (len(shown) + 1)]
    bars = []
    for m in camp.models:
        cells = []
        for r in shown:
            both = [t for t in camp.tasks if camp.mean(m, t, r) is not None and camp.mean(m, t, VANILLA) is not None]
            delta = [camp.mean(m, t, r) - camp.mean(m, t, VANILLA) for t in both]  # type: ignore[operator]
            cells.append(f"{statistics.fmean(delta):+.1f} ({count(len(both), 'task')})" if delta else "")
        chosen = {t: camp.best_new(m, t) for t in camp.tasks}
        complete = all(chosen.values()) and camp.task_average(m, VANILLA) is not None
        if complete:
            best = statistics.fmean(camp.mean(m, t, chosen[t]) for t in camp.tasks)  # type: ignore[misc]
            gain = best - camp.task_average(m, VANILLA)  # type: ignore[operator]
            picks = ", ".join(f"{slug(t)}: {chosen[t]}" for t in camp.tasks)
            cells.append(f"{gain:+.1f} ({picks})")
            bars.append((m, gain))
        else:
            cells.append("")
        if any(cells):  # a size with no recipe beside vanilla yet has no row
            out.append(f"| {camp.size(m)} | " + " | ".join(cells) + " |")
    small = [(m, g) for m, g in bars if m in camp.models[:RECIPE_SIZES]]
    if len(small) == min(RECIPE_SIZES, len(camp.models)):
        verdict = "; ".join(f"{camp.size(m)} {g:+.1f}" + ("" if g >= RECIPE_MARGIN else
                            f" (missed by {RECIPE_MARGIN - g:.1f})") for m, g in small)
        held = all(g >= RECIPE_MARGIN for _, g in small)
        out += ["", f"- Bar: the best new recipe ≥ vanilla + {RECIPE_MARGIN:g} points on the {len(small)} smallest "
                f"sizes: **{'met' if held else 'not met'}** ({verdict})."]
    return out


def pooled_sd(a: list[float], b: list[float]) -> float | None:
    """The pooled sample standard deviation of two groups; None unless each has two or more values."""
    if len(a) < 2 or len(b) < 2:
        return None
    return math.sqrt(((len(a) - 1) * statistics.variance(a) + (len(b) - 1) * statistics.variance(b))
                     / (len(a) + len(b) - 2))


def peer_lines(camp: Campaign) -> list[str]:
    """softprompt's vanilla prompt tuning beside PEFT's at the same budget, with the bar and the step times."""
    pairs = [(m, t) for m in camp.models for t in camp.tasks
             if camp.scores.get((m, t, PEER)) and camp.scores.get((m, t, VANILLA))]
    if not pairs:
        return []
    out = ["**softprompt vs PEFT** (the same rows, label words as the init, optimizer, loss and selection; PEFT's "
           "init also keeps the tokenizer's special tokens, see below; seconds per training step: "
           "the median of each cell's logged steps, selection evals not included, averaged over its seeds; each "
           "cell's come from the machine and load it ran on, which its record names).", "",
           "| size | task | softprompt PT | PEFT PT | Δ | pooled sd | within bar | s/step softprompt | s/step PEFT |",
           "|---|---|---|---|---|---|---|---|---|"]
    for m, t in pairs:
        a, b = camp.scores[m, t, VANILLA], camp.scores[m, t, PEER]
        sd = pooled_sd(a, b)
        delta = statistics.fmean(a) - statistics.fmean(b)
        # (no "|" in a table cell: it would start another)
        ok = "" if sd is None or min(len(a), len(b)) < PEFT_MIN_SEEDS else \
            ("yes" if abs(delta) <= PEFT_POOLED_SDS * sd else f"no ({abs(delta) / sd:.1f} sd apart)")
        sa, sb = camp.step_seconds.get((m, t, VANILLA)), camp.step_seconds.get((m, t, PEER))
        out.append(f"| {camp.size(m)} | {slug(t)} | {show(a)} | {show(b)} | {delta:+.1f} | "
                   f"{'' if sd is None else f'{sd:.1f}'} | {ok} | {'' if not sa else f'{statistics.fmean(sa):.2f}'} | "
                   f"{'' if not sb else f'{statistics.fmean(sb):.2f}'} |")
    out += ["", f"- Bar: |Δ| ≤ {PEFT_POOLED_SDS:g} pooled standard deviations over ≥ {PEFT_MIN_SEEDS} seeds "
            "(*within bar*; a blank means fewer seeds ran), and softprompt faster per step. Speed is judged by "
            "`bench/train_step_bench.py`, which times both side by side on one machine "
            "(`bench/results/train_step_cpu.json`), not by the two s/step columns, whose cells ran on different "
            "machines and loads."]
    return out


def short(text: str) -> str:
    """An init text as the page shows it: its first :data:`SHORT_TEXT` characters, in code quotes."""
    return "`" + (text if len(text) <= SHORT_TEXT else text[:SHORT_TEXT] + "…") + "`"


def peft_init_lines(rec: Records, camp: Campaign, name: str = PEFT_INIT) -> list[str]:
    """softprompt's prompt tuning started from PEFT's init rows (``name``'s cells) beside the campaign's PT and PEFT
    PT cells of the same model, task and seed: whether the start alone explains the gap between the two."""
    cells = rec.cells(name)
    if not cells:
        return []
    out = [f"**The start, isolated** (`configs/{name}.yaml`): softprompt's prompt tuning from the rows PEFT's "
           "class-label init gives (PEFT's TEXT init tokenizes the label words with the tokenizer's special tokens "
           "and repeats them to fill P) and from the same rows without the BOS token, at the campaign's budget and "
           "selection; beside them the campaign's cells of the same seed.", "",
           "| size | task | seed | start | trained by | score |", "|---|---|---|---|---|---|"]
    def seat(c: dict[str, Any]) -> tuple[str, str, int]:
        return c["cell"]["model"], c["cell"]["eval_task"], c["cell"]["seed"]

    for key in dict.fromkeys(map(seat, cells)):
        mine = [c for c in camp.cells if seat(c) == key]
        rows = [(c["cell"]["init"], "softprompt", c["score"]) for c in mine if recipe(c) == VANILLA]
        for c in (c for c in mine if recipe(c) == PEER):
            peft = c.get("peft") or {}
            text = peft.get("prompt_tuning_init_text")
            rows.append((f"{c['cell']['init']} → PEFT {peft.get('prompt_tuning_init', '')}"
                         + (f" {short(text)}" if text else ""), "PEFT", c["score"]))
        rows += [(f"text {short(c['config']['init_text'])}", "softprompt", c["score"]) for c in cells if seat(c) == key]
        model, task, seed = key
        size = _human(next(c["model"]["parameters"] for c in cells if c["cell"]["model"] == model))
        out += [f"| {size} | {slug(task)} | {seed} | {start} | {who} | {100 * score:.1f} |"
                for start, who, score in rows]
    return out


def gap_lines(camp: Campaign) -> list[str]:
    """Prompt tuning − model tuning per size, over the reported tasks both ran (the paper: it shrinks with size)."""
    out = []
    gaps = []
    for m in camp.models:
        both = [t for t in camp.tasks if camp.mean(m, t, VANILLA) is not None and camp.mean(m, t, MODEL) is not None]
        if both:
            gap = statistics.fmean(camp.mean(m, t, VANILLA) - camp.mean(m, t, MODEL) for t in both)  # type: ignore[operator]
            gaps.append(gap)
            out.append(f"- {camp.size(m)}: PT − MT = {gap:+.1f} points over {count(len(both), 'task')}.")
    if not out:
        return []
    trend = ""
    if len(gaps) > 1:
        shrinks = all(abs(b) <= abs(a) for a, b in itertools.pairwise(gaps))
        trend = f" Over the sizes with model tuning the gap {'shrinks' if shrinks else 'does not shrink steadily'}."
    return ["**Prompt tuning − model tuning** per size (the paper: the gap closes with scale)." + trend, "", *out]
