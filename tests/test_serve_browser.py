"""The demo page in a real headless browser: load it, pick a budget, ask, see the answer highlighted.

Needs Debian's ``chromium`` and the ``playwright`` Python package (no browser download: it drives
/usr/bin/chromium); skipped when either is missing. Set QUALA_DEMO_SCREENSHOT=docs/img/demo.png to refresh the
screenshot in the docs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from test_builtin import builtin_model, fake_run, packaged  # noqa: F401 - fixtures
from test_serve import CONTEXT, LIMITS, engine, front_model_dir  # noqa: F401 - fixtures

CHROMIUM = os.environ.get("QUALA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def _running(app):
    """Serve ``app`` with a real uvicorn server on 127.0.0.1 (a free port) in a background thread."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server_url(engine, front_model_dir):  # noqa: F811 - pytest fixtures
    from quala.serve import ServeConfig, create_app

    with _running(create_app(engine, ServeConfig(model="tiny-test-model", **LIMITS))) as url:
        yield url


@contextlib.contextmanager
def _browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser needed)")
    if CHROMIUM is None:
        pytest.skip("no chromium executable (apt-get install chromium, or set QUALA_CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1100, "height": 900})
        finally:
            browser.close()


def _check_three_budgets(page, engine, question, context):  # noqa: F811
    """The side-by-side view: each preset's answer, latency, MACs and tokens, as the engine gives them."""
    page.wait_for_selector("#compare:not([hidden])")
    for preset in ("fast", "balanced", "accurate"):
        expected = engine.answer(question, context, budget=preset)
        cell = f"#cmp-{preset}"
        assert page.text_content(f"{cell} h2") == preset
        assert page.text_content(f"{cell} .answer") == (expected.answer or "(no answer found)")
        assert page.text_content(f"{cell} .latency").endswith(" ms")
        fraction = f"{100 * expected.macs / engine.full_macs:.1f}%"
        assert page.text_content(f"{cell} .MACs") == f"{expected.macs / 1e9:.3f} G ({fraction})"
        tokens = "full length" if expected.length_config is None else ",".join(map(str, expected.length_config))
        assert page.text_content(f"{cell} .tokens") == tokens
        f1 = engine.presets()[preset].f1
        assert page.text_content(f"{cell} .front-F1") == ("–" if f1 is None else f"{f1:.1f}")


def test_demo_page_answers_and_highlights(server_url, engine, tmp_path):  # noqa: F811
    shot = Path(os.environ.get("QUALA_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    question = "Who stayed in orbit?"
    with _browser() as page:
        page.goto(server_url + "/")
        page.wait_for_function("document.getElementById('budget-label').textContent.startsWith('point')")
        assert page.eval_on_selector("#budget", "el => el.max") == "2"  # three front points
        assert page.eval_on_selector("#budget", "el => el.value") == "2"  # starts at the most accurate
        assert page.is_hidden("#compare")

        page.click("#presets button:text('fast')")
        assert page.eval_on_selector("#budget", "el => el.value") == "0"
        assert "160, 120, 90, 60" in page.text_content("#budget-label")
        page.fill("#context", CONTEXT)
        page.fill("#question", question)
        page.click("#ask")
        page.wait_for_selector("#result:not([hidden])")

        expected = engine.answer(question, CONTEXT, budget="fast")
        assert page.text_content("#highlighted mark") == expected.answer
        assert page.text_content("#highlighted") == CONTEXT
        assert page.text_content("#length-config") == "[160, 120, 90, 60]"
        assert page.text_content("#latency").endswith(" ms")
        _check_three_budgets(page, engine, question, CONTEXT)
        assert page.text_content("#cmp-fast .tokens") == "160,120,90,60"
        assert page.text_content("#cmp-balanced .tokens") == "300,260,220,180"
        assert page.text_content("#cmp-accurate .tokens") == "full length"

        page.fill("#question", "   ")  # the server's message is shown, not a crash
        page.click("#ask")
        page.wait_for_selector("#error:not([hidden])")
        assert "question" in page.text_content("#error")
        page.fill("#question", question)
        page.click("#ask")
        page.wait_for_selector("#error", state="hidden")

        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_page_opens_with_the_builtin_model(builtin_model):  # noqa: F811
    """quala serve without --model: the page names the built-in model and compares its three budgets."""
    from quala.engine import QAEngine
    from quala.serve import ServeConfig, create_app

    engine = QAEngine.from_pretrained(threads=1)  # noqa: F811 - the built-in (tiny) model, int8
    with _running(create_app(engine, ServeConfig(**LIMITS))) as url, _browser() as page:
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model-name').textContent.includes('builtin')")
        assert page.text_content("#model-name") == "· model builtin:quala-minilm (onnxruntime)"
        question = page.input_value("#question")  # the page's own example question
        context = page.input_value("#context")
        page.click("#ask")
        _check_three_budgets(page, engine, question, context)
