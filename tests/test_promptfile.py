"""Prompt files: bit-exact round trips, clear refusals, strict model identity, and version-1 files."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from softprompt.core.backbone import Backbone, make_backbone
from softprompt.core.promptfile import (
    PromptFile,
    PromptFileError,
    PromptMeta,
    check_compatible,
    load_prompt,
    save_prompt,
)
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
        check_compatible(load_prompt(path), tiny_backbone("llama", hidden=16))


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
@pytest.mark.parametrize("seed", range(6))
def test_same_model_in_half_precision_is_accepted_and_others_refused(family: str, seed: int) -> None:
    # Several seeds: a probe sum near zero once made bf16 look like another model.
    bb = tiny_backbone(family, seed=seed)
    meta = PromptMeta.for_backbone(bb, 2, init="uniform", task="sst2")
    pf = in_memory_prompt(meta, bb.hidden_size)
    for dtype in (torch.bfloat16, torch.float16):  # each a rounding of the fp32 weights, as a load in that dtype
        copy = tiny_backbone(family, seed=seed)
        copy.model.to(dtype)
        check_compatible(pf, copy)
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
    header = {"format": "softprompt", "format_version": "2", "softprompt": json.dumps({**meta.to_json(),
                                                                                        "prompt_length": 9})}
    save_file({"prompt": prompt}, str(tmp_path / "shape.safetensors"), metadata=header)
    with pytest.raises(PromptFileError, match="disagrees with its metadata"):
        load_prompt(tmp_path / "shape.safetensors")
    header["format_version"] = "99"
    save_file({"prompt": prompt}, str(tmp_path / "future.safetensors"), metadata=header)
    with pytest.raises(PromptFileError, match="newer"):
        load_prompt(tmp_path / "future.safetensors")


# ---- strict model identity ----------------------------------------------------------------------------------------
def variant(bb: Backbone, *, embeddings: float = 0.0, block: float = 0.0, dtype: torch.dtype | None = None
            ) -> Backbone:
    """A copy of ``bb`` with its input embeddings and/or one transformer block's weights moved by the given fraction
    of their std (random directions), optionally cast to ``dtype``."""
    model = copy.deepcopy(bb.model)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.add_(torch.randn(emb.shape, generator=g) * emb.std() * embeddings)
        if block:
            for name, p in model.named_parameters():
                if ".1." in name and p.dim() == 2:  # every matrix of block 1 (layers.1., h.1., block.1.)
                    p.add_(torch.randn(p.shape, generator=g) * p.std() * block)
    if dtype is not None:
        model.to(dtype)
    return make_backbone(model, bb.tokenizer, bb.name)


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
def test_model_with_perturbed_embeddings_is_refused(family: str) -> None:
    bb = tiny_backbone(family)
    pf = in_memory_prompt(PromptMeta.for_backbone(bb, 2), bb.hidden_size)
    moved = variant(bb, embeddings=0.05)
    with pytest.raises(PromptFileError, match="weights differ") as err:  # fp32 on fp32: the exact hash decides
        check_compatible(pf, moved, where="p.safetensors")
    assert "--allow-other-model" in str(err.value) and "'tiny-" in str(err.value) and "float32" in str(err.value)
    with pytest.raises(PromptFileError, match="rounding"):  # the same change seen in bf16: the probe sums decide
        check_compatible(pf, variant(bb, embeddings=0.05, dtype=torch.bfloat16))


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
def test_model_with_only_its_blocks_changed_is_refused(family: str) -> None:
    # A fine-tune that never touched the embeddings: the version-1 fingerprint (embedding rows only) passed it.
    bb = tiny_backbone(family)
    pf = in_memory_prompt(PromptMeta.for_backbone(bb, 2), bb.hidden_size)
    tuned = variant(bb, block=0.05)
    assert torch.equal(tuned.model.get_input_embeddings().weight, bb.model.get_input_embeddings().weight)
    with pytest.raises(PromptFileError, match="weights differ"):
        check_compatible(pf, tuned)
    with pytest.raises(PromptFileError, match=r"rounding \(first in .*\.1\."):  # names the tensor that moved
        check_compatible(pf, variant(bb, block=0.05, dtype=torch.bfloat16))


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5", "gemma3", "qwen2"])
@pytest.mark.parametrize("seed", range(3))
def test_bf16_copy_is_accepted_and_a_slightly_tuned_bf16_copy_is_not(family: str, seed: int) -> None:
    bb = tiny_backbone(family, seed=seed)
    meta = PromptMeta.for_backbone(bb, 2)
    assert meta.dtype == "float32" and meta.format_version == 2
    pf = in_memory_prompt(meta, bb.hidden_size)
    check_compatible(pf, variant(bb, dtype=torch.bfloat16))
    check_compatible(pf, variant(bb, dtype=torch.float16))
    # A prompt trained on the bf16 model loads onto the fp32 one too.
    trained_bf16 = PromptMeta.for_backbone(variant(bb, dtype=torch.bfloat16), 2)
    assert trained_bf16.dtype == "bfloat16"
    check_compatible(in_memory_prompt(trained_bf16, bb.hidden_size), bb)
    # The tolerance is rounding, not a percentage: 1 % of one block's weights is past it (bf16 rounds by <= 0.4 %).
    with pytest.raises(PromptFileError, match="rounding"):
        check_compatible(pf, variant(bb, block=0.01, dtype=torch.bfloat16))


def test_override_accepts_other_weights_with_one_warning_but_never_another_hidden_size(
        capsys: pytest.CaptureFixture[str]) -> None:
    bb = tiny_backbone("llama")
    pf = in_memory_prompt(PromptMeta.for_backbone(bb, 2), bb.hidden_size)
    assert check_compatible(pf, bb, allow_other_model=True) is None
    assert capsys.readouterr().err == ""
    message = check_compatible(pf, tiny_backbone("llama", seed=1), where="p.safetensors", allow_other_model=True)
    err = capsys.readouterr().err
    assert message is not None and "p.safetensors" in message
    assert err.count("\n") == 1 and err.startswith("softprompt: warning: p.safetensors: trained on a different")
    with pytest.raises(PromptFileError, match="hidden size"):
        check_compatible(pf, tiny_backbone("llama", hidden=16), allow_other_model=True)


# ---- version-1 files ----------------------------------------------------------------------------------------------
def write_v1_file(path: Path, bb: Backbone, prompt: torch.Tensor, **extra: Any) -> dict[str, Any]:
    """A prompt file exactly as softprompt's format-version-1 writer made it (its fingerprint code copied here, so
    this stays a version-1 file whatever the library does now). Returns its metadata object."""
    weight = bb.model.get_input_embeddings().weight.detach()
    step = max(1, weight.shape[0] // 64)
    rows = weight[::step][:64].float().cpu().contiguous()
    chunks = rows.chunk(8, dim=0)
    meta = {"base_model": bb.name, "model_type": bb.model_type, "hidden_size": bb.hidden_size,
            "prompt_length": int(prompt.shape[0]),
            "embedding_fingerprint": hashlib.sha256(rows.numpy().tobytes()).hexdigest(),
            "embedding_probe": [float(c.sum()) for c in chunks], "init": "uniform", "task": "sst2",
            "verbalizer": {"0": " no"}, "train_config": {"lr": 0.3}, "metrics": {}, "format_version": 1, **extra}
    header = {"format": "softprompt", "format_version": "1", "softprompt": json.dumps(meta, sort_keys=True)}
    save_file({"prompt": prompt.float().contiguous()}, str(path), metadata=header)
    return meta


def test_version_1_file_loads_with_defaults_and_keeps_its_fingerprint_rule(tmp_path: Path) -> None:
    bb = tiny_backbone("gpt2")
    prompt = torch.randn(3, bb.hidden_size)
    write_v1_file(tmp_path / "v1.safetensors", bb, prompt)
    pf = load_prompt(tmp_path / "v1.safetensors")
    assert torch.equal(pf.prompt, prompt)
    m = pf.meta
    assert (m.format_version, m.task, m.verbalizer, m.train_config) == (1, "sst2", {"0": " no"}, {"lr": 0.3})
    assert (m.dtype, m.template, m.instruction, m.selection, m.model_fingerprint, m.model_probe) == \
        ("", "", "", {}, "", [])
    check_compatible(pf, bb)
    check_compatible(pf, variant(bb, dtype=torch.bfloat16))  # version 1's probe tolerance
    with pytest.raises(PromptFileError, match="embedding fingerprint differs"):
        check_compatible(pf, tiny_backbone("gpt2", seed=1))
    # Re-saved, it stays a version-1 file with the same fields.
    save_prompt(tmp_path / "again.safetensors", pf.prompt, m)
    assert load_prompt(tmp_path / "again.safetensors").meta == m


def test_version_1_file_with_a_version_2_field_is_refused(tmp_path: Path) -> None:
    bb = tiny_backbone("llama")
    write_v1_file(tmp_path / "v1.safetensors", bb, torch.zeros(2, bb.hidden_size), dtype="float32")
    with pytest.raises(PromptFileError, match=r"unknown metadata field\(s\) \['dtype'\] for format version 1"):
        load_prompt(tmp_path / "v1.safetensors")


def test_version_2_fields_round_trip(tmp_path: Path) -> None:
    bb = tiny_backbone("llama")
    meta = PromptMeta.for_backbone(bb, 2, task="t", template="Review: {text}\nGood?", instruction="",
                                   selection={"split": "validation", "size": 100, "seed": 3})
    save_prompt(tmp_path / "p.safetensors", torch.zeros(2, bb.hidden_size), meta)
    loaded = load_prompt(tmp_path / "p.safetensors").meta
    assert loaded == meta and loaded.selection["size"] == 100 and loaded.template.startswith("Review")
    with open(tmp_path / "p.safetensors", "rb") as f:  # version 2 carries no version-1 fields
        assert b"embedding_fingerprint" not in f.read(100_000)


# ---- malformed metadata: always a PromptFileError naming the field ------------------------------------------------
def _header_of(meta: PromptMeta) -> tuple[dict[str, str], dict[str, Any]]:
    obj = meta.to_json()
    return {"format": "softprompt", "format_version": "2"}, obj


MALFORMED: list[tuple[str, Any, str]] = [
    # (what to change: "header:KEY" sets a header string, "json" replaces the object, "del:KEY" drops a field,
    #  "KEY" sets a field), value, text the error must contain
    ("header:format_version", "two", "'format_version' must be an integer"),
    ("header:format_version", "1.5", "'format_version' must be an integer"),
    ("header:format_version", "²", "'format_version' must be an integer"),
    ("header:format_version", "0", "'format_version' is 0"),
    ("header:format_version", None, "'format_version' must be an integer"),
    ("format_version", "2", "'format_version' must be an integer"),
    ("format_version", 1, "'format_version' is 1, the header says 2"),
    ("json", [1, 2], "not an object"),
    ("json", "{not json", "corrupt metadata"),
    ("json", "[" * 100_000, "corrupt metadata"),
    ("base_model", None, "'base_model' must be a string"),
    ("del:base_model", None, "['base_model'] missing"),
    ("del:dtype", None, "['dtype'] missing"),
    ("hidden_size", "32", "'hidden_size' must be a positive integer"),
    ("hidden_size", 0, "'hidden_size' must be a positive integer"),
    ("prompt_length", "2", "'prompt_length' must be an integer >= 0"),
    ("prompt_length", True, "'prompt_length' must be an integer >= 0"),
    ("prompt_length", 2.0, "'prompt_length' must be an integer >= 0"),
    ("model_fingerprint", 123, "'model_fingerprint' must be a sha256 hex digest"),
    ("model_fingerprint", "abc", "'model_fingerprint' must be a sha256 hex digest"),
    ("model_probe", None, "'model_probe' must be a list of numbers"),
    ("model_probe", ["1.0"], "'model_probe' must be a list of numbers"),
    ("model_probe", {"a": 1}, "'model_probe' must be a list of numbers"),
    ("model_magnitude", [1.0], "'model_magnitude' has 1 sums"),
    ("dtype", 16, "'dtype' must be a dtype name"),
    ("dtype", "", "'dtype' must be a dtype name"),
    ("embedding_probe", None, "unknown metadata field(s) ['embedding_probe'] for format version 2"),
    ("verbalizer", [" no", " yes"], "'verbalizer' must be an object of label → text"),
    ("verbalizer", {"0": 1}, "'verbalizer' must be an object of label → text"),
    ("template", None, "'template' must be a string"),
    ("instruction", ["x"], "'instruction' must be a string"),
    ("selection", [], "'selection' must be an object"),
    ("selection", {"split": "validation", "size": "all"}, "'selection' must be an object"),
    ("train_config", "lr=0.3", "'train_config' must be an object"),
    ("metrics", None, "'metrics' must be an object"),
    ("task", 3, "'task' must be a string"),
    ("surprise", 1, "unknown metadata field(s) ['surprise']"),
]


@pytest.mark.parametrize("change, value, message", MALFORMED, ids=[f"{c}={v!r}"[:40] for c, v, _ in MALFORMED])
def test_malformed_metadata_is_a_prompt_file_error_naming_the_field(change: str, value: Any, message: str,
                                                                    tmp_path: Path) -> None:
    bb = tiny_backbone("llama")
    header, obj = _header_of(PromptMeta.for_backbone(bb, 2))
    text: str | None = None
    if change.startswith("header:"):
        key = change.removeprefix("header:")
        if value is None:
            del header[key]
        else:
            header[key] = value
    elif change == "json":
        text = value if isinstance(value, str) else json.dumps(value)
    elif change.startswith("del:"):
        del obj[change.removeprefix("del:")]
    else:
        obj[change] = value
    header["softprompt"] = text if text is not None else json.dumps(obj)
    path = tmp_path / "bad.safetensors"
    save_file({"prompt": torch.zeros(2, bb.hidden_size)}, str(path), metadata=header)
    with pytest.raises(PromptFileError) as err:
        load_prompt(path)
    assert message in str(err.value) and "bad.safetensors" in str(err.value)


def test_malformed_metadata_is_refused_on_save_too(tmp_path: Path) -> None:
    bb = tiny_backbone("llama")
    meta = PromptMeta.for_backbone(bb, 2, verbalizer=[" no"])  # type: ignore[arg-type]
    with pytest.raises(PromptFileError, match="'verbalizer'"):
        save_prompt(tmp_path / "p.safetensors", torch.zeros(2, bb.hidden_size), meta)
    assert not (tmp_path / "p.safetensors").exists()


def test_prompt_format_prefers_the_prompts_own_record_then_the_task() -> None:
    """core/templates.prompt_format: the one lookup the server and `softprompt predict` use."""
    from softprompt.core.templates import prompt_format
    from softprompt.tasks import builtin_task

    base = {"base_model": "m", "model_type": "llama", "hidden_size": 4, "prompt_length": 1}
    sst2 = builtin_task("sst2")
    assert builtin_task("no-such-task") is None and builtin_task("/etc/passwd") is None
    own = PromptMeta(**base, task="sst2", template="Q: {question}", instruction="Answer.\n", verbalizer={"a": " A"})
    fmt = prompt_format(own, sst2, "p")
    assert (fmt.template, fmt.instruction, fmt.verbalizer) == ("Q: {question}", "Answer.\n", {"a": " A"})
    assert fmt.fill("why {0}?") == "Answer.\nQ: why {0}?"
    # --task: the task's template over the recorded one, the prompt's instruction and labels kept.
    assert prompt_format(own, sst2, "p", task_template=True).template == sst2.text_template
    # --raw: the text as is, the labels still the prompt's.
    raw = prompt_format(own, sst2, "p", raw=True)
    assert (raw.fill("x"), raw.verbalizer) == ("x", {"a": " A"})
    # A version-1 file records nothing: the built-in task's format and labels, else the bare text, no labels.
    bare = PromptMeta(**base, task="sst2")
    assert prompt_format(bare, sst2, "p") == prompt_format(bare, sst2, "p", task_template=True)
    assert prompt_format(bare, sst2, "p").verbalizer == dict(sst2.verbalizer)
    assert prompt_format(bare, None, "p").fill("x") == "x" and prompt_format(bare, None, "p").verbalizer == {}
    with pytest.raises(PromptFileError, match="plainly"):
        prompt_format(PromptMeta(**base, template="{text.__class__}"), None, "p")
