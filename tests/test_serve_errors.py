"""Overload and server bugs over real HTTP requests: 503 + Retry-After when the queue is full, and a 500 whose
body carries no traceback or internals."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

CONTEXT = "Neil Armstrong and Buzz Aldrin walked on the Moon while Michael Collins stayed in orbit."
BODY = {"question": "Who stayed in orbit?", "context": CONTEXT}


class GatedEngine:
    """Wraps a real engine; each answer_batch call waits until the test opens the gate."""

    def __init__(self, engine):
        self.engine = engine
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def answer_batch(self, *args, **kwargs):
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return self.engine.answer_batch(*args, **kwargs)


class BrokenEngine(GatedEngine):
    def answer_batch(self, *args, **kwargs):
        raise RuntimeError("secret detail: /srv/models/private/weights.safetensors is corrupt")


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from quala.engine import QAEngine

    return QAEngine.from_pretrained(tiny_model_dir, backend="torch", threads=1)


def _wait_for(condition, seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_full_queue_is_refused_with_503_and_retry_after_over_http(engine):
    from quala.serve import ServeConfig, create_app

    gated = GatedEngine(engine)
    app = create_app(gated, ServeConfig(max_queue=1, micro_batch=False))
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, "/v1/answer", json=BODY)  # taken by the worker, blocked in the engine
        assert gated.entered.wait(10)
        second = pool.submit(client.post, "/v1/answer", json=BODY)  # waits in the queue (its one place)
        _wait_for(lambda: app.state.worker.queue.qsize() == 1)
        third = client.post("/v1/answer", json=BODY)
        assert third.status_code == 503
        assert third.headers["Retry-After"] == "1"
        body = third.json()
        assert set(body) >= {"error"} and "retry" in body["error"]
        gated.gate.set()
        for done in (first.result(30), second.result(30)):  # the accepted requests still complete
            assert (
                done.status_code == 200 and CONTEXT[done.json()["start"] : done.json()["end"]] == done.json()["answer"]
            )


def test_engine_bug_is_a_500_without_traceback_or_internals(engine):
    from quala.serve import ServeConfig, create_app

    app = create_app(BrokenEngine(engine), ServeConfig())
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/v1/answer", json=BODY)
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == "internal error (RuntimeError); this is a bug, please report it"
    text = response.text
    assert "secret" not in text and "/srv/models" not in text and "Traceback" not in text
