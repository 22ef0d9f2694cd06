"""Nearest-token reading of prompts, prompt-to-prompt similarity, and ``softprompt inspect --neighbors``."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
import torch

from softprompt.cli import main
from softprompt.core.backbone import load_backbone
from softprompt.core.promptfile import PromptMeta, save_prompt
from softprompt.evaluation.neighbors import (
    nearest_tokens,
    prompt_similarity,
    similarity_table,
    verbalizer_hits,
    write_report,
)
from softprompt.training.initializers import init_prompt
from tests.conftest import tiny_backbone


@pytest.mark.parametrize("family", ["llama", "gemma3"])  # gemma3 scales inside its embedding module
def test_text_init_finds_its_own_tokens_first(family: str) -> None:
    backbone = tiny_backbone(family)
    text = "soft prompt"
    prompt = init_prompt(backbone, "text", 11, text=text)
    found = nearest_tokens(prompt, backbone.embedding_matrix(), backbone.tokenizer, k=3, chunk=50)
    ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert found.token_ids[: len(ids), 0].tolist() == ids
    torch.testing.assert_close(found.similarity[: len(ids), 0], torch.ones(len(ids)))
    assert "".join(found.tokens[p][0] for p in range(len(ids))) == text
    # Most similar first, and the chunked scan agrees with one scan of the whole vocabulary.
    assert bool((found.similarity[:, :-1] >= found.similarity[:, 1:]).all())
    whole = nearest_tokens(prompt, backbone.embedding_matrix(), backbone.tokenizer, k=3, chunk=10_000)
    assert torch.equal(whole.token_ids, found.token_ids)


def test_verbalizer_hits_name_the_positions() -> None:
    backbone = tiny_backbone("llama")
    emb = backbone.embedding_matrix()
    yes = backbone.tokenizer("y", add_special_tokens=False)["input_ids"][0]
    prompt = torch.stack([emb[yes], -emb[yes], emb[yes] * 3])
    found = nearest_tokens(prompt, emb, backbone.tokenizer, k=2)
    hits = verbalizer_hits(found, backbone.tokenizer, {"1": " y", "0": " n"})
    # " y" is two byte pieces, " " and "y"; the bare space piece does not count.
    assert hits == {" y": [0, 2], " n": []}


def test_prompt_similarity() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 8, generator=g)
    b = torch.cat([a[:2], -a[2:]])
    aligned, matrix = prompt_similarity(a, b)
    assert aligned == pytest.approx(0.0, abs=1e-6)  # (1 + 1 − 1 − 1) / 4
    assert matrix.shape == (4, 4)
    torch.testing.assert_close(matrix.diagonal(), torch.tensor([1.0, 1.0, -1.0, -1.0]))
    table = similarity_table([a, b, a[:3]])  # a shorter prompt compares over its own positions
    torch.testing.assert_close(table, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1 / 3], [1.0, 1 / 3, 1.0]]))


def test_reports_are_written(tmp_path: Path) -> None:
    backbone = tiny_backbone("llama")
    prompt = init_prompt(backbone, "text", 3, text="abc")
    found = nearest_tokens(prompt, backbone.embedding_matrix(), backbone.tokenizer, k=2)
    png = write_report(tmp_path / "r.png", found, title="t", hits={"a": [0]})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = write_report(tmp_path / "r.html", found, hits={"a": [0]}, similarity=torch.eye(2), names=["x", "y"])
    assert html.escape("'a' 1.000") in page.read_text() and "<table>" in page.read_text()
    with pytest.raises(ValueError, match=r"\.png or \.html"):
        write_report(tmp_path / "r.pdf", found)


def test_cli_inspect_neighbors(tiny_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
                               ) -> None:
    backbone = load_backbone(str(tiny_dirs["llama"]))
    meta = PromptMeta.for_backbone(backbone, 5, task="t", verbalizer={"1": "q"})
    files = []
    for i, text in enumerate(["hello", "world"]):
        files.append(tmp_path / f"p{i}.safetensors")
        save_prompt(files[-1], init_prompt(backbone, "text", 5, text=text), meta)
    # Without --neighbors, inspect prints the metadata as before.
    assert main(["inspect", str(files[0]), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plain["task"] == "t" and "positions" not in plain
    report = tmp_path / "n.png"
    assert main(["inspect", str(files[0]), "--neighbors", "2", "--compare", str(files[1]), "--report", str(report),
                 "--threads", "1"]) == 0  # --model defaults to the prompt's base model (the tiny folder)
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if not line.startswith("#") and not line.lstrip().startswith("pos")]
    assert len(rows) == 5 and all(line.split()[0] == str(p) for p, line in enumerate(rows))
    assert [line.split()[2] for line in rows] == ["'h'", "'e'", "'l'", "'l'", "'o'"]
    assert any("verbalizer 'q'" in line for line in out) and report.is_file()
    assert main(["inspect", str(files[0]), "--neighbors", "1", "--compare", str(files[1]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(result["positions"]) == 5 and result["similarity"]["matrix"][0][0] == pytest.approx(1.0)
    assert main(["inspect", str(files[0]), "--report", str(report)]) == 2  # --report needs --neighbors
