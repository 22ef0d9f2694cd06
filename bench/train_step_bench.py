"""Train-step time and peak memory: softprompt prompt tuning vs PEFT prompt tuning vs full fine-tuning.

Same model, same batch (B rows × T tokens, the last token the target), same optimizer (Adam) for every method.
Each method runs in its own subprocess so peak memories do not mix; the step peak is measured after resetting the
kernel's high-water mark (``/proc/self/clear_refs``), so it excludes the model load. Step time is the median of
``--steps`` steps after ``--warmup``.

    PYTHONPATH=src python bench/train_step_bench.py --threads 2    # writes bench/results/train_step_cpu.json

Methods: ``softprompt`` (the library's loss: LM head on the target columns only), ``peft`` (PEFT PromptTuning,
the model's own loss over full-vocabulary logits), ``full`` (every weight trains, the model's own loss), and the
diagnostic ``softprompt-fullhead`` (our splice, but full-vocabulary logits at every position, as PEFT computes).
``interleaved`` times the three prompt-tuning methods and a no-grad forward of softprompt's batch (for step / forward)
alternating in one process: on a shared machine the load drifts by tens of percent between processes, and
alternation exposes each method to the same load.

    PYTHONPATH=src python bench/train_step_bench.py --threads 1 --methods interleaved --append
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

METHODS = ("softprompt", "peft", "full", "softprompt-fullhead", "interleaved")
RESULTS = Path(__file__).parent / "results" / "train_step_cpu.json"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> bool:
    """Reset VmHWM (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def setup(args: argparse.Namespace) -> dict:
    """Load the model and build the batch: B rows of T random tokens, the last token of each the target."""
    import torch

    torch.set_num_threads(args.threads)
    from softprompt.core.backbone import load_backbone
    from softprompt.core.splice import IGNORE_INDEX
    from softprompt.core.tokenize import Batch
    from softprompt.training.initializers import init_prompt

    t0 = time.perf_counter()
    bb = load_backbone(args.model)
    load_s = time.perf_counter() - t0
    b, t = args.batch, args.tokens
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, min(bb.vocab_size, 20000), (b, t), generator=g)
    mask = torch.ones_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -1] = ids[:, -1]
    return {"bb": bb, "ids": ids, "mask": mask, "labels": labels, "load_s": load_s,
            "batch": Batch(ids, mask, labels, torch.ones(b, dtype=torch.long)),
            "prompt": init_prompt(bb, "sampled-vocab", args.prompt_length, seed=0)}


def build(method: str, d: dict, prompt_length: int) -> tuple[list, Callable]:
    """(trainable parameters, loss function) of one method on the loaded model."""
    import torch

    from softprompt.core.bank import PromptBank
    from softprompt.core.prompted import PromptedModel
    from softprompt.core.splice import IGNORE_INDEX

    bb, ids, mask, labels = d["bb"], d["ids"], d["mask"], d["labels"]
    model = bb.model
    if method in ("softprompt", "softprompt-fullhead"):
        pm = PromptedModel(bb, PromptBank(d["prompt"].unsqueeze(0)))
        zero = torch.zeros(ids.shape[0], dtype=torch.long)
        if method == "softprompt":
            return [pm.bank.weight], lambda: pm.loss(d["batch"], zero)

        def full_head() -> torch.Tensor:  # our splice, but logits at every position, as PEFT computes them
            s = pm.splice_rows(ids, mask, zero, labels)
            logits = model(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask,
                           position_ids=s.position_ids).logits
            return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                                     s.labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
        return [pm.bank.weight], full_head
    if method == "peft":
        import peft

        config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=prompt_length)
        pmodel = peft.get_peft_model(model, config)
        pmodel.eval()
        with torch.no_grad():
            pmodel.prompt_encoder["default"].embedding.weight.copy_(d["prompt"])
        params = [q for q in pmodel.parameters() if q.requires_grad]
        return params, lambda: pmodel(input_ids=ids, attention_mask=mask, labels=labels).loss
    if method == "full":
        for q in model.parameters():
            q.requires_grad_(True)
        return list(model.parameters()), lambda: model(input_ids=ids, attention_mask=mask, labels=labels).loss
    raise SystemExit(f"unknown method {method}")


def step(params: list, optimizer: object, loss_fn: Callable) -> tuple[float, float]:
    t1 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - t1, float(loss.detach())


def run_one(args: argparse.Namespace) -> dict:
    """One method in this process: step times and the step's peak RSS (the load excluded)."""
    import torch

    d = setup(args)
    params, loss_fn = build(args.method, d, args.prompt_length)
    optimizer = torch.optim.Adam(params, lr=1e-4)
    gc.collect()
    rss_before = rss_mb()
    peak_reset = reset_peak()
    times, losses = [], []
    for _ in range(args.warmup + args.steps):
        seconds, loss = step(params, optimizer, loss_fn)
        times.append(seconds)
        losses.append(loss)
    timed = times[args.warmup:]
    return {
        "method": args.method,
        "trainable_params": sum(q.numel() for q in params),
        "step_seconds_median": round(statistics.median(timed), 3),
        "step_seconds": [round(x, 3) for x in timed],
        "rss_after_setup_mb": round(rss_before, 1),
        "step_peak_rss_mb": round(peak_mb(), 1),
        "peak_reset_worked": peak_reset,
        "lifetime_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_seconds": round(d["load_s"], 2),
        "first_loss": round(losses[0], 4),
    }


def run_interleaved(args: argparse.Namespace) -> dict:
    """Timing only: the prompt-tuning methods' steps, and the no-grad forward of softprompt's batch, alternate in
    one process, so machine load hits them alike."""
    import torch

    d = setup(args)
    methods = ("softprompt", "peft", "softprompt-fullhead")
    built = {m: build(m, d, args.prompt_length) for m in methods}
    optimizers = {m: torch.optim.Adam(built[m][0], lr=1e-4) for m in methods}

    def forward() -> tuple[float, float]:  # the same spliced batch and loss, no backward, no update
        t1 = time.perf_counter()
        with torch.no_grad():
            loss = built["softprompt"][1]()
        return time.perf_counter() - t1, float(loss)

    timers = {m: (lambda m=m: step(built[m][0], optimizers[m], built[m][1])) for m in methods} | {"forward": forward}
    times: dict[str, list[float]] = {m: [] for m in timers}
    for r in range(args.warmup + args.steps):
        for m in (list(timers) if r % 2 == 0 else list(timers)[::-1]):
            seconds, _ = timers[m]()
            if r >= args.warmup:
                times[m].append(round(seconds, 3))
    return {"method": "interleaved", "step_seconds": times,
            "step_seconds_median": {m: round(statistics.median(v), 3) for m, v in times.items()}}


def pooled(rs: list[dict]) -> dict:
    """One method's rounds: step times pooled (median, and min — contention only ever adds time), memory max."""
    times = [t for r in rs for t in r["step_seconds"]]
    out = dict(rs[0])
    out.update({"rounds": len(rs), "step_seconds": times, "step_seconds_median": round(statistics.median(times), 3),
                "step_seconds_min": round(min(times), 3),
                "step_peak_rss_mb": max(r["step_peak_rss_mb"] for r in rs),
                "lifetime_peak_rss_mb": max(r["lifetime_peak_rss_mb"] for r in rs)})
    return out


def ratios(results: dict) -> dict:
    """The targets' ratios: softprompt / PEFT step time, softprompt / full fine-tuning peak memory."""
    out: dict[str, float] = {}
    soft = results.get("softprompt")
    if soft and "peft" in results:
        out["time_vs_peft_separate_processes"] = round(
            soft["step_seconds_median"] / results["peft"]["step_seconds_median"], 3)
    if "interleaved" in results:
        t = results["interleaved"]["step_seconds"]
        # Paired: step i of each method ran back to back, under the same load.
        for name in ("softprompt", "softprompt-fullhead"):
            paired = [a / b for a, b in zip(t[name], t["peft"], strict=True)]
            out[f"{name}_vs_peft_interleaved_paired"] = round(statistics.median(paired), 3)
        if "forward" in t:  # step / forward of the same batch: ~2-3 when the backward needs no weight gradients
            paired = [a / b for a, b in zip(t["softprompt"], t["forward"], strict=True)]
            out["softprompt_step_vs_forward_interleaved_paired"] = round(statistics.median(paired), 3)
    if soft and "full" in results:
        out["step_peak_vs_full"] = round(soft["step_peak_rss_mb"] / results["full"]["step_peak_rss_mb"], 3)
        out["lifetime_peak_vs_full"] = round(soft["lifetime_peak_rss_mb"] / results["full"]["lifetime_peak_rss_mb"], 3)
    if soft and "peft" in results:
        out["step_peak_vs_peft"] = round(soft["step_peak_rss_mb"] / results["peft"]["step_peak_rss_mb"], 3)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt-length", type=int, default=20)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--rounds", type=int, default=1, help="fresh processes per method, in alternating order")
    ap.add_argument("--append", action="store_true", help="merge into --out's existing results")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--from-log", type=Path, default=None, help="rebuild the report from a run's printed lines")
    ap.add_argument("--note", default="", help="free text stored in the report (how it was run)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: run one method, print JSON
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    if args.one:
        args.method = args.one
        print(json.dumps(run_interleaved(args) if args.one == "interleaved" else run_one(args)))
        return
    methods = args.methods.split(",")
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    if args.from_log:  # rebuild the report from the JSON lines an earlier run printed (its children's results)
        runs = {}
        for line in args.from_log.read_text().splitlines():
            if line.startswith('{"method"'):
                record = json.loads(line)
                runs.setdefault(record["method"], []).append(record)
    for r in range(0 if args.from_log else args.rounds):
        # Alternate the order each round: on a shared machine, load drifts; interleaving spreads it over methods.
        for method in (methods if r % 2 == 0 else methods[::-1]):
            cmd = [sys.executable, __file__, "--one", method, *argv]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode:
                raise SystemExit(f"{method} failed:\n{done.stderr[-3000:]}")
            runs[method].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[method][-1]), flush=True)
    results = {m: (rs[0] if m == "interleaved" else pooled(rs)) for m, rs in runs.items()}
    if args.append and args.out.is_file():  # add to an earlier run's methods (same settings), newest wins
        results = {**json.loads(args.out.read_text())["results"], **results}
    out = ratios(results)
    from softprompt.experiments.provenance import provenance

    report = {"benchmark": "train_step", "model": args.model, "batch": args.batch, "tokens_per_row": args.tokens,
              "prompt_length": args.prompt_length, "optimizer": "Adam (every method)", "dtype": "float32",
              "steps_timed": args.steps, "warmup": args.warmup, "rounds": args.rounds,
              "torch_threads": args.threads,  # the children's (machine.threads below is this process's)
              **provenance("peft"),  # versions, machine, load_average, git
              "results": results, "ratios": out, "note": args.note,
              "targets": {"softprompt_vs_peft_interleaved_paired": "<= 1.0", "step_peak_vs_full": "<= 0.6",
                          "softprompt_step_vs_forward_interleaved_paired": "<= 2.3"}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
