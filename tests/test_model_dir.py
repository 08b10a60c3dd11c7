"""One home per concept: the model directory, the front record and search.json, the generated CLI options, the
HTTP budget derived from Budget, and the engine's own full-length fallback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import DEMO_DIR

from quala.errors import QualaError
from quala.front import FrontPoint, read_front, read_search, write_search
from quala.model_dir import ModelDir, read_manifest, write_manifest


def test_model_dir_reads_config_section_and_manifest_once(tiny_model_dir, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["quala"] = {"reference_length": 256, "length_rule": "clip"}
    (model / "config.json").write_text(json.dumps(config))
    md = ModelDir.resolve(str(model))
    assert (md.num_layers, md.reference_length, md.la_config.length_rule) == (4, 256, "clip")
    assert md.backend == "torch" and not md.is_onnx and not md.is_int8
    assert ModelDir.resolve(md) is md  # resolved once, then passed down as it is
    write_manifest(model, "quantize", backend="onnxruntime", dtype="int8")
    fresh = ModelDir.resolve(str(model))
    assert (fresh.backend, fresh.is_int8) == ("onnxruntime", True)
    assert read_manifest(model)["stage"] == "quantize"


def test_model_dir_bad_quala_section_names_the_key(tiny_model_dir, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["quala"] = {"reference_lenght": 256}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(QualaError, match="reference_lenght"):
        _ = ModelDir.resolve(str(model)).la_config


def test_front_round_trip_and_full_length_fallback(tmp_path):
    points = [FrontPoint([3, 2], 70.0, 50, 1.5, 60.0), FrontPoint([4, 4], 80.0, 90, None, 75.0)]
    assert read_search(tmp_path) is None
    assert read_front(tmp_path, 123) == [FrontPoint(None, None, 123, None)]
    write_search(tmp_path, {"front": [p.to_dict() for p in reversed(points)]})
    assert read_front(tmp_path, 123) == points  # cheapest first, every field kept
    record = json.loads((tmp_path / "search.json").read_text())["front"][0]
    assert list(record) == ["length_config", "f1", "exact_match", "macs", "latency_ms"]  # search.json's schema
    write_search(tmp_path, {"front": [{"f1": 1.0}]})
    with pytest.raises(QualaError, match="not a valid search result"):
        read_front(tmp_path, 123)


def test_http_budget_is_derived_from_budget():
    from quala.budget import PRESETS
    from quala.serve import BudgetIn

    schema = BudgetIn.model_json_schema()["properties"]
    assert set(schema) == {"macs_fraction", "max_latency_ms", "preset"}
    assert schema["preset"]["anyOf"][0]["enum"] == list(PRESETS)
    assert schema["macs_fraction"]["anyOf"][0] == {"exclusiveMinimum": 0, "maximum": 1, "type": "number"}


def test_budget_rejects_infinite_latency():
    from quala.budget import Budget

    with pytest.raises(QualaError, match="max_latency_ms must be > 0"):
        Budget(max_latency_ms=float("inf"))


def test_generated_options_nest_overrides():
    from quala.cli_options import config_options, overrides
    from quala.search import SearchConfig

    options = {o.name: o for o in config_options(SearchConfig)}
    assert {"latency_repeats", "evaluation_batch_size", "evaluation_data_max_seq_length", "budgets"} <= set(options)
    assert "min_length" not in options  # no help text: a YAML-only setting
    given = {"latency_repeats": 3, "evaluation_batch_size": 8, "budgets": "0.5,0.7", "seed": None}
    assert overrides(list(options.values()), given) == {
        "latency": {"repeats": 3},
        "evaluation": {"batch_size": 8},
        "budgets": "0.5,0.7",
    }


def test_train_config_accepts_a_preset_name_and_flags_override_it(monkeypatch, capsys, tmp_path):
    """`quala train --config NAME` reads the packaged preset; generated flags override it, and keep their names; the
    command hands the stage its four arguments: the model, the loaded data, the output directory and the settings."""
    from pathlib import Path

    import quala.train
    from quala.cli import main
    from quala.train_config import TrainConfig

    seen = {}

    def fake_train(model, data, output, config):
        seen.update(model=model, data=data, output=output, config=config)  # returns None: nothing to print

    monkeypatch.setattr(quala.train, "train", fake_train)
    train, dev = str(DEMO_DIR / "train.json"), str(DEMO_DIR / "dev.json")
    monkeypatch.setattr(
        "sys.argv",
        [
            "quala", "train", "--config", "train-squad-mini-lengthdrop", "--max-steps", "3", "--kd-alpha", "0.7",
            "--train-file", train, "--train-file", dev, "--eval-file", dev, "--eval-articles", "0:2",
            "--output-dir", str(tmp_path / "out"), "--no-length-drop", "--num-sandwich", "1",
        ],
    )  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    config = seen["config"]
    assert type(config) is TrainConfig  # the settings alone: no model, files or output directory
    assert (config.max_steps, config.kd.alpha, config.length_drop.num_sandwich) == (3, 0.7, 1)
    assert config.length_drop.enabled is False
    from quala.config import load_yaml
    from quala.pipeline import preset_path

    preset = load_yaml(preset_path("demo").parent / "train-squad-mini-lengthdrop.yaml")
    assert config.lr == preset["lr"] and config.threads == preset["threads"]  # from the preset, not defaults
    assert isinstance(seen["model"], ModelDir) and seen["model"].name == preset["model"]
    assert seen["output"] == Path(tmp_path / "out")
    data = seen["data"]
    assert [(d.source, d.articles) for d in data.train] == [(train, None), (dev, "0:32")]  # the preset's ranges
    assert (data.validation.source, data.validation.articles) == (dev, "0:2")


def test_onnx_full_length_fallback_is_the_length_adaptive_graph(tiny_model_dir, tmp_path):
    from quala.data import Example, collate, prepare_features
    from quala.engine import OnnxPredictor
    from quala.export import export_model

    predictor = OnnxPredictor(export_model(tiny_model_dir, tmp_path / "onnx").directory, threads=1)
    one_graph = predictor.without_full_graph()
    assert one_graph.full_session is None and predictor.full_session is not None
    assert one_graph.session is predictor.session  # sessions shared, not loaded again
    feats = prepare_features([Example("0", "Who wrote it?", "Ada wrote it in 1843.")], predictor.tokenizer)
    batch = collate(feats, [0])
    fallback = one_graph.logits(batch, None)
    explicit = predictor.logits(batch, [384] * 4)  # the length-adaptive graph, every token kept
    np.testing.assert_array_equal(fallback.start, explicit.start)
    np.testing.assert_array_equal(fallback.end, explicit.end)


def test_evaluate_stage_rows(tiny_model_dir, tmp_path):
    from quala.data import load_squad
    from quala.evaluate import EvaluateConfig, evaluate_stage

    config = EvaluateConfig(max_examples=3, length_configs=[[300, 200, 100, 50]], baselines="none")
    document = evaluate_stage(tiny_model_dir, load_squad(DEMO_DIR / "dev.json"), tmp_path / "ev", config)
    rows = document["rows"]
    assert [(r["model"], r["length_config"]) for r in rows] == [("fp32", None), ("fp32", [300, 200, 100, 50])]
    assert all(r["num_questions"] == 3 for r in rows)
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text()) == document
