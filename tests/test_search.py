"""Tests for quala.search (LAT evolutionary search) and quala.latency.

Algorithm tests use a synthetic, deterministic objective (no model), so they can run many seeds, depths and
lengths quickly; the end-to-end tests run a tiny random BERT on the demo dataset.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import DEMO_DIR, ROOT

from quala.data import load_squad
from quala.errors import QualaError
from quala.evolution import (
    F1Predictor,
    Measurement,
    SearchResult,
    crossover,
    initial_genes,
    mutate,
    random_gene,
    run_search,
)
from quala.front import FrontPoint, dominates, front_area, pareto_front
from quala.lengths import constant_ratio_gene, is_valid_gene
from quala.macs import count_macs
from quala.search import SearchConfig

DEMO_DEV = DEMO_DIR / "dev.json"
CANDIDATE_KEYS = {"length_config", "f1", "exact_match", "macs", "latency_ms"}


def sizes(layers: int) -> SimpleNamespace:
    return SimpleNamespace(hidden_size=64, intermediate_size=256, num_hidden_layers=layers)


class Synthetic:
    """A deterministic stand-in for F1: rises with kept tokens (deep layers count less), plus fixed noise."""

    def __init__(self, length: int, noise: float = 2.0):
        self.length = length
        self.noise = noise
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, gene: list[int]) -> Measurement:
        self.calls.append(tuple(gene))
        weights = [0.8**i for i in range(len(gene))]
        kept = sum(w * n / self.length for w, n in zip(weights, gene, strict=True)) / sum(weights)
        jitter = random.Random(hash(tuple(gene))).uniform(-self.noise, self.noise)
        f1 = 90 * (1 - math.exp(-4 * kept)) + jitter
        return Measurement(f1=f1, exact_match=f1 - 8, latency_ms=1 + 10 * kept)


def small_config(**overrides) -> SearchConfig:
    values = dict(population=5, iterations=4, mutations=5, crossovers=5, seed=3)
    values.update(overrides)
    return SearchConfig(**values)


def front_genes(result) -> list[tuple[int, ...]]:
    return [c.gene for c in result.front]


# ------------------------------------------------------------------------------------------ gene operators
@pytest.mark.parametrize(("layers", "length"), [(1, 16), (2, 7), (4, 64), (6, 384), (12, 384), (3, 2)])
def test_mutation_and_crossover_only_produce_valid_genes(layers, length):
    for seed in range(300):
        rng = random.Random(seed)
        parents = [random_gene(rng, layers, length), constant_ratio_gene(layers, length, rng.uniform(0, 0.9))]
        parents.append((length,) * layers)
        for parent in parents:
            assert is_valid_gene(parent, layers, length), parent
            child = mutate(parent, rng, rng.choice([0.0, 0.5, 1.0]), length)
            assert is_valid_gene(child, layers, length), (parent, child)
        child = crossover(parents[0], parents[1])
        assert is_valid_gene(child, layers, length), (parents, child)


def test_mutation_changes_genes_and_respects_probability():
    rng = random.Random(0)
    gene = (300, 200, 100, 50)
    assert mutate(gene, rng, 0.0, 384) == gene
    assert len({mutate(gene, rng, 1.0, 384) for _ in range(50)}) > 40


def test_crossover_is_ceil_mean():
    assert crossover((10, 7, 3), (9, 4, 2)) == (10, 6, 3)


def test_constant_ratio_gene_is_lengthdrop_smallest():
    # ceil(0.8 * previous), from 384: 308, 247, 198, 159, 128, 103
    assert constant_ratio_gene(6, 384, 0.2) == (308, 247, 198, 159, 128, 103)
    assert constant_ratio_gene(3, 5, 0.2) == (4, 4, 4)  # no float round-up: 5*0.8 = 4.000000000000001
    assert constant_ratio_gene(3, 10, 0.0) == (10, 10, 10)
    assert constant_ratio_gene(4, 4, 0.9) == (2, 2, 2, 2)  # never below min_length


@pytest.mark.parametrize(("layers", "length"), [(6, 384), (12, 384), (3, 128)])
def test_initial_genes_spread_between_smallest_and_full(layers, length):
    config = SearchConfig(population=10)
    genes = initial_genes(sizes(layers), length, config)
    low = count_macs(sizes(layers), length, constant_ratio_gene(layers, length, 0.2)).total
    high = count_macs(sizes(layers), length).total
    macs = [count_macs(sizes(layers), length, g).total for g in genes]
    assert 5 <= len(genes) <= 10
    assert all(is_valid_gene(g, layers, length) for g in genes)
    assert all(low < m < high for m in macs)
    assert macs == sorted(macs)  # evenly spaced targets, increasing


def test_initial_genes_with_explicit_smallest_lie_between_it_and_full():
    """Late-drop models: the initial population runs layer by layer from the full model to ``smallest``."""
    floor = (384, 384, 160, 64, 32, 16)
    genes = initial_genes(sizes(6), 384, SearchConfig(population=8, smallest=list(floor)))
    low, high = count_macs(sizes(6), 384, floor).total, count_macs(sizes(6), 384).total
    macs = [count_macs(sizes(6), 384, g).total for g in genes]
    assert len(genes) >= 6 and macs == sorted(macs) and all(low < m < high for m in macs)
    for g in genes:
        assert g[:2] == (384, 384), "layers the smallest keeps whole are never dropped"
        assert all(f <= n <= 384 for f, n in zip(floor, g, strict=True))
    # a gene halfway (by MACs) drops each layer by about half of the floor's drop
    mid = genes[len(genes) // 2]
    assert 160 < mid[2] < 384 and 16 < mid[5] < 384


def test_search_with_explicit_smallest_starts_from_it_and_never_goes_below():
    floor = (100, 90, 40, 20)
    result = run_search(Synthetic(128), sizes(4), 128, small_config(seed=4, smallest=list(floor)))
    assert result.candidates[0].gene == floor  # evaluated first, as LAT's smallest sub-model is
    floor_macs = count_macs(sizes(4), 128, floor).total
    assert all(c.macs >= floor_macs for c in result.candidates)
    assert any(c.gene[3] < math.ceil(0.8 * c.gene[2]) for c in result.candidates), "drops beyond LAT's bound"
    with pytest.raises(QualaError, match="non-increasing token counts"):
        run_search(Synthetic(128), sizes(4), 128, small_config(smallest=[100, 120, 40, 20]))


# ------------------------------------------------------------------------------------------ fronts and area
def cand(gene, f1, macs, latency=None) -> FrontPoint:
    return FrontPoint(list(gene), f1, macs, latency, f1)


def test_pareto_front_by_hand():
    a, b, c, d = cand([1], 50, 10), cand([2], 60, 20), cand([3], 55, 30), cand([4], 60, 40)
    e = cand([5], 60, 20)  # same cost and F1 as b: one of them is kept
    front = pareto_front([d, c, b, a, e], "macs")
    assert [x.macs for x in front] == [10, 20]
    assert dominates(b, c) and dominates(b, d) and not dominates(a, b)
    # the anchor (full length) stays even when dominated, sorted by cost
    assert [x.gene for x in pareto_front([a, b, c, d], "macs", anchor=(4,))] == [(1,), (2,), (4,)]


def test_front_area_is_mean_best_f1_over_budgets():
    # best F1 is 50 on [0.5, 0.75) and 80 on [0.75, 1]: mean = (0.25*50 + 0.25*80) / 0.5 = 65
    assert front_area([(0.5, 50.0), (0.75, 80.0), (1.0, 70.0)], 0.5, 1.0) == pytest.approx(65.0)
    # nothing fits below 0.6: 0 there
    assert front_area([(0.6, 40.0), (1.0, 40.0)], 0.5, 1.0) == pytest.approx(32.0)
    with pytest.raises(ValueError):
        front_area([(1.0, 1.0)], 1.0, 1.0)


# ------------------------------------------------------------------------------------------ the search
@pytest.mark.parametrize(("layers", "length", "seed"), [(6, 384, 0), (4, 128, 1), (12, 384, 2), (2, 32, 3)])
def test_front_is_non_dominated_and_contains_full_length(layers, length, seed):
    objective = Synthetic(length)
    result = run_search(objective, sizes(layers), length, small_config(seed=seed))
    full = (length,) * layers
    smallest = constant_ratio_gene(layers, length, 0.2)
    genes = [c.gene for c in result.candidates]
    assert full in front_genes(result)
    assert result.completed and result.num_evaluations == len(set(genes)) == len(objective.calls)
    assert len(objective.calls) == len(set(objective.calls))  # memoised: each candidate evaluated once
    floor = count_macs(sizes(layers), length, smallest).total
    for c in result.candidates:
        assert is_valid_gene(c.gene, layers, length)
        assert c.macs >= floor  # nothing cheaper than the smallest sub-model
    for f in result.front:
        if f.gene != full:
            assert not any(dominates(c, f) for c in result.candidates), f
    # complete: every non-dominated candidate is on the front (or ties one of its members)
    for c in result.candidates:
        if not any(dominates(o, c) for o in result.candidates):
            assert any(f.macs == c.macs and f.f1 == c.f1 for f in result.front), c
    costs = [c.macs for c in result.front]
    assert costs == sorted(costs)
    assert 0 < result.area_macs <= max(c.f1 for c in result.candidates)


def test_evolution_beats_random_on_synthetic_objective():
    length, layers = 384, 6
    evo = run_search(Synthetic(length, noise=0.5), sizes(layers), length, small_config(iterations=6))
    rnd = run_search(
        Synthetic(length, noise=0.5),
        sizes(layers),
        length,
        small_config(strategy="random", evaluations=evo.num_evaluations),
    )
    assert rnd.num_evaluations == evo.num_evaluations
    assert evo.area_macs > rnd.area_macs


def test_f1_predictor_recovers_a_function_of_its_form():
    rng = random.Random(0)
    genes = [random_gene(rng, 4, 128) for _ in range(40)]

    def f1(gene):
        return 10 + sum((5 + i) * n / 128 + (2 - i) * math.log(n / 128) for i, n in enumerate(gene))

    predictor = F1Predictor(128, ridge=1e-9).fit(genes, [f1(g) for g in genes])
    unseen = [random_gene(rng, 4, 128) for _ in range(10)]
    assert predictor(unseen) == pytest.approx([f1(g) for g in unseen], abs=1e-4)
    assert predictor([]) == []


def test_predictor_guided_evolution_evaluates_ranked_children():
    """Same evaluation count as LAT's loop, valid genes only, and a larger front area than LAT's and random
    search's on a smooth objective where profile shape matters (deep layers count less)."""
    length, layers = 384, 6
    settings = dict(population=6, random_init=6, iterations=8, mutations=4, crossovers=2, seed=5)
    guided_calls = Synthetic(length, noise=0.5)
    guided = run_search(guided_calls, sizes(layers), length, small_config(**settings, predictor="linear"))
    lat = run_search(Synthetic(length, noise=0.5), sizes(layers), length, small_config(**settings))
    rnd = run_search(
        Synthetic(length, noise=0.5),
        sizes(layers),
        length,
        small_config(strategy="random", evaluations=guided.num_evaluations),
    )
    assert guided.num_evaluations == 2 + 6 + 8 * (4 + 2) == len(set(guided_calls.calls))
    floor = count_macs(sizes(layers), length, constant_ratio_gene(layers, length, 0.2)).total
    for gene in guided_calls.calls:
        assert is_valid_gene(gene, layers, length) and count_macs(sizes(layers), length, gene).total >= floor
    assert guided.area_macs > lat.area_macs and guided.area_macs > rnd.area_macs


def test_most_promising_children_spread_over_the_cost_range():
    from quala.evolution import _most_promising

    length = 64
    predictor = F1Predictor(length).fit([(64, 64), (32, 16), (48, 40), (20, 10)], [50.0, 20.0, 40.0, 10.0])

    class Run:  # the two attributes _most_promising reads
        used = {
            (64, 64): FrontPoint([64, 64], 50.0, 64 + 64, None, 0.0),
            (20, 10): FrontPoint([20, 10], 10.0, 20 + 10, None, 0.0),
        }

        @staticmethod
        def macs(gene):
            return sum(gene)

    # a near-copy of the full gene and a cheap child: the cheap one fills the gap below the full model first
    children = [(64, 63), (40, 30), (40, 29)]
    picked = _most_promising(Run, predictor, children, 2)
    assert picked[0] == (40, 30)
    assert len(picked) == 2 and len(set(picked)) == 2


def test_random_init_seeds_part_of_the_population_with_random_genes():
    length, layers = 384, 6
    config = small_config(population=6, random_init=4, iterations=0)
    objective = Synthetic(length)
    result = run_search(objective, sizes(layers), length, config)
    ratio_genes = initial_genes(sizes(layers), length, config)
    assert len(ratio_genes) == 2  # population - random_init constant-ratio genes
    smallest, full = constant_ratio_gene(layers, length, 0.2), (length,) * layers
    seeded = [g for g in objective.calls if g not in (smallest, full, *ratio_genes)]
    assert len(seeded) == 4 and result.num_evaluations == 2 + 6
    floor = count_macs(sizes(layers), length, smallest).total
    for gene in seeded:
        assert is_valid_gene(gene, layers, length) and count_macs(sizes(layers), length, gene).total >= floor
    again = Synthetic(length)
    run_search(again, sizes(layers), length, config)
    assert again.calls == objective.calls  # seeded: the same random genes every run
    plain = Synthetic(length)
    run_search(plain, sizes(layers), length, small_config(population=6, iterations=0))
    ratio_only = set(initial_genes(sizes(layers), length, small_config(population=6)))
    assert set(plain.calls) - {smallest, full} == ratio_only  # random_init 0: LAT's constant-ratio population


def test_latency_objective_uses_measured_cost():
    result = run_search(Synthetic(64), sizes(3), 64, small_config(objective="latency"))
    latencies = [c.latency_ms for c in result.front]
    assert latencies == sorted(latencies)
    assert result.area is not None and result.area != result.area_macs


def test_random_strategy_evaluates_the_requested_number():
    objective = Synthetic(96)
    result = run_search(objective, sizes(4), 96, SearchConfig(strategy="random", evaluations=17, seed=1))
    assert result.num_evaluations == 17 == len(set(objective.calls))
    assert (96,) * 4 in front_genes(result)


@pytest.mark.parametrize(
    ("strategy", "random_init", "predictor"),
    [("evolution", 0, "none"), ("random", 0, "none"), ("evolution", 3, "none"), ("evolution", 5, "linear")],
)
def test_resumed_search_gives_the_same_front(tmp_path, strategy, random_init, predictor):
    length, layers = 128, 4
    config = small_config(strategy=strategy, evaluations=25, random_init=random_init, predictor=predictor)
    reference = run_search(Synthetic(length), sizes(layers), length, config, tmp_path / "a.json")

    class Killed(Exception):
        pass

    def kill_after(k):
        count = [0]

        def hook(_):
            count[0] += 1
            if count[0] == k:
                raise Killed

        return hook

    state = tmp_path / "b.json"
    first = Synthetic(length)
    with pytest.raises(Killed):
        run_search(first, sizes(layers), length, config, state, on_evaluate=kill_after(7))
    assert len(json.loads(state.read_text())["candidates"]) == 7  # saved before the crash
    second = Synthetic(length)
    with pytest.raises(Killed):  # killed again mid-way through the resumed run
        run_search(second, sizes(layers), length, config, state, on_evaluate=kill_after(5))
    third = Synthetic(length)
    resumed = run_search(third, sizes(layers), length, config, state)
    assert front_genes(resumed) == front_genes(reference)
    assert [c.gene for c in resumed.candidates] == [c.gene for c in reference.candidates]
    assert resumed.area_macs == reference.area_macs
    calls = first.calls + second.calls + third.calls
    assert len(calls) == len(set(calls)) == reference.num_evaluations  # nothing evaluated twice


def test_max_evaluations_stops_and_resumes(tmp_path):
    config = small_config()
    reference = run_search(Synthetic(64), sizes(3), 64, config)
    state = tmp_path / "state.json"
    stopped = run_search(Synthetic(64), sizes(3), 64, small_config(max_evaluations=9), state)
    assert not stopped.completed and stopped.num_evaluations == 9
    resumed = run_search(Synthetic(64), sizes(3), 64, config, state)
    assert resumed.completed and front_genes(resumed) == front_genes(reference)
    with pytest.raises(QualaError, match="too small"):
        run_search(Synthetic(64), sizes(3), 64, small_config(max_evaluations=1), tmp_path / "x.json")


def test_state_of_another_model_is_refused(tmp_path):
    state = tmp_path / "state.json"
    run_search(Synthetic(64), sizes(3), 64, small_config(iterations=1), state, fingerprint={"model": "a"})
    with pytest.raises(QualaError, match="different model"):
        run_search(Synthetic(64), sizes(3), 64, small_config(iterations=1), state, fingerprint={"model": "b"})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"population": 0}, "population must be >= 1"),
        ({"population": 4, "random_init": 5}, "random_init must be in"),
        ({"random_init": -1}, "random_init must be in"),
        ({"objective": "flops"}, "unknown objective"),
        ({"strategy": "grid"}, "unknown strategy"),
        ({"mutation_prob": 1.5}, "mutation_prob"),
        ({"ratio_bound": 0.0}, "ratio_bound"),
        ({"budgets": [0.5, 2.0]}, "budgets"),
        ({"max_examples": 0}, "max_examples"),
        ({"predictor": "gp"}, "unknown predictor"),
        ({"predictor_pool": 0}, "predictor_pool"),
        ({"max_examples": 200, "rescore_examples": 200}, "must exceed max_examples"),
        ({"rescore_examples": 500}, "must exceed max_examples"),
        ({"max_examples": 200, "rescore_examples": 0}, "rescore_examples must be >= 1"),
        ({"rescore_bins": 0}, "rescore_bins"),
    ],
)
def test_bad_settings_are_rejected(overrides, message):
    with pytest.raises(QualaError, match=message):
        SearchConfig(**overrides)


# ------------------------------------------------------------------------------------------ re-scoring
def hand_result() -> SearchResult:
    """Two layers of 100 tokens, MACs = the first count (hand-made); search-sample F1: the 72 point is lucky
    (80 on the sample) and hides 85 and 90; full length scored 68."""
    f1 = {20: 50, 30: 52, 35: 55, 45: 60, 50: 58, 70: 66, 72: 80, 85: 69, 90: 69.5, 100: 68}
    cands = [FrontPoint([m, m], float(v), m, float(m) / 10, float(v) - 10) for m, v in f1.items()]
    full, smallest = cands[-1], cands[0]
    front = pareto_front(cands, anchor=full.gene)
    return SearchResult(cands, front, len(cands), 1.0, True, None, None, {}, full, smallest)


def test_rescore_genes_by_hand():
    from quala.search import rescore_genes

    result = hand_result()
    assert [c.macs for c in result.front] == [20, 30, 35, 45, 70, 72, 100]
    # bins of 20 MACs over [20, 100]: best of [20, 40) is 35, of [40, 60) 45, of [60, 80) 72, of [80, 100] 90
    assert [g[0] for g in rescore_genes(result, "macs", 4)] == [20, 30, 35, 45, 70, 72, 90, 100]
    # one bin: its best is the lucky point, already on the front
    assert [g[0] for g in rescore_genes(result, "macs", 1)] == [20, 30, 35, 45, 70, 72, 100]
    # the latency axis (latency = MACs / 10 here) bins the same way
    assert rescore_genes(result, "latency", 4) == rescore_genes(result, "macs", 4)


def test_rescore_takes_f1_from_the_larger_sample_and_resumes(tmp_path):
    from quala.search import rescore
    from quala.search_state import SearchState

    result = hand_result()
    truth = {20: 48, 30: 51, 35: 54, 45: 59, 70: 64, 72: 63.5, 90: 67, 100: 69}  # the larger sample's F1
    calls = []

    def objective(gene):
        calls.append(gene[0])
        return Measurement(truth[gene[0]], truth[gene[0]] - 12, latency_ms=999.0)

    config = SearchConfig(max_examples=200, rescore_examples=1000, rescore_bins=4)
    points = rescore(objective, result, config, SearchState(tmp_path / "r.json", {"x": 1}), progress=False)
    assert calls == [20, 30, 35, 45, 70, 72, 90, 100]
    assert [(p.macs, p.f1, p.exact_match) for p in points] == [(m, truth[m], truth[m] - 12) for m in calls]
    assert [p.latency_ms for p in points] == [m / 10 for m in calls]  # the search's latency, not re-measured
    # the front of the re-scored points drops the lucky 72 point; 90 (hidden on the sample) comes back
    assert [p.macs for p in pareto_front(points, anchor=result.full.gene)] == [20, 30, 35, 45, 70, 90, 100]
    calls.clear()
    again = rescore(objective, result, config, SearchState(tmp_path / "r.json", {"x": 1}), progress=False)
    assert calls == [] and again == points


# ------------------------------------------------------------------------------------------ real (tiny) model
def test_measure_latency_on_tiny_model(tiny_model_dir):
    from quala.engine import load_predictor
    from quala.latency import LatencyConfig, measure_latency, synthetic_batch

    predictor = load_predictor(tiny_model_dir, threads=1)
    batch = synthetic_batch(predictor, 2, 40)
    assert batch["input_ids"].shape == (2, 40) and batch["token_type_ids"][0, -1] == 1
    config = LatencyConfig(warmup=1, repeats=3, batch_size=2, seq_length=40)
    result = measure_latency(predictor, [30, 20, 10, 5], config)
    assert result.batch_size == 2 and result.seq_length == 40 and result.threads == 1
    assert 0 < result.min_ms <= result.median_ms <= result.p90_ms
    assert result.backend == "torch" and result.length_config == [30, 20, 10, 5]
    assert measure_latency(predictor, None, LatencyConfig(repeats=1, seq_length=16, threads=2)).threads == 2
    with pytest.raises(QualaError):
        LatencyConfig(repeats=0)
    with pytest.raises(QualaError):
        LatencyConfig(threads=0)


def test_max_examples_spreads_over_the_split():
    from quala.data import load_squad

    data = load_squad(DEMO_DEV)
    n = len(data.examples)
    subset = data.spread(8)
    # hand-computed: the i-th pick is question floor(i * n / 8)
    assert [data.examples.index(e) for e in subset.examples] == [i * n // 8 for i in range(8)]
    assert {e.title for e in subset.examples} == {e.title for e in data.examples}  # every article contributes
    assert data.spread(None) is data and data.spread(10_000) is data


def test_training_validation_and_search_pick_the_same_questions(tmp_path, tiny_model_dir):
    """One rule for 'N evenly spaced questions': training's validation subset is the search's subset."""
    from quala.data import TrainData, load_squad
    from quala.train import build_trainer
    from quala.train_config import TrainConfig

    data = TrainData([load_squad(DEMO_DEV)], load_squad(DEMO_DEV))
    trainer = build_trainer(tiny_model_dir, data, tmp_path / "t", TrainConfig(max_eval_examples=7, max_steps=1))
    assert [e.id for e in trainer.eval_data.examples] == [e.id for e in load_squad(DEMO_DEV).spread(7).examples]
    n = len(load_squad(DEMO_DEV).examples)
    assert [e.id for e in trainer.eval_data.examples] == [
        load_squad(DEMO_DEV).examples[i * n // 7].id for i in range(7)
    ]


def test_evaluate_features_matches_evaluate(tiny_model_dir):
    from quala.data import load_squad, prepare_features
    from quala.engine import load_predictor
    from quala.evaluate import evaluate, evaluate_features

    predictor = load_predictor(tiny_model_dir, threads=1)
    data = load_squad(DEMO_DEV, max_examples=12)
    features = prepare_features(data.examples, predictor.tokenizer)
    a, pa = evaluate(predictor, data, [300, 200, 100, 50])
    b, pb = evaluate_features(predictor, data, features, [300, 200, 100, 50])
    assert pa == pb and a.f1 == b.f1 and a.macs == b.macs


def test_search_writes_schema_plot_and_attaches(tmp_path, tiny_model_dir):
    from quala.search import search

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = SearchConfig(population=3, iterations=2, mutations=2, crossovers=2, max_examples=16, seed=0)
    config.latency.repeats = 1
    config.latency.warmup = 0
    config.threads = 1
    out = tmp_path / "out"
    data = load_squad(DEMO_DEV, "0:2")
    result, document = search(str(model), data, out, config, attach=True, progress=False)
    written = json.loads((out / "search.json").read_text())
    assert written == json.loads(json.dumps(document))
    assert {"settings", "data", "candidates", "front"} <= set(written)
    assert written["data"] == {"file": str(DEMO_DEV), "articles": "0:2", "num_questions": 16}
    for entry in written["candidates"] + written["front"]:
        assert set(entry) == CANDIDATE_KEYS
        assert isinstance(entry["macs"], int) and entry["latency_ms"] > 0
    assert [4 * [384]] == [f["length_config"] for f in written["front"] if f["length_config"] == 4 * [384]]
    assert written["settings"]["reference_length"] == 384 and written["settings"]["num_layers"] == 4
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((model / "search.json").read_text()) == written
    # the engine reads the attached front and resolves budgets on it
    from quala.engine import QAEngine

    engine = QAEngine.from_pretrained(model, threads=1)
    assert [p.length_config for p in engine.front] == [c.length_config for c in result.front]
    cheapest = result.front[0]
    assert engine.resolve({"macs_fraction": cheapest.macs / result.full.macs}) == cheapest.length_config
    # resuming a finished search evaluates nothing new and writes the same front
    again, _ = search(str(model), data, out, config, progress=False)
    assert [c.gene for c in again.front] == [c.gene for c in result.front]


def test_search_rescores_the_front_on_more_questions(tmp_path, tiny_model_dir):
    """The re-scored front's F1 are those of quala.evaluate on the larger sample, not the search's."""
    from quala.engine import load_predictor
    from quala.evaluate import evaluate
    from quala.search import search

    config = SearchConfig(population=3, iterations=1, mutations=2, crossovers=2, max_examples=6, seed=0)
    config.rescore_examples, config.rescore_bins, config.measure_latency, config.threads = 16, 2, False, 1
    data = load_squad(DEMO_DEV, "0:2")
    result, document = search(str(tiny_model_dir), data, tmp_path / "out", config, progress=False)
    assert document["data"]["num_questions"] == 6 and document["rescore"]["data"]["num_questions"] == 16
    rescored = [FrontPoint.from_dict(d) for d in document["rescore"]["candidates"]]
    assert len(rescored) >= 3 and document["front"] == [c.to_dict() for c in result.front]
    assert [c.gene for c in result.front] == [c.gene for c in pareto_front(rescored, anchor=result.full.gene)]
    predictor = load_predictor(tiny_model_dir, threads=1)
    for point in rescored[:: len(rescored) - 1]:  # the cheapest and full length, by quala.evaluate
        reference, _ = evaluate(predictor, data.spread(16), point.length_config)
        assert point.f1 == pytest.approx(reference.f1) and point.exact_match == pytest.approx(reference.exact_match)
    searched = {c.gene: c for c in result.candidates}
    assert all(p.macs == searched[p.gene].macs for p in rescored)


# ------------------------------------------------------------------------------------------ CLI
def quala(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-c", "from quala.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_macs_on_a_config_only_directory(tmp_path):
    from transformers import BertConfig

    minilm = BertConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=12)
    minilm.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    la = quala("macs", "--model", str(tmp_path), "--length-config", "315,251,242,159,142,33")
    assert la.returncode == 0, la.stderr
    out = json.loads(la.stdout.strip().splitlines()[-1])
    assert out["macs"] / 1e9 == pytest.approx(2.546, rel=0.005)
    assert out["macs"] / out["fraction_of_full"] / 1e9 == pytest.approx(4.757, rel=0.005)
    assert out["seq_length"] == 384 and out["length_config"] == [315, 251, 242, 159, 142, 33]
    bad = quala("macs", "--model", str(tmp_path), "--length-config", "300,200")
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--population", "0"], "population must be >= 1"),
        (["--objective", "flops"], "unknown objective"),
        (["--articles", "9:3"], "--articles"),
        (["--config", "no-such-preset"], "neither a file nor a packaged preset"),
    ],
)
def test_cli_search_rejects_bad_input(tmp_path, tiny_model_dir, args, message):
    out = tmp_path / "out"
    proc = quala("search", "--model", str(tiny_model_dir), "--data", str(DEMO_DEV), "--output", str(out), *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (out / "search.json").exists()


def test_cli_search_runs_the_cpu_preset_shape(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    args = ["search", "--model", str(tiny_model_dir), "--data", str(DEMO_DEV), "--output", str(out)]
    args += ["--config", "search-cpu", "--iterations", "1", "--mutations", "2", "--crossovers", "2"]
    args += ["--max-examples", "10", "--latency-repeats", "1", "--threads", "1", "--no-progress"]
    proc = quala(*args)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["completed"] and summary["data"]["num_questions"] == 10
    settings = json.loads((out / "search.json").read_text())["settings"]
    assert settings["population"] == 10 and settings["iterations"] == 1  # preset, then CLI overrides
    assert settings["predictor"] == "linear"
    assert settings["latency"]["repeats"] == 1 and settings["latency"]["warmup"] == 1
    assert "rescore" not in summary
    # the same search re-scored on 20 questions (candidates cached): the summary names the front's questions
    proc = quala(*args, "--rescore-examples", "20", "--rescore-bins", "2")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["rescore"]["data"]["num_questions"] == 20 and summary["data"]["num_questions"] == 10


def test_attach_refuses_installed_packages_before_any_work(tmp_path, tiny_model_dir, monkeypatch):
    """packaged:minilm lives in site-packages: --attach must not write search.json there (nor anywhere else)."""
    import quala.engine
    from quala.search import search

    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded before --attach was checked")

    monkeypatch.setattr(quala.engine, "load_predictor", must_not_load)
    config = SearchConfig(population=3, iterations=1, mutations=1, crossovers=1, max_examples=4)
    data = load_squad(DEMO_DEV, "0:1")
    with pytest.raises(QualaError, match=r"would write into the installed package at .*site-packages.*copy the model"):
        search("packaged:minilm", data, tmp_path / "out", config, attach=True, progress=False)
    fake = tmp_path / "venv" / "lib" / "site-packages" / "somepkg" / "model"
    shutil.copytree(tiny_model_dir, fake)
    with pytest.raises(QualaError, match=r"cp -r .* somepkg\) and search --model somepkg --attach"):
        search(str(fake), data, tmp_path / "out", config, attach=True, progress=False)
    assert not (tmp_path / "out").exists() and not (fake / "search.json").exists()
