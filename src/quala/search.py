"""Evolutionary search for length configurations (Kim & Cho 2021, LAT §4; QuaLA-MiniLM, arXiv 2210.17114 §3).

A length-adaptive model trained with LengthDrop runs any non-increasing per-layer token count. The search
finds the configurations on the Pareto front of accuracy (F1 on a validation split) against cost (analytic
MACs or measured latency), so that a deployment can pick the most accurate configuration within a budget.

The algorithm follows LAT's reference: start from the smallest LengthDrop sub-model, the full model and
``population`` constant-drop-ratio genes spread evenly in MACs between them; then, each iteration, take the
current front as parents and add ``mutations`` mutated and ``crossovers`` crossed-over genes, rejecting
genes cheaper than the smallest sub-model. Fixed here: the search split is named and recorded (it is not the
test split), nothing is hard-coded for 12 layers or 384 tokens, the front compares costs with costs, and
results are plain JSON.

Every candidate is evaluated once. Evaluations are checkpointed to ``search_state.json`` after each one; a
resumed search replays the seeded, deterministic algorithm against that cache, so it reaches exactly the state
the interrupted run had (and then the same front) without storing the random generator's state.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quala.config import EvalConfig
from quala.errors import QualaError
from quala.io import read_json, write_json_atomic
from quala.latency import LatencyConfig
from quala.lengths import Gene, constant_ratio_gene, full_config, smallest_config
from quala.macs import count_macs

SEARCH_FILE = "search.json"
STATE_FILE = "search_state.json"
PLOT_FILE = "pareto.png"
STRATEGIES = ("evolution", "random")
PREDICTORS = ("none", "linear")
OBJECTIVES = ("macs", "latency")
SPLIT_NOTE = "F1 and EM are measured on the search split named in 'data'; they are not test accuracy."


@dataclass
class SearchConfig:
    """Settings of one search; the defaults are LAT's (population 20, 30 x (30 mutations + 30 crossovers))."""

    strategy: str = "evolution"  # evolution | random (baseline: the same space, uniformly sampled)
    objective: str = "macs"  # cost axis of the front: macs (analytic) | latency (measured here)
    population: int = 20  # initial genes between the smallest sub-model and the full model
    random_init: int = 0  # of those, how many are uniform random genes instead of constant-ratio ones (LAT: 0)
    iterations: int = 30
    mutations: int = 30  # new genes per iteration from mutation
    crossovers: int = 30  # new genes per iteration from crossover
    mutation_prob: float = 0.5  # per-layer probability that a mutation changes the layer's length
    predictor: str = "none"  # none (LAT) | linear: rank many children by a fitted F1 predictor, evaluate the best
    predictor_pool: int = 20  # predictor: children generated per child evaluated
    ratio_bound: float = 0.2  # LengthDrop ratio bound: defines the smallest sub-model (the cost floor)
    min_length: int = 2  # fewest tokens a layer may keep
    evaluations: int | None = None  # random strategy: candidates to evaluate (default: the evolution maximum)
    max_evaluations: int | None = None  # stop (resumably) once this many candidates have been evaluated
    max_examples: int | None = None  # score on this many questions, evenly spaced over the split (None: all)
    seed: int = 42
    budgets: list[float] = field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.9])  # cost fractions to report
    measure_latency: bool = True  # time every candidate (always on for objective latency)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise QualaError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.objective not in OBJECTIVES:
            raise QualaError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        for name in ("population", "iterations", "mutations", "crossovers", "min_length"):
            minimum = 1 if name in ("population", "min_length") else 0
            if getattr(self, name) < minimum:
                raise QualaError(f"{name} must be >= {minimum}, got {getattr(self, name)}")
        if self.predictor not in PREDICTORS:
            raise QualaError(f"unknown predictor {self.predictor!r}; choose one of {', '.join(PREDICTORS)}")
        if self.predictor_pool < 1:
            raise QualaError(f"predictor_pool must be >= 1, got {self.predictor_pool}")
        if not 0 <= self.random_init <= self.population:
            raise QualaError(f"random_init must be in [0, population={self.population}], got {self.random_init}")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise QualaError(f"mutation_prob must be in [0, 1], got {self.mutation_prob}")
        if not 0.0 < self.ratio_bound < 1.0:
            raise QualaError(f"ratio_bound must be in (0, 1), got {self.ratio_bound}")
        for name in ("evaluations", "max_evaluations", "max_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise QualaError(f"{name} must be >= 1, got {value}")
        if any(not 0.0 < b <= 1.0 for b in self.budgets):
            raise QualaError(f"budgets are fractions of the full model's cost in (0, 1], got {self.budgets}")
        if self.objective == "latency":
            self.measure_latency = True

    def max_candidates(self) -> int:
        """Most candidates the strategy evaluates: smallest + full + population + iterations x new genes."""
        evolution = 2 + self.population + self.iterations * (self.mutations + self.crossovers)
        if self.strategy == "random":
            return self.evaluations or evolution
        return evolution


@dataclass
class Measurement:
    """What scoring one configuration yields (the search adds MACs)."""

    f1: float
    exact_match: float
    latency_ms: float | None = None
    seconds: float = 0.0  # wall time of the measurement


@dataclass
class Candidate:
    """One evaluated length configuration: the record stored in ``search.json``."""

    length_config: list[int]
    f1: float
    exact_match: float
    macs: int
    latency_ms: float | None

    @property
    def gene(self) -> Gene:
        return tuple(self.length_config)

    def cost(self, objective: str) -> float:
        if objective == "latency":
            if self.latency_ms is None:
                raise QualaError("objective latency needs measured latencies, but a candidate has none")
            return float(self.latency_ms)
        return float(self.macs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        try:
            return cls(
                length_config=[int(v) for v in d["length_config"]],
                f1=float(d["f1"]),
                exact_match=float(d["exact_match"]),
                macs=int(d["macs"]),
                latency_ms=None if d.get("latency_ms") is None else float(d["latency_ms"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise QualaError(f"malformed candidate record {d!r}: {exc}") from None


@dataclass
class SearchResult:
    """Outcome of a search (complete, or stopped at ``max_evaluations``)."""

    candidates: list[Candidate]  # in the order the search first asked for them
    front: list[Candidate]  # sorted by cost
    num_evaluations: int
    wall_seconds: float
    completed: bool
    area: float | None  # normalised area under the front on the objective's axis (see front_area)
    area_macs: float | None  # the same on the MACs axis (comparable across objectives)
    best_per_budget: dict[str, float | None]
    full: Candidate
    smallest: Candidate


# ----------------------------------------------------------------------------------------------- genes
def mutate(gene: Gene, rng: random.Random, prob: float, length: int, min_length: int = 2) -> Gene:
    """Change each layer with probability ``prob`` to a length between the next layer's and the new previous.

    Drawing layer ``i`` from ``[gene[i+1], new[i-1]]`` (``[min_length, new[i-1]]`` for the last layer,
    ``length`` above the first) keeps the gene non-increasing and in bounds whatever the other layers do.
    """
    new: list[int] = []
    for i, g in enumerate(gene):
        if rng.random() < prob:
            high = length if i == 0 else new[i - 1]
            low = min_length if i == len(gene) - 1 else gene[i + 1]
            new.append(rng.randint(low, high))
        else:
            new.append(g)
    return tuple(new)


def crossover(a: Gene, b: Gene) -> Gene:
    """Element-wise ceil-mean: non-increasing and in bounds when both parents are."""
    return tuple((x + y + 1) // 2 for x, y in zip(a, b, strict=True))


def random_gene(rng: random.Random, num_layers: int, length: int, min_length: int = 2) -> Gene:
    """A random non-increasing gene: ``num_layers`` uniform draws from ``[min_length, length]``, sorted."""
    return tuple(sorted((rng.randint(min_length, length) for _ in range(num_layers)), reverse=True))


def is_valid_gene(gene: Sequence[int], num_layers: int, length: int, min_length: int = 2) -> bool:
    return (
        len(gene) == num_layers
        and all(isinstance(n, int) for n in gene)
        and all(min_length <= n <= length for n in gene)
        and all(a >= b for a, b in zip(gene, gene[1:], strict=False))
    )


def initial_genes(model_config: Any, length: int, config: SearchConfig) -> list[Gene]:
    """``population - random_init`` constant-ratio genes, MACs evenly spaced strictly between the smallest and
    full model.

    LAT spaces its initial ratios by an average-length formula hard-coded for 12 layers of 384 tokens; here
    the ratio for each MACs target is found by bisection on the real MAC count, for any depth and length.
    """
    n = int(model_config.num_hidden_layers)

    def macs_at(ratio: float) -> int:
        return count_macs(model_config, length, constant_ratio_gene(n, length, ratio, config.min_length)).total

    low, high = macs_at(config.ratio_bound), macs_at(0.0)
    genes: list[Gene] = []
    count = config.population - config.random_init
    for k in range(1, count + 1):
        target = low + (high - low) * k / (count + 1)
        lo, hi = 0.0, config.ratio_bound  # macs_at is non-increasing in the ratio
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if macs_at(mid) >= target else (lo, mid)
        gene = constant_ratio_gene(n, length, lo, config.min_length)
        if gene not in genes:
            genes.append(gene)
    return genes


# ----------------------------------------------------------------------------------------------- fronts
def pareto_front(
    candidates: Iterable[Candidate], objective: str = "macs", anchor: Gene | None = None
) -> list[Candidate]:
    """Candidates no other candidate dominates (lower-or-equal cost and higher-or-equal F1, one strictly).

    Sorted by cost. ``anchor`` (the full-length gene) is kept even when dominated, as the reference point an
    unconstrained request falls back to; LAT's reference front likewise always keeps the most expensive gene.
    Of candidates with equal cost and F1, the one with the longest lengths (first in sort order) is kept.
    """
    cands = list(candidates)
    order = sorted(cands, key=lambda c: (c.cost(objective), -c.f1, [-n for n in c.length_config]))
    front: list[Candidate] = []
    best = -math.inf
    for c in order:
        if c.f1 > best:
            front.append(c)
            best = c.f1
    if anchor is not None and all(c.gene != anchor for c in front):
        front.extend(c for c in cands if c.gene == anchor)
        front.sort(key=lambda c: (c.cost(objective), -c.f1))
    return front


def dominates(a: Candidate, b: Candidate, objective: str = "macs") -> bool:
    ca, cb = a.cost(objective), b.cost(objective)
    return ca <= cb and a.f1 >= b.f1 and (ca < cb or a.f1 > b.f1)


def front_area(points: Iterable[tuple[float, float]], low: float, high: float) -> float:
    """Normalised area under the attainment staircase of ``(cost, f1)`` points.

    It is the mean, over budgets ``b`` uniform in ``[low, high]``, of the best F1 among points costing at most
    ``b`` (0 where none fits); for LAT's front it equals the reference's ``area``. Pass costs as fractions of
    the full model's cost, with ``low`` the smallest sub-model's fraction and ``high`` 1, so that two searches
    of the same model are comparable. Higher is better.
    """
    if not high > low:
        raise ValueError(f"empty budget range [{low}, {high}]")
    points = sorted(points)
    area, best = 0.0, -math.inf
    for k, (cost, f1) in enumerate(points):
        best = max(best, f1)
        start = max(cost, low)
        end = high if k + 1 == len(points) else min(points[k + 1][0], high)
        if end > start:
            area += (end - start) * best
    return area / (high - low)


def cost_fractions(candidates: Iterable[Candidate], objective: str, full: Candidate) -> list[tuple[float, float]]:
    """``(cost / full cost, f1)`` of each candidate."""
    ref = full.cost(objective)
    return [(c.cost(objective) / ref, c.f1) for c in candidates]


def best_per_budget(candidates: list[Candidate], objective: str, full: Candidate, budgets: Sequence[float]) -> dict:
    """``{"0.5": best F1 within half the full model's cost, ...}`` (None where nothing fits)."""
    points = cost_fractions(candidates, objective, full)
    out: dict[str, float | None] = {}
    for b in budgets:
        fits = [f1 for frac, f1 in points if frac <= b + 1e-12]
        out[f"{b:g}"] = round(max(fits), 4) if fits else None
    return out


# ----------------------------------------------------------------------------------------------- state
class SearchState:
    """The evaluation cache, checkpointed atomically to ``search_state.json`` after every evaluation."""

    VERSION = 1

    def __init__(self, path: Path | None, fingerprint: dict[str, Any]):
        self.path = path
        self.fingerprint = fingerprint
        self.cache: dict[Gene, Candidate] = {}
        self.wall_seconds = 0.0
        if path is not None and path.is_file():
            raw = read_json(path)
            if not isinstance(raw, dict) or raw.get("version") != self.VERSION:
                raise QualaError(f"{path} is not a QuaLA search state (version {self.VERSION})")
            if raw.get("fingerprint") != fingerprint:
                raise QualaError(
                    f"{path} holds a search of a different model, data or measurement setting; use another "
                    "--output directory (or delete that file to start over)"
                )
            for record in raw.get("candidates", []):
                cand = Candidate.from_dict(record)
                self.cache[cand.gene] = cand
            self.wall_seconds = float(raw.get("wall_seconds", 0.0))

    def save(self, wall_seconds: float) -> None:
        if self.path is None:
            return
        write_json_atomic(
            self.path,
            {
                "version": self.VERSION,
                "fingerprint": self.fingerprint,
                "wall_seconds": round(wall_seconds, 3),
                "candidates": [c.to_dict() for c in self.cache.values()],
            },
        )


class _Stop(Exception):
    """``max_evaluations`` reached."""


class _Run:
    """Memoised evaluation with checkpointing, progress and the evaluation cap."""

    def __init__(self, evaluate_fn, model_config, length, config, state, on_evaluate, progress):
        from tqdm.auto import tqdm

        self.evaluate_fn = evaluate_fn
        self.model_config = model_config
        self.length = length
        self.config = config
        self.state = state
        self.on_evaluate = on_evaluate
        self.used: dict[Gene, Candidate] = {}
        self.started = time.perf_counter()
        self.previous_wall = state.wall_seconds
        self.bar = tqdm(
            total=config.max_candidates(),
            desc=f"search ({config.strategy})",
            unit="cand",
            disable=not progress,
            dynamic_ncols=True,
        )
        self.full_gene: Gene = full_config(int(model_config.num_hidden_layers), length)
        self.phase = ""

    def wall(self) -> float:
        return self.previous_wall + time.perf_counter() - self.started

    def macs(self, gene: Gene) -> int:
        return count_macs(self.model_config, self.length, gene).total

    def evaluate(self, gene: Gene) -> Candidate:
        if gene in self.used:
            return self.used[gene]
        cand = self.state.cache.get(gene)
        if cand is None:
            if self.config.max_evaluations is not None and len(self.used) >= self.config.max_evaluations:
                raise _Stop
            m = self.evaluate_fn(list(gene))
            cand = Candidate(list(gene), float(m.f1), float(m.exact_match), self.macs(gene), m.latency_ms)
            self.state.cache[gene] = cand
            self.state.save(self.wall())
            if self.on_evaluate is not None:
                self.on_evaluate(cand)
        self.used[gene] = cand
        self.bar.update(1)
        self._postfix()
        return cand

    def _postfix(self) -> None:
        full = self.used.get(self.full_gene)
        if full is None or self.bar.disable:
            return
        best = best_per_budget(list(self.used.values()), self.config.objective, full, self.config.budgets)
        text = " ".join(f"<={k}:{v:.1f}" if v is not None else f"<={k}:-" for k, v in best.items())
        self.bar.set_postfix_str(f"{self.phase} best F1 {text} full:{full.f1:.1f}", refresh=False)


def run_search(
    evaluate_fn: Callable[[list[int]], Measurement],
    model_config: Any,
    length: int,
    config: SearchConfig,
    state_path: str | Path | None = None,
    fingerprint: dict[str, Any] | None = None,
    on_evaluate: Callable[[Candidate], None] | None = None,
    progress: bool = False,
) -> SearchResult:
    """Search length configurations of a ``num_hidden_layers``-layer model for reference length ``length``.

    ``evaluate_fn(length_config)`` scores one configuration; it is called at most once per configuration,
    across interruptions when ``state_path`` is given. ``on_evaluate`` runs after each new one is saved.
    """
    num_layers = int(model_config.num_hidden_layers)
    if config.min_length > length:
        raise QualaError(f"min_length {config.min_length} exceeds the reference length {length}")
    state = SearchState(Path(state_path) if state_path is not None else None, fingerprint or {})
    run = _Run(evaluate_fn, model_config, length, config, state, on_evaluate, progress)
    rng = random.Random(config.seed)
    smallest_gene = smallest_config(num_layers, length, config.ratio_bound, config.min_length)
    completed = True
    try:
        smallest = run.evaluate(smallest_gene)
        run.evaluate(run.full_gene)
        floor = smallest.macs  # candidates cheaper than the smallest sub-model are rejected (LAT)
        if config.strategy == "evolution":
            _evolution(run, rng, config, length, floor)
        else:
            _random_search(run, rng, config, length, floor)
    except _Stop:
        completed = False
    finally:
        run.bar.close()
        state.save(run.wall())
    if run.full_gene not in run.used or smallest_gene not in run.used:
        raise QualaError(f"max_evaluations={config.max_evaluations} is too small: the search needs at least 2")
    return _result(run, config, smallest_gene, completed)


def _evolution(run: _Run, rng: random.Random, config: SearchConfig, length: int, floor: int) -> None:
    """LAT §4.2. ``random_init`` > 0 seeds part of the population with random genes instead of constant-ratio
    ones: profiles that keep most tokens early and drop late are far from every constant-ratio gene, and a
    short search does not reach them by mutation (docs/search.md). ``predictor: linear`` evaluates only the
    children an F1 predictor ranks highest among ``predictor_pool`` times as many (:func:`_most_promising`)."""
    genes = initial_genes(run.model_config, length, config)
    seeds = 0
    for gene in _random_genes(run, rng, length, config.min_length, floor, 1000 * config.random_init):
        if gene not in genes and gene not in run.used:
            genes.append(gene)
            seeds += 1
            if seeds == config.random_init:
                break
    for gene in genes:
        run.evaluate(gene)
    for it in range(config.iterations):
        run.phase = f"iter {it + 1}/{config.iterations}"
        pool = [c.gene for c in pareto_front(run.used.values(), config.objective, anchor=run.full_gene)]
        members = set(pool)
        predictor = None
        if config.predictor == "linear":
            predictor = F1Predictor(length).fit(list(run.used), [c.f1 for c in run.used.values()])
        for kind, size in (("mutation", config.mutations), ("crossover", config.crossovers)):
            if predictor is None:  # LAT: evaluate the first `size` new children
                for gene in _children(run, rng, config, length, floor, pool, kind, size, members):
                    run.evaluate(gene)  # parents stay this iteration's front (LAT §4.2); children compete next
                    members.add(gene)
                continue
            exclude = members | set(run.used)  # every pick costs one evaluation
            children = list(
                _children(run, rng, config, length, floor, pool, kind, size * config.predictor_pool, exclude)
            )
            for gene in _most_promising(run, predictor, children, size):
                run.evaluate(gene)
                members.add(gene)


def _children(
    run: _Run,
    rng: random.Random,
    config: SearchConfig,
    length: int,
    floor: int,
    pool: list[Gene],
    kind: str,
    size: int,
    exclude: set[Gene],
) -> Iterator[Gene]:
    """Up to ``size`` distinct new children of ``pool`` by ``kind`` (mutation or crossover), none in
    ``exclude`` and none cheaper than ``floor``; ``100 x size`` attempts at most."""
    seen = set(exclude)
    added = attempts = 0
    while added < size and attempts < 100 * max(size, 1):
        attempts += 1
        if kind == "mutation":
            gene = mutate(rng.choice(pool), rng, config.mutation_prob, length, config.min_length)
        elif len(pool) >= 2:
            a, b = rng.sample(pool, 2)
            gene = crossover(a, b)
        else:
            return
        if gene in seen or run.macs(gene) < floor:
            continue
        seen.add(gene)
        added += 1
        yield gene


class F1Predictor:
    """Ridge least squares of F1 on each layer's kept fraction ``x = n / L`` and ``log x``.

    The accuracy predictor of predictor-guided evolution (Once-for-All, Cai et al. 2020, §3.3; HAT, Wang et al.
    2020): refitted to every evaluated candidate each iteration, it ranks many children so that only the
    promising ones are evaluated. On 629 configurations of the SQuAD-mini LengthDrop model (200 questions each)
    its cross-validated error is 2.3 F1 from 20 training points and 1.6 from 200 (F1 spread 7.1).
    """

    def __init__(self, length: int, ridge: float = 0.1):
        self.length = length
        self.ridge = ridge
        self.coef = None

    def _features(self, genes: Sequence[Gene]):
        import numpy as np

        x = np.asarray(genes, dtype=float) / self.length  # (N, layers)
        return np.concatenate([np.ones((len(x), 1)), x, np.log(x)], axis=1)  # (N, 1 + 2 * layers)

    def fit(self, genes: Sequence[Gene], f1: Sequence[float]) -> F1Predictor:
        import numpy as np

        a = self._features(genes)
        penalty = self.ridge * np.eye(a.shape[1])
        penalty[0, 0] = 0.0  # the intercept is not shrunk
        self.coef = np.linalg.solve(a.T @ a + penalty, a.T @ np.asarray(f1, dtype=float))
        return self

    def __call__(self, genes: Sequence[Gene]) -> list[float]:
        if not genes:
            return []
        return [float(v) for v in self._features(genes) @ self.coef]


def _most_promising(run: _Run, predictor: F1Predictor, children: list[Gene], size: int) -> list[Gene]:
    """Greedily pick ``size`` children by the area their predicted F1 would add under the front.

    The front's staircase is drawn from the predicted F1 of every evaluated candidate; a child at cost ``c``
    adds the area between its predicted F1 and the staircase over the budgets from ``c`` up to the full
    model's cost (the quantity :func:`front_area` measures). Each pick joins the staircase, so later picks must
    improve on it too and the picks spread over the cost range. Children are ranked on MACs, known before
    evaluation, for either objective.
    """
    if not children:
        return []
    predicted = predictor(children)
    costs = [run.macs(g) for g in children]
    evaluated = list(run.used.values())
    stairs = sorted(zip([c.macs for c in evaluated], predictor([c.gene for c in evaluated]), strict=True))
    high = max(c for c, _ in stairs)
    picked: list[int] = []
    for _ in range(min(size, len(children))):
        best, best_gain = -1, -math.inf
        for i, (cost, f1) in enumerate(zip(costs, predicted, strict=True)):
            if i not in picked:
                gain = _area_gain(stairs, cost, f1, high)
                if gain > best_gain:
                    best, best_gain = i, gain
        picked.append(best)
        stairs = sorted([*stairs, (costs[best], predicted[best])])
    return [children[i] for i in picked]


def _area_gain(stairs: list[tuple[float, float]], cost: float, f1: float, high: float) -> float:
    """Area a point ``(cost, f1)`` adds under the staircase of ``stairs`` (sorted by cost) up to ``high``."""
    level = max((v for c, v in stairs if c <= cost), default=0.0)  # the staircase at budget `cost`
    gain, start = 0.0, cost
    for c, v in stairs:
        if c <= cost:
            continue
        gain += (c - start) * max(0.0, f1 - level)
        start, level = c, max(level, v)
        if level >= f1:
            return gain
    return gain + max(0.0, high - start) * max(0.0, f1 - level)


def _random_genes(
    run: _Run, rng: random.Random, length: int, min_length: int, floor: int, attempts: int
) -> Iterator[Gene]:
    """Up to ``attempts`` draws of :func:`random_gene`, yielding those no cheaper than ``floor`` (LAT rejects
    genes below the smallest sub-model). Draws happen only as the caller asks for the next gene."""
    num_layers = int(run.model_config.num_hidden_layers)
    for _ in range(attempts):
        gene = random_gene(rng, num_layers, length, min_length)
        if run.macs(gene) >= floor:
            yield gene


def _random_search(run: _Run, rng: random.Random, config: SearchConfig, length: int, floor: int) -> None:
    target = config.max_candidates()
    if len(run.used) >= target:
        return
    for gene in _random_genes(run, rng, length, config.min_length, floor, 1000 * target):
        if gene not in run.used:
            run.evaluate(gene)
            if len(run.used) >= target:
                break


def _result(run: _Run, config: SearchConfig, smallest_gene: Gene, completed: bool) -> SearchResult:
    cands = list(run.used.values())
    full, smallest = run.used[run.full_gene], run.used[smallest_gene]

    def area(objective: str) -> float | None:
        low = smallest.cost(objective) / full.cost(objective)
        return round(front_area(cost_fractions(cands, objective, full), low, 1.0), 4) if low < 1 else None

    return SearchResult(
        candidates=cands,
        front=pareto_front(cands, config.objective, anchor=run.full_gene),
        num_evaluations=len(cands),
        wall_seconds=round(run.wall(), 1),
        completed=completed,
        area=area(config.objective),
        area_macs=area("macs"),
        best_per_budget=best_per_budget(cands, config.objective, full, config.budgets),
        full=full,
        smallest=smallest,
    )


# ----------------------------------------------------------------------------------------------- real models
class SplitObjective:
    """Scores configurations on one split: F1/EM with features tokenised once, plus measured latency."""

    def __init__(self, predictor: Any, data: Any, config: SearchConfig):
        from quala.data import prepare_features

        self.predictor = predictor
        self.data = data
        self.config = config
        self.features = prepare_features(data.examples, predictor.tokenizer, config.evaluation.data)

    def __call__(self, length_config: list[int]) -> Measurement:
        from quala.evaluate import evaluate_features
        from quala.latency import measure_latency

        t0 = time.perf_counter()
        result, _ = evaluate_features(self.predictor, self.data, self.features, length_config, self.config.evaluation)
        latency = None
        if self.config.measure_latency:
            latency = measure_latency(self.predictor, length_config, self.config.latency).median_ms
        return Measurement(result.f1, result.exact_match, latency, time.perf_counter() - t0)


def check_attachable(name: str, path: str) -> None:
    """``--attach`` writes ``search.json`` into the model directory: refuse hub names and installed packages
    (a packaged model, or any directory inside site-packages), and say where to copy the model instead."""
    import quala

    resolved = Path(path).resolve()
    if not resolved.is_dir():
        raise QualaError(f"--attach needs a local model directory, got {name!r}")
    installed = [Path(quala.__file__).resolve().parent]
    inside = any(part in ("site-packages", "dist-packages") for part in resolved.parts) or any(
        resolved.is_relative_to(root) for root in installed
    )
    if inside:
        copy = Path(resolved.name if resolved.name != "model" else resolved.parent.name)
        raise QualaError(
            f"--attach would write into the installed package at {resolved}; copy the model to a directory of "
            f"your own first (cp -r {resolved} {copy}) and search --model {copy} --attach"
        )


def _weights_fingerprint(model: str) -> str:
    """Names, sizes and modification times of a model directory's weight files (detects a retrained model)."""
    path = Path(model)
    if not path.is_dir():
        return model
    digest = hashlib.sha256()
    for f in sorted(list(path.glob("*.safetensors")) + list(path.glob("*.onnx"))):
        st = f.stat()
        digest.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def search(
    model: str,
    data_file: str,
    articles: str | None,
    output: str | Path,
    config: SearchConfig,
    backend: str = "auto",
    attach: bool = False,
    progress: bool = True,
    on_evaluate: Callable[[Candidate], None] | None = None,
) -> tuple[SearchResult, dict[str, Any]]:
    """Run (or resume) a search of ``model`` on ``data_file`` and write ``search.json`` and ``pareto.png``.

    Returns the result and the ``search.json`` document. ``attach`` also copies ``search.json`` into the
    model directory when the search completed, where the engine looks for it.
    """
    from quala.config import save_resolved
    from quala.data import load_squad
    from quala.engine import load_predictor
    from quala.io import machine_info, write_manifest
    from quala.model import resolve_model_path

    output = Path(output)
    if output.exists() and not output.is_dir():
        raise QualaError(f"--output {output} exists and is not a directory")
    if attach:
        check_attachable(model, resolve_model_path(model))
    data = load_squad(data_file, articles).spread(config.max_examples)
    predictor = load_predictor(model, backend=backend, threads=config.evaluation.threads)
    length = int(predictor.la_config.reference_length)
    if config.latency.seq_length is not None and config.latency.seq_length > length:
        raise QualaError(f"latency seq_length {config.latency.seq_length} exceeds the reference length {length}")
    objective = SplitObjective(predictor, data, config)
    fingerprint = {
        "model": str(Path(resolve_model_path(model)).resolve()) if Path(model).exists() else model,
        "weights": _weights_fingerprint(resolve_model_path(model)),
        "backend": predictor.backend,
        "data": {**data.describe(), "file": str(Path(data_file).resolve())},
        "evaluation": asdict(config.evaluation),
        "latency": asdict(config.latency) if config.measure_latency else None,
    }
    output.mkdir(parents=True, exist_ok=True)
    result = run_search(
        objective,
        predictor.model_config,
        length,
        config,
        output / STATE_FILE,
        fingerprint,
        on_evaluate=on_evaluate,
        progress=progress,
    )
    settings = {
        **asdict(config),
        "model": model,
        "backend": predictor.backend,
        "num_layers": int(predictor.model_config.num_hidden_layers),
        "reference_length": length,
        "length_rule": predictor.la_config.length_rule,
    }
    document = {
        "settings": settings,
        "data": data.describe(),
        "candidates": [c.to_dict() for c in result.candidates],
        "front": [c.to_dict() for c in result.front],
        "summary": {
            "strategy": config.strategy,
            "objective": config.objective,
            "completed": result.completed,
            "num_evaluations": result.num_evaluations,
            "wall_seconds": result.wall_seconds,
            "area": result.area,
            "area_macs": result.area_macs,
            "best_f1_per_budget": result.best_per_budget,
            "note": SPLIT_NOTE,
            "machine": machine_info(),
        },
    }
    write_json_atomic(output / SEARCH_FILE, document)
    title = f"{config.strategy} search of {model} on {data.source} articles {data.articles or 'all'}"
    plot_pareto(result.candidates, result.front, output / PLOT_FILE, config.objective, title)
    save_resolved(output, config)
    write_manifest(output, "search", model=model, data=data.describe(), completed=result.completed)
    if attach and result.completed:
        write_json_atomic(Path(resolve_model_path(model)) / SEARCH_FILE, document)
    return result, document


# ----------------------------------------------------------------------------------------------- plot
def plot_pareto(
    candidates: list[Candidate],
    front: list[Candidate],
    path: str | Path,
    objective: str = "macs",
    title: str = "",
) -> None:
    """F1 against GMACs and against latency: every candidate, the search's front highlighted (with its
    staircase on the objective's axis), the full-length configuration starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from quala.io import atomic_path

    panels = [
        ("macs", "GMACs per sequence at the reference length", 1e-9),
        ("latency", "median latency (ms)", 1.0),
    ]
    has_latency = all(c.latency_ms is not None for c in candidates)
    full_length = max(max(c.length_config) for c in candidates)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (axis, label, scale) in zip(axes, panels, strict=True):
        if axis == "latency" and not has_latency:
            ax.text(0.5, 0.5, "latency not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        ax.scatter(
            [c.cost(axis) * scale for c in candidates],
            [c.f1 for c in candidates],
            s=12,
            color="0.65",
            label=f"candidates ({len(candidates)})",
        )
        stairs = pareto_front(candidates, axis)  # the attainment staircase on this axis
        xs = [c.cost(axis) * scale for c in stairs] + [max(c.cost(axis) for c in candidates) * scale]
        ax.step(xs, [c.f1 for c in stairs] + [stairs[-1].f1], where="post", color="tab:red", lw=1, alpha=0.6)
        ax.scatter(
            [c.cost(axis) * scale for c in front],
            [c.f1 for c in front],
            s=30,
            color="tab:red",
            label=f"front ({objective})",
            zorder=3,
        )
        full = [c for c in candidates if min(c.length_config) == full_length]
        ax.scatter(
            [c.cost(axis) * scale for c in full],
            [c.f1 for c in full],
            marker="*",
            s=150,
            color="tab:blue",
            label="full length",
            zorder=4,
        )
        ax.set_xlabel(label)
        ax.set_ylabel("F1 on the search split")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
