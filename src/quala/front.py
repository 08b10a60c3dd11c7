"""The accuracy/cost front: its record, the Pareto and area helpers, and ``search.json``.

A search (:mod:`quala.search`) scores length configurations; each becomes a :class:`FrontPoint` (F1, EM, MACs,
measured latency). The non-dominated ones form the front (LAT §4.2), which ``quala search --attach`` stores in
the model directory as ``search.json`` and which budgets (:mod:`quala.budget`) and the latency target
(:mod:`quala.adaptive`) resolve against. A model without a search has a front of one point: full length.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quala.errors import QualaError
from quala.lengths import Gene
from quala.model_dir import SEARCH_FILE


@dataclass(frozen=True)
class FrontPoint:
    """One scored length configuration: a search candidate, and the record a budget resolves to.

    ``length_config`` None is full length; ``f1`` None means unknown (a model without a search front).
    """

    length_config: list[int] | None
    f1: float | None
    macs: int  # per sequence at the reference length
    latency_ms: float | None
    exact_match: float | None = None

    @property
    def gene(self) -> Gene:
        return tuple(self.length_config or ())

    def cost(self, objective: str) -> float:
        if objective == "latency":
            if self.latency_ms is None:
                raise QualaError("objective latency needs measured latencies, but a candidate has none")
            return float(self.latency_ms)
        return float(self.macs)

    def to_dict(self) -> dict[str, Any]:
        """The ``search.json`` record."""
        return {
            "length_config": self.length_config,
            "f1": self.f1,
            "exact_match": self.exact_match,
            "macs": self.macs,
            "latency_ms": self.latency_ms,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrontPoint:
        try:
            lengths = d["length_config"]
            return cls(
                length_config=None if lengths is None else [int(v) for v in lengths],
                f1=None if d.get("f1") is None else float(d["f1"]),
                macs=int(d["macs"]),
                latency_ms=None if d.get("latency_ms") is None else float(d["latency_ms"]),
                exact_match=None if d.get("exact_match") is None else float(d["exact_match"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise QualaError(f"malformed front record {d!r}: {exc}") from None


def full_length_front(full_macs: int) -> list[FrontPoint]:
    """The front of a model without a search: the full-length model, F1 unknown."""
    return [FrontPoint(None, None, full_macs, None)]


# ----------------------------------------------------------------------------------------------- Pareto
def pareto_front(
    candidates: Iterable[FrontPoint], objective: str = "macs", anchor: Gene | None = None
) -> list[FrontPoint]:
    """Candidates no other candidate dominates (lower-or-equal cost and higher-or-equal F1, one strictly).

    Sorted by cost. ``anchor`` (the full-length gene) is kept even when dominated, as the reference point an
    unconstrained request falls back to; LAT's reference front likewise always keeps the most expensive gene.
    Of candidates with equal cost and F1, the one with the longest lengths (first in sort order) is kept.
    """
    cands = list(candidates)
    order = sorted(cands, key=lambda c: (c.cost(objective), -c.f1, [-n for n in c.length_config]))
    front: list[FrontPoint] = []
    best = -math.inf
    for c in order:
        if c.f1 > best:
            front.append(c)
            best = c.f1
    if anchor is not None and all(c.gene != anchor for c in front):
        front.extend(c for c in cands if c.gene == anchor)
        front.sort(key=lambda c: (c.cost(objective), -c.f1))
    return front


def dominates(a: FrontPoint, b: FrontPoint, objective: str = "macs") -> bool:
    ca, cb = a.cost(objective), b.cost(objective)
    return ca <= cb and a.f1 >= b.f1 and (ca < cb or a.f1 > b.f1)


def front_area(points: Iterable[tuple[float, float]], low: float, high: float) -> float:
    """Normalised area under the attainment staircase of ``(cost, f1)`` points.

    It is the mean, over budgets ``b`` uniform in ``[low, high]``, of the best F1 among points costing at most
    ``b`` (0 where none fits); for LAT's front it equals the reference's ``area``. Pass costs as fractions of
    the full model's cost, with ``low`` the smallest sub-model's fraction and ``high`` 1, so that two searches
    of the same model are comparable. Higher is better.
    """
    if not high > low:
        raise ValueError(f"empty budget range [{low}, {high}]")
    points = sorted(points)
    area, best = 0.0, -math.inf
    for k, (cost, f1) in enumerate(points):
        best = max(best, f1)
        start = max(cost, low)
        end = high if k + 1 == len(points) else min(points[k + 1][0], high)
        if end > start:
            area += (end - start) * best
    return area / (high - low)


def cost_fractions(candidates: Iterable[FrontPoint], objective: str, full: FrontPoint) -> list[tuple[float, float]]:
    """``(cost / full cost, f1)`` of each candidate."""
    ref = full.cost(objective)
    return [(c.cost(objective) / ref, c.f1) for c in candidates]


def best_per_budget(candidates: list[FrontPoint], objective: str, full: FrontPoint, budgets: Sequence[float]) -> dict:
    """``{"0.5": best F1 within half the full model's cost, ...}`` (None where nothing fits)."""
    points = cost_fractions(candidates, objective, full)
    out: dict[str, float | None] = {}
    for b in budgets:
        fits = [f1 for frac, f1 in points if frac <= b + 1e-12]
        out[f"{b:g}"] = round(max(fits), 4) if fits else None
    return out


# ----------------------------------------------------------------------------------------------- search.json
def read_search(directory: str | Path | None) -> dict[str, Any] | None:
    """The ``search.json`` document in ``directory`` (None when there is none)."""
    path = Path(directory) / SEARCH_FILE if directory is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise QualaError(f"{path} is not a valid search result ({exc}); re-run quala search --attach") from None


def front_points(document: dict[str, Any], where: str = SEARCH_FILE) -> list[FrontPoint]:
    """The front of a ``search.json`` document, cheapest first."""
    try:
        points = [FrontPoint.from_dict(p) for p in document["front"]]
    except (KeyError, TypeError, QualaError) as exc:
        raise QualaError(f"{where} is not a valid search result ({exc}); re-run quala search --attach") from None
    if not points:
        raise QualaError(f"{where} has an empty front; re-run quala search --attach")
    return sorted(points, key=lambda p: p.macs)


def read_front(directory: str | Path | None, full_macs: int) -> list[FrontPoint]:
    """The front stored with a model, cheapest first; the full-length model alone when there is none."""
    document = read_search(directory)
    if document is None:
        return full_length_front(full_macs)
    return front_points(document, str(Path(directory) / SEARCH_FILE))


def write_search(directory: str | Path, document: dict[str, Any]) -> Path:
    """Write a ``search.json`` document atomically into ``directory``."""
    from quala.io import write_json_atomic

    path = Path(directory) / SEARCH_FILE
    write_json_atomic(path, document)
    return path
