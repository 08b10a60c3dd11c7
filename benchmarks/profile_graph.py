"""Where the time of an ONNX graph goes: ONNX Runtime's own profiler, per operator type, per encoder layer and
outside the layers (embeddings, restore buffer, span head), at several length configurations and batch sizes.

For each (graph, length configuration, batch size) it opens a profiling session on the model directory's graph,
runs the serving protocol's requests (``--questions`` validation questions, ``batch`` questions per request with
all their windows, padded to the longest feature), and sums the profiler's per-node kernel times. ``full`` runs
the length-adaptive graph at the reference length; ``fused`` runs the fused full-length graph (``model_full.onnx``)
for comparison. Nodes are placed in the embeddings, a layer or the span head by their execution order (see
:func:`place`). Node time is the profiler's kernel time,
so the difference to the profiled run time is the framework's per-node overhead (allocation, dispatch).

    python benchmarks/profile_graph.py --model /work/trainrun/run/quantize \\
        --data ../shared/data/squad/dev-v1.1-part-a.json --articles 32:40 --questions 64 \\
        --configs "fused;full;374,365,339,319,64,29;308,247,198,159,128,103" --batch-sizes 1,32 \\
        --output benchmarks/results/profile_graph.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from quala.benchmark import batches_for
from quala.data import load_squad, prepare_features
from quala.engine import OnnxPredictor, la_session, session_options
from quala.export import FULL_GRAPH, LA_GRAPH
from quala.io import machine_info, write_json_atomic
from quala.lengths import parse_length_config
from quala.macs import count_macs


def profile(predictor: OnnxPredictor, graph: str, batches: list[dict], counts: list[int] | None, warmup: int):
    """Per-node kernel times (µs, summed over ``batches``) and the profiled run times of one session."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="quala-profile-") as tmp:
        options = session_options(predictor.threads, predictor.spinning)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = (
            la_session(predictor.directory / graph, options)
            if graph == LA_GRAPH
            else ort.InferenceSession(str(predictor.directory / graph), options, providers=["CPUExecutionProvider"])
        )
        names = {i.name for i in session.get_inputs()}
        for b in batches[:warmup] + batches:
            feed = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in b.items() if k in names}
            if "length_config" in names:
                feed["length_config"] = np.asarray(counts, dtype=np.int64)
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][warmup:]
    start = runs[0]["ts"]  # warm-up runs (first allocations) stay out of the totals
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start]
    return nodes, runs


NORMS = ("LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization")


def place(nodes: list[dict], run_starts: list[int], num_layers: int) -> list[str]:
    """Where each node ran: "embeddings", "layer i" or "span head", from the execution order of one run.

    The length-adaptive graph's node names do not carry the layer (the model calls each layer's sub-modules
    itself), so layers are told apart by their LayerNorms: the embeddings end with the first, and layer i with
    its second (after the FFN). A layer's restore-buffer write, which follows that LayerNorm, counts to the next
    layer (or the span head).
    """
    where, run, done = [], -1, 0  # done: norms finished in this run before the node
    for e in nodes:
        while run + 1 < len(run_starts) and e["ts"] >= run_starts[run + 1]:
            run, done = run + 1, 0
        if e.get("args", {}).get("op_name") in NORMS:
            done += 1  # norm number `done` (1-based): the embeddings', then two per layer
            where.append("embeddings" if done == 1 else f"layer {(done - 2) // 2}")
        elif done == 0:
            where.append("embeddings")
        else:
            where.append("span head" if done > 2 * num_layers else f"layer {(done - 1) // 2}")
    return where


def summarise(nodes: list[dict], runs: list[dict], num_layers: int) -> dict:
    by_op: dict[str, float] = defaultdict(float)
    by_layer: dict[str, float] = defaultdict(float)
    by_layer_op: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e, where in zip(nodes, place(nodes, [r["ts"] for r in runs], num_layers), strict=True):
        op = e.get("args", {}).get("op_name", "?")
        by_op[op] += e["dur"]
        by_layer[where] += e["dur"]
        by_layer_op[where][op] += e["dur"]
    runs = [r["dur"] for r in runs]
    n = max(len(runs), 1)
    run_ms = sum(runs) / n / 1e3
    kernel_ms = sum(by_op.values()) / n / 1e3

    def per_run(d):
        return {k: round(v / n / 1e3, 3) for k, v in sorted(d.items(), key=lambda kv: -kv[1])}

    return {
        "runs": len(runs),
        "run_ms_mean": round(run_ms, 3),
        "kernel_ms_mean": round(kernel_ms, 3),
        "overhead_ms_mean": round(run_ms - kernel_ms, 3),  # dispatch/allocation between kernels
        "nodes_per_run": len(nodes) // n,
        "by_op_type_ms": per_run(by_op),
        "by_layer_ms": per_run(by_layer),
        "by_layer_op_type_ms": {k: per_run(v) for k, v in sorted(by_layer_op.items())},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="ONNX model directory (quala export / quala quantize)")
    p.add_argument("--data", required=True)
    p.add_argument("--articles", default=None)
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--configs", default="fused;full", help="';'-separated: fused, full, or N1,...,Nk")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-spinning", action="store_true", help="threads sleep between operators (the old setting)")
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)

    predictor = OnnxPredictor(args.model, threads=args.threads, spinning=not args.no_spinning)
    n, ref = int(predictor.model_config.num_hidden_layers), predictor.la_config.reference_length
    full_macs = count_macs(predictor.model_config, ref).total
    squad = load_squad(args.data, args.articles, args.questions)
    features = prepare_features(squad.examples, predictor.tokenizer)
    pad = predictor.tokenizer.pad_token_id or 0
    report: dict = {"machine": machine_info(), "threads": args.threads, "spinning": not args.no_spinning}
    report.update(model=args.model, runs=[])
    report["sample"] = {"data": squad.describe(), "num_features": len(features)}
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        batches = batches_for(features, "serving", bs, pad)
        for name in [c.strip() for c in args.configs.split(";") if c.strip()]:
            if name == "fused":
                graph, counts, macs = FULL_GRAPH, None, full_macs
            else:
                counts = parse_length_config(name, n, ref) or [ref] * n
                graph, macs = LA_GRAPH, count_macs(predictor.model_config, ref, counts).total
            nodes, runs = profile(predictor, graph, batches, counts, args.warmup)
            summary = summarise(nodes, runs, n)
            summary.update(config=name, graph=graph, batch_size=bs, macs_fraction=round(macs / full_macs, 3))
            report["runs"].append(summary)
            top = ", ".join(f"{k} {v:.2f}" for k, v in list(summary["by_op_type_ms"].items())[:6])
            print(f"b{bs:<3d} {name:28s} {graph:18s} run {summary['run_ms_mean']:8.2f} ms | {top}", flush=True)
    write_json_atomic(Path(args.output), report)


if __name__ == "__main__":
    main()
