"""Data pipeline: loading and article selection, windowed features (BERT and RoBERTa), post-processing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DEMO_DIR, SQUAD_DEV, needs_shared_data

from quala.config import DataConfig
from quala.data import (
    Example,
    collate,
    length_grouped_batches,
    load_squad,
    parse_articles,
    postprocess,
    prepare_features,
)
from quala.errors import QualaError


@pytest.fixture(scope="module")
def bert_tokenizer(minilm_path):
    from quala.model import load_tokenizer

    return load_tokenizer(minilm_path)


def test_parse_articles():
    assert parse_articles("32:40") == slice(32, 40)
    assert parse_articles("5") == slice(5, 6)
    assert parse_articles(":3") == slice(None, 3)
    assert parse_articles(None) is None
    for bad in ("a:b", "5:2", "-1:3"):
        with pytest.raises(QualaError, match="articles"):
            parse_articles(bad)


@needs_shared_data
def test_squad_mini_validation_split_is_one_flag():
    data = load_squad(SQUAD_DEV, "32:40")
    assert len(data.examples) == 1746  # the SQuAD-mini validation split (shared/data/README.md)
    assert data.num_articles == 8
    assert data.examples[0].title.startswith("Jacksonville")
    assert len(load_squad(SQUAD_DEV, "0:32").examples) == 7235


def test_load_errors(tmp_path):
    with pytest.raises(QualaError, match="file not found"):
        load_squad(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(QualaError, match="not valid JSON"):
        load_squad(bad)
    bad.write_text(json.dumps({"version": "1", "rows": []}))
    with pytest.raises(QualaError, match="'data' list"):
        load_squad(bad)
    bad.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"qas": []}]}]}))
    with pytest.raises(QualaError, match="malformed field"):
        load_squad(bad)
    with pytest.raises(QualaError, match="selects nothing"):
        load_squad(DEMO_DIR / "dev.json", "100:200")


def test_hub_name_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(QualaError, match="Pass a SQuAD v1.1 JSON file"):
        load_squad("rajpurkar/squad:validation")


def _check_gold_spans(examples, features):
    """Every window that contains the gold answer points at tokens whose characters cover exactly it."""
    inside = 0
    for f in range(len(features)):
        ex = examples[features.example_index[f]]
        s, e = features.start_positions[f], features.end_positions[f]
        if s == 0:
            assert e == 0
            continue
        inside += 1
        char_s, char_e = features.offsets[f][s][0], features.offsets[f][e][1]
        gold = ex.answers[0]
        assert ex.context[char_s:char_e].strip().lower() == gold.strip().lower() or gold in ex.context[char_s:char_e]
    return inside


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_features_windows_and_gold_spans(family, bert_tokenizer, roberta_tokenizer):
    tok = bert_tokenizer if family == "bert" else roberta_tokenizer
    data = load_squad(DEMO_DIR / "train.json", max_examples=60)
    config = DataConfig(max_seq_length=48, doc_stride=16, max_query_length=12)
    feats = prepare_features(data.examples, tok, config, training=True)
    assert len(feats) > len(data.examples)  # short windows force several windows per example
    assert (feats.token_type_ids is not None) == (family == "bert")
    assert max(feats.lengths) <= 48
    assert _check_gold_spans(data.examples, feats) >= len(data.examples) * 0.9
    batch = collate(feats, [0, 1, 2], pad_id=tok.pad_token_id)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert set(batch) >= {"input_ids", "attention_mask", "start_positions", "end_positions"}
    assert ("token_type_ids" in batch) == (family == "bert")


def test_long_question_is_truncated(bert_tokenizer):
    ex = Example("q", "word " * 200 + "why?", "The answer is here.", ("here",), (14,))
    feats = prepare_features([ex], bert_tokenizer, DataConfig(max_seq_length=64, doc_stride=16, max_query_length=20))
    n_question = feats.offsets[0].index(None, 1)  # first None after [CLS]... offsets None outside the context
    assert n_question <= 22


def test_postprocess_picks_best_span_across_windows(bert_tokenizer):
    context = "Alpha beta gamma. " * 30 + "The treasure is buried under the old oak tree. " + "Delta epsilon. " * 30
    ex = Example("x", "Where is the treasure?", context, ("under the old oak tree",), (context.index("under"),))
    config = DataConfig(max_seq_length=64, doc_stride=24, max_query_length=16, n_best_size=5)
    feats = prepare_features([ex], bert_tokenizer, config)
    assert len(feats) > 3
    starts = [np.zeros(n) for n in feats.lengths]
    ends = [np.zeros(n) for n in feats.lengths]
    # put the strongest logits on "under ... tree" in the last window that contains it
    target_start = context.index("under")
    target_end = context.index("tree") + 4
    found = False
    for f in reversed(range(len(feats))):
        offs = feats.offsets[f]
        s = [i for i, o in enumerate(offs) if o and o[0] == target_start]
        e = [i for i, o in enumerate(offs) if o and o[1] == target_end]
        if s and e:
            starts[f][s[0]] = 10.0
            ends[f][e[0]] = 9.0
            found = True
            break
    assert found
    preds = postprocess([ex], feats, starts, ends, config, top_k=3)
    best = preds["x"][0]
    assert best.text == "under the old oak tree"
    assert context[best.start : best.end] == best.text
    assert 0 < best.score <= 1
    assert len(preds["x"]) == 3
    assert preds["x"][0].score >= preds["x"][1].score


def test_postprocess_respects_max_answer_length(bert_tokenizer):
    ex = Example("y", "What?", "one two three four five six seven eight nine ten")
    config = DataConfig(max_seq_length=64, doc_stride=16, max_query_length=16, max_answer_length=2)
    feats = prepare_features([ex], bert_tokenizer, config)
    n = feats.lengths[0]
    starts, ends = np.zeros((1, n)), np.zeros((1, n))
    ctx = [i for i, o in enumerate(feats.offsets[0]) if o is not None]
    starts[0, ctx[0]] = 5
    ends[0, ctx[-1]] = 5  # the best pair is too long: must not be chosen
    best = postprocess([ex], feats, starts, ends, config)["y"][0]
    assert len(best.text.split()) <= 2


def test_length_grouped_batches_cover_everything():
    lengths = np.array([5, 50, 7, 49, 6, 48, 30])
    plain = length_grouped_batches(lengths, 2)
    assert sorted(i for b in plain for i in b) == list(range(7))
    assert [lengths[b].tolist() for b in plain][0] == [5, 6]
    shuffled = length_grouped_batches(lengths, 2, np.random.default_rng(0))
    assert sorted(i for b in shuffled for i in b) == list(range(7))
