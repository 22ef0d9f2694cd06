"""Invariants that catch real bugs: batch neighbours, padding side, mixed prompts, frozen backbone."""

from __future__ import annotations

import hashlib

import torch

from softprompt.core.bank import PromptBank
from softprompt.core.prompted import PromptedModel
from softprompt.core.tokenize import Batch, make_batch

INPUTS = ["a short one", "a considerably longer input sentence here", "mid size text"]
TARGETS = [" yes", " no", " maybe so"]


def left_pad(batch: Batch, pad: int) -> Batch:
    """The same rows with padding moved to the left (decoder rows; the encoder input for T5)."""
    ids, mask = batch.input_ids.clone(), batch.attention_mask.clone()
    labels = batch.labels.clone()
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        ids[i] = torch.cat([ids[i, n:].fill_(pad), batch.input_ids[i, :n]])
        mask[i] = torch.cat([torch.zeros_like(mask[i, n:]), mask[i, :n]])
        if labels.shape == ids.shape:
            labels[i] = torch.cat([labels[i, n:].fill_(-100), batch.labels[i, :n]])
    return Batch(ids, mask, labels, batch.target_lengths)


def test_row_alone_mixed_and_either_padding_side(backbone) -> None:
    h = backbone.hidden_size
    pm = PromptedModel(backbone, PromptBank(torch.randn(2, 4, h) * 0.5))
    enc = backbone.is_encoder_decoder
    index = torch.tensor([0, 1, 0])
    batch = make_batch(backbone.tokenizer, INPUTS, TARGETS, encoder_decoder=enc)
    mixed = pm.sequence_logprob(batch, index)
    left = pm.sequence_logprob(left_pad(batch, backbone.tokenizer.pad_token_id), index)
    torch.testing.assert_close(mixed, left, atol=1e-5, rtol=1e-5)
    for i in range(3):
        alone = pm.sequence_logprob(make_batch(backbone.tokenizer, [INPUTS[i]], [TARGETS[i]], encoder_decoder=enc),
                                    index[i:i + 1])
        torch.testing.assert_close(mixed[i], alone[0], atol=1e-5, rtol=1e-5)


def test_loss_does_not_depend_on_neighbours(backbone) -> None:
    pm = PromptedModel(backbone, PromptBank(torch.randn(1, 3, backbone.hidden_size)))
    enc = backbone.is_encoder_decoder
    zero = torch.zeros(1, dtype=torch.long)
    alone = pm.loss(make_batch(backbone.tokenizer, INPUTS[:1], TARGETS[:1], encoder_decoder=enc), zero)
    logp, mask = pm.target_logprobs(make_batch(backbone.tokenizer, INPUTS, TARGETS, encoder_decoder=enc),
                                    torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(alone, -logp[0].sum() / mask[0].sum(), atol=1e-5, rtol=1e-5)


def checksum(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_only_the_prompt_changes_after_a_step(backbone) -> None:
    pm = PromptedModel(backbone, PromptBank(torch.randn(1, 3, backbone.hidden_size)))
    assert [n for n, p in pm.named_parameters() if p.requires_grad] == ["bank.weight"]
    before_model, before_prompt = checksum(backbone.model), pm.bank.weight.detach().clone()
    opt = torch.optim.SGD(pm.parameters(), lr=0.1)
    batch = make_batch(backbone.tokenizer, INPUTS, TARGETS, encoder_decoder=backbone.is_encoder_decoder)
    pm.loss(batch, torch.zeros(3, dtype=torch.long)).backward()
    opt.step()
    assert checksum(backbone.model) == before_model
    assert not torch.equal(pm.bank.weight, before_prompt)
    assert all(p.grad is None for p in backbone.model.parameters())


def test_single_token_fast_path_equals_full_rows(backbone) -> None:
    """Scoring single-token choices from one next-token distribution equals scoring each choice as a row."""
    from softprompt.evaluation.scoring import score_choices, single_token_choices
    from softprompt.tasks import Example

    tok = backbone.tokenizer
    # Single characters are single tokens for the byte tokenizer.
    examples = [Example(text, " ", (" ", "x", "y")) for text in INPUTS]
    pm = PromptedModel(backbone, PromptBank(torch.randn(2, 3, backbone.hidden_size)))
    fast = score_choices(pm, examples, (0, 1), batch_size=4)
    if backbone.is_encoder_decoder:
        assert single_token_choices(pm, examples) is None
        return
    assert single_token_choices(pm, examples) is not None
    for n in range(2):
        for e, ex in enumerate(examples):
            for k, choice in enumerate(ex.choices):
                batch = make_batch(tok, [ex.input], [choice], encoder_decoder=False)
                slow = pm.sequence_logprob(batch, torch.tensor([n]))
                torch.testing.assert_close(fast[n, e, k], slow[0], atol=1e-5, rtol=1e-5)


def test_prompt_gradient_is_bit_identical_run_to_run_on_two_threads() -> None:
    """Same seed, same prompt: the bank's backward must not sum gradients in a thread-dependent order."""
    from softprompt.core.bank import PromptBank

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        bank = PromptBank(torch.randn(2, 20, 576, generator=g))
        index = torch.randint(0, 2, (128,), generator=g)
        upstream = torch.randn(128, 20, 576, generator=g)
        grads = []
        for _ in range(6):
            bank.weight.grad = None
            (bank(index)[0] * upstream).sum().backward()
            grads.append(bank.weight.grad.clone())
        assert all(torch.equal(x, grads[0]) for x in grads)
    finally:
        torch.set_num_threads(before)


def test_length_chunks_cover_every_row_once_in_length_order() -> None:
    """The one row layout of the ensemble (longest first) and the server (shortest first, padding cut)."""
    import random

    from softprompt.core.tokenize import length_chunks

    rng = random.Random(0)
    lengths = [rng.randint(1, 40) for _ in range(57)]
    for longest_first, slack in ((True, None), (False, None), (False, 1.5), (True, 1.5)):
        chunks = length_chunks(lengths, 8, longest_first=longest_first, pad_slack=slack)
        flat = [i for c in chunks for i in c]
        assert sorted(flat) == list(range(len(lengths))) and all(1 <= len(c) <= 8 for c in chunks)
        # In length order, rows of equal length in their given order.
        assert flat == sorted(range(len(lengths)), key=lambda i: -lengths[i] if longest_first else lengths[i])
        if slack is None:
            assert [len(c) for c in chunks[:-1]] == [8] * (len(chunks) - 1)
        else:  # no chunk of several rows pads past slack × its real tokens
            assert all(len(c) == 1 or len(c) * max(lengths[i] for i in c) <= slack * sum(lengths[i] for i in c)
                       for c in chunks)
    assert length_chunks([], 4) == []
