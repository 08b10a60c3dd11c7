"""Does every dropped token pay? The length-adaptive int8 graph at each front point against f × the fused
full-length graph, for one or more model directories (e.g. before/after an engine change), in one run.

Every (model, graph, configuration) row is a :class:`quala.benchmark.BenchEngine` timed by
:func:`quala.benchmark.run_benchmark` (the serving protocol of ``quala benchmark``: real lengths, a request is
``batch`` questions with all their windows, engines taking turns request by request), so load changes hit every
row alike. ``--rounds R`` repeats the whole timing R times, the engines' order rotated each round (so no row
always follows the same one: what ran just before a row decides what is still in the caches); a row's latency is
then the median of its round medians. For each row: median latency, F1 on the sample, MACs fraction f and
``ratio = latency / (f × fused latency of the same model)``: 1.00 is the ideal "f of the MACs in f of the time".
``--plot`` draws latency over the fused graph's against f, with the ideal line, one series per model and batch
size.

    python benchmarks/front_speed.py --models "before=runs/old-int8;after=runs/new-int8" \\
        --data ../shared/data/squad/dev-v1.1-part-a.json --articles 32:40 --questions 100 --batch-sizes 1,32 \\
        --configs "374,365,339,319,64,29;308,247,198,159,128,103" --output benchmarks/results/front_speed.json \\
        --plot docs/img/front_speed.png
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from quala.benchmark import BenchEngine, run_benchmark
from quala.data import load_squad
from quala.engine import OnnxPredictor
from quala.io import machine_info, write_json_atomic
from quala.lengths import parse_length_config
from quala.macs import count_macs


def parse_models(text: str) -> list[tuple[str, str, bool]]:
    """``label=DIR[:nospin]`` entries: ``:nospin`` runs the sessions without spin-waiting during a run (the
    engine's setting before it spun with ``session.force_spinning_stop``)."""
    out = []
    for item in [t for t in text.split(";") if t]:
        label, _, rest = item.partition("=")
        path, _, flag = rest.partition(":")
        out.append((label, path, flag != "nospin"))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", required=True, help="';'-separated label=DIR[:nospin] int8 ONNX model directories")
    p.add_argument("--data", required=True)
    p.add_argument("--articles", default=None)
    p.add_argument("--questions", type=int, default=100)
    p.add_argument("--configs", required=True, help="';'-separated length configurations")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", required=True)
    p.add_argument("--plot", default=None)
    p.add_argument("--rounds", type=int, default=1, help="timing rounds, engine order rotated each round")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")

    models = parse_models(args.models)
    engines: list[BenchEngine] = []
    for label, path, spin in models:
        pred = OnnxPredictor(path, threads=args.threads, spinning=spin)
        n, ref = int(pred.model_config.num_hidden_layers), pred.la_config.reference_length
        engines.append(BenchEngine(f"{label} | fused", pred, "int8", None, None, True))
        for text in [c for c in args.configs.split(";") if c]:
            cfg = parse_length_config(text, n, ref)
            engines.append(BenchEngine(f"{label} | LA {text}", pred, "int8", cfg, None, True, kind="front"))
    squad = load_squad(args.data, args.articles, args.questions)
    bss = [int(b) for b in args.batch_sizes.split(",")]
    results = []
    for k in range(args.rounds):
        order = engines[k % len(engines) :] + engines[: k % len(engines)]
        results.append(run_benchmark(order, squad, bss, ("serving",), machine=machine_info()))
    rounds = {}  # (row, batch size): its median latency in each round
    for result in results:
        for r in result.rows:
            rounds.setdefault((r.name, r.batch_size), []).append(r.latency_ms_median)
    median = {key: statistics.median(values) for key, values in rounds.items()}
    full = count_macs(engines[0].predictor.model_config, engines[0].predictor.la_config.reference_length).total
    rows = []
    for r in results[0].rows:
        label = r.name.split(" | ")[0]
        ms, fused_ms = median[(r.name, r.batch_size)], median[(f"{label} | fused", r.batch_size)]
        f = r.macs / full
        ratio = ms / (f * fused_ms)
        rows.append(
            {
                "model": label,
                "row": r.name,
                "batch_size": r.batch_size,
                "length_config": r.length_config,
                "macs_fraction": round(f, 3),
                "median_ms": round(ms, 3),
                "round_medians_ms": rounds[(r.name, r.batch_size)],
                "p90_ms_first_round": r.latency_ms_p90,
                "fused_ms": round(fused_ms, 3),
                "ratio_to_f_fused": round(ratio, 3),
                "f1": r.f1,
                "exact_match": r.exact_match,
            }
        )
        print(
            f"b{r.batch_size:<3d} {r.name:48s} f={f:.3f} {ms:8.2f} ms (fused {fused_ms:.2f}) ratio {ratio:.3f} "
            f"F1 {r.f1}",
            flush=True,
        )
    report = {
        "machine": results[0].machine,
        "threads": args.threads,
        "models": {label: {"path": path, "spinning": spin} for label, path, spin in models},
        "sample": results[0].sample,
        "rounds": args.rounds,
        "rows": rows,
        "load_average_at_end": os.getloadavg(),
    }
    write_json_atomic(Path(args.output), report)
    if args.plot:
        plot(rows, Path(args.plot))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from quala.io import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot([0.4, 1.0], [0.4, 1.0], "k-", lw=1, label="ideal: f of the fused graph's time")
    ax.plot([0.5, 1.0], [0.575, 1.15], "k:", lw=1, label="target: 1.15 × f")
    markers = {1: "o", 32: "s"}
    for (model, bs), color in zip(sorted({(r["model"], r["batch_size"]) for r in rows}), plt.cm.tab10.colors):
        pts = sorted(
            (r["macs_fraction"], r["median_ms"] / r["fused_ms"])
            for r in rows
            if (r["model"], r["batch_size"]) == (model, bs) and r["length_config"]
        )
        ax.plot(*zip(*pts, strict=True), marker=markers.get(bs, "^"), color=color, label=f"{model}, batch {bs}")
    ax.set_xlabel("MACs fraction f")
    ax.set_ylabel("latency / fused full-length int8 latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


if __name__ == "__main__":
    main()
