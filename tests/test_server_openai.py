"""The OpenAI-compatible routes through the ``openai`` client, unchanged, against the real server on 127.0.0.1:
``model`` names a task, classification answers its label text, generation generates, and every field the server
cannot honour is a 400 in OpenAI's shape naming it."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
import torch

from softprompt.core.bank import PromptBank
from softprompt.core.prompted import PromptedModel
from softprompt.server import Engine, ServerConfig, create_app
from tests._serving import (
    TEXTS,
    VERBALIZER,
    LiveServer,
    make_prompt_dir,
    offline_scores,
)
from tests.conftest import tiny_backbone

WORDS = tuple(VERBALIZER.values())


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    backbone = tiny_backbone("llama")
    root = tmp_path_factory.mktemp("prompts")
    prompts = make_prompt_dir(backbone, Path(root))
    engine = Engine(backbone)
    engine.load_dir(root)
    with LiveServer(create_app(engine, ServerConfig(max_wait_ms=1))) as url:
        yield backbone, prompts, url


@pytest.fixture
def client(setup) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    with openai.OpenAI(base_url=setup[2] + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def test_models_list_the_tasks(client: openai.OpenAI) -> None:
    assert sorted(m.id for m in client.models.list()) == ["a", "b", "c", "ens", "gen", "sent"]
    assert client.models.retrieve("gen").id == "gen"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("nope")
    assert err.value.code == "model_not_found"


def test_classification_answers_the_label_text(client: openai.OpenAI, setup) -> None:  # type: ignore[no-untyped-def]
    backbone, prompts, _ = setup
    out = client.completions.create(model="a", prompt=TEXTS[:4])
    assert out.object == "text_completion" and out.model == "a" and out.id.startswith("cmpl-")
    ref = offline_scores(backbone, prompts["a"][0], TEXTS[:4], WORDS)
    assert [c.text for c in out.choices] == [WORDS[int(s.argmax())].strip() for s in ref]
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert all(c.finish_reason == "stop" and c.logprobs is None for c in out.choices)
    assert out.usage is not None and out.usage.prompt_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    one = client.completions.create(model="a", prompt=TEXTS[1])
    assert one.choices[0].text == out.choices[1].text


def test_generation_generates(client: openai.OpenAI, setup) -> None:  # type: ignore[no-untyped-def]
    backbone, prompts, _ = setup
    pm = PromptedModel(backbone, PromptBank(prompts["gen"][0].unsqueeze(0)))
    want = pm.generate(TEXTS[:3], torch.zeros(3, dtype=torch.long), max_new_tokens=6)
    out = client.completions.create(model="gen", prompt=TEXTS[:3], max_tokens=6)
    assert [c.text for c in out.choices] == want
    tokens = [len(backbone.tokenizer(w, add_special_tokens=False)["input_ids"]) for w in want]
    assert [c.finish_reason for c in out.choices] == ["length" if n >= 6 else "stop" for n in tokens]
    assert "length" in [c.finish_reason for c in out.choices]  # a random tiny model rarely ends within 6 tokens
    assert out.usage.completion_tokens == sum(tokens)
    stop = next(ch for ch in want[0][1:] if not ch.isspace())  # a character the first output contains
    cut = client.completions.create(model="gen", prompt=TEXTS[0], max_tokens=6, stop=[stop, "\x00never"])
    assert cut.choices[0].text == want[0][:want[0].index(stop)] and cut.choices[0].finish_reason == "stop"


def test_no_op_values_are_accepted(client: openai.OpenAI) -> None:
    out = client.completions.create(model="a", prompt="x", temperature=0, top_p=1.0, n=1, best_of=1, echo=False,
                                    stream=False, logprobs=None, suffix=None, presence_penalty=0,
                                    frequency_penalty=0, logit_bias={}, seed=7, user="someone", max_tokens=None)
    assert len(out.choices) == 1


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", 0.7), ("top_p", 0.5), ("n", 2), ("best_of", 3), ("echo", True), ("logprobs", 1),
    ("logprobs", 0), ("suffix", " end"), ("presence_penalty", 0.5), ("frequency_penalty", -1.0),
    ("logit_bias", {"50": 10}), ("stream_options", {"include_usage": True}), ("max_tokens", 129),
    ("max_tokens", 0), ("max_tokens", 2.5), ("stop", ["a", "b", "c", "d", "e"]), ("prompt", [1, 2, 3]),
    ("prompt", []), ("stream", 0), ("n", True), ("seed", False), ("echo", 1),
    ("functions", []), ("response_format", {"type": "json_object"}),
])
def test_unsupported_fields_are_400_naming_them(client: openai.OpenAI, field: str, value: object) -> None:
    body = {"model": "a", "prompt": "x", field: value}
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="a", prompt="x", extra_body=body)
    assert err.value.status_code == 400 and err.value.param == field, err.value.body
    assert err.value.type == "invalid_request_error" and field in err.value.message


def test_stream_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="gen", prompt="x", stream=True)
    assert err.value.param == "stream" and "streaming is not supported" in err.value.message


def test_openai_errors_have_openai_shape(client: openai.OpenAI, setup) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="nope", prompt="x")
    assert err.value.param == "model" and err.value.code == "model_not_found"
    url = setup[2]
    for raw in (b"{", b"null", b"[]", b'{"model": "a"}', b'{"model": "../a", "prompt": "x"}'):
        r = httpx.post(url + "/v1/completions", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
    r = httpx.delete(url + "/v1/completions")
    assert r.status_code == 405 and "error" in r.json()
