"""HTTP serving: answers equal the engine's, concurrency is safe, and bad input always gets a JSON 4xx."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import COVIDQA, run_cli
from fastapi.testclient import TestClient

CONTEXT = (
    "The Apollo program was carried out by NASA from 1961 to 1972. It landed the first humans on the Moon in "
    "1969. Neil Armstrong and Buzz Aldrin walked on the surface while Michael Collins stayed in orbit."
)
QUESTION = "Who stayed in orbit?"
ANSWER, BATCH = "/v1/answer", "/v1/answer/batch"
LIMITS = dict(max_context_chars=8_000, max_question_chars=200, max_batch=4, max_body_mb=1 / 16)  # 64 KiB


@pytest.fixture(scope="module")
def front_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model with a small hand-written search front (fast / balanced / accurate differ)."""
    from transformers import AutoConfig

    from quala.macs import count_macs

    out = tmp_path_factory.mktemp("tiny-front") / "model"
    shutil.copytree(tiny_model_dir, out)
    config = AutoConfig.from_pretrained(out)
    points = [([160, 120, 90, 60], 70.0, 4.0), ([300, 260, 220, 180], 74.5, 7.0), (None, 75.0, 10.0)]
    front = [
        {
            "length_config": lc,
            "f1": f1,
            "exact_match": f1 - 10,
            "macs": count_macs(config, 384, lc).total,
            "latency_ms": ms,
        }
        for lc, f1, ms in points
    ]
    (out / "search.json").write_text(json.dumps({"front": front}), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def engine(front_model_dir):
    from quala.engine import QAEngine

    return QAEngine.from_pretrained(front_model_dir, backend="torch", threads=1)


@pytest.fixture(scope="module")
def client(engine, front_model_dir):
    from quala.serve import ServeConfig, create_app

    app = create_app(engine, ServeConfig(model=str(front_model_dir), **LIMITS))
    with TestClient(app) as c:
        yield c


def _same(http: dict, a) -> None:
    assert (http["answer"], http["start"], http["end"]) == (a.answer, a.start, a.end)
    assert http["score"] == pytest.approx(a.score, rel=1e-5, abs=1e-7)
    assert http["length_config"] == a.length_config
    assert http["macs"] == a.macs


# ------------------------------------------------------------------------------------------ behaviour
@pytest.mark.parametrize(
    "budget",
    [
        None,
        {"preset": "fast"},
        {"preset": "balanced"},
        {"preset": "accurate"},
        {"macs_fraction": 0.5},
        {"macs_fraction": 1.0},
        {"max_latency_ms": 8},
    ],
)
def test_http_answer_equals_engine(client, engine, budget):
    body = {"question": QUESTION, "context": CONTEXT}
    if budget is not None:
        body["budget"] = budget
    r = client.post("/v1/answer", json=body)
    assert r.status_code == 200, r.text
    expected = engine.answer(QUESTION, CONTEXT, budget=budget)
    _same(r.json(), expected)
    assert "answers" not in r.json()
    assert r.json()["macs_fraction"] == pytest.approx(expected.macs / engine.full_macs)


def test_budgets_pick_different_points(client, engine):
    body = {"question": QUESTION, "context": CONTEXT}
    got = {
        p: client.post(ANSWER, json=body | {"budget": {"preset": p}}).json()["length_config"]
        for p in ("fast", "balanced", "accurate")
    }
    assert got == {"fast": [160, 120, 90, 60], "balanced": [300, 260, 220, 180], "accurate": None}


def test_explicit_length_config_and_top_k(client, engine):
    body = {"question": QUESTION, "context": CONTEXT, "length_config": [200, 150, 100, 50], "top_k": 3}
    r = client.post("/v1/answer", json=body)
    assert r.status_code == 200, r.text
    expected = engine.answer(QUESTION, CONTEXT, length_config=[200, 150, 100, 50], top_k=3)
    _same(r.json(), expected)
    alts = r.json()["answers"]
    assert len(alts) == 3 and [a["answer"] for a in alts] == [p.text for p in expected.alternatives]
    assert r.json()["answer"] == alts[0]["answer"]
    full = client.post("/v1/answer", json={"question": QUESTION, "context": CONTEXT, "length_config": "full"})
    assert full.status_code == 200 and full.json()["length_config"] is None


def test_batch_endpoint_equals_engine(client, engine):
    items = [
        {"question": QUESTION, "context": CONTEXT},
        {"question": "When did it land?", "context": CONTEXT},
        {"question": "Who ran it?", "context": "NASA ran the program. " * 3},
    ]
    r = client.post("/v1/answer/batch", json={"items": items, "budget": {"preset": "balanced"}})
    assert r.status_code == 200, r.text
    expected = engine.answer_batch([(i["question"], i["context"]) for i in items], budget="balanced")
    assert len(r.json()["answers"]) == 3
    for got, a in zip(r.json()["answers"], expected, strict=True):
        _same(got, a)
    assert r.json()["length_config"] == [300, 260, 220, 180]


def test_int8_fused_attention_server_switches_configs_per_request(tmp_path, minilm_path):
    """Issue 18: a learned-significance model's int8 graph runs fused QAttention; one loaded session still answers
    each request at its own length configuration, as the engine does."""
    import onnx
    from conftest import tiny_hf_qa
    from transformers import AutoTokenizer

    from quala.config import LengthAdaptiveConfig
    from quala.engine import QAEngine
    from quala.model import LengthAdaptiveQA
    from quala.quantize import quantize
    from quala.serve import ServeConfig, create_app

    source = tmp_path / "learned"
    la_config = LengthAdaptiveConfig(significance="learned", scorer_question=True)
    LengthAdaptiveQA(tiny_hf_qa("bert"), la_config).save_pretrained(source)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(source)
    quantize(source, None, tmp_path / "int8")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node]
    assert ops.count("QAttention") == 4 and "Softmax" not in ops
    engine = QAEngine.from_pretrained(tmp_path / "int8", backend="onnxruntime", threads=1)
    session = engine.predictor.session
    configs = ([384, 384, 384, 384], [300, 200, 120, 40], [90, 60, 30, 10])
    with TestClient(create_app(engine, ServeConfig(model=str(tmp_path / "int8"), **LIMITS))) as c:
        got = [
            c.post(ANSWER, json={"question": QUESTION, "context": CONTEXT, "length_config": lc, "top_k": 5}).json()
            for lc in configs
        ]
    for lc, http in zip(configs, got, strict=True):
        _same(http, engine.answer(QUESTION, CONTEXT, length_config=lc, top_k=5))
    assert len({g["macs"] for g in got}) == 3 and engine.predictor.session is session  # one session, three budgets
    scores = [[a["score"] for a in g["answers"]] for g in got]
    assert scores[1] != scores[2]  # the dropped configurations really computed different logits


def test_long_document_uses_doc_stride_windows(client, engine):
    if COVIDQA.is_file():
        paragraph = json.loads(COVIDQA.read_text(encoding="utf-8"))["data"][0]["paragraphs"][0]
        context, question = paragraph["context"][:7_900], paragraph["qas"][0]["question"]
    else:
        context, question = (CONTEXT + " ") * 39, QUESTION  # under the 8,000-character limit
    from quala.data import Example, prepare_features

    windows = len(prepare_features([Example("0", question, context)], engine.predictor.tokenizer).input_ids)
    assert windows > 3
    r = client.post(ANSWER, json={"question": question, "context": context, "budget": {"preset": "fast"}})
    assert r.status_code == 200, r.text
    _same(r.json(), engine.answer(question, context, budget="fast"))
    assert context[r.json()["start"] : r.json()["end"]] == r.json()["answer"]


def test_model_endpoint_reports_front_and_presets(client, engine):
    info = client.get("/v1/model").json()
    assert info["backend"] == "torch" and info["num_layers"] == 4
    assert [p["length_config"] for p in info["front"]] == [p.length_config for p in engine.front]
    for name, point in engine.presets().items():
        assert info["presets"][name]["length_config"] == point.length_config
        assert info["presets"][name]["macs"] == point.macs
    assert info["limits"]["max_batch"] == LIMITS["max_batch"]
    assert client.get("/healthz").json() == {"status": "ok"}


def test_demo_page_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="budget"' in page.text and "/v1/answer" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # works offline: nothing external
    spec = client.get("/openapi.json").json()
    assert {"/v1/answer", "/v1/answer/batch", "/v1/model", "/healthz"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


def test_concurrent_requests_are_safe(client, engine):
    budgets = [None, {"preset": "fast"}, {"preset": "balanced"}, {"macs_fraction": 0.5}]
    questions = [QUESTION, "When did it land?", "Who walked on the surface?"]
    jobs = [(q, b) for q in questions for b in budgets] * 2
    expected = {(q, json.dumps(b)): engine.answer(q, CONTEXT, budget=b) for q, b in jobs}

    def call(job):
        q, b = job
        body = {"question": q, "context": CONTEXT} | ({"budget": b} if b else {})
        return job, client.post("/v1/answer", json=body)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, jobs))
    for (q, b), r in results:
        assert r.status_code == 200, r.text
        _same(r.json(), expected[(q, json.dumps(b))])


def test_micro_batching_merges_queued_requests_with_the_same_config(engine):
    """Requests queued together are merged per length configuration; answers stay those of the engine."""
    from quala.serve_worker import EngineWorker

    jobs = [
        (QUESTION, [160, 120, 90, 60]),
        ("When did it land?", [160, 120, 90, 60]),
        ("Who ran it?", None),
        ("Who walked?", [160, 120, 90, 60]),
        ("Where?", None),
    ]

    async def run(micro_batch: bool):
        worker = EngineWorker(engine, micro_batch=micro_batch, window_ms=0, max_batch=8)
        await worker.start()
        try:
            out = await asyncio.gather(*(worker.submit([(q, CONTEXT)], lc, 1, mergeable=True) for q, lc in jobs))
        finally:
            await worker.stop()
        return worker.calls, [s.answers[0] for s in out]

    calls_on, merged = asyncio.run(run(True))
    calls_off, single = asyncio.run(run(False))
    assert (calls_on, calls_off) == (2, 5)
    for (q, lc), m, s in zip(jobs, merged, single, strict=True):
        a = engine.answer(q, CONTEXT, length_config=lc if lc is not None else "full")
        for got in (m, s):
            assert (got.answer, got.start, got.end) == (a.answer, a.start, a.end)
            assert got.length_config == a.length_config
            assert got.score == pytest.approx(a.score, rel=1e-4, abs=1e-6)


def test_micro_batching_server_answers_like_the_engine(engine, front_model_dir):
    from quala.serve import ServeConfig, create_app

    app = create_app(engine, ServeConfig(micro_batch=True, batch_window_ms=5, **LIMITS))
    questions = [QUESTION, "When did it land?", "Who walked on the surface?", "What did NASA do?"] * 2
    with TestClient(app) as c, ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(
                lambda q: c.post(ANSWER, json={"question": q, "context": CONTEXT, "budget": {"preset": "fast"}}),
                questions,
            )
        )
        info = c.get("/v1/model").json()["micro_batching"]
    for q, r in zip(questions, responses, strict=True):
        assert r.status_code == 200, r.text
        a = engine.answer(q, CONTEXT, budget="fast")
        assert (r.json()["answer"], r.json()["start"], r.json()["end"]) == (a.answer, a.start, a.end)
    assert info["enabled"] and info["questions"] == len(questions)
    assert 1 <= info["engine_calls"] <= len(questions)


# ------------------------------------------------------------------------------------------ bad input
def _ok(**extra):
    return json.dumps({"question": QUESTION, "context": CONTEXT} | extra).encode()


JSON = {"content-type": "application/json"}
BIG = "x" * (LIMITS["max_context_chars"] + 1)
BAD_INPUT = [
    # (name, path, body bytes (None: a GET), headers, expected status, words the error must contain)
    ("missing question", ANSWER, b'{"context": "abc"}', JSON, 422, "question"),
    ("missing context", ANSWER, b'{"question": "abc"}', JSON, 422, "context"),
    ("empty question", ANSWER, b'{"question": "", "context": "abc"}', JSON, 422, "question"),
    ("blank question", ANSWER, b'{"question": "   ", "context": "abc"}', JSON, 422, "empty"),
    ("empty context", ANSWER, b'{"question": "q?", "context": ""}', JSON, 422, "context"),
    ("question is a number", ANSWER, b'{"question": 7, "context": "abc"}', JSON, 422, "string"),
    ("context is null", ANSWER, b'{"question": "q?", "context": null}', JSON, 422, "context"),
    ("context is a list", ANSWER, b'{"question": "q?", "context": ["a"]}', JSON, 422, "context"),
    ("unknown field", ANSWER, _ok(foo=1), JSON, 422, "foo"),
    ("unknown preset", ANSWER, _ok(budget={"preset": "turbo"}), JSON, 422, "accurate"),
    ("two budgets", ANSWER, _ok(budget={"preset": "fast", "macs_fraction": 0.5}), JSON, 422, "exactly one"),
    ("empty budget", ANSWER, _ok(budget={}), JSON, 422, "exactly one"),
    ("budget is a string", ANSWER, _ok(budget="fast"), JSON, 422, "budget"),
    ("unknown budget field", ANSWER, _ok(budget={"flops": 0.5}), JSON, 422, "flops"),
    ("macs_fraction zero", ANSWER, _ok(budget={"macs_fraction": 0}), JSON, 422, "greater than 0"),
    ("macs_fraction above 1", ANSWER, _ok(budget={"macs_fraction": 1.5}), JSON, 422, "1"),
    ("macs_fraction text", ANSWER, _ok(budget={"macs_fraction": "half"}), JSON, 422, "number"),
    (
        "macs_fraction NaN",
        ANSWER,
        b'{"question": "q?", "context": "abc", "budget": {"macs_fraction": NaN}}',
        JSON,
        422,
        "finite",
    ),
    ("negative latency", ANSWER, _ok(budget={"max_latency_ms": -5}), JSON, 422, "max_latency_ms"),
    ("impossible macs budget", ANSWER, _ok(budget={"macs_fraction": 0.01}), JSON, 422, "impossible budget"),
    ("impossible latency budget", ANSWER, _ok(budget={"max_latency_ms": 1}), JSON, 422, "impossible budget"),
    ("top_k zero", ANSWER, _ok(top_k=0), JSON, 422, "top_k"),
    ("top_k too large", ANSWER, _ok(top_k=21), JSON, 422, "top_k"),
    ("top_k as text", ANSWER, _ok(top_k="3"), JSON, 422, "integer"),
    ("top_k boolean", ANSWER, _ok(top_k=True), JSON, 422, "integer"),
    ("length config wrong layers", ANSWER, _ok(length_config=[100, 90]), JSON, 422, "length config"),
    ("length config increasing", ANSWER, _ok(length_config=[50, 60, 70, 80]), JSON, 422, "length config"),
    ("budget and length config", ANSWER, _ok(budget={"preset": "fast"}, length_config="full"), JSON, 422, "not both"),
    ("invalid JSON", ANSWER, b'{"question": "q?", "context": ', JSON, 400, "not valid JSON"),
    ("trailing comma", ANSWER, b'{"question": "q?", "context": "abc",}', JSON, 400, "JSON"),
    ("non-UTF-8 body", ANSWER, b'{"question": "\xff\xfe", "context": "abc"}', JSON, 400, "UTF-8"),
    ("JSON array body", ANSWER, b'[{"question": "q?"}]', JSON, 422, "JSON object"),
    ("empty body", ANSWER, b"", JSON, 422, "body"),
    ("text/plain body", ANSWER, _ok(), {"content-type": "text/plain"}, 415, "application/json"),
    (
        "form body",
        ANSWER,
        b"question=a&context=b",
        {"content-type": "application/x-www-form-urlencoded"},
        415,
        "application/json",
    ),
    (
        "body over the byte limit",
        ANSWER,
        b'{"question": "q?", "context": "' + b"a" * 70_000 + b'"}',
        JSON,
        413,
        "too large",
    ),
    ("context over the limit", ANSWER, _ok(context=BIG), JSON, 413, "max-context-chars"),
    ("question over the limit", ANSWER, _ok(question="why " * 60), JSON, 413, "question"),
    ("bad Content-Length", ANSWER, _ok(), JSON | {"content-length": "lots"}, 400, "Content-Length"),
    (
        "batch too many items",
        BATCH,
        json.dumps({"items": [{"question": "q?", "context": "abc"}] * 5}).encode(),
        JSON,
        413,
        "at most 4",
    ),
    ("batch without items", BATCH, b'{"items": []}', JSON, 422, "items"),
    ("batch items not a list", BATCH, b'{"items": "q?"}', JSON, 422, "items"),
    ("batch item missing context", BATCH, b'{"items": [{"question": "q?"}]}', JSON, 422, "items.0.context"),
    (
        "batch item context too long",
        BATCH,
        json.dumps({"items": [{"question": "q?", "context": "ok"}, {"question": "?", "context": BIG}]}).encode(),
        JSON,
        413,
        "items[1].context",
    ),
    (
        "batch impossible budget",
        BATCH,
        json.dumps({"items": [{"question": "q?", "context": "a"}], "budget": {"macs_fraction": 0.001}}).encode(),
        JSON,
        422,
        "impossible budget",
    ),
    ("GET on answer", ANSWER, None, {}, 405, "not allowed"),
    ("unknown endpoint", "/v1/answers", _ok(), JSON, 404, "no such endpoint"),
]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gets_a_json_4xx(client, case):
    _, path, body, headers, status, words = case
    r = client.request("GET" if body is None else "POST", path, content=body, headers=headers)
    assert r.status_code == status, r.text
    err = r.json()
    assert set(err) == {"error", "detail"} and isinstance(err["error"], str)
    assert words.lower() in (err["error"] + json.dumps(err["detail"])).lower(), err


def test_streamed_body_over_the_limit_gets_413(client):
    def chunks():  # no Content-Length: the limit is enforced on the bytes as they arrive
        yield b'{"question": "q?", "context": "'
        for _ in range(20):
            yield b"a" * 4_000
        yield b'"}'

    r = client.post("/v1/answer", content=chunks(), headers=JSON)
    assert r.status_code == 413 and "too large" in r.json()["error"]


CLI_ERRORS = [
    (["--max-batch", "0"], "max-batch"),
    (["--port", "70000"], "port"),
    (["--max-body-mb", "-1"], "max-body-mb"),
    (["--max-body-mb", "0"], "max-body-mb"),
    (["--max-queue", "0"], "max-queue"),
    (["--batch-window-ms", "5000"], "batch-window-ms"),
    (["--backend", "nope"], "unknown backend"),
    (["--model", "MISSING"], "MISSING"),
]


@pytest.mark.parametrize("args,words", CLI_ERRORS, ids=[w for _, w in CLI_ERRORS])
def test_serve_cli_rejects_bad_options(tiny_model_dir, monkeypatch, capsys, args, words):
    from quala import cli

    args = [str(tiny_model_dir / a) if a == "MISSING" else a for a in args]
    model = [] if "--model" in args else ["--model", str(tiny_model_dir)]
    monkeypatch.setattr(sys, "argv", ["quala", "serve", *model, *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.startswith("error:") and err.count("\n") == 1 and words in err


def test_full_queue_gets_503_and_the_rest_is_answered(engine):
    """Overload is refused with 503 instead of queueing without bound; queued requests still complete."""
    import threading

    from quala.serve_worker import Busy, EngineWorker

    class SlowEngine:  # blocks until released, then answers like the real engine
        def __init__(self):
            self.started, self.release = threading.Event(), threading.Event()

        def answer_batch(self, items, length_config=None, top_k=1):
            self.started.set()
            self.release.wait(timeout=30)
            return engine.answer_batch(items, length_config=length_config, top_k=top_k)

    slow = SlowEngine()

    async def run():
        loop = asyncio.get_running_loop()
        worker = EngineWorker(slow, micro_batch=False, window_ms=0, max_batch=4, max_queue=1)
        await worker.start()
        try:
            first = asyncio.ensure_future(worker.submit([(QUESTION, CONTEXT)], None, 1, mergeable=True))
            await loop.run_in_executor(None, slow.started.wait, 30)  # the worker is busy with `first`
            second = asyncio.ensure_future(worker.submit([(QUESTION, CONTEXT)], None, 1, mergeable=True))
            await asyncio.sleep(0)  # `second` is now queued
            with pytest.raises(Busy):
                await worker.submit([(QUESTION, CONTEXT)], None, 1, mergeable=True)
            slow.release.set()
            return await first, await second
        finally:
            await worker.stop()

    first, second = asyncio.run(run())
    expected = engine.answer(QUESTION, CONTEXT, length_config="full")
    assert first.answers[0].answer == second.answers[0].answer == expected.answer


def _served_config(monkeypatch, capsys, *args):
    """The ServeConfig that ``quala serve ARGS`` would start the server with (the server itself is not started)."""
    import quala.serve

    seen = []
    monkeypatch.setattr(quala.serve, "serve", seen.append)
    code, _, err = run_cli(["serve", *args], capsys)
    assert code == 0 and len(seen) == 1, err
    return seen[0]


def test_serve_flags_reach_serve_config(monkeypatch, capsys):
    """Each generated flag sets its ServeConfig field; without flags the server gets ServeConfig's own defaults."""
    import dataclasses

    from quala.serve import ServeConfig

    args = [
        "--model", "some/model", "--host", "0.0.0.0", "--port", "8081", "--backend", "torch", "--threads", "2",
        "--max-context-chars", "500", "--max-question-chars", "50", "--max-batch", "3", "--max-body-mb", "0.5",
        "--micro-batch", "--batch-window-ms", "7.5", "--max-queue", "9", "--target-p95-ms", "250",
        "--target-load", "0.85",
    ]  # fmt: skip
    config = _served_config(monkeypatch, capsys, *args)
    assert dataclasses.asdict(config) == {
        "model": "some/model",
        "host": "0.0.0.0",
        "port": 8081,
        "backend": "torch",
        "threads": 2,
        "max_context_chars": 500,
        "max_question_chars": 50,
        "max_batch": 3,
        "max_body_mb": 0.5,
        "micro_batch": True,
        "batch_window_ms": 7.5,
        "max_queue": 9,
        "target_p95_ms": 250.0,
        "target_load": 0.85,
    }
    assert config.max_body_bytes == 512 * 1024  # what the body limit counts
    assert _served_config(monkeypatch, capsys) == ServeConfig()


def test_serve_help_explains_every_setting(capsys):
    """`quala serve --help` lists each ServeConfig setting under its flag, with the field's help text."""
    import dataclasses

    from quala.serve import ServeConfig

    code, out, _ = run_cli(["serve", "--help"], capsys)
    text = " ".join(out.replace("\u2502", " ").split())  # rich's box borders and line wrapping removed
    flags = [
        "--model", "--host", "--port", "--backend", "--threads", "--max-context-chars", "--max-question-chars",
        "--max-batch", "--max-body-mb", "--micro-batch", "--no-micro-batch", "--batch-window-ms", "--max-queue",
        "--target-p95-ms",
    ]  # fmt: skip
    assert code == 0 and all(f" {flag} " in text for flag in flags), text
    for f in dataclasses.fields(ServeConfig):
        if f.name != "model":
            assert " ".join(f.metadata["help"].split()) in text, f.name
    assert "--target-p95-ms MS" in text
