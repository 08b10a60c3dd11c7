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
JSON body ``{"error": "...", "detail": ...}`` that says what to fix. The settings are :mod:`quala.serve_config`,
the worker :mod:`quala.serve_worker`, the Prometheus metrics :mod:`quala.serve_metrics`; this module is the HTTP
API as a client sees it: schemas, the error contract and the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, create_model, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quala.adaptive import HEADROOM, LatencyTarget, config_key
from quala.budget import Budget
from quala.engine import Answer, QAEngine
from quala.errors import QualaError
from quala.front import FrontPoint
from quala.serve_config import ServeConfig
from quala.serve_metrics import MetricsMiddleware, ServeMetrics
from quala.serve_worker import AUTO, Busy, EngineWorker

log = logging.getLogger("quala.serve")

MAX_TOP_K = 20  # DataConfig.n_best_size: postprocess keeps at most this many spans per question


# ------------------------------------------------------------------------------------------ schemas
class _OneBudget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _exactly_one(self) -> _OneBudget:
        given = [k for k, v in self.model_dump().items() if v is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(type(self).model_fields)}"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


def _budget_field(f: dataclasses.Field) -> tuple[Any, Any]:
    """The pydantic form of one :class:`~quala.budget.Budget` field: its type, bounds and help, strict JSON."""
    meta = f.metadata
    if "choices" in meta:
        return Literal[meta["choices"]] | None, Field(None, description=meta["help"])
    bounds = {k: meta[k] for k in ("gt", "le") if k in meta}
    return float | None, Field(None, strict=True, allow_inf_nan=False, description=meta["help"], **bounds)


# the request's budget, derived from Budget: the fields, bounds and presets are stated once, there
BudgetIn = create_model(
    "BudgetIn",
    __base__=_OneBudget,
    __doc__="A compute budget: exactly one of the fields.",
    **{f.name: _budget_field(f) for f in dataclasses.fields(Budget)},
)


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


def _install_error_handlers(app: FastAPI) -> None:
    """Every error is a JSON ``{"error", "detail"}`` body that says what to fix; a bug's body names no internals."""

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

    @app.exception_handler(Busy)
    async def on_busy(request: Request, exc: Busy) -> JSONResponse:
        response = _error(503, str(exc))
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(_TooLarge)
    async def on_too_large(request: Request, exc: _TooLarge) -> JSONResponse:
        return _error(413, str(exc))


def _check_sizes(items: Sequence[QAItem], config: ServeConfig) -> None:
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


def _model_info(engine: QAEngine, config: ServeConfig, worker: EngineWorker) -> dict[str, Any]:
    """GET /v1/model: the model, its backend, the search front and what each preset resolves to."""
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


def _resolve(engine: QAEngine, config: ServeConfig, req: _Options) -> tuple[list[int] | None | str, str]:
    """The configuration to run (AUTO: the latency target picks it when queued) and what chose it."""
    if req.budget is None and req.length_config is None:
        return (AUTO, "target") if config.target_p95_ms is not None else (engine.resolve(), "default")
    budget = req.budget.model_dump(exclude_none=True) if req.budget is not None else None
    return engine.resolve(budget, req.length_config), "request"


def _count(metrics: ServeMetrics, engine: QAEngine, front: set, answers: list[Answer], chosen_by: str) -> None:
    """Answers by configuration (a front point, full length or a custom one) and by what chose it."""
    key = config_key(answers[0].length_config)
    label = "full" if key is None else ",".join(map(str, key)) if key in front else "custom"
    metrics.answers.labels(label, chosen_by).inc(len(answers))
    for a in answers:
        metrics.macs_fraction.observe((a.macs or 0) / engine.full_macs)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI, worker: EngineWorker, engine: QAEngine, config: ServeConfig) -> AsyncIterator[None]:
    """Start the engine worker (and calibrate the latency target) with the app; stop it on shutdown."""
    await worker.start()
    if config.target_p95_ms is not None and worker.target is None:  # a test may have set its own
        worker.target = await asyncio.get_running_loop().run_in_executor(
            worker.executor,
            LatencyTarget.calibrated,
            engine,
            config.target_p95_ms / 1000,
            worker.clock,
            config.target_load,
        )
    try:
        yield
    finally:
        await worker.stop()


def create_app(engine: QAEngine, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` (use as ``with TestClient(app)`` in tests so the worker starts)."""
    config = config or ServeConfig()
    metrics = ServeMetrics()
    worker = EngineWorker(
        engine, config.micro_batch, config.batch_window_ms, config.max_batch, config.max_queue, metrics=metrics
    )

    errors = {code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 503)}
    app = FastAPI(
        title="QuaLA",
        version=_version(),
        summary="Extractive question answering on CPUs, at a compute budget chosen per request.",
        lifespan=functools.partial(_lifespan, worker=worker, engine=engine, config=config),
    )
    app.state.engine, app.state.config, app.state.worker, app.state.metrics = engine, config, worker, metrics
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    metrics.watch(worker, config.target_p95_ms)
    front_keys = {config_key(p.length_config) for p in engine.front}

    _install_error_handlers(app)

    @app.post("/v1/answer", response_model=AnswerResponse, response_model_exclude_unset=True, responses=errors)
    async def answer(req: AnswerRequest) -> AnswerResponse:
        """Answer one question from its context at the requested compute budget."""
        _check_sizes([req], config)
        lengths, chosen_by = _resolve(engine, config, req)
        served = await worker.submit([(req.question, req.context)], lengths, req.top_k, mergeable=True)
        _count(metrics, engine, front_keys, served.answers, chosen_by)
        return _response(served.answers[0], engine.full_macs, req.top_k, served.queue_ms)

    @app.post("/v1/answer/batch", response_model=BatchResponse, response_model_exclude_unset=True, responses=errors)
    async def answer_batch(req: BatchRequest) -> BatchResponse:
        """Answer many questions in one engine call, all at the same budget."""
        if len(req.items) > config.max_batch:
            raise _TooLarge(f"{len(req.items)} items; at most {config.max_batch} per request (--max-batch)")
        _check_sizes(req.items, config)
        lengths, chosen_by = _resolve(engine, config, req)
        items = [(it.question, it.context) for it in req.items]
        served = await worker.submit(items, lengths, req.top_k, mergeable=False)
        _count(metrics, engine, front_keys, served.answers, chosen_by)
        out = [_response(a, engine.full_macs, req.top_k, served.queue_ms) for a in served.answers]
        first = out[0]
        return BatchResponse(
            answers=out,
            length_config=first.length_config,
            macs=first.macs,
            latency_ms=first.latency_ms,
            queue_ms=first.queue_ms,
        )

    @app.get("/v1/model")
    def model_info() -> dict[str, Any]:
        """The model, its backend, the search front and what each preset resolves to."""
        return _model_info(engine, config, worker)

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
