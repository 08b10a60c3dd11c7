"""int8 quantization: the output directory loads and answers like an fp32 one, through every entry point."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import DEMO_DIR
from typer.testing import CliRunner

from quala.cli import app
from quala.data import load_squad
from quala.engine import OnnxPredictor, QAEngine, load_predictor
from quala.errors import QualaError
from quala.model_dir import read_manifest
from quala.quantize import QuantizeConfig, ffn_output_nodes, quantize

QUESTION = "Who wrote the letter?"
CONTEXT = "The letter was written by Ada Lovelace in 1843, and it was sent to London the next week."


@pytest.fixture(scope="module")
def int8_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "model"
    quantize(tiny_model_dir, None, out)
    return out


def test_int8_directory_layout(int8_dir):
    manifest = read_manifest(int8_dir)
    assert manifest["backend"] == "onnxruntime" and manifest["dtype"] == "int8"
    assert {"model.onnx", "model_full.onnx", "config.json", "tokenizer.json"} <= {p.name for p in int8_dir.iterdir()}
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8_dir / "model.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    full_ops = {n.op_type for n in onnx.load(str(int8_dir / "model_full.onnx")).graph.node}
    assert "QAttention" in full_ops
    assert "Gather" in ops  # embeddings stay fp32 lookups
    # default keep_fp32="ffn-output": the 4 FFN output projections stay fp32 MatMuls in both graphs
    assert manifest["keep_fp32"] == "ffn-output"
    for graph in ("model.onnx", "model_full.onnx"):
        assert len(ffn_output_nodes(int8_dir / graph, 64)) == 4  # fp32 MatMuls with a (64, hidden) weight


def test_int8_loads_and_answers(int8_dir, tiny_model_dir):
    predictor = load_predictor(int8_dir, backend="auto", threads=1)
    assert isinstance(predictor, OnnxPredictor)
    engine = QAEngine(predictor)
    for lengths in (None, "300,250,120,40"):
        answer = engine.answer(QUESTION, CONTEXT, length_config=lengths)
        assert answer.answer == CONTEXT[answer.start : answer.end] and answer.answer
        assert 0 < answer.score <= 1
    # the int8 model stays close to the fp32 one on the same input
    fp32 = load_predictor(tiny_model_dir, threads=1)
    from quala.data import Example, collate, prepare_features

    feats = prepare_features([Example("0", QUESTION, CONTEXT)], fp32.tokenizer)
    batch = collate(feats, [0])
    a, b = fp32.logits(batch, None), predictor.logits(batch, None)
    assert np.corrcoef(a.start.ravel(), b.start.ravel())[0, 1] > 0.9


def test_cli_answer_and_evaluate_on_int8(int8_dir):
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["answer", "--model", str(int8_dir), "--question", QUESTION, "--context", CONTEXT, "--threads", "1"],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out) == {"answer", "score", "start", "end", "model", "backend"}
    assert (out["model"], out["backend"]) == (str(int8_dir), "onnxruntime")
    assert CONTEXT[out["start"] : out["end"]] == out["answer"]
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--model",
            str(int8_dir),
            "--data",
            str(DEMO_DIR / "dev.json"),
            "--max-examples",
            "6",
            "--threads",
            "1",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout.strip().splitlines()[-1])
    assert metrics["num_questions"] == 6 and 0 <= metrics["f1"] <= 100


def test_search_front_travels_with_the_model(tiny_model_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_model_dir, src)
    front = [
        {"length_config": [200, 150, 100, 50], "f1": 80.0, "macs": 1, "latency_ms": 5.0},
        {"length_config": None, "f1": 80.5, "macs": 2, "latency_ms": 9.0},
    ]
    from transformers import AutoConfig

    from quala.macs import count_macs

    config = AutoConfig.from_pretrained(src)
    for point in front:
        point["macs"] = count_macs(config, 384, point["length_config"]).total
    (src / "search.json").write_text(json.dumps({"front": front}))
    out = tmp_path / "int8"
    quantize(src, None, out)
    engine = QAEngine.from_pretrained(out, threads=1)
    assert engine.resolve("balanced") == [200, 150, 100, 50]
    assert engine.resolve("accurate") is None
    assert engine.answer(QUESTION, CONTEXT, budget="fast").length_config == [200, 150, 100, 50]
    with pytest.raises(QualaError, match="impossible budget"):
        engine.resolve("macs=0.01")
    with pytest.raises(QualaError, match="impossible budget"):
        engine.resolve("latency=1")


def test_static_mode_and_fp32_ffn_output(tiny_model_dir, tmp_path):
    from conftest import SQUAD_DEV

    data = SQUAD_DEV if SQUAD_DEV.is_file() else DEMO_DIR / "dev.json"
    out = tmp_path / "static"
    settings = QuantizeConfig(mode="static", keep_fp32="ffn-output", calibration_features=4)
    result = quantize(tiny_model_dir, load_squad(data, "0:1"), out, settings)
    assert result.excluded_nodes == 4  # one FFN output projection per layer
    import onnx

    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    manifest = read_manifest(out)
    assert manifest["mode"] == "static"
    assert manifest["calibration"] == {"file": str(data), "articles": "0:1", "features": 4}
    answer = QAEngine.from_pretrained(out, threads=1).answer(QUESTION, CONTEXT, length_config="300,250,120,40")
    assert answer.answer == CONTEXT[answer.start : answer.end]


def test_ffn_output_nodes_found_in_both_graphs(int8_dir, tiny_model_dir, tmp_path):
    from quala.export import export_model

    exported = export_model(tiny_model_dir, tmp_path / "fp32")
    assert len(ffn_output_nodes(exported.la_graph, 64)) == 4
    assert len(ffn_output_nodes(exported.full_graph, 64)) == 4


@pytest.mark.parametrize(
    "kwargs, calibration, message",
    [
        ({"mode": "fp16"}, False, "unknown quantization mode"),
        ({"keep_fp32": "all"}, False, "--keep-fp32"),
        ({"calibration_features": 0}, False, "calibration features must be >= 1"),
        ({"mode": "static"}, False, "needs --calibration-file"),
        ({}, True, "only applies to --mode static"),
    ],
)
def test_bad_arguments(tiny_model_dir, tmp_path, kwargs, calibration, message):
    with pytest.raises(QualaError, match=message):
        data = load_squad(DEMO_DIR / "dev.json", "0:1") if calibration else None
        quantize(tiny_model_dir, data, tmp_path / "out", QuantizeConfig(**kwargs))
    assert not (tmp_path / "out").exists()


def test_requantizing_an_int8_model_is_refused(int8_dir, tmp_path):
    with pytest.raises(QualaError, match="already quantized"):
        quantize(int8_dir, None, tmp_path / "again")


def test_cli_quantize_bad_input_exits_2(tiny_model_dir, tmp_path):
    import subprocess
    import sys

    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "from quala.cli import main; main()",
            "quantize",
            "--model",
            str(tiny_model_dir),
            "--output",
            str(tmp_path / "o"),
            "--mode",
            "weird",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: unknown quantization mode") and "Traceback" not in res.stderr


def test_quantize_defaults_agree_across_cli_pipeline_and_api():
    """QuantizeConfig's defaults are the ones `quala quantize` and the pipeline's quantize stage use: each setting
    of the command is generated from a field and is None when not given, so the field's default applies."""
    import dataclasses
    import inspect

    from quala import cli
    from quala.pipeline import PipelineConfig

    options = inspect.signature(cli.quantize).parameters
    assert PipelineConfig().quantize == QuantizeConfig()
    for f in dataclasses.fields(QuantizeConfig):
        assert options[f.name].default is None, f.name


def test_learned_significance_model_quantizes_and_keeps_its_scorer_in_fp32(tiny_model_dir, tmp_path):
    """int8 of a learned-significance model: the scorer's vector-weight MatMuls stay fp32 (ONNX Runtime's int8
    MatMul refused them at run time: 'b zero point is not valid'), everything else is quantized, and dropped
    configurations run and keep the fp32 model's answers on most rows."""
    import onnx
    import torch

    from quala.engine import TorchPredictor
    from quala.model import LengthAdaptiveQA, load_tokenizer
    from quala.quantize import vector_weight_nodes

    src = tmp_path / "learned"
    learned = LengthAdaptiveQA.from_pretrained(tiny_model_dir).with_significance("learned")
    learned.save_pretrained(src)
    load_tokenizer(tiny_model_dir).save_pretrained(src)
    out = tmp_path / "int8"
    quantize(src, None, out)
    graph = onnx.load(str(out / "model.onnx"))
    scorer_matmuls = [n for n in graph.graph.node if n.op_type == "MatMul" and "quala_scorer" in n.name]
    assert len(scorer_matmuls) == learned.num_layers  # one fp32 GEMV a layer, found by vector_weight_nodes
    assert vector_weight_nodes(out / "model.onnx") == [n.name for n in scorer_matmuls]
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in graph.graph.node)
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": rng.integers(1000, 5000, size=(4, 40)).astype(np.int64),
        "attention_mask": np.ones((4, 40), dtype=np.int64),
        "token_type_ids": (np.arange(40)[None, :] >= 10).astype(np.int64).repeat(4, 0),
    }
    dropped = [300, 200, 150, 100]
    int8 = OnnxPredictor(out).logits(batch, dropped)
    with torch.no_grad():
        ref = TorchPredictor(LengthAdaptiveQA.from_pretrained(src), None).logits(batch, dropped)
    assert np.isfinite(int8.start).all()
    agree = (int8.start.argmax(-1) == ref.start.argmax(-1)).mean()
    assert agree >= 0.5, agree
