"""Prompt files: bit-exact round trips and clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from softprompt.promptfile import PromptFile, PromptFileError, PromptMeta, check_compatible, load_prompt, save_prompt
from tests.conftest import tiny_backbone


@pytest.fixture
def saved(tmp_path: Path):
    bb = tiny_backbone("llama")
    prompt = torch.randn(5, bb.hidden_size)
    meta = PromptMeta.for_backbone(bb, 5, init="uniform", task="sst2", verbalizer={"0": " no"},
                                   train_config={"lr": 0.3}, metrics={"accuracy": 0.5})
    path = tmp_path / "p.safetensors"
    save_prompt(path, prompt, meta)
    return bb, prompt, meta, path


def test_round_trip_is_bit_exact(saved) -> None:
    bb, prompt, meta, path = saved
    pf = load_prompt(path)
    assert torch.equal(pf.prompt, prompt)
    assert pf.meta == meta
    check_compatible(pf, bb)


def test_other_model_is_refused(saved) -> None:
    _, _, _, path = saved
    with pytest.raises(PromptFileError, match="different model"):
        check_compatible(load_prompt(path), tiny_backbone("llama", seed=1))
    with pytest.raises(PromptFileError, match="hidden size"):
        from softprompt.backbone import make_backbone
        from softprompt.tiny import tiny_model

        model, tok = tiny_model("llama", hidden=16)
        check_compatible(load_prompt(path), make_backbone(model, tok, "small"))


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
@pytest.mark.parametrize("seed", range(6))
def test_same_model_in_half_precision_is_accepted_and_others_refused(family: str, seed: int) -> None:
    # Several seeds: a probe sum near zero once made bf16 look like another model.
    bb = tiny_backbone(family, seed=seed)
    meta = PromptMeta.for_backbone(bb, 2, init="uniform", task="sst2")
    pf = in_memory_prompt(meta, bb.hidden_size)
    for dtype in (torch.bfloat16, torch.float16):
        bb.model.to(dtype)
        check_compatible(pf, bb)
    with pytest.raises(PromptFileError, match="different model"):
        check_compatible(pf, tiny_backbone(family, seed=seed + 100))


def in_memory_prompt(meta: PromptMeta, hidden: int) -> PromptFile:
    return PromptFile(torch.zeros(meta.prompt_length, hidden), meta)


def test_nan_is_refused_on_save_and_load(saved, tmp_path: Path) -> None:
    _, prompt, meta, path = saved
    bad = prompt.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(PromptFileError, match="NaN"):
        save_prompt(tmp_path / "nan.safetensors", bad, meta)
    # A file written by something else, with a NaN inside.
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    save_file({"prompt": bad}, str(tmp_path / "nan2.safetensors"), metadata=header)
    with pytest.raises(PromptFileError, match="NaN"):
        load_prompt(tmp_path / "nan2.safetensors")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "missing"])
def test_damaged_files_are_refused(saved, tmp_path: Path, damage: str) -> None:
    _, _, _, path = saved
    target = tmp_path / f"{damage}.safetensors"
    data = path.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) - 40])
    elif damage == "garbage":
        target.write_bytes(b"not a safetensors file at all" * 3)
    elif damage == "empty":
        target.write_bytes(b"")
    with pytest.raises(PromptFileError, match=target.name):
        load_prompt(target)


def test_foreign_safetensors_and_shape_mismatch(saved, tmp_path: Path) -> None:
    _, prompt, meta, _ = saved
    save_file({"prompt_embeddings": prompt}, str(tmp_path / "peft.safetensors"))
    with pytest.raises(PromptFileError, match="not a softprompt prompt file"):
        load_prompt(tmp_path / "peft.safetensors")
    header = {"format": "softprompt", "format_version": "1", "softprompt": json.dumps({**meta.__dict__,
                                                                                        "prompt_length": 9})}
    save_file({"prompt": prompt}, str(tmp_path / "shape.safetensors"), metadata=header)
    with pytest.raises(PromptFileError, match="disagrees with its metadata"):
        load_prompt(tmp_path / "shape.safetensors")
    header["format_version"] = "99"
    save_file({"prompt": prompt}, str(tmp_path / "future.safetensors"), metadata=header)
    with pytest.raises(PromptFileError, match="newer"):
        load_prompt(tmp_path / "future.safetensors")
