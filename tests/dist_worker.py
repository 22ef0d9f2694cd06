"""Run by ``torchrun`` from tests/test_distributed.py: the same prompt-tuning runs of the toy task as the test's single
process, split over this process group. Not a test module itself (no ``test_`` prefix); the repository root must be
on ``PYTHONPATH`` (for tests.toytask)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

os.environ["HF_HUB_OFFLINE"] = "1"
torch.set_num_threads(1)

from softprompt.core.tiny import tiny_backbone  # noqa: E402
from softprompt.training.distributed import DistContext, shard_backbone  # noqa: E402
from softprompt.training.prompt_tuning import train_prompt  # noqa: E402
from tests.toytask import ToyTask, toy_examples, train_config  # noqa: E402


def main(out: Path) -> None:
    dist = DistContext.from_env()
    assert dist is not None and dist.world_size == 2, "run under torchrun --nproc_per_node 2"
    task, train = ToyTask(), toy_examples()
    backbone = tiny_backbone("llama")
    # Interrupted run: 2 steps, then resumed to 4 from its checkpoint.
    train_prompt(backbone, task, train, train_config(2), out / "dp.safetensors", progress=False, dist=dist)
    train_prompt(backbone, task, train, train_config(4), out / "dp.safetensors", resume=True, progress=False, dist=dist)
    # Gradient accumulation splits each micro-batch over the processes too.
    train_prompt(backbone, task, train, train_config(3, grad_accum=2), out / "accum.safetensors", progress=False,
                 dist=dist)
    # FSDP: the frozen blocks sharded over the two processes.
    sharded = tiny_backbone("llama")
    blocks = shard_backbone(sharded, dist)
    assert blocks == 2, blocks
    train_prompt(sharded, task, train, train_config(4), out / "fsdp.safetensors", progress=False, dist=dist)
    if dist.is_main:
        assert not (out / "rank1.txt").exists()
    (out / f"rank{dist.rank}.done").write_text("ok")
    dist.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
