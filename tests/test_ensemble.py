"""Prompt ensembles: combination rules on hand-built scores, one batched pass equal to per-prompt passes, and the
``softprompt ensemble`` / ``train --seeds`` commands end to end on a tiny model folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from softprompt.cli import main
from softprompt.core.bank import PromptBank
from softprompt.core.prompted import PromptedModel
from softprompt.core.promptfile import PromptFileError, PromptMeta, save_prompt
from softprompt.evaluation.ensemble import Ensemble, majority_vote, mean_probability, vote_strings
from softprompt.evaluation.scoring import score_choices, single_token_choices
from softprompt.tasks import Example, FileTask, FileTaskSpec, get_task
from tests.conftest import tiny_backbone
from tests.toytask import TEMPLATE, VERBALIZER, toy_rows, write_jsonl

LOG = math.log


def _scores(probs: list[list[list[float]]]) -> torch.Tensor:
    """[N][E][K] probabilities → log-likelihood scores (0 → −inf, as past an example's choices)."""
    return torch.tensor(probs).log()


def test_vote_counts_each_prompts_top_choice() -> None:
    # 3 prompts, 1 example, 3 choices: prompts vote 1, 1, 2 → choice 1, though mean probability favours choice 2.
    s = _scores([[[0.1, 0.5, 0.4]], [[0.1, 0.5, 0.4]], [[0.0, 0.01, 0.99]]])
    assert majority_vote(s).tolist() == [1]
    assert mean_probability(s).tolist() == [2]


def test_vote_tie_goes_to_higher_mean_probability_then_lower_index() -> None:
    # 2 prompts split 1–1: the tie goes to choice 1, whose mean probability (0.55) beats choice 0's (0.45).
    split = _scores([[[0.6, 0.4]], [[0.3, 0.7]]])
    assert majority_vote(split).tolist() == [1]
    # A perfect tie on votes and on probability goes to the lower choice index, for both rules.
    even = _scores([[[0.5, 0.5]], [[0.5, 0.5]]])
    assert majority_vote(even).tolist() == [0]
    assert mean_probability(even).tolist() == [0]


def test_combinations_handle_examples_with_fewer_choices() -> None:
    # Example 0 has 2 choices (slot 2 is −inf), example 1 has 3.
    s = _scores([[[0.2, 0.8, 0.0], [0.1, 0.2, 0.7]], [[0.3, 0.7, 0.0], [0.6, 0.2, 0.2]],
                 [[0.9, 0.1, 0.0], [0.1, 0.1, 0.8]]])
    assert majority_vote(s).tolist() == [1, 2]
    assert mean_probability(s).tolist() == [1, 2]


def test_vote_strings_majority_and_tie_rule() -> None:
    assert vote_strings([["a", "x"], ["b", "y"], ["b", "x"]]) == ["b", "x"]
    # Three different strings: the first prompt's string wins the tie.
    assert vote_strings([["a"], ["b"], ["c"]]) == ["a"]
    # Two-two tie: the string of the lowest-numbered prompt among the tied ("b" from prompt 0).
    assert vote_strings([["b"], ["a"], ["a"], ["b"]]) == ["b"]


def _examples(n: int = 6, words: tuple[str, str, str] = (" negative", " positive", " neutral")) -> list[Example]:
    texts = ["a fine film", "dull and slow, far too long for what it says", "great", "bad", "a mixed bag overall",
             "I loved every minute of it"]
    return [Example(f"Review: {t}\nSentiment:", words[i % 2], words if i == 3 else words[:2])
            for i, t in enumerate(texts[:n])]


# Multi-piece choices take score_choices' K rows per (example, prompt); one-byte choices ("n", "y", "m" are single
# tokens of the byte tokenizer) take the shared-prefix path on decoder-only models, one row per (example, prompt).
MULTI, ONE = (" negative", " positive", " neutral"), ("n", "y", "m")


@pytest.mark.parametrize(("family", "words"), [("llama", MULTI), ("llama", ONE), ("gpt2", ONE), ("t5", MULTI)],
                         ids=["llama-multi", "llama-one", "gpt2-one", "t5-multi"])
def test_batched_ensemble_equals_sequential_per_prompt_passes(family: str, words: tuple[str, str, str]) -> None:
    backbone = tiny_backbone(family)
    g = torch.Generator().manual_seed(1)
    # Different lengths on purpose: the bank pads the shorter prompts, the splice must drop the padding.
    prompts = [torch.randn(p, backbone.hidden_size, generator=g) * 0.1 for p in (3, 5, 4)]
    examples = _examples(words=words)
    ens = Ensemble(backbone, prompts)
    shared = single_token_choices(ens.model, examples) is not None
    assert shared == (words[0] == "n" and family != "t5")
    batched = ens.score(examples, batch_size=7)  # chunks split prompts and examples
    for n, prompt in enumerate(prompts):
        alone = score_choices(PromptedModel(backbone, PromptBank(prompt.unsqueeze(0))), examples, batch_size=4)[0]
        finite = torch.isfinite(alone)
        assert torch.equal(finite, torch.isfinite(batched[n]))
        torch.testing.assert_close(batched[n][finite], alone[finite], atol=1e-4, rtol=1e-4)
    # The length-sorted layout is a reordering only: unsorted gives the same scores.
    unsorted = ens.score(examples, batch_size=7, sort_by_length=False, share_prefix=False)
    torch.testing.assert_close(batched, unsorted, atol=1e-4, rtol=1e-4)


def test_ensemble_of_identical_prompts_equals_the_single_prompt() -> None:
    backbone = tiny_backbone("llama")
    prompt = torch.randn(4, backbone.hidden_size, generator=torch.Generator().manual_seed(2)) * 0.1
    task = get_task("sst2")
    examples = _examples(5)
    examples = [Example(e.input, e.target, (" negative", " positive")) for e in examples]
    single = Ensemble(backbone, [prompt]).evaluate(task, examples)
    triple = Ensemble(backbone, [prompt, prompt.clone(), prompt.clone()]).evaluate(task, examples)
    acc = single.per_prompt[0]["accuracy"]
    assert [r["accuracy"] for r in triple.per_prompt] == [acc] * 3
    assert triple.average["accuracy"] == pytest.approx(acc)  # a mean of three equal floats
    for combined in (triple.best, triple.vote, triple.mean_prob):
        assert combined == {"accuracy": acc}
    assert triple.predictions["vote"] == single.predictions["prompt:prompt0"]
    assert triple.predictions["mean_prob"] == single.predictions["prompt:prompt0"]
    assert triple.best_index == 0  # a tie between prompts goes to the first


def test_generation_task_votes_over_strings(tmp_path: Path) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in [("1+1", "2"), ("2+2", "4")]))
    task = FileTask(FileTaskSpec(train=str(data), template="Q: {q}\nA:", label_field="a"))
    backbone = tiny_backbone("llama")
    prompts = [torch.randn(3, backbone.hidden_size, generator=torch.Generator().manual_seed(s)) for s in (0, 1, 0)]
    ens = Ensemble(backbone, prompts)
    result = ens.evaluate(task, task.examples("train"), batch_size=4, max_new_tokens=3)
    outputs = ens.generate(task.examples("train"), max_new_tokens=3)
    assert outputs[0] == outputs[2]  # prompts 0 and 2 are equal, so their greedy outputs are
    assert result.predictions["vote"] == outputs[0]  # and they outvote prompt 1
    assert result.mean_prob is None and "mean_prob_exact_match" not in result.to_dict()


def test_incompatible_prompt_file_is_refused(tmp_path: Path) -> None:
    other = tiny_backbone("llama", seed=7)  # same shapes, different weights
    path = tmp_path / "other.safetensors"
    save_prompt(path, torch.zeros(2, other.hidden_size), PromptMeta.for_backbone(other, 2))
    with pytest.raises(PromptFileError, match="different model"):
        Ensemble(tiny_backbone("llama"), [path])


def test_cli_train_seeds_then_ensemble(tiny_dirs: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    data = write_jsonl(tmp_path / "sent.jsonl", toy_rows(6))
    write_jsonl(tmp_path / "dev.jsonl", toy_rows(6)[::-1])
    task = ["--task", str(data), "--template", TEMPLATE, "--verbalizer", json.dumps(VERBALIZER),
            "--validation-file", str(tmp_path / "dev.jsonl")]
    model = ["--model", str(tiny_dirs["llama"]), "--threads", "1"]
    out = tmp_path / "p.safetensors"
    assert main(["train", *model, *task, "--out", str(out), "--seeds", "1,2,3", "--steps", "2", "--batch-size", "2",
                 "--prompt-length", "3", "--no-eval", "--no-progress", "--json"]) == 0
    files = [tmp_path / f"p-seed{s}.safetensors" for s in (1, 2, 3)]
    assert all(f.is_file() for f in files) and not out.exists()
    capsys.readouterr()
    report = tmp_path / "ens.json"
    argv = ["ensemble", *model, *task, *[a for f in files for a in ("--prompt", str(f))], "--limit", "4", "--json",
            "--out", str(report)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert any("vote" in k for k in result) and any("best" in k for k in result)
    assert result["prompts"] == ["p-seed1", "p-seed2", "p-seed3"] and result["examples"] == 4
    assert result["average_accuracy"] == pytest.approx(sum(r["accuracy"] for r in result["per_prompt"]) / 3)
    assert result["best_accuracy"] == max(r["accuracy"] for r in result["per_prompt"])
    assert any(line.startswith("majority vote") for line in lines)  # the table before the JSON line
    assert json.loads(report.read_text())["vote_accuracy"] == result["vote_accuracy"]
    assert main(["train", *model, *task, "--out", str(out), "--seeds", "1,1", "--steps", "1"]) == 2
