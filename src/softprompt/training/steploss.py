"""The loss of one optimizer step: the mean target NLL over every target token of the step, whatever the step is
split into (micro-batches for gradient accumulation, blocks of rows for data-parallel processes).

A mean per micro-batch divided by the number of micro-batches would weight a token by 1 / (its micro-batch's token
count): unless every target has the same length, that is not the gradient of the batch the step stands for. So the
step's micro-batches are tokenized first, their target tokens counted (summed over processes), and each micro-batch
contributes its *summed* NLL / that count. The one training loop (:mod:`softprompt.training.loop`) takes every
method's gradient here: prompt tuning's, model tuning's and LM adaptation's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from softprompt.core.prompted import PromptedModel
from softprompt.core.tokenize import Batch

if TYPE_CHECKING:
    from softprompt.training.distributed import DistContext


def step_token_count(batches: Sequence[Batch], device: torch.device, dist: DistContext | None = None) -> Tensor:
    """The step's target tokens over all its micro-batches (and processes), at least 1: what a step's loss divides by.

    Batch.target_lengths counts exactly the tokens a target log-prob masks in, so no forward is needed to count.
    """
    count = torch.stack([b.target_lengths.sum() for b in batches]).sum().to(device=device, dtype=torch.float32)
    if dist is not None:
        dist.all_reduce_sum(count)
    return count.clamp(min=1)


def backward_step(pm: PromptedModel, batches: Sequence[Batch], *, scaler: torch.amp.GradScaler | None = None,
                  dist: DistContext | None = None, params: Sequence[nn.Parameter] | None = None) -> float:
    """Accumulate into the trainable parameters the gradient of the step's mean target NLL; returns that loss.

    ``batches`` are this process's micro-batches of the step (each [b, T]); every row uses the bank's prompt 0
    (training holds one). With ``dist`` the token count is every process's and the gradients of ``params`` (default:
    the bank's trainable parameters; a method that trains the backbone's weights names them) and the returned loss
    are summed over processes, so each process ends with the gradient of the whole step. With ``scaler`` (fp16) the
    gradients are those of the scaled loss; ``scaler.step`` unscales them.
    """
    device = pm.backbone.device
    count = step_token_count(batches, device, dist)
    total = torch.zeros((), device=device)
    for batch in batches:
        logp, _ = pm.target_logprobs(batch, torch.zeros(len(batch.target_lengths), dtype=torch.long))
        loss = -logp.sum() / count
        (loss if scaler is None else scaler.scale(loss)).backward()
        total += loss.detach()
    if dist is None:
        return float(total)
    # The parameter list is the same on every process (same model, same order), so the all_reduces pair up.
    trained = [p for p in pm.parameters() if p.requires_grad] if params is None else list(params)
    return dist.sync_grads(trained, float(total))
