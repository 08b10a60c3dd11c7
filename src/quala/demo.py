"""``quala demo``: a model answers the project's demo questions at each budget preset, one question at a time.

Per preset: official SQuAD v1.1 F1/EM over the questions, the median batch-1 latency of an ``engine.answer``
call (tokenisation, model and answer extraction: what a user waits for) and the MACs of the configuration the
preset resolved to. The questions ship with the package (``quala/assets/demo/dev.json``, written by the
project, CC0), so the command needs no data and no network.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from quala.budget import PRESETS
from quala.data import SquadData, load_squad
from quala.engine import QAEngine
from quala.metric import squad_v1_scores
from quala.pipeline import resolve_path

DEMO_QUESTIONS = "quala:assets/demo/dev.json"


@dataclass
class PresetResult:
    """One preset's accuracy and cost on the demo questions."""

    preset: str
    length_config: list[int] | None
    f1: float
    exact_match: float
    latency_ms: float  # median over questions, batch 1
    macs: int
    macs_fraction: float
    answers: dict[str, str] = field(repr=False)  # question id -> answer


@dataclass
class DemoResult:
    num_questions: int
    presets: list[PresetResult]


def demo_questions() -> SquadData:
    return load_squad(resolve_path(DEMO_QUESTIONS))


def run_demo(engine: QAEngine, data: SquadData | None = None) -> DemoResult:
    """Answer every question at every preset (``accurate``, ``balanced``, ``fast``), one call per question."""
    data = data or demo_questions()
    first = data.examples[0]
    engine.answer(first.question, first.context)  # warm-up: lazy initialisation is not a question's latency
    out = []
    for preset in reversed(PRESETS):  # fast, balanced, accurate: cheapest first
        answers, times = {}, []
        for ex in data.examples:
            t0 = time.perf_counter()
            a = engine.answer(ex.question, ex.context, budget=preset)
            times.append((time.perf_counter() - t0) * 1000)
            answers[ex.id] = a.answer
        scores = squad_v1_scores(answers, data.references())
        lengths = engine.resolve(preset)
        macs = engine.macs(lengths)
        out.append(
            PresetResult(
                preset,
                lengths,
                scores.f1,
                scores.exact_match,
                statistics.median(times),
                macs,
                macs / engine.full_macs,
                answers,
            )
        )
    return DemoResult(len(data.examples), out)
