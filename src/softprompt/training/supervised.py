"""Training on a task's examples, what prompt tuning and model tuning share on top of the loop: their settings for
selection and input length, a step's batches of (input, target) pairs, and the selection of the best step by the
task's primary metric on a slice held out from train (:func:`softprompt.tasks.selection.selection_split`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from softprompt.core.backbone import Backbone
from softprompt.core.prompted import PromptedModel
from softprompt.core.tokenize import Batch, make_batch
from softprompt.evaluation.scoring import evaluate
from softprompt.tasks.base import Example, Task
from softprompt.training.loop import LoopConfig, Selection


@dataclass
class TaskTrainConfig(LoopConfig):
    """The loop's settings plus those of training on a task: selection evals and the input length."""

    eval_every: int = 50
    """steps between selection evals (0: only at the end); the best step by the task's metric is kept"""
    eval_limit: int | None = 200
    """selection examples per eval (None: all)"""
    eval_batch_size: int = 32
    max_input_tokens: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")


def example_batches(backbone: Backbone, task: Task, examples: list[Example], max_input_tokens: int
                    ) -> Callable[[int, list[list[int]]], list[Batch]]:
    """The loop's batch builder over ``examples``: each micro-batch's rows tokenized as (input, target) pairs."""
    add_eos = task.kind == "generation"  # a generated answer must learn to stop

    def build(step: int, micro_rows: list[list[int]]) -> list[Batch]:
        out = []
        for rows in micro_rows:
            picked = [examples[i] for i in rows]
            out.append(make_batch(backbone.tokenizer, [e.input for e in picked], [e.target for e in picked],
                                  encoder_decoder=backbone.is_encoder_decoder, add_eos=add_eos,
                                  max_input_tokens=max_input_tokens))
        return out

    return build


def task_selection(pm: PromptedModel, task: Task, selection: list[Example] | None, config: TaskTrainConfig
                   ) -> Selection | None:
    """Selection by ``task``'s primary metric on ``selection`` (None or empty: none, the last step is kept)."""
    if not selection:
        return None

    def scores() -> dict[str, float]:
        return evaluate(pm, task, selection, batch_size=config.eval_batch_size,
                        max_input_tokens=config.max_input_tokens)[0]

    return Selection(scores, task.primary_metric, config.eval_every)
