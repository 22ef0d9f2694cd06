"""Cached prompt prefixes for decoder-only models: inference runs a prompt's columns once, not on every batch.

Under causal attention a prompt's keys and values never depend on what follows it, so :class:`PrefixCache` runs each
prompt of a bank once (its embeddings alone, at positions 0..P_n-1: what the splice gives it) and keeps its
per-layer K/V. :class:`~softprompt.core.prompted.PromptedModel` uses it on every inference call (scores, next-token
distributions, generation) — never with gradients on the prompt, which must flow through every layer. The rows
still go through the one splice: a row's first c_b prompt columns come from the cache and the splice lays out the
rest (any prompt slots not cached, the input, the target) with the same positions, mask and target gather.

c_b is the row's whole prompt, except for a row with no input token before its first predicted token (an empty input
and no BOS): its last prompt slot stays in the forward, where its logits predict that token. Notation: B rows,
P_n prompt n's length, C = max c_b, Lyr layers, Hkv key/value heads, D head dim.

Layout of a batch's cache: row b's c_b cached slots end at column C (left padding, masked); the spliced columns follow
with their own left padding::

    cache  .  .  p1 p2 p3 |  spliced  .  x1 x2 t1      mask  0 0 1 1 1 0 1 1 1
    cache  q1 q2 q3 q4 q5 |  spliced  y1 y2 y3 t1      mask  1 1 1 1 1 1 1 1 1

Padding between a row's prompt and its input is harmless where attention masks and position ids are all that place a
column (llama, qwen2, gpt2 in :data:`CACHED_MODEL_TYPES`; each is tested equal to the uncached splice). It is not for
sliding-window layers, which count *columns*: a row's window would reach fewer real tokens than in the splice's
contiguous layout. So Gemma 3 (and any config with sliding-window layers) runs uncached, as does T5 (the prompt goes
through the encoder, which has no causal prefix). Entries are keyed by bank slot and hold a copy of the prompt they
were computed from: a slot whose prompt changed (a training step, a server reusing the slot) is recomputed.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import Cache
from transformers.cache_utils import DynamicLayer

from softprompt.core.backbone import Backbone
from softprompt.core.bank import PromptBank
from softprompt.core.splice import position_ids_from_mask

# Model types whose cached path is tested equal to the splice path (tests/test_prefix_cache.py).
CACHED_MODEL_TYPES = frozenset({"llama", "qwen2", "gpt2"})


def supports_prefix_cache(backbone: Backbone) -> bool:
    """Decoder-only, a tested model type, and full attention in every layer (no sliding window)."""
    if backbone.is_encoder_decoder or backbone.model_type not in CACHED_MODEL_TYPES:
        return False
    layer_types = getattr(backbone.model.config.get_text_config(), "layer_types", None) or ()
    return all(t == "full_attention" for t in layer_types)


@functools.cache
def _cache_arg(model_class: type) -> str:
    """The forward's KV-cache argument: transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name
    warns and is to be removed); older releases only know ``past_key_values``. Looked up once per model class."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cache_kwargs(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for the forward of ``model`` (see :func:`_cache_arg`)."""
    return {_cache_arg(type(model)): cache}


def returned_cache(out: Any) -> Any:
    """The KV cache a forward returned (``cache`` in transformers 5.x, ``past_key_values`` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class _SeededLayer(DynamicLayer):
    """A :class:`DynamicLayer` that starts out holding a batch's cached K/V (it grows by concatenation from there).

    Filling a ``DynamicCache`` through ``update`` copies the prefix into each layer (a concatenation to empty
    tensors) before the forward concatenates the new columns to it: two fresh copies per layer and batch, plus the
    per-layer setup. Seeding the layers with the tensors themselves leaves only the forward's concatenation (building
    a one-row cache for smollm2-135m takes about 1 ms; on one request the gain is within bench/serve_bench.py case c's
    run-to-run noise)."""

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        super().__init__()
        self.keys, self.values, self.device, self.is_initialized = keys, values, keys.device, True


@dataclass(frozen=True)
class _Entry:
    prompt: Tensor  # [P_n, H] float32: the prompt the K/V were computed from
    kv: Tensor  # [Lyr, 2, Hkv, P_n, D] in the model's dtype


class PrefixCache:
    """Per-prompt keys and values of a bank's prompts, computed on first use (or :meth:`kv`) and whenever a slot's
    prompt changes."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self._entries: dict[int, _Entry] = {}

    @property
    def nbytes(self) -> int:
        return sum(e.kv.numel() * e.kv.element_size() for e in self._entries.values())

    @torch.no_grad()
    def kv(self, bank: PromptBank, n: int) -> Tensor:
        """Prompt n's K/V: [Lyr, 2, Hkv, P_n, D]. Checking the stored prompt against the bank costs P_n x H
        comparisons, nothing next to a forward, and makes a stale entry impossible."""
        prompt = bank.prompt(n).detach()
        entry = self._entries.get(n)
        if entry is None or entry.prompt.shape != prompt.shape or not torch.equal(entry.prompt, prompt):
            entry = _Entry(prompt.clone(), self._compute(prompt))
            self._entries[n] = entry
        return entry.kv

    def _compute(self, prompt: Tensor) -> Tensor:
        model = self.backbone.model
        dtype = next(model.parameters()).dtype
        p = int(prompt.shape[0])
        if p == 0:
            return prompt.new_zeros(0)
        mask = torch.ones(1, p, dtype=torch.long, device=self.backbone.device)
        kwargs: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in _forward_args(type(model)) else {}
        out = model(inputs_embeds=prompt.to(self.backbone.device, dtype).unsqueeze(0), attention_mask=mask,
                    position_ids=position_ids_from_mask(mask), use_cache=True, **kwargs)
        layers = returned_cache(out).layers
        return torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in layers])

    def batch(self, bank: PromptBank, index: Tensor, cached: Tensor) -> tuple[Cache | None, Tensor]:
        """One cache for a batch: row b holds the first ``cached[b]`` slots of prompt ``index[b]``, left-padded to
        C = max cached (see the module docstring).

        Returns (cache, or None when C = 0; cache_mask [B, C], 1 on each row's cached slots).
        """
        rows = [(int(n), int(c)) for n, c in zip(index.tolist(), cached.tolist(), strict=True)]
        width = max((c for _, c in rows), default=0)
        device = self.backbone.device
        slots = torch.arange(width, device=device)
        mask = (slots.unsqueeze(0) >= width - cached.to(device).unsqueeze(1)).long()  # [B, C]
        if width == 0:
            return None, mask
        kvs = {n: self.kv(bank, n) for n, c in rows if c}
        lyr, _, heads, _, dim = next(iter(kvs.values())).shape
        dtype = next(iter(kvs.values())).dtype
        if len(kvs) == 1 and all(c == width for _, c in rows):
            # Every row holds the same whole prefix (one request, or a batch of one task): a view of the entry,
            # broadcast over the rows, not a zeroed buffer filled row by row. The forward's cache update concatenates
            # each layer's new K/V to it (a new tensor), so the entry itself is never written.
            kv = next(iter(kvs.values()))[:, :, :, :width]
            buf = kv.unsqueeze(2).expand(lyr, 2, len(rows), heads, width, dim)
        else:
            buf = torch.zeros(lyr, 2, len(rows), heads, width, dim, dtype=dtype, device=device)
            for b, (n, c) in enumerate(rows):
                if c:  # causal: a prefix's K/V are a slice of the prompt's
                    buf[:, :, b, :, width - c:] = kvs[n][:, :, :, :c]
        # Only full-attention layers are cached (supports_prefix_cache), so every layer is a plain dynamic one.
        return Cache(layers=[_SeededLayer(buf[i, 0], buf[i, 1]) for i in range(lyr)]), mask

    def warm(self, bank: PromptBank, indices: Sequence[int]) -> None:
        """Compute the entries of these slots now (a server does it at load, not on the first request)."""
        for n in indices:
            self.kv(bank, n)


@functools.cache
def _forward_args(model_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(model_class.forward).parameters)
