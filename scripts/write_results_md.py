"""Regenerate docs/results.md from the JSON records under results/ (written by the scripts that measured them)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sst2_section(path: Path) -> list[str]:
    r = json.loads(path.read_text())
    t = r["train"]
    lines = [
        f"## SST-2 on `{r['model']}`: prompt design vs prompt tuning",
        "",
        f"Validation accuracy on all {r['examples']} SST-2 validation examples (rank classification over "
        '" positive" / " negative").',
        "",
        "| method | what the model sees | accuracy |",
        "|---|---|---|",
        f"| prompt design (zero-shot) | the task's hand-written instruction + input | {r['before']['accuracy']:.4f} |",
        f"| prompt tuning | {t['prompt_length']} learned vectors + input | {r['after']['accuracy']:.4f} |",
        "",
        f"Training: {t['steps']} steps × batch {t['batch_size']}, P = {t['prompt_length']}, init `{t['init']}`, "
        f"{t['optimizer']} lr {t['lr']}; checkpoint: {t['selection']} (best at step {t.get('best_step')}). "
        f"{t['seconds']:.0f} s of training ({t['seconds_per_step']} s/step) on {r['machine']['torch_threads']} CPU "
        f"threads; torch {r['versions']['torch']}, transformers {r['versions']['transformers']}.",
        "",
        "Selection-set accuracy during training: "
        + ", ".join(f"step {h['step']}: {h['accuracy']:.3f}" for h in t.get("history", [])) + ".",
        "",
        f"Reproduce: `{r['command']}`",
        "",
    ]
    return lines


def main() -> None:
    lines = ["# Results", "", "Every number here comes from a JSON record under `results/`, written by the command "
             "named with it; `python scripts/write_results_md.py` regenerates this page.", ""]
    for path in sorted((ROOT / "results").glob("sst2_*.json")):
        lines += sst2_section(path)
    (ROOT / "docs" / "results.md").write_text("\n".join(lines))
    print("wrote docs/results.md")


if __name__ == "__main__":
    main()
