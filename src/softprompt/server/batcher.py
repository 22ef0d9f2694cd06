"""Dynamic batching across tasks: requests that arrive close together share one forward.

The collector waits for a first request, then for up to ``max_wait_ms`` more (or until ``max_batch_rows`` rows are
queued), and hands the gathered jobs to the engine on a single worker thread: the model never runs on the event
loop (which stays free to accept requests and answer /health), and never runs twice at once. While a batch runs, the
next one queues. Prompt loading goes through the same worker (:meth:`Batcher.call`), so it is ordered with batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from softprompt.server.engine import Engine, Job
from softprompt.server.metrics import ServerMetrics

T = TypeVar("T")


class Overloaded(RuntimeError):
    """The queue is full; the client should retry later (HTTP 503)."""


class Batcher:
    def __init__(self, engine: Engine, metrics: ServerMetrics, *, max_batch_rows: int = 64, max_wait_ms: float = 5.0,
                 max_queue_rows: int = 8192) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_batch_rows = max_batch_rows
        self.max_wait = max_wait_ms / 1000
        self.max_queue_rows = max_queue_rows
        self._queue: deque[tuple[Job, asyncio.Future[Job]]] = deque()
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="softprompt-model")
        self._task = asyncio.create_task(self._collect(), name="softprompt-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue:
            _, fut = self._queue.popleft()
            if not fut.done():
                fut.set_exception(Overloaded("server shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the model's worker thread (between batches)."""
        assert self._executor is not None, "batcher not started"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def submit(self, job: Job) -> Job:
        """Queue a job and wait for its result."""
        if not self.running:
            raise Overloaded("server not ready")
        if self._queued_rows + job.rows > self.max_queue_rows and self._queue:
            raise Overloaded(f"queue full ({self._queued_rows} rows waiting); retry later")
        fut: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._queue.append((job, fut))
        self._queued_rows += job.rows
        self._gauge()
        self._arrived.set()
        return await fut

    def _gauge(self) -> None:
        self.metrics.queue_rows.set(self._queued_rows)
        self.metrics.queue_requests.set(len(self._queue))

    async def _wait_for_more(self) -> None:
        deadline = time.monotonic() + self.max_wait
        while self._queued_rows < self.max_batch_rows:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return

    def _take(self) -> list[tuple[Job, asyncio.Future[Job]]]:
        """Jobs in arrival order up to ``max_batch_rows`` rows (always at least one; a large job is chunked by the
        engine)."""
        taken: list[tuple[Job, asyncio.Future[Job]]] = []
        rows = 0
        while self._queue and (not taken or rows + self._queue[0][0].rows <= self.max_batch_rows):
            job, fut = self._queue.popleft()
            self._queued_rows -= job.rows
            if fut.done():  # the client went away while queued
                continue
            taken.append((job, fut))
            rows += job.rows
        self._gauge()
        return taken

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            await self._wait_for_more()
            taken = self._take()
            if not taken:
                continue
            jobs = [job for job, _ in taken]
            self.metrics.batch_rows.observe(sum(j.rows for j in jobs))
            self.metrics.batch_requests.observe(len(jobs))
            self.metrics.batch_tasks.observe(len({id(j.task) for j in jobs}))
            t0 = time.perf_counter()
            try:
                await loop.run_in_executor(self._executor, self._run, jobs)
            except asyncio.CancelledError:  # shutting down mid-batch: fail its requests, then stop
                for _, fut in taken:
                    if not fut.done():
                        fut.set_exception(Overloaded("server shutting down"))
                raise
            finally:
                self.metrics.batch_seconds.observe(time.perf_counter() - t0)
            for job, fut in taken:
                if not fut.done():
                    if job.error is not None:
                        fut.set_exception(job.error)
                    else:
                        fut.set_result(job)

    def _run(self, jobs: list[Job]) -> None:
        """Run a batch on the worker; if it fails, run its jobs one by one so that one bad job fails alone."""
        try:
            self.engine.run(jobs)
            return
        except Exception as err:
            if len(jobs) == 1:
                jobs[0].error = err
                return
        for job in jobs:
            try:
                self.engine.run([job])
            except Exception as err:
                job.error = err
