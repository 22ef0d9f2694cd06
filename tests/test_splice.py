"""The one splice: layout, masks, labels, and equivalence with the bare model."""

from __future__ import annotations

import torch

from softprompt.core.bank import PromptBank
from softprompt.core.prompted import PromptedModel
from softprompt.core.splice import IGNORE_INDEX, splice
from softprompt.core.tokenize import make_batch


def test_layout_left_compacts_any_padding() -> None:
    h = 2
    embeds = torch.arange(2 * 4 * h, dtype=torch.float).view(2, 4, h) + 100
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])  # right-padded row, left-padded row
    prompts = -torch.arange(2 * 3 * h, dtype=torch.float).view(2, 3, h) - 1
    prompt_mask = torch.tensor([[1, 1, 1], [1, 0, 0]])  # second row: a prompt of length 1
    labels = torch.tensor([[7, 8, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, 5, 6, 9]])
    s = splice(embeds, mask, prompts, prompt_mask, labels)
    # 7 columns, the first 2 padding in both rows: dropped.
    assert s.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]
    assert s.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 0, 1, 2, 3]]
    # Row 0: three prompt slots then the two real tokens, in order.
    assert torch.equal(s.inputs_embeds[0, :3], prompts[0])
    assert torch.equal(s.inputs_embeds[0, 3:], embeds[0, :2])
    # Row 1: its one used prompt slot, then tokens 1..3.
    assert torch.equal(s.inputs_embeds[1, 1], prompts[1, 0])
    assert torch.equal(s.inputs_embeds[1, 2:], embeds[1, 1:])
    assert s.labels.tolist() == [[IGNORE_INDEX] * 3 + [7, 8], [IGNORE_INDEX] * 2 + [5, 6, 9]]


def test_layout_after_a_cached_prefix() -> None:
    """The columns a cache holds lead the mask and count in the positions; the rest is the usual layout."""
    h = 2
    embeds = torch.arange(2 * 3 * h, dtype=torch.float).view(2, 3, h)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    prefix_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])  # cached prompt slots, left-padded: 2 and 3
    s = splice(embeds, mask, embeds.new_zeros(2, 0, h), prefix_mask=prefix_mask)
    assert s.attention_mask.tolist() == [[0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 1]]
    assert s.position_ids.tolist() == [[2, 3, 4], [0, 0, 3]]
    assert torch.equal(s.inputs_embeds[1, 2], embeds[1, 0])


def test_zero_length_prompt_gives_the_bare_model(backbone) -> None:
    tok = backbone.tokenizer
    batch = make_batch(tok, ["the film was", "fine"], [" good", " bad!"], encoder_decoder=backbone.is_encoder_decoder)
    pm = PromptedModel(backbone, PromptBank(torch.zeros(1, 0, backbone.hidden_size)))
    got = pm.sequence_logprob(batch, torch.zeros(2, dtype=torch.long))
    # The bare model on each unpadded row, straight from transformers (no splice involved).
    for i in range(2):
        n = int(batch.attention_mask[i].sum())
        ids = batch.input_ids[i:i + 1, :n]
        with torch.no_grad():
            if backbone.is_encoder_decoder:
                labels = batch.labels[i:i + 1]
                logits = backbone.model(input_ids=ids, labels=labels).logits
                logp = torch.log_softmax(logits, -1).gather(2, labels.unsqueeze(-1)).sum()
            else:
                logits = backbone.model(input_ids=ids).logits[0, :-1]
                labels = batch.labels[i, 1:n]
                keep = labels != IGNORE_INDEX
                logp = torch.log_softmax(logits, -1)[keep].gather(1, labels[keep].unsqueeze(-1)).sum()
        torch.testing.assert_close(got[i], logp, atol=1e-5, rtol=1e-5)


def test_prompt_changes_the_output(backbone) -> None:
    batch = make_batch(backbone.tokenizer, ["abc"], [" d"], encoder_decoder=backbone.is_encoder_decoder)
    bank = PromptBank(torch.stack([torch.zeros(3, backbone.hidden_size), torch.randn(3, backbone.hidden_size)]))
    pm = PromptedModel(backbone, bank)
    a = pm.sequence_logprob(batch, torch.tensor([0]))
    b = pm.sequence_logprob(batch, torch.tensor([1]))
    assert not torch.allclose(a, b)


def test_bank_mixed_lengths_equal_unpadded_prompts(backbone) -> None:
    h = backbone.hidden_size
    short, long = torch.randn(2, h), torch.randn(5, h)
    batch = make_batch(backbone.tokenizer, ["xy", "hello"], [" a", " bc"], encoder_decoder=backbone.is_encoder_decoder)
    mixed = PromptedModel(backbone, PromptBank.from_prompts([short, long]))
    got = mixed.sequence_logprob(batch, torch.tensor([0, 1]))
    for i, p in enumerate((short, long)):
        one = PromptedModel(backbone, PromptBank(p.unsqueeze(0)))
        row = make_batch(backbone.tokenizer, [["xy", "hello"][i]], [[" a", " bc"][i]],
                         encoder_decoder=backbone.is_encoder_decoder)
        torch.testing.assert_close(got[i], one.sequence_logprob(row, torch.tensor([0]))[0], atol=1e-5, rtol=1e-5)
