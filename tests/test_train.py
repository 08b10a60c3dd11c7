"""Trainer: the stage API, resume equality, LengthDrop on a synthetic task, in-place distillation wiring, KD, CLI
errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEMO_DIR, ROOT, tiny_config
from safetensors.torch import load_file
from typer.testing import CliRunner

from quala.config import from_dict
from quala.data import Features, TrainData, collate, load_squad
from quala.errors import QualaError
from quala.model import LengthAdaptiveQA, load_tokenizer
from quala.train import Trainer, build_trainer
from quala.train_config import TrainConfig

DEMO_TRAIN = str(DEMO_DIR / "train.json")
DEMO_DEV = str(DEMO_DIR / "dev.json")


@pytest.fixture(scope="module")
def dropout_model_dir(tmp_path_factory, minilm_path) -> Path:
    """Tiny 2-layer BERT QA with dropout on (so resuming must restore the RNG) and the MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertForQuestionAnswering

    cfg = tiny_config("bert", layers=2)
    cfg.hidden_dropout_prob = 0.1
    cfg.attention_probs_dropout_prob = 0.1
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-dropout")
    LengthAdaptiveQA(BertForQuestionAnswering(cfg)).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(out)
    return out


def _config(**kw) -> TrainConfig:
    """Small, fast settings for the demo questions."""
    values = dict(
        max_train_examples=40,
        batch_size=4,
        max_steps=6,
        save_every=3,
        log_every=1,
        lr=1e-3,
        threads=1,
        progress=False,
        data={"max_seq_length": 128, "doc_stride": 64, "max_query_length": 32},
    )
    values.update(kw)
    return from_dict(TrainConfig, values)


def _demo(validation: bool = False) -> TrainData:
    """The demo training questions (and the demo dev questions as the validation split)."""
    return TrainData([load_squad(DEMO_TRAIN)], load_squad(DEMO_DEV) if validation else None)


def _trainer(model_dir: Path, out: Path, validation: bool = False, **kw) -> Trainer:
    """A trainer of ``model_dir`` on the demo questions, writing to ``out``."""
    return build_trainer(model_dir, _demo(validation), out, _config(**kw))


def test_train_stage_takes_model_data_output_and_settings(tiny_model_dir, tmp_path):
    """train(model, data, output, config) trains a tiny random model: the weights move, the manifest names the model
    and the data it was given, and the saved quala_config.yaml holds the settings only."""
    import yaml

    from quala.model_dir import ModelDir
    from quala.train import TrainResult, train

    out = tmp_path / "run"
    with pytest.raises(QualaError, match="no training data"):
        train(tiny_model_dir, TrainData([]), out, _config())
    assert not out.exists()
    settings = _config(max_steps=2, max_eval_examples=4)
    result = train(ModelDir.resolve(tiny_model_dir), _demo(validation=True), out, settings)
    assert isinstance(result, TrainResult) and (result.steps, result.output_dir) == (2, str(out))
    assert result.best_f1 is not None and result.best_step == 2
    start, after = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert after.keys() == start.keys() and any(not torch.equal(start[k], after[k]) for k in start)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source_model"] == str(tiny_model_dir)
    assert manifest["train_data"] == [{"file": DEMO_TRAIN, "articles": None, "num_questions": 237}]
    assert manifest["eval_data"] == {"file": DEMO_DEV, "articles": None, "num_questions": 4}  # max_eval_examples
    resolved = yaml.safe_load((out / "quala_config.yaml").read_text())
    assert resolved["max_steps"] == 2 and not {"model", "output_dir", "train_files", "eval_file"} & set(resolved)


def test_only_the_main_process_returns_the_summary(tmp_path, monkeypatch):
    """Under accelerate launch / torchrun every process trains; only the main one logs and returns the summary."""
    from types import SimpleNamespace

    import quala.train

    data, settings, calls = _demo(), _config(), []
    for main in (True, False):
        logged: list[dict] = []
        trainer = SimpleNamespace(
            accelerator=SimpleNamespace(is_main_process=main),
            train=lambda: quala.train.TrainResult(3, None, None, 1.0, 2.0, str(tmp_path)),
            _log=logged.append,
        )
        monkeypatch.setattr(quala.train, "build_trainer", lambda *args, t=trainer: calls.append(args) or t)
        result = quala.train.train("m", data, tmp_path, settings)
        assert (result is not None, len(logged)) == ((True, 1) if main else (False, 0))
    assert calls == [("m", data, tmp_path, settings)] * 2


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the trainer may catch it."""


def test_killed_and_resumed_run_ends_with_the_same_weights(dropout_model_dir, tmp_path, monkeypatch):
    length_drop = {"enabled": True, "num_sandwich": 1, "layer_drop_prob": 0.3}
    straight = _trainer(dropout_model_dir, tmp_path / "a", length_drop=length_drop)
    straight.train()
    # killed during step 5: the checkpoint holds step 3, step 4 is lost and must be redone identically
    crashed = _trainer(dropout_model_dir, tmp_path / "b", length_drop=length_drop)
    real = Trainer._micro_batch

    def dies_in_step_5(self, *args, **kwargs):
        if self.step == 4:
            raise Killed
        return real(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_micro_batch", dies_in_step_5)
        with pytest.raises(Killed):
            crashed.train()
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-3"]
    with pytest.raises(QualaError, match="--resume"):  # never silently overwrite an earlier run
        _trainer(dropout_model_dir, tmp_path / "b", length_drop=length_drop)
    resumed = _trainer(dropout_model_dir, tmp_path / "b", length_drop=length_drop, resume=True)
    resumed.train()
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    start = load_file(str(dropout_model_dir / "model.safetensors"))
    assert any(not torch.equal(start[k], a[k]) for k in a)  # it did train
    # the output directory loads like any model, and says what produced it
    from quala.engine import load_predictor

    predictor = load_predictor(tmp_path / "b")
    assert predictor.model_config.num_hidden_layers == 2
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["stage"] == "train" and manifest["steps"] == 6 and manifest["length_drop"] is True
    assert (tmp_path / "b" / "quala_config.yaml").is_file()
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert any("smallest" in r and "random" in r and "examples_per_s" in r for r in lines)


def _synthetic(n: int, seed: int) -> Features:
    """Random token rows of varied length; the answer span is marked by tokens 5000 (start) and 5001 (end)."""
    rng = np.random.default_rng(seed)
    ids, masks, starts, ends = [], [], [], []
    for _ in range(n):
        length = int(rng.integers(16, 48))
        row = rng.integers(1000, 2000, size=length)
        row[0] = 101
        s = int(rng.integers(1, length - 4))
        e = int(rng.integers(s + 1, min(length, s + 4)))
        row[s], row[e] = 5000, 5001
        ids.append(row.astype(np.int64))
        masks.append(np.ones(length, dtype=np.int64))
        starts.append(s)
        ends.append(e)
    return Features(
        input_ids=ids,
        attention_mask=masks,
        token_type_ids=[np.zeros_like(x) for x in ids],
        offsets=[[None] * len(x) for x in ids],
        example_index=np.arange(n),
        start_positions=np.asarray(starts),
        end_positions=np.asarray(ends),
    )


def _losses(model: LengthAdaptiveQA, features: Features, length_config) -> float:
    from quala.objectives import SpanLoss

    batch = {k: torch.from_numpy(v) for k, v in collate(features, list(range(len(features)))).items()}
    model.eval()
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], length_config=length_config)
    return SpanLoss()(
        out.start_logits,
        out.end_logits,
        batch["start_positions"],
        batch["end_positions"],
        batch["attention_mask"],
    ).loss.item()


def _memory_config(**kw) -> TrainConfig:
    """Config for a Trainer built directly on in-memory features (no files are read)."""
    values = dict(
        threads=1,
        progress=False,
        warmup_ratio=0.0,
        save_every=1000,
    )
    values.update(kw)
    return from_dict(TrainConfig, values)


def test_length_drop_trains_the_smallest_sub_model_better_than_plain_fine_tuning(tmp_path, minilm_path):
    """Control arm: the same model, data, seed and steps without LengthDrop. Both lower the full model's loss
    and (plain fine-tuning too, which is why a falling loss alone proves nothing) the smallest sub-model's;
    LengthDrop must leave the smallest sub-model better and closer to the full model."""
    from transformers import BertForQuestionAnswering

    train, held_out = _synthetic(192, seed=0), _synthetic(64, seed=1)
    results = {}
    for arm, enabled in (("lengthdrop", True), ("plain", False)):
        torch.manual_seed(0)
        model = LengthAdaptiveQA(BertForQuestionAnswering(tiny_config("bert", layers=3)))
        length_drop = {"enabled": enabled, "num_sandwich": 2, "layer_drop_prob": 0.2}
        config = _memory_config(batch_size=16, epochs=3, lr=2e-3, log_every=6, length_drop=length_drop)
        trainer = Trainer(model, load_tokenizer(minilm_path), train, tmp_path / arm, config)
        smallest = trainer.sampler.smallest().length_config
        before = (_losses(model, held_out, None), _losses(model, held_out, smallest))
        trainer.train()
        results[arm] = (before, (_losses(model, held_out, None), _losses(model, held_out, smallest)))
    for arm, (before, after) in results.items():
        assert after[0] < 0.6 * before[0] and after[1] < 0.6 * before[1], (arm, results)
    assert results["lengthdrop"][0] == results["plain"][0]  # same start
    (_, (ld_full, ld_small)), (_, (plain_full, plain_small)) = results["lengthdrop"], results["plain"]
    assert ld_small < 0.97 * plain_small, results
    assert ld_small - ld_full < 0.85 * (plain_small - plain_full), results


def test_trainer_inplace_distillation_uses_end_logits(tmp_path, minilm_path):
    """The sub-model loss the trainer backpropagates changes when only the full model's end logits change."""
    from transformers import BertForQuestionAnswering

    torch.manual_seed(0)
    model = LengthAdaptiveQA(BertForQuestionAnswering(tiny_config("bert", layers=2)))
    features = _synthetic(8, seed=2)
    config = _memory_config(batch_size=8, length_drop={"enabled": True})
    trainer = Trainer(model, load_tokenizer(minilm_path), features, tmp_path / "x", config)
    batch = trainer._tensors(list(range(8)))
    with torch.no_grad():
        full = trainer.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        sub = trainer.sampler.smallest()
        base = trainer._sub_loss(batch, sub, full)
        full.end_logits = full.end_logits + torch.randn_like(full.end_logits)
        moved = trainer._sub_loss(batch, sub, full)
    assert not torch.isclose(base, moved)


def test_distillation_with_intermediate_layers_runs_and_resumes(tmp_path, tiny_model_dir, minilm_path):
    """2-layer, 32-wide student from a 4-layer, 48-wide teacher: projection trained and checkpointed."""
    from transformers import AutoTokenizer, BertForQuestionAnswering

    cfg = tiny_config("bert", layers=4)
    cfg.hidden_size, cfg.intermediate_size = 48, 96
    teacher = tmp_path / "teacher"
    LengthAdaptiveQA(BertForQuestionAnswering(cfg)).save_pretrained(teacher)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(teacher)
    student = tmp_path / "student"
    LengthAdaptiveQA(BertForQuestionAnswering(tiny_config("bert", layers=2))).save_pretrained(student)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(student)
    kd = {"teacher": str(teacher), "alpha": 0.5, "temperature": 2.0, "intermediate": True}
    trainer = _trainer(student, tmp_path / "out", kd=kd, max_steps=2, save_every=1)
    assert trainer.intermediate is not None and trainer.intermediate.layer_map == [2, 4]
    trainer.train()
    assert (tmp_path / "out" / "checkpoints" / "step-2" / "objectives.safetensors").is_file()
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["kd"]) and r["intermediate"] > 0 for r in lines if "kd" in r)
    resumed = _trainer(student, tmp_path / "out", kd=kd, max_steps=3, save_every=1, resume=True)
    resumed.train()
    assert resumed.step == 3


# ------------------------------------------------------------------------------------------- bad input
def _run_cli(args: list[str]):
    from quala.cli import app

    return CliRunner().invoke(app, ["train", *args])


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--num-sandwich", "-1"], "num_sandwich"),
        (["--length-drop-bound", "1.5"], "bound"),
        (["--batch-size", "0"], "batch_size"),
        (["--mixed-precision", "fp8"], "mixed_precision"),
    ],
)
def test_impossible_options_fail_before_training(tmp_path, tiny_model_dir, extra, message):
    out = tmp_path / "out"
    result = _run_cli(["--model", str(tiny_model_dir), "--train-file", DEMO_TRAIN, "--output-dir", str(out), *extra])
    assert isinstance(result.exception, QualaError) and message in str(result.exception)
    assert not out.exists()


def test_missing_inputs_fail_before_training(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    r = _run_cli(["--model", str(tiny_model_dir), "--train-file", "nope.json", "--output-dir", str(out)])
    assert isinstance(r.exception, QualaError) and "nope.json" in str(r.exception)
    r = _run_cli(["--model", str(tmp_path / "missing"), "--train-file", DEMO_TRAIN, "--output-dir", str(out)])
    assert isinstance(r.exception, QualaError) and "missing" in str(r.exception)
    assert not out.exists()


def test_teacher_with_another_vocabulary_is_rejected(tmp_path, tiny_model_dir, minilm_path):
    from transformers import AutoTokenizer

    teacher = tmp_path / "teacher"
    LengthAdaptiveQA.from_pretrained(tiny_model_dir).save_pretrained(teacher)
    tok = AutoTokenizer.from_pretrained(minilm_path)
    tok.add_tokens(["zzqquux"])
    tok.save_pretrained(teacher)
    out = tmp_path / "out"
    r = _run_cli(
        [
            "--model",
            str(tiny_model_dir),
            "--train-file",
            DEMO_TRAIN,
            "--output-dir",
            str(out),
            "--teacher",
            str(teacher),
        ]
    )
    assert isinstance(r.exception, QualaError) and "vocabulary" in str(r.exception)
    assert not out.exists()


def test_cli_error_is_one_line_with_exit_code_2(tmp_path, tiny_model_dir):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "quala.cli",
            "train",
            "--model",
            str(tiny_model_dir),
            "--train-file",
            DEMO_TRAIN,
            "--output-dir",
            str(tmp_path / "o"),
            "--num-sandwich",
            "-1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "num_sandwich" in proc.stderr


def test_cli_train_end_to_end_with_yaml_and_overrides(tmp_path, tiny_model_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "batch_size: 4\nmax_steps: 2\nlr: 0.001\nthreads: 1\nmax_train_examples: 16\n"
        "data: {max_seq_length: 128, doc_stride: 64, max_query_length: 32}\n"
    )
    out = tmp_path / "run"
    r = _run_cli(
        [
            "--config",
            str(cfg),
            "--model",
            str(tiny_model_dir),
            "--train-file",
            DEMO_TRAIN,
            "--eval-file",
            DEMO_DEV,
            "--max-eval-examples",
            "8",
            "--output-dir",
            str(out),
            "--max-steps",
            "3",
            "--no-progress",
        ]
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["best_f1"] is not None
    import yaml

    resolved = yaml.safe_load((out / "quala_config.yaml").read_text())
    assert resolved["max_steps"] == 3 and resolved["batch_size"] == 4  # CLI beats YAML, YAML beats defaults
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "eval_f1" in x]
    assert evals and evals[-1]["eval_questions"] == 8


def test_patience_stops_after_validations_without_improvement(dropout_model_dir, tmp_path, monkeypatch):
    """Scripted validation F1 10, 20, 15, 15, ...: best at step 2, patience 2 -> stop at step 4 of 12, keep step 2."""
    import quala.evaluate as evaluate_module

    scores = iter([10.0, 20.0, 15.0, 15.0, 15.0, 15.0, 15.0, 15.0, 15.0, 15.0, 15.0, 15.0])

    class Score:
        def __init__(self):
            self.f1 = next(scores)
            self.exact_match, self.num_questions, self.seconds = 0.0, 1, 0.0

    monkeypatch.setattr(evaluate_module, "evaluate", lambda *a, **k: (Score(), None))
    scripted = dict(validation=True, max_eval_examples=4, eval_every=1, max_steps=12, save_every=5)
    result = _trainer(dropout_model_dir, tmp_path / "run", patience=2, **scripted).train()
    assert (result.steps, result.best_step, result.best_f1) == (4, 2, 20.0)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_f1" in r] == [1, 2, 3, 4]
    assert records[-1] == {"step": 4, "early_stop": True, "best_step": 2}
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-4"]
    # without patience the same scripted run goes to the end (control arm)
    scores = iter([10.0, 20.0] + [15.0] * 10)
    assert _trainer(dropout_model_dir, tmp_path / "ctrl", **scripted).train().steps == 12


def test_bad_patience_is_rejected():
    with pytest.raises(QualaError, match="patience"):
        TrainConfig(patience=0)


def test_frozen_word_embeddings_stay_put_and_compiled_blocks_train(dropout_model_dir, tmp_path):
    """freeze_word_embeddings: the word embeddings are bit-identical after training while the rest moved;
    compile: the run trains and saves the same parameter names as an eager run."""
    _trainer(dropout_model_dir, tmp_path / "frozen", freeze_word_embeddings=True, compile=True, max_steps=3).train()
    start = load_file(str(dropout_model_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "frozen" / "model.safetensors"))
    assert after.keys() == start.keys()
    word = [k for k in after if k.endswith("word_embeddings.weight")]
    assert len(word) == 1 and torch.equal(after[word[0]], start[word[0]])
    assert not torch.equal(
        after[next(k for k in after if "intermediate.dense.weight" in k)],
        start[next(k for k in start if "intermediate.dense.weight" in k)],
    )
