"""LM adaptation (paper section 3.3): continue training a span-corruption-pretrained encoder-decoder (T5) with the
prefix-LM objective, so that it learns to *continue* text — which makes prompt tuning on it work far better.

Plain text is tokenized once and cut into chunks of ``chunk_tokens``; each training row splits a chunk at a random
point: the encoder reads the prefix, the decoder predicts the suffix (both end in EOS, as T5 targets do). Decoder-only
models are refused: their pretraining objective already is language modelling.

It runs through the one training loop (:mod:`softprompt.training.loop`): seeded batches, the optimizer factory, the
loss of a :class:`PromptedModel` with a zero-length prompt (the bare model), exact gradient accumulation, logs and,
with an ``out`` folder ``DIR``, a resume checkpoint ``DIR.ckpt.safetensors`` (``resume=True``, ``--resume``) beside
``DIR.metrics.jsonl`` and ``DIR.tb/``. It trains what model tuning trains (every weight of a copy:
:func:`softprompt.experiments.baselines.model_tuning.whole_model`); only its rows differ. Defaults follow T5's own
fine-tuning recipe: Adafactor, constant lr 1e-3 (the loop's defaults).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from softprompt.core.backbone import Backbone
from softprompt.core.splice import IGNORE_INDEX
from softprompt.core.tokenize import Batch
from softprompt.experiments.baselines.model_tuning import finish, save_model_folder, whole_model
from softprompt.training.loop import LoopConfig, RunFiles, Trainable, start_run, train_loop


class NotEncoderDecoderError(ValueError):
    """LM adaptation asked of a model that is already a language model."""


@dataclass
class AdaptConfig(LoopConfig):
    """LM-adaptation settings: the loop's (its optimizer defaults are T5's recipe) and the chunk length."""

    steps: int = 100
    batch_size: int = 8
    save_every: int = 50
    """steps between resume checkpoints: the weights and the optimizer's state (about 1× the model with Adafactor,
    whose moments are factored; 3× with AdamW)"""
    chunk_tokens: int = 128
    """tokens per text chunk (prefix + suffix)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunk_tokens < 2:
            raise ValueError(f"chunk_tokens must be >= 2 (a prefix and a suffix), got {self.chunk_tokens}")


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


def prefix_lm_batch(chunks: list[list[int]], split_seed: int | torch.Generator, eos: int, pad: int) -> Batch:
    """Split each chunk at a seeded random point in 1..len-1: encoder ids [B, T] = prefix + EOS, decoder labels
    [B, Lt] = suffix + EOS (IGNORE_INDEX padding). ``split_seed``: a seed, or a generator to go on drawing from."""
    g = split_seed if isinstance(split_seed, torch.Generator) else torch.Generator().manual_seed(split_seed)
    inputs, targets = [], []
    for c in chunks:
        cut = int(torch.randint(1, len(c), (1,), generator=g))
        inputs.append(torch.tensor([*c[:cut], eos]))
        targets.append(torch.tensor([*c[cut:], eos]))
    ids = pad_sequence(inputs, batch_first=True, padding_value=pad)
    mask = pad_sequence([torch.ones_like(t) for t in inputs], batch_first=True, padding_value=0)
    labels = pad_sequence(targets, batch_first=True, padding_value=IGNORE_INDEX)
    return Batch(ids, mask, labels, torch.tensor([len(t) for t in targets]))


def chunk_batches(chunks: list[list[int]], seed: int, eos: int, pad: int
                  ) -> Callable[[int, list[list[int]]], list[Batch]]:
    """The loop's batch builder over text chunks: prefix-LM rows whose split points are a pure function of (seed,
    step), like the rows. One generator per step draws them in row order across the step's micro-batches, so
    ``grad_accum`` 2 cuts the rows as one batch of twice the size does. (In one process only: a process's block
    of rows would draw other splits, and LM adaptation is not run data-parallel.)"""

    def build(step: int, micro_rows: list[list[int]]) -> list[Batch]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return [prefix_lm_batch([chunks[i] for i in rows], g, eos, pad) for rows in micro_rows]

    return build


def adapt_lm(backbone: Backbone, text: str, config: AdaptConfig, out: Path | None = None, *, resume: bool = False,
             progress: bool = True) -> AdaptResult:
    """Prefix-LM training of a copy of an encoder-decoder ``backbone`` on ``text``; the adapted model is written to
    ``out`` (a model folder) when given, with its checkpoint and logs beside it (``resume`` continues from the
    checkpoint). The caller's backbone is not modified."""
    require_encoder_decoder(backbone.is_encoder_decoder, backbone.name)
    tok = backbone.tokenizer
    if tok.eos_token_id is None:
        raise ValueError(f"{backbone.name}: the tokenizer has no EOS token to end prefix and suffix with")
    chunks = text_chunks(tok, text, config.chunk_tokens)
    if not chunks:
        raise ValueError("the text is too short: no chunk of at least 2 tokens")
    files = RunFiles.named(Path(out)) if out is not None else None
    start = start_run(config, files, resume)
    pm, params = whole_model(backbone)
    job = Trainable(pm, params, len(chunks), chunk_batches(chunks, config.seed, int(tok.eos_token_id),
                                                           int(tok.pad_token_id)),
                    snapshot=dict, lr=float(config.lr), desc="adapt")  # nothing selects: no snapshot is taken
    t0 = time.perf_counter()
    done = train_loop(job, config, files, start=start, progress=progress)
    finish(params, None)
    losses = done.state.losses
    model = pm.backbone
    if out is not None:
        save_model_folder(model, Path(out), {
            "method": "lm-adaptation", "objective": "prefix-lm", "base_model": backbone.name,
            "config": asdict(config), "chunks": len(chunks), "loss_first": losses[0], "loss_last": losses[-1],
            "seconds": round(time.perf_counter() - t0, 2)}, info_name="adaptation.json")
    return AdaptResult(model, losses, len(chunks))
