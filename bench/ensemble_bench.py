"""Wall time of one batched ensemble pass over N prompts vs N sequential single-prompt passes, same model and inputs.

    PYTHONPATH=src python bench/ensemble_bench.py --threads 2 --examples 40

Variants (every one scores the same E examples × K choices × N prompts, and is checked against ``sequential``):

- ``sequential``: N passes of :func:`score_choices` with a one-prompt bank and K rows per example (the plain
  single-prompt pass, no tricks).
- ``batched_naive``: one :func:`score_choices` call over all N prompts, K rows per example, example order.
- ``batched_sorted``: :meth:`Ensemble.score` with rows in length order (less padding), K rows per example.
- ``batched``: :meth:`Ensemble.score` as shipped: length order + one row per (example, prompt) for one-token choices.
- ``sequential_sorted_shared``: the same two tricks applied to each prompt alone, N passes (what ``softprompt eval``
  does per prompt) — it separates what the batching itself buys from what the tricks buy.

Writes ``bench/results/ensemble_cpu.json`` (settings, seconds, ratios, padded-token counts, and the provenance record:
versions, machine, load averages before and after, git revision).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from softprompt.core.backbone import load_backbone
from softprompt.core.bank import PromptBank
from softprompt.core.prompted import PromptedModel
from softprompt.core.tokenize import encode_inputs
from softprompt.evaluation.ensemble import Ensemble
from softprompt.evaluation.scoring import row_chunks, score_choices, single_token_choices
from softprompt.experiments.provenance import load_average, provenance
from softprompt.tasks import get_task
from softprompt.training.initializers import init_prompt

ROOT = Path(__file__).resolve().parent


def padded_tokens(lengths: list[int], batch_size: int, *, sort: bool = False) -> int:
    """Token slots the model computes when rows of these lengths are cut into chunks, each padded to its longest:
    in the given order, or (``sort``) longest first as :meth:`Ensemble.score` lays them out."""
    chunks = row_chunks(range(len(lengths)), batch_size, lengths if sort else None)
    return sum(max(lengths[i] for i in c) * len(c) for c in chunks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--examples", type=int, default=40, help="E validation examples")
    parser.add_argument("--prompts", type=int, default=5, help="N prompts")
    parser.add_argument("--prompt-length", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32, help="rows per forward, the same for every variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per variant (the minimum is kept)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "ensemble_cpu.json")
    parser.add_argument("--note", default="", help="how the machine was used meanwhile (stored with the results)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    backbone = load_backbone(args.model)
    task = get_task(args.task)
    examples = task.examples("validation", args.data_dir, limit=args.examples)
    # Prompt content does not change the cost; sampled-vocabulary prompts keep the bench self-contained.
    prompts = [init_prompt(backbone, "sampled-vocab", args.prompt_length, seed=s) for s in range(1, args.prompts + 1)]
    ensemble = Ensemble(backbone, prompts)
    singles = [Ensemble(backbone, [p]) for p in prompts]
    bs = args.batch_size

    def sequential() -> torch.Tensor:
        return torch.cat([score_choices(PromptedModel(backbone, PromptBank(p.unsqueeze(0))), examples, batch_size=bs,
                                        share_prefix=False) for p in prompts])

    variants: dict[str, Callable[[], torch.Tensor]] = {
        "sequential": sequential,
        "batched_naive": lambda: score_choices(ensemble.model, examples, range(args.prompts), batch_size=bs,
                                               share_prefix=False),
        "batched_sorted": lambda: ensemble.score(examples, batch_size=bs, share_prefix=False),
        "batched": lambda: ensemble.score(examples, batch_size=bs),
        "sequential_sorted_shared": lambda: torch.cat([s.score(examples, batch_size=bs) for s in singles]),
    }
    # Row lengths (prompt + input + one-token target) in each variant's order, for the padding count.
    n_in = [len(ids) for ids in encode_inputs(backbone.tokenizer, [e.input for e in examples], 256)]
    k = [len(e.choices or ()) for e in examples]
    by_example = [args.prompt_length + n_in[e] + 1 for e in range(len(examples)) for _ in range(k[e])]
    # One row per (example, prompt) only where every choice is one token (see Ensemble.score).
    shared = single_token_choices(ensemble.model, examples) is not None
    shared_rows = [args.prompt_length + n_in[e] for e in range(len(examples))] if shared else by_example
    padding = {
        "sequential": args.prompts * padded_tokens(by_example, bs),
        "batched_naive": padded_tokens(by_example * args.prompts, bs),
        "batched_sorted": padded_tokens(by_example * args.prompts, bs, sort=True),
        "batched": padded_tokens(shared_rows * args.prompts, bs, sort=True),
        "sequential_sorted_shared": args.prompts * padded_tokens(shared_rows, bs, sort=True),
    }
    real_tokens = args.prompts * sum(by_example)

    load_before = load_average()
    seconds: dict[str, float] = {}
    reference = None
    max_diff: dict[str, float] = {}
    # Warm-up (allocator, first-call costs): a small call, as the whole workload once more is too dear on this CPU.
    score_choices(ensemble.model, examples[:2], range(args.prompts), batch_size=bs)
    for _ in range(args.repeats):
        for name, fn in variants.items():  # interleaved, so a burst of load elsewhere hits every variant alike
            t0 = time.perf_counter()
            scores = fn()
            seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - t0)
            reference = scores if reference is None else reference
            max_diff[name] = float((scores - reference).abs().max())
            print(f"{name:<26} {seconds[name]:8.2f} s  max |Δscore| {max_diff[name]:.2e}", file=sys.stderr)
    result = {
        "bench": "ensemble_cpu",
        "model": args.model,
        "note": args.note,
        "load_average_before": load_before,
        **provenance(),  # versions, machine (threads: torch's), load_average (after the runs), git
        "settings": {"task": args.task, "examples": len(examples), "prompts": args.prompts,
                     "prompt_length": args.prompt_length, "batch_size": bs, "repeats": args.repeats,
                     "choices_per_example": sorted(set(k)), "one_token_choices_share_a_row": shared},
        "seconds": {k_: round(v, 3) for k_, v in seconds.items()},
        "ratio_to_sequential": {k_: round(v / seconds["sequential"], 3) for k_, v in seconds.items()},
        "token_slots_computed": padding,
        "token_slots_real": real_tokens,
        "max_abs_score_diff_vs_sequential": max_diff,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"batched / sequential = {result['ratio_to_sequential']['batched']:.3f} "
          f"(naive one-call batching: {result['ratio_to_sequential']['batched_naive']:.3f}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
