"""``softprompt adapt``: LM adaptation of an encoder-decoder (T5) with the prefix-LM objective on plain text."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from softprompt.cli.common import UsageError, add_model, backbone_from_args, emit
from softprompt.core.builtin_models import BUILTIN_MODELS
from softprompt.experiments.baselines.lm_adaptation import AdaptConfig, adapt_lm, require_encoder_decoder


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="LM-adapt a T5-style model on plain text (prefix LM); writes a model folder")
    add_model(p, default=None)
    p.add_argument("--text", type=Path, required=True, help="plain-text file (UTF-8)")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    d = AdaptConfig()
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per step")
    p.add_argument("--chunk-tokens", type=int, default=d.chunk_tokens, help="tokens per chunk (prefix + suffix)")
    p.add_argument("--optimizer", choices=["adafactor", "adam", "adamw"], default=d.optimizer)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--save-every", type=int, default=d.save_every,
                   help="steps between resume checkpoints (OUT.ckpt.safetensors: the weights and the optimizer's "
                        "state)")
    p.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint if there is one")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _refuse_early(name: str) -> None:
    """Refuse a decoder-only model before loading its weights, where its config says so cheaply."""
    if name in BUILTIN_MODELS:
        require_encoder_decoder(False, name)  # every built-in model is decoder-only
    if Path(name).is_dir() and (Path(name) / "config.json").is_file():
        from transformers import AutoConfig

        require_encoder_decoder(bool(AutoConfig.from_pretrained(name).is_encoder_decoder), name)


def run(args: argparse.Namespace) -> int:
    if not args.text.is_file():
        raise UsageError(f"--text file not found: {args.text}")
    config = AdaptConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                         chunk_tokens=args.chunk_tokens, optimizer=args.optimizer, lr=args.lr,
                         weight_decay=args.weight_decay, seed=args.seed, save_every=args.save_every)
    _refuse_early(args.model)
    text = args.text.read_text(encoding="utf-8")
    backbone = backbone_from_args(args)
    t0 = time.perf_counter()
    result = adapt_lm(backbone, text, config, args.out, resume=args.resume, progress=not args.no_progress)
    emit({"out": str(args.out), "model": args.model, "steps": config.steps, "chunks": result.chunks,
          "loss_first": round(result.losses[0], 4), "loss_last": round(result.losses[-1], 4),
          "seconds": round(time.perf_counter() - t0, 2)}, args.json)
    return 0
