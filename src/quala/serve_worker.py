"""The server's engine worker: one thread owns the engine; queued requests that share a configuration are merged
into one call (micro-batching), and in latency-target mode each job gets its configuration when it is queued."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quala.adaptive import LatencyTarget
from quala.engine import Answer, QAEngine

if TYPE_CHECKING:
    from quala.serve_metrics import ServeMetrics

TRIM_EVERY = 32  # engine calls between two release_free_memory() calls


def release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Every request has its own sequence length, so activations come in ever-different sizes; glibc keeps the
    freed blocks and the server's RSS creeps up although nothing leaks (docs/serving.md measures it). Trimming
    every ``TRIM_EVERY`` calls keeps the RSS flat, at a small cost.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


AUTO = "auto"  # length_config placeholder: the latency target chooses it when the job is queued


@dataclass
class _Job:
    items: list[tuple[str, str]]
    length_config: list[int] | None
    top_k: int
    mergeable: bool
    future: asyncio.Future = field(repr=False)
    enqueued: float = 0.0  # worker clock
    share_s: float = 0.0  # predicted engine seconds this job adds to the backlog (latency-target mode)
    units: float = 0.0  # its size in calibration-question units (latency-target mode)

    @property
    def key(self) -> tuple:
        return (tuple(self.length_config) if self.length_config is not None else None, self.top_k)


@dataclass
class Served:
    """A job's answers and where its time went."""

    answers: list[Answer]
    queue_ms: float  # from submit to the start of its engine call
    compute_ms: float  # wall time of that engine call


class EngineWorker:
    """Runs engine calls one at a time on a single thread; optionally merges queued requests (micro-batching).

    The engine (and PyTorch's global thread setting) is not re-entrant, so one thread owns it. Requests that
    wait in the queue while it is busy, or arrive within ``window_ms``, and share a length configuration and
    ``top_k``, become one ``answer_batch`` call of at most ``max_batch`` questions. With a
    :class:`~quala.adaptive.LatencyTarget`, jobs submitted with ``length_config=AUTO`` get their configuration
    when they are queued, and every job's predicted time is kept in the target's backlog.
    """

    def __init__(
        self,
        engine: QAEngine,
        micro_batch: bool,
        window_ms: float,
        max_batch: int,
        max_queue: int = 256,
        target: LatencyTarget | None = None,
        metrics: ServeMetrics | None = None,
        clock: Any = time.perf_counter,
    ):
        self.engine = engine
        self.max_queue = max_queue
        self.micro_batch = micro_batch
        self.window_s = window_ms / 1000
        self.max_batch = max_batch
        self.target = target
        self.metrics = metrics
        self.clock = clock
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quala-engine")
        self.queue: asyncio.Queue[_Job] | None = None
        self.task: asyncio.Task | None = None
        self.calls = 0  # engine calls made
        self.questions = 0  # questions answered

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.task = None
        self.executor.shutdown(wait=True)

    async def submit(
        self, items: list[tuple[str, str]], length_config: list[int] | None | str, top_k: int, mergeable: bool
    ) -> Served:
        if self.queue is None or self.task is None or self.task.done():
            raise RuntimeError("the engine worker is not running (use the app's lifespan)")
        if self.queue.qsize() >= self.max_queue:
            raise Busy(f"{self.queue.qsize()} requests are already waiting for the engine; retry shortly")
        if isinstance(length_config, str) and self.target is None:
            raise RuntimeError(f"length_config {length_config!r} needs a latency target")
        future = asyncio.get_running_loop().create_future()
        job = _Job(items, None, top_k, mergeable, future, enqueued=self.clock())
        if self.target is None:
            job.length_config = length_config  # type: ignore[assignment]
        else:  # choose, predict and queue with no await in between: the backlog is the queue's
            n, job.units = len(items), self.target.cost.units(items)
            self.target.arrivals.add(job.units)  # every request loads the engine, whoever chose its configuration
            merge = self.micro_batch and mergeable
            batch = min(self.max_batch, n + self.target.backlog.questions) if merge else n
            batch_units = job.units * batch / n  # the call it will join, in units of its own questions' size
            job.length_config = (
                self.target.choose(batch_units).length_config if isinstance(length_config, str) else length_config
            )
            job.share_s = self.target.cost.predict(job.length_config, batch_units) * n / batch
            self.target.backlog.add(job.share_s, n)
        self.queue.put_nowait(job)
        return await future

    async def _loop(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            if self.micro_batch and jobs[0].mergeable:
                jobs += await self._gather_more(loop, len(jobs[0].items))
            groups = _groups(jobs)
            if self.target is not None:
                for job in jobs:
                    self.target.backlog.remove(job.share_s, len(job.items))
                predicted = [self.target.cost.predict(g[0].length_config, sum(j.units for j in g)) for g in groups]
                self.target.backlog.start(sum(predicted))
            for group in groups:
                await self._run(loop, group)
            if self.target is not None:
                self.target.backlog.finish()

    async def _gather_more(self, loop: asyncio.AbstractEventLoop, size: int) -> list[_Job]:
        """Queued jobs (and those arriving within the window), up to ``max_batch`` questions in all."""
        assert self.queue is not None
        more: list[_Job] = []
        deadline = loop.time() + self.window_s
        while size < self.max_batch:
            if self.queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                job = self.queue.get_nowait()
            more.append(job)
            size += len(job.items)
        return more

    async def _run(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        items = [it for job in jobs for it in job.items]
        first = jobs[0]
        started = self.clock()
        try:
            answers, seconds = await loop.run_in_executor(
                self.executor, self._call, items, first.length_config, first.top_k, sum(j.units for j in jobs)
            )
        except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
            if len(jobs) > 1:  # isolate the request that failed
                for job in jobs:
                    await self._run(loop, [job])
                return
            if not first.future.done():
                first.future.set_exception(exc)
            return
        i = 0
        for job in jobs:
            queue_s = max(0.0, started - job.enqueued)
            if self.metrics is not None:
                self.metrics.queue_seconds.observe(queue_s)
            if not job.future.done():
                job.future.set_result(Served(answers[i : i + len(job.items)], queue_s * 1000, seconds * 1000))
            i += len(job.items)

    def _call(
        self, items: list[tuple[str, str]], length_config: list[int] | None, top_k: int, units: float
    ) -> tuple[list[Answer], float]:
        """One engine call; ``units``: the jobs' sizes in calibration-question units (latency-target mode)."""
        t0 = self.clock()
        answers = self.engine.answer_batch(
            items, length_config=length_config if length_config is not None else "full", top_k=top_k
        )
        seconds = self.clock() - t0
        if self.target is not None:
            self.target.cost.observe(length_config, units, seconds)
        if self.metrics is not None:
            self.metrics.compute_seconds.observe(seconds)
            self.metrics.batch_questions.observe(len(items))
        self.calls += 1
        self.questions += len(items)
        if self.calls % TRIM_EVERY == 0:
            release_free_memory()
        return answers, seconds


class Busy(Exception):
    """The engine's queue is full (503)."""


def _groups(jobs: list[_Job]) -> list[list[_Job]]:
    """Jobs that can share one engine call (same configuration and top_k), in arrival order."""
    groups: dict[Any, list[_Job]] = {}
    for n, job in enumerate(jobs):
        groups.setdefault(job.key if job.mergeable else ("alone", n), []).append(job)
    return list(groups.values())
