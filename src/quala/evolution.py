"""The evolutionary search over length configurations (Kim & Cho 2021, LAT §4.2), independent of any model.

:func:`run_search` takes a function that scores one configuration; :mod:`quala.search` gives it one that runs a
real model on a validation split. The algorithm follows LAT's reference: start from the smallest LengthDrop
sub-model, the full model and ``population`` constant-drop-ratio genes spread evenly in MACs between them; then,
each iteration, take the current front as parents and add ``mutations`` mutated and ``crossovers`` crossed-over
genes, rejecting genes cheaper than the smallest sub-model. Nothing is hard-coded for 12 layers or 384 tokens,
and the front compares costs with costs.

Every candidate is evaluated once. Evaluations are checkpointed (:class:`~quala.search_state.SearchState`) after
each one; a resumed search replays the seeded, deterministic algorithm against that cache, so it reaches exactly
the state the interrupted run had (and then the same front) without storing the random generator's state.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quala.errors import QualaError
from quala.front import FrontPoint, best_per_budget, cost_fractions, front_area, pareto_front
from quala.lengths import Gene, check_smallest, constant_ratio_gene, full_config, smallest_config
from quala.macs import count_macs
from quala.search_state import SearchState

if TYPE_CHECKING:
    from quala.search import SearchConfig


@dataclass
class Measurement:
    """What scoring one configuration yields (the search adds MACs)."""

    f1: float
    exact_match: float
    latency_ms: float | None = None
    seconds: float = 0.0  # wall time of the measurement


@dataclass
class SearchResult:
    """Outcome of a search (complete, or stopped at ``max_evaluations``)."""

    candidates: list[FrontPoint]  # in the order the search first asked for them
    front: list[FrontPoint]  # sorted by cost
    num_evaluations: int
    wall_seconds: float
    completed: bool
    area: float | None  # normalised area under the front on the objective's axis (see front_area)
    area_macs: float | None  # the same on the MACs axis (comparable across objectives)
    best_per_budget: dict[str, float | None]
    full: FrontPoint
    smallest: FrontPoint


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


def floor_gene(num_layers: int, length: int, config: SearchConfig) -> Gene:
    """The cheapest configuration searched: ``config.smallest`` (a late-drop LengthDrop model's smallest
    sub-model), else LengthDrop's smallest sub-model at the ratio bound (LAT §4.1)."""
    if config.smallest is None:
        return smallest_config(num_layers, length, config.ratio_bound, config.min_length)
    return check_smallest(config.smallest, "search smallest", num_layers, length, config.min_length)


def initial_genes(model_config: Any, length: int, config: SearchConfig) -> list[Gene]:
    """``population - random_init`` genes, MACs evenly spaced strictly between the smallest and full model:
    constant-ratio genes (LAT), or with ``config.smallest`` genes on the layer-wise line from the full model
    to it.

    LAT spaces its initial ratios by an average-length formula hard-coded for 12 layers of 384 tokens; here
    the point for each MACs target is found by bisection on the real MAC count, for any depth and length.
    """
    n = int(model_config.num_hidden_layers)
    floor = floor_gene(n, length, config)

    def gene_at(t: float) -> Gene:  # t = 0: the full model, t = 1: the smallest; MACs non-increasing in t
        if config.smallest is None:
            return constant_ratio_gene(n, length, t * config.ratio_bound, config.min_length)
        return tuple(math.ceil(length - t * (length - f) - 1e-9) for f in floor)

    def macs_at(t: float) -> int:
        return count_macs(model_config, length, gene_at(t)).total

    low, high = macs_at(1.0), macs_at(0.0)
    genes: list[Gene] = []
    count = config.population - config.random_init
    for k in range(1, count + 1):
        target = low + (high - low) * k / (count + 1)
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if macs_at(mid) >= target else (lo, mid)
        gene = gene_at(lo)
        if gene not in genes:
            genes.append(gene)
    return genes


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
        self.used: dict[Gene, FrontPoint] = {}
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

    def evaluate(self, gene: Gene) -> FrontPoint:
        if gene in self.used:
            return self.used[gene]
        cand = self.state.cache.get(gene)
        if cand is None:
            if self.config.max_evaluations is not None and len(self.used) >= self.config.max_evaluations:
                raise _Stop
            m = self.evaluate_fn(list(gene))
            cand = FrontPoint(list(gene), float(m.f1), self.macs(gene), m.latency_ms, float(m.exact_match))
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
    on_evaluate: Callable[[FrontPoint], None] | None = None,
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
    smallest_gene = floor_gene(num_layers, length, config)
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
    promising ones are evaluated. Its measured error is in docs/search.md.
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
