"""Regenerate docs/results.md from the JSON records under results/ (written by the scripts that measured them)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sst2_section(path: Path) -> list[str]:
    r = json.loads(path.read_text())
    t = r["train"]
    lines = [
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
        f"{t['optimizer']} lr {t['lr']}; checkpoint: {t['selection']} (best at step {t.get('best_step')}). "
        f"{t['seconds']:.0f} s of training ({t['seconds_per_step']} s/step) on {r['machine']['torch_threads']} CPU "
        f"threads; torch {r['versions']['torch']}, transformers {r['versions']['transformers']}.",
        "",
        "Selection-set accuracy during training: "
        + ", ".join(f"step {h['step']}: {h['accuracy']:.3f}" for h in t.get("history", [])) + ".",
        "",
        f"Reproduce: `{r['command']}`",
        "",
    ]
    return lines


METHODS = ("prompt-design", "prompt-tuning", "model-tuning")


def load_cells(name: str) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted((ROOT / "results" / name / "cells").glob("*.json"))]


def config_line(name: str) -> str:
    """The grid's own description (its budgets), from its config file."""
    import yaml

    path = ROOT / "configs" / f"{name}.yaml"
    return " ".join(str(yaml.safe_load(path.read_text()).get("description", "")).split()) if path.is_file() else ""


def comparison_section(name: str) -> list[str]:
    """Tasks × (model, method) at the grid's headline settings, with per-model averages and the PT − MT gap."""
    cells = [c for c in load_cells(name) if c["cell"]["train_task"] == c["cell"]["eval_task"]]
    if not cells:
        return []
    models = list(dict.fromkeys(c["cell"]["model"] for c in sorted(cells, key=lambda c: c["model"]["parameters"])))
    tasks = list(dict.fromkeys(c["cell"]["eval_task"] for c in cells))
    score = {(c["cell"]["model"], c["cell"]["eval_task"], c["method"]): 100 * c["score"] for c in cells}
    short = {"prompt-design": "PD", "prompt-tuning": "PT", "model-tuning": "MT"}
    head = [f"{m} {short[k]}" for m in models for k in METHODS]
    lines = [f"## Prompt tuning vs model tuning vs prompt design (`configs/{name}.yaml`)", "",
             config_line(name), "",
             "Score: each task's primary metric (accuracy; CB: accuracy, its macro-F1 is in the report) on the first "
             "validation examples, ×100. PD = zero-shot prompt design, PT = prompt tuning, MT = model tuning. "
             "A blank: that cell has not run.", "",
             "| task | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for t in tasks:
        row = [f"{score[m, t, k]:.1f}" if (m, t, k) in score else "" for m in models for k in METHODS]
        lines.append(f"| {t} | " + " | ".join(row) + " |")
    averages, complete = [], []
    for m in models:
        done = [t for t in tasks if all((m, t, k) in score for k in METHODS)]
        complete.append((m, done))
        for k in METHODS:
            averages.append(f"{sum(score[m, t, k] for t in done) / len(done):.1f}" if done else "")
    lines.append("| **average** (tasks with all three) | " + " | ".join(averages) + " |")
    lines.append("")
    for m, done in complete:
        if done:
            mean = {k: sum(score[m, t, k] for t in done) / len(done) for k in METHODS}
            pt = mean["prompt-tuning"]
            lines.append(f"- `{m}` ({len(done)} tasks): PT − PD = {pt - mean['prompt-design']:+.1f}, "
                         f"PT − MT = {pt - mean['model-tuning']:+.1f} points.")
    report = f"results/{name}/README.md"
    lines += ["", f"Every cell with its settings, parameters and time, and the Figure-1 plot: [`docs/{report}`]"
              f"({report}). Reproduce: `softprompt experiment configs/{name}.yaml && softprompt experiment "
              f"configs/{name}.yaml --report && python scripts/write_results_md.py`.", ""]
    return lines


def ablation_section(name: str, axis: str, title: str, reference: str = "paper_cpu") -> list[str]:
    """One ablation line; the point with the headline settings comes from ``reference`` (same budgets) when the
    ablation grid leaves it out rather than train it twice."""
    cells = load_cells(name)
    if not cells:
        return []
    other = "init" if axis == "prompt_length" else "prompt_length"
    fixed = {(c["cell"]["model"], c["cell"]["eval_task"], c["cell"][other]) for c in cells}
    have = {(c["cell"]["model"], c["cell"]["eval_task"], c["cell"][axis]) for c in cells}
    borrowed = [c for c in load_cells(reference) if c["method"] == "prompt-tuning"
                and (c["cell"]["model"], c["cell"]["eval_task"], c["cell"][other]) in fixed
                and (c["cell"]["model"], c["cell"]["eval_task"], c["cell"][axis]) not in have]
    lines = [f"## {title} (`configs/{name}.yaml`)", "", config_line(name), "",
             f"| model | task | {axis.replace('_', ' ')} | score | from |", "|---|---|---|---|---|"]
    rows = [(c, name) for c in cells] + [(c, reference) for c in borrowed]
    for c, source in sorted(rows, key=lambda r: (r[0]["cell"]["model"], r[0]["cell"]["eval_task"],
                                                 r[0]["cell"][axis])):
        cell = c["cell"]
        lines.append(f"| {cell['model']} | {cell['eval_task']} | {cell[axis]} | {100 * c['score']:.1f} | "
                     f"`{source}` |")
    lines += ["", f"Reproduce: `softprompt experiment configs/{name}.yaml`; plots in "
              f"[`docs/results/{name}/`](results/{name}/README.md).", ""]
    return lines


def main() -> None:
    lines = ["# Results", "", "Every number here comes from a JSON record under `results/`, written by the command "
             "named with it; `python scripts/write_results_md.py` regenerates this page.", ""]
    for path in sorted((ROOT / "results").glob("sst2_*.json")):
        lines += sst2_section(path)
    lines += comparison_section("paper_cpu")
    lines += ablation_section("ablation_length_cpu", "prompt_length", "Prompt length ablation")
    lines += ablation_section("ablation_init_cpu", "init", "Initialisation ablation")
    lines += ["## Ensembles and nearest tokens", "",
              "5-prompt ensembles on SST-2 and RTE with smollm2-135m, the batched-vs-sequential benchmark, and the "
              "nearest-vocabulary table of a trained prompt with its reading: [`docs/ensembles.md`](ensembles.md) "
              "(regenerated by `python scripts/ensembles_doc.py`).", "",
              "## Other reports", ""]
    lines += [f"- [`docs/results/{d.name}/`](results/{d.name}/README.md)"
              for d in sorted((ROOT / "docs" / "results").iterdir()) if (d / "README.md").is_file()]
    lines.append("")
    (ROOT / "docs" / "results.md").write_text("\n".join(lines))
    print("wrote docs/results.md")


if __name__ == "__main__":
    main()
