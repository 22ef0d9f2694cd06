"""The HTTP API on a tiny model: answers equal the offline path (a served row is the row trained), mixed batches
equal single rows, a training folder is servable, admin and bad input give 4xx with clear messages and never stop
the server."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from softprompt.cli import main
from softprompt.core.bank import PromptBank
from softprompt.core.prompted import PromptedModel
from softprompt.core.promptfile import PromptFile, PromptFileError, PromptMeta, load_prompt
from softprompt.evaluation.scoring import score_choices
from softprompt.server import Engine, ServerConfig, create_app
from softprompt.server.app import ConfigError
from softprompt.server.client import Client, ServerError
from softprompt.server.engine import Job
from softprompt.tasks import FileTask, FileTaskSpec, get_task
from softprompt.training.prompt_tuning import TrainConfig, train_prompt
from tests._serving import (
    TEXTS,
    VERBALIZER,
    LiveServer,
    ServeProcess,
    make_prompt_dir,
    offline_scores,
    prompt_bytes,
    write_prompt,
)
from tests.conftest import tiny_backbone
from tests.toytask import toy_rows, write_jsonl

TOKEN = "test-admin-token"
WORDS = tuple(VERBALIZER.values())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    backbone = tiny_backbone("llama")
    root = tmp_path_factory.mktemp("prompts")
    prompts = make_prompt_dir(backbone, root)
    return backbone, root, prompts


@pytest.fixture
def client(served) -> TestClient:  # type: ignore[no-untyped-def]
    backbone, root, _ = served
    engine = Engine(backbone, max_batch_rows=16)
    engine.load_dir(root)
    with TestClient(create_app(engine, ServerConfig(admin_token=TOKEN, admin=True, max_upload_bytes=64_000))) as c:
        yield c


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tasks_and_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "tasks": 6}
    body = client.get("/v1/tasks").json()
    assert body["prefix_cache"] is True
    tasks = {t["name"]: t for t in body["tasks"]}
    assert sorted(tasks) == ["a", "b", "c", "ens", "gen", "sent"]
    assert tasks["ens"]["prompts"] == 3 and tasks["ens"]["prompt_lengths"] == [2, 3, 4]
    assert tasks["gen"]["kind"] == "generation"
    assert tasks["sent"]["labels"] == ["0", "1"]  # sst2's verbalizer, from the prompt's task


@pytest.mark.parametrize("task", ["a", "b", "c"])
def test_classify_equals_offline(client: TestClient, served, task: str) -> None:  # type: ignore[no-untyped-def]
    backbone, _, prompts = served
    results = client.post("/v1/classify", json={"task": task, "inputs": TEXTS}).json()["results"]
    ref = offline_scores(backbone, prompts[task][0], TEXTS, WORDS)
    labels = list(VERBALIZER)
    for r, s, text in zip(results, ref, TEXTS, strict=True):
        assert r["input"] == text
        assert r["label"] == labels[int(s.argmax())]
        assert r["text"] == VERBALIZER[r["label"]].strip()
        for lab, v in zip(labels, s.tolist(), strict=True):
            assert math.isclose(r["scores"][lab], v, abs_tol=1e-4)


def test_known_task_template(client: TestClient, served) -> None:  # type: ignore[no-untyped-def]
    backbone, _, prompts = served
    sst2 = get_task("sst2")
    results = client.post("/v1/classify", json={"task": "sent", "inputs": TEXTS}).json()["results"]
    formatted = [sst2.text_template.replace("{text}", t) for t in TEXTS]
    ref = offline_scores(backbone, prompts["sent"][0], formatted, tuple(sst2.verbalizer.values()))
    assert [r["label"] for r in results] == [list(sst2.verbalizer)[int(s.argmax())] for s in ref]


def test_ensemble_majority_vote(client: TestClient, served) -> None:  # type: ignore[no-untyped-def]
    backbone, _, prompts = served
    results = client.post("/v1/classify", json={"task": "ens", "inputs": TEXTS}).json()["results"]
    per_member = torch.stack([offline_scores(backbone, p, TEXTS, WORDS) for p in prompts["ens"]])  # [3, E, K]
    labels = list(VERBALIZER)
    for e, r in enumerate(results):
        votes = [labels[int(per_member[m, e].argmax())] for m in range(3)]
        assert r["votes"] == {lab: votes.count(lab) for lab in set(votes)}
        assert votes.count(r["label"]) == max(votes.count(v) for v in votes)
        assert math.isclose(r["scores"]["pos"], float(per_member[:, e, labels.index("pos")].mean()), abs_tol=1e-4)


def test_generate_equals_offline(client: TestClient, served) -> None:  # type: ignore[no-untyped-def]
    backbone, _, prompts = served
    body = {"task": "gen", "inputs": TEXTS, "max_new_tokens": 5}
    got = [r["text"] for r in client.post("/v1/generate", json=body).json()["results"]]
    pm = PromptedModel(backbone, PromptBank(prompts["gen"][0].unsqueeze(0)))
    assert got == pm.generate(TEXTS, torch.zeros(len(TEXTS), dtype=torch.long), max_new_tokens=5)


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_mixed_batch_equals_alone(served, prefix_cache: bool) -> None:  # type: ignore[no-untyped-def]
    backbone, root, _ = served
    engine = Engine(backbone, max_batch_rows=64, prefix_cache=prefix_cache)
    engine.load_dir(root)
    jobs = [Job("classify", engine.get(t), TEXTS[i:i + 3]) for i, t in enumerate(["a", "b", "ens", "c", "sent"])]
    jobs.append(Job("generate", engine.get("gen"), TEXTS[:4], max_new_tokens=4))
    jobs.append(Job("generate", engine.get("a"), TEXTS[2:5], max_new_tokens=2))
    engine.run(jobs)
    for job in jobs:
        alone = Job(job.kind, job.task, job.inputs, job.max_new_tokens)
        engine.run([alone])
        for r, a in zip(job.result, alone.result, strict=True):
            assert r["text"] == a["text"] and r.get("label") == a.get("label")
            for lab in r.get("scores", {}):
                assert math.isclose(r["scores"][lab], a["scores"][lab], rel_tol=1e-6, abs_tol=1e-5)


def test_concurrent_requests_share_a_forward(served) -> None:  # type: ignore[no-untyped-def]
    backbone, root, _ = served
    engine = Engine(backbone, max_batch_rows=256)
    engine.load_dir(root)
    app = create_app(engine, ServerConfig(max_batch_rows=256, max_wait_ms=200))
    tasks = ["a", "b", "c", "ens", "sent"] * 4

    async def go() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                out = await asyncio.gather(*(c.post("/v1/classify", json={"task": t, "inputs": [TEXTS[i % 8]]})
                                             for i, t in enumerate(tasks)))
                metrics = (await c.get("/metrics")).text
                return [*out, metrics]

    *responses, metrics = asyncio.run(go())
    assert all(r.status_code == 200 for r in responses)
    # All 20 requests (5 tasks) arrived within the 200 ms window: fewer batches than requests, several tasks each.
    count = float(next(line.split()[-1] for line in metrics.splitlines()
                       if line.startswith("softprompt_batch_tasks_count")))
    total_tasks = float(next(line.split()[-1] for line in metrics.splitlines()
                             if line.startswith("softprompt_batch_tasks_sum")))
    assert count < len(tasks) and total_tasks / count > 1


def test_admin_auth(client: TestClient, served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    backbone, _, _ = served
    write_prompt(backbone, tmp_path / "p.safetensors", 3, 42)
    body = (tmp_path / "p.safetensors").read_bytes()
    r = client.put("/v1/prompts/new", content=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.put("/v1/prompts/new", content=body, headers=auth("wrong-token!")).status_code == 403
    assert client.delete("/v1/prompts/a", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.delete("/v1/prompts/a", headers=auth("nope-nope")).status_code == 403
    assert client.post("/v1/classify", json={"task": "a", "inputs": ["x"]}).status_code == 200  # a still served


def test_hot_load_replace_delete(client: TestClient, served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    backbone, _, _ = served
    prompt = write_prompt(backbone, tmp_path / "p.safetensors", 3, 42)
    c = Client(http=client, token=TOKEN)
    info = client.put("/v1/prompts/new", content=(tmp_path / "p.safetensors").read_bytes(), headers=auth())
    assert info.status_code == 201 and info.json()["prompt_lengths"] == [3]
    got = c.classify("new", TEXTS[:3])
    ref = offline_scores(backbone, prompt, TEXTS[:3], WORDS)
    assert [r["label"] for r in got] == [list(VERBALIZER)[int(s.argmax())] for s in ref]
    write_prompt(backbone, tmp_path / "q.safetensors", 6, 43)
    assert c.put_prompt("new", tmp_path / "q.safetensors")["prompt_lengths"] == [6]  # replaced (200)
    assert c.delete_prompt("new") == {"deleted": "new"}
    with pytest.raises(ServerError) as err:
        c.classify("new", ["x"])
    assert err.value.status == 404 and "unknown task 'new'" in err.value.detail
    assert client.delete("/v1/prompts/new", headers=auth()).status_code == 404


def nan_prompt(backbone, path: Path) -> bytes:  # type: ignore[no-untyped-def]
    meta = PromptMeta.for_backbone(backbone, 2)
    prompt = torch.zeros(2, backbone.hidden_size)
    prompt[0, 0] = float("nan")
    header = {"format": "softprompt", "format_version": "2", "softprompt": json.dumps(meta.to_json())}
    save_file({"prompt": prompt}, str(path), metadata=header)
    return path.read_bytes()


def test_bad_uploads_are_4xx_and_server_keeps_serving(client: TestClient, tmp_path: Path) -> None:
    other = tiny_backbone("qwen2")  # same hidden size, other weights: the fingerprint must refuse it
    write_prompt(other, tmp_path / "other.safetensors", 3, 1)
    small = tiny_backbone("llama")
    write_prompt(tiny_backbone("llama", hidden=16), tmp_path / "h16.safetensors", 3, 1)
    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "plain.safetensors"))
    cases = {
        "other": ((tmp_path / "other.safetensors").read_bytes(), 422, "different model"),
        "h16": ((tmp_path / "h16.safetensors").read_bytes(), 422, "hidden size 16"),
        "nan": (nan_prompt(small, tmp_path / "nan.safetensors"), 422, "NaN"),
        "garbage": (b"this is not a safetensors file" * 10, 422, "not a readable safetensors"),
        "plain": ((tmp_path / "plain.safetensors").read_bytes(), 422, "not a softprompt prompt file"),
        "empty": (b"", 422, "empty body"),
        "huge": (b"\0" * 70_000, 413, "exceeds the limit"),
    }
    for name, (body, code, message) in cases.items():
        r = client.put(f"/v1/prompts/{name}", content=body, headers=auth())
        assert r.status_code == code, (name, r.text)
        assert message in r.json()["detail"], (name, r.json())
        assert "/tmp" not in r.json()["detail"]  # the message names the upload, not a server path
        assert client.post("/v1/classify", json={"task": "a", "inputs": ["x"]}).status_code == 200
    assert {t["name"] for t in client.get("/v1/tasks").json()["tasks"]} == {"a", "b", "c", "ens", "gen", "sent"}


@pytest.mark.parametrize("name", ["..", "..%2F..%2Fetc", "a..b", ".hidden", "x" * 65, "a b", "a%00b", "-x"])
def test_unsafe_names_refused(client: TestClient, name: str) -> None:
    r = client.put(f"/v1/prompts/{name}", content=b"x", headers=auth())
    assert 400 <= r.status_code < 500, (name, r.status_code)
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize(("path", "body", "code"), [
    ("/v1/classify", {"task": "nope", "inputs": ["x"]}, 404),
    ("/v1/classify", {"task": "a", "inputs": []}, 422),
    ("/v1/classify", {"task": "a", "inputs": ["x"] * 65}, 422),
    ("/v1/classify", {"task": "a", "inputs": ["x" * 4001]}, 422),
    ("/v1/classify", {"task": "a", "inputs": "x"}, 422),
    ("/v1/classify", {"task": "a", "inputs": [3]}, 422),
    ("/v1/classify", {"task": "a", "inputs": ["x"], "extra": 1}, 422),
    ("/v1/classify", {"task": "../a", "inputs": ["x"]}, 422),
    ("/v1/classify", {"task": "gen", "inputs": ["x"]}, 422),
    ("/v1/classify", {"task": "a", "inputs": ["x", "y"], "choices": [[" a", " b"]]}, 422),
    ("/v1/generate", {"task": "gen", "inputs": ["x"], "max_new_tokens": True}, 422),
    ("/v1/generate", {"task": "gen", "inputs": ["x"], "max_new_tokens": "5"}, 422),
    ("/v1/classify", {"task": "a", "inputs": ["x"], "choices": [" a"]}, 422),
    ("/v1/classify", {"task": "a", "inputs": ["x"], "choices": [" a", ""]}, 422),
    ("/v1/classify", {"task": "a", "inputs": ["x"], "choices": [" a"] * 17}, 422),
    ("/v1/classify", {"task": "a", "inputs": ["x"], "choices": [" a", " b" * 501]}, 422),
    ("/v1/classify", {"task": "a", "inputs": ["x"], "choices": " a b"}, 422),
    ("/v1/classify", {"task": "a", "inputs": ["x"], "choices": [" a", 3]}, 422),
    ("/v1/generate", {"task": "gen", "inputs": ["x"], "max_new_tokens": 0}, 422),
    ("/v1/generate", {"task": "gen", "inputs": ["x"], "max_new_tokens": 10_000}, 422),
    ("/v1/generate", {"inputs": ["x"]}, 422),
])
def test_bad_requests(client: TestClient, path: str, body: dict, code: int) -> None:
    r = client.post(path, json=body)
    assert r.status_code == code, r.text
    assert r.json()["detail"]


def test_malformed_json(client: TestClient) -> None:
    for raw in (b"{", b"", b"null", b"[]", b"\xff\xfe"):
        r = client.post("/v1/classify", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 422), (raw, r.status_code)
        assert r.json()["detail"]
    r = client.post("/v1/classify", content=b"task=a", headers={"Content-Type": "text/plain"})
    assert 400 <= r.status_code < 500


def test_long_input_is_truncated_not_refused(client: TestClient) -> None:
    r = client.post("/v1/classify", json={"task": "b", "inputs": ["word " * 799]})
    assert r.status_code == 200


def test_metrics(client: TestClient) -> None:
    client.post("/v1/classify", json={"task": "a", "inputs": ["x", "y"]})
    client.post("/v1/classify", json={"task": "nope", "inputs": ["x"]})
    text = client.get("/metrics").text
    assert 'softprompt_requests_total{route="/v1/classify",status="200"}' in text
    assert 'softprompt_requests_total{route="/v1/classify",status="404"}' in text
    for name in ("softprompt_request_latency_seconds_bucket", "softprompt_batch_rows_bucket",
                 "softprompt_queue_rows", "softprompt_tasks 6.0"):
        assert name in text


def test_admin_disabled_and_config_errors(served) -> None:  # type: ignore[no-untyped-def]
    backbone, root, _ = served
    with pytest.raises(ConfigError, match="no admin token"):
        ServerConfig(admin=True)
    with pytest.raises(ConfigError, match="at least 8"):
        ServerConfig(admin=True, admin_token="short")
    engine = Engine(backbone)
    engine.load_dir(root)
    with TestClient(create_app(engine)) as c:
        r = c.delete("/v1/prompts/a", headers=auth())
        assert r.status_code == 403 and "disabled" in r.json()["detail"]


def test_cli_refuses_admin_without_token(tiny_dirs, tmp_path: Path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("SOFTPROMPT_ADMIN_TOKEN", raising=False)
    assert main(["serve", "--model", str(tiny_dirs["llama"]), "--prompts", str(tmp_path), "--admin"]) == 2
    assert "no admin token" in capsys.readouterr().err
    assert main(["serve", "--model", str(tiny_dirs["llama"]), "--prompts", str(tmp_path / "missing")]) == 2


def test_allow_other_model_serves_other_weights_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture
                                                               ) -> None:
    from softprompt.cli import build_parser
    from softprompt.core.promptfile import PromptFileError

    write_prompt(tiny_backbone("llama", seed=0), tmp_path / "p" / "a.safetensors", 3, 1)
    other = tiny_backbone("llama", seed=1)  # same shapes, other weights
    with pytest.raises(PromptFileError, match="--allow-other-model"):
        Engine(other).load_dir(tmp_path / "p")
    engine = Engine(other, allow_other_model=True)
    assert engine.load_dir(tmp_path / "p").tasks == ["a"]
    assert capsys.readouterr().err.count("warning: ") == 1
    body = (tmp_path / "p" / "a.safetensors").read_bytes()
    assert engine.task_from_bytes("up", body).name == "up"  # uploads too
    assert "warning: upload 'up'" in capsys.readouterr().err
    args = build_parser().parse_args(["serve", "--model", "m", "--prompts", "d", "--allow-other-model"])
    assert args.allow_other_model is True


def test_t5_served_through_the_splice(tmp_path: Path) -> None:
    backbone = tiny_backbone("t5")
    prompt = write_prompt(backbone, tmp_path / "t.safetensors", 3, 1)
    engine = Engine(backbone)
    engine.load_dir(tmp_path)
    assert not engine.prefix_cache
    with TestClient(create_app(engine)) as c:
        results = c.post("/v1/classify", json={"task": "t", "inputs": TEXTS[:4]}).json()["results"]
        gen = c.post("/v1/generate", json={"task": "t", "inputs": TEXTS[:2], "max_new_tokens": 3})
    ref = offline_scores(backbone, prompt, TEXTS[:4], WORDS)
    assert [r["label"] for r in results] == [list(VERBALIZER)[int(s.argmax())] for s in ref]
    assert gen.status_code == 200


def test_serve_command_end_to_end(tiny_dirs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`softprompt serve` as a user runs it: a subprocess on 127.0.0.1, driven by the Python client."""
    backbone = tiny_backbone("llama")  # the same weights as the saved tiny llama folder (same seed)
    prompt = write_prompt(backbone, tmp_path / "prompts" / "t.safetensors", 3, 5)
    write_prompt(backbone, tmp_path / "u.safetensors", 2, 6)
    server = ServeProcess(tiny_dirs["llama"], tmp_path / "prompts", "--admin-token", TOKEN)
    with server as url, Client(url, token=TOKEN, timeout=30) as c:
        got = c.classify("t", TEXTS[:3])
        ref = offline_scores(backbone, prompt, TEXTS[:3], WORDS)
        assert [r["label"] for r in got] == [list(VERBALIZER)[int(s.argmax())] for s in ref]
        assert c.put_prompt("u", tmp_path / "u.safetensors")["name"] == "u"
        assert [t["name"] for t in c.tasks()] == ["t", "u"]
    assert "1 task(s)" in server.output and "prefix cache on" in server.output
    assert "skipped" not in server.output


def test_full_queue_is_503_with_retry_after(served) -> None:  # type: ignore[no-untyped-def]
    backbone, root, _ = served
    engine = Engine(backbone)
    engine.load_dir(root)
    app = create_app(engine, ServerConfig(max_queue_rows=4, max_wait_ms=300))

    async def go() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                first = asyncio.create_task(c.post("/v1/classify", json={"task": "a", "inputs": ["x"]}))  # 3 rows
                await asyncio.sleep(0.05)  # queued, waiting for company
                second = await c.post("/v1/classify", json={"task": "b", "inputs": ["y"]})
                return [await first, second]

    first, second = asyncio.run(go())
    assert first.status_code == 200
    assert second.status_code == 503 and second.headers["retry-after"] == "1" and "queue full" in second.text


def test_a_failing_job_fails_alone(served) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from softprompt.server.batcher import Batcher
    from softprompt.server.metrics import ServerMetrics

    backbone, root, _ = served
    engine = Engine(backbone)
    engine.load_dir(root)
    broken = replace(engine.get("a"), words=("", " no", " yes"))  # a target of no tokens: make_batch raises

    async def go() -> tuple[object, object]:
        batcher = Batcher(engine, ServerMetrics(), max_wait_ms=100)
        await batcher.start()
        try:
            return tuple(await asyncio.gather(batcher.submit(Job("classify", engine.get("b"), ["x"])),
                                              batcher.submit(Job("classify", broken, ["y"])),
                                              return_exceptions=True))
        finally:
            await batcher.stop()

    good, bad = asyncio.run(go())
    assert isinstance(good, Job) and good.result[0]["label"] in VERBALIZER
    assert isinstance(bad, ValueError) and "no tokens" in str(bad)


def test_empty_label_text_refused_at_load(client: TestClient, served, tmp_path: Path
                                          ) -> None:  # type: ignore[no-untyped-def]
    backbone, _, _ = served
    write_prompt(backbone, tmp_path / "e.safetensors", 2, 1, verbalizer={"x": "", "y": " yes"})
    r = client.put("/v1/prompts/e", content=(tmp_path / "e.safetensors").read_bytes(), headers=auth())
    assert r.status_code == 422 and "no tokens" in r.json()["detail"]


# ---- prompts carry their task -------------------------------------------------------------------------------------
def with_format(pf: PromptFile, template: str = "", instruction: str = "") -> PromptFile:
    """The template and instruction a prompt was trained with, as the prompt-file format records them (version 2);
    set on the loaded metadata so these tests run on files of either version."""
    pf.meta.template = template  # type: ignore[attr-defined]
    pf.meta.instruction = instruction  # type: ignore[attr-defined]
    return pf


def test_prompt_template_and_instruction_format_inputs(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    backbone, _, _ = served
    write_prompt(backbone, tmp_path / "p.safetensors", 3, 7, task="sst2", verbalizer={})
    engine = Engine(backbone)
    pf = load_prompt(tmp_path / "p.safetensors")
    assert engine.make_task("p", [pf], where="p").format("hi") == "Sentence: hi\nSentiment:"  # the built-in task's
    template = "Review: {review} {{x}} =>"
    own = engine.make_task("p", [with_format(pf, template, "Judge.\n")], where="p")
    assert own.format("a {text} {0} b") == "Judge.\n" + template.format(review="a {text} {0} b")
    assert own.labels == ("0", "1")  # the built-in task's verbalizer still labels it
    several = engine.make_task("p", [with_format(pf, "P: {premise} Q: {question}", "Pick.\n")], where="p")
    assert several.template == "{text}" and several.format("P: a Q: b") == "Pick.\nP: a Q: b"  # sent formatted
    for bad in ["{text.__class__}", "{0}", "{}", "{text!r}", "{text:>9}", "{text[0]}", "{a} {b.c}", "{", "}",
                "no field"]:
        with pytest.raises(PromptFileError, match="'template'"):
            engine.make_task("p", [with_format(pf, bad)], where="p")


def test_trained_file_task_answers_as_softprompt_eval(tiny_dirs, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """A prompt trained on a data-file task with its own template: the server, given the raw review, builds the row
    training built, so its scores are `softprompt eval`'s."""
    rows = toy_rows(field="review")  # a field of its own name: the template names it
    data = write_jsonl(tmp_path / "toy.jsonl", rows)
    template, verbalizer = "Review: {review} =>", {"0": " no", "1": " yes"}
    task = FileTask(FileTaskSpec(train=str(data), template=template, verbalizer=verbalizer, name="toy"))
    backbone = tiny_backbone("llama")  # the weights of tiny_dirs["llama"]
    config = TrainConfig(steps=8, batch_size=8, prompt_length=3, init="uniform", optimizer="adam", lr=0.3,
                         eval_every=0, save_every=100)
    out = tmp_path / "toy.safetensors"
    train_prompt(backbone, task, task.examples("train"), config, out, progress=False)
    pf = load_prompt(out)
    if not getattr(pf.meta, "template", ""):  # a version-1 file: record the template as version 2 does
        with_format(pf, template)
    engine = Engine(backbone)
    engine.add(engine.make_task("toy", [pf], where=str(out)))
    with TestClient(create_app(engine)) as c:
        results = c.post("/v1/classify", json={"task": "toy", "inputs": [r["review"] for r in rows]}).json()
    ref = score_choices(PromptedModel(backbone, PromptBank(pf.prompt.unsqueeze(0))), task.examples("train"))[0]
    for r, s in zip(results["results"], ref, strict=True):
        assert r["label"] == str(int(s.argmax()))
        assert math.isclose(r["scores"]["0"], float(s[0]), abs_tol=1e-4)
        assert math.isclose(r["scores"]["1"], float(s[1]), abs_tol=1e-4)
    assert main(["eval", "--model", str(tiny_dirs["llama"]), "--threads", "1", "--task", str(data), "--template",
                 template, "--verbalizer", json.dumps(verbalizer), "--prompt", str(out), "--split", "train",
                 "--json"]) == 0
    accuracy = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"]
    served_accuracy = sum(r["label"] == str(row["label"]) for r, row in zip(results["results"], rows, strict=True))
    assert math.isclose(served_accuracy / len(rows), accuracy)


def test_per_request_choices(client: TestClient, served) -> None:  # type: ignore[no-untyped-def]
    """Multiple choice (COPA-like): the request's own candidate texts, scored on the same path as labels."""
    backbone, _, prompts = served
    inputs = TEXTS[:4]
    options = [" the cat sat", " a dog", " x"]
    r = client.post("/v1/classify", json={"task": "gen", "inputs": inputs, "choices": options})
    assert r.status_code == 200, r.text
    ref = offline_scores(backbone, prompts["gen"][0], inputs, tuple(options))
    for res, s in zip(r.json()["results"], ref, strict=True):
        best = int(s.argmax())
        assert res["label"] == str(best) and res["text"] == options[best].strip()
        assert list(res["scores"]) == ["0", "1", "2"]
        for j in range(3):
            assert math.isclose(res["scores"][str(j)], float(s[j]), abs_tol=1e-4)
    # A task with labels of its own may be asked other choices too; an ensemble votes over them.
    words = (" maybe", " yes")
    results = Client(http=client).classify("ens", inputs, list(words))
    per_member = torch.stack([offline_scores(backbone, p, inputs, words) for p in prompts["ens"]])  # [3, E, 2]
    for e, res in enumerate(results):
        votes = [str(int(per_member[m, e].argmax())) for m in range(3)]
        assert res["votes"] == {v: votes.count(v) for v in set(votes)}
        assert math.isclose(res["scores"]["1"], float(per_member[:, e, 1].mean()), abs_tol=1e-4)


# ---- servable training folders ------------------------------------------------------------------------------------
def test_load_dir_skips_training_side_files(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    backbone, _, _ = served
    write_prompt(backbone, tmp_path / "a.safetensors", 2, 1)
    save_file({"prompt": torch.zeros(2, 2)}, str(tmp_path / "a.ckpt.safetensors"))  # not a prompt file
    (tmp_path / "a.metrics.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "a.tb").mkdir()
    (tmp_path / "a.tb" / "events.out.tfevents.1").write_bytes(b"\0")
    (tmp_path / "ens").mkdir()
    write_prompt(backbone, tmp_path / "ens" / "m.safetensors", 2, 2)
    save_file({"prompt": torch.zeros(2, 2)}, str(tmp_path / "ens" / "m.ckpt.safetensors"))
    engine = Engine(backbone)
    loaded = engine.load_dir(tmp_path)
    assert loaded.tasks == ["a", "ens"] and len(engine.get("ens").members) == 1
    assert sorted(str(p.relative_to(tmp_path)) for p in loaded.skipped) == [
        "a.ckpt.safetensors", "a.metrics.jsonl", "a.tb", "ens/m.ckpt.safetensors"]
    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "junk.safetensors"))  # a mistake stays loud
    with pytest.raises(PromptFileError, match="not a softprompt prompt file"):
        Engine(backbone).load_dir(tmp_path)


def test_softprompt_train_folder_is_servable(tiny_dirs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`softprompt train --out prompts/x.safetensors`, then `softprompt serve --prompts prompts/`, both as a user
    runs them."""
    data = write_jsonl(tmp_path / "toy.jsonl", toy_rows(8))
    out = tmp_path / "prompts" / "x.safetensors"
    assert main(["train", "--model", str(tiny_dirs["llama"]), "--threads", "1", "--task", str(data), "--template",
                 "{text} ->", "--verbalizer", '{"0": " no", "1": " yes"}', "--out", str(out), "--steps", "2",
                 "--batch-size", "4", "--prompt-length", "2", "--no-eval", "--save-every", "1",
                 "--no-progress"]) == 0
    side = sorted(p.name for p in out.parent.iterdir() if p != out)
    assert "x.ckpt.safetensors" in side and "x.metrics.jsonl" in side
    server = ServeProcess(tiny_dirs["llama"], out.parent)
    with server as url, Client(url, timeout=30) as c:
        [info] = c.tasks()
        got = c.classify("x", TEXTS[:3])
    assert info["name"] == "x" and info["labels"] == ["0", "1"]
    formatted = [info["template"].replace("{text}", t) for t in TEXTS[:3]]
    ref = offline_scores(tiny_backbone("llama"), load_prompt(out).prompt, formatted, (" no", " yes"))
    assert [r["label"] for r in got] == [str(int(s.argmax())) for s in ref]
    skipped = next(line for line in server.output.splitlines() if "skipped" in line)
    assert all(name in skipped for name in side), (side, skipped)  # x.tb/ too, when TensorBoard is installed
    assert "1 task(s)" in server.output


# ---- uploads --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "version", "named"), [
    ({}, "one", "format_version"),
    ({}, "-1", "format_version"),
    ({"format_version": "1"}, "2", "format_version"),
    ({"format_version": 1.5}, "2", "format_version"),
    ({"model_probe": None}, "2", "model_probe"),
    ({"model_probe": ["a", 1.0]}, "2", "model_probe"),
    ({"model_fingerprint": 7}, "2", "model_fingerprint"),
    ({"verbalizer": [" yes", " no"]}, "2", "verbalizer"),
    ({"verbalizer": {"a": 1}}, "2", "verbalizer"),
    ({"hidden_size": "32"}, "2", "hidden_size"),
    ({"prompt_length": True}, "2", "prompt_length"),
    ({"task": 3}, "2", "task"),
    ({"task": None}, "2", "task"),
    ({"train_config": []}, "2", "train_config"),
    ({"metrics": "fast"}, "2", "metrics"),
    ({"init": {}}, "2", "init"),
    ({"base_model": ...}, "2", "base_model"),
    ({"bogus": 1}, "2", "bogus"),
    ({"template": "{text.__class__}"}, "2", "template"),
    ({"instruction": 5}, "2", "instruction"),
])
def test_malformed_metadata_is_422_naming_the_field(client: TestClient, served, fields: dict, version: str,
                                                    named: str) -> None:  # type: ignore[no-untyped-def]
    r = client.put("/v1/prompts/bad", content=prompt_bytes(served[0], header_version=version, **fields),
                   headers=auth())
    assert r.status_code == 422, r.text
    assert named in r.json()["detail"], r.json()
    assert "bad" not in {t["name"] for t in client.get("/v1/tasks").json()["tasks"]}


def test_unparseable_metadata_is_422(client: TestClient, served) -> None:  # type: ignore[no-untyped-def]
    backbone = served[0]
    deep, huge = "[" * 20_000 + "]" * 20_000, '{"hidden_size": 1' + "0" * 5000 + "}"
    for text, message in [("[1, 2]", "object"), ("null", "object"), ("{", "metadata"), (deep, "metadata"),
                          (huge, "metadata")]:
        r = client.put("/v1/prompts/bad", content=prompt_bytes(backbone, meta_json=text), headers=auth())
        assert r.status_code == 422 and message in r.json()["detail"], (text[:20], r.text[:300])


def test_too_long_prompt_is_422(client: TestClient, served) -> None:  # type: ignore[no-untyped-def]
    # 512 positions on the tiny llama: 256 input and 128 new tokens leave room for 128 prompt vectors.
    r = client.put("/v1/prompts/long", content=prompt_bytes(served[0], 129), headers=auth())
    assert r.status_code == 422 and "leaves no room" in r.json()["detail"]
    assert client.put("/v1/prompts/long", content=prompt_bytes(served[0], 128), headers=auth()).status_code == 201


def test_uploaded_task_never_opens_a_server_file(client: TestClient, served, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A metadata ``task`` that names a file on the server (a YAML task spec, a data file) is only a name: the
    server never reads it; an upload for a task it does not know must carry its own verbalizer or template."""
    backbone = served[0]
    spec = tmp_path / "spec.yaml"
    spec.write_text("train: secret.jsonl\ntemplate: 'Secret: {text}'\nverbalizer: {'0': ' a', '1': ' b'}\n")
    (tmp_path / "data.jsonl").write_text('{"text": "secret", "label": 0}\n')
    opened: list[object] = []
    monkeypatch.setattr(FileTaskSpec, "from_yaml", classmethod(lambda cls, path: opened.append(path)))
    monkeypatch.setattr("softprompt.tasks.generic.read_records", lambda path: opened.append(path) or [])
    for path in (spec, tmp_path / "data.jsonl"):
        r = client.put("/v1/prompts/f", content=prompt_bytes(backbone, task=str(path), verbalizer={}), headers=auth())
        assert r.status_code == 422 and "'task'" in r.json()["detail"], r.text
        r = client.put("/v1/prompts/f", content=prompt_bytes(backbone, task=str(path)), headers=auth())
        assert r.status_code in (200, 201), r.text
        assert r.json()["template"] == "{text}" and r.json()["labels"] == list(VERBALIZER)
    info = client.put("/v1/prompts/f", content=prompt_bytes(backbone, task="sst2", verbalizer={}), headers=auth())
    assert info.json()["labels"] == ["0", "1"] and info.json()["template"] == get_task("sst2").text_template
    info = client.put("/v1/prompts/f", content=prompt_bytes(backbone, task="", verbalizer={}), headers=auth())
    assert info.json()["kind"] == "generation"
    (tmp_path / "dir").mkdir()  # a folder the operator serves does not read them either
    (tmp_path / "dir" / "f.safetensors").write_bytes(prompt_bytes(backbone, task=str(spec)))
    assert Engine(backbone).load_dir(tmp_path / "dir").tasks == ["f"]
    assert opened == []


def test_bodies_over_the_limit_are_413(served) -> None:  # type: ignore[no-untyped-def]
    """Declared (content-length) and chunked bodies, JSON and uploads: refused once past the limit."""
    backbone, root, _ = served
    engine = Engine(backbone)
    engine.load_dir(root)
    app = create_app(engine, ServerConfig(admin=True, admin_token=TOKEN, max_upload_bytes=5_000, max_body_bytes=2_000))
    big = json.dumps({"task": "a", "inputs": ["x" * 1000] * 3}).encode()
    json_type = {"Content-Type": "application/json"}

    def chunked(body: bytes):  # type: ignore[no-untyped-def]  # no content-length: Transfer-Encoding: chunked
        yield from (body[i:i + 1000] for i in range(0, len(body), 1000))

    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        for content in (big, chunked(big)):
            r = http.post("/v1/classify", content=content, headers=json_type)
            assert r.status_code == 413 and "exceeds the limit of 2000" in r.json()["detail"], r.text
        body = prompt_bytes(backbone, 40)
        assert len(body) > 5_000
        for content in (body, chunked(body)):
            r = http.put("/v1/prompts/z", content=content, headers=auth())
            assert r.status_code == 413 and "exceeds the limit of 5000" in r.json()["detail"], r.text
        r = http.post("/v1/completions", content=chunked(big), headers=json_type)
        assert r.status_code == 413 and "exceeds" in r.json()["error"]["message"], r.text
        assert http.post("/v1/classify", json={"task": "a", "inputs": ["x"]}).status_code == 200
        assert "z" not in {t["name"] for t in http.get("/v1/tasks").json()["tasks"]}
