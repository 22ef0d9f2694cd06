"""Shared fixtures: tiny random models built from config objects, never a hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["SOFTPROMPT_NO_INSTALL"] = "1"  # a test never downloads a model (the install tests unset it)

from softprompt.core.backbone import Backbone, make_backbone
from softprompt.core.tiny import FAMILIES, save_tiny, tiny_model

# The real data sets live beside the repository (see README); tests that need them skip when it is absent.
DATA_DIR = Path(os.environ.get("SOFTPROMPT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def tiny_backbone(family: str, seed: int = 0) -> Backbone:
    model, tokenizer = tiny_model(family, seed)
    return make_backbone(model, tokenizer, f"tiny-{family}")


@pytest.fixture(params=FAMILIES)
def backbone(request: pytest.FixtureRequest) -> Backbone:
    """One tiny backbone of each family (llama, gpt2, t5, gemma3, qwen2)."""
    torch.manual_seed(0)
    return tiny_backbone(request.param)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny model folders on disk (for the CLI and the server): family → folder."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {f: save_tiny(f, root / f) for f in ("llama", "gpt2", "t5")}


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"data root {DATA_DIR} not found")
    return DATA_DIR


@pytest.fixture(autouse=True, scope="session")
def one_thread():  # type: ignore[no-untyped-def]
    """Tiny models on one thread: on a shared 2-core machine, two OpenMP threads of a tiny forward spin-wait for
    each other and run far slower; results do not depend on the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
