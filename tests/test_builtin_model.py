"""The shipped built-in model (builtin:quala-minilm): correct answers to hand-written questions, its accuracy on
validation questions against its own model card, and fp32 ONNX Runtime against PyTorch on a model that answers
correctly. Integration tests: they load the real ~46 MB model and build its int8 graph once (in a temporary
cache)."""

from __future__ import annotations

import json

import pytest
from conftest import SQUAD_DEV, needs_shared_data

from quala.builtin import BUILTIN_DIR

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (BUILTIN_DIR / "model.safetensors").is_file(), reason="no built-in model packaged"),
]

APOLLO = (
    "The Apollo program was carried out by NASA from 1961 to 1972. It landed the first humans on the Moon in 1969. "
    "Neil Armstrong and Buzz Aldrin walked on the surface while Michael Collins stayed in orbit."
)
CURIE = (
    "Marie Curie was born in Warsaw in 1867. She moved to Paris in 1891, where she studied physics and mathematics "
    "at the University of Paris. In 1903 she shared the Nobel Prize in Physics with Pierre Curie and Henri "
    "Becquerel."
)
DANUBE = (
    "The Danube is the second-longest river in Europe. It rises in the Black Forest in Germany and flows for about "
    "2,850 kilometres to the Black Sea."
)
HAND_WRITTEN = [
    ("Who stayed in orbit?", APOLLO, "Michael Collins"),
    ("When did Apollo land the first humans on the Moon?", APOLLO, "1969"),
    ("Which agency carried out the Apollo program?", APOLLO, "NASA"),
    ("Where was Marie Curie born?", CURIE, "Warsaw"),
    ("In what year did she move to Paris?", CURIE, "1891"),
    ("Who shared the 1903 Nobel Prize in Physics with her?", CURIE, "Pierre Curie and Henri Becquerel"),
    ("Into which sea does the Danube flow?", DANUBE, "Black Sea"),
    ("How long is the Danube?", DANUBE, "2,850 kilometres"),
]


@pytest.fixture(scope="module")
def int8_engine(tmp_path_factory):
    """The default engine: the built-in model, int8, its graph built into a fresh cache."""
    import os

    from quala.engine import QAEngine

    old = os.environ.get("QUALA_CACHE")
    os.environ["QUALA_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield QAEngine.from_pretrained(threads=2)
    finally:
        if old is None:
            os.environ.pop("QUALA_CACHE", None)
        else:
            os.environ["QUALA_CACHE"] = old


def test_default_engine_answers_hand_written_questions(int8_engine):
    got = [int8_engine.answer(q, c).answer for q, c, _ in HAND_WRITTEN]
    assert got == [a for _, _, a in HAND_WRITTEN]


@needs_shared_data
def test_accuracy_on_200_validation_questions_matches_the_model_card(int8_engine):
    """int8 at full length on 200 evenly spaced questions of dev articles 32-39 >= the card's int8 F1 - 2."""
    from quala.data import load_squad
    from quala.evaluate import evaluate

    card = json.loads((BUILTIN_DIR / "results.json").read_text())
    row = next(r for r in card["metrics"]["rows"] if r["model"] == "int8" and r["length_config"] is None)
    data = load_squad(str(SQUAD_DEV), "32:40").spread(200)
    result, _ = evaluate(int8_engine.predictor, data, None)
    assert result.num_questions == 200
    assert result.f1 >= row["f1"] - 2.0, (result.f1, row["f1"])


def test_fp32_onnx_runtime_answers_as_pytorch(tmp_path):
    """The exported fp32 graph gives the same answers as PyTorch, at full length and at a front point, on
    questions the model answers correctly (so a broken export cannot pass by agreeing on garbage)."""
    from quala.engine import QAEngine
    from quala.export import export_model

    export_model(str(BUILTIN_DIR), tmp_path / "onnx")
    torch_engine = QAEngine.from_pretrained(str(BUILTIN_DIR), backend="torch", threads=2)
    onnx_engine = QAEngine.from_pretrained(str(tmp_path / "onnx"), backend="onnxruntime", threads=2)
    front = [p.length_config for p in torch_engine.front if p.length_config is not None]
    for length_config in (None, front[len(front) // 2]):
        for q, c, gold in HAND_WRITTEN:
            a = torch_engine.answer(q, c, length_config=length_config)
            b = onnx_engine.answer(q, c, length_config=length_config)
            assert (a.answer, a.start, a.end) == (b.answer, b.start, b.end)
            assert a.score == pytest.approx(b.score, rel=1e-3, abs=1e-5)
            if length_config is None:
                assert a.answer == gold
