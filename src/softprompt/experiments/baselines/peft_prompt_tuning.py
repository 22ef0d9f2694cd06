"""The PEFT peer: Hugging Face PEFT's own prompt tuning (``PromptTuningConfig`` + ``get_peft_model``) trained at
prompt tuning's budget, then scored by softprompt's ``evaluate`` like every prompt-tuning cell.

What is shared with a softprompt prompt-tuning cell, so that the two differ only in whose code trains the prompt:
the backbone's weights (PEFT wraps a frozen copy; the caller's backbone is never modified), every step's rows
(:func:`softprompt.training.loop.batch_indices` with the cell's seed) and their tokenization
(:func:`softprompt.training.supervised.example_batches`, i.e. ``make_batch``: PEFT's causal-LM forward takes
``input_ids``, ``attention_mask`` and ``labels`` with -100 off the target), a step's loss over micro-batches (each
micro-batch's mean weighted by its share of the step's target tokens, as ``steploss.backward_step`` weights them), the
training loop and its optimizer (:func:`softprompt.training.loop.train_loop`, ``make_optimizer`` with the grid's
``prompt_tuning`` settings, lr "auto" resolved by :func:`softprompt.training.prompt_tuning.resolve_lr`), selection
(the task's metric on the same slice, by ``evaluate``, every ``eval_every`` steps and at the last) and the
evaluation of the result.

What is PEFT's: the prompt parameter and its initialisation, the forward (its splice: the prompt prepended to
``word_embeddings(input_ids)``, an all-ones prompt mask, -100 labels on the prompt) and the loss (the model's own).

Inits: softprompt's names map onto PEFT's ``PromptTuningInit`` (:data:`PEFT_INITS`); what PEFT does with them
differs in detail, and the cell records what it ran (``peft.prompt_tuning_init``, ``peft.prompt_tuning_init_text``):

- ``class-label`` → ``TEXT`` with the task's label words as the text (in verbalizer order, as one string; a space
  between words that do not begin with one). PEFT tokenizes the text *with* the tokenizer's special tokens (a
  Llama or Gemma tokenizer's BOS becomes the first row, T5's EOS the last) and repeats the tokens to fill P; a
  multi-token label is several rows, not their mean. softprompt's class-label puts one row per label (multi-token
  labels averaged) and fills the rest with sampled-vocab rows. A task without label words falls back to
  ``SAMPLE_VOCAB``, as softprompt's class-label falls back to sampled-vocab.
- ``text`` → ``TEXT`` with ``prompt_tuning.init_text`` (the same tokenization and repetition as above; softprompt
  takes the text's tokens without special tokens and fills with sampled-vocab rows). When the tokenizer adds no
  special tokens and the text has at least P tokens the two inits are the same rows.
- ``sampled-vocab`` → ``SAMPLE_VOCAB``: ids drawn uniformly from the whole embedding matrix (special, byte and
  padding rows included) by torch's global RNG, seeded with the cell's seed; softprompt samples the 5,000 lowest
  plain-text ids with its own generator.
- ``uniform`` is refused: PEFT's ``RANDOM`` is ``nn.Embedding``'s N(0, 1), neither uniform nor on the paper's
  ±0.5 scale, so a cell named ``uniform`` would not be what it says. Residual reparameterisation
  (``prompt_tuning.reparam``) is refused too: PEFT's prompt tuning has none.

The steps are taken by softprompt's one training loop (:mod:`softprompt.training.loop`) with PEFT's forward as the
step's loss, so a killed cell resumes from its checkpoint exactly as a prompt-tuning cell does. Files, beside the
prompt-tuning cells': ``<cell id>.ckpt.safetensors`` and ``<cell id>.metrics.jsonl`` (the loop's),
``<cell id>.peft/`` (PEFT's adapter folder, ``save_pretrained``) and ``<cell id>.safetensors`` (that adapter read
back by :func:`softprompt.core.peft_interop.read_peft` and written as a softprompt prompt file: what is evaluated).
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from softprompt.core.backbone import Backbone
from softprompt.core.bank import PromptBank
from softprompt.core.files import atomic_write_dir
from softprompt.core.peft_interop import import_prompt, read_peft
from softprompt.core.prompted import PromptedModel
from softprompt.core.tokenize import Batch
from softprompt.tasks.base import Example, Task
from softprompt.training.loop import RunFiles, Selection, Trainable, start_run, train_loop
from softprompt.training.prompt_tuning import TrainConfig, resolve_lr
from softprompt.training.steploss import step_token_count
from softprompt.training.supervised import example_batches, task_selection

PEFT_PARAM = "peft_prompt"
"""the checkpoint's name for PEFT's prompt weight (not prompt tuning's, so neither resumes from the other's)"""

PEFT_INITS: dict[str, str] = {"class-label": "TEXT", "text": "TEXT", "sampled-vocab": "SAMPLE_VOCAB"}
"""softprompt init → PEFT ``PromptTuningInit`` (the module docstring says how each differs); others are refused"""


def has_sample_vocab() -> bool:
    """Whether the installed PEFT has the SAMPLE_VOCAB init (added in late 2025, huggingface/peft#2815)."""
    from peft import PromptTuningInit

    return hasattr(PromptTuningInit, "SAMPLE_VOCAB")


def refusals(inits: list[str], config: TrainConfig) -> list[str]:
    """Why a grid's PEFT cells could not be what they say (empty: they can): PEFT missing, an init without a PEFT
    counterpart, a setting PEFT's prompt tuning lacks. Cheap: PEFT is only imported for a sampled-vocab init."""
    if importlib.util.find_spec("peft") is None:
        return ["method peft-prompt-tuning needs PEFT: pip install peft"]
    out = []
    if "sampled-vocab" in inits and not has_sample_vocab():
        out.append(f"init 'sampled-vocab' needs PEFT's SAMPLE_VOCAB init, which PEFT "
                   f"{importlib.metadata.version('peft')} lacks: upgrade PEFT")
    for init in inits:
        if init == "uniform":
            out.append("init 'uniform' has no PEFT counterpart (PEFT's RANDOM is nn.Embedding's N(0, 1), not "
                       "U(-0.5, 0.5)); method peft-prompt-tuning takes inits "
                       f"{', '.join(PEFT_INITS)}: run uniform in a grid without it")
        elif init not in PEFT_INITS:
            out.append(f"init {init!r} has no PEFT counterpart; method peft-prompt-tuning takes inits "
                       f"{', '.join(PEFT_INITS)}")
    if config.reparam != "none":
        out.append(f"prompt_tuning.reparam {config.reparam!r}: PEFT's prompt tuning has no reparameterisation; "
                   "put it in a variant instead (variants are softprompt prompt-tuning cells)")
    return out


def label_text(words: list[str]) -> str:
    """The label words as one init text: in order, a space before each later word that does not begin with one."""
    return "".join(w if i == 0 or w[:1].isspace() else " " + w for i, w in enumerate(words))


def peft_init(task: Task, config: TrainConfig) -> tuple[str, str | None]:
    """(PEFT ``PromptTuningInit`` name, its init text or None) for ``config.init`` on ``task``."""
    if config.init not in PEFT_INITS:
        raise ValueError(f"init {config.init!r} has no PEFT counterpart; choose one of {', '.join(PEFT_INITS)}")
    if config.reparam != "none":
        raise ValueError("PEFT's prompt tuning has no reparameterisation")
    if config.init == "text":
        if not config.init_text:
            raise ValueError("init 'text' needs init_text")
        return "TEXT", config.init_text
    labels = list(dict.fromkeys(task.verbalizer.values()))
    if config.init == "class-label" and labels:
        return "TEXT", label_text(labels)
    if not has_sample_vocab():
        raise ValueError(f"{task.name}: init {config.init!r} without label words needs PEFT's SAMPLE_VOCAB init, "
                         f"which PEFT {importlib.metadata.version('peft')} lacks: upgrade PEFT")
    return "SAMPLE_VOCAB", None


@dataclass
class PeftResult:
    prompt: torch.Tensor
    """[P, H] the selected (best or last) prompt, as read back from PEFT's adapter folder"""
    losses: list[float] = field(default_factory=list)
    """every step's loss, as PEFT's forward computed it (the step's mean target NLL)"""
    metrics: dict[str, Any] = field(default_factory=dict)
    """steps, lr, and with selection best_selection_<metric>, best_step"""
    history: list[dict[str, Any]] = field(default_factory=list)
    """the selection scores of every eval"""
    peft: dict[str, Any] = field(default_factory=dict)
    """what trained it: PEFT's version and its PromptTuningConfig fields"""
    resumed_from_step: int = 0
    """the step this process went on from (0: it started fresh)"""


def tune_peft_prompt(
    backbone: Backbone,
    task: Task,
    train_examples: list[Example],
    config: TrainConfig,
    out: Path,
    *,
    selection: list[Example] | None = None,
    resume: bool = False,
    progress: bool = False,
) -> PeftResult:
    """Train PEFT's prompt tuning on a frozen copy of ``backbone`` (module docstring); write the adapter to
    ``out.with_suffix(".peft")`` and the selected prompt as a softprompt file ``out``. The steps are softprompt's
    training loop's (:func:`softprompt.training.loop.train_loop`), so a ``resume`` continues a killed run exactly."""
    import peft

    if not train_examples:
        raise ValueError("no training examples")
    init, text = peft_init(task, config)
    files = RunFiles.named(Path(out).with_suffix(""))
    # Seeds torch's global RNG, from which PEFT initialises (SAMPLE_VOCAB's ids, RANDOM's rows).
    start = start_run(config, files, resume)
    if start is not None and PEFT_PARAM not in start.params:
        raise ValueError(f"{files.checkpoint} is not a PEFT prompt-tuning checkpoint; delete it to start over")
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        # PEFT's TEXT init loads a tokenizer by name: the backbone's own, whatever the backbone was loaded from.
        backbone.tokenizer.save_pretrained(tokenizer_dir)
        pconfig = peft.PromptTuningConfig(
            task_type="SEQ_2_SEQ_LM" if backbone.is_encoder_decoder else "CAUSAL_LM",
            num_virtual_tokens=config.prompt_length, num_transformer_submodules=1,
            prompt_tuning_init=init, prompt_tuning_init_text=text,
            tokenizer_name_or_path=tokenizer_dir if init == "TEXT" else None)
        model = peft.get_peft_model(copy.deepcopy(backbone.model), pconfig)
    pconfig.tokenizer_name_or_path = backbone.name if init == "TEXT" else None  # not the deleted folder
    pconfig.base_model_name_or_path = backbone.name
    model.eval()  # no dropout, as softprompt's frozen backbone
    weight = model.prompt_encoder["default"].embedding.weight  # [P, H], what trains
    lr = resolve_lr(config, backbone)
    device = backbone.device

    def step_loss(batches: list[Batch]) -> float:
        count = float(step_token_count(batches, device))
        total = 0.0
        for batch in batches:
            tokens = int(batch.target_lengths.sum())
            if not tokens:  # PEFT's mean over no tokens is NaN; such a micro-batch adds nothing to the step
                continue
            batch = batch.to(device)
            # PEFT's loss is its micro-batch's mean over target tokens; weighted by the micro-batch's share of the
            # step's tokens, the step's loss is the mean over all of them (softprompt's steploss rule).
            loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
            loss = loss * (tokens / count)
            loss.backward()
            total += float(loss.detach())
        return total

    # Selection scores the current prompt through softprompt's evaluate, as a prompt-tuning cell's selection does.
    scorer = PromptedModel(backbone, PromptBank(weight.detach().clone().unsqueeze(0)))
    chooser = task_selection(scorer, task, selection, config)

    def scores() -> dict[str, float]:
        assert chooser is not None
        scorer.bank.weight.copy_(weight.detach().unsqueeze(0))
        return chooser.evaluate()

    job = Trainable(scorer, {PEFT_PARAM: weight}, len(train_examples),
                    example_batches(backbone, task, train_examples, config.max_input_tokens),
                    snapshot=lambda: {"prompt": weight.detach().clone()}, lr=lr, desc=f"peft {task.name}",
                    step_loss=step_loss)
    done = train_loop(job, config, files, start=start, progress=progress,
                      selection=None if chooser is None else Selection(scores, chooser.metric, chooser.every))
    state = done.state
    best = None if done.best is None else done.best["prompt"]
    if best is not None:
        with torch.no_grad():
            weight.copy_(best)  # the adapter PEFT saves is the selected step's
    adapter = Path(out).with_suffix(".peft")
    atomic_write_dir(adapter, lambda tmp: model.save_pretrained(tmp))
    record = {"version": importlib.metadata.version("peft"), "adapter": str(adapter),
              **{k: v for k, v in json_config(pconfig).items()
                 if k in ("task_type", "num_virtual_tokens", "num_transformer_submodules", "prompt_tuning_init",
                          "prompt_tuning_init_text", "tokenizer_name_or_path")}}
    metrics: dict[str, Any] = {**done.summary(task.primary_metric), "lr": lr}
    prompt, _ = read_peft(adapter)
    pf = import_prompt(prompt, backbone, out, source=str(adapter),
                       extra={"method": "peft-prompt-tuning", "task": task.name, "peft": record,
                              "train_config": asdict(config), "metrics": metrics})
    return PeftResult(pf.prompt, list(state.losses), metrics, list(state.history), record, done.resumed_from_step)


def json_config(pconfig: Any) -> dict[str, Any]:
    """A PEFT config's fields as JSON values (its enums as their names)."""
    return {k: (v.value if hasattr(v, "value") else v) for k, v in pconfig.to_dict().items()}
