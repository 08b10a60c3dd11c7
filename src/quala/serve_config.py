"""Settings of ``quala serve`` (:mod:`quala.serve`), apart from the server so that the command line can generate
its options without importing FastAPI."""

from __future__ import annotations

import math
from dataclasses import dataclass

from quala.builtin import BUILTIN_MODEL
from quala.config import setting
from quala.errors import QualaError


@dataclass
class ServeConfig:
    """Server settings; each field with a help text is also a ``quala serve`` option (:mod:`quala.cli_options`)."""

    model: str = BUILTIN_MODEL  # loaded by serve(), shown by GET /v1/model
    host: str = setting("127.0.0.1", "Interface to listen on (127.0.0.1: this machine only).")
    port: int = setting(8000, "TCP port.")
    backend: str = setting("auto", "auto | torch | onnxruntime")
    threads: int | None = setting(None, "CPU threads (default: all cores).")
    # the default is about 100 doc-stride windows
    max_context_chars: int = setting(100_000, "Longest context accepted, in characters; longer ones get HTTP 413.")
    max_question_chars: int = setting(1_000, "Longest question accepted (characters).")
    max_batch: int = setting(32, "Most questions per /v1/answer/batch request and per merged micro-batch.")
    # checked before the body is parsed
    max_body_mb: float = setting(8.0, "Largest request body in MiB; larger ones get HTTP 413.")
    micro_batch: bool = setting(False, "Merge concurrent requests with the same length config into one call.")
    batch_window_ms: float = setting(2.0, "With --micro-batch: how long to wait for more requests to merge (ms).")
    max_queue: int = setting(256, "Most requests waiting for the engine; more get HTTP 503 (bounds memory).")
    target_p95_ms: float | None = setting(
        None,
        "Latency-target mode: requests without a budget get the most accurate configuration predicted to finish "
        "within MS under the current load (docs/serving.md).",
        metavar="MS",
        as_text=True,
    )
    target_load: float = setting(
        0.7,
        "Latency-target mode: the most of the engine's time that the last 2 s of arrivals may take at the chosen "
        "configuration (above 1: only the queue decides).",
        metavar="SHARE",
    )

    @property
    def max_body_bytes(self) -> int:
        """``max_body_mb`` in bytes (what the body limit counts)."""
        return int(self.max_body_mb * 1024 * 1024)

    def __post_init__(self) -> None:
        for name in ("max_context_chars", "max_question_chars", "max_batch", "max_queue"):
            if getattr(self, name) < 1:
                raise QualaError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        mb = self.max_body_mb
        if not (_positive(mb) and mb * 1024 * 1024 >= 1):
            raise QualaError(f"max-body-mb must be > 0 (at least one byte), got {mb!r}")
        if not 0 <= self.batch_window_ms <= 1000:
            raise QualaError(f"batch-window-ms must be in [0, 1000], got {self.batch_window_ms}")
        if not 0 < self.port < 65536:
            raise QualaError(f"port must be in 1..65535, got {self.port}")
        if self.threads is not None and self.threads < 1:
            raise QualaError(f"threads must be >= 1, got {self.threads}")
        t = self.target_p95_ms
        if t is not None and not _positive(t):
            raise QualaError(f"target-p95-ms must be a number of milliseconds > 0, got {t!r}")
        u = self.target_load
        if not _positive(u):
            raise QualaError(f"target-load must be a share of the engine's time > 0 (e.g. 0.7), got {u!r}")


def _positive(value: object) -> bool:
    """A finite number > 0 (a string, NaN or infinity is not)."""
    return isinstance(value, int | float) and math.isfinite(value) and value > 0
