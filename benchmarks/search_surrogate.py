"""Choose search settings cheaply: evolution against random search on a surrogate of a real model's F1.

Real comparisons cost ~20 minutes per search on 2 cores, too few to tell settings apart by seeds. This script
fits a surrogate ``F1(length config)`` to configurations a model was really scored on (the candidates of
``search.json`` files, same question count): ``linear`` (least squares on per-layer kept fractions, the family
the ``linear`` search predictor also uses) or ``knn`` (inverse-distance mean of the 8 nearest scored
configurations: bumpy, and outside the predictor's family, so it does not flatter predictor-guided search).
It then runs both strategies of :func:`quala.evolution.run_search` many
times on it, with Gaussian noise standing for question sampling, and scores each front by its *true* (noise-
free) surrogate F1 (the analogue of held-out re-scoring). It prints and writes, per setting, the mean ratio of
the two areas and how often evolution wins. It guides which settings to spend real compute on; it is not a
result about the model.

    python benchmarks/search_surrogate.py --surrogate knn \\
        --candidates "benchmarks/results/search_vs_random_squadmini_81*/*/search.json" \\
                     "benchmarks/results/search_vs_random_squadmini_rnd6x16_seed*/*/search.json" \\
        --output benchmarks/results/search_surrogate_knn.json
"""

from __future__ import annotations

import argparse
import glob
import json
import random
import statistics
from pathlib import Path

import numpy as np
from transformers import BertConfig

from quala.evolution import Measurement, run_search
from quala.front import front_area
from quala.io import machine_info, write_json_atomic
from quala.search import SearchConfig

SETTINGS = {
    "pipeline (8 + 6 x (6+6), LAT init)": dict(population=8, iterations=6, mutations=6, crossovers=6),
    "pipeline + random_init 4": dict(population=8, random_init=4, iterations=6, mutations=6, crossovers=6),
    "random init, 12 x (4+2)": dict(population=6, random_init=6, iterations=12, mutations=4, crossovers=2),
    "random init, 16 x (4+2)": dict(population=6, random_init=6, iterations=16, mutations=4, crossovers=2),
    "half random init, 10 x (6+3)": dict(population=10, random_init=5, iterations=10, mutations=6, crossovers=3),
    "pipeline + linear predictor": dict(population=8, iterations=6, mutations=6, crossovers=6, predictor="linear"),
    "random init 10, 16 x (4+2) + linear predictor": dict(
        population=10, random_init=10, iterations=16, mutations=4, crossovers=2, predictor="linear"
    ),
    "search-cpu (6 + 4 x (5+5))": dict(population=6, iterations=4, mutations=5, crossovers=5),
    "random init 10, 6 x (4+2) + linear predictor": dict(
        population=10, random_init=10, iterations=6, mutations=4, crossovers=2, predictor="linear"
    ),
}
MINILM = BertConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=12)


def fit_surrogate(files: list[str], length: int, kind: str = "linear"):
    """``linear``: least squares on per-layer kept fractions and their values clipped at 0.8 (a mild
    saturation). ``knn``: inverse-distance mean of the 8 nearest scored configurations."""
    rows: dict[tuple[int, ...], float] = {}
    counts = set()
    for f in files:
        d = json.loads(Path(f).read_text())
        counts.add(d["data"]["num_questions"])
        for c in d["candidates"]:
            rows[tuple(c["length_config"])] = float(c["f1"])
    if len(counts) > 1:
        raise SystemExit(f"candidates scored on different question counts {sorted(counts)}; pass one kind")
    x = np.array(list(rows)) / length
    if kind == "knn":
        known, scores = x * length, np.array(list(rows.values()))

        def nearest(gene) -> float:
            dist = np.sqrt(((known - np.asarray(gene, dtype=float)) ** 2).sum(axis=1))  # (num_points,)
            idx = np.argsort(dist)[:8]
            weight = 1.0 / (dist[idx] + 5.0)
            return float(weight @ scores[idx] / weight.sum())

        return nearest, len(rows), 0.0
    design = np.c_[np.ones(len(x)), x, np.minimum(x, 0.8)]
    y = np.array(list(rows.values()))
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = float(np.std(y - design @ coef))

    def f1(gene) -> float:
        g = np.asarray(gene) / length
        return float(np.r_[1.0, g, np.minimum(g, 0.8)] @ coef)

    return f1, len(rows), residual


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--candidates", required=True, nargs="+", help="globs of search.json files scored on one question count"
    )
    p.add_argument("--surrogate", choices=("linear", "knn"), default="linear")
    p.add_argument("--length", type=int, default=384)
    p.add_argument("--noise", type=float, default=1.5, help="F1 noise (std) of one evaluation")
    p.add_argument("--seeds", type=int, default=30)
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)

    files = sorted({f for pattern in args.candidates for f in glob.glob(pattern)})
    if not files:
        raise SystemExit(f"no files match {args.candidates!r}")
    true_f1, num_points, residual = fit_surrogate(files, args.length, args.surrogate)
    print(f"{args.surrogate} surrogate of {num_points} configurations (linear fit residual std {residual:.2f} F1)")

    def true_area(result) -> float:
        full = result.full.macs
        points = [(c.macs / full, true_f1(c.length_config)) for c in result.front]
        return front_area(points, result.smallest.macs / full, 1.0)

    out = {
        "machine": machine_info(),
        "surrogate": args.surrogate,
        "files": files,
        "num_points": num_points,
        "residual_std": residual,
        "noise": args.noise,
        "seeds": args.seeds,
        "settings": {},
    }
    for name, kw in SETTINGS.items():
        ratios, evaluations = [], 0
        for seed in range(args.seeds):
            noise = random.Random(seed * 7919 + 1)

            def evaluate(gene, noise=noise):
                return Measurement(true_f1(gene) + noise.gauss(0.0, args.noise), 0.0)

            evo = run_search(
                evaluate,
                MINILM,
                args.length,
                SearchConfig(strategy="evolution", seed=seed, measure_latency=False, **kw),
            )
            rnd = run_search(
                evaluate,
                MINILM,
                args.length,
                SearchConfig(
                    strategy="random", seed=seed, measure_latency=False, evaluations=evo.num_evaluations, **kw
                ),
            )
            ratios.append(true_area(evo) / true_area(rnd))
            evaluations = evo.num_evaluations
        row = {
            "settings": kw,
            "evaluations": evaluations,
            "mean_area_ratio": round(statistics.mean(ratios), 4),
            "evolution_wins": round(sum(r > 1 for r in ratios) / len(ratios), 3),
        }
        out["settings"][name] = row
        print(
            f"{name:32s} {evaluations:4d} evaluations  area ratio {row['mean_area_ratio']:.4f}  "
            f"evolution wins {row['evolution_wins']:.0%}",
            flush=True,
        )
    write_json_atomic(Path(args.output), out)


if __name__ == "__main__":
    main()
