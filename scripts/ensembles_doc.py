"""Write docs/ensembles.md from the JSON that the runs produced (nothing in the tables is typed by hand).

    PYTHONPATH=src python scripts/ensembles_doc.py            # reads docs/data/ensembles/, writes docs/ensembles.md

Inputs in ``--data`` (see docs/ensembles.md, "How these numbers were made"):
``ensemble_<task>.json`` (``softprompt ensemble --out``), ``train_<task>.jsonl`` (``softprompt train --json``),
``neighbors.json`` (last line of ``softprompt inspect --neighbors K --json``), ``reading.md`` and
``ensemble_reading.md`` (the prose readings of the tables, written by a person after looking at them), ``how.md``
(the commands and settings of the runs), and ``bench/results/ensemble_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from softprompt.experiments.ensemblepage import ensemble_table, neighbor_table  # the results page's tables too
from softprompt.experiments.records import pct

ROOT = Path(__file__).resolve().parents[1]


def train_lines(data: Path, tasks: list[str]) -> list[str]:
    out = []
    for task in tasks:
        runs = [json.loads(line) for line in (data / f"train_{task}.jsonl").read_text().splitlines() if line.strip()]
        # Runs of this version record best_selection_* (the slice held out from train); older runs best_val_*, a
        # score on the first --eval-limit validation examples.
        metric = next(k for k in runs[0] if k.startswith(("best_selection_", "best_val_")))
        name, where = (metric.removeprefix("best_selection_"), "the selection slice held out from train") \
            if metric.startswith("best_selection_") else \
            (metric.removeprefix("best_val_"), "the first validation examples (an older run)")
        vals = ", ".join(pct(r[metric]) for r in runs)
        secs = sum(r["seconds"] for r in runs)
        out.append(f"- {task}: {runs[0]['steps']} steps per seed; {name} of the kept step on {where}: {vals}; "
                   f"{secs / 60:.1f} min of training for the 5 seeds.")
    return out


def speed_reading(bench: dict) -> list[str]:
    """The paragraph under the speed table, with its numbers read from the bench JSON."""
    slots, ratio = bench["token_slots_computed"], bench["ratio_to_sequential"]
    seq = slots["sequential"]
    out = [f"The shipped pass (`batched`) computes {slots['batched'] / seq:.0%} of `sequential`'s token slots "
           f"(length order plus one row per (example, prompt) for one-token choices) and took "
           f"{ratio['batched']:.2f} × its time; `batched_sorted` computes {slots['batched_sorted'] / seq:.0%} and took "
           f"{ratio['batched_sorted']:.2f} ×; `batched_naive`, the same slots as `sequential` in one call, "
           f"{ratio['batched_naive']:.2f} ×."]
    if "sequential_sorted_shared" in ratio:
        share, r = slots["sequential_sorted_shared"] / seq, ratio["sequential_sorted_shared"]
        out.append(f"`sequential_sorted_shared` applies the same two tricks one prompt at a time ({share:.0%} of the "
                   f"slots, {r:.2f} ×), as `softprompt eval` does for a single prompt: on this CPU the saving is the "
                   f"tricks' (fewer, less padded rows); the one pass over all N prompts takes "
                   f"{ratio['batched'] / r:.2f} × the time of those N passes, because a CPU forward costs what its "
                   "tokens cost. One pass "
                   "pays off where a forward has idle parallel capacity (a GPU), which this machine cannot measure.")
    if abs(ratio["batched"] - slots["batched"] / seq) > 0.2:
        out.append("Time did not follow the token count in this run: fewer slots did not make the forwards "
                   "proportionally cheaper, so on this CPU and model size something other than the token matrix "
                   "products (per-forward overheads, how differently shaped batches run) dominates. Why is not yet "
                   "understood; until it is, batching an ensemble here saves no time, though it costs none.")
    note = conditions(bench)["note"]
    if note:  # the run's own account of the machine (a shared machine makes the ratios noisy)
        out.append(f"Machine: {note.rstrip('.')}.")
    return [" ".join(out)]


def conditions(bench: dict) -> dict:
    """Threads, cores, load averages before/after and the note of a bench run, from either record layout: the
    provenance record (``machine.threads``, ``load_average_before`` / ``load_average``, ``note``) or the one runs
    before it wrote (all inside ``machine``)."""
    m = bench["machine"]
    if "load_average_before" in m:
        return {"threads": m["torch_threads"], "cpus": m["cpu_count"], "load_before": m["load_average_before"],
                "load_after": m["load_average_after"], "note": m.get("note")}
    return {"threads": m["threads"], "cpus": m["logical_cpus"], "load_before": bench["load_average_before"],
            "load_after": bench["load_average"], "note": bench.get("note")}


def earlier_runs_note(paths: list[Path]) -> list[str]:
    """One sentence per earlier bench run whose JSON is kept for the record."""
    out = []
    for path in paths:
        if not path.is_file():
            continue
        first = json.loads(path.read_text())
        r, m = first["ratio_to_sequential"], conditions(first)
        out += [f"An earlier run (`{path.name}`: E = {first['settings']['examples']}, "
                f"{first['settings'].get('repeats', 1)} repeat(s)) measured "
                + ", ".join(f"{k} {v:.2f}" for k, v in r.items())
                + f" with load average {m['load_before'][0]} before and {m['load_after'][0]} after, "
                f"on cores shared with other jobs ({m.get('note') or 'no note'}): load that changes between variants "
                "moves these ratios, so it is kept for the record, not as the result.", ""]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "docs" / "data" / "ensembles")
    parser.add_argument("--bench", type=Path, default=ROOT / "bench" / "results" / "ensemble_cpu.json")
    parser.add_argument("--tasks", default="sst2,copa")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "ensembles.md")
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    results = [json.loads((args.data / f"ensemble_{t}.json").read_text()) for t in tasks]
    nb = json.loads((args.data / "neighbors.json").read_text())
    drift_path = args.data / "drift.json"
    drift = json.loads(drift_path.read_text()) if drift_path.is_file() else None
    bench = json.loads(args.bench.read_text())
    reading = (args.data / "reading.md").read_text().strip()
    b, run = bench["settings"], conditions(bench)

    doc = [
        "# Prompt ensembles and what a prompt is close to",
        "",
        "_Generated by `scripts/ensembles_doc.py` from the JSON in `docs/data/ensembles/` and "
        "`bench/results/ensemble_cpu.json`; do not edit by hand._",
        "",
        "Notation: N prompts, E examples, K choices, P prompt length, H hidden size, V vocabulary.",
        "",
        "## Use",
        "",
        "```",
        "softprompt train --model smollm2-135m --task sst2 --out runs/sst2.safetensors --seeds 1,2,3,4,5",
        "softprompt ensemble --model smollm2-135m --task sst2 --prompt runs/sst2-seed1.safetensors \\",
        "    --prompt runs/sst2-seed2.safetensors ... --limit 200 [--json] [--out result.json]",
        "softprompt inspect runs/sst2-seed1.safetensors --neighbors 5 [--compare runs/sst2-seed2.safetensors] "
        "[--report nb.png|nb.html]",
        "```",
        "",
        "Library: `softprompt.Ensemble(backbone, [files or [P, H] tensors]).evaluate(task, examples)`; "
        "`softprompt.evaluation.neighbors.nearest_tokens(prompt, backbone.embedding_matrix(), tokenizer, k)`.",
        "",
        "## How the ensemble runs",
        "",
        "The N prompts go into one `PromptBank` `[N, P, H]`; every row of a forward pass carries its prompt index "
        "and goes through the one splice. The rows of all N prompts are laid out longest first (little padding per "
        "chunk; `softprompt.core.tokenize.length_chunks`, the server's row layout too), and "
        "when every choice is a single token (SST-2's ' positive'/' negative', RTE's ' yes'/' no') the K choices "
        "of an (example, prompt) share one row: they differ only in the token being scored, whose log-probability "
        "comes from the logits at the end of the shared prefix. Other choice sets use `score_choices`' K rows.",
        "",
        "Combinations: each prompt alone; the **average** of the single-prompt metrics; the **best** single prompt "
        "(picked on the same examples, as in the paper's Table 3: an optimistic oracle); **majority vote** (each "
        "prompt votes its top choice; ties go to the higher mean probability, then the lower choice index); "
        "**mean probability** (softmax over choices per prompt, mean over prompts, top choice; ties: lower index). "
        "Generation tasks: majority vote over the generated strings (ties: the string of the lowest-numbered "
        "prompt), no mean probability.",
        "",
        "## Ensembles of 5 briefly trained prompts, smollm2-135m",
        "",
        *ensemble_table(results),
        "",
        *([(args.data / "ensemble_reading.md").read_text().strip(), ""]
          if (args.data / "ensemble_reading.md").is_file() else []),
        "How these numbers were made:",
        "",
        *(args.data / "how.md").read_text().strip().splitlines(),
        *train_lines(args.data, tasks),
        "",
        "## Speed: one batched pass vs N passes",
        "",
        f"`bench/ensemble_bench.py`, {bench['model']}, {b['task']}, E = {b['examples']}, N = {b['prompts']}, "
        f"P = {b['prompt_length']}, {b['batch_size']} rows per forward, best of {b['repeats']} interleaved runs, "
        f"torch threads {run['threads']} of {run['cpus']} cores (load average before/after "
        f"{run['load_before'][0]} / {run['load_after'][0]}).",
        "",
        "| variant | seconds | / sequential | token slots computed |",
        "|---|---|---|---|",
        *[f"| {name} | {bench['seconds'][name]:.1f} | {bench['ratio_to_sequential'][name]:.2f} | "
          f"{bench['token_slots_computed'][name]} |" for name in bench["seconds"]],
        "",
        f"Real (unpadded) token slots: {bench['token_slots_real']}. Largest score difference from `sequential`: "
        f"{max(bench['max_abs_score_diff_vs_sequential'].values()):.1e} (float rounding from other batch "
        "compositions).",
        "",
        *speed_reading(bench),
        "",
        *earlier_runs_note([args.bench.with_name(f"ensemble_cpu_{n}.json") for n in ("shared_run", "first_run")]),
        f"## Nearest vocabulary tokens of one trained prompt ({nb['file'].split('/')[-1]})",
        "",
        f"Top-{nb['k']} tokens of the model's input embedding matrix by cosine similarity, per prompt position "
        f"(mean token-embedding norm {nb['vocab_norm_mean']:.2f} for comparison with the prompt norms). "
        + ("The last three columns (`scripts/prompt_drift.py`) re-create the prompt's initialisation from its file's "
           "train_config: the token each position started as, that token's rank among the trained vector's nearest "
           "tokens now, and the cosine between the initial and trained vectors. " if drift else "")
        + "Verbalizer words among the neighbours: "
        + "; ".join(f"`{w!r}` at positions {p or 'none'}" for w, p in nb["verbalizer_hits"].items()) + ".",
        "",
        *neighbor_table(nb, drift),
        "",
    ]
    if "similarity" in nb:
        names = [n.split("/")[-1].removesuffix(".safetensors") for n in nb["similarity"]["names"]]
        doc += ["Prompt-to-prompt similarity (mean cosine over aligned positions):", "",
                "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        doc += [f"| {n} | " + " | ".join(f"{v:.2f}" for v in row) + " |"
                for n, row in zip(names, nb["similarity"]["matrix"], strict=True)]
        doc.append("")
    doc += ["![nearest-neighbour heat map](data/ensembles/neighbors.png)", "", "### Reading", "", reading, ""]
    args.out.write_text("\n".join(doc))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
