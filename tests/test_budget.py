"""Budget resolution against a stored search front."""

from __future__ import annotations

import dataclasses
import json

import pytest

from quala.budget import Budget, resolve_budget
from quala.errors import QualaError
from quala.front import FrontPoint, read_front

FULL = 1000
FRONT = [
    FrontPoint([10, 8, 6], 70.0, 400, 10.0),
    FrontPoint([20, 18, 15], 78.0, 600, 15.0),
    FrontPoint([30, 28, 25], 80.5, 800, 20.0),
    FrontPoint(None, 81.0, 1000, 25.0),
]


def test_presets():
    assert resolve_budget(FRONT, None, FULL).length_config is None
    assert resolve_budget(FRONT, Budget(preset="accurate"), FULL).length_config is None
    assert resolve_budget(FRONT, Budget(preset="balanced"), FULL).length_config == [30, 28, 25]  # within 1 F1
    assert resolve_budget(FRONT, Budget(preset="fast"), FULL).length_config == [20, 18, 15]  # within 5 F1


def test_presets_count_from_full_length_when_a_dropped_point_scored_above_it():
    """A search front from a small validation subset: a token-dropping point measured 2 F1 above full length (the
    winner's curse of many candidates). No budget and `accurate` stay at full length; `balanced` and `fast` allow
    1 and 5 F1 below full length's 81.0, not below the 83.0 point."""
    front = [
        FrontPoint([10, 8, 6], 76.5, 400, 10.0),
        FrontPoint([20, 18, 15], 80.2, 500, 12.0),
        FrontPoint([25, 20, 18], 83.0, 550, 13.0),
        FrontPoint(None, 81.0, 1000, 25.0),
    ]
    assert resolve_budget(front, None, FULL).length_config is None
    assert resolve_budget(front, Budget(preset="accurate"), FULL).length_config is None
    assert resolve_budget(front, Budget(preset="balanced"), FULL).length_config == [20, 18, 15]  # 80.2 >= 80.0
    assert resolve_budget(front, Budget(preset="fast"), FULL).length_config == [10, 8, 6]  # 76.5 >= 76.0
    # a MACs budget still takes the most accurate point that fits
    assert resolve_budget(front, Budget(macs_fraction=0.6), FULL).length_config == [25, 20, 18]
    # a front without its full-length point: the best point is the reference, as before
    assert resolve_budget(front[:3], None, FULL).length_config == [25, 20, 18]


def test_macs_and_latency_budgets_pick_the_most_accurate_fitting_point():
    assert resolve_budget(FRONT, Budget(macs_fraction=0.7), FULL).length_config == [20, 18, 15]
    assert resolve_budget(FRONT, Budget(macs_fraction=1.0), FULL).length_config is None
    assert resolve_budget(FRONT, Budget(max_latency_ms=19.9), FULL).length_config == [20, 18, 15]
    with pytest.raises(QualaError, match="impossible budget"):
        resolve_budget(FRONT, Budget(macs_fraction=0.3), FULL)
    with pytest.raises(QualaError, match="impossible budget"):
        resolve_budget(FRONT, Budget(max_latency_ms=5), FULL)


@pytest.mark.parametrize(
    "value, message",
    [
        ({"macs_fraction": 0}, "in \\(0, 1\\]"),
        ({"macs_fraction": 1.5}, "in \\(0, 1\\]"),
        ({"max_latency_ms": -1}, "> 0"),
        ({"preset": "turbo"}, "unknown preset"),
        ({"macs_fraction": 0.5, "preset": "fast"}, "one budget"),
        ({"speed": 3}, "unknown budget field"),
        ("macs=abc", "not understood"),
        ("warp", "not understood"),
    ],
)
def test_bad_budgets(value, message):
    with pytest.raises(QualaError, match=message):
        Budget.parse(value)


def test_parse_forms():
    assert Budget.parse("fast") == Budget(preset="fast")
    assert Budget.parse("macs=0.5") == Budget(macs_fraction=0.5)
    assert Budget.parse("latency=40") == Budget(max_latency_ms=40.0)
    assert Budget.parse(None) is None


def test_load_front(tmp_path):
    assert read_front(tmp_path, FULL) == [FrontPoint(None, None, FULL, None)]
    entries = [
        {"length_config": p.length_config, "f1": p.f1, "exact_match": 0.0, "macs": p.macs, "latency_ms": p.latency_ms}
        for p in reversed(FRONT)
    ]
    (tmp_path / "search.json").write_text(json.dumps({"front": entries}))
    assert read_front(tmp_path, FULL) == [dataclasses.replace(p, exact_match=0.0) for p in FRONT]  # cheapest first
    (tmp_path / "search.json").write_text("{}")
    with pytest.raises(QualaError, match="not a valid search result"):
        read_front(tmp_path, FULL)
