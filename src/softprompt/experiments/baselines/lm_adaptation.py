"""LM adaptation (paper section 3.3): continue training a span-corruption-pretrained encoder-decoder (T5) with the
prefix-LM objective, so that it learns to *continue* text — which makes prompt tuning on it work far better.

Plain text is tokenized once and cut into chunks of ``chunk_tokens``; each training row splits a chunk at a random
point: the encoder reads the prefix, the decoder predicts the suffix (both end in EOS, as T5 targets do). Decoder-only
models are refused: their pretraining objective already is language modelling.

Everything runs through the shared pieces: seeded batches (:func:`softprompt.training.loop.batch_indices`), the
optimizer factory, and the loss of a :class:`PromptedModel` with a zero-length prompt (the bare model). Defaults follow
T5's own fine-tuning recipe: Adafactor, constant lr 1e-3.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from softprompt.core.backbone import Backbone
from softprompt.core.bank import PromptBank
from softprompt.core.prompted import PromptedModel
from softprompt.core.splice import IGNORE_INDEX
from softprompt.core.tokenize import Batch
from softprompt.experiments.baselines.model_tuning import save_model_folder, unfrozen_copy
from softprompt.training.loop import TrainConfig, batch_indices, make_optimizer
from softprompt.training.steploss import backward_step


class NotEncoderDecoderError(ValueError):
    """LM adaptation asked of a model that is already a language model."""


@dataclass
class AdaptConfig:
    """LM-adaptation settings."""

    steps: int = 100
    batch_size: int = 8
    chunk_tokens: int = 128
    """tokens per text chunk (prefix + suffix)"""
    optimizer: Literal["adafactor", "adam", "adamw"] = "adafactor"
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.chunk_tokens < 2:
            raise ValueError(f"chunk_tokens must be >= 2 (a prefix and a suffix), got {self.chunk_tokens}")
        self.as_train_config()

    def as_train_config(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, prompt_length=0, optimizer=self.optimizer,
                           lr=self.lr, weight_decay=self.weight_decay, seed=self.seed)


@dataclass
class AdaptResult:
    backbone: Backbone
    losses: list[float] = field(default_factory=list)
    chunks: int = 0


def require_encoder_decoder(is_encoder_decoder: bool, name: str) -> None:
    if not is_encoder_decoder:
        raise NotEncoderDecoderError(
            f"{name} is a decoder-only model: it was pretrained as a language model already, so LM adaptation does "
            "not apply (it is for span-corruption encoder-decoders such as T5); prompt-tune it directly")


def text_chunks(tokenizer: Any, text: str, chunk_tokens: int) -> list[list[int]]:
    """Token ids of ``text`` (no special tokens) cut into chunks of ``chunk_tokens``; a last chunk too short to
    split (< 2 tokens) is dropped."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    chunks = [ids[i:i + chunk_tokens] for i in range(0, len(ids), chunk_tokens)]
    return [c for c in chunks if len(c) >= 2]


def prefix_lm_batch(chunks: list[list[int]], split_seed: int, eos: int, pad: int) -> Batch:
    """Split each chunk at a seeded random point in 1..len-1: encoder ids [B, T] = prefix + EOS, decoder labels
    [B, Lt] = suffix + EOS (IGNORE_INDEX padding)."""
    g = torch.Generator().manual_seed(split_seed)
    inputs, targets = [], []
    for c in chunks:
        cut = int(torch.randint(1, len(c), (1,), generator=g))
        inputs.append(torch.tensor([*c[:cut], eos]))
        targets.append(torch.tensor([*c[cut:], eos]))
    ids = pad_sequence(inputs, batch_first=True, padding_value=pad)
    mask = pad_sequence([torch.ones_like(t) for t in inputs], batch_first=True, padding_value=0)
    labels = pad_sequence(targets, batch_first=True, padding_value=IGNORE_INDEX)
    return Batch(ids, mask, labels, torch.tensor([len(t) for t in targets]))


def adapt_lm(backbone: Backbone, text: str, config: AdaptConfig, out: Path | None = None, *,
             progress: bool = True) -> AdaptResult:
    """Prefix-LM training of a copy of an encoder-decoder ``backbone`` on ``text``; the adapted model is written to
    ``out`` (a model folder) when given. The caller's backbone is not modified."""
    require_encoder_decoder(backbone.is_encoder_decoder, backbone.name)
    tok = backbone.tokenizer
    if tok.eos_token_id is None:
        raise ValueError(f"{backbone.name}: the tokenizer has no EOS token to end prefix and suffix with")
    chunks = text_chunks(tok, text, config.chunk_tokens)
    if not chunks:
        raise ValueError("the text is too short: no chunk of at least 2 tokens")
    tc = config.as_train_config()
    torch.manual_seed(config.seed)
    model = unfrozen_copy(backbone)
    pm = PromptedModel(model, PromptBank(torch.zeros(1, 0, model.hidden_size)))
    optimizer = make_optimizer(tc, list(model.model.parameters()))
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in tqdm(range(config.steps), desc="adapt", unit="step", disable=not progress):
        rows = [chunks[i] for i in batch_indices(len(chunks), config.seed, step, 0, tc)]
        # The split points are a pure function of (seed, step), like the batches.
        batch = prefix_lm_batch(rows, config.seed * 1_000_003 + step, int(tok.eos_token_id), int(tok.pad_token_id))
        optimizer.zero_grad(set_to_none=True)
        losses.append(backward_step(pm, [batch]))
        optimizer.step()
    for p in model.model.parameters():
        p.requires_grad_(False)
    if out is not None:
        save_model_folder(model, Path(out), {
            "method": "lm-adaptation", "objective": "prefix-lm", "base_model": backbone.name,
            "config": asdict(config), "chunks": len(chunks), "loss_first": losses[0], "loss_last": losses[-1],
            "seconds": round(time.perf_counter() - t0, 2)}, info_name="adaptation.json")
    return AdaptResult(model, losses, len(chunks))
