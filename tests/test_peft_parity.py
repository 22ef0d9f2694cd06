"""One softprompt training step and one PEFT prompt-tuning step agree: same init, rows, optimizer → same loss and
the same updated prompt. PEFT is a test-only dependency."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from softprompt.core.bank import PromptBank
from softprompt.core.prompted import PromptedModel
from softprompt.core.tiny import tiny_model
from softprompt.core.tokenize import make_batch
from softprompt.training.loop import batch_indices, make_optimizer
from softprompt.training.prompt_tuning import initial_prompt, train_prompt
from tests.conftest import tiny_backbone
from tests.toytask import ToyTask, toy_examples, train_config

peft = pytest.importorskip("peft")


def test_one_step_matches_peft(tmp_path: Path) -> None:
    cfg = train_config(1)  # Adam, lr 0.05, 8 rows of mixed lengths (right-padded), targets of 3 and 4 tokens
    task, examples = ToyTask(), toy_examples()
    start = initial_prompt(tiny_backbone("llama"), task, cfg)
    ours = train_prompt(tiny_backbone("llama"), task, examples, cfg, tmp_path / "ours.safetensors", progress=False)
    our_loss = json.loads((tmp_path / "ours.metrics.jsonl").read_text().splitlines()[0])["loss"]

    model, tokenizer = tiny_model("llama", seed=0)
    pmodel = peft.get_peft_model(model, peft.PromptTuningConfig(task_type="CAUSAL_LM",
                                                                 num_virtual_tokens=cfg.prompt_length))
    pmodel.eval()  # no dropout, as in softprompt's frozen backbone
    weight = pmodel.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        weight.copy_(start)
    optimizer = make_optimizer(cfg, [weight])
    rows = [examples[i] for i in batch_indices(len(examples), cfg.seed, 0, 0, cfg)]
    batch = make_batch(tokenizer, [e.input for e in rows], [e.target for e in rows], encoder_decoder=False)
    assert len(set(batch.attention_mask.sum(1).tolist())) > 1  # padded rows: the layouts differ, results must not
    # PEFT prepends virtual tokens with IGNORE labels; the model's loss is the mean over target tokens, like ours.
    loss = pmodel(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
    loss.backward()
    # Adam's first step is ~lr·sign(grad), which hides gradient magnitudes: compare the gradients themselves too.
    pm = PromptedModel(tiny_backbone("llama"), PromptBank(start.unsqueeze(0)))
    pm.loss(batch, torch.zeros(len(rows), dtype=torch.long)).backward()
    # Tolerance relative to the gradient's scale: the two layouts (left-compacted vs PEFT's right padding) sum in
    # different orders, and float32 rounding of that differs by CPU (an element of 9e-4 differed by 2.3e-7 on one
    # host). A wrong gradient (another token mean, a missed row) is off by a good fraction of the scale.
    scale = float(weight.grad.abs().max())
    assert scale > 0
    torch.testing.assert_close(pm.bank.weight.grad[0], weight.grad, rtol=1e-4, atol=1e-5 * scale)
    optimizer.step()

    assert our_loss == pytest.approx(float(loss.detach()), rel=1e-5)
    torch.testing.assert_close(ours.prompt, weight.detach(), rtol=1e-5, atol=1e-6)
    assert float((ours.prompt - start).abs().max()) > 1e-2  # the step moved the prompt
