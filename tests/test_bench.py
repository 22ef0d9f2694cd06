"""Every benchmark script in bench/ runs end to end at tiny sizes: a tiny model folder for ``--model``, the toy task
for ``--task`` where a bench takes one, results written to a temporary folder (never bench/results/). The numbers
are meaningless; what is checked is that each script runs and writes the record the docs read, provenance included.
The doc scripts this project owns run too: scripts/ensembles_doc.py rebuilds docs/ensembles.md as committed, and
scripts/prompt_drift.py reads a freshly trained prompt.
"""

from __future__ import annotations

import importlib.util
import json
from argparse import Namespace
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import DATA_DIR
from tests.toytask import write_task

ROOT = Path(__file__).resolve().parents[1]
PROVENANCE = {"versions", "machine", "load_average", "git"}


def script(path: str) -> ModuleType:
    """A bench/ or scripts/ file as a module (neither folder is a package)."""
    file = ROOT / path
    spec = importlib.util.spec_from_file_location(f"_smoke_{file.stem}", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_bench_script_has_a_smoke_test() -> None:
    tested = {"ensemble_bench", "lr_bench", "serve_bench", "train_step_bench"}
    assert {p.stem for p in (ROOT / "bench").glob("*.py")} == tested


def test_ensemble_bench(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    bench = script("bench/ensemble_bench.py")
    out = tmp_path / "ensemble.json"
    assert bench.main(["--model", str(tiny_dirs["llama"]), "--task", str(write_task(tmp_path / "toy", 8)),
                       "--examples", "6", "--prompts", "2", "--prompt-length", "3", "--batch-size", "4",
                       "--threads", "1", "--out", str(out), "--note", "smoke"]) == 0
    record = json.loads(out.read_text())
    assert set(record) >= PROVENANCE and record["note"] == "smoke"
    variants = {"sequential", "batched_naive", "batched_sorted", "batched", "sequential_sorted_shared"}
    assert set(record["seconds"]) == set(record["token_slots_computed"]) == variants
    assert max(record["max_abs_score_diff_vs_sequential"].values()) < 1e-3  # every variant scores alike
    # scripts/ensembles_doc.py reads the record's run conditions.
    run = script("scripts/ensembles_doc.py").conditions(record)
    assert run["threads"] == 1 and run["note"] == "smoke" and len(run["load_before"]) == len(run["load_after"]) == 3


def test_lr_bench(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    bench = script("bench/lr_bench.py")
    argv = ["--models", str(tiny_dirs["llama"]), "--prompt-lengths", "2", "3", "--steps", "3", "--batch-size", "4",
            "--threads", "1", "--task", str(write_task(tmp_path / "toy", 8)), "--results", str(tmp_path / "r"),
            "--work", str(tmp_path / "w"), "--no-progress"]
    assert bench.main(argv) == 0
    cell = json.loads((tmp_path / "r" / "lr_auto" / "llama_P2_auto.json").read_text())
    assert set(cell) >= PROVENANCE and cell["steps"] == 3 and cell["task"] == "toy"
    # Step times come from the training log, so a cell resumed in another process still counts every step.
    assert cell["median_step_seconds"] > 0 and cell["seconds_per_step"] == pytest.approx(cell["train_seconds"] / 3,
                                                                                        abs=0.05)
    summary = json.loads((tmp_path / "r" / "lr_auto_cpu.json").read_text())
    assert summary["auto_runs"] == 2 and len(summary["runs"]) == 2
    # Resumable: finished cells are skipped; the summary and the plot are redrawn from them.
    before = (tmp_path / "r" / "lr_auto" / "llama_P2_auto.json").read_text()
    assert bench.main([*argv, "--plot", str(tmp_path / "lr.png")]) == 0
    assert (tmp_path / "r" / "lr_auto" / "llama_P2_auto.json").read_text() == before
    assert (tmp_path / "lr.png").stat().st_size > 0
    # The noise floor scores the final prompt on the run's own batches: at lr 1e-12 the prompt does not move, so the
    # training losses are the fixed prompt's, and the paired jump is zero (grad_accum 2: the same rows).
    still = [*argv[:4], *argv[5:], "--lr", "1e-12", "--label", "still", "--grad-accum", "2"]
    assert bench.main(still) == 0
    cell = json.loads((tmp_path / "r" / "lr_auto" / "llama_P2_still.json").read_text())
    assert cell["fixed_prompt_losses"] == pytest.approx(cell["losses"], abs=1e-4)
    assert cell["noise_floor_jump"] == pytest.approx(cell["largest_jump"], abs=1e-4) and cell["paired_jump"] < 1e-4
    # A cell written before the noise floor gets it from its saved prompt on the next run, and nothing else changes.
    path = tmp_path / "r" / "lr_auto" / "llama_P3_auto.json"
    full = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in full.items()
                                if k not in ("fixed_prompt_losses", "noise_floor_jump", "paired_jump")}))
    assert bench.main(argv) == 0
    assert json.loads(path.read_text()) == full
    # A cell labelled auto that ran an earlier rule (here: a constant step) is not counted, and not run over.
    path.write_text(json.dumps({**full, "schedule": "constant"}))
    summary = json.loads((tmp_path / "r" / "lr_auto_cpu.json").read_text()) if bench.main([*argv, "--summary-only"]) \
        == 0 else {}
    assert summary["auto_stale_cells"] == ["llama_P3_auto"] and summary["auto_runs"] == 1
    with pytest.raises(SystemExit, match="earlier rule"):
        bench.main(argv)


def test_train_step_bench(tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = script("bench/train_step_bench.py")
    sizes = ["--model", str(tiny_dirs["llama"]), "--batch", "2", "--tokens", "8", "--prompt-length", "3",
             "--steps", "2", "--warmup", "1", "--threads", "1"]
    # Each method in this process (the script runs each in a child process: one such run follows).
    args = Namespace(model=str(tiny_dirs["llama"]), batch=2, tokens=8, prompt_length=3, steps=2, warmup=1, threads=1)
    for method in ("softprompt", "peft", "full", "softprompt-fullhead"):
        result = bench.run_one(Namespace(**vars(args), method=method))
        assert result["method"] == method and len(result["step_seconds"]) == 2 and result["trainable_params"] > 0
    interleaved = bench.run_interleaved(args)
    assert set(interleaved["step_seconds"]) == {"softprompt", "peft", "softprompt-fullhead", "forward"}
    assert bench.ratios({"interleaved": interleaved})["softprompt_vs_peft_interleaved_paired"] > 0
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src"))
    out = tmp_path / "train_step.json"
    bench.main([*sizes, "--methods", "softprompt", "--out", str(out), "--note", "smoke"])
    report = json.loads(out.read_text())
    assert set(report) >= PROVENANCE and report["versions"]["peft"][0].isdigit()
    assert report["results"]["softprompt"]["rounds"] == 1 and report["torch_threads"] == 1


def test_serve_bench(tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not DATA_DIR.is_dir():  # its requests are SST-2 sentences, section (f) SST-2 validation
        pytest.skip(f"data root {DATA_DIR} not found")
    monkeypatch.setenv("SOFTPROMPT_DATA_DIR", str(DATA_DIR))
    bench = script("bench/serve_bench.py")
    out = tmp_path / "serve.json"
    argv = ["--model", str(tiny_dirs["llama"]), "--threads", "1", "--requests", "8", "--concurrency", "4",
            "--repeats", "1", "--prompt-length", "3", "--max-batch-rows", "8", "--max-wait-ms", "1",
            "--latency-requests", "2", "--latency-rounds", "2", "--eval-limit", "4", "--eval-slice", "2",
            "--out", str(out), "--note", "smoke"]
    bench.main(argv)
    record = json.loads(out.read_text())
    assert set(record) >= PROVENANCE and record["versions"]["fastapi"][0].isdigit() and record["note"] == "smoke"
    sections = {"a_throughput_http", "b_batched_vs_unbatched_engine", "c_latency_p100", "d_memory",
                "e_rows_per_input", "f_eval_sst2"}
    assert sections <= set(record)
    assert record["a_throughput_http"]["best"]["single_task"]["errors"] == 0
    assert record["a_throughput_http"]["http_over_engine_offline"] > 0  # measured side by side in the same run
    assert len(record["c_latency_p100"]["cached_over_no_prompt_per_round"]) == 2
    assert record["c_latency_p100"]["attention_kernel_ms_per_request"]["p100_prefix_cache"] > 0
    assert record["e_rows_per_input"]["same_labels"] and record["f_eval_sst2"]["predictions_cached_equal_uncached"]
    # --only reruns a section and keeps the others.
    bench.main([*argv, "--only", "d"])
    again = json.loads(out.read_text())
    assert sections <= set(again) and again["a_throughput_http"] == record["a_throughput_http"]


def test_ensembles_doc_is_up_to_date(tmp_path: Path) -> None:
    """docs/ensembles.md is generated ("do not edit by hand"): the script rebuilds it byte for byte."""
    out = tmp_path / "ensembles.md"
    assert script("scripts/ensembles_doc.py").main(["--out", str(out)]) == 0
    assert out.read_text() == (ROOT / "docs" / "ensembles.md").read_text()


def test_prompt_drift(tiny_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from softprompt.core.backbone import load_backbone
    from softprompt.training.prompt_tuning import TrainConfig, train_prompt
    from tests.toytask import toy_task

    task = toy_task(tmp_path / "toy", 8)
    out = tmp_path / "p.safetensors"
    config = TrainConfig(steps=2, batch_size=4, prompt_length=3, eval_every=0, save_every=100)
    train_prompt(load_backbone(str(tiny_dirs["llama"])), task, task.examples("train"), config, out, progress=False)
    assert script("scripts/prompt_drift.py").main([str(out)]) == 0
    drift = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert drift["steps"] == 2 and [r["position"] for r in drift["positions"]] == [0, 1, 2]
