"""The side-by-side benchmark: one run writes every row with the agreed fields, a table and a plot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import DEMO_DIR, tiny_hf_qa

from quala.benchmark import BenchmarkConfig, benchmark, bert_base_engine
from quala.data import load_squad

FIELDS = {
    "name",
    "backend",
    "dtype",
    "length_config",
    "batch_size",
    "protocol",
    "latency_ms_median",
    "latency_ms_p90",
    "throughput",
    "macs",
    "size_mb",
    "f1",
    "exact_match",
    "speedup_vs_bert_base",
    "speedup_vs_minilm_fp32",
}


def benchmark_cmd(model, output, *args: str) -> list[str]:
    """``quala benchmark`` on the demo questions, as a subprocess command line."""
    return [
        sys.executable,
        "-c",
        "from quala.cli import main; main()",
        "benchmark",
        "--model",
        str(model),
        "--data",
        str(DEMO_DIR / "dev.json"),
        "--output",
        str(output),
        "--no-progress",
        *args,
    ]


def test_benchmark_writes_all_rows(tiny_model_dir, tmp_path):
    out = tmp_path / "bench"
    settings = BenchmarkConfig(
        max_examples=3,
        batch_sizes=[1, 2],
        baseline_model=str(tiny_model_dir),
        length_configs=[[300, 250, 120, 40], [200, 100, 60, 20]],
        threads=1,
    )
    result = benchmark(str(tiny_model_dir), load_squad(DEMO_DIR / "dev.json"), out, settings, progress=False)
    data = json.loads((out / "benchmark.json").read_text())
    assert {"cpu", "cores", "threads", "versions"} <= set(data["machine"])
    rows = data["rows"]
    assert all(FIELDS <= set(r) for r in rows)
    settings = {(r["protocol"], r["batch_size"]) for r in rows}
    assert settings == {("serving", 1), ("serving", 2), ("papers", 32)}
    per_setting = [r for r in rows if r["protocol"] == "serving" and r["batch_size"] == 1 and r["kind"] != "baseline"]
    assert [r["length_config"] for r in per_setting][-2:] == [[300, 250, 120, 40], [200, 100, 60, 20]]
    assert {r["backend"] for r in per_setting} == {"torch", "onnxruntime"}
    assert {r["dtype"] for r in per_setting} == {"fp32", "int8"}
    for r in rows:
        assert r["latency_ms_median"] > 0 and r["latency_ms_p90"] >= r["latency_ms_median"]
        assert r["throughput"] > 0 and r["size_mb"] > 0
    bert, eager = per_setting[0], per_setting[1]
    assert bert["speedup_vs_bert_base"] == 1.0 and eager["speedup_vs_minilm_fp32"] == 1.0
    assert per_setting[-1]["macs"] < per_setting[-2]["macs"] < eager["macs"]
    # fp32 ONNX Runtime scores exactly like fp32 PyTorch on the same features
    assert per_setting[2]["f1"] == pytest.approx(eager["f1"], abs=1e-6)
    # and both like `quala evaluate`'s own path (features, batched logits, answer extraction) on those questions
    from quala.engine import load_predictor
    from quala.evaluate import evaluate

    reference, _ = evaluate(
        load_predictor(tiny_model_dir, threads=1), load_squad(str(DEMO_DIR / "dev.json"), max_examples=3)
    )
    assert eager["f1"] == pytest.approx(reference.f1, abs=0.005)  # the table rounds to 2 decimals
    assert eager["exact_match"] == pytest.approx(reference.exact_match, abs=0.005)
    table = (out / "benchmark.md").read_text()
    assert table.count("## ") == 3 and "| model | dtype |" in table and table.count("Verdict: ") == 3
    assert (out / "f1_vs_latency.png").stat().st_size > 1000
    assert len(result.rows) == len(rows)
    # a second run reuses the exported and quantized models
    assert (out / "models" / "int8-dynamic" / "model.onnx").is_file()


def test_cli_writes_baselines_and_papers_table(tmp_path, minilm_path):
    """On a 6-layer model: window and depth baselines, the papers' protocol rows with the clip rule (the model
    card's configuration included), verdicts and ISA flags, in benchmark.json and benchmark.md."""
    from transformers import AutoTokenizer

    from quala.model import LengthAdaptiveQA

    model = tmp_path / "six"
    LengthAdaptiveQA(tiny_hf_qa("bert", layers=6)).save_pretrained(model)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(model)
    out = tmp_path / "bench"
    cmd = benchmark_cmd(
        model,
        out,
        "--max-examples",
        "4",
        "--batch-sizes",
        "1",
        "--baseline-model",
        str(model),
        "--length-configs",
        "300,250,200,150,100,50",
        "--threads",
        "1",
    )
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    data = json.loads((out / "benchmark.json").read_text())
    from quala.io import cpu_isa_flags

    assert data["machine"]["isa_flags"] == cpu_isa_flags()
    rows = {(r["protocol"], r["name"], tuple(r["length_config"] or ())): r for r in data["rows"]}
    serving = {name for (p, name, _) in rows if p == "serving"}
    papers = {name for (p, name, _) in rows if p == "papers"}
    windows = {"MiniLM int8 ONNX Runtime, windows 256/128", "MiniLM int8 ONNX Runtime, windows 192/64"}
    depths = {"MiniLM int8 ONNX Runtime, first 4 layers", "MiniLM int8 ONNX Runtime, first 5 layers"}
    assert windows | depths <= serving and depths <= papers and not windows & papers
    assert (
        papers
        == {
            "BERT-base",
            "MiniLM fp32 PyTorch eager",
            "MiniLM int8 ONNX Runtime",
            "LA-MiniLM int8 ONNX Runtime",
            "LA-MiniLM int8 ONNX Runtime (model card config)",
        }
        | depths
    )
    card = (315, 251, 242, 159, 142, 33)
    assert rows[("papers", "LA-MiniLM int8 ONNX Runtime (model card config)", card)]["length_rule"] == "clip"
    assert rows[("serving", "LA-MiniLM int8 ONNX Runtime (model card config)", card)]["length_rule"] == "ratio"
    depth4 = rows[("serving", "MiniLM int8 ONNX Runtime, first 4 layers", (384,) * 4 + (0, 0))]
    assert depth4["kind"] == "baseline" and depth4["f1"] is not None
    short = rows[("serving", "MiniLM int8 ONNX Runtime, windows 192/64", ())]
    full = rows[("serving", "MiniLM int8 ONNX Runtime", ())]
    assert (short["max_seq_length"], short["doc_stride"]) == (192, 64) and short["num_features"] >= full["num_features"]
    assert all(r["f1"] is not None for r in data["rows"])
    assert set(data["verdicts"]) == {"serving, batch 1", "papers, batch 32"}
    table = (out / "benchmark.md").read_text()
    assert "## papers, batch 32" in table and "clip" in table and "windows 256/128" in table
    assert "ISA: avx2" in table or "ISA: " in table
    assert (out / "models" / "int8-clip" / "model.onnx").is_file()


def test_random_bert_base_is_12x768_and_marked(tiny_model_dir):
    engine = bert_base_engine(None, tiny_model_dir, threads=1)
    config = engine.predictor.model_config
    assert (config.num_hidden_layers, config.hidden_size) == (12, 768)
    assert not engine.trained and "random" in engine.name


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-sizes", "1,x"], "batch_sizes must be int"),
        (["--batch-sizes", "0"], "--batch-sizes must be positive"),
        (["--protocol", "fast"], "--protocol must be"),
        (["--protocol", "paper"], "--protocol must be serving, papers or both"),
        (["--baselines", "some"], "--baselines must be one of"),
        (["--length-configs", "10,20"], "invalid length config"),
    ],
)
def test_cli_rejects_bad_input(tiny_model_dir, tmp_path, args, message):
    cmd = benchmark_cmd(tiny_model_dir, tmp_path / "b", *args)
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
