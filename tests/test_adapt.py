"""LM adaptation: prefix-LM batches, the loss falls on a tiny T5, the folder loads, decoder-only is refused; through
the shared loop, accumulation is exact and a killed run resumes to the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from softprompt.cli import main
from softprompt.core.backbone import load_backbone
from softprompt.core.splice import IGNORE_INDEX
from softprompt.experiments.baselines.lm_adaptation import (
    AdaptConfig,
    NotEncoderDecoderError,
    adapt_lm,
    prefix_lm_batch,
    text_chunks,
)
from tests.conftest import tiny_backbone
from tests.test_model_tuning import Killed, kill_at_step

TEXT = "the cat sat on the mat. " * 40



def test_prefix_lm_batch_splits_each_chunk_once() -> None:
    chunks = [[10, 11, 12, 13, 14], [20, 21, 22]]
    batch = prefix_lm_batch(chunks, split_seed=0, eos=1, pad=0)
    for row, chunk in enumerate(chunks):
        enc = batch.input_ids[row][batch.attention_mask[row].bool()].tolist()
        dec = [t for t in batch.labels[row].tolist() if t != IGNORE_INDEX]
        assert enc[-1] == 1 and dec[-1] == 1
        assert enc[:-1] + dec[:-1] == chunk and len(enc) > 1 and len(dec) > 1  # both sides non-empty
        assert int(batch.target_lengths[row]) == len(dec)
    again = prefix_lm_batch(chunks, split_seed=0, eos=1, pad=0)
    assert torch.equal(batch.input_ids, again.input_ids)


def test_text_chunks_drop_unsplittable_tail() -> None:
    tok = tiny_backbone("t5").tokenizer
    chunks = text_chunks(tok, "abcdefg", 3)  # byte-level: abc def (g dropped: too short to split)
    assert [len(c) for c in chunks] == [3, 3]


def test_adapt_lowers_the_loss_and_writes_a_loadable_folder(tmp_path: Path) -> None:
    backbone = tiny_backbone("t5")
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    config = AdaptConfig(steps=12, batch_size=4, chunk_tokens=32, lr=1e-2)
    result = adapt_lm(backbone, TEXT, config, tmp_path / "adapted", progress=False)
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    for k, v in backbone.model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the caller's model is untouched
    loaded = load_backbone(str(tmp_path / "adapted"))
    assert loaded.is_encoder_decoder
    for k, v in loaded.model.state_dict().items():
        assert torch.allclose(v, result.backbone.model.state_dict()[k]), k
    info = json.loads((tmp_path / "adapted" / "adaptation.json").read_text())
    assert info["objective"] == "prefix-lm" and info["loss_last"] < info["loss_first"]


def test_accumulation_equals_one_big_batch() -> None:
    # The split points are drawn per step in row order, so two micro-batches cut the rows as one batch does.
    runs = [adapt_lm(tiny_backbone("t5"), TEXT, AdaptConfig(steps=3, batch_size=4, grad_accum=accum, chunk_tokens=16,
                                                            lr=1e-2), progress=False) for accum in (1, 2)]
    one, two = (r.backbone.model.state_dict() for r in runs)
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert runs[1].losses == pytest.approx(runs[0].losses, rel=1e-5)


def test_killed_then_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    config = AdaptConfig(steps=5, batch_size=2, chunk_tokens=16, lr=1e-2, save_every=1)
    full = adapt_lm(tiny_backbone("t5"), TEXT, config, tmp_path / "full", progress=False)
    handle = kill_at_step(3)
    try:
        with pytest.raises(Killed):
            adapt_lm(tiny_backbone("t5"), TEXT, config, tmp_path / "killed", progress=False)
    finally:
        handle.remove()
    resumed = adapt_lm(tiny_backbone("t5"), TEXT, config, tmp_path / "killed", resume=True, progress=False)
    for name, value in full.backbone.model.state_dict().items():
        assert torch.equal(resumed.backbone.model.state_dict()[name], value), name
    assert resumed.losses == full.losses and len(full.losses) == 5


def test_decoder_only_is_refused() -> None:
    with pytest.raises(NotEncoderDecoderError, match="decoder-only"):
        adapt_lm(tiny_backbone("llama"), TEXT, AdaptConfig(steps=1))


def test_cli_adapt(tiny_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text(TEXT)
    out = tmp_path / "t5-lm"
    rc = main(["adapt", "--model", str(tiny_dirs["t5"]), "--text", str(text), "--steps", "3", "--batch-size", "2",
               "--chunk-tokens", "16", "--out", str(out), "--no-progress", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 3 and (out / "config.json").is_file()
    capsys.readouterr()
    assert main(["adapt", "--model", str(tiny_dirs["llama"]), "--text", str(text), "--out",
                 str(tmp_path / "no")]) == 2
    assert "decoder-only" in capsys.readouterr().err
    assert main(["adapt", "--model", "smollm2-135m", "--text", str(text), "--out", str(tmp_path / "no")]) == 2
