"""Integration: the packaged MiniLM (fresh span head) evaluated end to end on the SQuAD-mini validation split."""

from __future__ import annotations

import json

import pytest
from conftest import SQUAD_DEV, needs_shared_data, run_cli

from quala.metric import references_from_squad_json, squad_v1_scores

pytestmark = [pytest.mark.integration, needs_shared_data]


def test_evaluate_packaged_minilm_on_squad_mini_validation(tmp_path, capsys):
    pred, metrics = tmp_path / "PRED.json", tmp_path / "METRICS.json"
    code, out, err = run_cli(
        ["evaluate", "--model", "packaged:minilm", "--data", SQUAD_DEV, "--articles", "32:40",
         "--predictions-out", pred, "--metrics-out", metrics, "--no-progress"],
        capsys,
    )
    assert code == 0, err
    result = json.loads(metrics.read_text())
    assert result["num_questions"] == 1746
    assert result["macs"] == 4756635648  # MiniLM-L6-H384 at L = 384
    # the project's metric recomputed from PRED.json (official format) gives the same scores
    gold = json.loads(SQUAD_DEV.read_text())
    gold["data"] = gold["data"][32:40]
    scores = squad_v1_scores(json.loads(pred.read_text()), references_from_squad_json(gold))
    assert scores.exact_match == pytest.approx(result["exact_match"])
    assert scores.f1 == pytest.approx(result["f1"])
    assert json.loads(out.strip().splitlines()[-1])["f1"] == result["f1"]
