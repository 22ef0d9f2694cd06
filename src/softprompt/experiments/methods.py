"""The three ways of adapting a frozen-or-not language model that the paper compares, a peer implementation of the
first, and what each one costs.

- ``prompt-tuning``: P soft-prompt vectors on a frozen model; task-specific parameters P·H.
- ``peft-prompt-tuning``: the same method trained by Hugging Face PEFT (its ``PromptTuningConfig``) at prompt tuning's
  budget and evaluated by softprompt (:mod:`softprompt.experiments.baselines.peft_prompt_tuning`); P·H too.
- ``model-tuning``: every weight of the model trained (no prompt); task-specific parameters: all of them.
- ``prompt-design``: the task's hand-written instruction (plus optional demonstrations) as text; nothing trained.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

Method = Literal["prompt-tuning", "model-tuning", "prompt-design", "peft-prompt-tuning"]
PAPER_METHODS: tuple[str, ...] = ("prompt-tuning", "model-tuning", "prompt-design")
"""the paper's three: a grid's methods unless it lists its own"""
METHODS: tuple[str, ...] = (*PAPER_METHODS, "peft-prompt-tuning")
PROMPT_METHODS: tuple[str, ...] = ("prompt-tuning", "peft-prompt-tuning")
"""the methods whose cells train a [P, H] prompt on the frozen model: the prompt-length and init axes apply"""


def count_parameters(model: nn.Module) -> int:
    """Number of scalar weights; tied weights (input embeddings = LM head) count once, as ``parameters()`` does."""
    return sum(p.numel() for p in model.parameters())


def task_parameters(method: str, *, model_parameters: int, hidden_size: int, prompt_length: int = 0) -> int:
    """Parameters a method stores per task: P·H for prompt tuning, the whole model for model tuning, 0 for prompt
    design (the paper's Figure 4 axis)."""
    if method in PROMPT_METHODS:
        return prompt_length * hidden_size
    if method == "model-tuning":
        return model_parameters
    if method == "prompt-design":
        return 0
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
