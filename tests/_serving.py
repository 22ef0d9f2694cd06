"""Helpers shared by the server tests: prompt files, offline predictions, live servers (tiny backbones come from
tests/conftest.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from safetensors.torch import save_file

from softprompt.core.backbone import Backbone
from softprompt.core.bank import PromptBank
from softprompt.core.prompted import PromptedModel
from softprompt.core.promptfile import PromptMeta, save_prompt
from softprompt.evaluation.scoring import score_choices
from softprompt.tasks import Example

VERBALIZER = {"neg": " no", "pos": " yes", "mid": " maybe"}
TEXTS = ["hello there", "a much longer input text, with commas", "x", "the film was fine", "", "ok?",
         "unicode: é ß 漢字", "{text} {0} braces stay literal"]


def write_prompt(backbone: Backbone, path: Path, length: int, seed: int, *, task: str = "",
                 verbalizer: dict[str, str] | None = None) -> torch.Tensor:
    """A random prompt [length, H] at the embeddings' scale, saved as a prompt file for ``backbone``."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randn(length, backbone.hidden_size, generator=g) * backbone.embedding_std() * 3
    meta = PromptMeta.for_backbone(backbone, length, task=task,
                                   verbalizer=VERBALIZER if verbalizer is None else verbalizer)
    save_prompt(path, prompt, meta)
    return prompt


def prompt_bytes(backbone: Backbone, length: int = 2, *, header_version: str = "2", meta_json: str | None = None,
                 **meta: object) -> bytes:
    """A prompt file's bytes with metadata fields overridden by ``meta`` (a value of ``...`` drops the field), or
    with ``meta_json`` as the metadata text, written without ``save_prompt``'s checks: the malformed files an
    upload may carry."""
    fields = {**PromptMeta.for_backbone(backbone, length, verbalizer=VERBALIZER).to_json(), **meta}
    fields = {k: v for k, v in fields.items() if v is not ...}
    header = {"format": "softprompt", "format_version": header_version,
              "softprompt": json.dumps(fields) if meta_json is None else meta_json}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.safetensors"
        save_file({"prompt": torch.randn(length, backbone.hidden_size) * 0.1}, str(path), metadata=header)
        return path.read_bytes()


def make_prompt_dir(backbone: Backbone, root: Path) -> dict[str, list[torch.Tensor]]:
    """Four single-prompt tasks (different lengths, one with the sst2 template and labels), a generation task and
    a 3-prompt ensemble. Returns task → its prompts."""
    root.mkdir(parents=True, exist_ok=True)
    out = {"a": [write_prompt(backbone, root / "a.safetensors", 4, 1)],
           "b": [write_prompt(backbone, root / "b.safetensors", 7, 2)],
           "c": [write_prompt(backbone, root / "c.safetensors", 1, 3)],
           "sent": [write_prompt(backbone, root / "sent.safetensors", 5, 4, task="sst2", verbalizer={})],
           "gen": [write_prompt(backbone, root / "gen.safetensors", 3, 5, verbalizer={})]}
    (root / "ens").mkdir(exist_ok=True)
    out["ens"] = [write_prompt(backbone, root / "ens" / f"m{i}.safetensors", 2 + i, 10 + i) for i in range(3)]
    (root / "notes.txt").write_text("ignored")
    return out


def offline_scores(backbone: Backbone, prompt: torch.Tensor, inputs: list[str], words: tuple[str, ...]
                   ) -> torch.Tensor:
    """[E, K] scores through the library's offline path (evaluation.scoring.score_choices over the splice)."""
    pm = PromptedModel(backbone, PromptBank(prompt.unsqueeze(0)))
    return score_choices(pm, [Example(t, words[0], words) for t in inputs])[0]


class LiveServer:
    """The app under uvicorn on 127.0.0.1 (a free port) in a background thread: ``with LiveServer(app) as url``."""

    def __init__(self, app: object) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="on"))
        self.thread: object = None

    def __enter__(self) -> str:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class ServeProcess:
    """`softprompt serve` as a user runs it: a subprocess on 127.0.0.1 (a free port), entered once /health answers;
    ``output`` holds its stdout and stderr after exit. ``with ServeProcess(model, prompts, "--admin-token", T) as
    url``."""

    def __init__(self, model: Path, prompts: Path, *extra: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.args = [sys.executable, "-m", "softprompt", "serve", "--model", str(model), "--prompts", str(prompts),
                     "--port", str(self.port), "--threads", "1", *extra]
        self.output = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
        self.proc = subprocess.Popen(self.args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/health", timeout=5).raise_for_status()
                return url
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"server did not start:\n{self.output}") from None
                time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        self.output = self.proc.communicate(timeout=30)[0].decode()
