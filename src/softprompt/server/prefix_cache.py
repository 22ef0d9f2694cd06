"""Cached prompt prefixes for decoder-only models: a prompt's keys and values never depend on the input.

Under causal attention the prompt columns attend only to earlier prompt columns, so a prompt's per-layer keys and
values are the same for every request. :func:`prompt_kv` computes them once, at load (one forward of the prompt
embeddings alone); :func:`batch_cache` gathers each row's prompt K/V into one ``DynamicCache`` for a mixed batch,
and the model then runs only the input tokens. Notation: B rows, T input tokens, P_n prompt n's length, Pb the longest
prompt of the batch, Lyr layers, Hkv key/value heads, D head dim.

Layout of a cached batch (prompts of different lengths are *left*-padded inside the cache; inputs are left-padded
after it)::

    cache   .  .  p1 p2 p3 |  inputs   .  x1 x2 t1      mask  0 0 1 1 1 0 1 1 1
    cache   q1 q2 q3 q4 q5 |  inputs   y1 y2 y3 t1      mask  1 1 1 1 1 1 1 1 1

Position ids are explicit and continue from each row's own prompt length (``P_n + 0, 1, ...`` over real input
tokens), exactly the positions the splice gives the same row; targets end at the last column, as in the splice.
So a row's logits equal the uncached splice path within float tolerance (tests check 1e-5 in fp32).

Which families: the cache is used for model types in :data:`CACHED_MODEL_TYPES`, each checked against the splice in
``tests/test_prefix_cache.py``. Others (encoder-decoder T5, whose prompt goes through the encoder; Gemma 3, whose
sliding-window layers keep their own cache layout) use the splice path: correct, only without the saving.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from softprompt.backbone import Backbone
from softprompt.batching import Batch
from softprompt.splice import IGNORE_INDEX, compact_order

# Model types whose cached path is tested equal to the splice path (see the module docstring).
CACHED_MODEL_TYPES = frozenset({"llama", "qwen2", "gpt2"})


def supports_prefix_cache(backbone: Backbone) -> bool:
    return not backbone.is_encoder_decoder and backbone.model_type in CACHED_MODEL_TYPES


@dataclass(frozen=True)
class PromptKV:
    """One prompt's keys and values: ``kv`` [Lyr, 2, Hkv, P_n, D] (float32)."""

    kv: Tensor

    @property
    def length(self) -> int:
        return int(self.kv.shape[3])

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


@functools.cache
def _cache_arg(model_class: type) -> str:
    """The forward's KV-cache argument: transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name
    warns and is to be removed); older releases only know ``past_key_values``. Looked up once per model class,
    not on every decoding step."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _cache_kwargs(model: torch.nn.Module, cache: DynamicCache | None) -> dict[str, DynamicCache | None]:
    return {_cache_arg(type(model)): cache}


def _returned_cache(out: Any) -> DynamicCache:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.no_grad()
def prompt_kv(backbone: Backbone, prompt: Tensor) -> PromptKV:
    """Run the prompt [P, H] alone (positions 0..P-1, as the splice gives it) and keep its per-layer K/V."""
    model = backbone.model
    dtype = next(model.parameters()).dtype
    p = int(prompt.shape[0])
    layers = model.config.get_text_config().num_hidden_layers
    if p == 0:
        cfg = model.config.get_text_config()
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return PromptKV(torch.zeros(layers, 2, heads, 0, head_dim, device=backbone.device))
    embeds = prompt.to(backbone.device, dtype).unsqueeze(0)  # [1, P, H]
    out = model(inputs_embeds=embeds, attention_mask=torch.ones(1, p, dtype=torch.long, device=backbone.device),
                position_ids=torch.arange(p, device=backbone.device).unsqueeze(0), use_cache=True,
                logits_to_keep=1)
    cache = _returned_cache(out)
    kv = torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers])
    return PromptKV(kv.float())


def batch_cache(backbone: Backbone, prompts: Sequence[PromptKV]) -> tuple[DynamicCache | None, Tensor]:
    """Gather row b's prompt K/V (left-padded to the batch's longest prompt Pb) into one cache.

    Returns (cache or None when Pb = 0, cache_mask [B, Pb] with 1 on each row's real prompt slots).
    """
    device = backbone.device
    dtype = next(backbone.model.parameters()).dtype
    width = max((p.length for p in prompts), default=0)
    mask = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    if width == 0:
        return None, mask
    lyr, _, heads, _, dim = prompts[0].kv.shape
    buf = torch.zeros(lyr, 2, len(prompts), heads, width, dim, dtype=dtype, device=device)
    for b, p in enumerate(prompts):
        if p.length:
            buf[:, :, b, :, width - p.length:] = p.kv.to(dtype)
            mask[b, width - p.length:] = 1
    cache = DynamicCache(config=backbone.model.config)
    for i in range(lyr):
        cache.update(buf[i, 0], buf[i, 1], i)
    return cache, mask


def _left_align(batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded rows → left-padded (ids, mask, labels), so every target ends at the last column."""
    order = compact_order(batch.attention_mask)
    return (torch.gather(batch.input_ids, 1, order), torch.gather(batch.attention_mask, 1, order),
            torch.gather(batch.labels, 1, order))


def _forward(backbone: Backbone, prompts: Sequence[PromptKV], ids: Tensor, mask: Tensor, keep: int) -> Tensor:
    """Input tokens [B, T] (left-padded) after each row's cached prompt → logits of the last ``keep`` columns."""
    device = backbone.device
    cache, cache_mask = batch_cache(backbone, prompts)
    ids, mask = ids.to(device), mask.to(device)
    lengths = cache_mask.sum(dim=1, keepdim=True)  # [B, 1] each row's prompt length
    positions = (lengths + mask.cumsum(dim=1) - 1).clamp(min=0) * mask  # 0 on padding, as in the splice
    out = backbone.model(input_ids=ids, attention_mask=torch.cat([cache_mask, mask], dim=1), position_ids=positions,
                         use_cache=cache is not None, logits_to_keep=keep, **_cache_kwargs(backbone.model, cache))
    return out.logits


@torch.no_grad()
def cached_target_logprobs(backbone: Backbone, prompts: Sequence[PromptKV], batch: Batch) -> tuple[Tensor, Tensor]:
    """Per-token log-probabilities of each row's target after its cached prompt: (logp [B, Lt], mask [B, Lt]),
    what :meth:`softprompt.prompted.PromptedModel.target_logprobs` gives through the splice."""
    ids, mask, labels = _left_align(batch)
    width = int(batch.target_lengths.max())
    logits = _forward(backbone, prompts, ids, mask, width + 1)[:, :-1]  # column i predicts token i + 1
    labels = labels[:, -width:].to(logits.device)
    keep = labels != IGNORE_INDEX
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = torch.gather(logp, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * keep, keep


def cached_sequence_logprob(backbone: Backbone, prompts: Sequence[PromptKV], batch: Batch) -> Tensor:
    """[B] summed log-likelihood of each row's target (rank classification's score)."""
    return cached_target_logprobs(backbone, prompts, batch)[0].sum(dim=1)


@torch.no_grad()
def cached_generate(backbone: Backbone, prompts: Sequence[PromptKV], ids: Tensor, mask: Tensor,
                    max_new_tokens: Sequence[int]) -> list[list[int]]:
    """Greedy decoding after cached prompts. ids/mask: [B, T] right-padded inputs; ``max_new_tokens[b]`` per row.

    Returns each row's new token ids, up to and excluding EOS. A plain loop over the model's forward with the cache
    (rather than ``generate()``, which has no notion of a prefix given as embeddings).
    """
    device = backbone.device
    order = compact_order(mask)
    ids, mask = torch.gather(ids, 1, order).to(device), torch.gather(mask, 1, order).to(device)
    eos = backbone.tokenizer.eos_token_id
    cache, cache_mask = batch_cache(backbone, prompts)
    if cache is None:
        cache = DynamicCache(config=backbone.model.config)
    full_mask = torch.cat([cache_mask, mask], dim=1)
    positions = (cache_mask.sum(dim=1, keepdim=True) + mask.cumsum(dim=1) - 1).clamp(min=0) * mask
    limits = torch.tensor(list(max_new_tokens), dtype=torch.long, device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in prompts]
    for step in range(max(max_new_tokens, default=0)):
        logits = backbone.model(input_ids=ids, attention_mask=full_mask, position_ids=positions,
                                use_cache=True, logits_to_keep=1, **_cache_kwargs(backbone.model, cache)
                                ).logits[:, -1]
        nxt = logits.argmax(dim=-1)  # [B]
        done |= step >= limits
        done_now = nxt == eos if eos is not None else torch.zeros_like(done)
        for b in torch.nonzero(~done & ~done_now).flatten().tolist():
            out[b].append(int(nxt[b]))
        done |= done_now
        if bool(done.all()):
            break
        ids = nxt.unsqueeze(1)
        positions = positions[:, -1:] + 1
        full_mask = torch.cat([full_mask, torch.ones_like(ids)], dim=1)
    return out
