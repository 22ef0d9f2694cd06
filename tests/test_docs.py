"""Every ```python block of README.md and docs/*.md runs, offline, on a tiny model.

A block runs as written except for this substitution (SUBSTITUTIONS, nothing else):

- the built-in model name ``"smollm2-135m"`` → a tiny llama model folder (``save_tiny``);
- the server address ``http://127.0.0.1:8000`` → a live server on a free port of 127.0.0.1.

It runs in a fresh folder that holds the prompt files the blocks name (``sst2.safetensors``, ``rte.safetensors``:
random prompts of the tiny model, with the task metadata training writes), with ``TOKEN`` (the server's admin token)
defined and the data root in ``SOFTPROMPT_DATA_DIR``; the server serves the tasks the blocks ask for (sst2, copa,
squad). A block that reads data (``.examples(``) skips where the data root is absent.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from softprompt.core.backbone import load_backbone
from softprompt.core.tiny import save_tiny
from softprompt.server import Engine, ServerConfig, create_app
from tests._serving import LiveServer, write_prompt
from tests.conftest import DATA_DIR

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MODEL = "smollm2-135m"
SERVER = "http://127.0.0.1:8000"
TOKEN = "docs-test-token"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[str, str]]:
    """(``file:line``, code) of every ```python block."""
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in BLOCK.finditer(text):
            out.append((f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}", m.group(1)))
    return out


BLOCKS = python_blocks()


def test_the_docs_have_python_blocks() -> None:
    """The collection itself: README's library example and OpenAI example, serving.md's two clients."""
    where = [w.split(":")[0] for w, _ in BLOCKS]
    assert where.count("README.md") >= 2 and where.count("docs/serving.md") >= 2


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """(model folder, folder of the blocks' prompt files, live server URL)."""
    root = tmp_path_factory.mktemp("docs")
    model = save_tiny("llama", root / "tiny-llama")
    backbone = load_backbone(str(model))
    files = root / "cwd"
    for seed, task in enumerate(("sst2", "rte")):
        write_prompt(backbone, files / f"{task}.safetensors", 4, seed, task=task, verbalizer={})
    served = root / "prompts"
    for seed, task in enumerate(("sst2", "copa", "squad")):
        write_prompt(backbone, served / f"{task}.safetensors", 3, 10 + seed, task=task, verbalizer={})
    engine = Engine(backbone)
    engine.load_dir(served)
    with LiveServer(create_app(engine, ServerConfig(admin=True, admin_token=TOKEN, max_wait_ms=1))) as url:
        yield model, files, url


@pytest.mark.parametrize("code", [c for _, c in BLOCKS], ids=[w for w, _ in BLOCKS])
def test_python_block_runs(code: str, world, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                           capsys: pytest.CaptureFixture[str]) -> None:
    model, files, url = world
    if ".examples(" in code and not DATA_DIR.is_dir():
        pytest.skip(f"data root {DATA_DIR} not found")
    assert MODEL in code or SERVER in code, "a block that needs neither substitution: say here what it needs"
    code = code.replace(f'"{MODEL}"', repr(str(model))).replace(SERVER, url)
    monkeypatch.chdir(files)
    monkeypatch.setenv("SOFTPROMPT_DATA_DIR", str(DATA_DIR))
    exec(compile(code, "<doc block>", "exec"), {"__name__": "__doc_block__", "TOKEN": TOKEN})
    assert capsys.readouterr().out.strip(), "every block prints its result"


REPO_DIRS = ("src/", "tests/", "bench/", "scripts/", "configs/", "docs/")
LAYERS = ("core/", "tasks/", "evaluation/", "training/", "experiments/", "server/", "cli/")


def named(pattern: str) -> list[tuple[str, str]]:
    """(``file:line``, name) of every backticked name in README.md and docs/*.md that matches ``pattern``."""
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in re.finditer(r"`([^`\s]+)`", text):
            if re.fullmatch(pattern, m.group(1)):
                out.append((f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}", m.group(1)))
    return out


def test_docs_name_only_modules_and_objects_that_exist() -> None:
    """`softprompt.x.y` / `softprompt.x.y.name` in the docs: the module imports and has the name."""
    import importlib

    missing = []
    for where, name in named(r"softprompt(\.\w+)+(\(\))?"):
        parts = name.removesuffix("()").split(".")
        for i in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(f"{where}: {name}")
            break
    assert not missing, missing


def test_docs_name_only_files_that_exist() -> None:
    """Repository paths in the docs (``src/...``, ``tests/...``, ``bench/...``, ..., and layer paths such as
    ``core/prefix_cache.py``, which live in src/softprompt/) exist."""
    missing = []
    for where, name in named(r"[\w.-]+/[\w./-]*"):
        if name.startswith(REPO_DIRS):
            path = ROOT / name
        elif name.startswith(LAYERS):
            path = ROOT / "src" / "softprompt" / name
        elif name.startswith("softprompt/"):
            path = ROOT / "src" / name
        else:
            continue  # a user's file in an example (runs/, prompts/, ...)
        if not path.exists():
            missing.append(f"{where}: {name}")
    assert not missing, missing
