"""Run by ``torchrun`` from tests/test_distributed.py: the same prompt-tuning runs as the test's single process,
split over this process group. Not a test module itself (no ``test_`` prefix)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import ClassVar

import torch

os.environ["HF_HUB_OFFLINE"] = "1"
torch.set_num_threads(1)

from softprompt.core.backbone import Backbone, make_backbone  # noqa: E402
from softprompt.core.tiny import tiny_model  # noqa: E402
from softprompt.tasks.base import Example, Task  # noqa: E402
from softprompt.training.distributed import DistContext, shard_backbone  # noqa: E402
from softprompt.training.prompt_tuning import TrainConfig, train_prompt  # noqa: E402


class ToyTask(Task):
    """Classify a number's parity; targets of different token lengths (" no" 3 bytes, " yes" 4)."""

    name = "toy"
    verbalizer: ClassVar[dict[str, str]] = {"0": " no", "1": " yes"}

    def read(self, path: Path) -> list[Example]:
        return toy_examples()


def toy_examples(n: int = 24) -> list[Example]:
    words = (" no", " yes")
    return [Example(f"number {i * 7 % 23}", words[i % 2], words) for i in range(n)]


def toy_backbone() -> Backbone:
    model, tokenizer = tiny_model("llama", seed=0)
    return make_backbone(model, tokenizer, "tiny-llama")


def config(steps: int, grad_accum: int = 1) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=8, grad_accum=grad_accum, prompt_length=4, init="sampled-vocab",
                       optimizer="adam", lr=0.05, seed=3, save_every=1)


def main(out: Path) -> None:
    dist = DistContext.from_env()
    assert dist is not None and dist.world_size == 2, "run under torchrun --nproc_per_node 2"
    task, train = ToyTask(), toy_examples()
    backbone = toy_backbone()
    # Interrupted run: 2 steps, then resumed to 4 from its checkpoint.
    train_prompt(backbone, task, train, config(2), out / "dp.safetensors", progress=False, dist=dist)
    train_prompt(backbone, task, train, config(4), out / "dp.safetensors", resume=True, progress=False, dist=dist)
    # Gradient accumulation splits each micro-batch over the processes too.
    train_prompt(backbone, task, train, config(3, grad_accum=2), out / "accum.safetensors", progress=False,
                 dist=dist)
    # FSDP: the frozen blocks sharded over the two processes.
    sharded = toy_backbone()
    blocks = shard_backbone(sharded, dist)
    assert blocks == 2, blocks
    train_prompt(sharded, task, train, config(4), out / "fsdp.safetensors", progress=False, dist=dist)
    if dist.is_main:
        assert not (out / "rank1.txt").exists()
    (out / f"rank{dist.rank}.done").write_text("ok")
    dist.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
