"""Per-request compute budgets, resolved against the search front stored with a model.

A model directory may hold ``search.json`` (written by ``quala search --attach``) whose ``front`` lists
Pareto-optimal length configurations with their F1, MACs and measured latency. A budget picks the most
accurate configuration on that front that fits it (this goes beyond the reference implementations, which
fix one configuration per exported graph):

- ``macs_fraction``: MACs at most this fraction of the full-length model's.
- ``max_latency_ms``: latency measured by the search at most this many milliseconds.
- ``preset``: ``accurate`` (best F1), ``balanced`` (cheapest within 1 F1 point of the best) or ``fast``
  (cheapest within 5 F1 points of the best).

Without a front only the full-length model exists: every preset resolves to it, and a budget it cannot meet
is an error that says to run ``quala search``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quala.errors import QualaError

SEARCH_FILE = "search.json"
PRESETS = {"accurate": None, "balanced": 1.0, "fast": 5.0}  # allowed F1 drop from the best point


@dataclass(frozen=True)
class Budget:
    """At most one of the three ways to express a budget."""

    macs_fraction: float | None = None
    max_latency_ms: float | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("macs_fraction", "max_latency_ms", "preset") if getattr(self, k) is not None]
        if len(given) > 1:
            raise QualaError(f"give one budget, not several: {given}")
        if self.macs_fraction is not None and not 0 < self.macs_fraction <= 1:
            raise QualaError(f"macs_fraction must be in (0, 1], got {self.macs_fraction}")
        if self.max_latency_ms is not None and not self.max_latency_ms > 0:
            raise QualaError(f"max_latency_ms must be > 0, got {self.max_latency_ms}")
        if self.preset is not None and self.preset not in PRESETS:
            raise QualaError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")

    @classmethod
    def parse(cls, value: Budget | dict[str, Any] | str | None) -> Budget | None:
        """Accept a Budget, a dict, a preset name, or CLI text such as ``macs=0.5`` / ``latency=40``."""
        if value is None or isinstance(value, Budget):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"macs_fraction", "max_latency_ms", "preset"}
            if unknown:
                raise QualaError(
                    f"unknown budget field(s) {sorted(unknown)}; use macs_fraction, max_latency_ms or preset"
                )
            return cls(**{k: v for k, v in value.items() if v is not None})
        text = str(value).strip()
        if text in PRESETS:
            return cls(preset=text)
        key, _, number = text.partition("=")
        try:
            if key in ("macs", "macs_fraction"):
                return cls(macs_fraction=float(number))
            if key in ("latency", "latency_ms", "max_latency_ms"):
                return cls(max_latency_ms=float(number))
        except ValueError:
            pass
        raise QualaError(
            f"budget {text!r} not understood; use a preset ({', '.join(PRESETS)}), macs=FRACTION or latency=MS"
        )


@dataclass(frozen=True)
class FrontPoint:
    """One configuration on the accuracy/cost front."""

    length_config: list[int] | None
    f1: float | None
    macs: int
    latency_ms: float | None


def load_front(model_dir: str | Path, full_macs: int) -> list[FrontPoint]:
    """The front stored with a model, cheapest first; the full-length model when there is none."""
    path = Path(model_dir) / SEARCH_FILE
    if not path.is_file():
        return [FrontPoint(None, None, full_macs, None)]
    try:
        front = json.loads(path.read_text(encoding="utf-8"))["front"]
        points = [
            FrontPoint(
                list(p["length_config"]) if p["length_config"] is not None else None,
                p.get("f1"),
                int(p["macs"]),
                p.get("latency_ms"),
            )
            for p in front
        ]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise QualaError(f"{path} is not a valid search result ({exc}); re-run quala search --attach") from None
    if not points:
        raise QualaError(f"{path} has an empty front; re-run quala search --attach")
    return sorted(points, key=lambda p: p.macs)


def accuracy_key(p: FrontPoint) -> tuple[float, int]:
    """Sort key, larger is better: F1 (unknown F1 counts as best: a model without a front), then fewer MACs."""
    return (p.f1 if p.f1 is not None else float("inf"), -p.macs)


def resolve_budget(front: list[FrontPoint], budget: Budget | None, full_macs: int) -> FrontPoint:
    """The most accurate front point that fits ``budget`` (no budget: the most accurate point)."""

    def best(points: list[FrontPoint]) -> FrontPoint:
        return max(points, key=accuracy_key)

    if budget is None or budget.preset == "accurate":
        return best(front)
    if budget.preset is not None:
        top = best(front)
        if top.f1 is None:
            return top
        allowed = top.f1 - PRESETS[budget.preset]
        return min((p for p in front if p.f1 is not None and p.f1 >= allowed), key=lambda p: p.macs)
    if budget.macs_fraction is not None:
        fits = [p for p in front if p.macs <= budget.macs_fraction * full_macs + 0.5]
        if not fits:
            cheapest = front[0].macs / full_macs
            raise QualaError(
                f"impossible budget: macs_fraction {budget.macs_fraction} is below the cheapest configuration "
                f"available ({cheapest:.3f}); raise it, or run quala search to find cheaper configurations"
            )
        return best(fits)
    timed = [p for p in front if p.latency_ms is not None]
    if not timed:
        raise QualaError("this model's front has no measured latencies; use macs_fraction or a preset")
    fits = [p for p in timed if p.latency_ms <= budget.max_latency_ms]
    if not fits:
        fastest = min(p.latency_ms for p in timed)
        raise QualaError(
            f"impossible budget: max_latency_ms {budget.max_latency_ms} is below the fastest configuration "
            f"measured ({fastest:.1f} ms); raise it"
        )
    return best(fits)
