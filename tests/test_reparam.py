"""Residual prompt tuning: the folded prompt is exactly the training-time prompt, the saved file scores as the
training-time model did, the run starts at its init, the MLP trains and the backbone does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from softprompt.core.bank import PromptBank
from softprompt.core.prompted import PromptedModel
from softprompt.core.promptfile import load_prompt
from softprompt.core.tokenize import make_batch
from softprompt.evaluation.scoring import evaluate, score_choices
from softprompt.tasks.selection import selection_split
from softprompt.training.checkpoint import load_checkpoint
from softprompt.training.prompt_tuning import TrainConfig, initial_prompt, train_prompt
from softprompt.training.reparam import ResidualPromptBank, fold, make_bank
from tests.conftest import tiny_backbone
from tests.test_invariants import INPUTS, TARGETS, checksum
from tests.test_trainer import toy_task


def trained_looking_bank(hidden: int) -> ResidualPromptBank:
    """A residual bank whose MLP contributes (a fresh one adds nothing: its LayerNorm gain starts at zero)."""
    bank = ResidualPromptBank(torch.randn(1, 3, hidden) * 0.5, bottleneck=5, seed=1)
    with torch.no_grad():
        bank.norm.weight.normal_()
        bank.norm.bias.normal_()
    return bank


def test_folded_prompt_scores_exactly_as_the_training_time_bank(backbone) -> None:
    bank = trained_looking_bank(backbone.hidden_size)
    folded = fold(bank)
    moved = float((folded - bank.weight[0].detach()).abs().max())
    assert moved > 0.1  # the MLP moved the prompt: folding is not a no-op
    trained, plain = PromptedModel(backbone, bank), PromptedModel(backbone, PromptBank(folded.unsqueeze(0)))
    batch = make_batch(backbone.tokenizer, INPUTS, TARGETS, encoder_decoder=backbone.is_encoder_decoder)
    index = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        a, b = trained.target_logprobs(batch, index), plain.target_logprobs(batch, index)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_fresh_residual_bank_folds_to_its_init_and_is_a_function_of_the_seed() -> None:
    raw = torch.randn(2, 4, 16)
    bank = make_bank(raw, "residual", 8, seed=3)
    assert isinstance(bank, ResidualPromptBank) and torch.equal(bank.folded(), raw)
    same, other = make_bank(raw, "residual", 8, seed=3), make_bank(raw, "residual", 8, seed=4)
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in bank.state_dict().items())
    assert not torch.equal(bank.down.weight, other.down.weight)
    assert type(make_bank(raw, "none")) is PromptBank
    with pytest.raises(ValueError, match="reparam"):
        make_bank(raw, "lora")


@pytest.mark.parametrize("bad", [{"reparam": "lora"}, {"reparam_bottleneck": 0}, {"init": "from:"},
                                 {"init": "bogus"}])
def test_train_config_refuses_bad_reparam_and_init(bad: dict) -> None:
    with pytest.raises(ValueError, match=r"reparam|init"):
        TrainConfig(**bad)


def test_residual_training_trains_the_mlp_not_the_backbone_and_saves_what_it_scored(tmp_path: Path) -> None:
    bb = tiny_backbone("llama")
    before = checksum(bb.model)
    task = toy_task(tmp_path)
    cut = selection_split(task, size=8)
    # One selection eval, at the last step: the best prompt is the final state the checkpoint holds.
    config = TrainConfig(steps=25, batch_size=8, prompt_length=4, init="sampled-vocab", reparam="residual",
                         reparam_bottleneck=8, optimizer="adam", lr=0.05, eval_every=25, save_every=100)
    out = tmp_path / "res.safetensors"
    result = train_prompt(bb, task, cut.train, config, out, selection=cut.selection, selection_info=cut.info,
                          progress=False)
    losses = [json.loads(x)["loss"] for x in out.with_suffix(".metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5
    assert checksum(bb.model) == before and all(not p.requires_grad for p in bb.model.parameters())
    # The MLP trained: every one of its tensors moved from the seeded init.
    ckpt = load_checkpoint(out.with_suffix(".ckpt.safetensors"))
    raw, mlp = ckpt.params["weight"], {k: v for k, v in ckpt.params.items() if k != "weight"}
    fresh = make_bank(initial_prompt(bb, task, config).unsqueeze(0), "residual", 8, seed=config.seed)
    assert sorted(mlp) == sorted(k for k in fresh.state_dict() if k != "weight")
    for name, value in mlp.items():
        assert not torch.equal(value, fresh.state_dict()[name]), name
    # The file holds the fold of the training-time bank, and scores exactly as that bank does.
    trained = make_bank(raw, "residual", 8)
    trained.load_state_dict(ckpt.params)
    pf = load_prompt(out)
    assert torch.equal(pf.prompt, fold(trained)) and torch.equal(pf.prompt, result.prompt)
    assert not torch.equal(pf.prompt, raw[0])  # not the raw prompt
    assert pf.meta.train_config["reparam"] == "residual" and pf.meta.prompt_length == 4
    plain = PromptedModel(bb, PromptBank(pf.prompt.unsqueeze(0)))
    assert torch.equal(score_choices(PromptedModel(bb, trained), cut.selection),
                       score_choices(plain, cut.selection))
    assert evaluate(plain, task, cut.selection)[0]["accuracy"] == result.metrics["best_selection_accuracy"]
