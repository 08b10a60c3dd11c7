"""The search stage: the Pareto front of a length-adaptive model's configurations on a validation split.

A length-adaptive model trained with LengthDrop runs any non-increasing per-layer token count. The search
(Kim & Cho 2021, LAT §4; QuaLA-MiniLM, arXiv 2210.17114 §3) finds the configurations on the Pareto front of
accuracy (F1 on a validation split) against cost (analytic MACs or measured latency), so that a deployment can
pick the most accurate configuration within a budget. The algorithm is :mod:`quala.evolution`; this module
scores configurations with a real model and writes ``search.json`` (:mod:`quala.front`), ``pareto.png`` and the
resumable state. The search split is named and recorded (it is not the test split), and results are plain JSON.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from quala.config import EvalConfig, setting
from quala.data import SquadData
from quala.errors import QualaError
from quala.evolution import Measurement, SearchResult, run_search
from quala.front import FrontPoint, best_per_budget, pareto_front, write_search
from quala.latency import LatencyConfig
from quala.lengths import Gene
from quala.model_dir import ModelDir
from quala.search_state import STATE_FILE, SearchState

PLOT_FILE = "pareto.png"
STRATEGIES = ("evolution", "random")
PREDICTORS = ("none", "linear")
OBJECTIVES = ("macs", "latency")
SPLIT_NOTE = "F1 and EM are measured on the search split named in 'data'; they are not test accuracy."
RESCORE_NOTE = (
    "The front's F1 and EM are these candidates' scores on the questions named here (latency and MACs are the "
    "search's); the candidates' list keeps their scores on the search's sample."
)


@dataclass
class SearchConfig:
    """Settings of one search; the defaults are LAT's (population 20, 30 x (30 mutations + 30 crossovers))."""

    strategy: str = setting("evolution", "evolution (LAT's search) | random (baseline over the same space).")
    objective: str = setting("macs", "Cost axis of the front: macs (analytic) | latency (measured here).")
    population: int = setting(20, "Initial genes between the smallest sub-model and the full model (LAT: 20).")
    random_init: int = setting(0, "How many initial genes are random, not constant-ratio (LAT: 0; docs/search.md).")
    iterations: int = setting(30, "Evolution iterations (LAT: 30).")
    mutations: int = setting(30, "Mutated genes per iteration (LAT: 30).")
    crossovers: int = setting(30, "Crossed genes per iteration (LAT: 30).")
    mutation_prob: float = setting(0.5, "Probability that a mutation changes each layer (LAT: 0.5).")
    predictor: str = setting(
        "none",
        "none (LAT: evaluate every child) | linear (generate --predictor-pool times more children, evaluate "
        "those a fitted F1 predictor ranks highest; docs/search.md).",
    )
    predictor_pool: int = setting(20, "Predictor: children generated per child evaluated.")
    ratio_bound: float = setting(
        0.2, "LengthDrop ratio bound; its smallest sub-model is the cheapest configuration allowed."
    )
    smallest: list[int] | None = setting(
        None,
        "Cheapest configuration searched, e.g. 384,384,160,64,32,16 (the pipeline passes the LengthDrop stage's "
        "length_drop.smallest; default: the smallest sub-model of --ratio-bound).",
        flag="--smallest",
    )
    min_length: int = 2  # fewest tokens a layer may keep
    evaluations: int | None = setting(
        None, "Random strategy: candidates to evaluate (default: the evolution's maximum)."
    )
    max_evaluations: int | None = setting(None, "Stop after this many candidates; run again to resume.")
    max_examples: int | None = setting(None, "Score each candidate on N questions spread evenly over the split.")
    rescore_examples: int | None = setting(
        None,
        "After the search, score the front and the best candidate of each of --rescore-bins cost bins again on N "
        "questions (more than --max-examples) and build the front from those scores: a small sample's front keeps "
        "the candidates it overrates (docs/search.md, 'Re-scoring'). Default: off.",
    )
    rescore_bins: int = setting(8, "Re-scoring: equal cost bins between the smallest sub-model and full length.")
    seed: int = setting(42, "Random seed (same seed, same search).")
    budgets: list[float] = setting(
        help="Cost budgets as fractions of the full model's cost, e.g. 0.5,0.7,0.9: the progress bar and the "
        "summary show the best F1 found within each.",
        flag="--budget",
        default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.9],
    )
    measure_latency: bool = setting(
        True, "Time every candidate (for the latency plot; always on for objective latency).", flag="--latency"
    )
    threads: int | None = setting(None, "CPU threads of the scoring model (default: all cores).")
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
        for name in ("evaluations", "max_evaluations", "max_examples", "rescore_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise QualaError(f"{name} must be >= 1, got {value}")
        if self.rescore_examples is not None and (
            self.max_examples is None or self.rescore_examples <= self.max_examples
        ):
            searched = "every question" if self.max_examples is None else f"{self.max_examples} questions"
            raise QualaError(
                f"rescore_examples ({self.rescore_examples}) must exceed max_examples: the search scores {searched}, "
                "and re-scoring measures the front on more questions than the search did (set --max-examples lower)"
            )
        if self.rescore_bins < 1:
            raise QualaError(f"rescore_bins must be >= 1, got {self.rescore_bins}")
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


# ----------------------------------------------------------------------------------------------- re-scoring
RESCORE_STATE_FILE = "rescore_state.json"


def rescore_genes(result: SearchResult, objective: str, bins: int) -> list[Gene]:
    """What re-scoring measures: the search's front, full length, the smallest sub-model, and the best candidate
    (on the search's sample) of each of ``bins`` equal cost bins between the smallest and full length, by cost.

    The bins bring back configurations that a lucky neighbour pushed off the small sample's front.
    """
    full, smallest = result.full, result.smallest
    low, high = smallest.cost(objective), full.cost(objective)
    best: dict[int, FrontPoint] = {}
    for c in result.candidates:
        k = min(int((c.cost(objective) - low) / (high - low) * bins), bins - 1) if high > low else 0
        if k not in best or c.f1 > best[k].f1:
            best[k] = c
    chosen = {c.gene: c for c in [*result.front, full, smallest, *best.values()]}
    return [g for g, _ in sorted(chosen.items(), key=lambda item: (item[1].cost(objective), item[0]))]


def rescore(
    objective: Callable[[list[int]], Measurement],
    result: SearchResult,
    config: SearchConfig,
    state: SearchState,
    progress: bool = True,
) -> list[FrontPoint]:
    """Score :func:`rescore_genes` with ``objective`` (a larger sample), keeping each candidate's MACs and the
    search's latency; resumable through ``state``, saved after each candidate."""
    from tqdm.auto import tqdm

    searched = {c.gene: c for c in result.candidates}
    out = []
    started, previous = time.perf_counter(), state.wall_seconds
    for gene in tqdm(
        rescore_genes(result, config.objective, config.rescore_bins),
        desc="re-score",
        unit="cand",
        disable=not progress,
        dynamic_ncols=True,
    ):
        point = state.cache.get(gene)
        if point is None:
            m = objective(list(gene))
            point = FrontPoint(
                list(gene), float(m.f1), searched[gene].macs, searched[gene].latency_ms, float(m.exact_match)
            )
            state.cache[gene] = point
            state.save(previous + time.perf_counter() - started)
        out.append(point)
    return out


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


def _weights_fingerprint(path: str) -> str:
    """Names, sizes and modification times of a model directory's weight files (detects a retrained model)."""
    directory = Path(path)
    if not directory.is_dir():
        return path
    digest = hashlib.sha256()
    for f in sorted(list(directory.glob("*.safetensors")) + list(directory.glob("*.onnx"))):
        st = f.stat()
        digest.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def search(
    model: str | ModelDir,
    data: SquadData,
    output: str | Path,
    config: SearchConfig,
    *,
    backend: str = "auto",
    attach: bool = False,
    progress: bool = True,
    on_evaluate: Callable[[FrontPoint], None] | None = None,
) -> tuple[SearchResult, dict[str, Any]]:
    """Run (or resume) a search of ``model`` on ``data`` and write ``search.json`` and ``pareto.png``.

    Scores ``config.max_examples`` questions spread over ``data``. Returns the result and the ``search.json``
    document. ``attach`` also copies ``search.json`` into the model directory when the search completed, where
    the engine looks for it.
    """
    from quala.config import save_resolved
    from quala.engine import load_predictor
    from quala.model_dir import write_manifest
    from quala.search_plot import plot_pareto

    model = ModelDir.resolve(model)
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise QualaError(f"--output {output} exists and is not a directory")
    if attach:
        check_attachable(model.name, model.path)
    rescore_data = data.spread(config.rescore_examples) if config.rescore_examples is not None else None
    data = data.spread(config.max_examples)
    predictor = load_predictor(model, backend=backend, threads=config.threads)
    length = int(predictor.la_config.reference_length)
    if config.latency.seq_length is not None and config.latency.seq_length > length:
        raise QualaError(f"latency seq_length {config.latency.seq_length} exceeds the reference length {length}")
    objective = SplitObjective(predictor, data, config)
    fingerprint = {
        "model": str(Path(model.path).resolve()) if Path(model.name).exists() else model.name,
        "weights": _weights_fingerprint(model.path),
        "backend": predictor.backend,
        "data": {**data.describe(), "file": str(Path(data.source).resolve())},
        # threads sat in the evaluation settings until they moved here: states written before still resume
        "evaluation": {**asdict(config.evaluation), "threads": config.threads},
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
    rescored = None
    if rescore_data is not None and result.completed:
        scorer = SplitObjective(predictor, rescore_data, replace(config, measure_latency=False))
        state = SearchState(
            output / RESCORE_STATE_FILE, {**fingerprint, "data": {**fingerprint["data"], **rescore_data.describe()}}
        )
        rescored = rescore(scorer, result, config, state, progress)
        result = replace(result, front=pareto_front(rescored, config.objective, anchor=result.full.gene))
    document = search_document(result, config, model.name, predictor, data, rescored, rescore_data)
    write_search(output, document)
    title = f"{config.strategy} search of {model.name} on {data.source} articles {data.articles or 'all'}"
    plot_pareto(
        result.candidates, result.front, output / PLOT_FILE, config.objective, title, rescored=rescored is not None
    )
    save_resolved(output, config)
    write_manifest(output, "search", model=model.name, data=data.describe(), completed=result.completed)
    if attach and result.completed:
        write_search(model.path, document)
    return result, document


def search_document(
    result: SearchResult,
    config: SearchConfig,
    model: str,
    predictor: Any,
    data: SquadData,
    rescored: list[FrontPoint] | None = None,
    rescore_data: SquadData | None = None,
) -> dict[str, Any]:
    """The ``search.json`` document: settings, data, every candidate, the front and a summary; with re-scoring,
    the re-scored candidates and their data too, and the front is theirs."""
    from quala.io import machine_info

    settings = {
        **asdict(config),
        "model": model,
        "backend": predictor.backend,
        "num_layers": int(predictor.model_config.num_hidden_layers),
        "reference_length": int(predictor.la_config.reference_length),
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
    if rescored is not None and rescore_data is not None:
        document["rescore"] = {
            "data": rescore_data.describe(),
            "bins": config.rescore_bins,
            "candidates": [c.to_dict() for c in rescored],
            "best_f1_per_budget": best_per_budget(rescored, config.objective, result.full, config.budgets),
            "note": RESCORE_NOTE,
        }
    return document
