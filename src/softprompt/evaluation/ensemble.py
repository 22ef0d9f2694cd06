"""Prompt ensembles (the paper's section 6): N prompts for one task on one frozen model, scored in one batched pass.

The N prompts share one :class:`~softprompt.core.bank.PromptBank`; :func:`~softprompt.evaluation.scoring.score_choices`
lays out examples × choices × prompts as rows of the same forward passes (the one splice gathers each row's prompt), so
an ensemble costs one pass over N × E × K rows instead of N passes over E × K rows. Notation: N prompts, E examples, K
choices.

Combinations of the per-prompt scores ``[N, E, K]``:

- each prompt alone, the *average* of those metrics and the *best* single prompt (picked on the same examples it
  is scored on, as in the paper's Table 3: an optimistic oracle, not a held-out selection);
- *vote*: each prompt votes for its top choice; a tie between choices is broken by the higher mean probability
  (below), then by the lower choice index — so the rule is deterministic and uses the prompts' confidence first;
- *mean-prob*: softmax over each example's choices per prompt, mean over prompts, top choice (ties: lower index).

Generation tasks have no choice scores: the ensemble greedily generates with every prompt (again one batched pass,
rows carrying their prompt index) and takes a majority vote over the generated strings; a tie goes to the string of
the lowest-numbered prompt among the tied. There is no mean-prob for generation.

Speed (bench/ensemble_bench.py measures each): rows are laid out in order of length before chunking
(:func:`~softprompt.core.tokenize.length_chunks`, as the server lays out its rows), so a chunk holds rows of nearly
equal length and pads little; when every choice is one token (most verbalizers), the K choices of an (example,
prompt) share one row, since they differ only in the token being scored; and on decoder-only models each prompt's
columns are computed once and read from the prefix cache inside :class:`~softprompt.core.prompted.PromptedModel`
(:mod:`softprompt.core.prefix_cache`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from softprompt.core.backbone import Backbone
from softprompt.core.bank import PromptBank
from softprompt.core.prompted import PromptedModel
from softprompt.core.promptfile import PromptFile, PromptMeta, check_compatible, load_prompt
from softprompt.evaluation.scoring import input_lengths, row_chunks, score_choices
from softprompt.tasks.base import Example, Task

PromptSource = str | Path | Tensor | PromptFile


def choice_probabilities(scores: Tensor) -> Tensor:
    """Softmax over each example's choices: scores [N, E, K] log-likelihoods (−inf past an example's choices) →
    [N, E, K] probabilities (0 past its choices)."""
    return torch.softmax(scores.float(), dim=-1)


def mean_probability(scores: Tensor) -> Tensor:
    """[N, E, K] scores → [E] choice index with the highest probability averaged over prompts (ties: lower index,
    as ``argmax`` returns the first maximum)."""
    return choice_probabilities(scores).mean(dim=0).argmax(dim=-1)


def majority_vote(scores: Tensor) -> Tensor:
    """[N, E, K] scores → [E] choice index with the most prompt votes.

    Each prompt votes for its top choice (its own ties: lower index). Choices tied on votes are separated by the
    mean probability over prompts, then by the lower choice index.
    """
    k = scores.shape[-1]
    votes = torch.nn.functional.one_hot(scores.argmax(dim=-1), k).sum(dim=0)  # [E, K]
    # Votes are integers ≤ N and mean probabilities lie in [0, 1], so votes + prob / 2 orders by votes first and
    # breaks ties by probability; argmax's first-maximum rule then takes the lower index among exact ties.
    mean_prob = choice_probabilities(scores).mean(dim=0)  # [E, K]
    return (votes.double() + mean_prob.double() / 2).argmax(dim=-1)


def vote_strings(predictions: Sequence[Sequence[str]]) -> list[str]:
    """Majority vote over generated strings: predictions [N][E] → [E]. A tie goes to the tied string that the
    lowest-numbered prompt produced."""
    if not predictions:
        raise ValueError("no prompts to vote")
    out = []
    for column in zip(*predictions, strict=True):
        counts = Counter(column)
        top = max(counts.values())
        out.append(next(s for s in column if counts[s] == top))
    return out


@dataclass
class EnsembleResult:
    """Metrics of each prompt and of each way of combining them (the paper's Table 3)."""

    task: str
    metric: str  # the task's primary metric, which picks the best prompt
    names: list[str]
    per_prompt: list[dict[str, float]]
    average: dict[str, float]
    best_index: int
    vote: dict[str, float]
    mean_prob: dict[str, float] | None  # None for generation tasks
    examples: int
    predictions: dict[str, list[str]] = field(default_factory=dict, repr=False)
    scores: Tensor | None = field(default=None, repr=False)  # [N, E, K] for classification

    @property
    def best(self) -> dict[str, float]:
        return self.per_prompt[self.best_index]

    def rows(self) -> list[tuple[str, float]]:
        """(label, primary metric) in table order: each prompt, average, best, vote, mean-prob."""
        m = self.metric
        out = [(name, r[m]) for name, r in zip(self.names, self.per_prompt, strict=True)]
        out += [("average", self.average[m]), (f"best single ({self.names[self.best_index]})", self.best[m]),
                ("majority vote", self.vote[m])]
        if self.mean_prob is not None:
            out.append(("mean probability", self.mean_prob[m]))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary; flat ``average_/best_/vote_/mean_prob_<metric>`` keys for the primary metric."""
        m = self.metric
        out: dict[str, Any] = {
            "task": self.task, "metric": m, "examples": self.examples, "prompts": self.names,
            "per_prompt": [{"name": n, **r} for n, r in zip(self.names, self.per_prompt, strict=True)],
            f"average_{m}": self.average[m], f"best_{m}": self.best[m], "best_prompt": self.names[self.best_index],
            f"vote_{m}": self.vote[m], "methods": {"average": self.average, "best": self.best, "vote": self.vote},
        }
        if self.mean_prob is not None:
            out[f"mean_prob_{m}"] = self.mean_prob[m]
            out["methods"]["mean_prob"] = self.mean_prob
        return out


class Ensemble:
    """N prompts for one frozen backbone, held in ONE prompt bank.

    ``prompts``: prompt files (paths, checked with :func:`~softprompt.core.promptfile.check_compatible`), loaded
    :class:`PromptFile` s, or bare ``[P, H]`` tensors. Prompts of different lengths are fine (the bank masks the
    unused slots). ``allow_other_model``: see :func:`~softprompt.core.promptfile.check_compatible`.
    """

    def __init__(self, backbone: Backbone, prompts: Sequence[PromptSource], names: Sequence[str] | None = None,
                 *, allow_other_model: bool = False) -> None:
        if not prompts:
            raise ValueError("an ensemble needs at least one prompt")
        tensors: list[Tensor] = []
        self.metas: list[PromptMeta | None] = []
        default_names = []
        for i, src in enumerate(prompts):
            if isinstance(src, str | Path):
                pf = load_prompt(src)
                check_compatible(pf, backbone, where=str(src), allow_other_model=allow_other_model)
                tensors.append(pf.prompt)
                self.metas.append(pf.meta)
                default_names.append(Path(src).stem)
            elif isinstance(src, PromptFile):
                check_compatible(src, backbone, where=f"prompt {i}", allow_other_model=allow_other_model)
                tensors.append(src.prompt)
                self.metas.append(src.meta)
                default_names.append(f"prompt{i}")
            else:
                if src.dim() != 2:
                    raise ValueError(f"prompt {i}: a prompt tensor is [P, H], got shape {tuple(src.shape)}")
                tensors.append(src)
                self.metas.append(None)
                default_names.append(f"prompt{i}")
        self.names = list(names) if names is not None else default_names
        if len(self.names) != len(tensors):
            raise ValueError(f"{len(self.names)} names for {len(tensors)} prompts")
        self.model = PromptedModel(backbone, PromptBank.from_prompts(tensors))

    @property
    def num_prompts(self) -> int:
        return self.model.bank.num_prompts

    def score(self, examples: Sequence[Example], *, batch_size: int = 64, instruction: str = "",
              max_input_tokens: int = 256, sort_by_length: bool = True, share_prefix: bool = True,
              progress: bool = False) -> Tensor:
        """Log-likelihood of every choice under every prompt: [N, E, K], in one batched pass of N × E × K rows
        (at most ``batch_size`` rows per forward: the memory budget), longest rows first unless
        ``sort_by_length`` is False (see :func:`~softprompt.evaluation.scoring.score_choices`).

        ``share_prefix``: when every choice is a single token on a decoder-only model (SST-2's " positive" /
        " negative", RTE's " yes" / " no"), the K rows of an (example, prompt) differ only in that last token, and
        the logits that score it come from the shared prefix; one row then scores all K choices (K times fewer rows,
        the same splice, the same numbers up to float rounding). False forces K rows per (example, prompt).
        """
        return score_choices(self.model, examples, range(self.num_prompts), batch_size=batch_size,
                             instruction=instruction, max_input_tokens=max_input_tokens, progress=progress,
                             share_prefix=share_prefix, sort_by_length=sort_by_length)

    @torch.no_grad()
    def generate(self, examples: Sequence[Example], *, batch_size: int = 16, instruction: str = "",
                 max_new_tokens: int = 32, max_input_tokens: int = 256, sort_by_length: bool = True
                 ) -> list[list[str]]:
        """Greedy output of every prompt for every example, [N][E], from rows (example, prompt) batched together
        (longest inputs first unless ``sort_by_length`` is False)."""
        texts = [instruction + e.input for e in examples]
        rows = [(n, e) for e in range(len(examples)) for n in range(self.num_prompts)]
        n_in = input_lengths(self.model, texts, max_input_tokens) if sort_by_length else None
        out = [[""] * len(examples) for _ in range(self.num_prompts)]
        for chunk in row_chunks(rows, batch_size, None if n_in is None else [n_in[e] for _, e in rows]):
            index = torch.tensor([n for n, _ in chunk], dtype=torch.long)
            generated = self.model.generate([texts[e] for _, e in chunk], index, max_new_tokens=max_new_tokens,
                                            max_input_tokens=max_input_tokens)
            for (n, e), text in zip(chunk, generated, strict=True):
                out[n][e] = text
        return out

    def evaluate(self, task: Task, examples: Sequence[Example], *, batch_size: int = 64, instruction: str = "",
                 max_new_tokens: int = 32, max_input_tokens: int = 256, sort_by_length: bool = True,
                 share_prefix: bool = True, progress: bool = False) -> EnsembleResult:
        """Score every prompt and every combination on ``examples`` (see the module docstring)."""
        if not examples:
            raise ValueError("no examples to evaluate")
        metric = task.primary_metric
        scores = None
        mean_prob = None
        if task.kind == "classification":
            scores = self.score(examples, batch_size=batch_size, instruction=instruction,
                                max_input_tokens=max_input_tokens, sort_by_length=sort_by_length,
                                share_prefix=share_prefix, progress=progress)
            per_prompt_preds = [_choice_texts(examples, s.argmax(dim=-1)) for s in scores]
            vote_preds = _choice_texts(examples, majority_vote(scores))
            mp_preds = _choice_texts(examples, mean_probability(scores))
            mean_prob = task.metrics(mp_preds, examples)
        else:
            per_prompt_preds = self.generate(examples, batch_size=batch_size, instruction=instruction,
                                             max_new_tokens=max_new_tokens, max_input_tokens=max_input_tokens,
                                             sort_by_length=sort_by_length)
            vote_preds = vote_strings(per_prompt_preds)
            mp_preds = None
        per_prompt = [task.metrics(p, examples) for p in per_prompt_preds]
        average = {k: sum(r[k] for r in per_prompt) / len(per_prompt) for k in per_prompt[0]}
        # max() keeps the first maximum: the lowest-numbered prompt wins a tie.
        best_index = max(range(len(per_prompt)), key=lambda i: (per_prompt[i][metric], -i))
        predictions = {**{f"prompt:{n}": p for n, p in zip(self.names, per_prompt_preds, strict=True)},
                       "vote": vote_preds}
        if mp_preds is not None:
            predictions["mean_prob"] = mp_preds
        return EnsembleResult(task=task.name, metric=metric, names=list(self.names), per_prompt=per_prompt,
                              average=average, best_index=best_index, vote=task.metrics(vote_preds, examples),
                              mean_prob=mean_prob, examples=len(examples), predictions=predictions, scores=scores)


def _choice_texts(examples: Sequence[Example], index: Tensor) -> list[str]:
    """[E] choice indices → the choices' texts."""
    return [e.choices[int(i)] for e, i in zip(examples, index, strict=True)]  # type: ignore[index]
