"""CLI: evaluate/answer/macs happy paths on a tiny model, and bad input -> exit 2 with one clear line."""

from __future__ import annotations

import json

import pytest
from conftest import DEMO_DIR, run_cli


def evaluate_cli(model, capsys, *extra) -> tuple[int, str, str]:
    """``quala evaluate`` on the demo dev questions, without a progress bar."""
    return run_cli(["evaluate", "--model", model, "--data", DEMO_DIR / "dev.json", *extra, "--no-progress"], capsys)


def test_evaluate_writes_metrics_and_official_predictions(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Fixed answers for the 18 questions of demo article 0; EM/F1 computed by hand from the official rules."""
    from types import SimpleNamespace

    import quala.evaluate

    fixed = {
        "demo-dev-0001": "the rocky headland",  # = "a rocky headland" once articles are dropped: EM 1, F1 1
        "demo-dev-0002": "1868",  # EM 1
        "demo-dev-0003": "36",  # vs "36 meters": P 1, R 1/2 -> F1 2/3 (vs "36 meters tall": 1/2)
        "demo-dev-0004": "blocks of granite",  # vs "granite blocks": P 2/3, R 1 -> F1 0.8
    }

    def fake_postprocess(examples, *args, **kwargs):
        return {ex.id: [SimpleNamespace(text=fixed.get(ex.id, ""))] for ex in examples}

    monkeypatch.setattr(quala.evaluate, "postprocess", fake_postprocess)
    pred, metrics = tmp_path / "pred.json", tmp_path / "metrics.json"
    code, out, err = evaluate_cli(
        tiny_model_dir,
        capsys,
        "--articles",
        "0:1",
        "--length-config",
        "300,200,100,50",
        "--predictions-out",
        pred,
        "--metrics-out",
        metrics,
    )
    assert code == 0, err
    printed = json.loads(out.strip().splitlines()[-1])
    assert printed["num_questions"] == 18 and printed["length_config"] == [300, 200, 100, 50]
    assert printed["exact_match"] == pytest.approx(100 * 2 / 18)
    assert printed["f1"] == pytest.approx(100 * (1 + 1 + 2 / 3 + 0.8) / 18)
    assert json.loads(metrics.read_text())["f1"] == printed["f1"]
    written = json.loads(pred.read_text())
    assert len(written) == 18 and {k: v for k, v in written.items() if v} == fixed


def test_answer_offsets_index_the_context(tiny_model_dir, capsys):
    context = "Ada Lovelace wrote the first published program for the Analytical Engine in 1843."
    code, out, err = run_cli(["answer", "--model", tiny_model_dir, "--question", "When?", "--context", context], capsys)
    assert code == 0, err
    ans = json.loads(out.strip().splitlines()[-1])
    assert set(ans) == {"answer", "score", "start", "end", "model", "backend"}
    assert (ans["model"], ans["backend"]) == (str(tiny_model_dir), "torch")  # which model answered
    assert context[ans["start"] : ans["end"]] == ans["answer"]


def test_macs_on_config_only_directory(tmp_path, capsys):
    from transformers import BertConfig

    BertConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=12).save_pretrained(
        tmp_path
    )
    code, out, _ = run_cli(["macs", "--model", tmp_path, "--length-config", "315,251,242,159,142,33"], capsys)
    assert code == 0
    assert abs(json.loads(out.strip().splitlines()[-1])["macs"] / 1e9 - 2.546) < 0.005


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "--model", "{model}", "--data", "{tmp}/missing.json"], "file not found"),
        (["evaluate", "--model", "{model}", "--data", "{tmp}/bad.json"], "not valid JSON"),
        (["evaluate", "--model", "{model}", "--data", "{dev}", "--articles", "9:3"], "empty"),
        (["evaluate", "--model", "{model}", "--data", "{dev}", "--length-config", "1,2,3"], "one token count"),
        (["evaluate", "--model", "{model}", "--data", "{dev}", "--length-config", "9,20,30,40"], "non-increasing"),
        (["evaluate", "--model", "{tmp}", "--data", "{dev}"], "no config.json"),
        (["evaluate", "--model", "{tmp}/nope", "--data", "{dev}"], "does not exist"),
        (["evaluate", "--model", "{model}", "--data", "{dev}", "--batch-size", "0"], "batch-size"),
        (["evaluate", "--model", "{model}", "--data", "{dev}", "--max-examples", "0"], "max-examples"),
        (["answer", "--model", "{model}", "--question", "  ", "--context", "text"], "question is empty"),
        (["answer", "--model", "{model}", "--question", "Who?", "--context", ""], "context is empty"),
        (["answer", "--model", "{model}", "--question", "Who?", "--context", "x", "--budget", "macs=0.1"], "impossib"),
        (["answer", "--model", "{model}", "--question", "Who?", "--context", "x", "--budget", "turbo"], "understood"),
        (["macs", "--model", "{model}", "--seq-length", "0"], "seq-length"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tiny_model_dir, tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{oops")
    subs = {"{model}": str(tiny_model_dir), "{tmp}": str(tmp_path), "{dev}": str(DEMO_DIR / "dev.json")}
    argv = []
    for a in args:
        for k, v in subs.items():
            a = a.replace(k, v)
        argv.append(a)
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert "Traceback" not in err


def test_evaluate_refuses_a_directory_as_output_before_any_work(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import quala.engine

    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(quala.engine, "load_predictor", must_not_load)
    (tmp_path / "outdir").mkdir()
    for flag in ("--predictions-out", "--metrics-out"):
        code, out, err = evaluate_cli(tiny_model_dir, capsys, flag, tmp_path / "outdir")
        assert code == 2 and out == ""
        assert err.strip().splitlines() == [
            f"error: {flag} {tmp_path / 'outdir'} is a directory; give a file path "
            f"such as {tmp_path / 'outdir' / 'out.json'}"
        ]
    (tmp_path / "afile").write_text("x")
    code, _, err = evaluate_cli(tiny_model_dir, capsys, "--metrics-out", tmp_path / "afile" / "m.json")
    assert code == 2 and "is a file, not a directory" in err and "Traceback" not in err


def test_evaluate_prints_scores_even_when_writing_fails(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import quala.evaluate

    def full_disk(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(quala.evaluate, "write_json_atomic", full_disk)
    code, out, err = evaluate_cli(tiny_model_dir, capsys, "--articles", "0:1", "--metrics-out", tmp_path / "m.json")
    assert code == 2
    assert "f1" in json.loads(out.strip().splitlines()[-1])  # the finished scores were not lost
    assert err.strip().splitlines() == [f"error: could not write {tmp_path / 'm.json'}: No space left on device"]


# -------------------------------------------------------------------------------- options from the config dataclasses
def _help_text(command: str, capsys) -> str:
    code, out, err = run_cli([command, "--help"], capsys)
    assert code == 0, err
    return " ".join(out.replace("\u2502", " ").split())  # rich's box borders and line wrapping removed


@pytest.mark.parametrize(
    "command, module, cls, flags",
    [
        ("quantize", "quala.quantize", "QuantizeConfig", ["--mode", "--keep-fp32", "--calibration-features"]),
        ("evaluate", "quala.config", "EvalConfig", ["--batch-size", "--max-seq-length", "--doc-stride"]),
    ],
)
def test_help_explains_every_generated_setting(command, module, cls, flags, capsys):
    """Each setting of the command's config dataclass is an option under its flag, with the field's help text."""
    import dataclasses
    import importlib

    text = _help_text(command, capsys)
    assert all(f" {flag} " in text for flag in flags), text
    config = getattr(importlib.import_module(module), cls)()
    sections = [config, *([config.data] if command == "evaluate" else [])]  # EvalConfig nests the window settings
    helps = [f.metadata["help"] for c in sections for f in dataclasses.fields(c) if "help" in f.metadata]
    assert len(helps) == len(flags)
    for help_text in helps:
        assert " ".join(help_text.split()) in text, help_text


def test_quantize_flags_reach_quantize_config(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """The generated flags set QuantizeConfig; the command's own options load the calibration questions."""
    from pathlib import Path

    import quala.quantize
    from quala.quantize import QuantizeConfig, QuantizeResult

    seen = {}

    def fake_quantize(model, data, output, config):
        seen.update(model=model, data=data, output=output, config=config)
        return QuantizeResult(Path(output), config.mode, [], 0, 0.0)

    monkeypatch.setattr(quala.quantize, "quantize", fake_quantize)
    out = tmp_path / "int8"
    code, _, err = run_cli(
        ["quantize", "--model", tiny_model_dir, "--output", out, "--mode", "static", "--keep-fp32", "none",
         "--calibration-features", "7", "--calibration-file", DEMO_DIR / "dev.json", "--calibration-articles", "0:1"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert seen["config"] == QuantizeConfig(mode="static", keep_fp32="none", calibration_features=7)
    assert (seen["output"], seen["model"].name) == (out, str(tiny_model_dir))
    assert (seen["data"].articles, len(seen["data"].examples)) == ("0:1", 18)
    code, _, err = run_cli(["quantize", "--model", tiny_model_dir, "--output", out], capsys)
    assert code == 0 and seen["config"] == QuantizeConfig() and seen["data"] is None, err


def test_evaluate_flags_reach_eval_config(tiny_model_dir, capsys, monkeypatch):
    """--batch-size and the window options set the EvalConfig that scores the questions."""
    import quala.evaluate
    from quala.config import EvalConfig
    from quala.evaluate import EvalResult

    seen = []

    def fake_evaluate(predictor, data, length_config, config, progress=False):
        seen.append(config)
        return EvalResult(0.0, 0.0, len(data.examples), None, 1, 0.1, 1.0, 1), {}

    monkeypatch.setattr(quala.evaluate, "evaluate", fake_evaluate)
    code, _, err = evaluate_cli(
        tiny_model_dir, capsys, "--batch-size", "4", "--max-seq-length", "192", "--doc-stride", "32"
    )
    assert code == 0, err
    assert (seen[0].batch_size, seen[0].data.max_seq_length, seen[0].data.doc_stride) == (4, 192, 32)
    code, _, err = evaluate_cli(tiny_model_dir, capsys)
    assert code == 0 and seen[1] == EvalConfig(), err


@pytest.mark.parametrize(
    "args, message",
    [
        (["quantize", "--keep-fp32", "all"], "--keep-fp32 must be one of"),
        (["quantize", "--mode", "turbo"], "unknown quantization mode"),
        (["quantize", "--calibration-features", "0"], "calibration features must be >= 1"),
        (["evaluate", "--doc-stride", "500"], "doc_stride must be in"),
        (["evaluate", "--max-seq-length", "16"], "max_seq_length must be >= 32"),
    ],
)
def test_bad_generated_setting_exits_2_with_one_line_before_any_work(args, message, tmp_path, capsys, monkeypatch):
    """A bad value of a generated option is the dataclass's one-line error, before a model is loaded."""
    import quala.engine
    import quala.model_dir

    def must_not_load(*a, **k):
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr(quala.engine, "load_predictor", must_not_load)
    monkeypatch.setattr(quala.model_dir.ModelDir, "resolve", must_not_load)
    command, *rest = args
    where = ["--output", tmp_path / "o"] if command == "quantize" else ["--data", DEMO_DIR / "dev.json"]
    code, out, err = run_cli([command, "--model", tmp_path / "nope", *where, *rest], capsys)
    assert code == 2 and out == "", err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
