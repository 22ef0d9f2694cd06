"""``softprompt convert``: prompts to and from PEFT prompt-tuning adapters and T5X ``.npy`` arrays."""

from __future__ import annotations

import argparse
from pathlib import Path

from softprompt.cli.common import UsageError, backbone_from_args, emit
from softprompt.core.peft_interop import export_peft, import_prompt, read_npy, read_peft, write_npy
from softprompt.core.promptfile import check_finite, load_prompt


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="export a prompt to PEFT/.npy, or import one (needs --model)",
                       description="Export: convert FILE.safetensors --to peft|npy --out DIR_OR_NPY. "
                                   "Import: convert DIR_OR_NPY --from peft|npy --model M --out FILE.safetensors.")
    p.add_argument("source", help="softprompt file (export), PEFT adapter folder or .npy array (import)")
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--to", choices=["peft", "npy"], help="export a softprompt file")
    way.add_argument("--from", dest="from_", choices=["peft", "npy"], help="import into a softprompt file")
    p.add_argument("--out", type=Path, required=True, help="output folder (peft), .npy or .safetensors file")
    # --model only for imports: the new file records the model's fingerprint. An export reads it from the file.
    p.add_argument("--model", default=None, help="import: built-in name, .gguf file, local folder or hub id")
    p.add_argument("--device", default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.to:
        if args.model:
            raise UsageError("export needs no --model: the prompt file names its model")
        pf = load_prompt(args.source)
        if args.to == "peft":
            export_peft(pf, args.out)
        else:
            if args.out.suffix != ".npy":
                raise UsageError(f"--out must end in .npy for --to npy, got {args.out}")
            write_npy(pf, args.out)
        emit({"out": str(args.out), "to": args.to, "prompt_length": pf.meta.prompt_length,
              "hidden_size": pf.meta.hidden_size, "base_model": pf.meta.base_model}, True)
        return 0
    if not args.model:
        raise UsageError("import needs --model: the prompt file records the model it belongs to")
    if args.out.suffix != ".safetensors":
        raise UsageError(f"--out must end in .safetensors, got {args.out}")
    if args.from_ == "peft":
        prompt, config = read_peft(args.source)
        extra = {"format": "peft", "task_type": config.get("task_type"),
                 "base_model_name_or_path": config.get("base_model_name_or_path")}
    else:
        prompt, extra = read_npy(args.source), {"format": "npy"}
    check_finite(prompt, args.source)
    backbone = backbone_from_args(args)
    pf = import_prompt(prompt, backbone, args.out, source=f"{args.from_}:{Path(args.source).name}", extra=extra)
    emit({"out": str(args.out), "from": args.from_, "prompt_length": pf.meta.prompt_length,
          "hidden_size": pf.meta.hidden_size, "base_model": pf.meta.base_model}, True)
    return 0
