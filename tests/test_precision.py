"""Precision paths (bf16/fp16 backbone, fp32 master prompt), gradient checkpointing, SDPA; GPU variants skip
without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from softprompt.core.backbone import Backbone
from softprompt.core.bank import PromptBank
from softprompt.core.prompted import PromptedModel
from softprompt.core.tokenize import make_batch
from softprompt.training.precision import enable_gradient_checkpointing, grad_scaler, resolve_precision
from softprompt.training.prompt_tuning import initial_prompt, train_prompt
from tests.conftest import tiny_backbone
from tests.toytask import ToyTask, toy_examples, train_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def loss_and_grad(bb: Backbone, prompt: torch.Tensor) -> tuple[PromptedModel, float, torch.Tensor]:
    pm = PromptedModel(bb, PromptBank(prompt.unsqueeze(0)))
    examples = toy_examples(6)
    batch = make_batch(bb.tokenizer, [e.input for e in examples], [e.target for e in examples],
                       encoder_decoder=bb.is_encoder_decoder)
    loss = pm.loss(batch, torch.zeros(len(examples), dtype=torch.long))
    loss.backward()
    return pm, float(loss.detach()), pm.bank.weight.grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_backbone_keeps_an_fp32_prompt_and_fp32_grads(dtype: torch.dtype) -> None:
    prompt = torch.randn(4, 32) * 0.02
    _, loss32, grad32 = loss_and_grad(tiny_backbone(), prompt)
    pm, loss16, grad16 = loss_and_grad(tiny_backbone(dtype=dtype), prompt)
    assert next(pm.model.parameters()).dtype == dtype
    assert pm.bank.weight.dtype == torch.float32 and grad16.dtype == torch.float32
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    cos = torch.nn.functional.cosine_similarity(grad16.flatten(), grad32.flatten(), dim=0)
    assert float(cos) > 0.95


def test_bf16_training_tracks_fp32(tmp_path: Path) -> None:
    runs = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        result = train_prompt(tiny_backbone(dtype=dtype), ToyTask(), toy_examples(), train_config(3),
                              tmp_path / f"{name}.safetensors", progress=False)
        runs[name] = result.prompt
    assert runs["bf16"].dtype == torch.float32
    start = initial_prompt(tiny_backbone(), ToyTask(), train_config(3))
    step32, step16 = (runs["fp32"] - start).flatten(), (runs["bf16"] - start).flatten()
    # Compare whole updates, not single elements: Adam moves an element whose gradient is near zero by ±lr
    # whatever its sign, so one element can flip under bf16 rounding while the trajectory is the same.
    assert float(step32.norm()) > 0.1  # it did move
    assert float(torch.nn.functional.cosine_similarity(step32, step16, dim=0)) > 0.9
    assert float((step32 - step16).norm() / step32.norm()) < 0.4


def test_fp16_trains_with_a_loss_scaler(tmp_path: Path) -> None:
    bb = tiny_backbone(dtype=torch.float16)
    assert grad_scaler(bb.model) is not None and grad_scaler(tiny_backbone().model) is None
    result = train_prompt(bb, ToyTask(), toy_examples(), train_config(2), tmp_path / "fp16.safetensors", progress=False)
    assert result.prompt.dtype == torch.float32 and bool(torch.isfinite(result.prompt).all())


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
def test_gradient_checkpointing_changes_nothing_but_memory(family: str) -> None:
    torch.manual_seed(0)
    prompt = torch.randn(4, 32) * 0.02
    _, loss_a, grad_a = loss_and_grad(tiny_backbone(family), prompt)
    bb = tiny_backbone(family)
    blocks = enable_gradient_checkpointing(bb.model)
    assert blocks >= 2
    # Only the blocks' own flags are set: dropout and attention inside stay in eval mode.
    assert not any(m.training for m in bb.model.modules() if isinstance(m, torch.nn.Dropout))
    _, loss_b, grad_b = loss_and_grad(bb, prompt)
    assert loss_b == pytest.approx(loss_a, rel=1e-6)
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-5, atol=1e-7)


def test_gradient_checkpointing_recomputes_blocks() -> None:
    """Checkpointed blocks run their forward twice per step (once more in backward)."""
    bb = tiny_backbone("llama")
    enable_gradient_checkpointing(bb.model)
    calls = []
    for layer in bb.model.model.layers:
        # A pre-hook: the recompute stops early once the last saved tensor is rebuilt, before the MLP returns.
        layer.mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    loss_and_grad(bb, torch.randn(4, 32) * 0.02)
    assert len(calls) == 2 * len(bb.model.model.layers)


def saved_activation_bytes(bb: Backbone) -> int:
    """Bytes autograd keeps from the forward pass for the backward (what checkpointing saves)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    pm = PromptedModel(bb, PromptBank(torch.randn(1, 4, 32) * 0.02))
    examples = toy_examples(8)
    batch = make_batch(bb.tokenizer, [e.input * 4 for e in examples], [e.target for e in examples],
                       encoder_decoder=False)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = pm.loss(batch, torch.zeros(len(examples), dtype=torch.long))
    loss.backward()
    return total


def test_gradient_checkpointing_saves_fewer_activations() -> None:
    plain = saved_activation_bytes(tiny_backbone("llama", layers=6))
    bb = tiny_backbone("llama", layers=6)
    enable_gradient_checkpointing(bb.model)
    # Without: every block's internals; with: each block's input only (internals are rebuilt in backward).
    assert saved_activation_bytes(bb) < 0.3 * plain


def test_gradient_checkpointing_keeps_generation_intact() -> None:
    prompt = torch.randn(4, 32) * 0.5
    plain = PromptedModel(tiny_backbone("llama"), PromptBank(prompt.unsqueeze(0)))
    bb = tiny_backbone("llama")
    enable_gradient_checkpointing(bb.model)
    ckpt = PromptedModel(bb, PromptBank(prompt.unsqueeze(0)))
    index = torch.zeros(2, dtype=torch.long)
    inputs = ["number 3:", "a longer input 12:"]
    assert ckpt.generate(inputs, index, max_new_tokens=8) == plain.generate(inputs, index, max_new_tokens=8)


def test_sdpa_is_the_default_attention() -> None:
    assert tiny_backbone("llama").model.config._attn_implementation == "sdpa"


def test_precision_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_precision(None) == "fp32"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_precision(None) == "bf16"
    assert resolve_precision("fp16") == "fp16"  # an explicit flag wins
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("int8")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(ValueError, match="not supported"):
        resolve_precision(None)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_half_precision_training(dtype: torch.dtype, tmp_path: Path) -> None:
    bb = tiny_backbone(dtype=dtype, device="cuda")
    enable_gradient_checkpointing(bb.model)
    result = train_prompt(bb, ToyTask(), toy_examples(), train_config(3), tmp_path / "gpu.safetensors", progress=False)
    reference = train_prompt(tiny_backbone(), ToyTask(), toy_examples(), train_config(3), tmp_path / "cpu.safetensors",
                             progress=False)
    assert result.prompt.dtype == torch.float32
    assert float((result.prompt - reference.prompt).abs().max()) < 0.05


@pytest.mark.gpu
@cuda
def test_gpu_bf16_loss_close_to_fp32() -> None:
    prompt = torch.randn(4, 32) * 0.02
    _, loss32, _ = loss_and_grad(tiny_backbone(device="cuda"), prompt)
    _, loss16, grad = loss_and_grad(tiny_backbone(dtype=torch.bfloat16, device="cuda"), prompt)
    assert grad.dtype == torch.float32 and grad.device.type == "cuda"
    assert loss16 == pytest.approx(loss32, rel=2e-2)
