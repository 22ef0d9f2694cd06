"""Data-parallel prompt tuning over several processes (``torchrun`` or ``accelerate launch``), and FSDP sharding
of the frozen backbone for models that do not fit one device.

Notation: W processes (world size), b rows per process, B = W × b rows per micro-batch.

Design: every process holds the whole ``[P, H]`` prompt and the same optimizer state. A step's rows come from
:func:`softprompt.training.loop.batch_indices` exactly as in one process; process r takes the r-th contiguous block of
them. Each process computes its share of the *global* mean loss (its summed target NLL over the target-token count
of all processes and micro-batches: :func:`softprompt.training.steploss.backward_step`), the prompt's gradient is summed
across processes, and every process takes the same optimizer step. So W processes × b rows follow the same
trajectory as 1 process × W·b rows (up to float summation order), a run may resume on a different number of
processes, and ``TrainConfig.batch_size`` always means the global batch.

Alternatives rejected: DDP (it wraps a module whose parameters all train; here only one small tensor does, so one
``all_reduce`` is the whole of it) and ``Accelerator.prepare`` of the backbone (it would wrap the frozen model for
nothing). Accelerate is still the launcher and the device/backend picker (:class:`accelerate.PartialState`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from softprompt.core.backbone import Backbone

# Environment variables that `accelerate launch --use_fsdp` (or an accelerate config with FSDP) sets.
ACCELERATE_FSDP_ENV = "ACCELERATE_USE_FSDP"


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel group."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and logs."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistContext | None:
        """The group a launcher started this process in, or None for a single process.

        ``torchrun`` and ``accelerate launch`` both set ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``/``MASTER_ADDR``;
        Accelerate's ``PartialState`` initialises the process group with the right backend (NCCL on GPUs, gloo on
        CPUs) and picks this process's device (``cuda:LOCAL_RANK`` on a GPU node).
        """
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        from accelerate import PartialState

        # With no accelerator (or `accelerate launch --cpu`), Accelerate must be told to use CPU processes (gloo).
        accel = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
        cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() == "true" or not accel
        state = PartialState(cpu=cpu)
        return cls(rank=state.process_index, world_size=state.num_processes, device=state.device)

    def shard(self, indices: list[int]) -> list[int]:
        """This process's contiguous block of a micro-batch's example indices ([B] → [b])."""
        if len(indices) % self.world_size:
            raise ValueError(f"a micro-batch of {len(indices)} rows does not split over {self.world_size} "
                             "processes; make batch_size / grad_accum a multiple of the process count")
        size = len(indices) // self.world_size
        return indices[self.rank * size:(self.rank + 1) * size]

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over processes, in place."""
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
        return tensor

    def broadcast(self, tensor: Tensor, src: int = 0) -> Tensor:
        """Overwrite ``tensor`` with process ``src``'s, in place (collectives need it on this process's device)."""
        moved = tensor.to(self.device)
        tdist.broadcast(moved, src=src)
        tensor.copy_(moved.to(tensor.device))
        return tensor

    def barrier(self) -> None:
        tdist.barrier()

    def close(self) -> None:
        """Leave the group once every process is done. A process that exits with its gloo group still alive can
        abort in the backend's thread teardown ("terminate called without an active exception")."""
        if tdist.is_initialized():
            tdist.barrier()
            tdist.destroy_process_group()

    def sync_grads(self, params: list[nn.Parameter], loss: float) -> float:
        """Sum the prompt's gradients (and the logged loss) over processes; returns the global loss."""
        for p in params:
            if p.grad is not None:
                self.all_reduce_sum(p.grad)
        total = torch.tensor([loss], dtype=torch.float64, device=params[0].device)
        return float(self.all_reduce_sum(total).item())


def fsdp_requested() -> bool:
    """True when Accelerate's config or launcher asked for FSDP (``accelerate launch --use_fsdp``)."""
    return os.environ.get(ACCELERATE_FSDP_ENV, "false").lower() in ("1", "true", "yes")


def shard_backbone(backbone: Backbone, ctx: DistContext) -> int:
    """Shard the frozen backbone's transformer blocks over the group with FSDP2 (``fully_shard``); returns the
    number of blocks sharded.

    Each block's weights are split W ways and all-gathered just for its forward and backward, so a model W times
    larger than one device's memory fits (activations and the replicated parts aside). The embedding table and
    the LM head stay replicated: the splice embeds tokens *outside* the model's forward, and FSDP only gathers
    weights inside the forward of a module it wraps. Every process must then run every forward (training and
    validation), which the trainer does. Blocks are the model's ``_no_split_modules`` classes (Hugging Face's
    own list of layers that must stay whole).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = backbone.model
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(model).__name__} lists no transformer blocks (_no_split_modules); cannot shard it")
    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    return len(blocks)
