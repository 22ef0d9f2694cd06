"""``softprompt inspect``: what a prompt file says about itself, and (``--neighbors K``) what it is close to."""

from __future__ import annotations

import argparse
from typing import Any

from softprompt.cli.common import UsageError, emit
from softprompt.tasks.selection import selected_on


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show a prompt file's metadata (exit 2 on a bad file); --neighbors K: "
                                       "nearest vocabulary tokens of each prompt position")
    p.add_argument("file", help="prompt file (.safetensors)")
    p.add_argument("--json", action="store_true", help="the full metadata as one JSON line")
    p.add_argument("--neighbors", type=int, default=None, metavar="K",
                   help="print the top-K vocabulary tokens (cosine similarity) of every prompt position")
    p.add_argument("--model", default=None, help="model whose vocabulary to search (default: the prompt's base "
                                                 "model); --neighbors only")
    p.add_argument("--compare", action="append", default=[], metavar="FILE",
                   help="other prompt files: prompt-to-prompt cosine similarity (--neighbors only; repeatable)")
    p.add_argument("--allow-other-model", action="store_true",
                   help="--neighbors: search a --model whose weights differ from the prompt's model (a warning "
                        "instead of an error)")
    p.add_argument("--report", default=None, metavar="OUT.{png,html}", help="also write a report to look at")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from softprompt.core.promptfile import load_prompt

    if args.neighbors is not None:
        return run_neighbors(args)
    if args.compare or args.report:
        raise UsageError("--compare and --report need --neighbors K")
    pf = load_prompt(args.file)
    meta = pf.meta.to_json()  # the fields its format version holds, as stored
    # Thousands of probe sums say nothing to a reader: their count stands in for them.
    for key in ("model_probe", "model_magnitude", "embedding_probe"):
        if key in meta:
            meta[key] = f"{len(meta[key])} sums"
    meta["prompt_norm_mean"] = round(float(pf.prompt.norm(dim=-1).mean()), 4) if pf.prompt.numel() else 0.0
    if args.json:
        emit({"file": args.file, **meta}, True)
    else:
        for line in summary(args.file, meta):
            print(line)
    return 0


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary(path: str, meta: dict[str, Any]) -> list[str]:
    """A few aligned ``label  value`` lines a reader takes in at a glance; ``meta`` as ``inspect --json`` has it."""
    config, metrics, selection = meta.get("train_config") or {}, meta.get("metrics") or {}, meta.get("selection") or {}
    lr = metrics.get("lr", config.get("lr", "?"))
    lr_text = _number(lr) + (" (auto)" if config.get("lr") == "auto" and lr != "auto" else "")
    split = selected_on(selection, metrics, config)
    if selection:
        where = f"{split} slice, {selection.get('examples', selection.get('size', '?'))} examples (seed " \
                f"{selection.get('seed', '?')})"
    elif split is not None:
        where = f"{split}, its first examples (the file predates held-out selection)"
    else:
        where = "none (the last step was kept)"
    best = [(k, v) for k, v in metrics.items() if k.startswith(("best_selection_", "best_val_"))]
    best_text = ", ".join(f"{k.split('_', 2)[2]} {_number(v)}" for k, v in best)
    if best and "best_step" in metrics:
        best_text += f" (step {metrics['best_step']})"
    rows = [("file", path), ("model", meta.get("base_model", "")), ("model type", meta.get("model_type", "")),
            ("dtype", meta.get("dtype") or "not recorded"), ("task", meta.get("task") or "not recorded"),
            ("P × H", f"{meta.get('prompt_length')} × {meta.get('hidden_size')}"),
            ("init", meta.get("init") or "not recorded"), ("lr", lr_text),
            ("steps", _number(metrics.get("steps", config.get("steps", "?")))), ("selection", where),
            ("best", best_text or "none"),
            ("template", repr(meta["template"]) if meta.get("template") else "not recorded"),
            ("format", f"softprompt version {meta.get('format_version')}")]
    width = max(len(label) for label, _ in rows)
    return [f"{label:<{width}}  {value}" for label, value in rows]


def run_neighbors(args: argparse.Namespace) -> int:
    from softprompt.cli.common import backbone_from_args
    from softprompt.core.promptfile import check_compatible, load_prompt
    from softprompt.evaluation import neighbors as nb

    if args.neighbors < 1:
        raise UsageError(f"--neighbors must be >= 1, got {args.neighbors}")
    pf = load_prompt(args.file)
    others = [load_prompt(f) for f in args.compare]
    args.model = args.model or pf.meta.base_model
    args.device = None
    backbone = backbone_from_args(args)
    for where, f in [(args.file, pf), *zip(args.compare, others, strict=True)]:
        check_compatible(f, backbone, where=where, allow_other_model=args.allow_other_model)
    embeddings = backbone.embedding_matrix().cpu()
    found = nb.nearest_tokens(pf.prompt, embeddings, backbone.tokenizer, args.neighbors)
    hits = nb.verbalizer_hits(found, backbone.tokenizer, pf.meta.verbalizer) if pf.meta.verbalizer else {}
    vocab_norm = float(embeddings.norm(dim=-1).mean())
    names = [args.file, *args.compare]
    table = nb.similarity_table([pf.prompt, *(o.prompt for o in others)]) if others else None
    print(f"# {args.file}: P={pf.prompt.shape[0]} H={pf.prompt.shape[1]} model={args.model} task={pf.meta.task!r}")
    print(f"# mean vocabulary embedding norm {vocab_norm:.3f}; top-{found.token_ids.shape[1]} by cosine")
    for word, positions in hits.items():
        print(f"# verbalizer {word!r}: among the neighbours at positions {positions or 'none'}")
    for line in nb.format_neighbors(found):
        print(line)
    if table is not None:
        print("# prompt-to-prompt similarity (mean cosine over aligned positions)")
        for name, row in zip(names, table.tolist(), strict=True):
            print(f"# {' '.join(f'{v:6.3f}' for v in row)}  {name}")
    if args.report:
        path = nb.write_report(args.report, found, title=f"{args.file} on {args.model}", hits=hits,
                               similarity=table, names=names)
        print(f"# report: {path}")
    if args.json:
        emit({"file": args.file, "model": args.model, "k": found.token_ids.shape[1], "positions": found.to_dict(),
              "verbalizer_hits": hits, "vocab_norm_mean": round(vocab_norm, 4),
              **({"similarity": {"names": names, "matrix": table.tolist()}} if table is not None else {})}, True)
    return 0
