"""The pipeline report: one table in the style of the QuaLA-MiniLM model card, plus the plots.

Accuracy comes from the ``evaluate`` stage (validation split, fp32 and int8, full length and every front point);
latency, size and speedups come from the single ``benchmark`` run (serving protocol, batch 1); MACs are
analytic at the reference length. Every figure names where it was measured.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quala.config import to_dict
from quala.io import read_json, write_json_atomic, write_text_atomic


def fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    """A number for a Markdown table ("–" when missing); the report, the benchmark and the model card share it."""
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def _tokens(length_config: list[int] | None, reference_length: int, layers: int) -> str:
    return f"{reference_length} ×{layers}" if length_config is None else ",".join(map(str, length_config))


def _key(dtype: str, row: dict[str, Any]) -> tuple:
    """What identifies a configuration across the evaluate and benchmark stages."""
    lengths = tuple(row["length_config"]) if row["length_config"] else None
    return dtype, lengths, row.get("max_seq_length", 384), row.get("doc_stride", 128)


def build_rows(evaluation: dict[str, Any], bench: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Join F1 (evaluate stage) with latency/size/speedup (benchmark rows: serving protocol, batch 1)."""
    timing: dict[tuple, dict] = {}
    for row in (bench or {}).get("rows", []):
        if row["protocol"] == "serving" and row["batch_size"] == 1:
            dtype = row["dtype"]
            key = _key(dtype, row)
            # prefer ONNX Runtime rows for int8 and PyTorch eager rows for fp32 (the pipeline's two engines)
            if key not in timing or (dtype == "fp32" and row["backend"] == "torch"):
                timing[key] = row
    rows = []
    for r in evaluation["rows"]:
        dtype = "int8" if r["model"] == "int8" else "fp32"
        t = timing.get(_key(dtype, r), {})
        rows.append(
            {
                "model": r["model"] + (f", {r['baseline']}" if r.get("baseline") else ""),
                "baseline": r.get("baseline"),
                "backend": r["backend"],
                "length_config": r["length_config"],
                "f1": r["f1"],
                "exact_match": r["exact_match"],
                "macs": r["macs"],
                "size_mb": t.get("size_mb"),
                "latency_ms": t.get("latency_ms_median"),
                "speedup_vs_bert_base": t.get("speedup_vs_bert_base"),
                "speedup_vs_minilm_fp32": t.get("speedup_vs_minilm_fp32"),
            }
        )
    for row in (bench or {}).get("rows", []):  # the BERT-base reference line
        if row["name"].startswith("BERT-base") and row["protocol"] == "serving" and row["batch_size"] == 1:
            rows.insert(
                0,
                {
                    "model": "BERT-base (random weights)",
                    "backend": row["backend"],
                    "length_config": None,
                    "reference": True,  # its own architecture: no token counts of the model's to show
                    "f1": None,
                    "exact_match": None,
                    "macs": row["macs"],
                    "size_mb": row["size_mb"],
                    "latency_ms": row["latency_ms_median"],
                    "speedup_vs_bert_base": 1.0,
                    "speedup_vs_minilm_fp32": row.get("speedup_vs_minilm_fp32"),
                },
            )
    return rows


OPERATING_POINT_TOLERANCE = 1.0  # F1 points below the full-length fp32 model (QuaLA-MiniLM model card)


def headline(rows: list[dict[str, Any]], tolerance: float = OPERATING_POINT_TOLERANCE) -> dict[str, Any] | None:
    """The cheapest int8 token-dropping configuration within ``tolerance`` F1 of the full-length fp32 model.

    This is the QuaLA-MiniLM model card's operating point (§4: the fastest model that stays within 1 point of
    its full-length fp32 model), with its speedups from the same benchmark run. None when nothing qualifies.
    """
    full = next((r for r in rows if r["model"] == "fp32" and r["length_config"] is None), None)
    int8_full = next((r for r in rows if r["model"] == "int8" and r["length_config"] is None), None)
    if full is None:
        return None
    fits = [
        r
        for r in rows
        if r["model"] == "int8"
        and r["length_config"] is not None
        and not r.get("baseline")
        and r["f1"] >= full["f1"] - tolerance
    ]
    if not fits:
        return None
    best = min(fits, key=lambda r: r["macs"])
    vs_int8 = None
    if int8_full and int8_full["latency_ms"] and best["latency_ms"]:
        vs_int8 = round(int8_full["latency_ms"] / best["latency_ms"], 2)
    return {
        "length_config": best["length_config"],
        "f1": best["f1"],
        "fp32_full_f1": full["f1"],
        "tolerance": tolerance,
        "macs": best["macs"],
        "latency_ms": best["latency_ms"],
        "speedup_vs_bert_base": best["speedup_vs_bert_base"],
        "speedup_vs_minilm_fp32": best["speedup_vs_minilm_fp32"],
        "speedup_vs_int8_full_length": vs_int8,
    }


def comparison_section(bench: dict[str, Any]) -> list[str]:
    """The verdict of every benchmark panel, the papers' protocol table, and the model card configuration's F1
    under both length rules (Markdown lines)."""
    lines = ["", "## Token dropping against the simple alternatives", ""]
    lines += [f"- {panel}: {line}." for panel, line in bench.get("verdicts", {}).items()]
    papers = [r for r in bench["rows"] if r["protocol"] == "papers"]
    if papers:
        lines += [
            "",
            "## Papers' protocol (padded to 384, batch 32, clip rule; latency per feature)",
            "",
            "| model | tokens per layer | F1 | ΔF1 vs fp32 | ms per feature | speedup vs BERT-base |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['name']} | {','.join(map(str, r['length_config'])) if r['length_config'] else 'full'} "
            f"| {fmt(r['f1'])} | {fmt(r['f1_delta_vs_fp32'])} | {fmt(r['latency_ms_median'], 1)} "
            f"| {fmt(r['speedup_vs_bert_base'])} |"
            for r in papers
        ]
    card = bench.get("sample", {}).get("paper_config")
    at_card = {(r["protocol"], r["batch_size"]): r for r in bench["rows"] if card and r["length_config"] == card}
    clip, ratio = at_card.get(("papers", 32)), at_card.get(("serving", 1)) or at_card.get(("serving", 32))
    if clip and ratio and clip["f1"] is not None and ratio["f1"] is not None:
        lines += [
            "",
            f"At the model card's configuration ({','.join(map(str, card))}) the int8 model scores "
            f"F1 {clip['f1']:.2f} ({fmt(clip['f1_delta_vs_fp32'])} vs fp32) under the papers' `clip` rule on "
            f"inputs padded to 384, and F1 {ratio['f1']:.2f} ({fmt(ratio['f1_delta_vs_fp32'])}) under the "
            "`ratio` rule on real lengths, which is what a server with dynamic padding gets "
            "(docs/inference.md).",
        ]
    return lines


@dataclass
class ReportInputs:
    """What the report reads: the stages' output directories (the pipeline names them) and the model's shape."""

    evaluation: Path  # holds evaluation.json
    benchmark: Path | None  # holds benchmark.json, benchmark.md, f1_vs_latency.png
    search: Path | None  # holds search.json, pareto.png
    metrics: dict[str, Path]  # training stage -> its metrics.jsonl, in training order
    threads: dict[str, int]  # training stage -> CPU threads it used (for core-hours)
    num_layers: int
    reference_length: int


def write_report(out: Path, inputs: ReportInputs, config: Any, state: dict[str, Any]) -> Path:
    """Write ``REPORT.md`` and ``report.json`` into ``out`` and copy the plots and the front next to them."""
    from quala.evaluate import EVALUATION_FILE
    from quala.model_dir import SEARCH_FILE

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    evaluation = read_json(inputs.evaluation / EVALUATION_FILE)
    bench_path = inputs.benchmark / "benchmark.json" if inputs.benchmark is not None else None
    bench = read_json(bench_path) if bench_path is not None and bench_path.is_file() else None
    rows = build_rows(evaluation, bench)
    curves = learning_curves(inputs.metrics, inputs.threads)
    plots = []
    if curves["points"] and plot_learning_curves(curves, out / "learning_curves.png"):
        plots.append("learning_curves.png")
    copies = [(inputs.search, "pareto.png"), (inputs.benchmark, "f1_vs_latency.png")]
    copies += [(inputs.benchmark, "benchmark.json"), (inputs.benchmark, "benchmark.md"), (inputs.search, SEARCH_FILE)]
    for directory, name in copies:
        if directory is not None and (directory / name).is_file():
            shutil.copyfile(directory / name, out / name)
            plots += [name] if name.endswith(".png") else []
    top = headline(rows)
    lines = _summary_lines(config, evaluation["data"], rows, inputs) + _operating_point_lines(top)
    if bench:
        m = bench["machine"]
        isa = ", ".join(m.get("isa_flags") or []) or "unknown ISA"
        lines += [
            "",
            f"Latency: one `quala benchmark` run on {m.get('cpu')} ({isa}; {m.get('cores')} cores, "
            f"{m.get('threads')} threads), serving protocol (real lengths), batch 1, median; the full "
            "benchmark (batch 32, papers protocol) is in `benchmark.md`.",
        ]
        lines += comparison_section(bench)
    lines += ["", "## Stage wall times", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {info['seconds']} |" for name, info in state["completed"].items()]
    lines += [""] + [f"![{p}]({p})" for p in plots]
    document = {
        "config": to_dict(config),
        "rows": rows,
        "operating_point": top,
        "stages": state["completed"],
        "data": evaluation["data"],
        "learning_curves": curves,
    }
    write_json_atomic(out / "report.json", document)
    path = out / "REPORT.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def _summary_lines(config: Any, data: dict[str, Any], rows: list[dict[str, Any]], inputs: ReportInputs) -> list[str]:
    """The note, what was trained and validated on, and the table of every row."""
    lines = ["# QuaLA pipeline report", ""]
    if getattr(config, "note", ""):
        lines += [f"> {config.note}", ""]
    lines += [
        f"Model: `{config.model}`, trained on {', '.join(config.train_files)}; validation: `{data['file']}` "
        f"articles {data['articles'] or 'all'} ({data['num_questions']} questions). F1 and EM are measured on this "
        "validation split, which the search also used: they are not held-out test accuracy.",
        "",
        "| model | backend | size MB | tokens per layer | F1 | EM | latency ms (batch 1) | GMACs | speedup vs "
        "BERT-base | speedup vs MiniLM fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        windows = r.get("baseline") and not r["length_config"]  # the model column names the shorter windows
        full = windows or r.get("reference")
        tokens = "full" if full else _tokens(r["length_config"], inputs.reference_length, inputs.num_layers)
        lines.append(
            f"| {r['model']} | {r['backend']} | {fmt(r['size_mb'], 1)} | {tokens} "
            f"| {fmt(r['f1'])} | {fmt(r['exact_match'])} | {fmt(r['latency_ms'], 1)} | {fmt(r['macs'] / 1e9, 3)} "
            f"| {fmt(r['speedup_vs_bert_base'], 2)} | {fmt(r['speedup_vs_minilm_fp32'], 2)} |"
        )
    return lines


def _operating_point_lines(top: dict[str, Any] | None) -> list[str]:
    if top is None:
        return [
            "",
            f"No int8 token-dropping configuration is within {OPERATING_POINT_TOLERANCE:g} F1 of the "
            "full-length fp32 model.",
        ]
    return [
        "",
        "**Operating point** (the cheapest int8 token-dropping configuration within "
        f"{top['tolerance']:g} F1 of the full-length fp32 model's {top['fp32_full_f1']:.2f}): "
        f"`{','.join(map(str, top['length_config']))}`, F1 {top['f1']:.2f}, "
        f"{top['macs'] / 1e9:.3f} GMACs, {fmt(top['latency_ms'], 1)} ms; "
        f"{fmt(top['speedup_vs_minilm_fp32'])}x MiniLM fp32 eager, "
        f"{fmt(top['speedup_vs_int8_full_length'])}x int8 without token dropping, "
        f"{fmt(top['speedup_vs_bert_base'])}x BERT-base.",
    ]


def learning_curves(metrics: dict[str, Path], threads: dict[str, int]) -> dict[str, Any]:
    """Validation F1 of the full model (and, under LengthDrop, of the smallest sub-model) against the optimizer
    step and the training cost in core-hours (wall time x threads), the stages chained in the given order.

    ``elapsed_s`` in ``metrics.jsonl`` restarts when a run resumes, so time is summed over the increments
    between consecutive log records and an increment that goes backwards starts a new segment.
    """
    points: list[dict[str, Any]] = []
    step_offset, hours_offset = 0, 0.0
    for stage, path in metrics.items():
        if not Path(path).is_file():
            continue
        records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        last_elapsed, core_seconds, last_step = 0.0, 0.0, 0
        for r in records:
            if "elapsed_s" in r:
                delta = r["elapsed_s"] - last_elapsed
                core_seconds += (delta if delta >= 0 else r["elapsed_s"]) * threads.get(stage, 1)
                last_elapsed = r["elapsed_s"]
            if "eval_f1" in r:
                points.append(
                    {
                        "stage": stage,
                        "step": step_offset + r["step"],
                        "core_hours": round(hours_offset + core_seconds / 3600, 4),
                        "f1": r["eval_f1"],
                        "f1_smallest": r.get("eval_f1_smallest"),
                        "smallest_length_config": r.get("smallest_length_config"),
                        "questions": r.get("eval_questions"),
                    }
                )
            last_step = max(last_step, r.get("step", 0))
        step_offset += last_step
        hours_offset += core_seconds / 3600
    return {"points": points, "total_core_hours": round(hours_offset, 4)}


def plot_learning_curves(curves: dict[str, Any], path: Path) -> bool:
    """Two panels, F1 against step and against core-hours; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    points = curves["points"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, x_key, x_label in ((axes[0], "step", "optimizer step"), (axes[1], "core_hours", "core-hours")):
        for stage, marker in (("finetune", "o"), ("lengthdrop", "s")):
            pts = [p for p in points if p["stage"] == stage]
            if not pts:
                continue
            ax.plot([p[x_key] for p in pts], [p["f1"] for p in pts], marker=marker, label=f"{stage}: full model")
            small = [p for p in pts if p["f1_smallest"] is not None]
            if small:
                ax.plot(
                    [p[x_key] for p in small],
                    [p["f1_smallest"] for p in small],
                    marker=marker,
                    linestyle="--",
                    label=f"{stage}: smallest sub-model",
                )
        ax.set_xlabel(x_label)
        ax.set_ylabel("validation F1")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    questions = next((p["questions"] for p in points if p.get("questions")), None)
    fig.suptitle(f"Learning curves (validation F1 on {questions} questions during training)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
