"""Tiny random models and a byte-level tokenizer, built from config objects: for tests, demos and benchmarks of
the plumbing. Nothing is downloaded.

``tiny_backbone(family)`` wraps one as a :class:`~softprompt.core.backbone.Backbone`; ``save_tiny(family, folder)``
writes a model folder that every ``--model`` flag accepts (the same weights for the same seed and sizes).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    T5Config,
)

from softprompt.core.backbone import Backbone, make_backbone

FAMILIES = ("llama", "gpt2", "t5", "gemma3", "qwen2")
SPECIALS = ["<pad>", "</s>", "<s>", "<unk>"]  # ids 0..3, as T5 expects pad 0 and eos 1
VOCAB = len(SPECIALS) + 256


def byte_tokenizer(*, add_bos: bool = True, add_eos: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (4 specials + 256 bytes): T5-style when add_eos, Llama-style when add_bos."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    if add_bos or add_eos:
        single = " ".join((["<s>"] if add_bos else []) + ["$A"] + (["</s>"] if add_eos else []))
        tok.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[("<s>", 2), ("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>",
                                   unk_token="<unk>")


def tiny_config(family: str, *, hidden: int = 32, layers: int = 2, heads: int = 4) -> PretrainedConfig:
    # A wide init makes the random models' outputs input-dependent enough for a prompt to visibly move the loss.
    common = {"vocab_size": VOCAB, "pad_token_id": 0, "eos_token_id": 1, "initializer_range": 0.3}
    if family == "llama":
        return LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=heads // 2, bos_token_id=2,
                           max_position_embeddings=512, **common)
    if family == "qwen2":
        return Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=heads // 2, bos_token_id=2,
                           max_position_embeddings=512, **common)
    if family == "gemma3":
        return Gemma3TextConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                num_attention_heads=heads, num_key_value_heads=heads // 2, head_dim=hidden // heads,
                                bos_token_id=2, max_position_embeddings=512, sliding_window=64, **common)
    if family == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=512, bos_token_id=2,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if family == "t5":
        return T5Config(d_model=hidden, d_ff=2 * hidden, d_kv=hidden // heads, num_layers=layers,
                        num_decoder_layers=layers, num_heads=heads, decoder_start_token_id=0, dropout_rate=0.0,
                        initializer_factor=1.0, **{k: v for k, v in common.items() if k != "initializer_range"})
    raise ValueError(f"unknown tiny family {family!r}; choose from {FAMILIES}")


def tiny_model(family: str, seed: int = 0, **sizes: int) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A random model of ``family`` and its tokenizer; the same seed gives the same weights."""
    config = tiny_config(family, **sizes)
    torch.manual_seed(seed)
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = cls.from_config(config).eval()
    tokenizer = byte_tokenizer(add_bos=family != "t5", add_eos=family == "t5")
    return model, tokenizer


def tiny_backbone(family: str = "llama", seed: int = 0, *, dtype: torch.dtype | None = None,
                  device: str | torch.device | None = None, **sizes: int) -> Backbone:
    """A tiny random model of ``family`` as a backbone named ``tiny-<family>`` (in ``dtype`` on ``device`` when
    given): the weights :func:`save_tiny` writes for the same seed and sizes."""
    model, tokenizer = tiny_model(family, seed, **sizes)
    if dtype is not None:
        model = model.to(dtype)
    return make_backbone(model, tokenizer, f"tiny-{family}", device=device)


def save_tiny(family: str, folder: str | Path, seed: int = 0, **sizes: int) -> Path:
    """Write a tiny model + tokenizer folder loadable by ``--model FOLDER``."""
    folder = Path(folder)
    model, tokenizer = tiny_model(family, seed, **sizes)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
