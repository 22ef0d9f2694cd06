"""Where a measured number came from: package versions, the machine, how busy it was, and the code's git revision.

Every experiment cell and bench record carries :func:`provenance`, so a number on the results page can be traced to
the code that produced it, and a cell computed by older code is recognisable as such.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def versions(*packages: str) -> dict[str, str]:
    """softprompt, torch, transformers, Python, and the installed version of each of ``packages`` (e.g. the
    ``peft`` or ``fastapi`` a bench compares against or runs under; "not installed" where absent)."""
    import transformers

    from softprompt import __version__

    out = {"softprompt": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what :func:`platform.processor` says."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The platform, CPU, logical CPUs, torch's intra-op threads now, and the GPU (None: CPU only)."""
    return {"platform": platform.platform(), "processor": platform.machine(), "cpu": cpu_model(),
            "logical_cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded: how busy the machine was (a bench records one before it
    starts as ``load_average_before``; :func:`provenance` records the one at its end)."""
    return [round(x, 2) for x in os.getloadavg()]


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


def provenance(*packages: str) -> dict[str, Any]:
    """Versions (with those of ``packages``), machine, load average (1, 5, 15 min) and git revision, as one
    record: the keys ``versions``, ``machine``, ``load_average``, ``git``."""
    return {"versions": versions(*packages), "machine": machine(), "load_average": load_average(),
            "git": git_revision()}
