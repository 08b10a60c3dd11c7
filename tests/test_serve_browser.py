"""The demo page in a real headless browser: load it, pick a budget, ask, see the answer highlighted.

Needs Debian's ``chromium`` and the ``playwright`` Python package (no browser download: it drives
/usr/bin/chromium); skipped when either is missing. Set QUALA_DEMO_SCREENSHOT=docs/img/demo.png to refresh the
screenshot in the docs.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from test_serve import CONTEXT, LIMITS, engine, front_model_dir  # noqa: F401 - fixtures

CHROMIUM = os.environ.get("QUALA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server_url(engine, front_model_dir):  # noqa: F811 - pytest fixtures
    """A real uvicorn server on 127.0.0.1 (a free port) in a background thread."""
    import uvicorn

    from quala.serve import ServeConfig, create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(engine, ServeConfig(model="tiny-test-model", port=port, **LIMITS))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the test server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_demo_page_answers_and_highlights(server_url, engine, tmp_path):  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser needed)")
    if CHROMIUM is None:
        pytest.skip("no chromium executable (apt-get install chromium, or set QUALA_CHROMIUM)")
    shot = Path(os.environ.get("QUALA_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    question = "Who stayed in orbit?"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(server_url + "/")
            page.wait_for_function("document.getElementById('budget-label').textContent.startsWith('point')")
            assert page.eval_on_selector("#budget", "el => el.max") == "2"  # three front points
            assert page.eval_on_selector("#budget", "el => el.value") == "2"  # starts at the most accurate

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

            page.fill("#question", "   ")  # the server's message is shown, not a crash
            page.click("#ask")
            page.wait_for_selector("#error:not([hidden])")
            assert "question" in page.text_content("#error")
            page.fill("#question", question)
            page.click("#ask")
            page.wait_for_selector("#error", state="hidden")

            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
