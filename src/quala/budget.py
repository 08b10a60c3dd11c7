"""Per-request compute budgets, resolved against the search front stored with a model.

A model directory may hold ``search.json`` (written by ``quala search --attach``) whose ``front`` lists
Pareto-optimal length configurations with their F1, MACs and measured latency. A budget picks the most
accurate configuration on that front that fits it (this goes beyond the reference implementations, which
fix one configuration per exported graph):

- ``macs_fraction``: MACs at most this fraction of the full-length model's.
- ``max_latency_ms``: latency measured by the search at most this many milliseconds.
- ``preset``: ``accurate`` (full length), ``balanced`` (cheapest within 1 F1 point of full length) or ``fast``
  (cheapest within 5 F1 points of it); on a front without its full-length point, of the most accurate point. Full
  length is the reference even when a token-dropping point scored above it: that point was picked for its score
  among the search's many candidates on the same validation questions (the winner's curse), where full length is
  the one no selection touched.

Without a front only the full-length model exists: every preset resolves to it, and a budget it cannot meet
is an error that says to run ``quala search``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from quala.errors import QualaError
from quala.front import FrontPoint

PRESETS = {"accurate": None, "balanced": 1.0, "fast": 5.0}  # allowed F1 drop from the best point


PRESET_RULES = {  # what each preset picks, in words (CLI/HTTP help, the model card)
    name: "full length (else best F1)" if drop is None else f"cheapest within {drop:g} F1 of full length"
    for name, drop in PRESETS.items()
}
PRESET_HELP = "; ".join(f"{name}: {rule}" for name, rule in PRESET_RULES.items())


@dataclass(frozen=True)
class Budget:
    """At most one of the three ways to express a budget. Each field's metadata states its bounds (``gt``,
    ``le``) or ``choices`` and its help text, which the HTTP schema (:mod:`quala.serve`) is built from."""

    macs_fraction: float | None = field(
        default=None,
        metadata={"gt": 0, "le": 1, "help": "At most this fraction of the full-length model's MACs, in (0, 1]."},
    )
    max_latency_ms: float | None = field(
        default=None,
        metadata={"gt": 0, "help": "At most this latency per question, as measured by `quala search` (ms)."},
    )
    preset: str | None = field(default=None, metadata={"choices": tuple(PRESETS), "help": PRESET_HELP})

    def __post_init__(self) -> None:
        given = [f.name for f in fields(self) if getattr(self, f.name) is not None]
        if len(given) > 1:
            raise QualaError(f"give one budget, not several: {given}")
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None:
                continue
            if "choices" in meta and value not in meta["choices"]:
                raise QualaError(f"unknown {f.name} {value!r}; choose one of {sorted(meta['choices'])}")
            low, high = meta.get("gt"), meta.get("le")
            if low is not None and not (math.isfinite(value) and value > low and (high is None or value <= high)):
                bounds = f"in ({low}, {high}]" if high is not None else f"> {low}"
                raise QualaError(f"{f.name} must be {bounds}, got {value}")

    @classmethod
    def parse(cls, value: Budget | dict[str, Any] | str | None) -> Budget | None:
        """Accept a Budget, a dict, a preset name, or CLI text such as ``macs=0.5`` / ``latency=40``."""
        if value is None or isinstance(value, Budget):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in fields(cls)}
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


def accuracy_key(p: FrontPoint) -> tuple[float, int]:
    """Sort key, larger is better: F1 (unknown F1 counts as best: a model without a front), then fewer MACs."""
    return (p.f1 if p.f1 is not None else float("inf"), -p.macs)


def reference_point(front: list[FrontPoint], full_macs: int | None = None) -> FrontPoint:
    """What ``accurate`` picks: the full-length point (MACs ``full_macs``, default the front's largest) when the
    front has one, else the most accurate point (module docstring)."""
    full_macs = max(p.macs for p in front) if full_macs is None else full_macs
    full = [p for p in front if p.length_config is None or p.macs >= full_macs]
    return max(full or front, key=accuracy_key)


def accuracy_ranking(front: list[FrontPoint], full_macs: int | None = None) -> list[FrontPoint]:
    """The front from most to least accurate, :func:`reference_point` first."""
    top = reference_point(front, full_macs)
    return [top, *sorted((p for p in front if p is not top), key=accuracy_key, reverse=True)]


def resolve_budget(front: list[FrontPoint], budget: Budget | None, full_macs: int) -> FrontPoint:
    """The most accurate front point that fits ``budget``; no budget or a preset: counted from full length (module
    docstring)."""

    def best(points: list[FrontPoint]) -> FrontPoint:
        return max(points, key=accuracy_key)

    if budget is None or budget.preset is not None:
        top = reference_point(front, full_macs)
        if budget is None or budget.preset == "accurate" or top.f1 is None:
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
