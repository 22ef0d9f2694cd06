"""Data-parallel prompt tuning: 2 processes × b rows train the same prompt as 1 process × 2b rows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from softprompt.core.promptfile import check_compatible, load_prompt
from softprompt.training.distributed import DistContext
from softprompt.training.prompt_tuning import initial_prompt, train_prompt
from tests.conftest import tiny_backbone
from tests.toytask import ToyTask, toy_examples, train_config

SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(SRC.parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(Path(__file__).parent / "dist_worker.py"), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def single_process(tmp_path: Path, steps: int, grad_accum: int = 1) -> torch.Tensor:
    result = train_prompt(tiny_backbone("llama"), ToyTask(), toy_examples(), train_config(steps, grad_accum),
                          tmp_path / f"single{steps}-{grad_accum}.safetensors", progress=False)
    return result.prompt


def test_two_processes_match_one_process_with_resume(two_process_run: Path, tmp_path: Path) -> None:
    reference = single_process(tmp_path, 4)
    dp = load_prompt(two_process_run / "dp.safetensors").prompt
    torch.testing.assert_close(dp, reference, rtol=1e-4, atol=1e-5)
    # The prompt must have moved from its init, or the comparison proves nothing.
    start = initial_prompt(tiny_backbone("llama"), ToyTask(), train_config(4))
    assert float((dp - start).abs().max()) > 1e-2


def test_two_processes_with_grad_accum(two_process_run: Path, tmp_path: Path) -> None:
    reference = single_process(tmp_path, 3, grad_accum=2)
    torch.testing.assert_close(load_prompt(two_process_run / "accum.safetensors").prompt, reference,
                               rtol=1e-4, atol=1e-5)


def test_fsdp_sharded_backbone_matches(two_process_run: Path, tmp_path: Path) -> None:
    reference = single_process(tmp_path, 4)
    pf = load_prompt(two_process_run / "fsdp.safetensors")
    torch.testing.assert_close(pf.prompt, reference, rtol=1e-4, atol=1e-5)
    # Fingerprinted from sharded blocks, the file still names the unsharded model: it loads onto a plain one.
    check_compatible(pf, tiny_backbone("llama"))


def test_only_rank0_writes(two_process_run: Path) -> None:
    assert (two_process_run / "rank0.done").is_file() and (two_process_run / "rank1.done").is_file()
    log = (two_process_run / "dp.metrics.jsonl").read_text().splitlines()
    # The resumed run kept steps 1-2 and appended 3-4 once: a second writer would have duplicated lines.
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3, 4]


def test_shard_takes_contiguous_blocks() -> None:
    ctx = DistContext(rank=1, world_size=2, device=torch.device("cpu"))
    assert ctx.shard([5, 6, 7, 8]) == [7, 8]
    with pytest.raises(ValueError, match="multiple of the process count"):
        ctx.shard([1, 2, 3])


def test_single_process_has_no_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert DistContext.from_env() is None
