"""The main job: a small slice of the demo preset end to end (packaged MiniLM, shipped demo data), and resume."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml
from conftest import run_cli

from quala.errors import QualaError
from quala.pipeline import STAGES, preset_path

pytestmark = pytest.mark.integration


def slice_of_demo(tmp_path):
    """The demo preset with every stage shrunk to a few steps (same code paths, CI-sized)."""
    config = yaml.safe_load(preset_path("demo").read_text())
    config["finetune"].update(max_steps=3, epochs=1)
    config["lengthdrop"].update(max_steps=2, epochs=1)
    config["search"].update(population=3, iterations=1, mutations=2, crossovers=2, max_examples=16)
    config["evaluate"] = {"max_examples": 16}
    config["benchmark"].update(max_examples=4)
    path = tmp_path / "demo-slice.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_demo_pipeline_slice_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        ["pipeline", "--config", slice_of_demo(tmp_path), "--output-dir", out, "--no-progress"], capsys
    )
    assert code == 0, err
    state = json.loads((out / "pipeline.json").read_text())
    assert list(state["completed"]) == list(STAGES)
    for stage in ("finetune", "lengthdrop", "search", "quantize", "evaluate", "benchmark", "report"):
        assert (out / stage).is_dir()
    assert (out / "quala_config.yaml").is_file()
    # the search front travelled with the model and the quantized model
    search = json.loads((out / "lengthdrop" / "search.json").read_text())
    assert any(p["length_config"] is None or len(p["length_config"]) == 6 for p in search["front"])
    report = (out / "report" / "REPORT.md").read_text()
    assert "tokens per layer" in report and "say nothing about accuracy" in report
    rows = json.loads((out / "report" / "report.json").read_text())["rows"]
    assert {r["model"] for r in rows} >= {"fp32", "int8", "int8, windows 256/128", "int8, first 4 layers"}
    assert "## Token dropping against the simple alternatives" in report and "- serving, batch 1: " in report
    bench = json.loads((out / "benchmark" / "benchmark.json").read_text())
    assert {r["name"] for r in bench["rows"] if r["kind"] == "baseline"} == {
        f"MiniLM int8 ONNX Runtime, {b}"
        for b in ("windows 256/128", "windows 192/64", "first 4 layers", "first 5 layers")
    }
    assert (out / "report" / "pareto.png").is_file()
    # a second run skips every completed stage
    code, stdout, err = run_cli(
        ["pipeline", "--config", slice_of_demo(tmp_path), "--output-dir", out, "--no-progress"], capsys
    )
    assert code == 0, err
    assert stdout.count("complete, skipped") == len(STAGES)
    # the lead's re-benchmark of a finished run: only benchmark and report, on the earlier stages' models
    code, stdout, err = run_cli(
        [
            "pipeline",
            "--config",
            slice_of_demo(tmp_path),
            "--output-dir",
            out,
            "--stages",
            "benchmark,report",
            "--rerun",
            "benchmark,report",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    models = json.loads((out / "benchmark" / "benchmark.json").read_text())["sample"]["models"]
    assert models["model"] == str(out / "lengthdrop") and models["int8"] == str(out / "quantize")


def test_pipeline_bad_input(tmp_path, capsys):
    code, _, err = run_cli(["pipeline", "--preset", "nope", "--output-dir", tmp_path], capsys)
    assert code == 2 and "unknown preset" in err
    code, _, err = run_cli(["pipeline", "--output-dir", tmp_path], capsys)
    assert code == 2 and "exactly one of" in err
    code, _, err = run_cli(["pipeline", "--preset", "demo", "--output-dir", tmp_path, "--stages", "train"], capsys)
    assert code == 2 and "unknown stage" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("finetune: {lr: -1}\n")
    code, _, err = run_cli(["pipeline", "--config", bad, "--output-dir", tmp_path], capsys)
    assert code == 2 and "lr must be > 0" in err


def test_pipeline_several_processes_run_only_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_cli(["pipeline", "--preset", "demo", "--output-dir", tmp_path / "run"], capsys)
    assert code == 2 and "--stages finetune,lengthdrop" in err and "search,quantize" in err
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_training_stages_call_the_train_stage_with_model_data_and_output(tmp_path, monkeypatch):
    """finetune and lengthdrop call train(model, data, output, config): the start model, the run's training and
    validation questions and the stage directory are arguments; resume, progress and LengthDrop stay settings."""
    import quala.train
    from quala.pipeline import Pipeline, load_pipeline_config, resolve_path
    from quala.train import TrainResult

    calls = []

    def fake_train(model, data, output, config):
        calls.append((model, data, output, config))
        output.mkdir(parents=True)
        return TrainResult(1, 50.0, 1, 0.1, 1.0, str(output))

    monkeypatch.setattr(quala.train, "train", fake_train)
    root = tmp_path / "run"
    settings = load_pipeline_config(None, "demo", {"output_dir": str(root), "stages": ["finetune", "lengthdrop"]})
    Pipeline(settings).run(progress=False)
    (ft_model, ft_data, ft_out, ft_cfg), (ld_model, ld_data, ld_out, ld_cfg) = calls
    assert (ft_model, ld_model) == ("packaged:minilm", str(root / "finetune"))  # LengthDrop continues the fine-tune
    assert (ft_out, ld_out) == (root / "finetune", root / "lengthdrop")
    for data in (ft_data, ld_data):
        assert [(d.source, d.articles) for d in data.train] == [(resolve_path("quala:assets/demo/train.json"), None)]
        assert data.validation.source == resolve_path("quala:assets/demo/dev.json")
    assert (ft_cfg.length_drop.enabled, ld_cfg.length_drop.enabled) == (False, True)
    assert (ft_cfg.resume, ft_cfg.progress, ft_cfg.lr, ld_cfg.max_steps) == (False, False, 1e-4, 8)  # the preset's


def test_other_processes_of_a_multi_process_run_go_on_to_the_next_training_stage(tmp_path, monkeypatch):
    """Under accelerate launch every process runs the training stages and train() returns None outside the main
    process: such a process goes on to LengthDrop (the main one waits for it there) and leaves the state alone."""
    import quala.train
    from quala.pipeline import Pipeline, load_pipeline_config

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    calls = []
    monkeypatch.setattr(quala.train, "train", lambda model, data, output, config: calls.append(output))
    root = tmp_path / "run"
    settings = load_pipeline_config(None, "demo", {"output_dir": str(root), "stages": ["finetune", "lengthdrop"]})
    state = Pipeline(settings).run(progress=False)
    assert calls == [root / "finetune", root / "lengthdrop"] and list(state["completed"]) == ["finetune", "lengthdrop"]
    assert not (root / "pipeline.json").exists()  # the main process records the state


def test_report_comparison_section_sets_clip_beside_ratio():
    from quala.report import comparison_section

    card = [315, 251, 242, 159, 142, 33]

    def bench_row(protocol, bs, name, lengths, f1, delta, ms, speedup):
        return {
            "protocol": protocol,
            "batch_size": bs,
            "name": name,
            "length_config": lengths,
            "f1": f1,
            "f1_delta_vs_fp32": delta,
            "latency_ms_median": ms,
            "speedup_vs_bert_base": speedup,
        }

    bench = {
        "sample": {"paper_config": card},
        "verdicts": {"serving, batch 1": "front is dominated by MiniLM int8 between 25.5 and 30.3 ms"},
        "rows": [
            bench_row("serving", 1, "LA int8 (model card config)", card, 40.1, -22.04, 20.0, 15.0),
            bench_row("papers", 32, "BERT-base", None, None, None, 666.7, 1.0),
            bench_row("papers", 32, "LA int8 (model card config)", card, 61.2, -0.96, 30.0, 22.22),
        ],
    }
    text = "\n".join(comparison_section(bench))
    assert "- serving, batch 1: front is dominated by MiniLM int8 between 25.5 and 30.3 ms." in text
    assert "| BERT-base | full | – | – | 666.7 | 1.00 |" in text
    assert "| LA int8 (model card config) | 315,251,242,159,142,33 | 61.20 | -0.96 | 30.0 | 22.22 |" in text
    assert (
        "F1 61.20 (-0.96 vs fp32) under the papers' `clip` rule on inputs padded to 384, and F1 40.10 (-22.04) "
        "under the `ratio` rule"
    ) in text


def test_report_operating_point_is_cheapest_int8_config_within_one_f1():
    from quala.report import headline

    def row(model, lengths, f1, macs, ms):
        return {
            "model": model,
            "length_config": lengths,
            "f1": f1,
            "macs": macs,
            "latency_ms": ms,
            "speedup_vs_bert_base": 800 / ms,
            "speedup_vs_minilm_fp32": 100 / ms,
        }

    rows = [
        row("fp32", None, 80.0, 100, 100.0),
        row("int8", None, 79.8, 100, 40.0),
        row("int8", [3, 2], 79.1, 70, 25.0),  # within 1 F1: the operating point
        row("int8", [2, 1], 78.9, 50, 20.0),  # 1.1 below: too inaccurate
        row("int8", [3, 3], 79.5, 90, 30.0),  # within, but dearer
        row("fp32", [2, 1], 79.9, 50, 60.0),  # fp32 rows never qualify
    ]
    top = headline(rows)
    assert top["length_config"] == [3, 2] and top["speedup_vs_int8_full_length"] == 1.6
    assert top["speedup_vs_minilm_fp32"] == 4.0 and top["speedup_vs_bert_base"] == 32.0
    assert headline([r for r in rows if r["length_config"] != [3, 2] and r["length_config"] != [3, 3]]) is None


def test_spread_configs_keeps_ends_and_spreads_over_macs():
    from quala.pipeline import spread_configs

    points = [(m, [m]) for m in (10, 11, 12, 20, 30, 31, 40)]
    assert spread_configs(points, None) == [[m] for m, _ in points]
    assert spread_configs(points, 10) == [[m] for m, _ in points]
    assert spread_configs(points, 4) == [[10], [20], [30], [40]]  # targets 10, 20, 30, 40
    assert spread_configs(points, 1) == [[10]]
    assert len(spread_configs(points, 6)) == 6  # never picks a point twice


@pytest.mark.parametrize(
    "prefix, module, cls",
    [
        ("pipeline-", "quala.pipeline", "PipelineConfig"),
        ("train-", "quala.train_config", "TrainRun"),  # stand-alone runs: inputs and settings
        ("search-", "quala.search", "SearchConfig"),
    ],
)
def test_every_packaged_config_resolves(prefix, module, cls):
    """Each YAML in configs/ is valid for its dataclass (unknown keys and bad values raise)."""
    import importlib

    from quala.config import resolve

    configs = sorted((preset_path("demo").parent).glob(f"{prefix}*.yaml"))
    assert configs
    for path in configs:
        resolve(getattr(importlib.import_module(module), cls), path)


def test_learning_curves_chain_stages_and_survive_a_resume(tmp_path):
    """Steps and core-hours add up across stages; a resumed run's restarted clock does not subtract time."""
    import json

    from quala.report import learning_curves, plot_learning_curves

    ft, ld = tmp_path / "ft.jsonl", tmp_path / "ld.jsonl"
    ft.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"step": 10, "loss": 3.0, "elapsed_s": 1800.0},
                {"step": 10, "eval_f1": 40.0, "eval_questions": 300},
                {"step": 20, "loss": 2.0, "elapsed_s": 3600.0},
                # resumed: the clock restarts at 900 s after the checkpoint at step 20
                {"step": 30, "loss": 1.5, "elapsed_s": 900.0},
                {"step": 30, "eval_f1": 55.0, "eval_questions": 300},
            ]
        )
        + "\n"
    )
    ld.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"step": 5, "loss": 1.0, "elapsed_s": 3600.0},
                {"step": 5, "eval_f1": 56.0, "eval_f1_smallest": 30.0, "smallest_length_config": [3, 2]},
            ]
        )
        + "\n"
    )
    curves = learning_curves(
        {"finetune": ft, "lengthdrop": ld, "missing": tmp_path / "no.jsonl"}, {"finetune": 2, "lengthdrop": 1}
    )
    # finetune: 1800 + 1800 + 900 s on 2 threads = 2.5 core-hours; lengthdrop: 3600 s on 1 thread = 1.0
    assert [(p["stage"], p["step"], p["core_hours"], p["f1"], p["f1_smallest"]) for p in curves["points"]] == [
        ("finetune", 10, 1.0, 40.0, None),
        ("finetune", 30, 2.5, 55.0, None),
        ("lengthdrop", 35, 3.5, 56.0, 30.0),
    ]
    assert curves["total_core_hours"] == 3.5
    assert plot_learning_curves(curves, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_rerun_redoes_the_stage_and_every_later_one(tmp_path, monkeypatch):
    """--rerun finetune must train again (not resume its final checkpoint) and redo everything built on it."""
    from quala.pipeline import Pipeline, load_pipeline_config

    calls: list[str] = []

    def fake(stage):
        def run(self, progress):
            calls.append(stage)
            out = self.dir(stage)
            assert not (out / "old-output").exists(), f"{stage} ran on top of its previous output"
            out.mkdir(parents=True, exist_ok=True)
            (out / "old-output").write_text(stage)
            return {}

        return run

    for stage in STAGES:
        monkeypatch.setattr(Pipeline, f"_{stage}", fake(stage))
    settings = load_pipeline_config(None, "demo", {"output_dir": str(tmp_path / "run")})
    Pipeline(settings).run(progress=False)
    assert calls == list(STAGES)
    calls.clear()
    Pipeline(load_pipeline_config(None, "demo", {"output_dir": str(tmp_path / "run")})).run(progress=False)
    assert calls == []  # resume: all complete
    state = Pipeline(load_pipeline_config(None, "demo", {"output_dir": str(tmp_path / "run")})).run(
        progress=False, rerun=("lengthdrop",)
    )
    assert calls == list(STAGES[1:])  # finetune kept, lengthdrop and everything after it redone
    assert list(state["completed"]) == list(STAGES)
    calls.clear()
    Pipeline(load_pipeline_config(None, "demo", {"output_dir": str(tmp_path / "run")})).run(
        progress=False, rerun=("benchmark",)
    )
    assert calls == ["benchmark", "report"]


def test_rerun_of_a_directory_without_a_run_says_so(tmp_path, capsys):
    """A mistyped --output-dir with --rerun used to start a fresh run there (printing "previous output removed")
    and fail in a later stage with an unrelated error; it now stops before touching anything."""
    from quala.pipeline import Pipeline, load_pipeline_config

    settings = load_pipeline_config(None, "demo", {"output_dir": str(tmp_path / "typo")})
    with pytest.raises(QualaError, match=r"typo holds no pipeline run \(pipeline.json not found\); check --output-dir"):
        Pipeline(settings).run(progress=False, rerun=("quantize",))
    assert not (tmp_path / "typo").exists() and "removed" not in capsys.readouterr().out


def test_lengthdrop_alone_starts_from_the_finetune_stage_of_an_earlier_run(tmp_path, monkeypatch):
    """`--stages lengthdrop,...` after a run that completed finetune must train on the fine-tuned model, not on
    the base model named in the config (it did, and started LengthDrop from an untrained span head)."""
    from quala.pipeline import Pipeline, load_pipeline_config

    started_from: list[str] = []
    monkeypatch.setattr(
        Pipeline, "_train", lambda self, section, model, out, progress, length_drop: started_from.append(model) or {}
    )
    root = tmp_path / "run"
    root.mkdir()
    (root / "pipeline.json").write_text(json.dumps({"completed": {"finetune": {"seconds": 1}}}))
    settings = load_pipeline_config(None, "demo", {"output_dir": str(root), "stages": ["lengthdrop"]})
    Pipeline(settings).run(progress=False)
    assert started_from == [str(root / "finetune")]
    # without a completed fine-tuning stage, LengthDrop starts from the configured model
    other = load_pipeline_config(None, "demo", {"output_dir": str(tmp_path / "fresh"), "stages": ["lengthdrop"]})
    Pipeline(other).run(progress=False)
    assert started_from[1] != str(tmp_path / "fresh" / "finetune")


def test_search_stage_searches_from_the_lengthdrop_stages_explicit_smallest(tmp_path, monkeypatch):
    """A late-drop LengthDrop model is searched down to the smallest sub-model it was trained on; an explicit
    search setting wins, and a run without LengthDrop keeps the ratio bound's floor."""
    import quala.search
    from quala.pipeline import Pipeline, load_pipeline_config

    seen: list = []

    def fake_search(model, data, output, config, **kwargs):
        seen.append(config.smallest)
        return SimpleNamespace(completed=True, num_evaluations=2), {"front": []}

    monkeypatch.setattr(quala.search, "search", fake_search)
    monkeypatch.setattr(Pipeline, "trained_model", property(lambda self: None))
    monkeypatch.setattr(Pipeline, "validation_data", lambda self: None)
    floor = {"lengthdrop": {"length_drop": {"smallest": [384, 384, 160, 64, 32, 16]}}}
    for name, extra, completed in [
        ("ld", {}, {"lengthdrop": {"seconds": 1}}),
        ("explicit", {"search": {"smallest": [384, 300, 200, 100, 50, 20]}}, {"lengthdrop": {"seconds": 1}}),
        ("no-ld", {}, {"finetune": {"seconds": 1}}),
    ]:
        root = tmp_path / name
        root.mkdir()
        (root / "pipeline.json").write_text(json.dumps({"completed": completed}))
        overrides = {"output_dir": str(root), "stages": ["search"], **floor, **extra}
        Pipeline(load_pipeline_config(None, "demo", overrides)).run(progress=False)
    assert seen == [[384, 384, 160, 64, 32, 16], [384, 300, 200, 100, 50, 20], None]
