"""Latency-target mode and /metrics: the configuration follows the queue, explicit budgets win, metrics move.

The choice is checked with a fake clock and a fake front against hand-computed values; the HTTP tests use the
tiny random model with the hand-written three-point front of test_serve.py.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import astuple

import pytest
from conftest import run_cli
from fastapi.testclient import TestClient
from test_serve import CONTEXT, LIMITS, QUESTION, front_model_dir  # noqa: F401 - the fixture is used by name

from quala.adaptive import (
    HEADROOM,
    RATE_WINDOW_S,
    UTILIZATION,
    Arrivals,
    Backlog,
    CostModel,
    LatencyTarget,
    Line,
    calibrate,
    config_key,
)
from quala.budget import Budget, resolve_budget
from quala.engine import Answer
from quala.front import FrontPoint

# A fake front whose MACs are half the sum of the token counts (full length: 400). FRONT lacks its full-length
# point, so its most accurate point, BEST, is what `accurate` picks; FULL, measured below BEST as a search on a few
# questions can measure it, joins where a test needs it (then `accurate` is FULL: quala.budget).
CHEAP = FrontPoint([120, 80], 70.0, 100, 5.0)
MID = FrontPoint([220, 180], 74.0, 200, 20.0)
BEST = FrontPoint([320, 280], 76.0, 300, 35.0)
FULL = FrontPoint(None, 75.5, 400, 50.0)
FRONT = [CHEAP, MID, BEST]
FIRST = Line(0.004, 0.0002)  # one question: CHEAP 24 ms, MID 44, BEST 64, FULL 84
EXTRA = Line(0.0, 0.0001)  # each further question in the call: CHEAP 10 ms, MID 20, BEST 30, FULL 40
TARGET_S = 0.160  # plans for HEADROOM * 160 ms = 120 ms


def fake_macs(key) -> int:
    return 400 if key is None else sum(key) // 2


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def target(clock: FakeClock) -> LatencyTarget:
    return LatencyTarget(TARGET_S, FRONT, CostModel(FIRST, EXTRA, fake_macs), Backlog(clock))


# ------------------------------------------------------------------------------------------ unit
def test_line_fit():
    assert astuple(Line.fit([100, 200, 300], [0.024, 0.044, 0.064])) == pytest.approx((0.004, 0.0002))
    assert Line.fit([100, 200], [0.05, 0.03]) == Line(0.04, 0.0)  # falling with MACs: noise, the mean
    fitted = Line.fit([100, 200], [0.01, 0.03])  # the line would cross 0 at 150 MACs: through 0 instead
    assert fitted.intercept == 0.0 and fitted.slope == pytest.approx((100 * 0.01 + 200 * 0.03) / (100**2 + 200**2))
    assert astuple(Line.fit([400], [0.08])) == pytest.approx((0.0, 0.0002))  # one point


def test_cost_model_predicts_and_rescales():
    cost = CostModel(FIRST, EXTRA, fake_macs)
    assert cost.predict(MID.length_config, 1) == pytest.approx(0.044)
    assert cost.predict(MID.length_config, 4) == pytest.approx(0.044 + 3 * 0.020)
    assert cost.predict([260, 240], 1) == pytest.approx(0.054)  # off the front: 250 MACs, on the same line
    cost.observe(MID.length_config, 1, 0.088)  # twice the calibrated time
    assert cost.scale == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)
    assert cost.predict(CHEAP.length_config, 1) == pytest.approx(1.1 * 0.024)  # one scale for every point
    cost.observe(MID.length_config, 1, 4.4)  # a 100x stall counts as 5x (RATIO_CLIP)
    assert cost.scale == pytest.approx(0.9 * 1.1 + 0.1 * 5.0)


def test_choice_follows_the_queue_state():
    """Hand-computed: plan = 120 ms; a point fits when wait + its own time <= plan."""
    assert HEADROOM * TARGET_S == pytest.approx(0.120)
    clock = FakeClock()
    t = target(clock)
    assert t.choose() == BEST  # idle: 64 ms fits
    t.backlog.start(0.100)  # a 100 ms call starts at t=0
    clock.t = 0.020  # 80 ms of it left
    t.backlog.add(0.010, 1)  # and one queued 10 ms job: wait 90 ms, 30 ms left
    assert t.backlog.wait_s() == pytest.approx(0.090)
    assert t.choose() == CHEAP  # MID (44 ms) no longer fits
    clock.t = 0.070  # 30 ms of the call left: wait 40 ms, 80 ms left
    assert t.choose() == BEST
    t.backlog.add(0.045, 1)  # wait 85 ms, 35 ms left
    assert t.choose() == CHEAP
    t.backlog.remove(0.010, 1)  # the worker took the 10 ms job: wait 75 ms, 45 ms left
    assert t.choose() == MID
    clock.t = 0.500  # the call overran its prediction: it counts as ending now; wait 45 ms, 75 ms left
    assert t.choose() == BEST
    t.backlog.add(1.0, 1)  # nothing fits: the fastest point
    assert t.choose() == CHEAP
    t.backlog.finish()
    t.backlog.remove(1.045, 2)  # queue empty: back to idle
    assert t.backlog.wait_s() == 0.0 and t.choose() == BEST


def test_choice_accounts_for_the_batch_size():
    t = target(FakeClock())
    # 4 questions in one call: BEST 64 + 3 * 30 = 154 ms, FULL 204 ms, MID 44 + 3 * 20 = 104 ms
    assert t.choose(batch=4) == MID
    assert t.choose(batch=1) == BEST


def test_choice_follows_the_arrival_rate():
    """Hand-computed: with an empty queue, a point is chosen only if the last 2 s of arrivals, all answered at it,
    keep the engine busy at most 70 % of the time (one-question calls: BEST 64 ms, MID 44, CHEAP 24)."""
    assert (RATE_WINDOW_S, UTILIZATION) == (2.0, 0.7)
    clock = FakeClock()
    t = target(clock)
    for _ in range(20):  # 10 questions/s: BEST takes 0.64 of the engine's time
        clock.t += 0.1
        t.arrivals.add(1.0)
    assert t.arrivals.rates() == pytest.approx((10.0, 0.0))
    assert t.demand() == pytest.approx(0.64)  # at BEST, the most accurate point
    assert t.choose() == BEST
    t.arrivals.add(1.0)  # two more at once: 22 in 2 s, 11/s: BEST 0.704, MID 0.484
    t.arrivals.add(1.0)
    assert t.arrivals.rates() == pytest.approx((11.0, 0.0))
    assert t.choose() == MID
    for _ in range(20):  # 20 in the next 2/3 s: 36 in the window, 18/s: MID 0.792, CHEAP 0.432
        clock.t += 1 / 30
        t.arrivals.add(1.0)
    assert t.arrivals.rates() == pytest.approx((18.0, 0.0))
    assert t.choose() == CHEAP
    for _ in range(30):  # 66 in the window, 33/s: even CHEAP takes 0.792: nothing keeps up, the fastest
        t.arrivals.add(1.0)
    assert t.choose() == CHEAP
    clock.t += RATE_WINDOW_S + 1e-6  # the arrivals age out of the window: idle again
    assert t.arrivals.rates() == (0.0, 0.0) and t.choose() == BEST


def test_arrivals_count_long_and_short_requests_in_cost_units():
    """A long document (3 units) is one first unit and two further ones; a short one a quarter of a first."""
    clock = FakeClock()
    arrivals = Arrivals(clock, window_s=1.0)
    arrivals.add(3.0)
    arrivals.add(0.1)
    assert arrivals.rates() == pytest.approx((1.25, 2.0))
    cost = CostModel(FIRST, EXTRA, fake_macs)
    # at MID: 1.25 * 44 ms + 2 * 20 ms of engine time per second
    assert cost.load(MID.length_config, *arrivals.rates()) == pytest.approx(1.25 * 0.044 + 2 * 0.020)
    clock.t = 1.0
    assert arrivals.rates() == (0.0, 0.0)


def test_request_size_scales_the_prediction_and_the_choice():
    """With ref_size, a request counts as its size (default: question + context characters) / ref_size units: a
    long document (several windows) is predicted as a call of that many units, a short one as a fraction of one."""
    cost = CostModel(FIRST, EXTRA, fake_macs, ref_size=100)
    short, typical, long = [("q" * 10, "c" * 15)], [("q" * 20, "c" * 80)], [("q" * 20, "c" * 280)]
    assert [cost.units(x) for x in (short, typical, long)] == [0.25, 1.0, 3.0]
    assert cost.units(typical + long) == 4.0
    assert cost.predict(MID.length_config, 0.25) == pytest.approx(0.25 * 0.044)
    assert cost.predict(MID.length_config, 0.1) == pytest.approx(0.25 * 0.044)  # never below a quarter
    assert cost.predict(MID.length_config, 3.0) == pytest.approx(0.044 + 2 * 0.020)
    assert CostModel(FIRST, EXTRA, fake_macs).units(long) == 1.0  # without ref_size: one unit per question
    words = CostModel(FIRST, EXTRA, fake_macs, ref_size=4, size_of=lambda q, c: len((q + " " + c).split()))
    assert words.units([("who is", "a b c d e f")]) == 2.0  # 8 words / 4
    t = LatencyTarget(TARGET_S, FRONT, cost, Backlog(FakeClock()))
    # idle, plan 120 ms: the typical question gets BEST (64 ms); the long one would take BEST 64 + 2 * 30 =
    # 124 ms, MID 44 + 2 * 20 = 84 ms: MID
    assert t.choose(cost.units(typical)) == BEST
    assert t.choose(cost.units(long)) == MID
    cost.observe(MID.length_config, 3.0, 2 * 0.084)  # a long call that took twice its prediction
    assert cost.scale == pytest.approx(0.9 + 0.1 * 2.0)


@pytest.mark.parametrize(
    "front",
    [FRONT, [*FRONT, FULL], [FULL, CHEAP], [CHEAP], [FrontPoint(None, None, 400, None)]],
    ids=["three", "full-below-best", "full-best", "one", "no-front"],
)
def test_no_load_choice_is_the_accurate_preset(front):
    t = LatencyTarget(TARGET_S, front, CostModel(FIRST, EXTRA, fake_macs), Backlog(FakeClock()))
    accurate = resolve_budget(front, Budget(preset="accurate"), full_macs=400)
    assert t.choose() == accurate
    if FULL in front:  # full length is the reference even below a dropped point (84 ms fits the 120 ms plan)
        assert accurate == FULL


def test_calibration_times_each_point_and_fits_lines():
    """A fake engine advances a fake clock by each configuration's known cost; calibration recovers the lines."""
    clock = FakeClock()
    calls = []
    FOUR = [*FRONT, FULL]  # noqa: N806
    cost = CostModel(FIRST, EXTRA, fake_macs)

    class Engine:
        def answer_batch(self, items, length_config):
            key = None if length_config == "full" else config_key(length_config)
            calls.append((key, len(items)))
            slow = 1.5 if len(calls) == 3 else 1.0  # one slow repetition: the median ignores it
            clock.t += slow * cost.calibrated(key, len(items))

        def macs(self, key):
            return fake_macs(key)

        def processed_tokens(self, question, context):
            return 10 * len(question) + len(context)

    items = [(f"q{i}", "c") for i in range(7)] + [("q10", "c")]
    got = calibrate(Engine(), FOUR, items, batch=8, reps=3, clock=clock)
    # request sizes in the engine's tokens: 7 x 21 and 1 x 31 over the 8 calibration questions
    assert got.ref_size == pytest.approx((7 * 21 + 31) / 8) and got.units([("q", "c" * 23)]) == pytest.approx(
        33 / 22.25
    )
    assert astuple(got.first) == pytest.approx(astuple(FIRST)) and got.extra.slope == pytest.approx(EXTRA.slope)
    assert got.extra.intercept == pytest.approx(0.0, abs=1e-12)
    assert calls[0] == (None, 1)  # warm-up
    assert calls[1:5] == [(config_key(p.length_config), 1) for p in FOUR]  # rounds over the whole front
    assert calls[13:] == [(config_key(p.length_config), 8) for p in FOUR] and len(calls) == 17
    assert [m["batch_1_ms"] for m in got.measured] == pytest.approx([24, 44, 64, 84])
    # timings on the line are already monotone: each point keeps its own
    assert [got.points[config_key(p.length_config)] for p in FOUR] == pytest.approx([0.024, 0.044, 0.064, 0.084])


def test_isotonic_pools_what_falls_where_it_should_rise():
    from quala.adaptive import isotonic

    assert isotonic([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]
    assert isotonic([3.0, 1.0, 2.0, 5.0]) == pytest.approx([2.0, 2.0, 2.0, 5.0])
    assert isotonic([1.0, 4.0, 2.0, 3.0, 0.5]) == pytest.approx([1.0, 2.375, 2.375, 2.375, 2.375])
    assert isotonic([]) == []


def test_points_that_cost_the_same_give_way_to_the_most_accurate():
    """Measured single-question times that do not fall with the MACs (CHEAP 30 ms, MID 28, BEST 64, FULL 84):
    CHEAP and MID pool to 29 ms, so a request that BEST does not fit gets MID (more accurate), where the line
    in MACs through the same timings (CHEAP 21.8 ms, MID 41.6 ms) would pick CHEAP."""
    clock = FakeClock()
    timings = {config_key(CHEAP.length_config): 0.030, config_key(MID.length_config): 0.028}

    class Engine:
        def answer_batch(self, items, length_config):
            key = None if length_config == "full" else config_key(length_config)
            line = CostModel(FIRST, EXTRA, fake_macs).calibrated(key, len(items))
            clock.t += timings.get(key, line) if len(items) == 1 else line

        def macs(self, key):
            return fake_macs(key)

    cost = calibrate(Engine(), FRONT, [(f"q{i}", "c") for i in range(8)], batch=8, reps=3, clock=clock)
    assert [cost.points[config_key(p.length_config)] for p in FRONT] == pytest.approx([0.029, 0.029, 0.064])
    t = LatencyTarget(TARGET_S, FRONT, cost, Backlog(clock))
    t.backlog.add(0.088, 1)  # 32 ms left of the 120 ms plan: BEST (64) does not fit, MID (29) does
    assert t.choose() == MID
    assert t.cost.first(fake_macs(config_key(MID.length_config))) > 0.032  # the line would not fit MID
    t.backlog.add(0.005, 1)  # 27 ms left: nothing fits; the fastest, and of the tied fastest the most accurate
    assert t.choose() == MID


def test_calibration_stops_at_its_time_budget():
    """Each call takes 10 s: after the warm-up and one round (40 s > 30 s) no batch is timed."""
    clock = FakeClock()
    calls = []

    class SlowEngine:
        def answer_batch(self, items, length_config):
            calls.append(len(items))
            clock.t += 10.0

        def macs(self, key):
            return fake_macs(key)

    got = calibrate(SlowEngine(), FRONT, [("q", "c")] * 8, batch=8, reps=3, clock=clock, budget_s=30.0)
    assert calls == [1] * 4  # warm-up + one round over the three points
    assert astuple(got.first) == pytest.approx((10.0, 0.0)) and got.extra == got.first  # no batching gain
    assert [m["batch_8_ms"] for m in got.measured] == [None] * 3


class BlockingEngine:
    """Blocks each call until released; advances the fake clock by twice the calibrated cost."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.started, self.release = threading.Event(), threading.Event()
        self.configs: list = []

    def answer_batch(self, items, length_config=None, top_k=1):
        self.started.set()
        self.release.wait(timeout=30)
        lc = None if length_config == "full" else length_config
        self.configs.append(lc)
        point = next(p for p in [*FRONT, FULL] if p.length_config == lc)
        self.clock.t += 2 * CostModel(FIRST, EXTRA, fake_macs).calibrated(lc, len(items))
        return [Answer("x", 1.0, 0, 1, lc, point.macs, 1.0) for _ in items]


def test_worker_chooses_from_its_queue_and_explicit_configs_win():
    from quala.serve_worker import AUTO, EngineWorker

    clock = FakeClock()
    engine = BlockingEngine(clock)
    t = target(clock)

    async def run():
        loop = asyncio.get_running_loop()
        worker = EngineWorker(engine, micro_batch=False, window_ms=0, max_batch=4, target=t, clock=clock)
        await worker.start()
        try:
            submit = worker.submit
            first = asyncio.ensure_future(submit([(QUESTION, CONTEXT)], AUTO, 1, mergeable=True))  # idle: BEST
            await loop.run_in_executor(None, engine.started.wait, 30)  # running: 64 ms ahead
            assert t.backlog.wait_s() == pytest.approx(0.064)
            second = asyncio.ensure_future(submit([(QUESTION, CONTEXT)], AUTO, 1, mergeable=True))
            await asyncio.sleep(0)  # 56 ms left of 120: MID (44 ms) -> 108 ms ahead
            third = asyncio.ensure_future(submit([(QUESTION, CONTEXT)], None, 1, mergeable=True))
            await asyncio.sleep(0)  # explicit full length although it does not fit (84 ms) -> 192 ms ahead
            fourth = asyncio.ensure_future(submit([(QUESTION, CONTEXT)], AUTO, 1, mergeable=True))
            await asyncio.sleep(0)  # nothing fits: CHEAP (24 ms)
            assert t.backlog.wait_s() == pytest.approx(0.216)
            engine.release.set()
            return [await f for f in (first, second, third, fourth)]
        finally:
            await worker.stop()

    served = asyncio.run(run())
    expected = [BEST.length_config, MID.length_config, None, CHEAP.length_config]
    assert engine.configs == expected
    assert [s.answers[0].length_config for s in served] == expected
    assert t.backlog.wait_s() == 0.0
    # every request counts as an arrival, the explicit one too: 4 one-unit requests in the 2 s window
    assert t.arrivals.rates() == pytest.approx((2.0, 0.0))
    # each call took twice its calibrated time: four EWMA steps towards 2
    scale = 1.0
    for _ in range(4):
        scale = 0.9 * scale + 0.1 * 2.0
    assert t.cost.scale == pytest.approx(scale)
    # queue time on the fake clock: the fourth job waited for the three calls before it
    assert served[3].queue_ms == pytest.approx(2000 * (0.064 + 0.044 + 0.084))
    assert served[0].compute_ms == pytest.approx(2000 * 0.064)


# ------------------------------------------------------------------------------------------ HTTP
@pytest.fixture(scope="module")
def engine(front_model_dir):  # noqa: F811
    from quala.engine import QAEngine

    return QAEngine.from_pretrained(front_model_dir, backend="torch", threads=1)


@pytest.fixture(scope="module")
def target_client(engine):
    """The tiny model in latency-target mode with a generous target (calibrated on the real tiny engine)."""
    from quala.serve import ServeConfig, create_app

    app = create_app(engine, ServeConfig(target_p95_ms=60_000, **LIMITS))
    with TestClient(app) as c:
        yield c


BODY = {"question": QUESTION, "context": CONTEXT}


def test_idle_server_answers_like_the_accurate_preset(target_client, engine):
    r = target_client.post("/v1/answer", json=BODY)
    assert r.status_code == 200, r.text
    accurate = engine.presets()["accurate"]
    assert r.json()["length_config"] == accurate.length_config
    assert r.json()["answer"] == engine.answer(QUESTION, CONTEXT, budget="accurate").answer
    assert r.json()["queue_ms"] >= 0
    info = target_client.get("/v1/model").json()["latency_target"]
    assert info["target_p95_ms"] == 60_000 and len(info["cost_model"]["measured"]) == len(engine.front)


def test_explicit_budgets_override_the_target(target_client, engine):
    worker = target_client.app.state.worker
    calibrated = worker.target.cost  # timings of a tiny model are noise: costs proportional to MACs instead
    worker.target.cost = CostModel(Line(0.0, 1 / engine.full_macs), Line(0.0, 0.0), engine.macs)
    worker.target.backlog.add(3600.0, 1)  # pretend an hour of work is queued: the target picks the cheapest
    try:
        cheapest = min(engine.front, key=lambda p: p.macs).length_config
        assert target_client.post("/v1/answer", json=BODY).json()["length_config"] == cheapest
        explicit = [
            ({"budget": {"preset": "accurate"}}, engine.presets()["accurate"].length_config),
            ({"budget": {"preset": "balanced"}}, engine.presets()["balanced"].length_config),
            ({"length_config": "full"}, None),
            ({"length_config": [200, 150, 100, 50]}, [200, 150, 100, 50]),
        ]
        for extra, lengths in explicit:
            r = target_client.post("/v1/answer", json=BODY | extra)
            assert r.status_code == 200 and r.json()["length_config"] == lengths, (extra, r.text)
        batch = target_client.post("/v1/answer/batch", json={"items": [BODY, BODY]})
        assert batch.json()["length_config"] == cheapest and "queue_ms" in batch.json()
    finally:
        worker.target.backlog.remove(3600.0, 1)
        worker.target.cost = calibrated
    assert target_client.post("/v1/answer", json=BODY).json()["length_config"] == (
        engine.presets()["accurate"].length_config
    )


def _samples(client) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_metrics_parse_and_move_after_requests(engine):
    from quala.serve import ServeConfig, create_app

    # two apps in one process: each has its own registry (the global one would refuse the second)
    apps = [create_app(engine, ServeConfig(**LIMITS)), create_app(engine, ServeConfig(target_p95_ms=1e5, **LIMITS))]
    for app, chosen_by in zip(apps, ["default", "target"], strict=True):
        with TestClient(app) as c:
            before = _samples(c)
            for _ in range(2):
                assert c.post("/v1/answer", json=BODY).status_code == 200
            assert c.post("/v1/answer", json=BODY | {"budget": {"preset": "fast"}}).status_code == 200
            assert c.post("/v1/answer", json={"question": QUESTION}).status_code == 422
            after = _samples(c)

        def delta(name, before=before, after=after, **labels):
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0.0) - before.get(key, 0.0)

        assert delta("quala_requests_total", path="/v1/answer", status="200") == 3
        assert delta("quala_requests_total", path="/v1/answer", status="422") == 1
        assert delta("quala_request_seconds_count", path="/v1/answer") == 4
        assert engine.presets()["accurate"].length_config is None  # the fixture's front: full length is best
        fast = ",".join(map(str, engine.presets()["fast"].length_config))
        assert delta("quala_answers_total", config="full", chosen_by=chosen_by) == 2
        assert delta("quala_answers_total", config=fast, chosen_by="request") == 1
        for name in (
            "quala_queue_seconds_count",
            "quala_compute_seconds_count",
            "quala_batch_questions_count",
            "quala_macs_fraction_count",
        ):
            assert delta(name) == 3, name
        assert delta("quala_batch_questions_sum") == 3  # micro-batching off: one question per call
        assert after[("quala_queue_depth", ())] == 0
        fast_fraction = engine.presets()["fast"].macs / engine.full_macs
        assert delta("quala_macs_fraction_sum") == pytest.approx(2 + fast_fraction, rel=1e-6)
        for gauge in ("quala_target_p95_seconds", "quala_demand"):
            assert ((gauge, ()) in after) == (chosen_by == "target"), gauge


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "fast", ""])
def test_cli_rejects_bad_target(tiny_model_dir, capsys, value):
    code, _, err = run_cli(["serve", "--model", tiny_model_dir, "--target-p95-ms", value], capsys)
    assert code == 2, err
    assert err.startswith("error: target-p95-ms must be a number of milliseconds > 0") and err.count("\n") == 1


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "100"])
def test_serve_config_rejects_bad_target(value):
    from quala.errors import QualaError
    from quala.serve import ServeConfig

    with pytest.raises(QualaError, match="target-p95-ms"):
        ServeConfig(target_p95_ms=value)


@pytest.mark.parametrize("value", ["0", "-0.5", "nan", "inf"])
def test_cli_rejects_bad_target_load(tiny_model_dir, capsys, value):
    code, _, err = run_cli(["serve", "--model", tiny_model_dir, "--target-load", value], capsys)
    assert code == 2, err
    assert err.startswith("error: target-load must be a share of the engine's time > 0") and err.count("\n") == 1


def test_target_load_reaches_the_calibrated_target(monkeypatch):
    """--target-load is the cap the chosen configuration's load is held to (GET /v1/model shows it)."""
    import quala.adaptive

    monkeypatch.setattr(quala.adaptive, "calibrate", lambda engine, front, items: CostModel(FIRST, EXTRA, fake_macs))

    class Engine:
        front = FRONT

    t = LatencyTarget.calibrated(Engine(), TARGET_S, FakeClock(), utilization=0.3)
    assert t.utilization == 0.3 and t.table()["utilization_cap"] == 0.3
    for _ in range(10):  # 5 questions/s: BEST 0.32 > 0.3, MID 0.22
        t.arrivals.add(1.0)
    assert t.choose() == MID
