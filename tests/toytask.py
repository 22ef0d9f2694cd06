"""The one toy task of the tests: '<good> movie i' → ' yes', '<bad> movie i' → ' no'.

Separable by its first word, so a few steps of prompt tuning visibly learn it; the two target words have different
token lengths (' no' is 3 bytes, ' yes' 4 on the byte tokenizer), so batches mix target lengths. It comes as files,
the way a user's task arrives (:func:`write_task`: JSONL + a YAML spec; :func:`write_jsonl` of :func:`toy_rows` for
``--task FILE``), or in memory (:class:`ToyTask`, :func:`toy_examples`: the same examples, no files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from softprompt.tasks import Example, FileTask, FileTaskSpec, Task
from softprompt.training.prompt_tuning import TrainConfig

VERBALIZER = {"0": " no", "1": " yes"}
TEMPLATE = "Review: {text}\nGood?"
INSTRUCTION = "Answer yes or no.\n"


def toy_rows(n: int = 24, *, words: tuple[str, str] = ("bad", "good"), field: str = "text", start: int = 0
             ) -> list[dict[str, str]]:
    """Rows ``start`` .. ``start + n - 1``: ``{field: '<words[label]> movie i', 'label': '0' | '1'}``."""
    return [{field: f"{words[i % 2]} movie {i}", "label": str(i % 2)} for i in range(start, start + n)]


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_task(folder: Path, n: int = 24, *, words: tuple[str, str] = ("bad", "good"), validation: int = 12) -> Path:
    """The task as a folder: ``n`` train rows in data.jsonl, ``validation`` rows in dev.jsonl (0: none), and the
    YAML spec (template, verbalizer, instruction). Returns the spec's path; the task's name is the folder's name."""
    rows = toy_rows(n + validation, words=words)
    write_jsonl(folder / "data.jsonl", rows[:n])
    write_jsonl(folder / "dev.jsonl", rows[n:])
    spec = folder / f"{folder.name}.yaml"
    spec.write_text(f"name: {folder.name}\ntrain: data.jsonl\ntemplate: {json.dumps(TEMPLATE)}\n"
                    f"verbalizer: {json.dumps(VERBALIZER)}\ninstruction: {json.dumps(INSTRUCTION)}\n"
                    + ("validation: dev.jsonl\n" if validation else ""))
    return spec


def toy_task(folder: Path, n: int = 24, **options: object) -> FileTask:
    """The task loaded from :func:`write_task`'s files (``options``: its keyword arguments)."""
    return FileTask(FileTaskSpec.from_yaml(write_task(folder, n, **options)))  # type: ignore[arg-type]


def toy_examples(n: int = 24) -> list[Example]:
    """The first ``n`` examples, as :func:`toy_task` reads them from its train file."""
    choices = tuple(VERBALIZER.values())
    return [Example(TEMPLATE.format(text=r["text"]), VERBALIZER[r["label"]], choices) for r in toy_rows(n)]


class ToyTask(Task):
    """The task in memory, for runs given their examples (``train_prompt(..., toy_examples(), ...)``, e.g. under
    torchrun): :meth:`read` returns :func:`toy_examples` whatever the path."""

    name = "toy"
    verbalizer: ClassVar[dict[str, str]] = VERBALIZER
    text_template: ClassVar[str] = TEMPLATE

    def read(self, path: Path) -> list[Example]:
        return toy_examples()


def train_config(steps: int, grad_accum: int = 1) -> TrainConfig:
    """The toy runs' training settings: Adam at a constant lr 0.05 (so an interrupted run can be resumed to more
    steps), 8 rows a step, P = 4 from sampled vocabulary."""
    return TrainConfig(steps=steps, batch_size=8, grad_accum=grad_accum, prompt_length=4, init="sampled-vocab",
                       optimizer="adam", lr=0.05, schedule="constant", seed=3, save_every=1)
