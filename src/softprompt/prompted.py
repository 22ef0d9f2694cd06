"""A frozen backbone plus a prompt bank: target log-likelihoods, the training loss, and generation.

Each method takes a per-row ``prompt_index`` [B]; the rows go through the one splice. Only the bank is trainable.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from softprompt.backbone import Backbone
from softprompt.bank import PromptBank
from softprompt.batching import Batch, make_input_batch
from softprompt.splice import IGNORE_INDEX, Spliced, splice


class PromptedModel(nn.Module):
    """``backbone`` (frozen) + ``bank`` (N prompts, trainable)."""

    def __init__(self, backbone: Backbone, bank: PromptBank) -> None:
        super().__init__()
        if bank.hidden_size != backbone.hidden_size:
            raise ValueError(f"prompt hidden size {bank.hidden_size} does not match the model's "
                             f"{backbone.hidden_size}")
        self.backbone = backbone
        self.bank = bank.to(backbone.device)
        forward = inspect.signature(backbone.model.forward).parameters
        # Causal LMs in transformers accept ``logits_to_keep``: the LM head then runs only on the last columns,
        # where (after the left-compacting splice) every row's target sits. It is most of the cost on small models.
        self._keep_logits = "logits_to_keep" in forward
        self._position_ids = "position_ids" in forward

    @property
    def model(self) -> nn.Module:
        return self.backbone.model

    def splice_rows(self, input_ids: Tensor, attention_mask: Tensor, prompt_index: Tensor,
                    labels: Tensor | None = None) -> Spliced:
        """Embed the rows and splice each row's prompt in front."""
        device = self.backbone.device
        prompts, prompt_mask = self.bank(prompt_index.to(device))
        return splice(self.backbone.embed(input_ids), attention_mask.to(device), prompts, prompt_mask,
                      None if labels is None else labels.to(device))

    def _model_kwargs(self, s: Spliced) -> dict:
        dtype = next(self.model.parameters()).dtype
        kwargs = {"inputs_embeds": s.inputs_embeds.to(dtype), "attention_mask": s.attention_mask}
        if self._position_ids:
            kwargs["position_ids"] = s.position_ids
        return kwargs

    def target_logprobs(self, batch: Batch, prompt_index: Tensor) -> tuple[Tensor, Tensor]:
        """Per-token log-probabilities of each row's target.

        Returns (logp [B, Lt], mask [B, Lt]) with Lt the longest target; mask is 1 on real target tokens.
        """
        batch = batch.to(self.backbone.device)
        if self.backbone.is_encoder_decoder:
            s = self.splice_rows(batch.input_ids, batch.attention_mask, prompt_index)
            out = self.model(**self._model_kwargs(s), labels=batch.labels)
            labels = batch.labels
            logits = out.logits
        else:
            s = self.splice_rows(batch.input_ids, batch.attention_mask, prompt_index, batch.labels)
            width = int(batch.target_lengths.max())
            kwargs = self._model_kwargs(s)
            if self._keep_logits:
                kwargs["logits_to_keep"] = width + 1
            logits = self.model(**kwargs).logits[:, -(width + 1):-1]  # column i predicts token i + 1
            labels = s.labels[:, -width:]
        mask = labels != IGNORE_INDEX
        logp = torch.log_softmax(logits.float(), dim=-1)
        picked = torch.gather(logp, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return picked * mask, mask

    @torch.no_grad()
    def next_token_logprobs(self, input_ids: Tensor, attention_mask: Tensor, prompt_index: Tensor) -> Tensor:
        """[B, V] log-probabilities of the token that follows each row's prompt + input (decoder-only models).

        The same splice and positions as :meth:`target_logprobs`, so for a one-token target this equals its score;
        rank classification with one-token choices reads all K choices from one row instead of K rows.
        """
        if self.backbone.is_encoder_decoder:
            raise ValueError("next_token_logprobs is for decoder-only models")
        kwargs = self._model_kwargs(self.splice_rows(input_ids, attention_mask, prompt_index))
        if self._keep_logits:
            kwargs["logits_to_keep"] = 1
        return torch.log_softmax(self.model(**kwargs).logits[:, -1].float(), dim=-1)

    def sequence_logprob(self, batch: Batch, prompt_index: Tensor) -> Tensor:
        """[B] summed log-likelihood of each row's target (rank classification's score)."""
        logp, _ = self.target_logprobs(batch, prompt_index)
        return logp.sum(dim=1)

    def loss(self, batch: Batch, prompt_index: Tensor) -> Tensor:
        """Mean negative log-likelihood over every target token of the batch (scalar)."""
        logp, mask = self.target_logprobs(batch, prompt_index)
        return -logp.sum() / mask.sum().clamp(min=1)

    @torch.no_grad()
    def generate(self, inputs: Sequence[str], prompt_index: Tensor, *, max_new_tokens: int = 32,
                 max_input_tokens: int = 256) -> list[str]:
        """Greedy generation after each row's prompt; returns the decoded new text per row."""
        tok = self.backbone.tokenizer
        ids, mask = make_input_batch(tok, inputs, max_input_tokens)
        s = self.splice_rows(ids, mask, prompt_index)
        kwargs = self._model_kwargs(s)
        # generate() derives position ids from the mask, which gives the same positions as the splice.
        kwargs.pop("position_ids", None)
        out = self.model.generate(**kwargs, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=tok.pad_token_id)
        return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]
