"""CI must not go green without opening the demo page: with QUALA_REQUIRE_BROWSER=1 a skipped browser test fails."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]


def test_required_browser_test_fails_instead_of_skipping(pytester, monkeypatch):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(
        test_serve_browser="import pytest\n\ndef test_page():\n    pytest.skip('no chromium')\n",
        test_other="import pytest\n\ndef test_x():\n    pytest.skip('unrelated')\n",
    )
    monkeypatch.delenv("QUALA_REQUIRE_BROWSER", raising=False)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(skipped=2)
    monkeypatch.setenv("QUALA_REQUIRE_BROWSER", "1")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, skipped=1)  # only the browser test is required
    result.stdout.fnmatch_lines(["*QUALA_REQUIRE_BROWSER=1 but the browser test skipped*no chromium*"])
