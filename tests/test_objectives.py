"""Objectives: span loss, prediction/intermediate KD and LengthDrop sampling, on tiny tensors and models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_hf_qa

from quala.errors import QualaError
from quala.lengths import validate_length_config
from quala.model import LengthAdaptiveQA
from quala.objectives import (
    IntermediateKD,
    LengthDropSampler,
    PredictionKD,
    SpanLoss,
    default_layer_map,
    soft_loss,
)
from quala.train_config import LengthDropConfig


# ------------------------------------------------------------------------------------------- LengthDrop
def test_smallest_sub_model_follows_the_rule():
    """references.md: the smallest sub-model keeps ceil(0.8 * l_prev) at every layer, from L = 384."""
    sampler = LengthDropSampler(num_layers=6, reference_length=384, bound=0.2)
    expected, prev = [], 384
    for _ in range(6):
        prev = math.ceil(0.8 * prev)
        expected.append(prev)
    assert sampler.smallest().length_config == expected == [308, 247, 198, 159, 128, 103]
    assert sampler.smallest().skip_layers == []
    # another bound and depth
    assert LengthDropSampler(4, 100, bound=0.5).smallest().length_config == [50, 25, 13, 7]


@pytest.mark.parametrize("layer_drop_prob", [0.0, 0.3])
def test_random_sub_models_are_valid(layer_drop_prob):
    sampler = LengthDropSampler(num_layers=6, reference_length=384, bound=0.2, layer_drop_prob=layer_drop_prob, seed=1)
    smallest = sampler.smallest().length_config
    seen_skips = 0
    distinct = set()
    for _ in range(300):
        sub = sampler.random()
        lengths = sub.length_config
        validate_length_config(lengths, 6, 384)  # one per layer, >= 1, non-increasing, <= 384
        distinct.add(tuple(lengths))
        prev = 384
        for i, n in enumerate(lengths):
            if i in sub.skip_layers:
                assert n == prev, "a skipped layer keeps the previous length"
            else:
                assert math.ceil(0.8 * prev) <= n <= prev
            assert n >= 2
            prev = n
        assert all(a >= b for a, b in zip(lengths, smallest, strict=True)), "never below the smallest sub-model"
        assert len(sub.skip_layers) < 6
        seen_skips += len(sub.skip_layers)
    assert len(distinct) > 250
    if layer_drop_prob == 0:
        assert seen_skips == 0
    else:
        assert 0.2 < seen_skips / (300 * 6) < 0.4  # about layer_drop_prob of the layers


def test_explicit_smallest_sub_model_sets_each_layers_floor():
    """Late-drop sampling: layer i keeps between smallest_i and the previous layer's count, nothing else."""
    floor = [384, 384, 192, 96, 48, 24]
    sampler = LengthDropSampler(6, 384, bound=0.2, layer_drop_prob=0.0, seed=5, smallest=floor)
    assert sampler.smallest().length_config == floor
    seen_low = [384] * 6
    for _ in range(400):
        lengths = sampler.random().length_config
        prev = 384
        for i, n in enumerate(lengths):
            assert floor[i] <= n <= prev
            prev = n
            seen_low[i] = min(seen_low[i], n)
    assert seen_low[:2] == [384, 384], "layers whose floor is the full length never drop"
    # LAT's bound would keep >= 0.8 of the previous layer; the explicit floor reaches far below it
    assert seen_low[3] < 0.8 * 192 and seen_low[5] < 40


def test_bad_explicit_smallest_fails():
    with pytest.raises(QualaError, match="6 non-increasing token counts"):
        LengthDropSampler(6, 384, smallest=[384, 192, 96])
    with pytest.raises(QualaError, match="at most 384"):
        LengthDropSampler(6, 384, smallest=[500, 384, 192, 96, 48, 24])
    with pytest.raises(QualaError, match="non-increasing"):
        LengthDropConfig(smallest=[384, 96, 192, 48, 24, 12])


def test_sandwich_and_sampler_state_round_trip():
    sampler = LengthDropSampler(6, 384, 0.2, 0.2, seed=3)
    subs = sampler.sandwich(num_sandwich=2)
    assert [s.kind for s in subs] == ["smallest", "random", "random"]
    state = sampler.state()
    a = [sampler.random().length_config for _ in range(5)]
    sampler.set_state(state)
    assert [sampler.random().length_config for _ in range(5)] == a


def test_sub_model_lengths_are_relative_to_each_rows_real_length():
    """Configs sampled at 384 keep ceil(n_i * r / 384) tokens of a row of real length r (dynamic padding)."""
    model = LengthAdaptiveQA(tiny_hf_qa("bert", layers=4)).eval()
    sampler = LengthDropSampler(4, 384, 0.2, layer_drop_prob=0.0, seed=0)
    real = torch.tensor([37, 90, 64])
    B, L = 3, 90
    ids = torch.randint(1000, 2000, (B, L))
    mask = (torch.arange(L)[None, :] < real[:, None]).long()
    for sub in [sampler.smallest(), sampler.random(), sampler.random()]:
        with torch.no_grad():
            out = model(ids, mask, length_config=sub.length_config, output_hidden_states=True)
        for i, n_i in enumerate(sub.length_config):
            expected = [min(math.ceil(n_i * r / 384), r) for r in real.tolist()]
            assert out.alive[i].sum(-1).tolist() == expected


def test_bad_sampler_options_fail():
    with pytest.raises(QualaError):
        LengthDropSampler(6, bound=0.0)
    with pytest.raises(QualaError):
        LengthDropSampler(6, layer_drop_prob=1.0)


# ------------------------------------------------------------------------------------------ span loss
def test_span_loss_is_mean_cross_entropy_and_ignores_padding():
    torch.manual_seed(0)
    start, end = torch.randn(2, 5), torch.randn(2, 5)
    sp, ep = torch.tensor([1, 2]), torch.tensor([3, 2])
    out = SpanLoss()(start, end, sp, ep)
    ref = (F.cross_entropy(start, sp) + F.cross_entropy(end, ep)) / 2
    assert torch.allclose(out.loss, ref)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    padded = SpanLoss()(start, end, sp, ep, mask)
    garbage = start.clone()
    garbage[0, 4] = 100.0  # a padding logit must not matter
    assert torch.allclose(SpanLoss()(garbage, end, sp, ep, mask).loss, padded.loss)


# ------------------------------------------------------------------------------------- prediction KD
def _hand_kl(student: list[float], teacher: list[float], T: float) -> float:
    ps = [math.exp(s / T) for s in student]
    pt = [math.exp(t / T) for t in teacher]
    ps = [p / sum(ps) for p in ps]
    pt = [p / sum(pt) for p in pt]
    return sum(t * (math.log(t) - math.log(s)) for s, t in zip(ps, pt, strict=True)) * T * T


def _hand_soft_ce(student: list[float], teacher: list[float], T: float) -> float:
    ps = [math.exp(s / T) for s in student]
    pt = [math.exp(t / T) for t in teacher]
    ps = [p / sum(ps) for p in ps]
    pt = [p / sum(pt) for p in pt]
    return -sum(t * math.log(s) for s, t in zip(ps, pt, strict=True)) * T * T


@pytest.mark.parametrize("kind,hand", [("kl", _hand_kl), ("soft_ce", _hand_soft_ce)])
def test_prediction_kd_matches_hand_computation(kind, hand):
    s_start = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t_start = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    s_end = [[0.3, 0.1, -0.2], [2.0, 2.5, 0.0]]
    t_end = [[-1.0, 0.0, 4.0], [0.5, 0.0, -0.5]]
    T = 2.0
    out = PredictionKD(temperature=T, kind=kind)(
        torch.tensor(s_start), torch.tensor(s_end), torch.tensor(t_start), torch.tensor(t_end)
    )
    start = np.mean([hand(s, t, T) for s, t in zip(s_start, t_start, strict=True)])
    end = np.mean([hand(s, t, T) for s, t in zip(s_end, t_end, strict=True)])
    assert out.start.item() == pytest.approx(start, rel=1e-5)
    assert out.end.item() == pytest.approx(end, rel=1e-5)
    assert out.loss.item() == pytest.approx((start + end) / 2, rel=1e-5)


def test_kl_is_zero_when_student_equals_teacher():
    x = torch.randn(3, 7)
    assert soft_loss(x, x, 1.0, "kl").item() == pytest.approx(0.0, abs=1e-6)


def test_inplace_distillation_sees_the_end_logits():
    """Guards the reference trainer's bug (it distilled outputs[0], i.e. only the start side)."""
    torch.manual_seed(0)
    student_start, student_end = torch.randn(2, 6), torch.randn(2, 6)
    full_start, full_end = torch.randn(2, 6), torch.randn(2, 6)
    kd = PredictionKD(1.0, "kl")
    base = kd(student_start, student_end, full_start, full_end).loss
    moved = kd(student_start, student_end, full_start, full_end + torch.randn(2, 6)).loss
    assert not torch.isclose(base, moved)
    # and the gradient reaches the student's end logits
    student_end.requires_grad_(True)
    kd(student_start, student_end, full_start, full_end).loss.backward()
    assert student_end.grad.abs().sum() > 0


def test_bad_kd_options_fail():
    with pytest.raises(QualaError):
        PredictionKD(temperature=0)
    with pytest.raises(QualaError):
        PredictionKD(kind="mse")


# ----------------------------------------------------------------------------------- intermediate KD
def test_default_layer_map_is_2i():
    assert default_layer_map(6, 12) == [2, 4, 6, 8, 10, 12]
    assert default_layer_map(4, 4) == [1, 2, 3, 4]
    with pytest.raises(QualaError):
        default_layer_map(5, 12)


def test_intermediate_kd_zero_for_identical_models_and_projection_learns():
    torch.manual_seed(0)
    model = LengthAdaptiveQA(tiny_hf_qa("bert", layers=2)).eval()
    ids = torch.randint(1000, 2000, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    out = model(ids, mask, output_hidden_states=True, output_attentions=True)
    same = IntermediateKD(32, 32, [1, 2])(out.hidden_states, out.hidden_states, out.attentions, out.attentions, mask)
    assert same.loss.item() == pytest.approx(0.0, abs=1e-7)
    # wider teacher (hidden 48) with twice the layers: student i <-> teacher 2i through a learned projection
    teacher_h = tuple(torch.randn(2, 12, 48) for _ in range(5))
    teacher_a = tuple(torch.softmax(torch.randn(2, 4, 12, 12), -1) for _ in range(4))
    kd = IntermediateKD(32, 48, default_layer_map(2, 4))
    loss = kd(out.hidden_states, teacher_h, out.attentions, teacher_a, mask)
    assert loss.hidden.item() > 0 and loss.attention.item() > 0
    loss.loss.backward()
    assert kd.proj.weight.grad is not None and kd.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [[], [100, 120, 40], [100, 90, 0], [500, 90, 40], [100, 90]])
def test_one_rule_for_an_explicit_smallest(bad):
    """length_drop.smallest (the training config, which does not know the layer count), the LengthDrop sampler and
    the search's smallest all go through quala.lengths.check_smallest."""
    from quala.evolution import floor_gene
    from quala.lengths import check_smallest
    from quala.objectives import LengthDropSampler
    from quala.search import SearchConfig
    from quala.train_config import LengthDropConfig

    assert check_smallest([100, 90, 40], "x", 3, 384) == (100, 90, 40)
    assert LengthDropSampler(3, 384, smallest=[100, 90, 40]).floor == [100, 90, 40]
    with pytest.raises(QualaError, match="x must be 3 non-increasing token counts"):
        check_smallest(bad, "x", 3, 384)
    with pytest.raises(QualaError, match="length_drop.smallest must be 3 non-increasing"):
        LengthDropSampler(3, 384, smallest=bad)
    with pytest.raises(QualaError, match="search smallest must be 3 non-increasing"):
        floor_gene(3, 384, SearchConfig(smallest=bad))
    if bad in ([], [100, 120, 40], [100, 90, 0]):  # wrong without knowing the model: refused in the config
        with pytest.raises(QualaError, match="length_drop.smallest must be non-increasing"):
            LengthDropConfig(smallest=bad)
