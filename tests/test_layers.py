"""The package's layers: no module imports from a layer above its own (docs/design.md draws them).

core → tasks → evaluation → training → experiments → server → cli. Imports are read from the source (every
``import``/``from`` statement, including the ones inside functions and under ``TYPE_CHECKING``), so a lazy upward
import is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "softprompt"
LAYERS = ["core", "tasks", "evaluation", "training", "experiments", "server", "cli"]


def layer_of(module: str) -> int | None:
    """Rank of a dotted ``softprompt.<layer>...`` module; None for the top-level package and outside modules."""
    parts = module.split(".")
    if parts[0] != "softprompt" or len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            # `from softprompt.evaluation import neighbors` names a submodule
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] in LAYERS)


def test_every_module_lives_in_a_layer() -> None:
    flat = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in {"__init__.py", "__main__.py"})
    assert flat == [], f"modules outside the layer folders: {flat}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_from_a_layer_above(path: Path) -> None:
    own = LAYERS.index(path.relative_to(PACKAGE).parts[0])
    upward = [m for m in imported_modules(path) if (rank := layer_of(m)) is not None and rank > own]
    assert upward == [], f"{path.relative_to(PACKAGE)} ({LAYERS[own]}) imports from above: {upward}"


def test_layer_check_catches_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from softprompt.server.engine import Engine\n")
    assert "softprompt.server.engine" in imported_modules(module)
    assert layer_of("softprompt.server.engine") > layer_of("softprompt.core.bank")
