"""Residual prompt tuning (Razdaibiedina et al., 2023): during training each prompt vector passes through a shallow
MLP with a residual connection, ``P'_i = P_i + LayerNorm(W_up · ReLU(W_down · P_i + b_down) + b_up)``; one MLP is
shared by all P vectors (and all N prompts of the bank).

The MLP exists only while training. What the splice receives is the *folded* prompt ``P'`` (:meth:`folded`), so a
saved prompt is a plain ``[P, H]`` tensor that scores exactly as the training-time model did, and eval, ensembles,
serving and the prompt-file format need not know a reparameterisation was used. Choices and deviations from the
authors' code are in docs/design.md ("Residual reparameterisation").
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from softprompt.core.bank import PromptBank

Reparam = Literal["none", "residual"]
REPARAMS: tuple[str, ...] = ("none", "residual")

# The authors' code defaults to a bottleneck of 800 for T5-Base (H = 768), about H; softprompt's built-in models have
# H = 576 to 1,536, so 800 is the same order for them.
DEFAULT_BOTTLENECK = 800


def _linear(fan_in: int, fan_out: int, generator: torch.Generator) -> nn.Linear:
    """``nn.Linear(fan_in, fan_out)`` with torch's default init, U(±1/√fan_in) for weight and bias, drawn from
    ``generator`` rather than the global RNG: a run's MLP is a function of its seed alone."""
    layer = torch.nn.utils.skip_init(nn.Linear, fan_in, fan_out)
    bound = 1 / math.sqrt(fan_in)
    with torch.no_grad():
        for p in (layer.weight, layer.bias):
            nn.init.uniform_(p, -bound, bound, generator=generator)
    return layer


class ResidualPromptBank(PromptBank):
    """A bank of raw prompts ``weight[N, P, H]`` whose folded prompts add a shared residual MLP's output."""

    def __init__(self, prompts: Tensor, bottleneck: int, *, seed: int = 0) -> None:
        super().__init__(prompts)
        if bottleneck < 1:
            raise ValueError(f"reparam bottleneck must be >= 1, got {bottleneck}")
        h = self.hidden_size
        g = torch.Generator().manual_seed(seed)
        self.down = _linear(h, bottleneck, g)
        self.up = _linear(bottleneck, h, g)
        self.norm = nn.LayerNorm(h)
        # The authors keep LayerNorm's default gain of 1, so the MLP adds a unit-RMS vector to every prompt row from
        # the start: small next to T5's large embeddings, but as large as Gemma 3's (std 1.0) and 7x / 50x those of
        # smollm2 (0.14) and Qwen 2.5 (0.02), which would bury the init. A zero gain makes the folded prompt equal the
        # init at step 0; the first step moves the gain by about lr, so the MLP's share grows in the units of the
        # prompt's own steps (lr auto is a fraction of the embedding scale).
        nn.init.zeros_(self.norm.weight)

    def folded(self) -> Tensor:
        """[N, P, H] ``weight + LayerNorm(up(ReLU(down(weight))))``: the prompts the splice receives."""
        return self.weight + self.norm(self.up(torch.relu(self.down(self.weight))))


def make_bank(prompts: Tensor, reparam: str = "none", bottleneck: int = DEFAULT_BOTTLENECK, *, seed: int = 0
              ) -> PromptBank:
    """The bank a run trains, from its initial prompts ``[N, P, H]``: plain, or residual-reparameterised."""
    if reparam == "none":
        return PromptBank(prompts)
    if reparam == "residual":
        return ResidualPromptBank(prompts, bottleneck, seed=seed)
    raise ValueError(f"unknown reparam {reparam!r}; choose one of {', '.join(REPARAMS)}")


@torch.no_grad()
def fold(bank: PromptBank, n: int = 0) -> Tensor:
    """Prompt n of ``bank`` as a plain ``[P_n, H]`` tensor (detached, a copy): what a prompt file stores."""
    return bank.prompt(n).detach().clone()
