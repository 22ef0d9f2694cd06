"""The serving engine: the served tasks and the forward passes that answer them, batched across tasks.

A *task* is one prompt, or several (an ensemble, answered by majority vote), with its input template and labels.
The engine turns a list of jobs (requests from any tasks) into rows — one per (input, choice, member prompt) for
classification, one per (input, member) for generation — and runs them in forwards of at most ``max_batch_rows``
rows where each row carries its own prompt: the prefix cache path (decoder-only, :mod:`softprompt.server.prefix_cache`)
or the one splice (:class:`softprompt.prompted.PromptedModel`) with a bank of the batch's prompts.

A prompt carries its task: the template and instruction it was trained with (its metadata; else a built-in task's
``text_template``; else ``"{text}"``) format each served input, so a row served is the row trained.

Jobs hold the :class:`ServedTask` they resolved when they arrived, so unloading a task never fails a job already
accepted; every model call happens on the batcher's single worker thread.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from softprompt.backbone import Backbone
from softprompt.bank import PromptBank
from softprompt.batching import make_batch, make_input_batch
from softprompt.ensemble import majority_vote, vote_strings
from softprompt.prompted import PromptedModel
from softprompt.promptfile import PromptFile, PromptFileError, check_compatible, load_prompt
from softprompt.server.prefix_cache import (
    PromptKV,
    cached_generate,
    cached_sequence_logprob,
    prompt_kv,
    supports_prefix_cache,
)
from softprompt.tasks import TASKS
from softprompt.templates import fill_template, input_template

# Task names: a letter or digit first, then letters, digits, '_', '.', '-' — never a path separator or '..'.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)
# A forward's rows are cut where padding would exceed this multiple of the real tokens (see Engine._chunks).
PAD_SLACK = 1.5
# The most tokens one generation request may ask for (the API's limit; prompts must leave room for them).
MAX_NEW_TOKENS = 128
# Files `softprompt train` writes beside its prompt: a resume checkpoint, a metrics log, a TensorBoard folder.
TRAINING_SIDE_FILES = (".ckpt.safetensors", ".metrics.jsonl")
TRAINING_SIDE_DIRS = (".tb",)


class TaskError(ValueError):
    """A request the served tasks cannot answer (the message says why)."""


def check_name(name: str) -> str:
    if not _NAME_RE.match(name) or ".." in name:
        raise TaskError(f"invalid task name {name!r}: use 1-64 letters, digits, '_', '.', '-' (starting with a "
                        "letter or digit, no '..')")
    return name


@dataclass(frozen=True)
class Member:
    """One prompt of a task: the tensor [P, H], and its cached keys/values when the prefix cache is on."""

    prompt: Tensor
    kv: PromptKV | None


def position_limit(backbone: Backbone) -> int | None:
    """How many positions a decoder-only model reads (None: no fixed limit, e.g. T5's relative positions)."""
    if backbone.is_encoder_decoder:
        return None
    config = backbone.model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


@dataclass(frozen=True)
class ServedTask:
    """A served task: its member prompts (1, or K for an ensemble), input format, and verbalizer."""

    name: str
    members: tuple[Member, ...]
    template: str  # one field for the input (templates.input_template); "{text}" when nothing says otherwise
    labels: tuple[str, ...]  # verbalizer keys (empty: a generation task)
    words: tuple[str, ...]  # verbalizer target texts, aligned with labels
    source_task: str
    base_model: str
    instruction: str = ""  # text before the formatted input, as in training
    loaded_at: int = field(default_factory=lambda: int(time.time()))

    @property
    def kind(self) -> Literal["classification", "generation"]:
        return "classification" if self.labels else "generation"

    def format(self, text: str) -> str:
        return fill_template(self.template, text, self.instruction)


@dataclass(frozen=True)
class LoadedDir:
    """What :meth:`Engine.load_dir` served, and the training side files it skipped."""

    tasks: list[str]
    skipped: list[Path]


def is_training_side_file(path: Path) -> bool:
    return path.name.endswith(TRAINING_SIDE_DIRS if path.is_dir() else TRAINING_SIDE_FILES)


@dataclass
class Job:
    """One request: B inputs of one task. ``result`` is filled by :meth:`Engine.run`."""

    kind: Literal["classify", "generate"]
    task: ServedTask
    inputs: list[str]
    max_new_tokens: int = 0
    choices: list[tuple[str, ...]] | None = None  # classify: each input's own candidate targets (multiple choice)
    result: list[dict] = field(default_factory=list)
    error: Exception | None = None  # set instead of result when this job's rows failed

    def targets(self, i: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(labels, target texts) that input ``i`` is ranked over: its own choices, labelled "0", "1", ... (as
        COPA's raw labels are), else the task's verbalizer."""
        if self.choices is None:
            return self.task.labels, self.task.words
        return tuple(str(j) for j in range(len(self.choices[i]))), self.choices[i]

    @property
    def rows(self) -> int:
        if self.kind != "classify":
            return len(self.inputs) * len(self.task.members)
        return sum(len(self.targets(i)[1]) for i in range(len(self.inputs))) * len(self.task.members)


class Engine:
    """The backbone, the served tasks, and batched scoring/generation over rows of mixed tasks."""

    def __init__(self, backbone: Backbone, *, max_batch_rows: int = 64, max_input_tokens: int = 256,
                 prefix_cache: bool = True, allow_other_model: bool = False) -> None:
        self.backbone = backbone
        # Prompts (a folder's and uploads alike) of a model whose weights differ: a warning instead of a refusal.
        self.allow_other_model = allow_other_model
        self.max_batch_rows = max_batch_rows
        self.max_input_tokens = max_input_tokens
        self.prefix_cache = prefix_cache and supports_prefix_cache(backbone)
        self.tasks: dict[str, ServedTask] = {}
        self._lock = threading.Lock()  # guards self.tasks against the event loop and the worker together

    # ---- loading ------------------------------------------------------------------------------------------------
    def member(self, pf: PromptFile) -> Member:
        """A prompt with its cached prefix (a forward of the prompt alone: run it on the worker thread)."""
        prompt = pf.prompt.to(self.backbone.device)
        return Member(prompt, prompt_kv(self.backbone, prompt) if self.prefix_cache else None)

    def make_task(self, name: str, files: Sequence[PromptFile], *, where: str, upload: bool = False) -> ServedTask:
        """Validate prompt files against the model and build a task (K > 1 files: an ensemble).

        The format is the prompt's own template and instruction, else its built-in task's ``text_template``, else
        ``"{text}"``; the labels are its verbalizer, else its built-in task's. A task is looked up among the built-in
        tasks only, never as a path: a prompt file's metadata must not make the server read another file. An
        upload (``upload=True``) that names a task the server does not know must carry its own verbalizer or
        template, so that it is never served by guesswork.
        """
        check_name(name)
        if not files:
            raise PromptFileError(f"{where}: no prompt files")
        limit = position_limit(self.backbone)
        for pf in files:
            check_compatible(pf, self.backbone, where=where, allow_other_model=self.allow_other_model)
            length = int(pf.prompt.shape[0])
            if limit is not None and length + self.max_input_tokens + MAX_NEW_TOKENS > limit:
                raise PromptFileError(f"{where}: prompt length {length} leaves no room for inputs: the model reads "
                                      f"{limit} positions, inputs take up to {self.max_input_tokens} "
                                      f"(--max-input-tokens) and generation up to {MAX_NEW_TOKENS}")
        meta = files[0].meta
        known = TASKS[meta.task]() if meta.task in TASKS else None
        own_template, instruction = meta.template, meta.instruction  # "" in version-1 files
        if upload and meta.task and known is None and not meta.verbalizer and not own_template:
            raise PromptFileError(f"{where}: metadata field 'task' is {meta.task[:100]!r}, which is no built-in task, "
                                  "and the prompt carries no verbalizer or template of its own")
        template = input_template(own_template or (known.text_template if known else "{text}"), where)
        verbalizer = dict(meta.verbalizer) or (dict(known.verbalizer) if known else {})
        for other in files[1:]:
            if dict(other.meta.verbalizer or verbalizer) != verbalizer:
                raise PromptFileError(f"{where}: ensemble members disagree on the verbalizer")
            if (getattr(other.meta, "template", "") or "", getattr(other.meta, "instruction", "") or "") != (
                    own_template, instruction):
                raise PromptFileError(f"{where}: ensemble members disagree on the template or instruction")
        for label, word in verbalizer.items():
            if not self.backbone.tokenizer(word, add_special_tokens=False)["input_ids"]:
                raise PromptFileError(f"{where}: label {label!r} has target text {word!r}, which is no tokens")
        members = tuple(self.member(pf) for pf in files)
        return ServedTask(name, members, template, tuple(verbalizer), tuple(verbalizer.values()), meta.task,
                          meta.base_model, instruction)

    def task_from_bytes(self, name: str, body: bytes) -> ServedTask:
        """A one-prompt task from an uploaded safetensors body; a bad body raises :class:`PromptFileError`."""
        check_name(name)
        where = f"upload {name!r}"
        fd, tmp = tempfile.mkstemp(suffix=".safetensors")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            try:
                pf = load_prompt(tmp)
            except PromptFileError as err:  # name the upload, not the temporary file
                raise PromptFileError(str(err).replace(tmp, where)) from None
        finally:
            os.unlink(tmp)
        return self.make_task(name, [pf], where=where, upload=True)

    def load_dir(self, folder: Path) -> LoadedDir:
        """Serve every ``NAME.safetensors`` (task NAME) and every sub-folder ``NAME/`` of prompt files (an ensemble
        task NAME) in ``folder``; skip the side files ``softprompt train`` writes beside a prompt (resume
        checkpoints ``*.ckpt.safetensors``, ``*.metrics.jsonl``, ``*.tb/``), so its output folder is servable."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"prompt folder not found: {folder}")
        loaded: list[str] = []
        skipped: list[Path] = []
        for path in sorted(folder.iterdir()):
            if is_training_side_file(path):
                skipped.append(path)
                continue
            if path.is_file() and path.suffix == ".safetensors":
                files = [load_prompt(path)]
            elif path.is_dir():
                members = []
                for p in sorted(path.glob("*.safetensors")):
                    (skipped if is_training_side_file(p) else members).append(p)
                if not members:
                    continue
                files = [load_prompt(p) for p in members]
            else:
                continue
            name = path.stem if path.is_file() else path.name
            self.add(self.make_task(name, files, where=str(path)))
            loaded.append(name)
        return LoadedDir(loaded, skipped)

    def add(self, task: ServedTask) -> bool:
        """Serve ``task`` (replacing one of the same name); True when it replaced one."""
        with self._lock:
            replaced = task.name in self.tasks
            self.tasks = {**self.tasks, task.name: task}
        return replaced

    def remove(self, name: str) -> bool:
        with self._lock:
            if name not in self.tasks:
                return False
            self.tasks = {k: v for k, v in self.tasks.items() if k != name}
        return True

    def get(self, name: str) -> ServedTask:
        task = self.tasks.get(name)
        if task is None:
            raise KeyError(f"unknown task {name!r}; serving: {', '.join(sorted(self.tasks)) or 'none'}")
        return task

    # ---- batched forwards ---------------------------------------------------------------------------------------
    def _chunks(self, texts: Sequence[str]) -> list[list[int]]:
        """Row indices grouped into forwards: sorted by token length so rows of a forward pad little (on CPU a
        forward costs rows x longest row), cut at ``max_batch_rows`` rows or when padding would pass
        ``PAD_SLACK`` x the real tokens."""
        unique = sorted(set(texts))
        ids = self.backbone.tokenizer(unique, add_special_tokens=False)["input_ids"] if unique else []
        tokens = {t: len(i) + 1 for t, i in zip(unique, ids, strict=True)}
        order = sorted(range(len(texts)), key=lambda i: tokens[texts[i]])
        chunks: list[list[int]] = []
        real = 0
        for i in order:
            n = tokens[texts[i]]
            cur = chunks[-1] if chunks else None
            if cur is None or len(cur) >= self.max_batch_rows or (len(cur) + 1) * n > PAD_SLACK * (real + n):
                chunks.append([i])
                real = n
            else:
                cur.append(i)
                real += n
        return chunks

    def _scores(self, rows: Sequence[tuple[Member, str, str]]) -> list[float]:
        """Summed log-likelihood of each (member, input, target) row."""
        out = [0.0] * len(rows)
        for idx in self._chunks([r[1] + r[2] for r in rows]):
            chunk = [rows[i] for i in idx]
            batch = make_batch(self.backbone.tokenizer, [r[1] for r in chunk], [r[2] for r in chunk],
                               encoder_decoder=self.backbone.is_encoder_decoder,
                               max_input_tokens=self.max_input_tokens)
            if self.prefix_cache:
                values = cached_sequence_logprob(self.backbone, [r[0].kv for r in chunk], batch)
            else:
                pm, index = self._prompted([r[0] for r in chunk])
                values = pm.sequence_logprob(batch, index)
            for i, v in zip(idx, values.float().cpu().tolist(), strict=True):
                out[i] = v
        return out

    def _generate(self, rows: Sequence[tuple[Member, str, int]]) -> list[str]:
        """Greedy output text of each (member, input, max_new_tokens) row."""
        out = [""] * len(rows)
        tok = self.backbone.tokenizer
        for idx in self._chunks([r[1] for r in rows]):
            chunk = [rows[i] for i in idx]
            texts = [r[1] for r in chunk]
            if self.prefix_cache:
                ids, mask = make_input_batch(tok, texts, self.max_input_tokens)
                new = cached_generate(self.backbone, [r[0].kv for r in chunk], ids, mask, [r[2] for r in chunk])
                for i, t in zip(idx, tok.batch_decode(new, skip_special_tokens=True), strict=True):
                    out[i] = t.strip()
                continue
            # generate() takes one max_new_tokens for the whole call: one call per distinct limit in the chunk.
            for limit in sorted({r[2] for r in chunk}):
                picked = [j for j, r in enumerate(chunk) if r[2] == limit]
                pm, index = self._prompted([chunk[j][0] for j in picked])
                gen = pm.generate([texts[j] for j in picked], index, max_new_tokens=limit,
                                  max_input_tokens=self.max_input_tokens)
                for j, t in zip(picked, gen, strict=True):
                    out[idx[j]] = t
        return out

    def _prompted(self, members: Sequence[Member]) -> tuple[PromptedModel, Tensor]:
        """A model over a bank of the chunk's distinct prompts, and each row's index into it."""
        distinct: dict[int, int] = {}
        for m in members:
            distinct.setdefault(id(m), len(distinct))
        prompts = {id(m): m.prompt for m in members}
        bank = PromptBank.from_prompts([prompts[k] for k in distinct])
        return PromptedModel(self.backbone, bank), torch.tensor([distinct[id(m)] for m in members])

    @torch.no_grad()
    def run(self, jobs: Sequence[Job]) -> None:
        """Answer every job, filling ``job.result``: all classification rows of all jobs share forwards, and so do
        all generation rows."""
        cls_rows: list[tuple[Member, str, str]] = []
        gen_rows: list[tuple[Member, str, int]] = []
        for job in jobs:
            for i, text in enumerate(job.inputs):
                formatted = job.task.format(text)
                for m in job.task.members:
                    if job.kind == "classify":
                        cls_rows += [(m, formatted, w) for w in job.targets(i)[1]]
                    else:
                        gen_rows.append((m, formatted, job.max_new_tokens))
        scores = self._scores(cls_rows) if cls_rows else []
        texts = self._generate(gen_rows) if gen_rows else []
        si = gi = 0
        for job in jobs:
            n = len(job.task.members)
            job.result = []
            for i, text in enumerate(job.inputs):
                if job.kind == "classify":
                    labels, words = job.targets(i)
                    k = len(words)
                    per_member = [scores[si + j * k: si + (j + 1) * k] for j in range(n)]
                    si += n * k
                    member_scores = torch.tensor(per_member).unsqueeze(1)  # [N, 1, K]
                    votes = [labels[int(j)] for j in member_scores.argmax(dim=-1)[:, 0]]
                    # The library's vote (ties: higher mean probability, then lower label index): the server and
                    # `softprompt ensemble` give the same answer for the same prompts.
                    label = labels[int(majority_vote(member_scores)[0])]
                    mean = [sum(s[j] for s in per_member) / n for j in range(k)]
                    job.result.append({"input": text, "label": label, "text": words[labels.index(label)]
                                       .strip(), "scores": dict(zip(labels, mean, strict=True)),
                                       "votes": dict(Counter(votes))})
                else:
                    outs = texts[gi:gi + n]
                    gi += n
                    job.result.append({"input": text, "text": vote_strings([[o] for o in outs])[0]})
