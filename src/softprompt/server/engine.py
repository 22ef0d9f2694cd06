"""The serving engine: the served tasks and the forward passes that answer them, batched across tasks.

A *task* is one prompt, or several (an ensemble, answered by majority vote), with its input template and labels. Every
served prompt lives in ONE :class:`~softprompt.core.bank.PromptBank` inside ONE
:class:`~softprompt.core.prompted.PromptedModel`; a task's members hold their slot indices in it. The engine turns a
list of jobs (requests from any tasks) into rows — one per (input, member prompt) for classification when every label
word is one token (all K read from the next-token distribution), one per (input, label, member) otherwise, one per
(input, member) for generation — and runs them through the library's own methods
(:meth:`~softprompt.core.prompted.PromptedModel.next_token_logprobs`, ``sequence_logprob``, ``generate``) in forwards of
at most ``max_batch_rows`` rows where each row carries its own prompt index. The prefix cache is the library's
(:mod:`softprompt.core.prefix_cache`), so the server and ``softprompt eval`` compute the same numbers the same way.

A prompt carries its task: the template and instruction it was trained with (its metadata; else a built-in task's
``text_template``; else ``"{text}"``) format each served input, so a row served is the row trained.

Hot loading: a new prompt is written to a free slot (never one in use), on the batcher's worker thread, between
batches. Jobs hold the :class:`ServedTask` they resolved when they arrived, and a member's slot is freed only when
nothing holds the member any more (a finalizer), so a job always answers from the prompt version it resolved, even if
its task was replaced or deleted meanwhile; every model call happens on the worker thread.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from softprompt.core.backbone import Backbone
from softprompt.core.bank import PromptBank
from softprompt.core.prompted import NoContextError, PromptedModel
from softprompt.core.promptfile import PromptFile, PromptFileError, check_compatible, load_prompt
from softprompt.core.templates import fill_template, prompt_format
from softprompt.core.tokenize import encode_inputs, length_chunks, make_batch, make_input_batch, tokenize
from softprompt.evaluation.ensemble import majority_vote, vote_strings
from softprompt.evaluation.scoring import single_token_ids
from softprompt.tasks import builtin_task

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


@dataclass(frozen=True, eq=False)
class Member:
    """One prompt of a task: the tensor [P, H] and its slot in the engine's prompt bank (the slot stays this
    prompt's for as long as anything holds the member)."""

    prompt: Tensor
    index: int


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
    label_ids: tuple[int, ...] | None = None  # the words' token ids when each is one token (one row per input)

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

    def label_ids(self) -> tuple[int, ...] | None:
        """The label words' token ids when every input is ranked over the task's one-token labels (one row per
        input reads all K); None for per-request choices or multi-token labels (one row per choice)."""
        return self.task.label_ids if self.choices is None else None

    def targets(self, i: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(labels, target texts) that input ``i`` is ranked over: its own choices, labelled "0", "1", ... (as
        COPA's raw labels are), else the task's verbalizer."""
        if self.choices is None:
            return self.task.labels, self.task.words
        return tuple(str(j) for j in range(len(self.choices[i]))), self.choices[i]

    @property
    def rows(self) -> int:
        """Rows this job adds to the forwards: per input and member, 1 (generation, or one-token labels) or K."""
        if self.kind != "classify":
            return len(self.inputs) * len(self.task.members)
        per_input = [1 if self.label_ids() is not None else len(self.targets(i)[1]) for i in range(len(self.inputs))]
        return sum(per_input) * len(self.task.members)


class Engine:
    """The backbone, the served tasks, and batched scoring/generation over rows of mixed tasks."""

    def __init__(self, backbone: Backbone, *, max_batch_rows: int = 64, max_input_tokens: int = 256,
                 prefix_cache: bool = True, allow_other_model: bool = False) -> None:
        self.backbone = backbone
        # Prompts (a folder's and uploads alike) of a model whose weights differ: a warning instead of a refusal.
        self.allow_other_model = allow_other_model
        self.max_batch_rows = max_batch_rows
        self.max_input_tokens = max_input_tokens
        self.prompted = PromptedModel(backbone, PromptBank(torch.zeros(0, 0, backbone.hidden_size)),
                                      prefix_cache=prefix_cache)
        self.prompted.bank.weight.requires_grad_(False)
        self.tasks: dict[str, ServedTask] = {}
        self._lock = threading.Lock()  # guards self.tasks against the event loop and the worker together
        # Bank writes and forwards never overlap (both normally run on the worker thread; this makes it certain).
        self._bank_lock = threading.Lock()
        # Slots of members nothing holds any more, appended by their finalizers from whichever thread dropped the
        # last reference: list.append and list.pop are atomic, and the list holds no reference to the engine.
        self._free: list[int] = []
        self._next_slot = 0

    @property
    def prefix_cache(self) -> bool:
        """Whether prompts run from cached keys and values (decoder-only families that support it)."""
        return self.prompted.prefix_cache is not None

    # ---- loading ------------------------------------------------------------------------------------------------
    def member(self, pf: PromptFile) -> Member:
        """Write a prompt into a free slot of the bank and compute its cached prefix (a forward of the prompt alone:
        run it on the worker thread)."""
        prompt = pf.prompt.to(self.backbone.device)
        with self._bank_lock:
            if self._free:
                index = self._free.pop()
            else:
                index, self._next_slot = self._next_slot, self._next_slot + 1
            self.prompted.bank.put(index, prompt)
            self.prompted.warm([index])
        member = Member(prompt, index)
        weakref.finalize(member, self._free.append, index)
        return member

    def make_task(self, name: str, files: Sequence[PromptFile], *, where: str, upload: bool = False) -> ServedTask:
        """Validate prompt files against the model and build a task (K > 1 files: an ensemble).

        The format is :func:`~softprompt.core.templates.prompt_format`'s: the prompt's own template and instruction,
        else its built-in task's ``text_template``, else ``"{text}"``; the labels are its verbalizer, else its
        built-in task's. A task is looked up among the built-in
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
        known = builtin_task(meta.task)
        if upload and meta.task and known is None and not meta.verbalizer and not meta.template:
            raise PromptFileError(f"{where}: metadata field 'task' is {meta.task[:100]!r}, which is no built-in task, "
                                  "and the prompt carries no verbalizer or template of its own")
        fmt = prompt_format(meta, known, where)
        verbalizer = fmt.verbalizer
        for other in files[1:]:
            if dict(other.meta.verbalizer or verbalizer) != verbalizer:
                raise PromptFileError(f"{where}: ensemble members disagree on the verbalizer")
            if (other.meta.template, other.meta.instruction) != (meta.template, meta.instruction):
                raise PromptFileError(f"{where}: ensemble members disagree on the template or instruction")
        for label, word in verbalizer.items():
            if not self.backbone.tokenizer(word, add_special_tokens=False)["input_ids"]:
                raise PromptFileError(f"{where}: label {label!r} has target text {word!r}, which is no tokens")
        members = tuple(self.member(pf) for pf in files)
        label_ids = single_token_ids(self.backbone, tuple(verbalizer.values())) if verbalizer else None
        return ServedTask(name, members, fmt.template, tuple(verbalizer), tuple(verbalizer.values()), meta.task,
                          meta.base_model, fmt.instruction,
                          label_ids=None if label_ids is None else tuple(label_ids))

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
    def _chunks(self, lengths: Sequence[int]) -> list[list[int]]:
        """Row indices grouped into forwards: shortest rows first, at most ``max_batch_rows`` rows, cut where
        padding would pass ``PAD_SLACK`` × the real tokens (on CPU a forward costs rows × its longest row)."""
        return length_chunks(lengths, self.max_batch_rows, pad_slack=PAD_SLACK)

    def _input_lengths(self, texts: Sequence[str]) -> dict[str, int]:
        unique = sorted(set(texts))
        return dict(zip(unique, map(len, encode_inputs(self.backbone.tokenizer, unique, self.max_input_tokens)),
                        strict=True))

    def _next_scores(self, rows: Sequence[tuple[int, str, tuple[int, ...]]], lengths: dict[str, int]
                     ) -> list[list[float]]:
        """Log-probabilities of the one-token label ids of each (slot, input, label ids) row, all from the
        distribution of the token after the input."""
        out: list[list[float]] = [[] for _ in rows]
        for idx in self._chunks([lengths[r[1]] for r in rows]):
            chunk = [rows[i] for i in idx]
            ids, mask = make_input_batch(self.backbone.tokenizer, [r[1] for r in chunk], self.max_input_tokens)
            logp = self.prompted.next_token_logprobs(ids, mask, torch.tensor([r[0] for r in chunk])).cpu()
            for row, (i, r) in enumerate(zip(idx, chunk, strict=True)):
                out[i] = logp[row, list(r[2])].tolist()
        return out

    def _scores(self, rows: Sequence[tuple[int, str, str]], lengths: dict[str, int]) -> list[float]:
        """Summed log-likelihood of each (slot, input, target) row."""
        tok = self.backbone.tokenizer
        words = sorted({r[2] for r in rows})
        target_lengths = dict(zip(words, map(len, tokenize(tok, words, add_special_tokens=False)), strict=True))
        out = [0.0] * len(rows)
        for idx in self._chunks([lengths[r[1]] + target_lengths[r[2]] for r in rows]):
            chunk = [rows[i] for i in idx]
            batch = make_batch(tok, [r[1] for r in chunk], [r[2] for r in chunk],
                               encoder_decoder=self.backbone.is_encoder_decoder,
                               max_input_tokens=self.max_input_tokens)
            values = self.prompted.sequence_logprob(batch, torch.tensor([r[0] for r in chunk]))
            for i, v in zip(idx, values.float().cpu().tolist(), strict=True):
                out[i] = v
        return out

    def _generate(self, rows: Sequence[tuple[int, str, int]], lengths: dict[str, int]) -> list[str]:
        """Greedy output text of each (slot, input, max_new_tokens) row (per-row limits share a forward)."""
        out = [""] * len(rows)
        for idx in self._chunks([lengths[r[1]] for r in rows]):
            chunk = [rows[i] for i in idx]
            gen = self.prompted.generate([r[1] for r in chunk], torch.tensor([r[0] for r in chunk]),
                                         max_new_tokens=[r[2] for r in chunk], max_input_tokens=self.max_input_tokens)
            for i, t in zip(idx, gen, strict=True):
                out[i] = t
        return out

    def _check_context(self, job: Job, formatted: Sequence[str], lengths: dict[str, int]) -> bool:
        """False (and ``job.error`` set) when an input has nothing to predict from: its job alone fails (422)."""
        n = len(job.task.members)
        ok = self.prompted.has_context(torch.tensor([lengths[t] for t in formatted for _ in range(n)]),
                                       torch.tensor([m.index for _ in formatted for m in job.task.members]))
        bad = sorted({r // n for r in torch.nonzero(~ok).flatten().tolist()})
        if bad:
            job.error = NoContextError(bad, [job.inputs[i] for i in bad])
        return not bad

    @torch.no_grad()
    def run(self, jobs: Sequence[Job]) -> None:
        """Answer every job, filling ``job.result`` (or ``job.error`` for a job with an input that has nothing to
        predict from): all classification rows of all jobs share forwards, and so do all generation rows."""
        with self._bank_lock:
            self._run(jobs)

    def _run(self, jobs: Sequence[Job]) -> None:
        formatted = {id(job): [job.task.format(t) for t in job.inputs] for job in jobs}
        lengths = self._input_lengths([t for texts in formatted.values() for t in texts])
        live = [job for job in jobs if self._check_context(job, formatted[id(job)], lengths)]
        next_rows: list[tuple[int, str, tuple[int, ...]]] = []
        seq_rows: list[tuple[int, str, str]] = []
        gen_rows: list[tuple[int, str, int]] = []
        for job in live:
            for i, text in enumerate(formatted[id(job)]):
                for m in job.task.members:
                    if job.kind == "generate":
                        gen_rows.append((m.index, text, job.max_new_tokens))
                    elif job.label_ids() is not None:
                        next_rows.append((m.index, text, job.task.label_ids))
                    else:
                        seq_rows += [(m.index, text, w) for w in job.targets(i)[1]]
        next_scores = self._next_scores(next_rows, lengths) if next_rows else []
        seq_scores = self._scores(seq_rows, lengths) if seq_rows else []
        texts = self._generate(gen_rows, lengths) if gen_rows else []
        ni = si = gi = 0
        for job in live:
            n = len(job.task.members)
            job.result = []
            for i, text in enumerate(job.inputs):
                if job.kind == "classify":
                    labels, words = job.targets(i)
                    k = len(words)
                    if job.label_ids() is not None:
                        per_member = next_scores[ni:ni + n]
                        ni += n
                    else:
                        per_member = [seq_scores[si + j * k: si + (j + 1) * k] for j in range(n)]
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
