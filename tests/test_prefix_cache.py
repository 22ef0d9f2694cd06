"""The prefix cache gives the splice's results: mixed prompts of different lengths, padded inputs, fp32 ≤ 1e-5."""

from __future__ import annotations

import pytest
import torch

from softprompt.bank import PromptBank
from softprompt.batching import make_batch, make_input_batch
from softprompt.prompted import PromptedModel
from softprompt.server.engine import Engine
from softprompt.server.prefix_cache import (
    cached_generate,
    cached_target_logprobs,
    prompt_kv,
    supports_prefix_cache,
)
from tests._serving import (
    tiny,
)

CACHED = ("llama", "qwen2", "gpt2")
INPUTS = ["hello", "a much longer input text here, well past the others", "x", "mid length", "", "q?"]
TARGETS = [" yes", " no way", " a", " positive", " b", " longer target text"]


def setup(family: str):  # type: ignore[no-untyped-def]
    backbone = tiny(family)
    g = torch.Generator().manual_seed(1)
    # Lengths 5, 3, 0 (no prompt) and 7: the cache left-pads the shorter ones.
    prompts = [torch.randn(n, backbone.hidden_size, generator=g) for n in (5, 3, 0, 7)]
    pm = PromptedModel(backbone, PromptBank.from_prompts(prompts))
    return backbone, pm, [prompt_kv(backbone, p) for p in prompts]


@pytest.mark.parametrize("family", CACHED)
def test_cached_logprobs_equal_splice(family: str) -> None:
    backbone, pm, kvs = setup(family)
    index = torch.tensor([0, 1, 2, 3, 3, 1])
    batch = make_batch(backbone.tokenizer, INPUTS, TARGETS, encoder_decoder=False)
    ref, ref_mask = pm.target_logprobs(batch, index)
    got, got_mask = cached_target_logprobs(backbone, [kvs[i] for i in index], batch)
    assert torch.equal(ref_mask.cpu(), got_mask.cpu())
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    # The check can fail: another row's prompt gives other numbers.
    wrong, _ = cached_target_logprobs(backbone, [kvs[(i + 1) % 4] for i in index], batch)
    assert (wrong - ref).abs().max() > 1e-3


@pytest.mark.parametrize("family", CACHED)
def test_cached_generation_equals_generate(family: str) -> None:
    backbone, pm, kvs = setup(family)
    index = torch.tensor([3, 2, 1, 0, 0, 3])
    ids, mask = make_input_batch(backbone.tokenizer, INPUTS)
    new = cached_generate(backbone, [kvs[i] for i in index], ids, mask, [6] * len(INPUTS))
    got = [t.strip() for t in backbone.tokenizer.batch_decode(new, skip_special_tokens=True)]
    assert got == pm.generate(INPUTS, index, max_new_tokens=6)


def test_row_limits_cut_generation() -> None:
    backbone, _, kvs = setup("llama")
    ids, mask = make_input_batch(backbone.tokenizer, INPUTS[:3])
    full = cached_generate(backbone, kvs[:3], ids, mask, [6, 6, 6])
    cut = cached_generate(backbone, kvs[:3], ids, mask, [2, 0, 6])
    assert cut == [full[0][:2], [], full[2]]


@pytest.mark.parametrize("family", ["t5", "gemma3"])
def test_other_families_use_the_splice(family: str) -> None:
    backbone = tiny(family)
    assert not supports_prefix_cache(backbone)
    assert not Engine(backbone).prefix_cache
