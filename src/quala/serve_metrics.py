"""The server's Prometheus metrics (names and meanings in docs/serving.md) and the middleware that times requests."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from quala.serve_worker import EngineWorker


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
        Gauge(
            "quala_demand",
            "Share of the engine's time the last 2 s of arrivals would take at the most accurate configuration.",
            registry=r,
        ).set_function(lambda: worker.target.demand() if worker.target else 0.0)

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
