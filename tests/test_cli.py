"""The command line end to end on a tiny model folder: train → inspect → eval → predict, and exit codes."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from softprompt.cli import main
from tests.toytask import toy_rows, write_jsonl


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """The toy task's rows as a user's data file (toy.jsonl, task "toy"), its validation rows in toy_dev.jsonl."""
    write_jsonl(tmp_path / "toy_dev.jsonl", toy_rows(12, start=16))
    return write_jsonl(tmp_path / "toy.jsonl", toy_rows(16))


def test_train_eval_predict_inspect(tmp_path: Path, toy: Path, tiny_dirs: dict[str, Path], capsys) -> None:
    model = str(tiny_dirs["gpt2"])
    out = tmp_path / "p.safetensors"
    task = ["--task", str(toy), "--template", "{text} ->", "--verbalizer", '{"0": " bad", "1": " good"}',
            "--validation-file", str(toy.with_name("toy_dev.jsonl"))]
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
                          "good movie 3 ->", "bad movie 4 ->")
    preds = json.loads(stdout.strip().splitlines()[-1])["predictions"]
    assert code == 0 and [p["label"] in ("0", "1") for p in preds] == [True, True]
    assert set(preds[0]["scores"]) == {"0", "1"}

    code, stdout, _ = run(capsys, "inspect", str(out), "--json")
    meta = json.loads(stdout)
    assert code == 0 and meta["prompt_length"] == 4 and meta["task"] == "toy"
    assert meta["format_version"] == 2 and meta["dtype"] == "float32" and len(meta["model_fingerprint"]) == 64
    assert meta["template"] == "{text} ->" and meta["instruction"] == ""
    assert meta["selection"]["split"] == "train" and meta["selection"]["examples"] > 0  # held out from train
    assert meta["model_probe"].endswith(" sums") and "embedding_fingerprint" not in meta  # counts, not 1000s of floats


@pytest.mark.parametrize("command", ["eval", "predict", "ensemble", "inspect", "train"])
def test_prompt_of_other_weights_needs_allow_other_model(command: str, tmp_path: Path, toy: Path,
                                                          tiny_dirs: dict[str, Path], capsys) -> None:
    import torch

    from softprompt.core.backbone import load_backbone
    from softprompt.core.promptfile import PromptMeta, save_prompt
    from softprompt.core.tiny import save_tiny

    other = str(save_tiny("gpt2", tmp_path / "other", seed=1))  # the shapes of tiny_dirs["gpt2"], other weights
    bb = load_backbone(str(tiny_dirs["gpt2"]))
    prompt = str(tmp_path / "p.safetensors")
    verbalizer = {"0": " bad", "1": " good"}
    save_prompt(prompt, torch.randn(3, bb.hidden_size), PromptMeta.for_backbone(bb, 3, task="toy",
                                                                                 verbalizer=verbalizer))
    task = ["--task", str(toy), "--template", "{text} ->", "--verbalizer", json.dumps(verbalizer), "--validation-file",
            str(toy)]
    argv = {"eval": ["eval", "--model", other, *task, "--prompt", prompt, "--limit", "4", "--json"],
            "predict": ["predict", "--model", other, "--prompt", prompt, "--raw", "--json", "good movie 1 ->"],
            "ensemble": ["ensemble", "--model", other, *task, "--prompt", prompt, "--limit", "4", "--json"],
            "inspect": ["inspect", prompt, "--neighbors", "2", "--model", other, "--json"],
            "train": ["train", "--model", other, *task, "--init", f"from:{prompt}", "--out",
                      str(tmp_path / "t.safetensors"), "--steps", "1", "--batch-size", "2", "--prompt-length", "2",
                      "--no-eval", "--no-progress", "--json"]}[command]
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
      '{{"0": " a", "1": " b"}}', "--validation-file", "{tmp}/toy_dev.jsonl", "--prompt", "{tmp}/p.safetensors"],
     "different model"),
    (["eval", "--model", "{gpt2}", "--task", "{toy}", "--template", "{{text}}", "--verbalizer",
      '{{"0": " a", "1": " b"}}', "--method", "prompt-design"], "has no validation data: pass --validation-file"),
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


def test_selection_is_held_out_from_train_recorded_and_never_reported_as_validation(
        tmp_path: Path, tiny_dirs: dict[str, Path], data_dir: Path, capsys) -> None:
    from softprompt.core.promptfile import load_prompt, save_prompt
    from softprompt.tasks.selection import SELECTION_SEED

    model = str(tiny_dirs["gpt2"])
    common = ["--model", model, "--task", "cb", "--data-dir", str(data_dir), "--max-input-tokens", "48"]
    out = tmp_path / "cb.safetensors"
    code, stdout, _ = run(capsys, "train", *common, "--out", str(out), "--seeds", "1,2", "--steps", "2",
                          "--batch-size", "2", "--prompt-length", "2", "--eval-every", "1", "--no-progress", "--json")
    assert code == 0
    runs = [json.loads(line) for line in stdout.strip().splitlines()]
    # CB's 250 train examples: a 32-example slice of them (10 % is 25, raised to 32), never its 56 validation ones.
    slice_info = {"split": "train", "size": 32, "seed": SELECTION_SEED, "limit": None, "examples": 32}
    assert [r["selection"] for r in runs] == [slice_info, slice_info]  # one slice for the whole ensemble
    assert all("best_selection_accuracy" in r and not any("val" in k for k in r) for r in runs)
    files = [tmp_path / "cb-seed1.safetensors", tmp_path / "cb-seed2.safetensors"]
    assert [load_prompt(f).meta.selection for f in files] == [slice_info, slice_info]
    log = (tmp_path / "cb-seed1.metrics.jsonl").read_text()
    assert '"selection_accuracy"' in log and '"val_' not in log

    def scored(*argv: str) -> dict:
        code, stdout, err = run(capsys, *argv, "--json")
        assert code == 0, err
        return json.loads(stdout.strip().splitlines()[-1])

    ev = scored("eval", *common, "--prompt", str(files[0]), "--limit", "8")
    assert ev["split"] == "validation" and ev["examples"] == 8 and "selection" not in ev
    ev = scored("eval", *common, "--prompt", str(files[0]), "--split", "selection")
    assert ev["split"] == "selection" and ev["examples"] == 32 and ev["selection"] == slice_info
    assert scored("eval", *common, "--method", "prompt-design", "--split", "selection")["examples"] == 32
    ens = scored("ensemble", *common, "--prompt", str(files[0]), "--prompt", str(files[1]), "--split", "selection")
    assert ens["split"] == "selection" and ens["examples"] == 32

    def refused(message: str, *argv: str) -> None:
        code, _, err = run(capsys, *argv)
        assert code == 2 and message in err and "Traceback" not in err, err

    refused("selected on the 'train' split", "eval", *common, "--prompt", str(files[0]), "--split", "train")
    refused("selected on the 'train' split", "ensemble", *common, *[a for f in files for a in ("--prompt", str(f))],
            "--split", "train")
    # A file from before selection was held out: its best step was chosen on the first validation examples.
    pf = load_prompt(files[0])
    old = tmp_path / "old.safetensors"
    pf.meta.selection = {}
    pf.meta.metrics = {"steps": 2, "best_step": 1, "best_val_accuracy": 0.5}
    save_prompt(old, pf.prompt, pf.meta)
    refused("selected on the 'validation' split (its file predates", "eval", *common, "--prompt", str(old))
    refused("selected on the 'validation' split", "ensemble", *common, "--prompt", str(old), "--prompt",
            str(files[1]))
    refused("records no selection slice", "eval", *common, "--prompt", str(old), "--split", "selection")
    pf.meta.train_config = {**pf.meta.train_config, "eval_every": 2}  # one eval, after the last step: no selection
    save_prompt(old, pf.prompt, pf.meta)
    assert scored("eval", *common, "--prompt", str(old), "--limit", "4")["examples"] == 4


def test_models_marks_the_default_once_and_ends_quietly_on_a_closed_pipe(capsys, monkeypatch) -> None:
    assert main(["models"]) == 0
    assert capsys.readouterr().out.count("(default)") == 1

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["models"]) == 1
    assert capsys.readouterr().err == ""  # no "failed: BrokenPipeError"


def test_inspect_summarises_by_default_and_keeps_the_full_json(tmp_path: Path, tiny_dirs: dict[str, Path],
                                                               capsys) -> None:
    import torch

    from softprompt.core.backbone import load_backbone
    from softprompt.core.promptfile import PromptMeta, save_prompt

    bb = load_backbone(str(tiny_dirs["gpt2"]))
    path = str(tmp_path / "p.safetensors")
    selection = {"split": "train", "size": 32, "seed": 7, "limit": None, "examples": 32}
    meta = PromptMeta.for_backbone(bb, 3, task="toy", init="class-label", template="{text} ->",
                                   verbalizer={"0": " bad", "1": " good"}, selection=selection,
                                   train_config={"lr": "auto", "steps": 40, "eval_every": 10},
                                   metrics={"steps": 40, "lr": 0.0123456, "best_selection_accuracy": 0.6875,
                                            "best_step": 30})
    prompt = torch.ones(3, bb.hidden_size)
    save_prompt(path, prompt, meta)

    code, stdout, _ = run(capsys, "inspect", path)
    lines = stdout.rstrip("\n").splitlines()
    assert code == 0 and not stdout.lstrip().startswith("{")
    rows = {line[:10].strip(): line[12:] for line in lines}  # labels padded to one column
    assert len({line.index(value) for line, value in zip(lines, rows.values(), strict=True)}) == 1  # aligned
    assert rows["model"] == str(tiny_dirs["gpt2"]) and rows["model type"] == "gpt2" and rows["dtype"] == "float32"
    assert rows["task"] == "toy" and rows["P × H"] == f"3 × {bb.hidden_size}" and rows["init"] == "class-label"
    assert rows["lr"] == "0.01235 (auto)" and rows["steps"] == "40"
    assert rows["selection"] == "train slice, 32 examples (seed 7)"
    assert rows["best"] == "accuracy 0.6875 (step 30)"
    assert rows["template"] == "'{text} ->'" and rows["format"] == "softprompt version 2"

    code, stdout, _ = run(capsys, "inspect", path, "--json")
    expected = {"file": path, **meta.to_json(), "prompt_norm_mean": round(float(prompt.norm(dim=-1).mean()), 4)}
    for key in ("model_probe", "model_magnitude"):
        expected[key] = f"{len(expected[key])} sums"
    assert code == 0 and stdout == json.dumps(expected, sort_keys=True) + "\n"  # unchanged: one compact line
