"""What "one graph for every length configuration" costs: the fused full-length graph against the length-adaptive
graph, in one process, batch 1, engines taking turns feature by feature.

For every ``--models`` directory (exported or quantized with ``quala export`` / ``quala quantize``) it times
the fused full-length graph (``model_full.onnx``), the length-adaptive graph (``model.onnx``) asked for the full
length, and the length-adaptive graph at each ``--length-configs`` entry, on the same real SQuAD features:
once at their real lengths and once on the features that fill the whole window (``max_seq_length`` real
tokens). Each (model, graph, configuration) row gets its median and its ratio to the first model's fused graph
measured in the same rounds. Pass two directories (for example the same model exported by two versions of
the code) to compare their graphs under identical conditions.

    python benchmarks/graph_overhead.py --models runs/squad-mini/quantize \\
        --data ../shared/data/squad/dev-v1.1-part-a.json --articles 32:40 --features 30 \\
        --length-configs "384,384,384,384,326,97;315,251,242,159,142,33" --output benchmarks/results/graph_overhead.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from quala.data import collate, load_squad, prepare_features
from quala.engine import OnnxPredictor
from quala.io import machine_info, write_json_atomic
from quala.lengths import parse_length_config


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", required=True, help="';'-separated ONNX model directories (fp32 or int8)")
    p.add_argument("--data", required=True)
    p.add_argument("--articles", default=None)
    p.add_argument("--features", type=int, default=30, help="features per group (real lengths / full window)")
    p.add_argument("--length-configs", default="", help="';'-separated dropped configurations")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)

    dirs = [d for d in args.models.split(";") if d]
    predictors = [OnnxPredictor(d, threads=args.threads) for d in dirs]
    first = predictors[0]
    n, ref = int(first.model_config.num_hidden_layers), first.la_config.reference_length
    configs = [parse_length_config(c, n, ref) for c in args.length_configs.split(";") if c]
    squad = load_squad(args.data, args.articles)
    features = prepare_features(squad.examples, first.tokenizer)
    pad = first.tokenizer.pad_token_id or 0
    lengths = [int(k) for k in features.lengths]
    window = max(lengths)
    groups = {
        "real_lengths": list(range(len(features)))[: args.features],
        "full_window": [i for i, k in enumerate(lengths) if k == window][: args.features],
    }
    # (label, predictor, length config); None = fused graph, [ref]*n = length-adaptive graph at full length
    rows = []
    for d, pred in zip(dirs, predictors, strict=True):
        rows.append((f"{d} | fused full-length graph", pred, None))
        rows.append((f"{d} | length-adaptive graph, full length", pred, [ref] * n))
        rows += [(f"{d} | length-adaptive graph, {','.join(map(str, c))}", pred, c) for c in configs]
    report: dict = {"machine": machine_info(), "threads": args.threads, "models": dirs, "groups": {}}
    for group, indices in groups.items():
        if not indices:
            continue
        times: list[list[float]] = [[] for _ in rows]
        for k, i in enumerate([indices[0]] * args.warmup + indices):
            batch = collate(features, [i], pad_id=pad)
            for r, (_, pred, cfg) in enumerate(rows):
                t0 = time.perf_counter()
                pred.logits(batch, cfg)
                if k >= args.warmup:
                    times[r].append(time.perf_counter() - t0)
        base = statistics.median(times[0])
        out = []
        for (label, _, cfg), t in zip(rows, times, strict=True):
            med = statistics.median(t)
            out.append(
                {
                    "row": label,
                    "length_config": cfg,
                    "median_ms": round(1e3 * med, 2),
                    "p90_ms": round(1e3 * float(np.percentile(t, 90)), 2),
                    "ratio_to_first_fused": round(med / base, 3),
                }
            )
            print(f"{group:13s} {label:90s} {1e3 * med:8.2f} ms  {med / base:6.3f}x", flush=True)
        report["groups"][group] = {
            "num_features": len(indices),
            "mean_tokens": round(float(np.mean([lengths[i] for i in indices])), 1),
            "rows": out,
        }
    report["load_average_at_end"] = os.getloadavg()
    write_json_atomic(Path(args.output), report)


if __name__ == "__main__":
    main()
