"""Prompt design, the paper's GPT-3-style baseline: the task's hand-written instruction followed by K solved
training examples (demonstrations), all as plain text in front of each input; nothing is trained.

Demonstrations are sampled with a seed from the training split and kept only while the instruction, the
demonstrations and the *longest* evaluated input still fit in ``max_input_tokens``: the batching code truncates an
over-long input from its beginning, which would silently cut the instruction off. So the K asked for is an upper
bound; :class:`Design` says how many fitted. K = 0 is the zero-shot instruction alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from softprompt.core.tokenize import encode_inputs
from softprompt.tasks.base import Example, Task

# A demonstration is its input, its gold target and a blank line, so the query that follows reads like one more.
DEMO_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Design:
    """The text put in front of every input; ``shots`` demonstrations out of ``requested`` fitted."""

    prefix: str
    shots: int
    requested: int


def demonstration(example: Example) -> str:
    return example.input + example.target + DEMO_SEPARATOR


def design_prompt(
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[Example],
    *,
    shots: int = 0,
    pool: Sequence[Example] = (),
    seed: int = 0,
    max_input_tokens: int = 256,
) -> Design:
    """The instruction plus up to ``shots`` demonstrations from ``pool`` that leave room for every query."""
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    if shots and not pool:
        raise ValueError(f"{shots}-shot prompt design needs training examples to draw demonstrations from")
    prefix = task.instruction
    longest = max((len(ids) for ids in encode_inputs(tokenizer, [q.input for q in queries], 1 << 30)), default=0)
    budget = max_input_tokens - longest

    def fits(text: str) -> bool:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= budget

    used = 0
    if shots:
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
        # Try a bounded number of candidates: a long demonstration is skipped, a shorter one may still fit.
        for i in order[: 8 * shots]:
            candidate = prefix + demonstration(pool[i])
            if fits(candidate):
                prefix, used = candidate, used + 1
                if used == shots:
                    break
    return Design(prefix, used, shots)
