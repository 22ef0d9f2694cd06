"""The records the results page is built from (:mod:`softprompt.experiments.resultspage`), read once each, and
the one record derived from the data sets: the majority floors (``softprompt report --floors``)."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from softprompt.core.files import atomic_write

FLOORS = Path("results") / "majority.json"
COMMAND = "softprompt report"


def run_command(grid: str) -> str:
    """The command that runs (or continues) the grid ``configs/<grid>.yaml`` into ``results/``, where the page reads
    its cells: it names the output, since a config need not (its default is ``runs/``, which git ignores)."""
    return f"softprompt experiment configs/{grid}.yaml --output results"


class Records:
    """The records under a repository root, each file read once."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._cells: dict[str, list[dict[str, Any]]] = {}
        self._floors: dict[tuple[str, str, int | None], float] | None = None
        self._steps: dict[tuple[str, str], list[float]] = {}

    def cells(self, grid: str) -> list[dict[str, Any]]:
        if grid not in self._cells:
            folder = self.root / "results" / grid / "cells"
            self._cells[grid] = [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))]
        return self._cells[grid]

    def step_seconds(self, grid: str, cell: dict[str, Any]) -> list[float]:
        """The seconds of each training step a tuned cell logged (``<id>.metrics.jsonl`` beside its prompt or its
        model; a cell evaluating a sibling's training reads the sibling's), selection evals not included; empty
        when there is no log."""
        owner = cell.get("prompt_trained_by") or cell.get("model_trained_by") or cell["id"]
        if (grid, owner) not in self._steps:
            folder = self.root / "results" / grid
            path = next((p for p in (folder / "prompts" / f"{owner}.metrics.jsonl",
                                     folder / "models" / f"{owner}.metrics.jsonl") if p.is_file()), None)
            lines = [] if path is None else [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            self._steps[grid, owner] = [r["step_seconds"] for r in lines if "step_seconds" in r]
        return self._steps[grid, owner]

    def floor(self, task: str, split: str, limit: int | None) -> float | None:
        """The majority floor (×100) of ``task``'s first ``limit`` examples of ``split``; None if not measured."""
        if self._floors is None:
            path = self.root / FLOORS
            entries = json.loads(path.read_text())["floors"] if path.is_file() else []
            self._floors = {(e["task"], e["split"], e["limit"]): 100 * e["score"] for e in entries}
        return self._floors.get((task, split, limit))

    def cell_floor(self, cell: dict[str, Any]) -> float | None:
        return self.floor(cell["cell"]["eval_task"], cell["eval"]["split"], cell["eval"]["limit"])


def pct_or_blank(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def values(items: Iterable[Any]) -> str:
    """One value as itself, several as a set: ``20`` or ``{1, 5, 20}``."""
    distinct = list(dict.fromkeys(items))
    with contextlib.suppress(TypeError):  # mixed types (a number and "auto") keep their order
        distinct = sorted(distinct)
    return fmt(distinct[0]) if len(distinct) == 1 else "{" + ", ".join(map(fmt, distinct)) + "}"


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def majority_floor(examples: list[Any]) -> dict[str, Any]:
    """The score of always answering the examples' most common target; for tasks whose choices differ per example
    (COPA) the chance of a uniform guess."""
    counts = Counter(e.target for e in examples)
    target, n = counts.most_common(1)[0]
    if n == 1 and examples[0].choices:  # every target unique: per-example choices
        return {"rule": "uniform over the choices", "target": None, "score": 1 / len(examples[0].choices)}
    return {"rule": "most common target", "target": target, "score": n / len(examples)}


def measure_floors(root: str | Path = ".", data_dir: str | Path | None = None) -> Path:
    """Measure the majority floor of every (eval task, split, limit) of the committed grids' cells from the data sets
    and write ``<root>/results/majority.json`` (the one record of the page that reads data)."""
    from softprompt.tasks import get_task

    root = Path(root)
    keys = sorted({(c["cell"]["eval_task"], c["eval"]["split"], c["eval"]["limit"])
                   for grid in sorted((root / "results").glob("*/cells"))
                   for c in (json.loads(f.read_text()) for f in sorted(grid.glob("*.json")))},
                  key=lambda k: (k[0], k[1], -1 if k[2] is None else k[2]))
    floors = []
    for task, split, limit in keys:
        examples = get_task(task).examples(split, Path(data_dir) if data_dir else None, limit=limit)
        floors.append({"task": task, "split": split, "limit": limit, "examples": len(examples),
                       **majority_floor(examples)})
    record = {"what": "the majority floor of the examples each committed grid evaluates: the score of always "
                      "answering their most common target (per-example choices: a uniform guess)",
              "command": f"{COMMAND} --floors", "floors": floors}
    path = root / FLOORS
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))
    return path
