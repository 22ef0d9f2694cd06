"""``softprompt eval`` and ``softprompt predict``."""

from __future__ import annotations

import argparse
import time

import torch

from softprompt.cli.common import (
    UsageError,
    add_allow_other_model,
    add_model,
    add_split,
    add_task,
    backbone_from_args,
    emit,
    model_folder_record,
    selection_record,
    split_examples,
    task_from_args,
)
from softprompt.core.backbone import Backbone
from softprompt.core.bank import PromptBank
from softprompt.core.prompted import PromptedModel
from softprompt.core.promptfile import PromptMeta, check_compatible, load_prompt
from softprompt.core.templates import prompt_format
from softprompt.evaluation.scoring import evaluate, score_choices
from softprompt.experiments.baselines.prompt_design import design_prompt
from softprompt.experiments.methods import count_parameters, task_parameters
from softprompt.tasks import Example, builtin_task, get_task


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a prompt (or a hand-written prompt) on a task; prints JSON metrics")
    add_model(p)
    add_task(p)
    p.add_argument("--method", choices=["prompt-tuning", "prompt-design", "model-tuning"], default="prompt-tuning",
                   help="prompt-tuning: a trained --prompt; prompt-design: the task's text instruction (+ --shots "
                        "demonstrations), no soft prompt; model-tuning: a fine-tuned --model as is, no prompt, "
                        "no instruction")
    p.add_argument("--prompt", help="prompt file (.safetensors) for --method prompt-tuning")
    add_allow_other_model(p)
    p.add_argument("--shots", type=int, default=0,
                   help="prompt-design: K demonstrations from the train split that fit --max-input-tokens (0: "
                        "zero-shot)")
    p.add_argument("--seed", type=int, default=0, help="prompt-design: seed for sampling the demonstrations")
    add_split(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-input-tokens", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--json", action="store_true", help="last stdout line is one JSON object")
    p.set_defaults(func=run_eval)

    q = sub.add_parser("predict", help="label (or generated text) for given inputs")
    add_model(q)
    q.add_argument("--prompt", required=True, help="prompt file (.safetensors)")
    add_allow_other_model(q)
    q.add_argument("--task", default=None, help="task whose input format to apply (default: the prompt's task)")
    q.add_argument("--raw", action="store_true", help="pass TEXT to the model as is, without the task's format")
    q.add_argument("--json", action="store_true")
    q.add_argument("text", nargs="+", metavar="TEXT")
    q.set_defaults(func=run_predict)


def prompted_from_file(backbone: Backbone, path: str, *, allow_other_model: bool = False
                       ) -> tuple[PromptedModel, PromptMeta]:
    """The prompt file at ``path``, checked against ``backbone``, as a one-prompt model, and its metadata."""
    pf = load_prompt(path)
    check_compatible(pf, backbone, where=path, allow_other_model=allow_other_model)
    return PromptedModel(backbone, PromptBank(pf.prompt.unsqueeze(0))), pf.meta


def no_prompt(backbone: Backbone) -> PromptedModel:
    """The bare model: a bank holding one zero-length prompt."""
    return PromptedModel(backbone, PromptBank(torch.zeros(1, 0, backbone.hidden_size)))


def run_eval(args: argparse.Namespace) -> int:
    task = task_from_args(args)
    if args.method == "prompt-tuning" and not args.prompt:
        raise UsageError("--method prompt-tuning needs --prompt FILE (or use --method prompt-design)")
    if args.method != "prompt-tuning" and args.prompt:
        raise UsageError(f"--method {args.method} uses no --prompt")
    if args.shots and args.method != "prompt-design":
        raise UsageError("--shots is for --method prompt-design")
    if args.prompt:
        meta = load_prompt(args.prompt).meta
        records = [selection_record(args.prompt, meta.selection, meta.metrics, meta.train_config)]
    else:
        records = model_folder_record(args.model) if args.method == "model-tuning" else []
    examples, selection = split_examples(task, args, records)
    pool = task.examples("train", args.data_dir) if args.shots else []
    backbone = backbone_from_args(args)
    extra: dict = {}
    prompt_length = 0
    if args.prompt:
        pm, meta = prompted_from_file(backbone, args.prompt, allow_other_model=args.allow_other_model)
        instruction, prompt_length = "", meta.prompt_length
    elif args.method == "model-tuning":
        pm, instruction = no_prompt(backbone), ""
    else:
        design = design_prompt(task, backbone.tokenizer, examples, shots=args.shots, pool=pool, seed=args.seed,
                               max_input_tokens=args.max_input_tokens)
        pm, instruction = no_prompt(backbone), design.prefix
        extra = {"shots": design.shots, "shots_requested": design.requested}
    trainable = task_parameters(args.method, model_parameters=count_parameters(backbone.model),
                                hidden_size=backbone.hidden_size, prompt_length=prompt_length)
    t0 = time.perf_counter()
    metrics, _ = evaluate(pm, task, examples, batch_size=args.batch_size, instruction=instruction,
                          max_input_tokens=args.max_input_tokens, max_new_tokens=args.max_new_tokens,
                          progress=args.progress)
    emit({"task": task.name, "model": args.model, "method": args.method, "split": args.split,
          **({"selection": selection} if selection else {}), "examples": len(examples),
          "seconds": round(time.perf_counter() - t0, 2), "trainable_params": trainable, **extra, **metrics}, args.json)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    backbone = backbone_from_args(args)
    pm, meta = prompted_from_file(backbone, args.prompt, allow_other_model=args.allow_other_model)
    # A prompt trained on a user's data file names a task that is not built in: its inputs are taken as given.
    task = get_task(args.task) if args.task else builtin_task(meta.task)
    # The template the prompt was trained with (format 2 records it), else the named task's, else the raw text.
    fmt = prompt_format(meta, task, args.prompt, task_template=bool(args.task), raw=args.raw)
    verbalizer = fmt.verbalizer
    inputs = [fmt.fill(t) for t in args.text]
    results = []
    if verbalizer:
        words = tuple(verbalizer.values())
        labels = list(verbalizer)
        examples = [Example(i, words[0], words) for i in inputs]
        scores = score_choices(pm, examples)[0]
        for text, s in zip(args.text, scores, strict=True):
            best = int(s.argmax())
            results.append({"input": text, "label": labels[best], "text": words[best].strip(),
                            "scores": {lab: round(float(v), 4) for lab, v in zip(labels, s, strict=True)}})
    else:
        outputs = pm.generate(inputs, torch.zeros(len(inputs), dtype=torch.long))
        results = [{"input": t, "text": o} for t, o in zip(args.text, outputs, strict=True)]
    if args.json:
        emit({"predictions": results}, True)
    else:
        for r in results:
            print(f"{r.get('label', r['text'])}\t{r['input']}")
    return 0
