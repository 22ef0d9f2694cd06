"""A frozen backbone plus a prompt bank: target log-likelihoods, the training loss, next-token distributions and
greedy generation.

Each method takes a per-row ``prompt_index`` [B]; the rows go through the one splice. On inference (no gradient on
the prompt) with a decoder-only family the prefix cache supports, each row's prompt columns come from a per-prompt KV
cache (:mod:`softprompt.core.prefix_cache`) instead of being recomputed: the same splice lays out the remaining columns,
with the same positions, the same target gather and the same greedy loop, so cached and uncached answers agree to
float rounding. Training computes every column (the prompt's gradient flows through every layer). Only the bank is
trainable.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from softprompt.core.backbone import Backbone
from softprompt.core.bank import PromptBank
from softprompt.core.decoding import Step, eos_token_ids, greedy
from softprompt.core.prefix_cache import PrefixCache, cache_kwargs, returned_cache, supports_prefix_cache
from softprompt.core.splice import Spliced, additive_causal_mask, gather_targets, splice
from softprompt.core.tokenize import Batch, make_input_batch


class NoContextError(ValueError):
    """A decoder-only row with nothing before its first predicted token: no prompt, no BOS, and an input that
    tokenizes to nothing. No column's logits predict that token, so there is no score or continuation to give
    (a server answers 422)."""

    def __init__(self, rows: Sequence[int], inputs: Sequence[str] | None = None) -> None:
        self.rows = list(rows)
        self.inputs = None if inputs is None else list(inputs)
        what = (", ".join(repr(t if len(t) <= 60 else t[:57] + "...") for t in self.inputs)
                if self.inputs is not None else f"in rows {self.rows}")
        super().__init__(f"no context to predict from for input {what}: it has no tokens, and neither a prompt nor a "
                         "BOS token precedes it")

    def naming(self, texts: Sequence[str]) -> NoContextError:
        """The same error naming the inputs (``texts[row]`` for each failing row)."""
        return NoContextError(self.rows, [texts[r] for r in self.rows])


class PromptedModel(nn.Module):
    """``backbone`` (frozen) + ``bank`` (N prompts, trainable); ``prefix_cache=False`` computes every prompt column
    on inference too (what training always does)."""

    def __init__(self, backbone: Backbone, bank: PromptBank, *, prefix_cache: bool = True) -> None:
        super().__init__()
        if bank.hidden_size != backbone.hidden_size:
            raise ValueError(f"prompt hidden size {bank.hidden_size} does not match the model's "
                             f"{backbone.hidden_size}")
        self.backbone = backbone
        self.bank = bank.to(backbone.device)
        self.prefix_cache = PrefixCache(backbone) if prefix_cache and supports_prefix_cache(backbone) else None
        forward = inspect.signature(backbone.model.forward).parameters
        # Causal LMs in transformers accept ``logits_to_keep``: the LM head then runs only on the last columns,
        # where (after the left-compacting splice) every row's target sits. It is most of the cost on small models.
        self._keep_logits = "logits_to_keep" in forward
        self._position_ids = "position_ids" in forward
        # Where a forward needs a mask (a cached prefix, or padding), hand SDPA its float form once per forward
        # rather than the boolean one it converts in every layer (30 conversions of a [B, L, C + L] mask per
        # forward on smollm2; bench/serve_bench.py case c measures the cached prompt's cost, docs/serving.md says
        # what this saved). Same outputs, bit for bit. Only on the tested decoder-only types with full attention in
        # every layer (a 4-D mask would override Gemma 3's sliding-window ones), with SDPA, on CPU.
        self._additive_mask = (supports_prefix_cache(backbone) and backbone.device.type == "cpu"
                               and getattr(backbone.model.config, "_attn_implementation", None) == "sdpa")

    @property
    def model(self) -> nn.Module:
        return self.backbone.model

    def _caching(self) -> bool:
        return self.prefix_cache is not None and not (torch.is_grad_enabled() and self.bank.weight.requires_grad)

    def warm(self, indices: Sequence[int]) -> None:
        """Compute these prompts' cached keys and values now rather than on first use (no-op without the cache)."""
        if self.prefix_cache is not None:
            self.prefix_cache.warm(self.bank, indices)

    def has_context(self, input_lengths: Tensor, prompt_index: Tensor) -> Tensor:
        """[B] bool: whether a decoder-only row of ``input_lengths[b]`` tokens (BOS included) after prompt
        ``prompt_index[b]`` has a token to predict its first next token from. Encoder-decoder rows always have one
        (the decoder starts from its start token)."""
        if self.backbone.is_encoder_decoder:
            return torch.ones_like(input_lengths, dtype=torch.bool)
        lengths = self.bank.lengths[prompt_index.to(self.bank.lengths.device)].cpu()
        return (lengths > 0) | (input_lengths.cpu() > 0)

    def splice_rows(self, input_ids: Tensor, attention_mask: Tensor, prompt_index: Tensor,
                    labels: Tensor | None = None) -> Spliced:
        """Embed the rows and splice each row's whole prompt in front: what a forward without the cache consumes."""
        return self.layout(input_ids, attention_mask, prompt_index, labels)[0]

    def layout(self, input_ids: Tensor, attention_mask: Tensor, prompt_index: Tensor, labels: Tensor | None = None,
               input_lengths: Tensor | None = None) -> tuple[Spliced, Any]:
        """Embed the rows and splice each row's prompt in front; on cached inference, of each row's prompt only
        what the cache does not hold.

        input_ids, attention_mask, labels: [B, T]; input_lengths: [B] tokens before each row's first predicted one
        (decoder-only; raises :class:`NoContextError` where it and the prompt are both empty). Returns (the spliced
        rows, the batch's KV cache of their first columns or None).
        """
        device = self.backbone.device
        index = prompt_index.to(device)
        prompts, prompt_mask = self.bank(index)
        cache, cache_mask = None, None
        if input_lengths is not None:
            ok = self.has_context(input_lengths, index)
            if not bool(ok.all()):
                raise NoContextError(torch.nonzero(~ok).flatten().tolist())
            if self._caching():
                lengths = prompt_mask.sum(dim=1)
                # The whole prompt, but a row with no input token keeps its last prompt slot in the forward: that
                # column's logits predict the row's first token.
                cached = lengths - (input_lengths.to(device) == 0).long()
                cache, cache_mask = self.prefix_cache.batch(self.bank, index, cached)  # type: ignore[union-attr]
                slots = torch.arange(prompts.shape[1], device=device)
                prompt_mask = prompt_mask * (slots.unsqueeze(0) >= cached.unsqueeze(1))
        s = splice(self.backbone.embed(input_ids), attention_mask.to(device), prompts, prompt_mask,
                   None if labels is None else labels.to(device), prefix_mask=cache_mask)
        return s, cache

    def _forward(self, s: Spliced, cache: Any, *, keep: int | None = None, use_cache: bool = False,
                 **extra: Any) -> Any:
        dtype = next(self.model.parameters()).dtype
        mask = s.attention_mask
        if self._additive_mask and (cache is not None or not bool(mask.all())):
            # (no cache and no padding: transformers passes no mask at all and SDPA runs its causal kernel)
            mask = additive_causal_mask(mask, s.inputs_embeds.shape[1], dtype)
        kwargs: dict[str, Any] = {"inputs_embeds": s.inputs_embeds.to(dtype), "attention_mask": mask,
                                  "use_cache": use_cache or cache is not None, **extra}
        if self._position_ids:
            kwargs["position_ids"] = s.position_ids
        if keep is not None and self._keep_logits:
            # The last ``keep`` columns as indices, not as a count: a count slices the hidden states to a strided
            # [B, keep, H] view, and the LM head on a strided 3-D input runs as a batched matmul over a broadcast
            # copy of the vocabulary matrix (on CPU 5x the time of the same product on a contiguous input, for
            # smollm2's 49k x 576 head); indices gather a contiguous copy of those few columns.
            width = s.inputs_embeds.shape[1]
            kwargs["logits_to_keep"] = torch.arange(width - keep, width, device=s.inputs_embeds.device)
        if cache is not None:
            kwargs.update(cache_kwargs(self.model, cache))
        return self.model(**kwargs)

    def target_logprobs(self, batch: Batch, prompt_index: Tensor) -> tuple[Tensor, Tensor]:
        """Per-token log-probabilities of each row's target.

        Returns (logp [B, Lt], mask [B, Lt]) with Lt the longest target; mask is 1 on real target tokens.
        """
        batch = batch.to(self.backbone.device)
        if self.backbone.is_encoder_decoder:
            s, _ = self.layout(batch.input_ids, batch.attention_mask, prompt_index)
            logits = self._forward(s, None, labels=batch.labels).logits
            return gather_targets(logits, batch.labels)
        s, cache = self.layout(batch.input_ids, batch.attention_mask, prompt_index, batch.labels,
                               input_lengths=batch.attention_mask.sum(dim=1) - batch.target_lengths)
        width = int(batch.target_lengths.max())
        logits = self._forward(s, cache, keep=width + 1).logits[:, -(width + 1):-1]  # column i predicts token i + 1
        return gather_targets(logits, s.labels[:, -width:])  # type: ignore[index]

    @torch.no_grad()
    def next_token_logprobs(self, input_ids: Tensor, attention_mask: Tensor, prompt_index: Tensor) -> Tensor:
        """[B, V] log-probabilities of the token that follows each row's prompt + input (decoder-only models).

        The same layout as :meth:`target_logprobs`, so for a one-token target this equals its score; rank
        classification with one-token choices reads all K choices from one row instead of K rows.
        """
        if self.backbone.is_encoder_decoder:
            raise ValueError("next_token_logprobs is for decoder-only models")
        s, cache = self.layout(input_ids, attention_mask, prompt_index, input_lengths=attention_mask.sum(dim=1))
        return torch.log_softmax(self._forward(s, cache, keep=1).logits[:, -1].float(), dim=-1)

    def sequence_logprob(self, batch: Batch, prompt_index: Tensor) -> Tensor:
        """[B] summed log-likelihood of each row's target (rank classification's score)."""
        logp, _ = self.target_logprobs(batch, prompt_index)
        return logp.sum(dim=1)

    def loss(self, batch: Batch, prompt_index: Tensor) -> Tensor:
        """Mean negative log-likelihood over every target token of the batch (scalar)."""
        logp, mask = self.target_logprobs(batch, prompt_index)
        return -logp.sum() / mask.sum().clamp(min=1)

    @torch.no_grad()
    def generate(self, inputs: Sequence[str], prompt_index: Tensor, *, max_new_tokens: int | Sequence[int] = 32,
                 max_input_tokens: int = 256) -> list[str]:
        """Greedy generation (:mod:`softprompt.core.decoding`) after each row's prompt; the decoded new text per row.
        ``max_new_tokens``: one limit, or one per row."""
        tok = self.backbone.tokenizer
        limits = [max_new_tokens] * len(inputs) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        ids, mask = make_input_batch(tok, inputs, max_input_tokens)
        try:
            new = self.generate_ids(ids, mask, prompt_index, limits)
        except NoContextError as err:
            raise err.naming(inputs) from None
        return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]

    @torch.no_grad()
    def generate_ids(self, input_ids: Tensor, attention_mask: Tensor, prompt_index: Tensor,
                     max_new_tokens: Sequence[int]) -> list[list[int]]:
        """Greedy new token ids of each row [B, T] (EOS excluded), at most ``max_new_tokens[b]`` each."""
        if self.backbone.is_encoder_decoder:
            step = self._encoder_decoder_step(input_ids, attention_mask, prompt_index)
        else:
            step = self._decoder_step(input_ids, attention_mask, prompt_index)
        return greedy(step, max_new_tokens, eos_token_ids(self.backbone))

    def _decoder_step(self, input_ids: Tensor, attention_mask: Tensor, prompt_index: Tensor) -> Step:
        s, cache = self.layout(input_ids, attention_mask, prompt_index, input_lengths=attention_mask.sum(dim=1))

        def step(tokens: Tensor | None) -> Tensor:
            nonlocal s, cache
            if tokens is not None:
                # Every row's last column is real (left-compacted), so the next position is the last one + 1.
                new = tokens.to(s.attention_mask.device).unsqueeze(1)
                s = Spliced(self.backbone.embed(new), torch.cat([s.attention_mask, torch.ones_like(new)], dim=1),
                            s.position_ids[:, -1:] + 1, None)
            out = self._forward(s, cache, keep=1, use_cache=True)
            cache = returned_cache(out)
            return out.logits[:, -1]

        return step

    def _encoder_decoder_step(self, input_ids: Tensor, attention_mask: Tensor, prompt_index: Tensor) -> Step:
        s, _ = self.layout(input_ids, attention_mask, prompt_index)
        dtype = next(self.model.parameters()).dtype
        encoded = self.model.get_encoder()(inputs_embeds=s.inputs_embeds.to(dtype), attention_mask=s.attention_mask)
        start = self.model.generation_config.decoder_start_token_id
        start = self.model.config.decoder_start_token_id if start is None else start
        cache: Any = None

        def step(tokens: Tensor | None) -> Tensor:
            nonlocal cache
            if tokens is None:
                tokens = torch.full((s.attention_mask.shape[0],), int(start), dtype=torch.long)
            out = self.model(encoder_outputs=encoded, attention_mask=s.attention_mask,
                             decoder_input_ids=tokens.to(s.attention_mask.device).unsqueeze(1), use_cache=True,
                             **cache_kwargs(self.model, cache))
            cache = returned_cache(out)
            return out.logits[:, -1]

        return step
