"""A small local classification task on disk (JSONL + YAML task spec) for the baseline and experiment tests."""

from __future__ import annotations

import json
from pathlib import Path


def write_task(folder: Path, n: int = 24, *, words: tuple[str, str] = ("bad", "good"), validation: int = 12) -> Path:
    """A separable task: '<words[1]> ...' → ' yes', '<words[0]> ...' → ' no', ``n`` train rows and ``validation``
    rows in a validation file (0: none). Returns the YAML spec's path; the task's name is the folder's name."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"text": f"{words[i % 2]} movie {i}", "label": str(i % 2)} for i in range(n + validation)]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    (folder / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[n:]))
    spec = folder / f"{folder.name}.yaml"
    spec.write_text(f"name: {folder.name}\ntrain: data.jsonl\ntemplate: 'Review: {{text}}\\nGood?'\n"
                    "verbalizer: {'0': ' no', '1': ' yes'}\ninstruction: 'Answer yes or no.\\n'\n"
                    + ("validation: dev.jsonl\n" if validation else ""))
    return spec
