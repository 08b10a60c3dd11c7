"""Re-time the front of a search in one process, alternating configurations round by round.

A search times each candidate once, at a different moment; on a shared machine those moments see different
loads. This script times every front configuration of a ``search.json`` again in ``--rounds`` interleaved
rounds (config A, B, C, ..., then again), so machine noise hits all alike, and reports each one's median,
its ratio to the full-length configuration measured in the same run, and the machine.

    python benchmarks/front_latency.py --model DIR --search OUT/search.json --threads 1 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from quala.engine import load_predictor
from quala.io import machine_info, read_json, write_json_atomic
from quala.latency import LatencyConfig, measure_latency


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--search", required=True, help="a search.json")
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--output", default=None, help="default: front_latency.json next to --search")
    args = p.parse_args(argv)

    front = read_json(args.search)["front"]
    predictor = load_predictor(args.model, backend=args.backend, threads=args.threads)
    config = LatencyConfig(warmup=1, repeats=args.repeats, batch_size=args.batch_size, threads=args.threads)
    full = [predictor.la_config.reference_length] * int(predictor.model_config.num_hidden_layers)
    configs = [f["length_config"] for f in front]
    if full not in configs:
        configs.append(full)
    rounds: dict[str, list[float]] = {",".join(map(str, c)): [] for c in configs}
    for _ in range(args.rounds):
        for c in configs:
            rounds[",".join(map(str, c))].append(measure_latency(predictor, c, config).median_ms)
    medians = {k: statistics.median(v) for k, v in rounds.items()}
    full_ms = medians[",".join(map(str, full))]
    by_config = {tuple(f["length_config"]): f for f in front}
    rows = []
    for c in configs:
        key = ",".join(map(str, c))
        entry = by_config.get(tuple(c), {})
        rows.append(
            {
                "length_config": c,
                "f1": entry.get("f1"),
                "macs": entry.get("macs"),
                "latency_ms_in_search": entry.get("latency_ms"),
                "median_ms": round(medians[key], 3),
                "ratio_to_full": round(medians[key] / full_ms, 3),
                "rounds_ms": rounds[key],
            }
        )
    report = {
        "machine": machine_info(),
        "load_average_at_end": os.getloadavg(),
        "model": args.model,
        "backend": predictor.backend,
        "settings": {
            "threads": args.threads,
            "rounds": args.rounds,
            "repeats": args.repeats,
            "batch_size": args.batch_size,
            "seq_length": predictor.la_config.reference_length,
        },
        "front": rows,
    }
    out = Path(args.output) if args.output else Path(args.search).with_name("front_latency.json")
    write_json_atomic(out, report)
    for r in rows:
        print(r["length_config"], r["median_ms"], r["ratio_to_full"])


if __name__ == "__main__":
    main()
