"""The engine over the ONNX Runtime backend: same answers as PyTorch, batching, long contexts, budgets."""

from __future__ import annotations

import numpy as np
import pytest

from quala.engine import OnnxPredictor, QAEngine, TorchPredictor, load_predictor
from quala.errors import QualaError

CONTEXT = (
    "The letter was written by Ada Lovelace in 1843. It was sent to London the next week, where Charles "
    "Babbage read it aloud to the society. The society met on Tuesdays in a room above a bookshop."
)
ITEMS = [
    ("Who wrote the letter?", CONTEXT),
    ("Where was it sent?", CONTEXT),
    ("When did they meet?", CONTEXT),
]
DROPPED = [300, 250, 120, 40]


@pytest.fixture(scope="module")
def onnx_dir(tiny_model_dir, tmp_path_factory):
    from quala.export import export_model

    return export_model(tiny_model_dir, tmp_path_factory.mktemp("fp32-onnx") / "model").directory


@pytest.fixture(scope="module")
def engines(tiny_model_dir, onnx_dir):
    return QAEngine.from_pretrained(tiny_model_dir, backend="torch", threads=1), QAEngine.from_pretrained(
        onnx_dir, threads=1
    )


def test_auto_backend_and_explicit_backend(onnx_dir, tiny_model_dir):
    assert isinstance(load_predictor(onnx_dir, threads=1), OnnxPredictor)
    assert isinstance(load_predictor(tiny_model_dir, threads=1), TorchPredictor)
    with pytest.raises(QualaError, match="has no model.onnx"):
        load_predictor(tiny_model_dir, backend="onnxruntime")
    with pytest.raises(QualaError, match="unknown backend"):
        load_predictor(onnx_dir, backend="tensorrt")


@pytest.mark.parametrize("length_config", [None, DROPPED])
def test_onnx_answers_like_torch(engines, length_config):
    torch_engine, onnx_engine = engines
    a = torch_engine.answer_batch(ITEMS, length_config=length_config)
    b = onnx_engine.answer_batch(ITEMS, length_config=length_config)
    for x, y in zip(a, b, strict=True):
        assert x.to_dict()["answer"] == y.to_dict()["answer"]
        assert (x.start, x.end) == (y.start, y.end)
        assert x.score == pytest.approx(y.score, abs=1e-3)


def test_batch_matches_single_requests(engines):
    _, engine = engines
    items = ITEMS + [("Who read it?", "Babbage read it. " * 3)]
    batched = engine.answer_batch(items, length_config=DROPPED)
    for item, answer in zip(items, batched, strict=True):
        single = engine.answer(*item, length_config=DROPPED)
        assert (single.start, single.end, single.answer) == (answer.start, answer.end, answer.answer)
        assert single.score == pytest.approx(answer.score, abs=1e-4)


def test_full_length_graph_and_length_adaptive_graph_agree(onnx_dir):
    predictor = load_predictor(onnx_dir, threads=1)
    from quala.data import Example, collate, prepare_features

    feats = prepare_features([Example(str(i), q, c) for i, (q, c) in enumerate(ITEMS)], predictor.tokenizer)
    batch = collate(feats, list(range(len(feats))))
    fused = predictor.logits(batch, None)  # model_full.onnx
    unfused = predictor.logits(batch, [384] * 4)  # model.onnx, every real token kept
    mask = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(fused.start[mask], unfused.start[mask], atol=1e-4)


def test_long_context_uses_doc_stride_windows(engines):
    _, engine = engines
    filler = "The weather was mild and the streets were quiet that year. " * 60
    context = filler + "The treaty was signed by Maria Keller in Vienna. " + filler
    answer = engine.answer("Who signed the treaty?", context, length_config=DROPPED)
    assert answer.answer == context[answer.start : answer.end]
    from quala.data import Example, prepare_features

    feats = prepare_features([Example("0", "Who signed the treaty?", context)], engine.predictor.tokenizer)
    assert len(feats) > 2  # really several windows


def test_processed_tokens_count_every_window(engines):
    """The latency target's request size: the tokens of every window prepare_features makes, counted without
    making them (the reference: the features' own lengths), for short, multi-window and long-question inputs."""
    from quala.config import DataConfig
    from quala.data import Example, prepare_features

    _, engine = engines
    filler = "The weather was mild and the streets were quiet that year. " * 60
    cases = [*ITEMS, ("Who signed the treaty?", filler + CONTEXT), (" ".join(["why"] * 90) + "?", filler)]
    for config in (DataConfig(), DataConfig(max_seq_length=128, doc_stride=32, max_query_length=20)):
        engine.data_config = config
        for question, context in cases:
            feats = prepare_features([Example("0", question, context)], engine.predictor.tokenizer, config)
            assert engine.processed_tokens(question, context) == int(feats.lengths.sum()), (question[:20], config)
    engine.data_config = DataConfig()
    assert engine.processed_tokens("Who signed the treaty?", filler + CONTEXT) > 2 * 384  # three windows


def test_processed_tokens_leave_the_engines_tokenizer_alone(engines):
    """The server counts a request's tokens on the event loop while the engine thread tokenizes other requests
    with the same tokenizer, whose truncation each call sets: counting must neither read nor change that state
    (sharing it made one request of a load test fail with 'Truncation error: Second sequence not provided')."""
    _, engine = engines
    backend = engine.predictor.tokenizer.backend_tokenizer
    backend.enable_truncation(max_length=384, stride=128, strategy="only_second")  # as a window call leaves it
    before = backend.truncation
    assert engine.processed_tokens("Who wrote the letter?", CONTEXT * 20) > 384  # a single text, not truncated
    assert backend.truncation == before
    backend.no_truncation()


@pytest.mark.parametrize(
    "budget, message",
    [
        ("turbo", "not understood"),
        ("macs=0", "macs_fraction must be in"),
        ("macs=1.5", "macs_fraction must be in"),
        ("macs=abc", "not understood"),
        ("latency=-3", "max_latency_ms must be > 0"),
        ({"preset": "fastest"}, "unknown preset"),
        ({"speed": 3}, "unknown budget field"),
        ("macs=0.5", "impossible budget"),  # no front: only the full-length model exists
        ("latency=50", "no measured latencies"),
    ],
)
def test_bad_budgets(engines, budget, message):
    _, engine = engines
    with pytest.raises(QualaError, match=message):
        engine.answer(*ITEMS[0], budget=budget)


def test_budget_and_length_config_are_exclusive(engines):
    _, engine = engines
    with pytest.raises(QualaError, match="either a budget or a length config"):
        engine.answer(*ITEMS[0], budget="fast", length_config=DROPPED)
    with pytest.raises(QualaError, match="invalid length config"):
        engine.answer(*ITEMS[0], length_config=[10, 20, 30, 40])
    with pytest.raises(QualaError, match="invalid length config"):
        engine.predictor.logits({"input_ids": np.ones((1, 4), np.int64)}, [10, 5])


def test_presets_without_front_resolve_to_full_length(engines):
    _, engine = engines
    for preset in ("fast", "balanced", "accurate"):
        assert engine.answer(*ITEMS[0], budget=preset).length_config is None
