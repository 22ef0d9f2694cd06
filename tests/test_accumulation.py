"""Gradient accumulation ≡ one big batch: ``grad_accum=2`` × b rows gives the gradient (and the trajectory) of
``grad_accum=1`` × 2b rows, in prompt tuning and model tuning, also when the step's targets differ in length."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from softprompt.experiments.baselines.model_tuning import ModelTuneConfig, tune_model
from softprompt.tasks import FileTask, FileTaskSpec
from softprompt.tasks.base import Example, Task
from softprompt.tasks.superglue import COPA
from softprompt.training.loop import LoopConfig, batch_indices
from softprompt.training.prompt_tuning import TrainConfig, initial_prompt, train_prompt
from tests.conftest import tiny_backbone

MakeTask = Callable[[Path], tuple[Task, list[Example]]]
ANSWERS = [" a", " the longest answer of all", " mid length", " ok", " twelve chars", " b", " quite a long one", " no"]


def generation_task(tmp_path: Path) -> tuple[Task, list[Example]]:
    """Free-text targets of very different lengths (evaluated by generation)."""
    path = tmp_path / "gen.jsonl"
    path.write_text("".join(json.dumps({"text": f"question {i}", "label": ANSWERS[i % 8]}) + "\n" for i in range(16)))
    task = FileTask(FileTaskSpec(train=str(path), template="Q: {text}\nA:", name="gen"))
    return task, task.examples("train")


def copa_task(tmp_path: Path) -> tuple[Task, list[Example]]:
    """COPA: each example's two alternatives are its choices, of different token lengths."""
    path = tmp_path / "copa.jsonl"
    rows = [{"premise": f"premise number {i}", "question": ("cause", "effect")[i % 2], "choice1": ANSWERS[i % 8],
             "choice2": ANSWERS[(i + 3) % 8], "label": i % 3 % 2} for i in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = COPA()
    return task, task.read(path)


@contextmanager
def step_gradients() -> Iterator[list[torch.Tensor]]:
    """Collects, at every optimizer step, the gradient of all the optimizer's parameters (flattened, concatenated)."""
    grads: list[torch.Tensor] = []

    def hook(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grads.append(torch.cat([p.grad.detach().flatten() for p in params]).clone())

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield grads
    finally:
        handle.remove()


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def same_rows_per_step(n: int, one: LoopConfig, two: LoopConfig) -> None:
    """The two settings draw the same rows at every step: only the micro-batching differs."""
    for step in range(one.steps):
        whole = batch_indices(n, one.seed, step, 0, one)
        assert whole == batch_indices(n, two.seed, step, 0, two) + batch_indices(n, two.seed, step, 1, two)


@pytest.mark.parametrize(("family", "make_task", "reparam"), [
    ("llama", generation_task, "none"), ("t5", generation_task, "none"), ("llama", copa_task, "none"),
    ("llama", generation_task, "residual")])
def test_prompt_tuning_accumulation_equals_one_big_batch(tmp_path: Path, family: str, make_task: MakeTask,
                                                         reparam: str) -> None:
    task, examples = make_task(tmp_path)
    runs = {}
    configs = {accum: TrainConfig(steps=3, batch_size=4, grad_accum=accum, prompt_length=3, init="uniform",
                                  optimizer="adam", lr=0.05, eval_every=0, save_every=100, reparam=reparam,
                                  reparam_bottleneck=6) for accum in (1, 2)}
    same_rows_per_step(len(examples), configs[1], configs[2])
    for accum, config in configs.items():
        with step_gradients() as grads:
            result = train_prompt(tiny_backbone(family), task, examples, config, tmp_path / f"a{accum}.safetensors",
                                  progress=False)
        losses = [json.loads(x)["loss"] for x in (tmp_path / f"a{accum}.metrics.jsonl").read_text().splitlines()]
        runs[accum] = grads, result.prompt, losses
    (grads1, prompt1, losses1), (grads2, prompt2, losses2) = runs[1], runs[2]
    assert len(grads1) == len(grads2) == 3
    # Step 1 starts from the same prompt (and MLP), so its gradients must agree; later steps follow from the same
    # updates. A residual run's gradients cover the MLP's parameters too (the hook takes every optimizer parameter).
    assert relative_difference(grads2[0], grads1[0]) < 1e-5
    torch.testing.assert_close(prompt2, prompt1, rtol=1e-4, atol=1e-5)
    # The logged loss is the step's mean token NLL either way.
    assert losses2 == pytest.approx(losses1, rel=1e-5)
    # The prompt must have moved from its init, or the comparison proves nothing.
    assert float((prompt1 - initial_prompt(tiny_backbone(family), task, configs[1])).abs().max()) > 1e-2


def test_model_tuning_accumulation_equals_one_big_batch(tmp_path: Path) -> None:
    task, examples = generation_task(tmp_path)
    before = tiny_backbone("llama").model.state_dict()
    runs = {}
    configs = {accum: ModelTuneConfig(steps=3, batch_size=4, grad_accum=accum, lr=3e-3, eval_every=0)
               for accum in (1, 2)}
    same_rows_per_step(len(examples), configs[1], configs[2])
    for accum, config in configs.items():
        with step_gradients() as grads:
            result = tune_model(tiny_backbone("llama"), task, examples, config, progress=False)
        runs[accum] = grads, result.backbone.model.state_dict(), result.losses
    (grads1, weights1, losses1), (grads2, weights2, losses2) = runs[1], runs[2]
    assert relative_difference(grads2[0], grads1[0]) < 1e-5
    assert any(not torch.equal(v, before[k]) for k, v in weights1.items())  # it trained
    for name, value in weights1.items():
        torch.testing.assert_close(weights2[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert losses2 == pytest.approx(losses1, rel=1e-5)
