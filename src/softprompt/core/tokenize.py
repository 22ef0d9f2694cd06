"""Tokenize (input, target) text pairs into a :class:`Batch` for either model family.

Decoder-only rows are ``input tokens + target tokens`` (tokenized separately, so a target has the same ids whatever
precedes it) with labels only on the target; encoder-decoder rows keep the input for the encoder and the target as
decoder labels. Inputs longer than ``max_input_tokens`` lose their *beginning* (a leading BOS is kept): task formats
put the question or the label cue at the end, which a decoder must see.

Text is always text: a user's ``</s>`` or ``<|endoftext|>`` is tokenized as those characters
(``split_special_tokens=True``), never as the control token it spells; the only special tokens in a row are the ones
the tokenizer adds itself (BOS, T5's EOS) and a generation target's EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from softprompt.core.splice import IGNORE_INDEX


@dataclass(frozen=True)
class Batch:
    """Token ids, right-padded (the splice re-lays them out).

    Decoder-only: ``input_ids``/``labels`` [B, T] hold input and target, labels IGNORE_INDEX off the target.
    Encoder-decoder: ``input_ids`` [B, T] is the encoder input and ``labels`` [B, Lt] the decoder target.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    target_lengths: Tensor  # [B] number of target tokens per row

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels,
                                              self.target_lengths)))


def _pad(rows: Sequence[list[int]], value: int) -> Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def _truncate(ids: list[int], limit: int, keep_first: bool) -> list[int]:
    if len(ids) <= limit:
        return ids
    if keep_first:
        return ids[:1] + ids[len(ids) - (limit - 1):]
    return ids[len(ids) - limit:]


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, add_special_tokens: bool
             ) -> list[list[int]]:
    """Token ids of each text (one batched call), special-token spellings in it taken as plain text."""
    if not texts:
        return []
    out = tokenizer(list(texts), add_special_tokens=add_special_tokens, split_special_tokens=True)["input_ids"]
    return [list(ids) for ids in out]


def encode_inputs(tokenizer: PreTrainedTokenizerBase, inputs: Sequence[str], max_input_tokens: int) -> list[list[int]]:
    """Input token ids with the tokenizer's own special tokens (BOS for Llama, EOS for T5), truncated to the last
    ``max_input_tokens`` (a leading BOS kept). An input may tokenize to nothing (an empty string, no BOS)."""
    bos = tokenizer.bos_token_id
    return [_truncate(ids, max_input_tokens, keep_first=bos is not None and ids[:1] == [bos])
            for ids in tokenize(tokenizer, inputs, add_special_tokens=True)]


def encode_targets(
    tokenizer: PreTrainedTokenizerBase, targets: Sequence[str], *, encoder_decoder: bool, add_eos: bool
) -> list[list[int]]:
    """Target token ids: T5 tokenizers append EOS themselves; decoder-only targets get it only when asked
    (generation targets must learn to stop; rank-classification choices must not end in EOS)."""
    eos = tokenizer.eos_token_id
    out = []
    for target, ids in zip(targets, tokenize(tokenizer, targets, add_special_tokens=False), strict=True):
        if (encoder_decoder or add_eos) and eos is not None and ids[-1:] != [eos]:
            ids.append(eos)
        if not ids:
            raise ValueError(f"target {target!r} tokenizes to no tokens")
        out.append(ids)
    return out


def make_batch(
    tokenizer: PreTrainedTokenizerBase,
    inputs: Sequence[str],
    targets: Sequence[str],
    *,
    encoder_decoder: bool,
    add_eos: bool = False,
    max_input_tokens: int = 256,
) -> Batch:
    """Tokenize B (input, target) pairs."""
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    enc = encode_inputs(tokenizer, inputs, max_input_tokens)
    tgt = encode_targets(tokenizer, targets, encoder_decoder=encoder_decoder, add_eos=add_eos)
    lengths = torch.tensor([len(t) for t in tgt], dtype=torch.long)
    pad = int(tokenizer.pad_token_id)
    if encoder_decoder:
        ids = _pad(enc, pad)
        mask = _pad([[1] * len(r) for r in enc], 0)
        return Batch(ids, mask, _pad(tgt, IGNORE_INDEX), lengths)
    rows = [e + t for e, t in zip(enc, tgt, strict=True)]
    labels = [[IGNORE_INDEX] * len(e) + t for e, t in zip(enc, tgt, strict=True)]
    return Batch(_pad(rows, pad), _pad([[1] * len(r) for r in rows], 0), _pad(labels, IGNORE_INDEX), lengths)


def make_input_batch(tokenizer: PreTrainedTokenizerBase, inputs: Sequence[str], max_input_tokens: int = 256
                     ) -> tuple[Tensor, Tensor]:
    """Inputs alone, for generation: (input_ids [B, T], attention_mask [B, T]), right-padded."""
    enc = encode_inputs(tokenizer, inputs, max_input_tokens)
    return _pad(enc, int(tokenizer.pad_token_id)), _pad([[1] * len(r) for r in enc], 0)


def length_chunks(lengths: Sequence[int], max_rows: int, *, longest_first: bool = False,
                  pad_slack: float | None = None) -> list[list[int]]:
    """Row indices (row i has ``lengths[i]`` tokens) grouped into forwards: in order of length, so the rows of a
    forward pad little (a forward costs rows × its longest row), cut every ``max_rows`` rows and, with
    ``pad_slack``, also where padding to the chunk's longest row would pass ``pad_slack`` × its real tokens.

    Rows of equal length keep their given order. ``longest_first``: the biggest forward runs first, so a
    ``max_rows`` too large for memory fails at once rather than at the end (offline scoring); shortest first
    (the server) answers the short rows of a mixed batch soonest. Every caller that sorts rows by length to batch
    them (:meth:`~softprompt.evaluation.ensemble.Ensemble.score` through
    :func:`~softprompt.evaluation.scoring.score_choices`, the server's engine) uses this one function.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i] if longest_first else lengths[i])
    chunks: list[list[int]] = []
    real = longest = 0
    for i in order:
        n = max(lengths[i], 1)
        cur = chunks[-1] if chunks else None
        if (cur is None or len(cur) >= max_rows
                or (pad_slack is not None and (len(cur) + 1) * max(longest, n) > pad_slack * (real + n))):
            chunks.append([i])
            real = longest = n
        else:
            cur.append(i)
            real += n
            longest = max(longest, n)
    return chunks
