"""Load-adaptive serving: choose each request's length configuration so that it finishes within a latency target.

A length-adaptive model is one set of weights for every point of its accuracy/efficiency front (LAT §4,
QuaLA-MiniLM §3.3). ``quala serve --target-p95-ms T`` uses that under load: a request that carries no budget of
its own gets the most accurate front configuration whose predicted completion time, the engine time already queued
ahead of it plus the configuration's own time, stays within ``HEADROOM * T``, and that the recent arrivals could
be served at without the engine busy more than ``UTILIZATION`` of the time. With no load that is the ``accurate``
preset; as the arrival rate or the queue grows, requests get cheaper configurations, so the queue drains (or
never builds) instead of growing, and the server keeps answering (docs/serving.md).

The queue rule alone reacts only once a queue exists: under a steady load each request takes the most accurate
point that still fits, the queue settles just below the target, and the next burst of arrivals overshoots it.
The rate rule keeps the engine's load below 1 before the queue builds (the queueing delay of a server grows like
1 / (1 - load)).

Four small pieces, each testable with a fake clock and a fake front:

- :class:`CostModel`: engine seconds of one call at a configuration and batch size. Calibrated when the server
  starts: every front point is timed on the real engine at batch 1 and at ``CALIBRATION_BATCH``. A front
  point's first question costs its own batch-1 timing made monotone in MACs (:func:`isotonic`: a cheaper point
  is never predicted slower than a dearer one, and points whose timings do not differ beyond their noise pool
  to one time, so that the most accurate of them is chosen); further questions, and configurations off the
  front, follow a line in MACs (fixed overhead + time per MAC) fitted through the timings. Rescaled online by
  an EWMA of observed / predicted time, which absorbs inputs longer or shorter than the calibration text and
  other processes on the machine.
- :class:`Backlog`: the predicted engine seconds ahead of a new request (rest of the running call + queued jobs).
- :class:`Arrivals`: the recent arrivals' work, in terms that any configuration's cost line turns into seconds.
- :class:`LatencyTarget`: the choice itself.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from quala.budget import accuracy_ranking
from quala.front import FrontPoint

HEADROOM = 0.75  # plan for 75% of the target; the rest absorbs inputs longer than predicted and HTTP time
CALIBRATION_BATCH = 8  # second batch size timed at start-up; larger batches are extrapolated linearly
CALIBRATION_REPS = 3  # batch-1 timings per configuration (median), interleaved over the front
CALIBRATION_BUDGET_S = 30.0  # start-up time allowed for calibration (an overloaded machine gets fewer timings)
UTILIZATION = 0.7  # default share of the engine's time the recent arrivals may take at the chosen configuration
RATE_WINDOW_S = 2.0  # the arrivals that count as "recent"
EWMA_ALPHA = 0.1  # weight of the newest observed/predicted ratio
MIN_UNITS = 0.25  # a call costs at least this share of one calibration question's time (fixed overheads)
RATIO_CLIP = (0.2, 5.0)  # one stalled call (GC, page faults) must not swing the scale by more than this
CALIBRATION_DATA = "assets/demo/dev.json"  # packaged questions timed at start-up

log = logging.getLogger("quala.serve")

Key = tuple[int, ...] | None  # a length configuration as a dict key (None: full length)


def config_key(length_config: Sequence[int] | None) -> Key:
    return tuple(int(c) for c in length_config) if length_config is not None else None


@dataclass(frozen=True)
class Line:
    """Seconds as an affine function of MACs, ``intercept + slope * macs``, both >= 0."""

    intercept: float
    slope: float

    def __call__(self, macs: float) -> float:
        return self.intercept + self.slope * macs

    @classmethod
    def fit(cls, macs: Sequence[float], seconds: Sequence[float]) -> Line:
        """Least squares; a negative slope (noise) becomes the mean, a negative intercept a line through 0."""
        x, y = np.asarray(macs, dtype=float), np.asarray(seconds, dtype=float)
        if len(set(x)) < 2:  # one point: all of its time is proportional to its MACs
            return cls(0.0, float(y.mean() / x.mean()))
        slope, intercept = np.polyfit(x, y, 1)
        if slope < 0:
            return cls(float(y.mean()), 0.0)
        if intercept < 0:
            return cls(0.0, float(x @ y / (x @ x)))
        return cls(float(intercept), float(slope))


def characters(question: str, context: str) -> int:
    """A request's size without a tokenizer (a fake engine in tests): its characters."""
    return len(question) + len(context)


class CostModel:
    """Predicted engine seconds of one call: ``scale * (first + (n - 1) * extra(macs))`` for n questions.

    ``first`` is a front point's own calibrated time (``points``, set by :func:`calibrate`), and the line
    ``first(macs)`` for any other configuration; ``extra`` is a line in the configuration's MACs (at the reference
    length); ``scale`` is the online correction.
    """

    def __init__(
        self,
        first: Line,
        extra: Line,
        macs_of: Callable[[Key], int],
        alpha: float = EWMA_ALPHA,
        ref_size: float | None = None,
        size_of: Callable[[str, str], float] | None = None,
    ):
        self.first = first
        self.extra = extra
        self.macs_of = macs_of
        self.alpha = alpha
        # a request's size (size_of: the tokens its windows hold, QAEngine.processed_tokens, when calibrated on an
        # engine; else characters) over the calibration questions' mean size: it scales the predicted time, so a
        # long document (several windows) is not predicted like a short one. None: every question is one unit.
        self.ref_size = ref_size
        self.size_of = size_of or characters
        self.scale = 1.0  # EWMA of observed / calibrated time
        self.points: dict[Key, float] = {}  # a front point's own first-question seconds (isotonic in MACs)
        self.measured: list[dict[str, Any]] = []  # the calibration timings behind the lines (GET /v1/model)
        self._macs: dict[Key, int] = {}

    def units(self, items: Sequence[tuple[str, str]]) -> float:
        """Size of a call's questions in calibration-question units (their number without ``ref_size``)."""
        if not self.ref_size:
            return float(len(items))
        return sum(self.size_of(q, c) / self.ref_size for q, c in items)

    def calibrated(self, length_config: Sequence[int] | None, n: float) -> float:
        """Seconds of one call of ``n`` question units at ``length_config`` as calibrated (without the online
        scale): the first unit costs ``first``, each further one ``extra``; less than one unit (a short
        question, dynamic padding) costs that fraction of ``first``, at least a quarter of it."""
        return self._unscaled(length_config, *_first_and_extra(n))

    def _unscaled(self, length_config: Sequence[int] | None, first_units: float, extra_units: float) -> float:
        """``first * first_units + extra * extra_units`` at ``length_config``, as calibrated."""
        m = self._macs_at(length_config)
        return self._first_s(length_config, m) * first_units + self.extra(m) * extra_units

    def _first_s(self, length_config: Sequence[int] | None, macs: int) -> float:
        """Seconds of a call's first question: the front point's own calibrated time, else the line's."""
        own = self.points.get(config_key(length_config))
        return own if own is not None else self.first(macs)

    def _macs_at(self, length_config: Sequence[int] | None) -> int:
        key = config_key(length_config)
        if key not in self._macs:
            self._macs[key] = int(self.macs_of(key))
        return self._macs[key]

    def load(self, length_config: Sequence[int] | None, first_rate: float, extra_rate: float) -> float:
        """The share of the engine's time that arrivals at the given rates (:meth:`Arrivals.rates`) take when all
        are answered at ``length_config``, one call each."""
        return self.scale * self._unscaled(length_config, first_rate, extra_rate)

    def predict(self, length_config: Sequence[int] | None, n: float) -> float:
        """Seconds of one engine call answering ``n`` question units at ``length_config``."""
        return self.scale * self.calibrated(length_config, n)

    def observe(self, length_config: Sequence[int] | None, n: float, seconds: float) -> None:
        """Fold one measured engine call of ``n`` question units into the scale."""
        ratio = float(np.clip(seconds / self.calibrated(length_config, n), *RATIO_CLIP))
        self.scale = (1 - self.alpha) * self.scale + self.alpha * ratio


def isotonic(values: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in least squares (pool adjacent violators): each run of
    values that falls where it should rise is replaced by its mean."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, c2), (m1, c1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return [m for m, c in blocks for _ in range(int(c))]


def calibration_items(n: int = CALIBRATION_BATCH) -> list[tuple[str, str]]:
    """``n`` (question, context) pairs from the packaged demo data (written for QuaLA, CC0).

    Each context is two consecutive demo paragraphs (~800 characters, about the median SQuAD paragraph): the
    configurations' relative costs depend on the input length, and one paragraph (~400) is shorter than most.
    """
    from quala.data import load_squad

    examples = load_squad(str(resources.files("quala") / CALIBRATION_DATA)).examples
    first_question = {ex.context: ex.question for ex in reversed(examples)}
    paragraphs = list(first_question)[::-1]
    pairs = [(first_question[p], p + "\n" + paragraphs[(i + 1) % len(paragraphs)]) for i, p in enumerate(paragraphs)]
    return pairs[:n]


def calibrate(
    engine: Any,
    front: Sequence[FrontPoint],
    items: Sequence[tuple[str, str]],
    batch: int = CALIBRATION_BATCH,
    reps: int = CALIBRATION_REPS,
    clock: Callable[[], float] = time.perf_counter,
    budget_s: float = CALIBRATION_BUDGET_S,
) -> CostModel:
    """Time every front point on ``engine`` (median of ``reps`` single questions, one call of ``batch``), fit
    the two lines in MACs, and keep each point's own single-question time, made isotonic in MACs.

    Rounds go over the whole front (not one point at a time) so that a slow moment of the machine does not
    fall on one configuration only. Past ``budget_s`` no new round starts: one batch-1 round is always taken,
    and without any batch timing a further question is assumed to cost as much as the first (no gain from
    batching, the cautious guess).
    """
    batch = max(2, min(batch, len(items)))
    deadline = clock() + budget_s

    def timed(lc: list[int] | None, chunk: Sequence[tuple[str, str]]) -> float:
        t0 = clock()
        engine.answer_batch(list(chunk), length_config=lc if lc is not None else "full")
        return clock() - t0

    timed(None, items[:1])  # warm-up: first-call allocations and lazy initialisation
    singles: list[list[float]] = [[] for _ in front]
    for r in range(reps):
        if r > 0 and clock() > deadline:
            break
        for i, p in enumerate(front):
            singles[i].append(timed(p.length_config, [items[r % len(items)]]))
    ones = [statistics.median(t) for t in singles]
    many: list[float] = []
    for p in front:
        if clock() > deadline:
            break
        many.append(timed(p.length_config, items[:batch]))
    if len(singles[0]) < reps or len(many) < len(front):
        log.warning(
            "calibration stopped after %.0f s with %d of %d rounds and %d of %d batch timings: the machine "
            "is slower than expected",
            budget_s,
            len(singles[0]),
            reps,
            len(many),
            len(front),
        )
    macs = [p.macs for p in front]
    first = Line.fit(macs, ones)
    if many:
        at_batch = Line.fit(macs[: len(many)], many)
        extra = Line(
            max(0.0, (at_batch.intercept - first.intercept) / (batch - 1)),
            max(0.0, (at_batch.slope - first.slope) / (batch - 1)),
        )
    else:
        extra = first
    size_of = getattr(engine, "processed_tokens", None) or characters
    ref_size = statistics.mean(size_of(q, c) for q, c in items[: max(batch, reps)])
    cost = CostModel(first, extra, lambda key: engine.macs(key), ref_size=ref_size, size_of=size_of)
    order = sorted(range(len(front)), key=lambda i: macs[i])
    own = dict(zip(order, isotonic([ones[i] for i in order]), strict=True))
    cost.points = {config_key(p.length_config): own[i] for i, p in enumerate(front)}
    cost.measured = [
        {
            "length_config": p.length_config,
            "macs": p.macs,
            "batch_1_ms": round(1000 * t1, 3),
            f"batch_{batch}_ms": round(1000 * many[i], 3) if i < len(many) else None,
            "fitted_batch_1_ms": round(1000 * first(p.macs), 3),
            "isotonic_batch_1_ms": round(1000 * own[i], 3),
        }
        for i, (p, t1) in enumerate(zip(front, ones, strict=True))
    ]
    return cost


class Backlog:
    """Predicted engine seconds ahead of a new request: the rest of the running call plus every queued job."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.queued_s = 0.0
        self.questions = 0  # queued questions
        self._busy_until: float | None = None

    def add(self, seconds: float, questions: int) -> None:
        self.queued_s += seconds
        self.questions += questions

    def remove(self, seconds: float, questions: int) -> None:
        self.questions -= questions
        self.queued_s = max(0.0, self.queued_s - seconds) if self.questions > 0 else 0.0

    def start(self, seconds: float) -> None:
        """The worker took jobs off the queue that it predicts will take ``seconds``."""
        self._busy_until = self.clock() + seconds

    def finish(self) -> None:
        self._busy_until = None

    def wait_s(self) -> float:
        running = max(0.0, self._busy_until - self.clock()) if self._busy_until is not None else 0.0
        return running + self.queued_s


def _first_and_extra(units: float) -> tuple[float, float]:
    """A call of ``units`` as (share of the first unit it pays, at least ``MIN_UNITS``; further units), so that it
    costs ``first * a + extra * b`` at any configuration (:meth:`CostModel.calibrated` and the arrival rates)."""
    return (max(units, MIN_UNITS), 0.0) if units <= 1 else (1.0, units - 1.0)


class Arrivals:
    """The work that arrived in the last ``window_s`` seconds, as rates of first and further question units per
    second (:func:`_first_and_extra`): a configuration's cost lines turn them into its load
    (:meth:`CostModel.load`) without keeping one sum per configuration. Thread-safe: requests add on the event
    loop while ``GET /metrics`` reads from a worker thread."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter, window_s: float = RATE_WINDOW_S):
        self.clock = clock
        self.window_s = window_s
        self._events: deque[tuple[float, float, float]] = deque()  # (time, first units, further units)
        self._first = 0.0
        self._extra = 0.0
        self._lock = threading.Lock()

    def add(self, units: float) -> None:
        """A request of ``units`` arrived now."""
        a, b = _first_and_extra(units)
        with self._lock:
            self._events.append((self.clock(), a, b))
            self._first += a
            self._extra += b

    def rates(self) -> tuple[float, float]:
        """(first units, further units) per second over the window."""
        with self._lock:
            horizon = self.clock() - self.window_s
            while self._events and self._events[0][0] <= horizon:
                _, a, b = self._events.popleft()
                self._first -= a
                self._extra -= b
            if not self._events:  # no drift from the running sums
                self._first = self._extra = 0.0
            return self._first / self.window_s, self._extra / self.window_s


@dataclass
class LatencyTarget:
    """Pick, per request, the most accurate front point predicted to finish within ``HEADROOM * target_s`` that
    the recent arrival rate can be served at within ``UTILIZATION`` of the engine's time."""

    target_s: float
    front: list[FrontPoint]
    cost: CostModel
    backlog: Backlog
    utilization: float = UTILIZATION
    arrivals: Arrivals = field(init=False)  # on the backlog's clock

    def __post_init__(self) -> None:
        self.ranked = accuracy_ranking(self.front)  # the `accurate` preset first
        self.arrivals = Arrivals(self.backlog.clock)

    @classmethod
    def calibrated(
        cls,
        engine: Any,
        target_s: float,
        clock: Callable[[], float] = time.perf_counter,
        utilization: float = UTILIZATION,
    ) -> LatencyTarget:
        """Time ``engine``'s front (:func:`calibrate`) and log what it found."""
        cost = calibrate(engine, engine.front, calibration_items())
        target = cls(target_s, list(engine.front), cost, Backlog(clock), utilization=utilization)
        log.info(
            "latency target %.1f ms; engine time per call = %.2f ms + %.3g ms per GMAC, + (%.2f ms + %.3g ms "
            "per GMAC) per further question",
            1000 * target_s,
            1000 * cost.first.intercept,
            1e12 * cost.first.slope,
            1000 * cost.extra.intercept,
            1e12 * cost.extra.slope,
        )
        best = target.ranked[0]
        if cost.predict(best.length_config, 1) > HEADROOM * target_s:
            log.warning(
                "the most accurate configuration takes %.1f ms, more than %.0f%% of the %.1f ms target: even an "
                "idle server will answer with a cheaper one",
                1000 * cost.predict(best.length_config, 1),
                100 * HEADROOM,
                1000 * target_s,
            )
        return target

    def table(self) -> dict[str, Any]:
        """The cost model as GET /v1/model shows it."""
        c = self.cost
        return {
            "first_ms": round(1000 * c.first.intercept, 3),
            "first_ms_per_gmac": round(1e12 * c.first.slope, 4),
            "extra_ms": round(1000 * c.extra.intercept, 3),
            "extra_ms_per_gmac": round(1e12 * c.extra.slope, 4),
            "scale": round(c.scale, 4),
            "utilization_cap": self.utilization,
            "rate_window_s": self.arrivals.window_s,
            "measured": c.measured,
        }

    def demand(self) -> float:
        """The share of the engine's time the recent arrivals would take at the most accurate point: above the
        ``utilization`` cap, requests get cheaper configurations."""
        return self.cost.load(self.ranked[0].length_config, *self.arrivals.rates())

    def choose(self, batch: float = 1) -> FrontPoint:
        """The configuration for a request that will run in a call of ``batch`` question units (it arrived: call
        ``arrivals.add`` first).

        When nothing fits (the queue alone is longer than the target, or the arrivals outrun every point), the
        fastest configuration: the request is still answered, as early as possible, and the next ones see a
        shorter queue.
        """
        budget = HEADROOM * self.target_s - self.backlog.wait_s()
        first_rate, extra_rate = self.arrivals.rates()
        for p in self.ranked:
            if (
                self.cost.predict(p.length_config, batch) <= budget
                and self.cost.load(p.length_config, first_rate, extra_rate) <= self.utilization
            ):
                return p
        return min(self.ranked, key=lambda p: self.cost.predict(p.length_config, batch))  # ties: most accurate
