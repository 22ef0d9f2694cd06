"""The selection slice: the examples training chooses its best checkpoint on, held out from a task's *train* split.

Selection and reporting never share examples (docs/design.md). ``softprompt eval`` reports on the official
validation split; training (``softprompt train``, ``train --seeds``, experiment grids with ``eval_every > 0`` such as
the main job, configs/sst2.yaml) selects on a slice of train that it does not train on, cut here and only here:

- **size:** ``--selection-size`` examples; by default 10 % of the train split, at least 32 and at most 500, and
  never more than half of it (ReCoRD's FewGLUE train has 32 examples: 16 are held out);
- **whole groups:** a task's ``group_key`` unit (a MultiRC question, a ReCoRD passage, a SQuAD context) is on one
  side; the slice holds at least ``size`` examples, a few more where the last group is large;
- **which groups:** those with the smallest SHA-256 of ``"<seed>/<group>"`` (seed :data:`SELECTION_SEED`; for a
  task without groups, the example's position in the split), so every machine and Python version cuts the same
  slice, and the slice does not depend on the training seed: the prompts of an ensemble share one;
- **before the train limit:** ``--train-limit N`` then takes the first N examples of the rest of train, so a limit
  never moves the slice.

A prompt file records the slice (``PromptMeta.selection``: split, size, seed, limit, examples), so ``softprompt eval
--split selection`` can score the same examples again and label them as what they are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.tasks.base import Example, Task, TaskDataError, first_examples

SELECTION_SEED = 2021
"""The fixed seed of the slice (the year of Lester et al.); ``--selection-seed`` is not a flag on purpose: one slice
per task keeps every run's selection comparable."""
SELECTION_FRACTION = 0.10
SELECTION_MIN = 32
SELECTION_MAX = 500


def default_selection_size(n_train: int) -> int:
    """10 % of ``n_train`` examples, at least 32, at most 500, at most half of them."""
    return min(SELECTION_MAX, max(SELECTION_MIN, round(SELECTION_FRACTION * n_train)), n_train // 2)


def _rank(seed: int, group: object) -> bytes:
    return hashlib.sha256(f"{seed}/{group}".encode()).digest()


def hold_out(rows: Sequence[Example], size: int, seed: int = SELECTION_SEED, group_key: str | None = None,
             where: str = "train") -> tuple[list[Example], list[Example]]:
    """``(train, selection)``: the groups with the smallest hash until ``selection`` holds ``size`` examples; both
    parts keep file order."""
    keys = [e.meta[group_key] if group_key else i for i, e in enumerate(rows)]
    sizes: dict[object, int] = {}
    for k in keys:
        sizes[k] = sizes.get(k, 0) + 1
    if not 1 <= size < len(rows):
        raise TaskDataError(f"{where}: a selection slice of {size} examples needs 1 to {len(rows) - 1} "
                            f"(the train split has {len(rows)})")
    held: set[object] = set()
    count = 0
    for k in sorted(sizes, key=lambda k: _rank(seed, k)):
        if count >= size:
            break
        held.add(k)
        count += sizes[k]
    if len(held) == len(sizes):
        raise TaskDataError(f"{where}: a selection slice of {size} examples takes every group; nothing is left to "
                            "train on (lower --selection-size)")
    train = [e for e, k in zip(rows, keys, strict=True) if k not in held]
    selection = [e for e, k in zip(rows, keys, strict=True) if k in held]
    return train, selection


@dataclass(frozen=True)
class SelectionSplit:
    """A task's train split cut for training with checkpoint selection."""

    train: list[Example]
    """train minus the slice, then cut to ``train_limit``"""
    selection: list[Example]
    """the slice, cut to ``limit``"""
    info: dict[str, Any]
    """what identifies the slice, as prompt files record it: split, size, seed, limit, examples"""


def selection_split(task: Task, data_dir: Path | None = None, *, size: int | None = None,
                    seed: int = SELECTION_SEED, limit: int | None = None, train_limit: int | None = None
                    ) -> SelectionSplit:
    """Cut ``task``'s train split into the part to train on and the selection slice (see the module docstring).
    ``size``: None for the default; ``limit``: evaluate only the slice's first examples (at a group boundary)."""
    rows = task.examples("train", data_dir)
    size = default_selection_size(len(rows)) if size is None else size
    train, held = hold_out(rows, size, seed, task.group_key, where=f"task {task.name!r}")
    selection = first_examples(held, limit, task.group_key)
    info = {"split": "train", "size": size, "seed": seed, "limit": limit, "examples": len(selection)}
    return SelectionSplit(first_examples(train, train_limit, task.group_key), selection, info)


def recorded_selection(task: Task, info: Mapping[str, Any], data_dir: Path | None = None) -> list[Example]:
    """The slice a file's ``selection`` record names (what ``softprompt eval --split selection`` scores)."""
    if info.get("split") != "train" or "size" not in info:
        raise TaskDataError(f"task {task.name!r}: the selection record {dict(info)} names no slice of train that "
                            "can be cut again")
    return selection_split(task, data_dir, size=int(info["size"]), seed=int(info.get("seed", SELECTION_SEED)),
                           limit=info.get("limit")).selection


def selected_on(selection: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None = None,
                train_config: Mapping[str, Any] | None = None) -> str | None:
    """The split a prompt (or tuned model) was selected on, from what its file records; None if nothing was.

    A file records ``selection["split"]``. A file written before files recorded it selected on "validation" when
    its metrics hold a ``best_val_*`` score from more than one eval (``0 < eval_every < steps``); a single eval
    after the last step chose nothing.
    """
    if selection:
        return str(selection.get("split", "unrecorded"))
    if not any(str(k).startswith("best_val_") for k in (metrics or {})):
        return None
    config = train_config or {}
    if "eval_every" not in config or "steps" not in config:
        return "validation"  # cannot tell: assume the worst
    return "validation" if 0 < int(config["eval_every"] or 0) < int(config["steps"]) else None
