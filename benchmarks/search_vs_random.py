"""Evolutionary search against random search with the same number of evaluations, measured in one run.

Runs ``quala search`` (LAT evolution) and then a random search over the same space (non-increasing genes no
cheaper than the smallest LengthDrop sub-model) that evaluates exactly as many candidates, on the same model,
split and settings. Both are resumable: run the same command again after an interruption. The JSON written to
``--output/comparison.json`` holds both fronts, the normalised area under each front (mean best F1 over MACs
budgets between the smallest sub-model and the full model; see ``quala.front.front_area``), evaluation counts,
wall times and the machine; ``comparison.png`` overlays the two fronts.

F1 on the search split is biased upwards for whichever search evaluates more lucky configurations (the front
keeps the winners of many noisy draws). ``--holdout-examples N`` therefore re-scores every configuration on
both fronts on N questions of the same split that neither search saw (evenly spaced over the rest of the
split) and reports the area under each front with those held-out F1 values as well.

    python benchmarks/search_vs_random.py --model runs/squad-mini/lengthdrop --articles 32:40 \\
        --config search-cpu --output benchmarks/results/search_vs_random
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from quala.config import resolve
from quala.data import load_squad
from quala.evolution import SearchResult
from quala.front import cost_fractions, front_area
from quala.io import machine_info, write_json_atomic
from quala.search import SearchConfig, search

ROOT = Path(__file__).resolve().parents[1]


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from quala.front import pareto_front

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (name, result), color in zip(results.items(), ("tab:red", "tab:gray"), strict=True):
        full = result.full.macs
        ax.scatter(
            [c.macs / full for c in result.candidates], [c.f1 for c in result.candidates], s=10, color=color, alpha=0.35
        )
        stairs = pareto_front(result.candidates, "macs")
        xs = [c.macs / full for c in stairs] + [1.0]
        ax.step(
            xs,
            [c.f1 for c in stairs] + [stairs[-1].f1],
            where="post",
            color=color,
            label=f"{name}: area {result.area_macs:.2f}, {result.num_evaluations} evaluations",
        )
    ax.set_xlabel("MACs / full-length MACs")
    ax.set_ylabel("F1 on the search split")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency_area(result: SearchResult) -> float | None:
    """Area under the front on the measured-latency axis (each run's own smallest/full latencies bound it)."""
    if any(c.latency_ms is None for c in result.candidates):
        return None
    low = result.smallest.latency_ms / result.full.latency_ms
    if low >= 1:
        return None
    return round(front_area(cost_fractions(result.candidates, "latency", result.full), low, 1.0), 4)


def holdout_areas(
    model: str,
    data_file: str,
    articles: str,
    config: SearchConfig,
    results: dict[str, SearchResult],
    n: int,
    cache_file: Path | None = None,
) -> dict:
    """Re-score every front configuration on ``n`` split questions the searches never saw; area per search.

    ``cache_file`` (JSON, keyed by model, question count and configuration) lets runs with other seeds on the
    same model and split reuse held-out scores instead of recomputing them.
    """
    from quala.data import load_squad, prepare_features
    from quala.engine import load_predictor
    from quala.evaluate import evaluate_features

    split = load_squad(data_file, articles)
    seen = {ex.id for ex in split.spread(config.max_examples).examples}
    unseen = dataclasses.replace(split, examples=[ex for ex in split.examples if ex.id not in seen])
    held = unseen.spread(n)
    predictor = load_predictor(model, backend="torch", threads=config.threads)
    features = prepare_features(held.examples, predictor.tokenizer, config.evaluation.data)
    cache_key = f"{model}|{articles}|{config.max_examples}|{n}"
    stored = json.loads(cache_file.read_text()) if cache_file is not None and cache_file.is_file() else {}
    f1: dict[tuple[int, ...], float] = {
        tuple(int(v) for v in k.split(",")): float(v) for k, v in stored.get(cache_key, {}).items()
    }
    out: dict = {"num_questions": len(held.examples), "disjoint_from_search_questions": True}
    for name, result in results.items():
        for c in result.front:
            key = tuple(c.length_config)
            if key not in f1:
                f1[key] = evaluate_features(predictor, held, features, c.length_config, config.evaluation)[0].f1
                print(f"held-out {list(key)}: F1 {f1[key]:.2f}", file=sys.stderr)
                if cache_file is not None:
                    stored[cache_key] = {",".join(map(str, k)): v for k, v in f1.items()}
                    write_json_atomic(cache_file, stored)
        full, low = result.full.macs, result.smallest.macs / result.full.macs
        points = [(c.macs / full, f1[tuple(c.length_config)]) for c in result.front]
        out[name] = {
            "area_macs": round(front_area(points, low, 1.0), 4),
            "front": [
                {
                    "length_config": c.length_config,
                    "macs": c.macs,
                    "f1_search": c.f1,
                    "f1_holdout": round(f1[tuple(c.length_config)], 4),
                }
                for c in result.front
            ],
        }
    out["area_ratio_evolution_over_random"] = round(out["evolution"]["area_macs"] / out["random"]["area_macs"], 4)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/squad/dev-v1.1-part-a.json"))
    p.add_argument("--articles", default="32:40", help="the search (validation) split; never the test split")
    p.add_argument("--config", default=str(ROOT / "src/quala/configs/search-cpu.yaml"))
    p.add_argument("--max-examples", type=int, default=None, help="override the preset's max_examples")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--holdout-examples",
        type=int,
        default=0,
        help="re-score both fronts on N split questions neither search saw (0: skip)",
    )
    p.add_argument(
        "--holdout-cache",
        default=None,
        help="JSON file of held-out scores shared by runs on the same model and split (other seeds)",
    )
    p.add_argument("--output", default=str(ROOT / "benchmarks/results/search_vs_random"))
    args = p.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(args.output)
    overrides = {"max_examples": args.max_examples, "seed": args.seed, "evaluation": {"threads": args.threads}}
    overrides["evaluation"] = {k: v for k, v in overrides["evaluation"].items() if v is not None}
    config = resolve(SearchConfig, args.config, overrides)
    config.strategy = "evolution"
    t0 = time.perf_counter()
    data = load_squad(args.data, args.articles)
    evo, _ = search(args.model, data, out / "evolution", config)
    print(f"evolution: {evo.num_evaluations} evaluations, area {evo.area_macs}, {evo.wall_seconds} s", file=sys.stderr)
    config.strategy = "random"
    config.evaluations = evo.num_evaluations
    rnd, document = search(args.model, data, out / "random", config)
    print(f"random: {rnd.num_evaluations} evaluations, area {rnd.area_macs}, {rnd.wall_seconds} s", file=sys.stderr)
    results = {"evolution": evo, "random": rnd}
    report = {
        "machine": machine_info(),
        "load_average_at_end": os.getloadavg(),
        "model": args.model,
        "data": document["data"],
        "settings": document["settings"],
        "area_definition": "mean over MACs budgets b uniform in [smallest sub-model, full model] of the best F1 "
        "among evaluated candidates with MACs <= b (MACs as a fraction of the full model's)",
        "this_session_seconds": round(time.perf_counter() - t0, 1),
    }
    for name, result in results.items():
        report[name] = {
            "num_evaluations": result.num_evaluations,
            "wall_seconds": result.wall_seconds,
            "area_macs": result.area_macs,
            "area_latency": latency_area(result),
            "best_f1_per_budget": result.best_per_budget,
            "front": [c.to_dict() for c in result.front],
        }
    report["area_ratio_evolution_over_random"] = round(evo.area_macs / rnd.area_macs, 4)
    if args.holdout_examples > 0:
        report["holdout"] = holdout_areas(
            args.model,
            args.data,
            args.articles,
            config,
            results,
            args.holdout_examples,
            Path(args.holdout_cache) if args.holdout_cache else None,
        )
        h = report["holdout"]
        print(
            f"held-out ({h['num_questions']} questions): area evolution {h['evolution']['area_macs']} "
            f"vs random {h['random']['area_macs']}"
        )
    write_json_atomic(out / "comparison.json", report)
    _plot(results, out / "comparison.png")
    print(f"area evolution {evo.area_macs} vs random {rnd.area_macs} ({evo.num_evaluations} evaluations each)")


if __name__ == "__main__":
    main()
