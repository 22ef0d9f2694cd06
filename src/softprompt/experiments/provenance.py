"""Where a measured number came from: package versions, the machine, how busy it was, and the code's git revision.

Every experiment cell and bench record carries :func:`provenance`, so a number on the results page can be traced to
the code that produced it, and a cell computed by older code is recognisable as such.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def versions() -> dict[str, str]:
    import transformers

    from softprompt import __version__

    return {"softprompt": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.machine(), "logical_cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def git_revision() -> dict[str, Any] | None:
    """The commit of the checkout this package runs from and whether its tracked files differ from it (None when
    the package is not in a git checkout, e.g. installed from a wheel)."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict[str, Any]:
    """Versions, machine, load average (1, 5, 15 min) and git revision, as one record."""
    return {"versions": versions(), "machine": machine(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "git": git_revision()}
