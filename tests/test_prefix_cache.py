"""The prefix cache inside the prompted model: cached ≡ uncached ≡ the library's scoring and generation ≡ the
server engine, row for row, on awkward inputs (empty, whitespace, control characters, special-token spellings,
4,000 characters) in mixed-prompt, mixed-length batches; one greedy; no-context rows refused by name."""

from __future__ import annotations

import gc

import pytest
import torch
from fastapi.testclient import TestClient

from softprompt.core.backbone import Backbone, make_backbone
from softprompt.core.bank import PromptBank
from softprompt.core.decoding import eos_token_ids
from softprompt.core.prefix_cache import supports_prefix_cache
from softprompt.core.prompted import NoContextError, PromptedModel
from softprompt.core.promptfile import PromptFile, PromptMeta
from softprompt.core.splice import IGNORE_INDEX
from softprompt.core.tiny import byte_tokenizer, tiny_config, tiny_model
from softprompt.core.tokenize import encode_inputs, make_batch, make_input_batch
from softprompt.evaluation.scoring import score_choices
from softprompt.server import Engine, create_app
from softprompt.server.engine import Job
from softprompt.tasks import Example
from tests.conftest import tiny_backbone

CACHED = ("llama", "qwen2", "gpt2")
LENGTHS = (5, 3, 0, 7)  # prompt lengths of the bank: mixed, one empty
# Awkward inputs next to normal ones; the byte tokenizer reads 4,000 characters as 4,000 tokens (cut to MAX_IN).
INPUTS = ["hello", "", "   ", "\x00\x07\x1b\u200b ctrl", "a </s> b <s> c", "<|endoftext|>", "x" * 3990 + "the end",
          "mid length text", "", "q?"]
MAX_IN = 48
ONE_TOKEN = ("a", "b", "c")  # single-token choices (one byte each): one row per input
SEVERAL = (" yes", " no way", " a")  # a multi-token choice: K rows per input


def backbone_for(family: str, *, bos: bool = True, seed: int = 0) -> Backbone:
    model, _ = tiny_model(family, seed)
    return make_backbone(model, byte_tokenizer(add_bos=bos), f"tiny-{family}")


def prompts_for(backbone: Backbone) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, backbone.hidden_size, generator=g) * 2 for n in LENGTHS]


def index_for(inputs: list[str], bos: bool) -> list[int]:
    """A mix of prompts over the rows; without BOS, an empty input never gets the empty prompt (no context)."""
    index = [(3 * i + 1) % len(LENGTHS) for i in range(len(inputs))]
    return [0 if not bos and not t and LENGTHS[n] == 0 else n for t, n in zip(inputs, index, strict=True)]


def engine_for(backbone: Backbone, prompts: list[torch.Tensor], words: tuple[str, ...], *, prefix_cache: bool = True
               ) -> tuple[Engine, list]:  # type: ignore[type-arg]
    engine = Engine(backbone, max_batch_rows=7, max_input_tokens=MAX_IN, prefix_cache=prefix_cache)
    verbalizer = {f"l{i}": w for i, w in enumerate(words)}
    files = [PromptFile(p, PromptMeta.for_backbone(backbone, len(p), verbalizer=verbalizer)) for p in prompts]
    tasks = [engine.make_task(f"t{n}", [pf], where="test") for n, pf in enumerate(files)]
    return engine, tasks


@pytest.mark.parametrize("bos", [True, False])
@pytest.mark.parametrize("words", [ONE_TOKEN, SEVERAL])
@pytest.mark.parametrize("family", CACHED)
def test_scores_cached_uncached_library_engine_agree(family: str, words: tuple[str, ...], bos: bool) -> None:
    backbone = backbone_for(family, bos=bos)
    prompts = prompts_for(backbone)
    cached = PromptedModel(backbone, PromptBank.from_prompts(prompts))
    plain = PromptedModel(backbone, PromptBank.from_prompts(prompts), prefix_cache=False)
    assert cached.prefix_cache is not None and plain.prefix_cache is None
    index = index_for(INPUTS, bos)
    # Mixed prompts in one forward, straight through the model's methods.
    batch = make_batch(backbone.tokenizer, INPUTS, [words[i % 3] for i in range(len(INPUTS))], encoder_decoder=False,
                       max_input_tokens=MAX_IN)
    got = cached.sequence_logprob(batch, torch.tensor(index))
    with torch.no_grad():
        ref = plain.sequence_logprob(batch, torch.tensor(index))
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=0)
    # The check can fail: another row's prompt gives other numbers.
    wrong = [(n + 1) % 4 if INPUTS[e] or LENGTHS[(n + 1) % 4] else (n + 2) % 4 for e, n in enumerate(index)]
    assert (cached.sequence_logprob(batch, torch.tensor(wrong)) - ref).abs().max() > 1e-3
    # The library's rank classification of each row alone (one row, or K rows, per input)...
    examples = [Example(t, words[0], words) for t in INPUTS]
    alone = [score_choices(cached, [examples[e]], (n,), max_input_tokens=MAX_IN)[0, 0] for e, n in enumerate(index)]
    # ...equals every prompt for every input in mixed batches, cached or not, one row or K rows per input.
    ok = [e for e in range(len(INPUTS)) if bos or INPUTS[e]]
    lib = score_choices(cached, [examples[e] for e in ok], range(4), batch_size=5, max_input_tokens=MAX_IN)
    lib_plain = score_choices(plain, [examples[e] for e in ok], range(4), batch_size=5, max_input_tokens=MAX_IN,
                              share_prefix=False)
    torch.testing.assert_close(lib, lib_plain, atol=2e-5, rtol=0)
    for k, e in enumerate(ok):
        torch.testing.assert_close(lib[index[e], k], alone[e], atol=2e-5, rtol=0)
    # The server engine: all tasks' jobs in one run, chunks of 7 rows sorted by length.
    for prefix_cache in (True, False):
        engine, tasks = engine_for(backbone, prompts, words, prefix_cache=prefix_cache)
        jobs = [Job("classify", tasks[n], [t]) for t, n in zip(INPUTS, index, strict=True)]
        assert (tasks[0].label_ids is None) == (words == SEVERAL)
        engine.run(jobs)
        for job, want in zip(jobs, alone, strict=True):
            assert job.error is None
            assert list(job.result[0]["scores"].values()) == pytest.approx(want.tolist(), abs=2e-5)


@pytest.mark.parametrize("family", CACHED)
def test_generation_cached_uncached_library_engine_agree(family: str) -> None:
    backbone = backbone_for(family, bos=False)
    prompts = prompts_for(backbone)
    cached = PromptedModel(backbone, PromptBank.from_prompts(prompts))
    plain = PromptedModel(backbone, PromptBank.from_prompts(prompts), prefix_cache=False)
    index = index_for(INPUTS, bos=False)
    limits = [(i % 4) + 3 for i in range(len(INPUTS))]  # per-row limits in one batch
    got = cached.generate(INPUTS, torch.tensor(index), max_new_tokens=limits, max_input_tokens=MAX_IN)
    ref = plain.generate(INPUTS, torch.tensor(index), max_new_tokens=limits, max_input_tokens=MAX_IN)
    assert got == ref
    assert any(got)  # something was generated (else equality says nothing)
    for prefix_cache in (True, False):
        engine, tasks = engine_for(backbone, prompts, ONE_TOKEN, prefix_cache=prefix_cache)
        jobs = [Job("generate", tasks[n], [t], max_new_tokens=m) for t, n, m in zip(INPUTS, index, limits, strict=True)]
        engine.run(jobs)
        assert [j.result[0]["text"] for j in jobs] == ref


def test_row_limits_cut_generation() -> None:
    backbone = backbone_for("llama")
    pm = PromptedModel(backbone, PromptBank.from_prompts(prompts_for(backbone)))
    ids, mask = make_input_batch(backbone.tokenizer, INPUTS[:3])
    index = torch.tensor([0, 1, 3])
    full = pm.generate_ids(ids, mask, index, [6, 6, 6])
    assert pm.generate_ids(ids, mask, index, [2, 0, 6]) == [full[0][:2], [], full[2]]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "gemma3", "t5"])
def test_greedy_is_transformers_greedy_on_a_plain_config(family: str) -> None:
    """With nothing in the model's generation config, the one greedy loop equals transformers' greedy search."""
    from transformers import GenerationConfig

    backbone = tiny_backbone(family)
    plain = PromptedModel(backbone, PromptBank.from_prompts(prompts_for(backbone)), prefix_cache=False)
    texts = ["hello there", "x", "a longer input, with commas"]
    index = torch.tensor([0, 3, 1])
    ids, mask = make_input_batch(backbone.tokenizer, texts)
    s, _ = plain.layout(ids, mask, index)
    config = GenerationConfig(max_new_tokens=6, do_sample=False, num_beams=1, eos_token_id=1, pad_token_id=0,
                              decoder_start_token_id=0 if family == "t5" else None)
    out = backbone.model.generate(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask,
                                  generation_config=config)
    want = [t.strip() for t in backbone.tokenizer.batch_decode(out, skip_special_tokens=True)]
    assert plain.generate(texts, index, max_new_tokens=6) == want


def reference_greedy(pm: PromptedModel, text: str, n: int, steps: int, eos: set[int]) -> list[int]:
    """Pure argmax by recomputing the whole spliced row at every step: no cache, no generate()."""
    ids = encode_inputs(pm.backbone.tokenizer, [text], 256)[0]
    out: list[int] = []
    for _ in range(steps):
        row = torch.tensor([ids + out])
        s, _ = pm.layout(row, torch.ones_like(row), torch.tensor([n]))
        with torch.no_grad():
            token = int(pm.model(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask,
                                 position_ids=s.position_ids).logits[0, -1].argmax())
        if token in eos:
            break
        out.append(token)
    return out


def test_shipped_generation_config_does_not_leak() -> None:
    """A model shipping a repetition penalty and two EOS ids: server engine and library give the same, purely
    greedy text; the penalty is ignored and either EOS id stops a row."""
    backbone = backbone_for("llama")
    prompts = prompts_for(backbone)
    plain = PromptedModel(backbone, PromptBank.from_prompts(prompts), prefix_cache=False)
    texts, index = ["hello there", "mid length text"], [0, 3]
    free = [reference_greedy(plain, t, n, 10, set()) for t, n in zip(texts, index, strict=True)]
    # EOS ids: a token row 0 first emits at step 4, one row 1 first emits at step 5 (and neither earlier in the other).
    eos_a, eos_b = free[0][4], free[1][5]
    assert eos_a not in free[0][:4] and eos_b not in free[1][:5] and eos_a != eos_b
    backbone.model.generation_config.eos_token_id = [eos_a, eos_b]
    backbone.model.generation_config.repetition_penalty = 5.0
    assert eos_token_ids(backbone) == {eos_a, eos_b, backbone.tokenizer.eos_token_id}
    want = [reference_greedy(plain, t, n, 10, {eos_a, eos_b, 1}) for t, n in zip(texts, index, strict=True)]
    assert len(want[0]) <= 4 and len(want[1]) <= 5  # each row stopped at (or before) its EOS id
    want_text = [t.strip() for t in backbone.tokenizer.batch_decode(want, skip_special_tokens=True)]
    cached = PromptedModel(backbone, PromptBank.from_prompts(prompts))
    assert cached.generate(texts, torch.tensor(index), max_new_tokens=10) == want_text
    assert plain.generate(texts, torch.tensor(index), max_new_tokens=10) == want_text
    engine, tasks = engine_for(backbone, prompts, ONE_TOKEN)
    jobs = [Job("generate", tasks[n], [t], max_new_tokens=10) for t, n in zip(texts, index, strict=True)]
    engine.run(jobs)
    assert [j.result[0]["text"] for j in jobs] == want_text
    # The check can fail: transformers' generate() applies the shipped penalty and changes the text.
    ids, mask = make_input_batch(backbone.tokenizer, texts)
    s, _ = plain.layout(ids, mask, torch.tensor(index))
    shipped = backbone.model.generate(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask,
                                      max_new_tokens=10)
    assert [t.strip() for t in backbone.tokenizer.batch_decode(shipped, skip_special_tokens=True)] != want_text


def test_no_context_is_a_named_error_never_a_padding_score() -> None:
    backbone = backbone_for("llama", bos=False)
    prompts = prompts_for(backbone)
    for prefix_cache in (True, False):
        pm = PromptedModel(backbone, PromptBank.from_prompts(prompts), prefix_cache=prefix_cache)
        examples = [Example("fine", "a", ONE_TOKEN), Example("", "a", ONE_TOKEN)]
        with pytest.raises(NoContextError, match="for input ''"):
            score_choices(pm, examples, (2,))  # prompt 2 is empty
        with pytest.raises(NoContextError, match="for input ''"):
            score_choices(pm, [Example("", " a", SEVERAL)], (2,))
        with pytest.raises(NoContextError, match="for input ''"):
            pm.generate(["ok", ""], torch.tensor([1, 2]))
        # With a prompt the empty input is fine: its last prompt slot predicts the first token.
        assert torch.isfinite(score_choices(pm, examples, (1,))).all()
    engine, tasks = engine_for(backbone, prompts, ONE_TOKEN)
    bad, good = Job("classify", tasks[2], ["fine", ""]), Job("classify", tasks[2], ["fine"])
    engine.run([bad, good])
    assert isinstance(bad.error, NoContextError) and not bad.result
    assert good.error is None and len(good.result) == 1
    engine.add(tasks[2])
    with TestClient(create_app(engine)) as c:
        r = c.post("/v1/classify", json={"task": "t2", "inputs": ["fine", ""]})
        assert r.status_code == 422 and "input ''" in r.json()["detail"]
        assert c.post("/v1/classify", json={"task": "t2", "inputs": ["fine"]}).status_code == 200


def test_special_token_spellings_are_text() -> None:
    tok = byte_tokenizer()
    ids = encode_inputs(tok, ["a</s>b<s>", "<pad>"], 64)
    assert ids[0][0] == tok.bos_token_id
    assert {tok.eos_token_id, tok.pad_token_id} & set(ids[0][1:] + ids[1][1:]) == set()
    assert tok.decode(ids[0][1:]) == "a</s>b<s>"
    batch = make_batch(tok, ["x"], [" </s>"], encoder_decoder=False)
    assert tok.eos_token_id not in batch.labels[batch.labels != IGNORE_INDEX].tolist()


def test_one_row_per_input_for_one_token_labels() -> None:
    backbone = backbone_for("llama")
    prompts = prompts_for(backbone)
    rows: list[int] = []
    backbone.model.register_forward_pre_hook(lambda _m, _a, kw: rows.append(len(kw["inputs_embeds"])),
                                             with_kwargs=True)
    for words, per_input in ((ONE_TOKEN, 1), (SEVERAL, 3)):
        engine, tasks = engine_for(backbone, prompts, words)
        job = Job("classify", tasks[1], INPUTS[:4])
        rows.clear()
        engine.run([job])
        assert job.rows == 4 * per_input == sum(rows)


def test_cache_follows_the_bank_and_training_stays_uncached() -> None:
    backbone = backbone_for("llama")
    prompts = prompts_for(backbone)
    pm = PromptedModel(backbone, PromptBank.from_prompts(prompts))
    plain = PromptedModel(backbone, PromptBank.from_prompts(prompts), prefix_cache=False)
    batch = make_batch(backbone.tokenizer, INPUTS[:4], [" a", " bc", " d", " e"], encoder_decoder=False)
    index = torch.tensor([0, 1, 3, 0])
    before = pm.sequence_logprob(batch, index).detach()
    # Training: the loss's gradient reaches every prompt slot, as without the cache.
    pm.loss(batch, index).backward()
    plain.loss(batch, index).backward()
    torch.testing.assert_close(pm.bank.weight.grad, plain.bank.weight.grad)
    # A step changes the prompts in place; the cached scores follow.
    with torch.no_grad():
        for model in (pm, plain):
            model.bank.weight -= 0.5 * model.bank.weight.grad
    with torch.no_grad():
        after, ref = pm.sequence_logprob(batch, index), plain.sequence_logprob(batch, index)
    torch.testing.assert_close(after, ref, atol=2e-5, rtol=0)
    assert (after - before).abs().max() > 1e-3


def test_replaced_task_answers_from_the_prompt_it_resolved() -> None:
    backbone = backbone_for("llama")
    prompts = prompts_for(backbone)
    engine, tasks = engine_for(backbone, prompts[:2], ONE_TOKEN)
    for t in tasks:
        engine.add(t)
    old = Job("classify", engine.get("t0"), ["hello"])  # resolved before the replacement
    replacement = engine.make_task("t0", [PromptFile(prompts[3], PromptMeta.for_backbone(
        backbone, 7, verbalizer={f"l{i}": w for i, w in enumerate(ONE_TOKEN)}))], where="test")
    engine.add(replacement)
    assert replacement.members[0].index not in {m.index for t in tasks for m in t.members}
    new = Job("classify", engine.get("t0"), ["hello"])
    engine.run([old, new])
    lib = PromptedModel(backbone, PromptBank.from_prompts(prompts))
    want = score_choices(lib, [Example("hello", "a", ONE_TOKEN)], (0, 3))[:, 0]
    assert list(old.result[0]["scores"].values()) == pytest.approx(want[0].tolist(), abs=2e-5)
    assert list(new.result[0]["scores"].values()) == pytest.approx(want[1].tolist(), abs=2e-5)
    # Once nothing holds the old task, its slot is reused by the next load.
    freed = old.task.members[0].index
    del old, tasks
    gc.collect()
    again = engine.make_task("t9", [PromptFile(prompts[1], PromptMeta.for_backbone(backbone, 3))], where="test")
    assert again.members[0].index == freed


@pytest.mark.parametrize("family", ["t5", "gemma3"])
def test_other_families_run_uncached(family: str) -> None:
    backbone = tiny_backbone(family)
    assert not supports_prefix_cache(backbone)
    assert PromptedModel(backbone, PromptBank(torch.zeros(1, 2, backbone.hidden_size))).prefix_cache is None
    assert not Engine(backbone).prefix_cache


def test_sliding_window_configs_run_uncached() -> None:
    from transformers import AutoModelForCausalLM

    config = tiny_config("qwen2")
    config.use_sliding_window, config.sliding_window, config.max_window_layers = True, 8, 0
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    backbone = make_backbone(AutoModelForCausalLM.from_config(config), byte_tokenizer(), "tiny-qwen2-sliding")
    assert not supports_prefix_cache(backbone)
    assert supports_prefix_cache(tiny_backbone("qwen2"))


@pytest.mark.parametrize("family", CACHED)
def test_float_mask_is_the_boolean_mask_bit_for_bit(family: str) -> None:
    """The additive mask handed to SDPA (once per forward) gives exactly the outputs of the boolean mask transformers
    builds (converted by SDPA in every layer): cached and uncached, padded mixed-prompt batches, scores, next-token
    distributions, generation and a training gradient."""
    from transformers.masking_utils import sdpa_mask

    from softprompt.core.splice import additive_causal_mask

    backbone = backbone_for(family, bos=False)
    prompts = prompts_for(backbone)
    index = torch.tensor(index_for(INPUTS, bos=False))
    batch = make_batch(backbone.tokenizer, INPUTS, [ONE_TOKEN[i % 3] for i in range(len(INPUTS))],
                       encoder_decoder=False, max_input_tokens=MAX_IN)
    ids, attention = make_input_batch(backbone.tokenizer, INPUTS, MAX_IN)
    out = {}
    for additive in (True, False):
        for prefix_cache in (True, False):
            pm = PromptedModel(backbone, PromptBank.from_prompts(prompts), prefix_cache=prefix_cache)
            assert pm._additive_mask  # a tiny CPU model with SDPA: the float mask is on by default
            pm._additive_mask = additive
            with torch.no_grad():
                scores = pm.sequence_logprob(batch, index)
                nxt = pm.next_token_logprobs(ids, attention, index)
            text = pm.generate(INPUTS, index, max_new_tokens=4, max_input_tokens=MAX_IN)
            pm.bank.weight.grad = None
            pm.loss(batch, index).backward()  # training: uncached, padded
            out[additive, prefix_cache] = (scores, nxt, text, pm.bank.weight.grad.clone())
    for prefix_cache in (True, False):
        new, old = out[True, prefix_cache], out[False, prefix_cache]
        for a, b in zip(new[:2] + new[3:], old[:2] + old[3:], strict=True):
            assert torch.equal(a, b)
        assert new[2] == old[2]
    # The mask is transformers' own rule: causal over a cache of C columns, then padding.
    mask = torch.tensor([[0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]])
    want = sdpa_mask(batch_size=3, q_length=4, kv_length=6, q_offset=2, attention_mask=mask.bool(),
                     allow_is_causal_skip=False)
    got = additive_causal_mask(mask, 4, torch.float32)
    assert torch.equal(got == 0, want) and bool(torch.isneginf(got[~want]).all())
