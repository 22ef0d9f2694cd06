"""Prompt initialisations from the paper (section 3.2): uniform, sampled vocabulary, class labels, and text; and
prompt transfer (SPoT, Vu et al., 2022): ``from:FILE.safetensors``, the rows of a prompt trained on another task.

All return a ``[P, H]`` float32 tensor in the space the model consumes (see :mod:`softprompt.core.backbone`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from softprompt.core.backbone import Backbone
from softprompt.core.promptfile import check_compatible, load_prompt

InitName = Literal["uniform", "sampled-vocab", "class-label", "text"]
INITS: tuple[str, ...] = ("uniform", "sampled-vocab", "class-label", "text")
TRANSFER_PREFIX = "from:"
"""``from:PATH``: initialise from the prompt file at PATH (prompt transfer)"""


def is_init(name: str) -> bool:
    """True for a named init or ``from:`` followed by a path."""
    return name in INITS or (name.startswith(TRANSFER_PREFIX) and len(name) > len(TRANSFER_PREFIX))

# The paper samples from the 5,000 most common tokens of T5's SentencePiece vocabulary. Tokenizers ship no counts,
# so we take the 5,000 lowest ids: BPE and SentencePiece vocabularies are built in (roughly) frequency order.
TOP_VOCAB = 5000


# Vocabulary entries that are not text a prompt should start from, whatever the tokenizer family marks special:
# SentencePiece byte fallback (<0x0A>) and reserved slots (Gemma's <unused17>, BERT's [unused3]).
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_UNUSED_PIECE = re.compile(r"<unused\d+>|\[unused\d+\]")


def _visible(text: str) -> bool:
    """True if ``text`` holds a visible character and is whole text (not one byte of a multi-byte character)."""
    return "\ufffd" not in text and any(ch.isprintable() and not ch.isspace() for ch in text)


def plain_token_ids(tokenizer: PreTrainedTokenizerBase, vocab_size: int, top: int = TOP_VOCAB) -> list[int]:
    """The ``top`` lowest ids whose token is plain text, in id order.

    Left out: special tokens; added tokens (Gemma adds formatting tokens such as ``<start_of_turn>``, HTML tags and
    whitespace runs, special or not); byte tokens (SentencePiece's ``<0x..>`` fallback, and a byte-level
    vocabulary's single bytes that are part of a multi-byte character: they decode to U+FFFD on their own); reserved
    ``<unusedN>`` slots; and tokens that decode to whitespace or control characters only (SentencePiece ``▁``,
    byte-level ``Ġ``, ``Ċ``, ``ĉ`` and their runs). Decoding each token, rather than matching each family's marker
    characters, treats every tokenizer family alike.
    """
    excluded = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    n = min(vocab_size, len(tokenizer))
    out: list[int] = []
    chunk = max(2 * top, 1024)
    for start in range(0, n, chunk):
        ids = [i for i in range(start, min(n, start + chunk)) if i not in excluded]
        pieces = tokenizer.convert_ids_to_tokens(ids)
        texts = tokenizer.batch_decode([[i] for i in ids])
        for i, piece, text in zip(ids, pieces, texts, strict=True):
            if piece is None or _BYTE_PIECE.fullmatch(piece) or _UNUSED_PIECE.fullmatch(piece) or not _visible(text):
                continue
            out.append(i)
            if len(out) == top:
                return out
    return out


def common_token_ids(backbone: Backbone, top: int = TOP_VOCAB) -> Tensor:
    """Ids of the ``top`` lowest-id plain-text tokens (see :func:`plain_token_ids`): [≤ top]."""
    ids = plain_token_ids(backbone.tokenizer, backbone.vocab_size, top)
    if not ids:
        raise ValueError(f"{backbone.name}: no plain-text token to sample a prompt from")
    return torch.tensor(ids, dtype=torch.long)


def sampled_vocab(backbone: Backbone, length: int, generator: torch.Generator) -> Tensor:
    """Embeddings of ``length`` common tokens sampled without replacement (with replacement past the pool)."""
    pool = common_token_ids(backbone)
    if length <= len(pool):
        picks = pool[torch.randperm(len(pool), generator=generator)[:length]]
    else:
        picks = pool[torch.randint(len(pool), (length,), generator=generator)]
    with torch.no_grad():
        return backbone.embed(picks.to(backbone.device)).cpu()


def word_embedding(backbone: Backbone, text: str) -> Tensor:
    """[H] mean embedding of a word's token pieces (the paper averages multi-piece labels)."""
    ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"label {text!r} tokenizes to no tokens")
    with torch.no_grad():
        return backbone.embed(torch.tensor(ids, device=backbone.device)).mean(dim=0).cpu()


def transfer_prompt(backbone: Backbone, path: str, length: int, generator: torch.Generator, *,
                    allow_other_model: bool = False) -> Tensor:
    """The rows of the prompt file at ``path``, fitted to ``length``: [length, H].

    The file must belong to ``backbone`` (its fingerprint, :func:`softprompt.core.promptfile.check_compatible`; another
    hidden size is always refused). A longer source keeps its first ``length`` rows; a shorter one is followed by
    sampled-vocab rows, as the text init pads a short text.
    """
    source = load_prompt(path)
    check_compatible(source, backbone, where=f"init {TRANSFER_PREFIX}{path}", allow_other_model=allow_other_model)
    head = source.prompt[:length]
    return torch.cat([head, sampled_vocab(backbone, length - len(head), generator)])


def init_prompt(
    backbone: Backbone,
    strategy: str,
    length: int,
    *,
    seed: int = 0,
    label_words: Sequence[str] = (),
    text: str | None = None,
    uniform_range: float = 0.5,
    allow_other_model: bool = False,
) -> Tensor:
    """A new ``[length, H]`` prompt.

    - ``uniform``: U(-range, +range), range 0.5 as in the paper.
    - ``sampled-vocab``: embeddings of common tokens (see :data:`TOP_VOCAB`).
    - ``class-label``: one row per label word (multi-piece words averaged), then sampled-vocab rows; with more
      labels than rows, the first ``length`` labels.
    - ``text``: the embeddings of ``text``'s tokens, truncated to ``length``, then sampled-vocab rows.
    - ``from:PATH``: another prompt file's rows (:func:`transfer_prompt`); ``allow_other_model`` accepts a file
      trained on other weights of the same hidden size.
    """
    if length < 0:
        raise ValueError(f"prompt length must be >= 0, got {length}")
    g = torch.Generator().manual_seed(seed)
    h = backbone.hidden_size
    if strategy.startswith(TRANSFER_PREFIX) and is_init(strategy):
        return transfer_prompt(backbone, strategy[len(TRANSFER_PREFIX):], length, g,
                               allow_other_model=allow_other_model)
    if strategy == "uniform":
        return (torch.rand(length, h, generator=g) * 2 - 1) * uniform_range
    if strategy == "sampled-vocab":
        return sampled_vocab(backbone, length, g)
    if strategy == "class-label":
        if not label_words:
            raise ValueError("class-label init needs the task's label words (a classification task)")
        rows = [word_embedding(backbone, w) for w in label_words][:length]
        head = torch.stack(rows) if rows else torch.zeros(0, h)
        return torch.cat([head, sampled_vocab(backbone, length - len(rows), g)])
    if strategy == "text":
        if not text:
            raise ValueError("text init needs a non-empty --init-text")
        ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"][:length]
        with torch.no_grad():
            head = backbone.embed(torch.tensor(ids, dtype=torch.long, device=backbone.device)).cpu()
        return torch.cat([head, sampled_vocab(backbone, length - len(ids), g)])
    raise ValueError(f"unknown init {strategy!r}; choose one of {', '.join(INITS)} or {TRANSFER_PREFIX}FILE")
