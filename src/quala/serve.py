"""HTTP serving: answer questions over a JSON API, each request at its own compute budget.

``create_app(engine, ServeConfig)`` builds a FastAPI app around a :class:`~quala.engine.QAEngine`:

- ``POST /v1/answer`` and ``POST /v1/answer/batch``: a budget (``macs_fraction`` | ``max_latency_ms`` |
  ``preset``) is resolved on the model's search front per request, so one loaded model serves every point of
  the LAT accuracy/efficiency trade-off (LAT §4; QuaLA-MiniLM §3.3) without reloading or re-exporting.
- ``GET /v1/model``, ``GET /healthz``, ``GET /metrics`` (Prometheus), the demo page at ``/`` and the OpenAPI docs
  at ``/docs``.

With ``target_p95_ms`` set (latency-target mode, :mod:`quala.adaptive`), requests without a budget of their own
get the most accurate configuration predicted to finish within the target given the queue ahead of them.

Every engine call runs on one worker thread, so concurrent requests are safe. With micro-batching on, the
worker merges the requests waiting in its queue that resolved to the same length configuration into one
``answer_batch`` call. Bad input never reaches the engine as a crash: body size is checked before parsing
(413), malformed bodies get 400, invalid fields and impossible budgets 422, a full queue 503, each with a
JSON body ``{"error": "...", "detail": ...}`` that says what to fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quala.adaptive import HEADROOM, LatencyTarget, config_key
from quala.budget import FrontPoint
from quala.builtin import BUILTIN_MODEL
from quala.engine import Answer, QAEngine
from quala.errors import QualaError

log = logging.getLogger("quala.serve")

MAX_TOP_K = 20  # DataConfig.n_best_size: postprocess keeps at most this many spans per question
TRIM_EVERY = 32  # engine calls between two release_free_memory() calls


def release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Every request has its own sequence length, so activations come in ever-different sizes; glibc keeps the
    freed blocks and the server's RSS creeps up although nothing leaks (measured: +80 MB of retained free
    memory after 500 MiniLM questions, recovered by one trim; see docs/serving.md). Trimming every
    ``TRIM_EVERY`` calls keeps the RSS flat, at a small cost.
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


@dataclass
class ServeConfig:
    """Server settings (``quala serve`` options)."""

    model: str = BUILTIN_MODEL  # loaded by serve(), shown by GET /v1/model
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "auto"
    threads: int | None = None
    max_context_chars: int = 100_000  # longer contexts get 413 (~100 doc-stride windows)
    max_question_chars: int = 1_000
    max_batch: int = 32  # questions per /v1/answer/batch request, and per merged micro-batch
    max_body_bytes: int = 8 * 1024 * 1024  # checked before the body is parsed
    micro_batch: bool = False  # merge queued requests sharing a length configuration (docs/serving.md)
    batch_window_ms: float = 2.0  # with micro_batch: how long the worker waits for more requests to merge
    max_queue: int = 256  # requests waiting for the engine; more get 503 (bounds memory under overload)
    target_p95_ms: float | None = None  # latency-target mode for requests without a budget (None: off)

    def __post_init__(self) -> None:
        for name in ("max_context_chars", "max_question_chars", "max_batch", "max_body_bytes", "max_queue"):
            if getattr(self, name) < 1:
                raise QualaError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.batch_window_ms <= 1000:
            raise QualaError(f"batch-window-ms must be in [0, 1000], got {self.batch_window_ms}")
        if not 0 < self.port < 65536:
            raise QualaError(f"port must be in 1..65535, got {self.port}")
        if self.threads is not None and self.threads < 1:
            raise QualaError(f"threads must be >= 1, got {self.threads}")
        t = self.target_p95_ms
        if t is not None and not (isinstance(t, int | float) and math.isfinite(t) and t > 0):
            raise QualaError(f"target-p95-ms must be a number of milliseconds > 0, got {t!r}")


# ------------------------------------------------------------------------------------------ schemas
class BudgetIn(BaseModel):
    """A compute budget: exactly one of the three fields."""

    model_config = ConfigDict(extra="forbid")

    macs_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        strict=True,
        allow_inf_nan=False,
        description="At most this fraction of the full-length model's MACs, in (0, 1].",
    )
    max_latency_ms: float | None = Field(
        None,
        gt=0,
        strict=True,
        allow_inf_nan=False,
        description="At most this latency per question, as measured by `quala search` (ms).",
    )
    preset: Literal["fast", "balanced", "accurate"] | None = Field(
        None, description="accurate: best F1; balanced: cheapest within 1 F1; fast: cheapest within 5 F1."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> BudgetIn:
        given = [k for k, v in self.model_dump().items() if v is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of macs_fraction, max_latency_ms or preset"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


class QAItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, strict=True, description="The question.")
    context: str = Field(min_length=1, strict=True, description="The text to find the answer in.")

    _check_blank = field_validator("question", "context")(_not_blank)


class _Options(BaseModel):
    budget: BudgetIn | None = Field(None, description="Compute budget; default: the most accurate point.")
    length_config: list[StrictInt] | Literal["full"] | None = Field(
        None, description="Explicit per-layer token counts (or 'full') instead of a budget."
    )
    top_k: int = Field(1, ge=1, le=MAX_TOP_K, strict=True, description="How many answers, best first.")

    @model_validator(mode="after")
    def _budget_or_config(self) -> _Options:
        if self.budget is not None and self.length_config is not None:
            raise ValueError("give either budget or length_config, not both")
        return self


class AnswerRequest(QAItem, _Options):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "question": "Who wrote the report?",
                    "context": "The report was written by Ada Lovelace in 1843.",
                    "budget": {"preset": "balanced"},
                }
            ]
        },
    )


class BatchRequest(_Options):
    model_config = ConfigDict(extra="forbid")

    items: list[QAItem] = Field(min_length=1, description="The (question, context) pairs; at most max_batch.")


class Span(BaseModel):
    answer: str
    score: float = Field(description="Probability among the n-best spans.")
    start: int = Field(description="Character offset of the answer in the context.")
    end: int = Field(description="End character offset (exclusive).")


class AnswerResponse(Span):
    length_config: list[int] | None = Field(description="Per-layer token counts used (null: full length).")
    macs: int = Field(description="MACs per sequence at the reference length with this configuration.")
    macs_fraction: float = Field(description="macs / MACs of the full-length model.")
    latency_ms: float = Field(description="Engine time of the (micro-)batch that produced this answer.")
    queue_ms: float = Field(description="Time the request waited for the engine before its call started.")
    answers: list[Span] | None = Field(None, description="The top_k best answers (only when top_k > 1).")


class BatchResponse(BaseModel):
    answers: list[AnswerResponse]
    length_config: list[int] | None
    macs: int
    latency_ms: float
    queue_ms: float


class ErrorResponse(BaseModel):
    error: str = Field(description="What is wrong and how to fix it.")
    detail: Any = Field(None, description="Per-field problems, when there are several.")


# ------------------------------------------------------------------------------------------ body limit
class BodyLimitMiddleware:
    """Reject bodies over ``max_bytes`` with 413 before anything parses them (Content-Length and streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                await _error(400, "invalid Content-Length header")(scope, receive, send)
                return
            if too_big:
                await self._reject(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:  # read the whole (bounded) body now, then replay it to the app
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _error(413, f"request body too large: at most {self.max_bytes} bytes")(scope, receive, send)


def _error(status: int, message: str, detail: Any = None) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail}, status_code=status)


def _field_errors(exc: RequestValidationError, content_type: str) -> tuple[int, str, list[dict[str, Any]]]:
    """Readable pydantic errors; malformed JSON is 400, a body not sent as JSON 415, anything else 422."""
    errors = exc.errors()
    if any(e["type"] == "model_attributes_type" and tuple(e["loc"]) == ("body",) for e in errors):
        if "json" not in content_type:
            return 415, f"send JSON with Content-Type: application/json (got {content_type!r})", []
        return 422, 'the body must be a JSON object such as {"question": ..., "context": ...}', []
    if any(e.get("type") == "json_invalid" for e in errors):
        e = errors[0]
        where = e["loc"][1] if len(e["loc"]) > 1 else "?"
        reason = (e.get("ctx") or {}).get("error", "JSON decode error")
        return 400, f"the body is not valid JSON ({reason} at character {where}); send a JSON object", []
    items = []
    for e in errors:
        loc = ".".join(str(p) for p in e["loc"] if p != "body") or "body"
        msg = e["msg"].removeprefix("Value error, ")
        items.append({"field": loc, "message": msg, "type": e["type"]})
    summary = "; ".join(f"{i['field']}: {i['message']}" for i in items[:3])
    more = f" (and {len(items) - 3} more)" if len(items) > 3 else ""
    return 422, f"invalid request: {summary}{more}", items


# ------------------------------------------------------------------------------------------ metrics
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
FRACTION_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class ServeMetrics:
    """The server's Prometheus metrics, in a registry of its own so that two apps in one process do not collide.

    Names and meanings are listed in docs/serving.md.
    """

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "quala_requests", "HTTP requests by path and status code.", ["path", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "quala_request_seconds",
            "Time in the server per HTTP request (s).",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "quala_queue_seconds", "Time a request waited for the engine (s).", buckets=LATENCY_BUCKETS, registry=r
        )
        self.compute_seconds = Histogram(
            "quala_compute_seconds", "Wall time of one engine call (s).", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_questions = Histogram(
            "quala_batch_questions", "Questions per engine call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.answers = Counter(
            "quala_answers",
            "Questions answered, by length configuration and what chose it.",
            ["config", "chosen_by"],
            registry=r,
        )
        self.macs_fraction = Histogram(
            "quala_macs_fraction", "MACs fraction of the full model per question.", buckets=FRACTION_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("quala_queue_depth", "Requests waiting for the engine.", registry=r)

    def watch(self, worker: EngineWorker, target_p95_ms: float | None) -> None:
        """Gauges read from the worker at each scrape (and the latency target's, when it is on)."""
        self.queue_depth.set_function(lambda: worker.queue.qsize() if worker.queue is not None else 0)
        if target_p95_ms is None:
            return
        r = self.registry
        Gauge("quala_target_p95_seconds", "The latency target (--target-p95-ms).", registry=r).set(target_p95_ms / 1000)
        Gauge(
            "quala_predicted_wait_seconds", "Predicted engine time queued ahead of a new request (s).", registry=r
        ).set_function(lambda: worker.target.backlog.wait_s() if worker.target else 0.0)
        Gauge(
            "quala_cost_scale", "Online correction of the calibrated costs (observed / calibrated time).", registry=r
        ).set_function(lambda: worker.target.cost.scale if worker.target else 1.0)

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Count and time every HTTP response by path and status (outermost, so 413s and 500s are counted too)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, paths: frozenset[str]):
        self.app = app
        self.metrics = metrics
        self.paths = paths  # the app's routes; anything else is "other" (bounded label values)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in self.paths else "other"
        status = 500  # an exception that escapes the app becomes a 500 further out

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.request_seconds.labels(path).observe(time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ worker
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
                self.executor, self._call, items, first.length_config, first.top_k
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
        self, items: list[tuple[str, str]], length_config: list[int] | None, top_k: int
    ) -> tuple[list[Answer], float]:
        t0 = self.clock()
        answers = self.engine.answer_batch(
            items, length_config=length_config if length_config is not None else "full", top_k=top_k
        )
        seconds = self.clock() - t0
        if self.target is not None:
            self.target.cost.observe(length_config, self.target.cost.units(items), seconds)
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


# ------------------------------------------------------------------------------------------ app
def _point(p: FrontPoint, full_macs: int) -> dict[str, Any]:
    return {
        "length_config": p.length_config,
        "f1": p.f1,
        "macs": p.macs,
        "macs_fraction": p.macs / full_macs,
        "latency_ms": p.latency_ms,
    }


def _response(a: Answer, full_macs: int, top_k: int, queue_ms: float) -> AnswerResponse:
    out = AnswerResponse(
        answer=a.answer,
        score=a.score,
        start=a.start,
        end=a.end,
        length_config=a.length_config,
        macs=int(a.macs or 0),
        macs_fraction=round((a.macs or 0) / full_macs, 6),
        latency_ms=round(float(a.latency_ms or 0.0), 3),
        queue_ms=round(queue_ms, 3),
    )
    if top_k > 1:
        out.answers = [Span(answer=p.text, score=p.score, start=p.start, end=p.end) for p in a.alternatives]
    return out


def demo_page() -> str:
    return resources.files("quala").joinpath("static", "index.html").read_text(encoding="utf-8")


def create_app(engine: QAEngine, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` (use as ``with TestClient(app)`` in tests so the worker starts)."""
    config = config or ServeConfig()
    metrics = ServeMetrics()
    worker = EngineWorker(
        engine, config.micro_batch, config.batch_window_ms, config.max_batch, config.max_queue, metrics=metrics
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await worker.start()
        if config.target_p95_ms is not None and worker.target is None:  # a test may have set its own
            worker.target = await asyncio.get_running_loop().run_in_executor(
                worker.executor, LatencyTarget.calibrated, engine, config.target_p95_ms / 1000, worker.clock
            )
        try:
            yield
        finally:
            await worker.stop()

    errors = {code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 503)}
    app = FastAPI(
        title="QuaLA",
        version=_version(),
        summary="Extractive question answering on CPUs, at a compute budget chosen per request.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.config = config
    app.state.worker = worker
    app.state.metrics = metrics
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    metrics.watch(worker, config.target_p95_ms)
    front_keys = {config_key(p.length_config) for p in engine.front}

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message, detail = _field_errors(exc, request.headers.get("content-type", ""))
        return _error(status, message, detail or None)

    @app.exception_handler(QualaError)
    async def on_quala(request: Request, exc: QualaError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in message:
            message = "the body could not be decoded; send UTF-8 encoded JSON"
        elif exc.status_code == 404:
            message = f"no such endpoint {request.url.path}; see /docs"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}; see /docs"
        return _error(exc.status_code, message)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); this is a bug, please report it")

    def check_sizes(items: Sequence[QAItem]) -> None:
        for n, it in enumerate(items):
            where = f"items[{n}]." if len(items) > 1 else ""
            if len(it.context) > config.max_context_chars:
                raise _TooLarge(
                    f"{where}context has {len(it.context)} characters; the limit is "
                    f"{config.max_context_chars} (split it, or raise --max-context-chars)"
                )
            if len(it.question) > config.max_question_chars:
                raise _TooLarge(
                    f"{where}question has {len(it.question)} characters; the limit is {config.max_question_chars}"
                )

    def resolve(req: _Options) -> tuple[list[int] | None | str, str]:
        """The configuration to run (AUTO: the latency target picks it when queued) and what chose it."""
        if req.budget is None and req.length_config is None:
            return (AUTO, "target") if config.target_p95_ms is not None else (engine.resolve(), "default")
        budget = req.budget.model_dump(exclude_none=True) if req.budget is not None else None
        return engine.resolve(budget, req.length_config), "request"

    def count(answers: list[Answer], chosen_by: str) -> None:
        key = config_key(answers[0].length_config)
        label = "full" if key is None else ",".join(map(str, key)) if key in front_keys else "custom"
        metrics.answers.labels(label, chosen_by).inc(len(answers))
        for a in answers:
            metrics.macs_fraction.observe((a.macs or 0) / engine.full_macs)

    @app.exception_handler(Busy)
    async def on_busy(request: Request, exc: Busy) -> JSONResponse:
        response = _error(503, str(exc))
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(_TooLarge)
    async def on_too_large(request: Request, exc: _TooLarge) -> JSONResponse:
        return _error(413, str(exc))

    @app.post("/v1/answer", response_model=AnswerResponse, response_model_exclude_unset=True, responses=errors)
    async def answer(req: AnswerRequest) -> AnswerResponse:
        """Answer one question from its context at the requested compute budget."""
        check_sizes([req])
        lengths, chosen_by = resolve(req)
        served = await worker.submit([(req.question, req.context)], lengths, req.top_k, mergeable=True)
        count(served.answers, chosen_by)
        return _response(served.answers[0], engine.full_macs, req.top_k, served.queue_ms)

    @app.post("/v1/answer/batch", response_model=BatchResponse, response_model_exclude_unset=True, responses=errors)
    async def answer_batch(req: BatchRequest) -> BatchResponse:
        """Answer many questions in one engine call, all at the same budget."""
        if len(req.items) > config.max_batch:
            raise _TooLarge(f"{len(req.items)} items; at most {config.max_batch} per request (--max-batch)")
        check_sizes(req.items)
        lengths, chosen_by = resolve(req)
        served = await worker.submit(
            [(it.question, it.context) for it in req.items], lengths, req.top_k, mergeable=False
        )
        count(served.answers, chosen_by)
        out = [_response(a, engine.full_macs, req.top_k, served.queue_ms) for a in served.answers]
        return BatchResponse(
            answers=out,
            length_config=out[0].length_config,
            macs=out[0].macs,
            latency_ms=out[0].latency_ms,
            queue_ms=out[0].queue_ms,
        )

    @app.get("/v1/model")
    def model_info() -> dict[str, Any]:
        """The model, its backend, the search front and what each preset resolves to."""
        p = engine.predictor
        return {
            "model": config.model,
            "backend": p.backend,
            "architecture": getattr(p.model_config, "model_type", None),
            "num_layers": engine.num_layers,
            "reference_length": p.la_config.reference_length,
            "full_macs": engine.full_macs,
            "front": [_point(fp, engine.full_macs) for fp in engine.front],
            "presets": {name: _point(fp, engine.full_macs) for name, fp in engine.presets().items()},
            "limits": {
                "max_context_chars": config.max_context_chars,
                "max_question_chars": config.max_question_chars,
                "max_batch": config.max_batch,
                "max_body_bytes": config.max_body_bytes,
                "max_top_k": MAX_TOP_K,
            },
            "micro_batching": {
                "enabled": config.micro_batch,
                "window_ms": config.batch_window_ms,
                "engine_calls": worker.calls,
                "questions": worker.questions,
            },
            "latency_target": None
            if worker.target is None
            else {
                "target_p95_ms": config.target_p95_ms,
                "headroom": HEADROOM,
                "predicted_wait_ms": round(worker.target.backlog.wait_s() * 1000, 3),
                "cost_model": worker.target.table(),
            },
        }

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        """Prometheus text exposition (metric names in docs/serving.md)."""
        return metrics.exposition()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(demo_page())

    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=frozenset(r.path for r in app.routes))
    return app


class _TooLarge(Exception):
    """A request within the body limit but over a per-field limit (413)."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("quala")
    except PackageNotFoundError:
        return "0"


def serve(config: ServeConfig) -> None:
    """Load the model and serve it with uvicorn until interrupted (``quala serve``)."""
    import uvicorn

    engine = QAEngine.from_pretrained(config.model, backend=config.backend, threads=config.threads)
    log.info("serving %s (%s) on http://%s:%d", config.model, engine.predictor.backend, config.host, config.port)
    app = create_app(engine, config)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", access_log=False)
