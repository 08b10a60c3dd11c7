"""CLI: evaluate/answer/macs happy paths on a tiny model, and bad input -> exit 2 with one clear line."""

from __future__ import annotations

import json

import pytest
from conftest import DEMO_DIR, run_cli

from quala.metric import references_from_squad_json, squad_v1_scores


def test_evaluate_writes_metrics_and_official_predictions(tiny_model_dir, tmp_path, capsys):
    pred, metrics = tmp_path / "pred.json", tmp_path / "metrics.json"
    code, out, err = run_cli(
        ["evaluate", "--model", tiny_model_dir, "--data", DEMO_DIR / "dev.json", "--articles", "0:2",
         "--length-config", "300,200,100,50", "--predictions-out", pred, "--metrics-out", metrics, "--no-progress"],
        capsys,
    )
    assert code == 0, err
    printed = json.loads(out.strip().splitlines()[-1])
    for key in ("exact_match", "f1", "num_questions", "length_config", "macs", "seconds"):
        assert key in printed
    assert printed["length_config"] == [300, 200, 100, 50]
    assert json.loads(metrics.read_text())["f1"] == printed["f1"]
    predictions = json.loads(pred.read_text())
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in predictions.items())
    gold = json.loads((DEMO_DIR / "dev.json").read_text())
    gold["data"] = gold["data"][0:2]
    scores = squad_v1_scores(predictions, references_from_squad_json(gold))
    assert scores.num_questions == printed["num_questions"] == len(predictions)
    assert scores.f1 == pytest.approx(printed["f1"]) and scores.exact_match == pytest.approx(printed["exact_match"])


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
