"""Helpers shared by the server tests: tiny backbones, prompt files, offline predictions."""

from __future__ import annotations

from pathlib import Path

import torch

from softprompt.backbone import Backbone, make_backbone
from softprompt.bank import PromptBank
from softprompt.evaluate import score_choices
from softprompt.prompted import PromptedModel
from softprompt.promptfile import PromptMeta, save_prompt
from softprompt.tasks import Example
from softprompt.tiny import tiny_model

VERBALIZER = {"neg": " no", "pos": " yes", "mid": " maybe"}
TEXTS = ["hello there", "a much longer input text, with commas", "x", "the film was fine", "", "ok?",
         "unicode: é ß 漢字", "{text} {0} braces stay literal"]


def tiny(family: str = "llama", seed: int = 0) -> Backbone:
    model, tokenizer = tiny_model(family, seed)
    return make_backbone(model, tokenizer, f"tiny-{family}")


def write_prompt(backbone: Backbone, path: Path, length: int, seed: int, *, task: str = "",
                 verbalizer: dict[str, str] | None = None) -> torch.Tensor:
    """A random prompt [length, H] at the embeddings' scale, saved as a prompt file for ``backbone``."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randn(length, backbone.hidden_size, generator=g) * backbone.embedding_std() * 3
    meta = PromptMeta.for_backbone(backbone, length, task=task,
                                   verbalizer=VERBALIZER if verbalizer is None else verbalizer)
    save_prompt(path, prompt, meta)
    return prompt


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
    """[E, K] scores through the library's offline path (evaluate.score_choices over the splice)."""
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
