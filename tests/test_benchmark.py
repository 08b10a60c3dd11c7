"""The side-by-side benchmark: one run writes every row with the agreed fields, a table and a plot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import DEMO_DIR

from quala.benchmark import benchmark, bert_base_engine

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


def test_benchmark_writes_all_rows(tiny_model_dir, tmp_path):
    out = tmp_path / "bench"
    result = benchmark(
        str(tiny_model_dir),
        str(DEMO_DIR / "dev.json"),
        out,
        max_examples=3,
        batch_sizes=[1, 2],
        baseline=str(tiny_model_dir),
        length_configs=[[300, 250, 120, 40], [200, 100, 60, 20]],
        threads=1,
        progress=False,
    )
    data = json.loads((out / "benchmark.json").read_text())
    assert {"cpu", "cores", "threads", "versions"} <= set(data["machine"])
    rows = data["rows"]
    assert all(FIELDS <= set(r) for r in rows)
    settings = {(r["protocol"], r["batch_size"]) for r in rows}
    assert settings == {("serving", 1), ("serving", 2), ("paper", 32)}
    per_setting = [r for r in rows if r["protocol"] == "serving" and r["batch_size"] == 1]
    assert [r["length_config"] for r in per_setting][-2:] == [[300, 250, 120, 40], [200, 100, 60, 20]]
    assert {r["backend"] for r in per_setting} == {"torch", "onnxruntime"}
    assert {r["dtype"] for r in per_setting} == {"fp32", "int8"}
    for r in rows:
        assert r["latency_ms_median"] > 0 and r["latency_ms_p90"] >= r["latency_ms_median"]
        assert r["throughput"] > 0 and r["size_mb"] > 0 and 0 <= r["f1"] <= 100
    bert, eager = per_setting[0], per_setting[1]
    assert bert["speedup_vs_bert_base"] == 1.0 and eager["speedup_vs_minilm_fp32"] == 1.0
    assert per_setting[-1]["macs"] < per_setting[-2]["macs"] < eager["macs"]
    # fp32 ONNX Runtime scores exactly like fp32 PyTorch on the same features
    assert per_setting[2]["f1"] == pytest.approx(eager["f1"], abs=1e-6)
    table = (out / "benchmark.md").read_text()
    assert table.count("## ") == 3 and "| model | dtype |" in table
    assert (out / "f1_vs_latency.png").stat().st_size > 1000
    assert len(result.rows) == len(rows)
    # a second run reuses the exported and quantized models
    assert (out / "models" / "int8-dynamic" / "model.onnx").is_file()


def test_random_bert_base_is_12x768_and_marked(tiny_model_dir):
    engine = bert_base_engine(None, tiny_model_dir, threads=1)
    config = engine.predictor.model_config
    assert (config.num_hidden_layers, config.hidden_size) == (12, 768)
    assert not engine.trained and "random" in engine.name


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-sizes", "1,x"], "--batch-sizes must look like"),
        (["--batch-sizes", "0"], "--batch-sizes must be positive"),
        (["--protocol", "fast"], "--protocol must be"),
        (["--length-configs", "10,20"], "invalid length config"),
    ],
)
def test_cli_rejects_bad_input(tiny_model_dir, tmp_path, args, message):
    cmd = [
        sys.executable,
        "-c",
        "from quala.cli import main; main()",
        "benchmark",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(DEMO_DIR / "dev.json"),
        "--output",
        str(tmp_path / "b"),
        "--no-progress",
        *args,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
