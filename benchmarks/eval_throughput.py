"""Evaluation throughput (questions/s) at full length vs a length configuration, measured in one run.

Runs alternate (A, B, A, B, ...) inside one process so machine noise hits both sides alike; the JSON written
to --output holds every round, the medians, their ratio and the machine info.

    python benchmarks/eval_throughput.py --model packaged:minilm --articles 32:40 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from quala.config import EvalConfig
from quala.data import load_squad
from quala.engine import load_predictor
from quala.evaluate import evaluate
from quala.io import machine_info, write_json_atomic
from quala.lengths import parse_length_config

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="packaged:minilm")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/squad/dev-v1.1-part-a.json"))
    p.add_argument("--articles", default="32:40")
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--length-config", default="315,251,242,159,142,33")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default=str(ROOT / "benchmarks/results/eval_throughput.json"))
    args = p.parse_args(argv)

    data = load_squad(args.data, args.articles, args.max_examples)
    predictor = load_predictor(args.model, backend="torch", threads=args.threads)
    dropped = parse_length_config(args.length_config, predictor.model_config.num_hidden_layers, 384)
    config = EvalConfig(batch_size=args.batch_size)
    runs: dict[str, list[dict]] = {"full": [], "dropped": []}
    for r in range(args.rounds):
        for name, lengths in (("full", None), ("dropped", dropped)):
            result, _ = evaluate(predictor, data, lengths, config)
            runs[name].append(result.to_dict())
            print(f"round {r} {name}: {result.questions_per_second:.2f} q/s, F1 {result.f1:.2f}", file=sys.stderr)
    med = {k: statistics.median(x["questions_per_second"] for x in v) for k, v in runs.items()}
    report = {
        "machine": machine_info(),
        "model": args.model,
        "data": data.describe(),
        "length_config": dropped,
        "questions_per_second_median": med,
        "speedup_dropped_vs_full": round(med["dropped"] / med["full"], 3),
        "runs": runs,
    }
    write_json_atomic(args.output, report)
    print(report["questions_per_second_median"], "speedup", report["speedup_dropped_vs_full"])


if __name__ == "__main__":
    main()
