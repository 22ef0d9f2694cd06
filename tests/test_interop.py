"""`softprompt convert`: our prompts run in PEFT with the same logits, and PEFT / T5X prompts run in softprompt with
theirs. PEFT is a test-only dependency."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from softprompt.cli import main
from softprompt.core.backbone import Backbone, load_backbone
from softprompt.core.bank import PromptBank
from softprompt.core.peft_interop import PEFT_CONFIG, PEFT_KEY, PEFT_WEIGHTS, export_peft, read_peft
from softprompt.core.prompted import PromptedModel
from softprompt.core.promptfile import PromptFile, PromptMeta, load_prompt, save_prompt
from softprompt.core.tiny import tiny_model
from tests.conftest import tiny_backbone

peft = pytest.importorskip("peft")
P = 5


def our_logits(bb: Backbone, prompt: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Logits over one unpadded row's own positions (decoder: the input; encoder-decoder: the labels)."""
    pm = PromptedModel(bb, PromptBank(prompt.unsqueeze(0)))
    s = pm.splice_rows(ids, torch.ones_like(ids), torch.zeros(1, dtype=torch.long))
    with torch.no_grad():
        if bb.is_encoder_decoder:
            return bb.model(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask, labels=labels).logits
        out = bb.model(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask, position_ids=s.position_ids)
    return out.logits[:, prompt.shape[0]:]


def peft_logits(model: peft.PeftModel, ids: torch.Tensor, labels: torch.Tensor | None, p: int) -> torch.Tensor:
    with torch.no_grad():
        if labels is not None:
            return model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).logits
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, p:]


def row(bb: Backbone) -> tuple[torch.Tensor, torch.Tensor | None]:
    ids = torch.tensor([bb.tokenizer("a review: great fun")["input_ids"]])
    labels = torch.tensor([bb.tokenizer(" yes")["input_ids"]]) if bb.is_encoder_decoder else None
    return ids, labels


@pytest.mark.parametrize("family", ["llama", "gemma3", "t5"])
def test_exported_prompt_gives_softprompt_logits_in_peft(family: str, tmp_path: Path) -> None:
    bb = tiny_backbone(family)
    # A prompt at the scale of the consumed embeddings (Gemma's are sqrt(H)-scaled inside its embedding module).
    prompt = torch.randn(P, bb.hidden_size) * bb.embedding_std()
    pf = PromptFile(prompt, PromptMeta.for_backbone(bb, P))
    folder = export_peft(pf, tmp_path / "adapter")
    config = json.loads((folder / PEFT_CONFIG).read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == P
    assert config["task_type"] == ("SEQ_2_SEQ_LM" if family == "t5" else "CAUSAL_LM")
    fresh, _ = tiny_model(family, seed=0)
    pmodel = peft.PeftModel.from_pretrained(fresh, str(folder)).eval()
    ids, labels = row(bb)
    torch.testing.assert_close(peft_logits(pmodel, ids, labels, P), our_logits(bb, prompt, ids, labels),
                               rtol=1e-4, atol=1e-5)
    # And the comparison can fail: another prompt changes the logits.
    assert not torch.allclose(peft_logits(pmodel, ids, labels, P), our_logits(bb, prompt * 2, ids, labels),
                              atol=1e-3)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_peft_prompt_imported_gives_peft_logits(family: str, tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    folder = tiny_dirs[family]
    seq2seq = family == "t5"
    base = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(folder)
    config = peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM", num_virtual_tokens=P)
    pmodel = peft.get_peft_model(base, config)
    with torch.no_grad():
        pmodel.prompt_encoder["default"].embedding.weight.normal_(0, 0.5)
    pmodel.save_pretrained(tmp_path / "adapter")
    pmodel.eval()
    stored = read_peft(tmp_path / "adapter")[0]
    if seq2seq:  # PEFT's seq2seq default keeps 2P rows; only the first P reach the model
        assert json.loads((tmp_path / "adapter" / PEFT_CONFIG).read_text())["num_transformer_submodules"] == 2
    out = tmp_path / "imported.safetensors"
    assert main(["convert", str(tmp_path / "adapter"), "--from", "peft", "--model", str(folder),
                 "--out", str(out)]) == 0
    pf = load_prompt(out)
    torch.testing.assert_close(pf.prompt, stored)
    bb = load_backbone(str(folder))
    ids, labels = row(bb)
    torch.testing.assert_close(our_logits(bb, pf.prompt, ids, labels), peft_logits(pmodel, ids, labels, P),
                               rtol=1e-4, atol=1e-5)


def test_cli_round_trip_peft_and_npy(tiny_dirs: dict[str, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    bb = load_backbone(str(tiny_dirs["llama"]))
    prompt = torch.randn(P, bb.hidden_size)
    src = tmp_path / "p.safetensors"
    save_prompt(src, prompt, PromptMeta.for_backbone(bb, P, task="sst2"))
    assert main(["convert", str(src), "--to", "peft", "--out", str(tmp_path / "peft")]) == 0
    assert main(["convert", str(tmp_path / "peft"), "--from", "peft", "--model", str(tiny_dirs["llama"]),
                 "--out", str(tmp_path / "back.safetensors")]) == 0
    assert torch.equal(load_prompt(tmp_path / "back.safetensors").prompt, prompt)
    assert main(["convert", str(src), "--to", "npy", "--out", str(tmp_path / "p.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "p.npy", allow_pickle=False), prompt.numpy())
    assert main(["convert", str(tmp_path / "p.npy"), "--from", "npy", "--model", str(tiny_dirs["llama"]),
                 "--out", str(tmp_path / "npy.safetensors")]) == 0
    imported = load_prompt(tmp_path / "npy.safetensors")
    assert torch.equal(imported.prompt, prompt) and imported.meta.init == "imported:npy:p.npy"
    # An import is a version-2 file bound to the model it was imported onto.
    assert (imported.meta.format_version, imported.meta.dtype) == (2, "float32")
    assert imported.meta.model_fingerprint == PromptMeta.for_backbone(bb, P).model_fingerprint
    capsys.readouterr()


def test_t5x_npy_float64_and_batch_axis(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    array = np.random.default_rng(0).normal(size=(1, P, 32))  # float64 with a leading batch axis, as T5X may write
    np.save(tmp_path / "t5x.npy", array)
    assert main(["convert", str(tmp_path / "t5x.npy"), "--from", "npy", "--model", str(tiny_dirs["t5"]),
                 "--out", str(tmp_path / "t5x.safetensors")]) == 0
    pf = load_prompt(tmp_path / "t5x.safetensors")
    assert pf.prompt.dtype == torch.float32 and pf.meta.model_type == "t5"
    torch.testing.assert_close(pf.prompt, torch.from_numpy(array[0]).float())


def bad_inputs(tmp_path: Path, model: str) -> list[tuple[list[str], str]]:
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "flat.npy", np.zeros(32, dtype=np.float32))
    np.save(tmp_path / "wide.npy", np.zeros((P, 64), dtype=np.float32))
    np.save(tmp_path / "nan.npy", np.full((P, 32), np.nan, dtype=np.float32))
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / PEFT_CONFIG).write_text(json.dumps({"peft_type": "LORA"}))
    short = tmp_path / "short"
    short.mkdir()
    (short / PEFT_CONFIG).write_text(json.dumps({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": P,
                                                 "task_type": "CAUSAL_LM"}))
    save_file({PEFT_KEY: torch.zeros(P - 1, 32)}, str(short / PEFT_WEIGHTS))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / PEFT_CONFIG).write_text(json.dumps({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": P}))
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    out = ["--out", str(tmp_path / "x.safetensors")]
    m = ["--model", model]
    return [
        ([str(tmp_path / "objects.npy"), "--from", "npy", *m, *out], "plain numeric"),
        ([str(tmp_path / "flat.npy"), "--from", "npy", *m, *out], "[P, H] float array"),
        ([str(tmp_path / "wide.npy"), "--from", "npy", *m, *out], "hidden size 64"),
        ([str(tmp_path / "nan.npy"), "--from", "npy", *m, *out], "NaN"),
        ([str(tmp_path / "missing.npy"), "--from", "npy", *m, *out], "no such file"),
        ([str(lora), "--from", "peft", *m, *out], "only PROMPT_TUNING"),
        ([str(short), "--from", "peft", *m, *out], "expected [5, H]"),
        ([str(pickled), "--from", "peft", *m, *out], "pickle"),
        ([str(tmp_path), "--from", "peft", *m, *out], "not a PEFT adapter folder"),
        ([str(tmp_path / "flat.npy"), "--from", "npy", *out], "needs --model"),
        ([str(tmp_path / "flat.npy"), "--to", "peft", "--out", str(tmp_path / "o")], "not a readable safetensors"),
    ]


def test_bad_inputs_exit_2_with_a_reason(tiny_dirs: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    for argv, reason in bad_inputs(tmp_path, str(tiny_dirs["llama"])):
        assert main(["convert", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert reason in err, (argv, err)
