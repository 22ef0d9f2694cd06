"""Predict and evaluate: rank classification (every choice scored in batched forwards) and greedy generation.

K choices, E examples, N prompts. :func:`score_choices` lays out rows, each with its prompt index, and runs them through
:class:`~softprompt.core.prompted.PromptedModel` (the one splice, and the prefix cache on decoder-only models) in chunks
of ``batch_size`` rows: E × N rows when every choice is one token (all K read from one next-token distribution), E × K ×
N otherwise. A single prompt (training, eval), several prompts for the same inputs (ensembles) or no prompt at all
(prompt design) are the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from softprompt.core.backbone import Backbone
from softprompt.core.prompted import NoContextError, PromptedModel
from softprompt.core.tokenize import encode_inputs, length_chunks, make_batch, make_input_batch, tokenize
from softprompt.tasks.base import Example, Task

R = TypeVar("R")


def row_chunks(rows: Sequence[R], batch_size: int, lengths: Sequence[int] | None = None) -> list[list[R]]:
    """Rows cut into forwards of at most ``batch_size``: in the given order, or, with each row's token count in
    ``lengths``, longest first (:func:`~softprompt.core.tokenize.length_chunks`: neighbouring rows pad little)."""
    if lengths is None:
        return [list(rows[start:start + batch_size]) for start in range(0, len(rows), batch_size)]
    return [[rows[i] for i in idx] for idx in length_chunks(lengths, batch_size, longest_first=True)]


def input_lengths(pm: PromptedModel, texts: Sequence[str], max_input_tokens: int) -> list[int]:
    """Token count of each input as a row holds it (the tokenizer's special tokens, truncation)."""
    return [len(ids) for ids in encode_inputs(pm.backbone.tokenizer, texts, max_input_tokens)]


@torch.no_grad()
def score_choices(
    pm: PromptedModel,
    examples: Sequence[Example],
    prompt_indices: Sequence[int] = (0,),
    *,
    batch_size: int = 32,
    instruction: str = "",
    max_input_tokens: int = 256,
    progress: bool = False,
    share_prefix: bool = True,
    sort_by_length: bool = False,
) -> Tensor:
    """Log-likelihood of every choice of every example under every prompt: [N, E, K] (−inf past an example's
    own number of choices).

    ``share_prefix``: when every choice is one token on a decoder-only model, score all K from one row (see
    :func:`single_token_choices`); False forces the general K-rows path (benchmarks, checks).
    ``sort_by_length``: rows of all prompts laid out longest first (:func:`row_chunks`), so a forward holds rows
    of nearly equal length and pads little; the same scores up to float rounding from other batch compositions.
    """
    if any(e.choices is None for e in examples):
        raise ValueError("score_choices needs classification examples (with choices)")
    k_max = max((len(e.choices or ()) for e in examples), default=0)
    n_in = (input_lengths(pm, [instruction + e.input for e in examples], max_input_tokens) if sort_by_length
            else None)
    first_tokens = single_token_choices(pm, examples) if share_prefix else None
    if first_tokens is not None:
        return _score_single_tokens(pm, examples, first_tokens, prompt_indices, batch_size=batch_size,
                                    instruction=instruction, max_input_tokens=max_input_tokens, progress=progress,
                                    n_in=n_in)
    rows = [(n, e, k) for n in range(len(prompt_indices)) for e in range(len(examples))
            for k in range(len(examples[e].choices or ()))]
    lengths = None
    if n_in is not None:
        words = sorted({c for e in examples for c in e.choices or ()})
        n_target = dict(zip(words, map(len, tokenize(pm.backbone.tokenizer, words, add_special_tokens=False)),
                            strict=True))
        lengths = [n_in[e] + n_target[examples[e].choices[k]] for _, e, k in rows]  # type: ignore[index]
    scores = torch.full((len(prompt_indices), len(examples), k_max), float("-inf"))
    for chunk in tqdm(row_chunks(rows, batch_size, lengths), desc="score", unit="batch", disable=not progress,
                      leave=False):
        texts = [instruction + examples[e].input for _, e, _ in chunk]
        batch = make_batch(
            pm.backbone.tokenizer,
            texts,
            [examples[e].choices[k] for _, e, k in chunk],  # type: ignore[index]
            encoder_decoder=pm.backbone.is_encoder_decoder,
            max_input_tokens=max_input_tokens,
        )
        index = torch.tensor([prompt_indices[n] for n, _, _ in chunk], dtype=torch.long)
        try:
            values = pm.sequence_logprob(batch, index).float().cpu()
        except NoContextError as err:
            raise err.naming(texts) from None
        for (n, e, k), v in zip(chunk, values, strict=True):
            scores[n, e, k] = v
    return scores


def single_token_choices(pm: PromptedModel, examples: Sequence[Example]) -> list[list[int]] | None:
    """Each example's choice token ids when every choice of a decoder-only model is one token, else None.

    Then one row per (example, prompt) scores all K choices from the same next-token distribution — the same
    numbers as K rows of input + choice, at 1/K of the compute (binary verbalizers are usually single tokens).
    """
    out = []
    known: dict[tuple[str, ...], list[int] | None] = {}
    for e in examples:
        choices = tuple(e.choices or ())
        if choices not in known:
            known[choices] = single_token_ids(pm.backbone, choices)
        ids = known[choices]
        if ids is None:
            return None
        out.append(ids)
    return out


def single_token_ids(backbone: Backbone, choices: Sequence[str]) -> list[int] | None:
    """The choices' token ids when each is one token on a decoder-only model (then all are read from one
    next-token distribution), else None. Tokenized as :func:`~softprompt.core.tokenize.make_batch` tokenizes targets."""
    if backbone.is_encoder_decoder:
        return None
    ids = tokenize(backbone.tokenizer, choices, add_special_tokens=False)
    return [i[0] for i in ids] if all(len(i) == 1 for i in ids) else None


def _score_single_tokens(pm: PromptedModel, examples: Sequence[Example], choice_ids: list[list[int]],
                         prompt_indices: Sequence[int], *, batch_size: int, instruction: str, max_input_tokens: int,
                         progress: bool, n_in: Sequence[int] | None) -> Tensor:
    k_max = max(len(c) for c in choice_ids)
    rows = [(n, e) for n in range(len(prompt_indices)) for e in range(len(examples))]
    lengths = None if n_in is None else [n_in[e] for _, e in rows]
    scores = torch.full((len(prompt_indices), len(examples), k_max), float("-inf"))
    for chunk in tqdm(row_chunks(rows, batch_size, lengths), desc="score", unit="batch", disable=not progress,
                      leave=False):
        texts = [instruction + examples[e].input for _, e in chunk]
        ids, mask = make_input_batch(pm.backbone.tokenizer, texts, max_input_tokens)
        index = torch.tensor([prompt_indices[n] for n, _ in chunk], dtype=torch.long)
        try:
            logp = pm.next_token_logprobs(ids, mask, index).cpu()
        except NoContextError as err:
            raise err.naming(texts) from None
        for row, (n, e) in enumerate(chunk):
            choices = choice_ids[e]
            scores[n, e, : len(choices)] = logp[row, choices]
    return scores


def pick(examples: Sequence[Example], scores: Tensor) -> list[str]:
    """Choice texts with the highest score per example; scores [E, K]. Ties go to the lower choice index."""
    return [e.choices[int(s.argmax())] for e, s in zip(examples, scores, strict=True)]  # type: ignore[index]


@torch.no_grad()
def generate_answers(pm: PromptedModel, examples: Sequence[Example], prompt_index: int = 0, *,
                     batch_size: int = 16, max_new_tokens: int = 32, instruction: str = "",
                     max_input_tokens: int = 256, progress: bool = False) -> list[str]:
    out: list[str] = []
    for start in tqdm(range(0, len(examples), batch_size), desc="generate", disable=not progress, leave=False):
        chunk = examples[start:start + batch_size]
        index = torch.full((len(chunk),), prompt_index, dtype=torch.long)
        out += pm.generate([instruction + e.input for e in chunk], index, max_new_tokens=max_new_tokens,
                           max_input_tokens=max_input_tokens)
    return out


def predict(pm: PromptedModel, task: Task, examples: Sequence[Example], prompt_index: int = 0, *,
            batch_size: int = 32, instruction: str = "", max_new_tokens: int = 32, max_input_tokens: int = 256,
            progress: bool = False) -> list[str]:
    """Predicted target text per example: the best choice (classification) or greedy output (generation)."""
    if task.kind == "classification":
        scores = score_choices(pm, examples, (prompt_index,), batch_size=batch_size, instruction=instruction,
                               max_input_tokens=max_input_tokens, progress=progress)[0]
        return pick(examples, scores)
    return generate_answers(pm, examples, prompt_index, batch_size=batch_size, max_new_tokens=max_new_tokens,
                            instruction=instruction, max_input_tokens=max_input_tokens, progress=progress)


def evaluate(pm: PromptedModel, task: Task, examples: Sequence[Example], prompt_index: int = 0, **kwargs
             ) -> tuple[dict[str, float], list[str]]:
    """(metrics, predictions) of one prompt of the bank on ``examples``."""
    predictions = predict(pm, task, examples, prompt_index, **kwargs)
    return task.metrics(predictions, examples), predictions
