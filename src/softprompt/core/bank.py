"""A bank of N soft prompts as one ``[N, P, H]`` parameter, gathered per batch row by a prompt index.

Training holds N = 1; an ensemble holds its K prompts; a server holds every served prompt (tasks keep indices into
it, :meth:`PromptBank.put` writes a newly loaded one). Prompts of different lengths share the bank: each is stored
left-aligned in P = max length slots and ``lengths[n]`` says how many slots prompt n uses;
:func:`softprompt.core.splice.splice` drops the unused slots.

What the splice receives is :meth:`PromptBank.folded`: ``weight`` itself here; a reparameterised bank
(:mod:`softprompt.training.reparam`) computes it from ``weight`` and its own parameters, so training with a
reparameterisation goes through the same gather and the same splice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class PromptBank(nn.Module):
    """N prompts ``weight[N, P, H]`` with per-prompt lengths ``lengths[N]``."""

    def __init__(self, prompts: Tensor, lengths: Tensor | None = None) -> None:
        super().__init__()
        if prompts.dim() != 3:
            raise ValueError(f"a prompt bank is [N, P, H], got shape {tuple(prompts.shape)}")
        n, p, _ = prompts.shape
        self.weight = nn.Parameter(prompts.detach().clone().float())
        if lengths is None:
            lengths = torch.full((n,), p, dtype=torch.long)
        if lengths.shape != (n,) or bool((lengths < 0).any()) or bool((lengths > p).any()):
            raise ValueError(f"lengths must be [N] in 0..{p}, got {lengths.tolist()}")
        self.register_buffer("lengths", lengths.long().clone(), persistent=False)

    @classmethod
    def from_prompts(cls, prompts: Sequence[Tensor]) -> PromptBank:
        """Stack prompts ``[P_n, H]`` of possibly different lengths into one bank."""
        if not prompts:
            raise ValueError("a prompt bank needs at least one prompt")
        hidden = {int(p.shape[-1]) for p in prompts}
        if len(hidden) != 1:
            raise ValueError(f"prompts of different hidden sizes cannot share a bank: {sorted(hidden)}")
        width = max(int(p.shape[0]) for p in prompts)
        stacked = torch.zeros(len(prompts), width, hidden.pop())
        for i, p in enumerate(prompts):
            stacked[i, : p.shape[0]] = p.detach().float()
        return cls(stacked, torch.tensor([int(p.shape[0]) for p in prompts]))

    @property
    def num_prompts(self) -> int:
        return int(self.weight.shape[0])

    @property
    def max_length(self) -> int:
        return int(self.weight.shape[1])

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[2])

    def folded(self) -> Tensor:
        """[N, P, H] the prompts the splice receives (a plain bank stores them as they are)."""
        return self.weight

    @torch.no_grad()
    def put(self, n: int, prompt: Tensor) -> None:
        """Store ``prompt`` [P_n, H] in slot n, overwriting it; the bank grows when n ≥ N (to at least twice its
        slots, so that loading prompt after prompt copies the bank O(log N) times) or P_n > P. Slots never written
        hold a zero-length prompt. For a bank that is served, not trained (no gradient flows through this write)."""
        if prompt.dim() != 2 or prompt.shape[1] != self.hidden_size:
            raise ValueError(f"a prompt for this bank is [P, {self.hidden_size}], got shape {tuple(prompt.shape)}")
        n_old, p_old = self.num_prompts, self.max_length
        slots = max(n + 1, 2 * n_old) if n >= n_old else n_old
        width = max(p_old, int(prompt.shape[0]))
        if (slots, width) != (n_old, p_old):
            weight = self.weight.new_zeros(slots, width, self.hidden_size)
            weight[:n_old, :p_old] = self.weight
            self.weight = nn.Parameter(weight, requires_grad=self.weight.requires_grad)
            lengths = self.lengths.new_zeros(slots)
            lengths[:n_old] = self.lengths
            self.lengths = lengths
        self.weight[n].zero_()
        self.weight[n, : prompt.shape[0]] = prompt.to(self.weight)
        self.lengths[n] = int(prompt.shape[0])

    def prompt(self, n: int) -> Tensor:
        """Prompt n without its unused slots: [P_n, H]."""
        return self.folded()[n, : int(self.lengths[n])]

    def forward(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """index [B] long → (prompts [B, P, H], prompt_mask [B, P])."""
        if index.dim() != 1:
            raise ValueError(f"prompt index must be [B], got shape {tuple(index.shape)}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_prompts):
            raise IndexError(f"prompt index out of range 0..{self.num_prompts - 1}: {index.tolist()}")
        index = index.to(self.weight.device)
        prompts = self.folded()
        slots = torch.arange(self.max_length, device=self.weight.device)
        mask = (slots.unsqueeze(0) < self.lengths.to(self.weight.device)[index].unsqueeze(1)).long()
        # index_select, not weight[index]: its backward (index_add_) sums each row's gradients in a fixed order,
        # while advanced indexing's (index_put_ with accumulate) splits them over CPU threads in varying order,
        # which made runs with the same seed differ in the 5th digit (and lr-0.3 training amplifies that).
        return torch.index_select(prompts, 0, index), mask
