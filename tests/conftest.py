"""Shared fixtures: tiny random models built from config objects, never a hub.

One tiny backbone per family (llama, gpt2, t5, gemma3, qwen2): :func:`tiny_backbone` builds it, the ``backbone``
fixture gives each family in turn, ``tiny_dirs[family]`` is its model folder on disk (the same weights, for the CLI
and the server). The one toy task is tests/toytask.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["SOFTPROMPT_NO_INSTALL"] = "1"  # a test never downloads a model (the install tests unset it)

from softprompt.core.backbone import Backbone
from softprompt.core.tiny import FAMILIES, save_tiny, tiny_backbone

# The real data sets live beside the repository (see README); tests that need them skip when it is absent.
DATA_DIR = Path(os.environ.get("SOFTPROMPT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


__all__ = ["DATA_DIR", "FAMILIES", "tiny_backbone"]


@pytest.fixture(params=FAMILIES)
def backbone(request: pytest.FixtureRequest) -> Backbone:
    """One tiny backbone of each family (llama, gpt2, t5, gemma3, qwen2)."""
    torch.manual_seed(0)
    return tiny_backbone(request.param)


class TinyDirs(dict):
    """family → the folder of ``tiny_backbone(family)``'s weights, written when first asked for."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, family: str) -> Path:
        if family not in FAMILIES:
            raise KeyError(f"no tiny family {family!r}; families: {FAMILIES}")
        self[family] = save_tiny(family, self.root / family)
        return self[family]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny model folders on disk (for the CLI and the server): family → folder, for every family."""
    return TinyDirs(tmp_path_factory.mktemp("tiny-models"))


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
