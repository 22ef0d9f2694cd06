"""Prompt-ensemble tables (the paper's Table 3 layout), the nearest-token table of a prompt, and the results page's
ensemble section, from the JSON the ensemble runs wrote (``docs/data/ensembles/``) and their committed prompt files.
``scripts/ensembles_doc.py`` builds ``docs/ensembles.md`` from the same tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from softprompt.experiments.records import Records, pct, values


def ensemble_table(results: list[dict[str, Any]]) -> list[str]:
    """The paper's Table 3 layout: one column per task, rows for each prompt and each combination."""
    names = [r["name"] for r in results[0]["per_prompt"]]
    head = "| | " + " | ".join(f"{r['task']} ({r['examples']} ex., {r['metric']})" for r in results) + " |"
    lines = [head, "|---" * (len(results) + 1) + "|"]
    for i in range(len(names)):
        label = names[i].split("-")[-1]  # sst2-seed1 → seed1: the same seed across tasks
        lines.append(f"| prompt {label} | " + " | ".join(pct(r["per_prompt"][i][r["metric"]]) for r in results) + " |")
    for key, label in [("average", f"average of the {len(names)}"), ("best", "best single (chosen on these examples)"),
                       ("vote", "**majority vote**"), ("mean_prob", "**mean probability**")]:
        lines.append(f"| {label} | " + " | ".join(pct(r[f"{key}_{r['metric']}"]) for r in results) + " |")
    return lines


def neighbor_table(nb: dict[str, Any], drift: dict[str, Any] | None) -> list[str]:
    """One row per prompt position: norm, top-k neighbours; with ``drift``, the init token and where it ranks now."""
    k = nb["k"]
    extra = ["init token", "its rank now", "cos(init, trained)"] if drift else []
    lines = ["| pos | norm | " + " | ".join([f"#{j + 1}" for j in range(k)] + extra) + " |",
             "|---" * (k + 2 + len(extra)) + "|"]
    for p in nb["positions"]:
        cells = [f"`{n['token']!r}` {n['cosine']:.2f}".replace("|", "\\|") for n in p["neighbors"]]
        if drift:
            d = drift["positions"][p["position"]]
            cells += [f"`{d['init_token']!r}`", str(d["init_token_rank_now"]), f"{d['cosine_to_init']:.2f}"]
        lines.append(f"| {p['position']} | {p['norm']:.2f} | " + " | ".join(cells) + " |")
    return lines


ENSEMBLE_DATA = Path("docs") / "data" / "ensembles"
ENSEMBLE_PROMPTS = Path("results") / "ensembles_cpu"
ENSEMBLE_TASKS = ("sst2", "copa")


def ensemble_runs(rec: Records) -> list[dict[str, Any]]:
    """The ensemble prompts' ``softprompt train --json`` lines."""
    data = rec.root / ENSEMBLE_DATA
    return [json.loads(line) for t in ENSEMBLE_TASKS if (data / f"train_{t}.jsonl").is_file()
            for line in (data / f"train_{t}.jsonl").read_text().splitlines() if line.strip()]


def ensemble_chose_nothing(runs: list[dict[str, Any]]) -> bool:
    return all("best_step" not in r or r["best_step"] == r["steps"] for r in runs) and any(
        k.startswith("best_val_") for r in runs for k in r)


def ensemble_configs(rec: Records, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ensemble prompts' train_config, read from their committed prompt files (empty: a file is missing)."""
    from softprompt.core.promptfile import load_prompt

    files = [rec.root / ENSEMBLE_PROMPTS / f"{name}.safetensors" for r in results for name in r["prompts"]]
    if not files or not all(f.is_file() for f in files):
        return []
    return [load_prompt(f).meta.train_config for f in files]


def ensemble_selection(rec: Records, configs: list[dict[str, Any]]) -> str:
    """How the ensemble's prompts chose their checkpoint, from their train lines (and prompt files)."""
    runs = ensemble_runs(rec)
    if not runs:
        return ""
    if ensemble_chose_nothing(runs):
        first = f"first {values(c['eval_limit'] for c in configs)}" if configs else "first"
        return (f"Checkpoint selection: none; each training run scored the {first} validation examples once, after "
                "its last step (the `best_val_*` of its file), so nothing was chosen on them, but those are among "
                "the examples reported here: this version selects on a slice of train instead.")
    if all("selection" in r and r["selection"].get("split") == "train" for r in runs):
        return "Checkpoint selection: on the slice held out from train."
    return "**Checkpoint selection: on the validation split reported here (before the held-out slice existed).**"


def ensemble_settings(configs: list[dict[str, Any]]) -> str:
    """The prompts' training settings, as their files record them."""
    if not configs:
        return ""
    return (f"The prompts (files in `{ENSEMBLE_PROMPTS}/`): {values(c['steps'] for c in configs)} steps of batch "
            f"{values(c['batch_size'] for c in configs)}, {values(c['optimizer'] for c in configs)} lr "
            f"{values(c['lr'] for c in configs)}, P = {values(c['prompt_length'] for c in configs)}, "
            f"{values(c['init'] for c in configs)} init, one per seed in {values(c['seed'] for c in configs)}.")


def ensembles_section(rec: Records) -> list[str]:
    """The ensemble table (the paper's Table 3 layout) and the nearest tokens of one prompt, from the JSON that
    docs/ensembles.md is built from."""
    data = rec.root / ENSEMBLE_DATA
    files = [data / f"ensemble_{t}.json" for t in ENSEMBLE_TASKS]
    if not all(f.is_file() for f in files):
        return []
    results = [json.loads(f.read_text()) for f in files]
    configs = ensemble_configs(rec, results)
    models = values(r["model"] for r in results)
    lines = [f"## Prompt ensembles ({models}, {values(len(r['prompts']) for r in results)} prompts per task)", "",
             *ensemble_table(results), "",
             " ".join(x for x in (ensemble_settings(configs), "The best single prompt is chosen on the "
                                  "evaluated examples (an oracle).", ensemble_selection(rec, configs),
                                  "Settings, commands and the reading: [`docs/ensembles.md`](ensembles.md).") if x),
             ""]
    nb_file, drift_file = data / "neighbors.json", data / "drift.json"
    if nb_file.is_file():
        nb = json.loads(nb_file.read_text())
        drift = json.loads(drift_file.read_text()) if drift_file.is_file() else None
        lines += [f"## Nearest vocabulary tokens of one trained prompt ({nb['file']})", "",
                  *neighbor_table(nb, drift), "", "![nearest-neighbour heat map](data/ensembles/neighbors.png)", ""]
        if (data / "reading.md").is_file():
            lines += [*(data / "reading.md").read_text().strip().splitlines(), ""]
    lines += ["## Ensembles and nearest tokens: details", "",
              "How the ensemble prompts were trained and evaluated, what the table says, the batched-vs-sequential "
              "benchmark, and the nearest-vocabulary table of a trained prompt with its reading: "
              "[`docs/ensembles.md`](ensembles.md) (regenerated by `python scripts/ensembles_doc.py`).", ""]
    return lines
