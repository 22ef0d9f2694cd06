"""Serving benchmark on a real model (CPU, 127.0.0.1 only, bounded): writes bench/results/serve_cpu.json.

(a) throughput of a mixed stream over 8 tasks vs the same stream all for one task (through HTTP, one server);
(b) the same requests served one at a time, unbatched (engine level: one forward per request, no HTTP, no wait);
(c) latency of one request with a P=100 prompt from the prefix cache vs no prompt at all vs the uncached splice;
(d) memory: one server with 8 prompts vs 8 model copies (parameter, prompt and cached K/V bytes).

Prompts are sampled-vocabulary inits of the right shape (no training: speed does not depend on what they learned).
Usage: PYTHONPATH=src python bench/serve_bench.py [--model smollm2-135m] [--threads 1] [--requests 128]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from softprompt.backbone import Backbone, load_backbone
from softprompt.init import sampled_vocab
from softprompt.promptfile import PromptFile, PromptMeta, save_prompt
from softprompt.server.engine import Engine, Job
from softprompt.tasks.base import resolve_data_dir

ROOT = Path(__file__).resolve().parents[1]
VERBALIZER = {"0": " negative", "1": " positive"}


def sentences(n: int) -> list[str]:
    path = resolve_data_dir() / "glue" / "SST-2" / "dev.tsv"  # --data-dir is not a flag: SOFTPROMPT_DATA_DIR
    lines = path.read_text().splitlines()[1:]
    return [line.split("\t")[0].strip() for line in lines[:n]]


def prompt_file(backbone: Backbone, length: int, seed: int) -> PromptFile:
    prompt = sampled_vocab(backbone, length, torch.Generator().manual_seed(seed))
    return PromptFile(prompt, PromptMeta.for_backbone(backbone, length, init="sampled-vocab", task="sst2",
                                                      verbalizer=VERBALIZER))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def stream(url: str, tasks: list[str], texts: list[str], concurrency: int) -> dict:
    """POST one classify request per (task, text) with ``concurrency`` clients; requests/s and latencies."""
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors = 0

    async def one(client: httpx.AsyncClient, task: str, text: str) -> None:
        nonlocal errors
        async with sem:
            t0 = time.perf_counter()
            r = await client.post("/v1/classify", json={"task": task, "inputs": [text]})
            latencies.append(time.perf_counter() - t0)
            errors += r.status_code != 200

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client, t, x) for t, x in zip(tasks, texts, strict=True)))
        seconds = time.perf_counter() - t0
    latencies.sort()
    return {"requests": len(texts), "seconds": round(seconds, 3), "requests_per_s": round(len(texts) / seconds, 2),
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
            "p95_ms": round(1000 * latencies[int(len(latencies) * 0.95)], 1), "errors": errors}


def http_throughput(args: argparse.Namespace, prompt_dir: Path, texts: list[str]) -> dict:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "softprompt", "serve", "--model", args.model, "--prompts", str(prompt_dir),
           "--port", str(port), "--threads", str(args.threads), "--max-batch-rows", str(args.max_batch_rows),
           "--max-wait-ms", str(args.max_wait_ms)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.5)
        names = [f"task{i}" for i in range(8)]
        mixed_tasks = [names[i % 8] for i in range(len(texts))]
        single_tasks = [names[0]] * len(texts)
        asyncio.run(stream(url, mixed_tasks[:32], texts[:32], args.concurrency))  # warm-up
        runs: dict[str, list[dict]] = {"mixed_8_tasks": [], "single_task": []}
        for _ in range(args.repeats):  # interleaved: the machine is shared, so drift hits both alike
            runs["mixed_8_tasks"].append(asyncio.run(stream(url, mixed_tasks, texts, args.concurrency)))
            runs["single_task"].append(asyncio.run(stream(url, single_tasks, texts, args.concurrency)))
        metrics = httpx.get(url + "/metrics").text
    finally:
        server.terminate()
        server.wait(30)
    best = {k: max(v, key=lambda r: r["requests_per_s"]) for k, v in runs.items()}
    med = {k: statistics.median(r["requests_per_s"] for r in v) for k, v in runs.items()}
    batch_rows = [line for line in metrics.splitlines() if line.startswith("softprompt_batch_rows_")]
    return {"runs": runs, "best": best, "median_requests_per_s": med,
            "mixing_cost": round(1 - med["mixed_8_tasks"] / med["single_task"], 4),
            "server_batch_rows_metric": batch_rows[-2:]}


def time_jobs(engine: Engine, jobs_list: list[list[Job]]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this thread — torch runs in it with 1 thread; steadier on a shared machine)."""
    t0, c0 = time.perf_counter(), time.thread_time()
    for jobs in jobs_list:
        engine.run(jobs)
    return time.perf_counter() - t0, time.thread_time() - c0


def engine_level(args: argparse.Namespace, backbone: Backbone, files: list[PromptFile], texts: list[str]) -> dict:
    engine = Engine(backbone, max_batch_rows=args.max_batch_rows)
    tasks = [engine.make_task(f"task{i}", [pf], where="bench") for i, pf in enumerate(files)]
    n = len(texts)
    jobs = [Job("classify", tasks[i % 8], [t]) for i, t in enumerate(texts)]
    per_batch = args.max_batch_rows // 2  # 2 rows (choices) per request
    engine.run(jobs[:4])  # warm-up
    unbatched, unbatched_cpu = time_jobs(engine, [[j] for j in jobs])
    batched, batched_cpu = time_jobs(engine, [jobs[i:i + per_batch] for i in range(0, n, per_batch)])
    return {"requests": n, "requests_per_batch": per_batch,
            "unbatched_one_at_a_time": {"wall_s": round(unbatched, 3), "thread_cpu_s": round(unbatched_cpu, 3),
                                        "requests_per_cpu_s": round(n / unbatched_cpu, 2)},
            "batched_mixed_8_tasks": {"wall_s": round(batched, 3), "thread_cpu_s": round(batched_cpu, 3),
                                      "requests_per_cpu_s": round(n / batched_cpu, 2)},
            "speedup_cpu": round(unbatched_cpu / batched_cpu, 2), "speedup_wall": round(unbatched / batched, 2)}


def latency(args: argparse.Namespace, backbone: Backbone, texts: list[str]) -> dict:
    long = prompt_file(backbone, 100, 7)
    empty = PromptFile(torch.zeros(0, backbone.hidden_size), PromptMeta.for_backbone(backbone, 0, task="sst2",
                                                                                      verbalizer=VERBALIZER))
    cached = Engine(backbone)
    uncached = Engine(backbone, prefix_cache=False)
    cases = {"p100_prefix_cache": (cached, long), "no_prompt": (cached, empty), "p100_uncached": (uncached, long)}
    tasks = {k: e.make_task(k.replace("_", "-"), [pf], where="bench") for k, (e, pf) in cases.items()}
    texts = texts[:args.latency_requests]
    samples: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    for k, (e, _) in cases.items():  # warm-up
        e.run([Job("classify", tasks[k], [texts[0]])])
    for text in texts:  # interleaved per request, so load from other processes hits every case alike
        for k, (e, _) in cases.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            e.run([Job("classify", tasks[k], [text])])
            samples[k].append(time.perf_counter() - t0)
            cpu[k].append(time.thread_time() - c0)
    wall = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    # On a shared machine the CPU time of this thread (torch runs in it with 1 thread) is the steadier measure.
    med = {k: statistics.median(v) * 1000 for k, v in cpu.items()}
    return {"requests": len(texts), "median_wall_ms": {k: round(v, 2) for k, v in wall.items()},
            "median_thread_cpu_ms": {k: round(v, 2) for k, v in med.items()},
            "ratios_use": "thread CPU time (wall ratios: cached/no-prompt "
                          f"{wall['p100_prefix_cache'] / wall['no_prompt']:.3f}, uncached/no-prompt "
                          f"{wall['p100_uncached'] / wall['no_prompt']:.3f})",
            "cached_over_no_prompt": round(med["p100_prefix_cache"] / med["no_prompt"], 3),
            "uncached_over_no_prompt": round(med["p100_uncached"] / med["no_prompt"], 3),
            "cached_speedup_over_uncached": round(med["p100_uncached"] / med["p100_prefix_cache"], 2)}


def memory(backbone: Backbone, files: list[PromptFile]) -> dict:
    params = sum(p.numel() * p.element_size() for p in backbone.model.parameters())
    engine = Engine(backbone)
    tasks = [engine.make_task(f"t{i}", [pf], where="bench") for i, pf in enumerate(files)]
    prompt_bytes = sum(m.prompt.numel() * 4 for t in tasks for m in t.members)
    kv_bytes = engine.prompted.prefix_cache.nbytes if engine.prompted.prefix_cache is not None else 0
    server = params + prompt_bytes + kv_bytes
    return {"parameter_bytes": params, "prompt_bytes_8": prompt_bytes, "prefix_cache_kv_bytes_8": kv_bytes,
            "one_server_8_prompts_bytes": server, "eight_model_copies_bytes": 8 * params,
            "ratio": round(8 * params / server, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt-length", type=int, default=20)
    ap.add_argument("--max-batch-rows", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--latency-requests", type=int, default=30)
    ap.add_argument("--only", nargs="*", choices=["a", "b", "c", "d"], default=None,
                    help="rerun these sections only, keeping the others from --out")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_cpu.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    backbone = load_backbone(args.model)
    texts = sentences(args.requests)
    files = [prompt_file(backbone, args.prompt_length, seed) for seed in range(8)]
    only = set(args.only or "abcd")
    result: dict = json.loads(args.out.read_text()) if args.only and args.out.is_file() else {}
    if "a" in only:
        with tempfile.TemporaryDirectory() as tmp:
            for i, pf in enumerate(files):
                save_prompt(Path(tmp) / f"task{i}.safetensors", pf.prompt, pf.meta)
            # The server is a separate process: the bench process stays idle meanwhile (no CPU contention).
            result["a_throughput_http"] = http_throughput(args, Path(tmp), texts)
    if "b" in only:
        result["b_batched_vs_unbatched_engine"] = engine_level(args, backbone, files, texts)
    if "c" in only:
        result["c_latency_p100"] = latency(args, backbone, texts)
    if "d" in only:
        result["d_memory"] = memory(backbone, files)
    import fastapi
    import transformers

    # Paths relative to the repository: a results file names no machine's folders.
    settings = {k: (os.path.relpath(v, ROOT) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    out = {"model": args.model, "model_type": backbone.model_type, "dtype": "float32", "device": "cpu",
           "settings": result.get("settings", settings) if args.only else settings,
           "versions": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "fastapi": fastapi.__version__},
           "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                       "cpu_count": os.cpu_count(), "note": "2 cores shared with other jobs; timings are noisy"},
           "workload": "SST-2 dev sentences, rank classification with 2 labels (2 rows per request), "
                       "8 tasks of sampled-vocab prompts",
           **{k: v for k, v in result.items() if k[1] == "_" or k.startswith(("seconds", "settings_rerun"))}}
    tag = "".join(sorted(only))
    out[f"seconds_{tag}"] = round(time.perf_counter() - t_start, 1)
    if args.only:
        out[f"settings_rerun_{tag}"] = settings
    result = out
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
