"""The scale campaign's section of the results page: built from the cells of the shipped campaign config (cut to
tiny models, as tests/test_configs.py runs it), with the scores set so that each rule shows: mean ± sd over seeds,
the best new recipe chosen by its *selection* score (not its reported one), the PEFT bar, the PT − MT gap and
Figure 1 with the majority floor."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from softprompt.experiments import campaignpage
from softprompt.experiments.grid import slug
from softprompt.experiments.records import Records
from softprompt.experiments.resultspage import render, write_page
from softprompt.experiments.runner import run_experiment
from tests.test_configs import one_cell_each

ROOT = Path(__file__).resolve().parents[1]


def set_score(cell: dict, score: float, selected: float | None = None, seed: int | None = None,
              task: str | None = None) -> dict:
    """A copy of ``cell`` with its reported score (and selection score, seed, task) replaced."""
    out = copy.deepcopy(cell)
    out["score"] = score
    out["metrics"] = {out["metric"]: score}
    if selected is not None:
        out["train"][f"best_selection_{out['metric']}"] = selected
    if seed is not None:
        out["cell"]["seed"] = seed
    if task is not None:
        out["cell"]["train_task"] = out["cell"]["eval_task"] = task
    out["id"] = f"{out['id']}-{seed}-{slug(task or '')}"
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("campaign")
    raw = yaml.safe_load((ROOT / "configs" / "scale_campaign.yaml").read_text())
    small = root / "scale_campaign.yaml"
    small.write_text(yaml.safe_dump(one_cell_each(raw, root), sort_keys=False))
    from softprompt.experiments.grid import load_config

    run_experiment(load_config(small), log=lambda _: None)
    folder = root / "results" / "scale_campaign" / "cells"
    cells = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    for p in folder.glob("*.json"):
        p.unlink()

    def find(method: str, variant: str = "", transfer: bool = False) -> dict:
        """The smollm2 stand-in's cell of that recipe (it has every recipe; RTE only as the transfer source)."""
        return next(c for c in cells.values() if c["method"] == method and c["cell"].get("variant", "") == variant
                    and c["cell"]["init"].startswith("from:") == transfer and c["id"].startswith("smollm2-135m__")
                    and (c["method"] != "prompt-tuning" or "rte" not in c["id"] or transfer))

    sst2 = next(c for c in cells.values() if c["method"] == "prompt-design")["cell"]["eval_task"]
    cb = find("prompt-tuning", transfer=True)["cell"]["eval_task"]
    out = [
        # sst2: three seeds of vanilla PT and of PEFT, one of the others
        *[set_score(find("prompt-tuning"), s, 0.5, seed=i) for i, s in enumerate((0.80, 0.82, 0.84))],
        *[set_score(find("peft-prompt-tuning"), s, 0.5, seed=i) for i, s in enumerate((0.81, 0.83, 0.85))],
        set_score(find("prompt-design"), 0.60), set_score(find("model-tuning"), 0.90, 0.9),
        set_score(find("prompt-tuning", "residual"), 0.88, 0.7),
        set_score(find("prompt-tuning", "paper"), 0.55, 0.9),  # the paper's recipe is never a "new" one
        # cb: residual has the better selection score, transfer the better reported one: residual is chosen
        set_score(find("prompt-design"), 0.40, task=cb), set_score(find("prompt-tuning"), 0.50, 0.5, task=cb),
        set_score(find("model-tuning"), 0.70, task=cb),
        set_score(find("prompt-tuning", "residual"), 0.45, 0.9, task=cb),
        set_score(find("prompt-tuning", transfer=True), 0.95, 0.6),
        # the transfer source: trained, never reported, and its two hours count in the time line
        {**cells["smollm2-135m__prompt-tuning__rte__P20__class-label__s0"], "seconds": 7200.0},
    ]
    for c in out:
        (folder / f"{c['id']}.json").write_text(json.dumps(c))
    floors = [{"task": t, "split": "validation", "limit": 4, "examples": 4, "rule": "most common target",
               "target": "x", "score": f} for t, f in ((sst2, 0.5), (cb, 0.45))]
    (root / "results" / "majority.json").write_text(json.dumps({"floors": floors}))
    return root


def test_the_campaign_section(root: Path) -> None:
    camp = campaignpage.Campaign(Records(root))
    assert camp.recipes == ["PD", "PT", "PT from rte", "PT paper", "PT residual", "MT", "PEFT PT"]
    lines = campaignpage.campaign_section(Records(root))
    text = "\n".join(lines)
    model = camp.models[0]
    size = camp.size(model)
    assert "| sst2 | PT | 82.0 ± 2.0 (n=3) |" in text and "| sst2 | PEFT PT | 83.0 ± 2.0 (n=3) |" in text
    assert "| sst2 | PD | 60.0 |" in text and text.count(" | 50.0 |") >= 1  # the sst2 majority floor
    # the average over the reported tasks (sst2, cb): a recipe missing on one of them has none
    assert "| **average** | PT | 66.0 |" in text and "| **average** | PT from rte |" not in text
    # best new recipe per task by selection score: sst2 residual (88), cb residual (45, not transfer's 95)
    chosen = {slug(t): camp.best_new(model, t) for t in camp.tasks}
    assert chosen == {"sst2": "PT residual", "cb": "PT residual"}
    gain = (88 + 45) / 2 - (82 + 50) / 2
    assert f"{gain:+.1f} (cb: PT residual, sst2: PT residual)" in text
    assert f"**not met** ({size} {gain:+.1f} (missed by {5 - gain:.1f})" in text
    # PEFT: Δ = −1, pooled sd 2: within 2 sd
    assert f"| {size} | sst2 | 82.0 ± 2.0 (n=3) | 83.0 ± 2.0 (n=3) | -1.0 | 2.0 | yes |" in text
    # outside the bar: how far, in a cell of its own (a "|" inside it would start another)
    task = next(t for t in camp.tasks if slug(t) == "sst2")
    camp.scores[model, task, "PEFT PT"] = [70.0, 71.0, 72.0]  # Δ 11, pooled sd √2.5
    header, _, row = campaignpage.peer_lines(camp)[2:5]
    assert row.count("|") == header.count("|") and f"| no ({11 / 2.5 ** 0.5:.1f} sd apart) |" in row, row
    # PT − MT: sst2 82 − 90, cb 50 − 70
    assert f"- {size}: PT − MT = {((82 - 90) + (50 - 70)) / 2:+.1f} points over 2 tasks." in text
    # time: every cell of a size counts, the transfer source's too, in hours of its own seconds
    mine = [c for c in Records(root).cells("scale_campaign") if c["cell"]["model"] == model]
    assert any(c["method"] == "prompt-tuning" and c["cell"]["eval_task"] not in camp.tasks for c in mine)
    hours = sum(c["seconds"] for c in mine) / 3600
    assert hours >= 2 and f"{size}: {len(mine)} cells, {hours:.1f} h" in text
    assert f"Sizes: {size} = `{model}`;" in text


def test_a_size_with_no_recipe_beside_vanilla_has_no_recipe_row(root: Path) -> None:
    camp = campaignpage.Campaign(Records(root))
    camp.models.append("bigger")  # a size that has, say, only its prompt-design cells so far
    camp.params["bigger"] = 10 * camp.params[camp.models[0]]
    rows = [line for line in campaignpage.recipe_lines(camp) if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == [f"| {camp.size(camp.models[0])}"], rows


def test_seconds_per_step_are_the_median_of_each_cells_logged_steps(root: Path) -> None:
    """The s/step columns read each cell's metrics log: a step slowed by another job does not move a cell's median,
    and the selection evals (not in the log's step seconds) do not count."""
    campaign = Records(root).cells("scale_campaign")
    # the fixture's sst2 seeds of vanilla PT (80, 82, 84) and PEFT PT (81, 83, 85)
    sst2 = {(c["method"], c["cell"]["seed"]): c for c in campaign if c["score"] in (0.80, 0.82, 0.84, 0.81, 0.83, 0.85)
            and c["method"] in ("prompt-tuning", "peft-prompt-tuning")}
    logs = {("prompt-tuning", 0): [1.0, 1.0, 9.0], ("prompt-tuning", 1): [2.0, 2.0, 2.0],
            ("peft-prompt-tuning", 0): [3.0, 30.0, 3.0]}
    folder = root / "results" / "scale_campaign" / "prompts"
    written = []
    for key, steps in logs.items():
        path = folder / f"{sst2[key]['id']}.metrics.jsonl"
        lines = [{"step": i + 1, "loss": 1.0, "step_seconds": s} for i, s in enumerate(steps)]
        path.write_text("".join(json.dumps(x) + "\n" for x in [*lines, {"step": 3, "selection_accuracy": 0.5}]))
        written.append(path)
    try:
        text = "\n".join(campaignpage.campaign_section(Records(root)))
        size = campaignpage.Campaign(Records(root)).size(sst2["prompt-tuning", 0]["cell"]["model"])
        (row,) = [line for line in text.splitlines() if line.startswith(f"| {size} | sst2 | 82.0 ± 2.0 (n=3) |")]
        assert row.endswith("| 1.50 | 3.00 |"), row  # medians 1 and 2 (mean 1.5) vs 3
    finally:
        for path in written:
            path.unlink()


def test_the_start_isolated_sits_beside_the_campaigns_cells_of_its_seed(root: Path) -> None:
    """configs/peft_init_cpu.yaml's cells (softprompt's prompt tuning from PEFT's init rows) are shown with the
    campaign's PT and PEFT PT cells of the same model, task and seed, each start named, a long init text cut."""
    campaign = Records(root).cells("scale_campaign")
    pt = next(c for c in campaign if c["method"] == "prompt-tuning" and not c["cell"].get("variant")
              and c["cell"]["seed"] == 0 and c["cell"]["init"] == "class-label" and c["score"] == 0.80)
    folder = root / "results" / campaignpage.PEFT_INIT / "cells"
    folder.mkdir(parents=True)
    long_text, plain = "<bos> negative positive" * 7, " negative positive"
    for text, score in ((long_text, 0.79), (plain, 0.86)):
        c = copy.deepcopy(pt)
        c["cell"]["init"], c["config"]["init"], c["config"]["init_text"] = "text", "text", text
        c["score"], c["id"] = score, f"{pt['id']}-text-{score}"
        (folder / f"{c['id']}.json").write_text(json.dumps(c))
    try:
        camp = campaignpage.Campaign(Records(root))
        text = "\n".join(campaignpage.campaign_section(Records(root)))
        size, task = camp.size(pt["cell"]["model"]), slug(pt["cell"]["eval_task"])
        assert f"**The start, isolated** (`configs/{campaignpage.PEFT_INIT}.yaml`)" in text
        cut = long_text[:campaignpage.SHORT_TEXT]
        rows = [line for line in text.splitlines() if line.startswith(f"| {size} | {task} | 0 | ")]
        assert rows[0] == f"| {size} | {task} | 0 | class-label | softprompt | 80.0 |"
        assert "class-label → PEFT TEXT `" in rows[1] and rows[1].endswith("| PEFT | 81.0 |")
        assert rows[2:] == [f"| {size} | {task} | 0 | text `{cut}…` | softprompt | 79.0 |",
                            f"| {size} | {task} | 0 | text `{plain}` | softprompt | 86.0 |"]
        assert not any(f"| {size} | {task} | 1 | " in line for line in rows)  # only the seeds the grid ran
    finally:
        for f in folder.glob("*.json"):
            f.unlink()
        folder.rmdir()
        folder.parent.rmdir()


def test_the_page_draws_and_links_figure_one(root: Path) -> None:
    (root / "docs").mkdir(exist_ok=True)
    assert "results/scale_campaign/figure1.png" not in render(root)
    page = write_page(root)
    figure = root / "docs" / "results" / "scale_campaign" / "figure1.png"
    assert figure.stat().st_size > 0
    assert "![Figure 1: score vs model size, scale_campaign](results/scale_campaign/figure1.png)" in page.read_text()


def test_pooled_sd() -> None:
    assert campaignpage.pooled_sd([1.0, 3.0], [2.0, 4.0]) == pytest.approx(2 ** 0.5)
    assert campaignpage.pooled_sd([1.0], [2.0, 4.0]) is None


def test_figure_one_gives_a_recipe_one_colour_and_one_legend(root: Path) -> None:
    """A panel draws only the recipes that ran on its task (cb has transfer, sst2 has PEFT): each recipe keeps its
    colour in every panel, and the figure's one legend names every recipe drawn anywhere, and the floor."""
    import matplotlib.pyplot as plt

    camp = campaignpage.Campaign(Records(root))
    fig = campaignpage.figure(camp)
    colours: dict[str, set] = {}
    drawn: list[set[str]] = []
    for ax in fig.axes:
        labels = {bar.get_label(): bar.lines[0].get_color() for bar in ax.containers}
        drawn.append(set(labels))
        for label, c in labels.items():
            colours.setdefault(label, set()).add(c)
    plt.close(fig)
    assert len({frozenset(d) for d in drawn}) > 1  # the panels do draw different recipe sets
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len({next(iter(c)) for c in colours.values()}) == len(colours)  # and no two recipes share one
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [*[r for r in camp.recipes if r in colours], "majority"]
