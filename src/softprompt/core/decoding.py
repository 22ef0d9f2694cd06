"""Greedy decoding, defined once for the library, the CLI, ensembles and the server.

Greedy here means: at every step the argmax of the next-token logits (the lower id on a tie), no sampling, no
repetition, length or n-gram penalties; a row stops when it emits any of the model's EOS ids (its
``generation_config.eos_token_id``, one id or a list, plus the tokenizer's) — the EOS is not part of the output — or
after its own ``max_new_tokens``.

It is a loop over the model's forward (:func:`greedy`), not ``generate()``: ``generate`` fills every option the
caller leaves unset from the model's shipped ``generation_config`` (a ``repetition_penalty``, a ``min_length``, a
``no_repeat_ngram_size``...), so keeping what a model ships out would mean listing every one of its options, and it
takes one ``max_new_tokens`` per call and cannot start after a prefix cache given as keys and values. The loop is the
same whatever the prompt mechanism: the caller's ``step`` runs the forward (spliced or cached, decoder-only or
encoder-decoder).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from softprompt.core.backbone import Backbone

# step(None) → next-token logits [B, V] after each row's context; step(tokens [B]) feeds one token per row and
# returns the logits after it.
Step = Callable[[Tensor | None], Tensor]


def eos_token_ids(backbone: Backbone) -> frozenset[int]:
    """Every id that ends a generation: the generation config's EOS (an int or a list) and the tokenizer's."""
    ids: set[int] = set()
    config = getattr(backbone.model, "generation_config", None)
    value = getattr(config, "eos_token_id", None)
    if isinstance(value, int):
        ids.add(value)
    elif value is not None:
        ids.update(int(v) for v in value)
    if backbone.tokenizer.eos_token_id is not None:
        ids.add(int(backbone.tokenizer.eos_token_id))
    return frozenset(ids)


@torch.no_grad()
def greedy(step: Step, max_new_tokens: Sequence[int], eos: frozenset[int]) -> list[list[int]]:
    """Greedy continuation of B rows: each row's new token ids (EOS excluded), at most ``max_new_tokens[b]``.

    A finished row keeps being fed its argmax (rows never see each other, so what it is fed does not matter) until
    every row is done.
    """
    out: list[list[int]] = [[] for _ in max_new_tokens]
    done = [limit <= 0 for limit in max_new_tokens]
    if all(done):
        return out
    logits = step(None)
    while True:
        nxt = logits.argmax(dim=-1)
        for b, token in enumerate(nxt.tolist()):
            if done[b]:
                continue
            if token in eos:
                done[b] = True
                continue
            out[b].append(token)
            done[b] = len(out[b]) >= max_new_tokens[b]
        if all(done):
            return out
        logits = step(nxt)
