"""The one splice: put each row's soft prompt in front of its input embeddings.

Every path of softprompt (training with one prompt, ensembles with K prompts per input, serving with a different
prompt per row) goes through :func:`splice`. Notation: B batch rows, T input tokens, P prompt slots, H hidden size.

Layout decision: the output is *left-compacted*. Whatever the input's padding side, and whatever the per-row prompt
length, every masked slot (input padding and unused prompt slots) moves to the left and the real slots keep their
order on the right::

    input  (right-padded)  x1 x2 x3 .  .        prompt  p1 p2
    output                 .  .  p1 p2 x1 x2 x3

So a row's real content is contiguous, position ids count only real slots (``cumsum(mask) - 1``), and a target
placed at the end of the input ends at the last column of every row — which lets the language-model head run on the
last few columns only (``logits_to_keep``). Columns that are padding in every row are dropped (a bank's longest
prompt may be longer than any of the batch's). Alternatives rejected: keeping pads between prompt and input (position
ids would still work, but targets would no longer end at a shared column), and right-padding the output (generation
needs left padding anyway).

With a cached prefix (``prefix_mask``, see :mod:`softprompt.core.prefix_cache`) the first C columns of every row are not
computed but read from a KV cache; the splice then lays out the remaining columns exactly as above, and the mask and
positions cover the cache's columns followed by them::

    cache  .  p1 p2 |  spliced  .  x1 x2 x3     mask  0 1 1 0 1 1 1     positions (spliced)  0 2 3 4
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Spliced:
    """A batch with prompts spliced in, left-compacted: L ≤ P + T columns (the longest row), after C cached ones.

    C = 0 unless :func:`splice` was given a ``prefix_mask``.
    """

    inputs_embeds: Tensor  # [B, L, H]
    attention_mask: Tensor  # [B, C + L], 1 for real slots (the cache's columns first)
    position_ids: Tensor  # [B, L], 0.. over real slots (counting cached ones), 0 on padding
    labels: Tensor | None  # [B, L], IGNORE_INDEX on prompt and padding


def compact_order(mask: Tensor) -> Tensor:
    """Column order that moves masked slots left and keeps real slots in order.

    mask: [B, L] of 0/1. Returns [B, L] long indices for ``torch.gather`` along dim 1.
    """
    # A stable sort on the mask puts every 0 before every 1 and keeps the original order inside each group.
    return torch.sort(mask.to(torch.int8), dim=1, stable=True).indices


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """[B, L] 0/1 mask → [B, L] positions counting real slots only (0 on padding)."""
    mask = mask.long()
    return (mask.cumsum(dim=1) - 1).clamp(min=0) * mask


def additive_causal_mask(attention_mask: Tensor, q_length: int, dtype: torch.dtype) -> Tensor:
    """The causal + padding mask transformers builds for SDPA from a 2-D mask, as SDPA's additive float form.

    attention_mask: [B, K] 0/1 over every key column (a cache's C columns, then the forward's L = ``q_length``).
    Returns [B, 1, L, K]: 0 where query i (column K - L + i) may attend key j (j real and j ≤ K - L + i), -inf
    elsewhere. Passed as a 4-D mask, transformers uses it as it is, once for the whole forward; given the boolean
    mask, SDPA on CPU converts it to exactly this float mask in every layer (the same -inf, so a row with no key
    left gives 0 in both: outputs are bit-identical, tested).
    """
    keys = attention_mask.shape[1]
    columns = torch.arange(keys, device=attention_mask.device)
    causal = columns.unsqueeze(0) <= (columns[keys - q_length:]).unsqueeze(1)  # [L, K]
    allowed = causal.unsqueeze(0) & attention_mask.bool().unsqueeze(1)  # [B, L, K]
    return torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device).masked_fill_(
        ~allowed, float("-inf")).unsqueeze(1)


def gather_targets(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probability of each target token under the logits that predict it.

    logits: [B, Lt, V], column i predicting ``labels[:, i]``; labels: [B, Lt], IGNORE_INDEX off the target.
    Returns (logp [B, Lt] in float32, 0 off the target; mask [B, Lt], True on target tokens).
    """
    mask = labels != IGNORE_INDEX
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = torch.gather(logp, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def splice(
    embeds: Tensor,
    attention_mask: Tensor,
    prompts: Tensor,
    prompt_mask: Tensor | None = None,
    labels: Tensor | None = None,
    prefix_mask: Tensor | None = None,
) -> Spliced:
    """Prepend ``prompts[b]`` to row b of ``embeds`` and left-compact the result.

    Args:
        embeds: [B, T, H] input embeddings, in the space the model consumes (``get_input_embeddings()`` output).
        attention_mask: [B, T] 1 for real tokens; left or right padding (real tokens must be contiguous).
        prompts: [B, P, H] one prompt per row (P may be 0).
        prompt_mask: [B, P] 1 for used prompt slots; rows of a bank with mixed prompt lengths leave slots unused.
        labels: [B, T] token ids to predict, IGNORE_INDEX where nothing is predicted.
        prefix_mask: [B, C] 1 on the real columns of a KV cache that precedes every row (in the cache's column
            order); those columns count in the positions and lead the returned attention mask.
    """
    if embeds.dim() != 3 or prompts.dim() != 3:
        raise ValueError(f"embeds and prompts must be [B, T, H] and [B, P, H], got {tuple(embeds.shape)}, "
                         f"{tuple(prompts.shape)}")
    b, _, h = embeds.shape
    if prompts.shape[0] != b or prompts.shape[2] != h:
        raise ValueError(f"prompts {tuple(prompts.shape)} do not match embeds {tuple(embeds.shape)}")
    p = prompts.shape[1]
    if prompt_mask is None:
        prompt_mask = attention_mask.new_ones(b, p)
    mask = torch.cat([prompt_mask.to(attention_mask.dtype), attention_mask], dim=1)  # [B, L]
    order = compact_order(mask)  # [B, L]
    full = torch.cat([prompts.to(embeds.dtype), embeds], dim=1)  # [B, L, H]
    # Columns that are padding in every row lead the compacted layout; drop them.
    start = mask.shape[1] - (int(mask.sum(dim=1).max()) if b else 0)
    order = order[:, start:]
    inputs_embeds = torch.gather(full, 1, order.unsqueeze(-1).expand(-1, -1, h))
    mask = torch.gather(mask, 1, order)
    out_labels = None
    if labels is not None:
        full_labels = torch.cat([labels.new_full((b, p), IGNORE_INDEX), labels], dim=1)
        out_labels = torch.gather(full_labels, 1, order).masked_fill(mask == 0, IGNORE_INDEX)
    if prefix_mask is None:
        return Spliced(inputs_embeds, mask, position_ids_from_mask(mask), out_labels)
    full_mask = torch.cat([prefix_mask.to(mask.dtype), mask], dim=1)  # [B, C + L]
    positions = position_ids_from_mask(full_mask)[:, prefix_mask.shape[1]:]
    return Spliced(inputs_embeds, full_mask, positions, out_labels)
