"""Prompt-tuning step time vs the forward pass of the same batch, and vs PEFT's prompt-tuning step.

Same model, same batch (B rows × T tokens, P virtual tokens), same optimizer (the paper's Adafactor), measured side
by side in one process, interleaved, median of ``--reps`` after ``--warmup``. Prints the ratios and writes JSON:

    python bench/step_bench.py --model smollm2-135m --threads 2 --out bench/results/step_cpu.json

Step / forward is bounded below by ~2 for a backward that needs no weight gradients (only activation gradients
flow back to the prompt); a full-vocabulary LM head on every position pushes it up, which is why softprompt scores
only the target columns (``logits_to_keep``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from softprompt.backbone import load_backbone
from softprompt.bank import PromptBank
from softprompt.batching import Batch
from softprompt.init import init_prompt
from softprompt.prompted import PromptedModel
from softprompt.splice import IGNORE_INDEX
from softprompt.trainer import TrainConfig, make_optimizer


def fixed_batch(vocab: int, rows: int, tokens: int, target_id: int, seed: int = 0) -> Batch:
    """B rows of exactly T tokens (random ids), the last one the target."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, vocab - 1, (rows, tokens), generator=g)
    ids[:, -1] = target_id
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -1] = target_id
    return Batch(ids, torch.ones_like(ids), labels, torch.ones(rows, dtype=torch.long))


def median_time(fn: Callable[[], None], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt-length", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-peft", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    backbone = load_backbone(args.model)
    target = backbone.tokenizer(" positive", add_special_tokens=False)["input_ids"][0]
    batch = fixed_batch(backbone.vocab_size, args.batch, args.tokens, target)
    prompt = init_prompt(backbone, "sampled-vocab", args.prompt_length)
    pm = PromptedModel(backbone, PromptBank(prompt.unsqueeze(0)))
    index = torch.zeros(args.batch, dtype=torch.long)
    opt = make_optimizer(TrainConfig(), [pm.bank.weight])

    def forward() -> None:
        with torch.no_grad():
            pm.loss(batch, index)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        pm.loss(batch, index).backward()
        opt.step()

    runs: dict[str, Callable[[], None]] = {"forward": forward, "softprompt_step": step}
    if not args.no_peft:
        from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

        peft_model = get_peft_model(backbone.model, PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=args.prompt_length, prompt_tuning_init=PromptTuningInit.RANDOM))
        with torch.no_grad():
            peft_model.prompt_encoder["default"].embedding.weight.copy_(prompt)
        peft_opt = make_optimizer(TrainConfig(), [p for p in peft_model.parameters() if p.requires_grad])

        def peft_step() -> None:
            peft_opt.zero_grad(set_to_none=True)
            out = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
            out.loss.backward()
            peft_opt.step()

        runs["peft_step"] = peft_step
    for fn in runs.values():
        for _ in range(args.warmup):
            fn()
    # Interleave the measurements so a change in machine load hits every method alike.
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.reps):
        for name, fn in runs.items():
            samples[name].append(median_time(fn, 1))
    sec = {k: statistics.median(v) for k, v in samples.items()}
    result = {
        "bench": "prompt-tuning step time",
        "model": args.model, "batch": args.batch, "tokens": args.tokens, "prompt_length": args.prompt_length,
        "optimizer": "adafactor (paper recipe)", "reps": args.reps, "warmup": args.warmup,
        "seconds": {k: round(v, 4) for k, v in sec.items()},
        "samples": {k: [round(x, 4) for x in v] for k, v in samples.items()},
        "step_over_forward": round(sec["softprompt_step"] / sec["forward"], 3),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "command": "python bench/step_bench.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False)),
    }
    if "peft_step" in sec:
        import peft

        result["step_over_peft"] = round(sec["softprompt_step"] / sec["peft_step"], 3)
        result["versions"]["peft"] = peft.__version__
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
