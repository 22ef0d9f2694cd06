"""The trainer: it learns, it is deterministic, and a killed run resumes to the same prompt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from softprompt.core.promptfile import load_prompt
from softprompt.tasks.selection import SELECTION_SEED, selection_split
from softprompt.training.checkpoint import TrainState, _own, load_checkpoint, save_checkpoint
from softprompt.training.loop import batch_indices, lr_at
from softprompt.training.prompt_tuning import TrainConfig, train_prompt
from tests.conftest import tiny_backbone
from tests.toytask import TEMPLATE, toy_rows, toy_task, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def test_batches_are_a_pure_function_of_seed_and_step() -> None:
    config = TrainConfig(batch_size=4, grad_accum=2)
    a = [batch_indices(10, 3, s, m, config) for s in range(6) for m in range(2)]
    b = [batch_indices(10, 3, s, m, config) for s in range(6) for m in range(2)]
    assert a == b
    flat = [i for chunk in a for i in chunk]
    assert sorted(flat[:10]) == list(range(10))  # the first epoch visits every example once
    assert a != [batch_indices(10, 4, s, m, config) for s in range(6) for m in range(2)]


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_training_lowers_the_loss(tmp_path: Path, family: str) -> None:
    bb = tiny_backbone(family)
    task = toy_task(tmp_path / "toy", validation=0)
    examples = task.examples("train")
    config = TrainConfig(steps=25, batch_size=8, prompt_length=4, init="sampled-vocab", optimizer="adam", lr=0.3,
                         eval_every=0, save_every=100)
    result = train_prompt(bb, task, examples, config, tmp_path / "p.safetensors", progress=False)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "p.metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 25
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5
    pf = load_prompt(tmp_path / "p.safetensors")
    assert torch.equal(pf.prompt, result.prompt)
    assert pf.meta.task == "toy" and pf.meta.train_config["steps"] == 25


def test_prompt_file_records_the_input_template_and_no_instruction(tmp_path: Path) -> None:
    from softprompt.tasks import TASKS, Example

    bb = tiny_backbone("gpt2")
    config = TrainConfig(steps=1, batch_size=2, prompt_length=2, init="uniform", eval_every=0, save_every=100)
    task = toy_task(tmp_path / "toy", validation=0)
    train_prompt(bb, task, task.examples("train"), config, tmp_path / "file.safetensors", progress=False)
    meta = load_prompt(tmp_path / "file.safetensors").meta
    assert (meta.template, meta.instruction, meta.dtype) == (TEMPLATE, "", "float32")  # a file task: its spec's
    sst2 = TASKS["sst2"]()  # a built-in task: its text template (examples given here, no data files needed)
    examples = [Example(f"Sentence: {t}\nSentiment:", w, (" negative", " positive"))
                for t, w in [("good", " positive"), ("bad", " negative")]]
    train_prompt(bb, sst2, examples, config, tmp_path / "sst2.safetensors", progress=False)
    meta = load_prompt(tmp_path / "sst2.safetensors").meta
    assert meta.template == "Sentence: {text}\nSentiment:" and meta.instruction == "" and sst2.instruction


def test_paper_recipe_runs_and_best_checkpoint_is_kept(tmp_path: Path) -> None:
    bb = tiny_backbone("gpt2")
    task = toy_task(tmp_path / "toy", validation=0)
    cut = selection_split(task, size=8)
    config = TrainConfig(steps=6, batch_size=4, prompt_length=3, eval_every=2, save_every=2)
    result = train_prompt(bb, task, cut.train, config, tmp_path / "p.safetensors", selection=cut.selection,
                          selection_info=cut.info, progress=False)
    history = result.state.history
    assert [h["step"] for h in history] == [2, 4, 6]
    best = max(history, key=lambda h: h["accuracy"])
    # A selection score is named for what it is, in the result, the file and the metrics log.
    assert result.metrics["best_selection_accuracy"] == best["accuracy"]
    assert not any("val" in k for k in result.metrics)
    meta = load_prompt(tmp_path / "p.safetensors").meta
    assert meta.metrics == result.metrics
    assert meta.selection == {"split": "train", "size": 8, "seed": SELECTION_SEED, "limit": None, "examples": 8}
    log = [json.loads(x) for x in (tmp_path / "p.metrics.jsonl").read_text().splitlines()]
    assert [r["selection_accuracy"] for r in log if "selection_accuracy" in r] == [h["accuracy"] for h in history]
    assert not any(k.startswith("val_") for r in log for k in r)
    ckpt = load_checkpoint(tmp_path / "p.ckpt.safetensors")
    assert ckpt.state.step == 6 and ckpt.state.best_step == result.metrics["best_step"]
    # Without a selection set nothing is selected, and the file says so.
    train_prompt(bb, task, cut.train, config, tmp_path / "last.safetensors", progress=False)
    assert load_prompt(tmp_path / "last.safetensors").meta.selection == {}


def test_linear_schedule_decays_the_step_size_and_fixes_the_steps(tmp_path: Path) -> None:
    config = TrainConfig(steps=4, schedule="linear")
    assert [lr_at(config, 2.0, s) for s in range(4)] == [2.0, 1.5, 1.0, 0.5]
    assert lr_at(TrainConfig(steps=4, schedule="constant"), 2.0, 3) == 2.0
    task = toy_task(tmp_path / "toy", validation=0)
    examples = task.examples("train")

    def run(name: str, **kw: object) -> torch.Tensor:
        config = TrainConfig(batch_size=4, prompt_length=3, eval_every=0, save_every=1, optimizer="adam", lr=0.05,
                             **kw)  # type: ignore[arg-type]
        return train_prompt(tiny_backbone("llama"), task, examples, config, tmp_path / f"{name}.safetensors",
                            progress=False).prompt

    # The first step runs at the full lr; later ones do not.
    assert torch.equal(run("c1", steps=1, schedule="constant"), run("l1", steps=1, schedule="linear"))
    assert not torch.equal(run("c4", steps=4, schedule="constant"), run("l4", steps=4, schedule="linear"))
    groups = load_checkpoint(tmp_path / "l4.ckpt.safetensors").optimizer_state["param_groups"]
    assert groups[0]["lr"] == pytest.approx(0.05 / 4) and groups[0]["initial_lr"] == 0.05
    # The decay is spread over the steps: a linear run does not resume to another number of them.
    with pytest.raises(ValueError, match="steps"):
        config = TrainConfig(steps=6, batch_size=4, prompt_length=3, eval_every=0, save_every=1, optimizer="adam",
                             lr=0.05, schedule="linear")
        train_prompt(tiny_backbone("llama"), task, examples, config, tmp_path / "l4.safetensors", resume=True,
                     progress=False)


def test_a_checkpoint_stores_tied_and_viewed_tensors_whole_and_copies_only_those(tmp_path: Path) -> None:
    """safetensors refuses tensors that share storage: a tied weight (one tensor under two names), a view of a larger
    tensor and a best step that is the current weights are copied, and nothing else is (a model-tuning checkpoint
    holds a model's weights and its best step's: a copy of each would double them while it is written)."""
    whole = torch.nn.Parameter(torch.randn(4, 3))
    view = torch.nn.Parameter(torch.randn(10)[2:6])
    params = {"whole": whole, "tied": whole, "view": view}
    optimizer = torch.optim.SGD([whole, view], lr=0.1)
    save_checkpoint(tmp_path / "c.safetensors", params, {"whole": whole.detach()}, optimizer, TrainState(step=3), {})
    ckpt = load_checkpoint(tmp_path / "c.safetensors")
    for name, value in params.items():
        assert torch.equal(ckpt.params[name], value), name
    assert torch.equal(ckpt.best["whole"], whole) and ckpt.state.step == 3
    seen: set[int] = set()
    assert _own(whole, seen).data_ptr() == whole.data_ptr()  # saved from where it lies
    assert _own(whole, seen).data_ptr() != whole.data_ptr()  # the same storage again: a copy
    assert _own(view, seen).data_ptr() != view.data_ptr()  # a part of its storage: a copy


@pytest.mark.parametrize("reparam", ["none", "residual"])
def test_in_process_resume_equals_uninterrupted(tmp_path: Path, reparam: str) -> None:
    task = toy_task(tmp_path / "toy", validation=0)
    examples = task.examples("train")
    # A constant step size: the run is resumed to more steps than it first had (a linear decay refuses that).
    full = TrainConfig(steps=8, batch_size=4, prompt_length=3, eval_every=0, save_every=1, schedule="constant",
                       reparam=reparam, reparam_bottleneck=6)
    a = train_prompt(tiny_backbone("llama"), task, examples, full, tmp_path / "a.safetensors", progress=False)
    half = TrainConfig(steps=5, batch_size=4, prompt_length=3, eval_every=0, save_every=1, schedule="constant",
                       reparam=reparam, reparam_bottleneck=6)
    train_prompt(tiny_backbone("llama"), task, examples, half, tmp_path / "b.safetensors", progress=False)
    b = train_prompt(tiny_backbone("llama"), task, examples, full, tmp_path / "b.safetensors", resume=True,
                     progress=False)
    assert torch.equal(a.prompt, b.prompt)
    log = [json.loads(x)["step"] for x in (tmp_path / "b.metrics.jsonl").read_text().splitlines()]
    assert log == list(range(1, 9))
    with pytest.raises(ValueError, match="differ"):
        changed = TrainConfig(steps=8, batch_size=4, prompt_length=3, eval_every=0, save_every=1, lr=0.1,
                              schedule="constant", reparam=reparam, reparam_bottleneck=6)
        train_prompt(tiny_backbone("llama"), task, examples, changed, tmp_path / "b.safetensors", resume=True,
                     progress=False)


def test_a_checkpoint_from_before_the_shared_loop_resumes(tmp_path: Path) -> None:
    """The prompt-tuning checkpoint layout before one loop served every method (``prompt`` [P, H], ``bank.*``,
    ``optimizer.*``; no RNG, no losses) still resumes, to the uninterrupted run's prompt."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    task = toy_task(tmp_path)
    examples = task.examples("train")
    full = TrainConfig(steps=6, batch_size=4, prompt_length=3, eval_every=0, save_every=1, reparam="residual",
                       reparam_bottleneck=6, schedule="constant")  # constant: resumed to more steps
    a = train_prompt(tiny_backbone("llama"), task, examples, full, tmp_path / "a.safetensors", progress=False)
    half = TrainConfig(**{**full.__dict__, "steps": 4})
    train_prompt(tiny_backbone("llama"), task, examples, half, tmp_path / "b.safetensors", progress=False)
    ckpt = tmp_path / "b.ckpt.safetensors"
    with safe_open(str(ckpt), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    old = {k: v for k, v in tensors.items() if k.startswith("optimizer.")}
    old["prompt"] = tensors["param.weight"][0]
    old.update({"bank." + k[len("param."):]: v for k, v in tensors.items()
                if k.startswith("param.") and k != "param.weight"})
    state = json.loads(meta["state"])
    del state["losses"]
    save_file(old, str(ckpt), metadata={**meta, "state": json.dumps(state)})
    b = train_prompt(tiny_backbone("llama"), task, examples, full, tmp_path / "b.safetensors", resume=True,
                     progress=False)
    assert torch.equal(a.prompt, b.prompt)


def _train_cmd(model: Path, data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "softprompt", "train", "--model", str(model), "--task", str(data),
            "--template", "{text} ->", "--verbalizer", '{"0": " no", "1": " yes"}', "--out", str(out),
            "--steps", str(steps), "--batch-size", "4", "--prompt-length", "3", "--save-every", "1", "--no-eval",
            "--no-progress", "--seed", "5", "--resume", "--json", *extra]


# fp16: the loss scale doubles every 2 overflow-free steps, so within 20 steps it grows into overflows (skipped
# steps) several times; a resumed run that restarted the scaler would skip other steps. At the constant step these
# overflows were laid out for (under the linear default the scaler can be back at its fresh state at the kill).
FP16 = ("--precision", "fp16", "--loss-scale-growth-interval", "2", "--schedule", "constant")
# Residual prompt tuning: the MLP's weights and optimizer state must come back too, or the resumed run differs.
RESIDUAL = ("--reparam", "residual", "--reparam-bottleneck", "8")


# A decaying step size: a resumed run must take each step at that step's lr, not the checkpoint's last one.
LINEAR = ("--schedule", "linear")


@pytest.mark.parametrize("extra", [(), FP16, RESIDUAL, LINEAR], ids=["fp32", "fp16", "residual", "linear"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path: Path, tiny_dirs: dict[str, Path],
                                                  extra: tuple[str, ...]) -> None:
    data, model = write_jsonl(tmp_path / "toy.jsonl", toy_rows()), tiny_dirs["llama"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    steps = 20
    subprocess.run(_train_cmd(model, data, tmp_path / "full.safetensors", steps, *extra), check=True, env=env,
                   capture_output=True)
    killed = tmp_path / "killed.safetensors"
    ckpt = killed.with_suffix(".ckpt.safetensors")
    proc = subprocess.Popen(_train_cmd(model, data, killed, steps, *extra), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    fresh = torch.amp.GradScaler("cpu", growth_interval=2).state_dict()

    def ready() -> bool:
        """Whether the checkpoint on disk is one worth killing at (fp16: a scaler state not a fresh one's)."""
        try:
            seen = load_checkpoint(ckpt)
        except ValueError:  # not written yet, or mid-write
            return False
        return 4 <= seen.state.step < steps and (extra != FP16 or seen.scaler_state != fresh)

    # The run advances only in short slices between freezes (SIGSTOP), and the checkpoint is read while it is
    # frozen: the one read is the one the kill leaves behind, and a fast run cannot finish between two looks (on a
    # busy machine it polled a running process and missed every checkpoint from step 4 to 19).
    proc.send_signal(signal.SIGSTOP)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not ready():
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.005)  # a step or two of the tiny model
        proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = load_checkpoint(ckpt)
    assert 0 < at_kill.state.step < steps, "the run should have been killed mid-way"
    assert not killed.exists()
    if extra == FP16:  # the scaler's state at the kill is not a fresh scaler's, so restoring it is what is tested
        assert at_kill.scaler_state not in (None, torch.amp.GradScaler("cpu", growth_interval=2).state_dict())
    if extra == RESIDUAL:  # the MLP is in the checkpoint, so restoring it is what is tested
        assert set(at_kill.params) - {"weight"} == {f"{m}.{t}" for m in ("down", "up", "norm")
                                                    for t in ("weight", "bias")}
    done = subprocess.run(_train_cmd(model, data, killed, steps, *extra), check=True, env=env, capture_output=True,
                          text=True)
    assert json.loads(done.stdout.strip().splitlines()[-1])["steps"] == steps
    assert torch.equal(load_prompt(killed).prompt, load_prompt(tmp_path / "full.safetensors").prompt)
