"""Prompt initialisations: shapes, ranges, and the rows they promise."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from softprompt.core.backbone import make_backbone
from softprompt.core.promptfile import PromptFileError, PromptMeta, save_prompt
from softprompt.training.initializers import TOP_VOCAB, common_token_ids, init_prompt, sampled_vocab, word_embedding


@pytest.fixture
def llama():
    from tests.conftest import tiny_backbone

    return tiny_backbone("llama")


def test_uniform(llama) -> None:
    p = init_prompt(llama, "uniform", 7, seed=1)
    assert p.shape == (7, llama.hidden_size)
    assert float(p.abs().max()) <= 0.5 and float(p.std()) > 0.2
    assert torch.equal(p, init_prompt(llama, "uniform", 7, seed=1))
    assert not torch.equal(p, init_prompt(llama, "uniform", 7, seed=2))


def test_sampled_vocab_rows_are_distinct_common_token_embeddings(llama) -> None:
    p = init_prompt(llama, "sampled-vocab", 10, seed=0)
    table = llama.embedding_matrix()
    pool = set(common_token_ids(llama).tolist())
    matches = [int((table - row).abs().sum(-1).argmin()) for row in p]
    assert len(set(matches)) == 10
    assert set(matches) <= pool
    assert not set(matches) & set(llama.tokenizer.all_special_ids)
    assert len(pool) <= TOP_VOCAB


def test_class_label_rows_equal_label_embeddings(llama) -> None:
    words = [" positive", " negative"]
    p = init_prompt(llama, "class-label", 5, label_words=words)
    for i, w in enumerate(words):
        ids = llama.tokenizer(w, add_special_tokens=False)["input_ids"]
        assert len(ids) > 1  # multi-piece with the byte tokenizer: the mean of the pieces
        expected = llama.embed(torch.tensor(ids)).mean(0)
        torch.testing.assert_close(p[i], expected)
        torch.testing.assert_close(word_embedding(llama, w), expected)
    assert p.shape == (5, llama.hidden_size)


def test_text_init_is_the_text_then_vocab(llama) -> None:
    p = init_prompt(llama, "text", 6, text="abc")
    ids = llama.tokenizer("abc", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(p[:3], llama.embed(torch.tensor(ids)))
    assert p.shape == (6, llama.hidden_size)
    assert init_prompt(llama, "text", 2, text="abcdef").shape == (2, llama.hidden_size)


def test_zero_length_and_errors(llama) -> None:
    assert init_prompt(llama, "sampled-vocab", 0).shape == (0, llama.hidden_size)
    with pytest.raises(ValueError, match="unknown init"):
        init_prompt(llama, "bogus", 3)
    with pytest.raises(ValueError, match="label words"):
        init_prompt(llama, "class-label", 3)
    with pytest.raises(ValueError, match="init-text"):
        init_prompt(llama, "text", 3)


def test_transfer_init_keeps_the_first_rows_or_pads_with_sampled_vocab(llama, tmp_path) -> None:
    source = torch.randn(5, llama.hidden_size)
    path = tmp_path / "source.safetensors"
    save_prompt(path, source, PromptMeta.for_backbone(llama, 5, task="source"))
    assert torch.equal(init_prompt(llama, f"from:{path}", 5), source)
    assert torch.equal(init_prompt(llama, f"from:{path}", 3), source[:3])  # longer source: its first P rows
    longer = init_prompt(llama, f"from:{path}", 8, seed=2)  # shorter source: padded as the text init pads
    assert torch.equal(longer[:5], source)
    assert torch.equal(longer[5:], sampled_vocab(llama, 3, torch.Generator().manual_seed(2)))


def test_transfer_init_refuses_another_model_unless_allowed(llama, tmp_path, capsys) -> None:
    from tests.conftest import tiny_backbone

    other = tiny_backbone("llama", seed=1)  # the same shapes, other weights
    path = tmp_path / "other.safetensors"
    source = torch.randn(3, other.hidden_size)
    save_prompt(path, source, PromptMeta.for_backbone(other, 3))
    with pytest.raises(PromptFileError, match=r"different model.*--allow-other-model"):
        init_prompt(llama, f"from:{path}", 3)
    assert torch.equal(init_prompt(llama, f"from:{path}", 3, allow_other_model=True), source)
    assert "warning" in capsys.readouterr().err
    wide = tmp_path / "wide.safetensors"
    meta = PromptMeta.for_backbone(llama, 3)
    meta.hidden_size += 1
    save_prompt(wide, torch.randn(3, meta.hidden_size), meta)
    with pytest.raises(PromptFileError, match="hidden size"):  # cannot run at all: refused regardless
        init_prompt(llama, f"from:{wide}", 3, allow_other_model=True)
    with pytest.raises(PromptFileError, match="no such prompt file"):
        init_prompt(llama, f"from:{tmp_path / 'missing.safetensors'}", 3)


def sentencepiece_style() -> PreTrainedTokenizerFast:
    """Gemma/Llama-style: ▁ for a space, <0x..> byte fallback, reserved <unusedN> slots in the plain vocabulary,
    and an added (not special) formatting token."""
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>", "<unused0>", "<unused1>", "<0x0A>", "<0x41>", "<0xC3>", "▁", "▁▁",
              "\t", "\n\n", "\u200b", "▁the", "▁cat", "s", "é"]
    tok = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[], unk_token="<unk>",
                               byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                  unk_token="<unk>")
    out.add_tokens(["<start_of_turn>"])
    return out


def byte_level_style() -> PreTrainedTokenizerFast:
    """GPT-2-style: Ġ for a space, Ċ for a newline, single bytes of multi-byte characters, an added chat token."""
    pieces = ["<|endoftext|>", "!", "a", "Ã", "©", "Ġ", "Ċ", "ĉ", "ĠĠ", "ĊĊ", "Ġthe", "cat", "Ã©"]
    tok = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    out.add_tokens(["<|im_start|>"])
    return out


@pytest.mark.parametrize(("make", "plain"), [
    (sentencepiece_style, ["▁the", "▁cat", "s", "é"]),
    (byte_level_style, ["!", "a", "Ġthe", "cat", "Ã©"]),
])
def test_sampled_vocab_pool_is_plain_text_only(make, plain: list[str]) -> None:
    tokenizer = make()
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    backbone = make_backbone(model, tokenizer, "tiny")
    pool = common_token_ids(backbone).tolist()
    assert tokenizer.convert_ids_to_tokens(pool) == plain
    p = init_prompt(backbone, "sampled-vocab", 3, seed=0)
    table = backbone.embedding_matrix()
    assert {int((table - row).abs().sum(-1).argmin()) for row in p} <= set(pool)
