"""Tests for quala.macs (analytic MAC counts under length configurations).

Check values are the "FLOPs" reported by LAT (arXiv 2010.07003) and
QuaLA-MiniLM (arXiv 2210.17114) at L=384; they are MACs and must be
reproduced within 0.5%. The FlopCounterMode test cross-checks the formula
against the matmuls a real (tiny, random) BertForQuestionAnswering runs.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

from quala.errors import QualaError
from quala.lengths import validate_length_config
from quala.macs import MacsBreakdown, count_macs, macs_fraction


def _bert_config(layers: int, hidden: int, intermediate: int, **kwargs) -> transformers.BertConfig:
    return transformers.BertConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=12,
        **kwargs,
    )


BERT_BASE = _bert_config(12, 768, 3072)
TINYBERT_6L_768 = _bert_config(6, 768, 3072)
MINILM_L6_H384 = _bert_config(6, 384, 1536)


@pytest.mark.parametrize(
    ("config", "length_config", "expected_gmacs"),
    [
        (BERT_BASE, None, 35.33),
        (TINYBERT_6L_768, None, 17.67),
        (MINILM_L6_H384, None, 4.757),
        (MINILM_L6_H384, (269, 253, 252, 202, 104, 34), 2.484),
        (MINILM_L6_H384, (315, 251, 242, 159, 142, 33), 2.546),
    ],
    ids=["bert-base", "tinybert-6l-768", "minilm-l6-h384", "minilm-lc1", "minilm-lc2"],
)
def test_reference_check_values(config, length_config, expected_gmacs):
    got = count_macs(config, 384, length_config).total / 1e9
    assert got == pytest.approx(expected_gmacs, rel=0.005)


def test_bert_base_breakdown_by_hand():
    # Per layer at L=384, d=768, f=3072:
    #   4*384*768^2 = 905_969_664; 2*384^2*768 = 226_492_416; 2*384*768*3072 = 1_811_939_328
    b = count_macs(BERT_BASE)
    assert b == MacsBreakdown(
        attention_projections=12 * 905_969_664,
        attention_scores=12 * 226_492_416,
        ffn=12 * 1_811_939_328,
        span_head=2 * 384 * 768,
        embeddings=0,
    )
    assert b.total == 35_333_406_720


def test_length_config_uses_previous_layer_length_for_attention():
    # 1 layer: attention on n_0 = L = 10 tokens, FFN on n_1 = 4 tokens.
    cfg = _bert_config(1, 8, 16)
    b = count_macs(cfg, 10, [4])
    assert b.attention_projections == 4 * 10 * 8 * 8
    assert b.attention_scores == 2 * 10 * 10 * 8
    assert b.ffn == 2 * 4 * 8 * 16
    assert b.span_head == 2 * 10 * 8
    assert b.embeddings == 0


def test_none_equals_full_length_and_fraction():
    assert count_macs(MINILM_L6_H384, 256, None) == count_macs(MINILM_L6_H384, 256, [256] * 6)
    assert macs_fraction(MINILM_L6_H384, 384, None) == 1.0
    frac = macs_fraction(MINILM_L6_H384, 384, (269, 253, 252, 202, 104, 34))
    assert frac == pytest.approx(2.484 / 4.757, rel=0.005)


@pytest.mark.parametrize(
    ("seq_length", "length_config", "message"),
    [
        (384, [300, 200, 100], "has 3 entries but the model has 6 layers"),
        (384, [300] * 7, "has 7 entries but the model has 6 layers"),
        (384, [300, 200, 250, 100, 50, 10], "non-increasing"),
        (384, [0, 0, 0, 0, 0, 0], r"length_config\[0\] must be >= 1"),
        (384, [300, 200, 100, 50, 10, -1], r"length_config\[5\] must be >= 0"),
        (384, [385, 300, 200, 100, 50, 10], "exceeds the reference length 384"),
        (384, [300.0, 200, 100, 50, 10, 5], "must be an integer"),
        (384, [True, 1, 1, 1, 1, 1], "must be an integer"),
        (0, None, "seq_length must be >= 1"),
    ],
)
def test_validation_errors(seq_length, length_config, message):
    with pytest.raises(QualaError, match=message):  # user input: one line, exit 2 in the CLI
        count_macs(MINILM_L6_H384, seq_length, length_config)


def test_validate_length_config_returns_tuple():
    assert validate_length_config([3, 2, 2], 3, 5) == (3, 2, 2)
    assert validate_length_config((3, 0, 0), 3) == (3, 0, 0)  # a depth configuration


def test_missing_config_attribute():
    class NotAConfig:
        hidden_size = 64

    with pytest.raises(QualaError, match="intermediate_size"):
        count_macs(NotAConfig())


@pytest.mark.parametrize("seq_length", [1, 7, 32, 128])
def test_matches_flop_counter_on_tiny_bert_qa(seq_length):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        attn_implementation="eager",  # explicit bmm for QK^T and probs@V, no fused SDPA kernel
    )
    model = transformers.BertForQuestionAnswering(config).eval()
    # BertForQuestionAnswering builds BertModel(add_pooling_layer=False): no pooler matmul to account for.
    assert model.bert.pooler is None
    batch = 2
    input_ids = torch.randint(0, config.vocab_size, (batch, seq_length))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    # FlopCounterMode counts 2 FLOPs per MAC for addmm/mm/bmm and ignores bias adds, embedding
    # lookups, LayerNorm, softmax, GELU and mask additions -- exactly what the formula leaves out.
    # The eager attention output projection runs on all tokens, matching 4 n d^2. So at full
    # length the two agree exactly; the tolerance only guards against future counter changes.
    measured_macs_per_sequence = counter.get_total_flops() / 2 / batch
    assert measured_macs_per_sequence == pytest.approx(count_macs(config, seq_length).total, rel=1e-3)
