"""The command line end to end on a tiny model folder: train → inspect → eval → predict, and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softprompt.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    rows = [{"text": f"item {i} {'good' if i % 2 else 'bad'}", "label": i % 2} for i in range(16)]
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_train_eval_predict_inspect(tmp_path: Path, toy: Path, tiny_dirs: dict[str, Path], capsys) -> None:
    model = str(tiny_dirs["gpt2"])
    out = tmp_path / "p.safetensors"
    task = ["--task", str(toy), "--template", "{text} ->", "--verbalizer", '{"0": " bad", "1": " good"}']
    code, stdout, _ = run(capsys, "train", "--model", model, *task, "--out", str(out), "--steps", "3",
                          "--batch-size", "4", "--prompt-length", "4", "--eval-every", "2", "--eval-limit", "8",
                          "--no-progress", "--json")
    assert code == 0 and out.is_file()
    assert json.loads(stdout.strip().splitlines()[-1])["steps"] == 3

    code, stdout, _ = run(capsys, "eval", "--model", model, *task, "--prompt", str(out), "--limit", "10", "--json")
    result = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and result["examples"] == 10 and 0.0 <= result["accuracy"] <= 1.0

    code, stdout, _ = run(capsys, "eval", "--model", model, *task, "--method", "prompt-design", "--json")
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["method"] == "prompt-design"

    code, stdout, _ = run(capsys, "predict", "--model", model, "--prompt", str(out), "--raw", "--json",
                          "item 3 good ->", "item 4 bad ->")
    preds = json.loads(stdout.strip().splitlines()[-1])["predictions"]
    assert code == 0 and [p["label"] in ("0", "1") for p in preds] == [True, True]
    assert set(preds[0]["scores"]) == {"0", "1"}

    code, stdout, _ = run(capsys, "inspect", str(out), "--json")
    meta = json.loads(stdout)
    assert code == 0 and meta["prompt_length"] == 4 and meta["task"] == "toy"
    assert meta["format_version"] == 2 and meta["dtype"] == "float32" and len(meta["model_fingerprint"]) == 64
    assert meta["template"] == "{text} ->" and meta["instruction"] == "" and meta["selection"] == {}
    assert meta["model_probe"].endswith(" sums") and "embedding_fingerprint" not in meta  # counts, not 1000s of floats


@pytest.mark.parametrize("command", ["eval", "predict", "ensemble", "inspect"])
def test_prompt_of_other_weights_needs_allow_other_model(command: str, tmp_path: Path, toy: Path,
                                                          tiny_dirs: dict[str, Path], capsys) -> None:
    import torch

    from softprompt.backbone import load_backbone
    from softprompt.promptfile import PromptMeta, save_prompt
    from softprompt.tiny import save_tiny

    other = str(save_tiny("gpt2", tmp_path / "other", seed=1))  # the shapes of tiny_dirs["gpt2"], other weights
    bb = load_backbone(str(tiny_dirs["gpt2"]))
    prompt = str(tmp_path / "p.safetensors")
    verbalizer = {"0": " bad", "1": " good"}
    save_prompt(prompt, torch.randn(3, bb.hidden_size), PromptMeta.for_backbone(bb, 3, task="toy",
                                                                                 verbalizer=verbalizer))
    task = ["--task", str(toy), "--template", "{text} ->", "--verbalizer", json.dumps(verbalizer)]
    argv = {"eval": ["eval", "--model", other, *task, "--prompt", prompt, "--limit", "4", "--json"],
            "predict": ["predict", "--model", other, "--prompt", prompt, "--raw", "--json", "item 1 good ->"],
            "ensemble": ["ensemble", "--model", other, *task, "--prompt", prompt, "--limit", "4", "--json"],
            "inspect": ["inspect", prompt, "--neighbors", "2", "--model", other, "--json"]}[command]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "different model" in err and "--allow-other-model" in err
    code, stdout, err = run(capsys, *argv, "--allow-other-model")
    assert code == 0 and isinstance(json.loads(stdout.strip().splitlines()[-1]), dict)
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "different model" in warnings[0] and "error" not in err
    code, _, err = run(capsys, *argv[:argv.index("--model") + 1], str(tiny_dirs["gpt2"]),
                       *argv[argv.index("--model") + 2:], "--allow-other-model")
    assert code == 0 and "warning" not in err  # the prompt's own model: nothing to warn about


@pytest.mark.parametrize("argv, message", [
    (["inspect", "{tmp}/missing.safetensors"], "no such prompt file"),
    (["inspect", "{tmp}/garbage.safetensors"], "not a readable safetensors file"),
    (["eval", "--model", "{gpt2}", "--task", "nope"], "unknown task"),
    (["eval", "--model", "{gpt2}", "--task", "sst2"], "needs --prompt"),
    (["eval", "--model", "{t5}", "--task", "{toy}", "--template", "{{text}}", "--verbalizer",
      '{{"0": " a", "1": " b"}}', "--prompt", "{tmp}/p.safetensors"], "different model"),
    (["train", "--model", "{gpt2}", "--task", "{toy}", "--template", "{{text}}", "--out", "{tmp}/x.pt"],
     "must end in .safetensors"),
    (["train", "--model", "{gpt2}", "--task", "{toy}", "--template", "{{missing}}", "--verbalizer",
      '{{"0": " a", "1": " b"}}', "--out", "{tmp}/x.safetensors"], "template field"),
    (["train", "--model", "{gpt2}", "--task", "{toy}", "--template", "{{text}}", "--verbalizer", '{{"0": " a"}}',
      "--out", "{tmp}/x.safetensors"], "not in the verbalizer"),
    (["eval", "--model", "{gpt2}", "--task", "{toy}", "--verbalizer", "not json", "--template", "x",
      "--method", "prompt-design"], "not valid JSON"),
])
def test_bad_input_exits_2_with_one_line(argv: list[str], message: str, tmp_path: Path, toy: Path,
                                          tiny_dirs: dict[str, Path], capsys) -> None:
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 100)
    if any("p.safetensors" in a for a in argv):
        code, _, _ = run(capsys, "train", "--model", str(tiny_dirs["gpt2"]), "--task", str(toy), "--template",
                         "{text}", "--verbalizer", '{"0": " a", "1": " b"}', "--out", str(tmp_path / "p.safetensors"),
                         "--steps", "1", "--batch-size", "2", "--no-eval", "--no-progress")
        assert code == 0
    fill = {"tmp": tmp_path, "toy": toy, "gpt2": tiny_dirs["gpt2"], "t5": tiny_dirs["t5"]}
    code, _, err = run(capsys, *[a.format(**fill) for a in argv])
    assert code == 2
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1 and message in lines[0]
    assert "Traceback" not in err


def test_usage_error_is_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train"])
    assert exc.value.code == 2


def test_models_list(capsys) -> None:
    code, stdout, _ = run(capsys, "models")
    assert code == 0 and "smollm2-135m" in stdout and "(default)" in stdout
