"""The pipeline report: one table in the style of the QuaLA-MiniLM model card, plus the plots.

Accuracy comes from the ``evaluate`` stage (validation split, fp32 and int8, full length and every front point);
latency, size and speedups come from the single ``benchmark`` run (serving protocol, batch 1); MACs are
analytic at the reference length. Every figure names where it was measured.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from quala.config import to_dict
from quala.io import read_json, write_json_atomic, write_text_atomic


def _fmt(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _tokens(length_config: list[int] | None, reference_length: int, layers: int) -> str:
    return f"{reference_length} ×{layers}" if length_config is None else ",".join(map(str, length_config))


def build_rows(evaluation: dict[str, Any], bench: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Join F1 (evaluate stage) with latency/size/speedup (benchmark rows: serving protocol, batch 1)."""
    timing: dict[tuple[str, tuple | None], dict] = {}
    for row in (bench or {}).get("rows", []):
        if row["protocol"] == "serving" and row["batch_size"] == 1:
            dtype = row["dtype"]
            key = (dtype, tuple(row["length_config"]) if row["length_config"] else None)
            # prefer ONNX Runtime rows for int8 and PyTorch eager rows for fp32 (the pipeline's two engines)
            if key not in timing or (dtype == "fp32" and row["backend"] == "torch"):
                timing[key] = row
    rows = []
    for r in evaluation["rows"]:
        dtype = "int8" if r["model"] == "int8" else "fp32"
        key = (dtype, tuple(r["length_config"]) if r["length_config"] else None)
        t = timing.get(key, {})
        rows.append({
            "model": r["model"],
            "backend": r["backend"],
            "length_config": r["length_config"],
            "f1": r["f1"],
            "exact_match": r["exact_match"],
            "macs": r["macs"],
            "size_mb": t.get("size_mb"),
            "latency_ms": t.get("latency_ms_median"),
            "speedup_vs_bert_base": t.get("speedup_vs_bert_base"),
            "speedup_vs_minilm_fp32": t.get("speedup_vs_minilm_fp32"),
        })
    for row in (bench or {}).get("rows", []):  # the BERT-base reference line
        if row["name"].startswith("BERT-base") and row["protocol"] == "serving" and row["batch_size"] == 1:
            rows.insert(0, {"model": "BERT-base (random weights)", "backend": row["backend"], "length_config": None,
                            "layers": 12,
                            "f1": None, "exact_match": None, "macs": row["macs"], "size_mb": row["size_mb"],
                            "latency_ms": row["latency_ms_median"], "speedup_vs_bert_base": 1.0,
                            "speedup_vs_minilm_fp32": row.get("speedup_vs_minilm_fp32")})
    return rows


def write_report(root: Path, config: Any, state: dict[str, Any]) -> Path:
    """Write ``report/REPORT.md``, ``report/report.json`` and copy the plots next to them."""
    root = Path(root)
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    evaluation = read_json(root / "evaluate" / "evaluation.json")
    bench_path = root / "benchmark" / "benchmark.json"
    bench = read_json(bench_path) if bench_path.is_file() else None
    search_path = root / "search" / "search.json"
    search = read_json(search_path) if search_path.is_file() else None
    rows = build_rows(evaluation, bench)
    layers = (search or {}).get("settings", {}).get("num_layers", 6)
    ref = (search or {}).get("settings", {}).get("reference_length", 384)
    plots = []
    for src in (root / "search" / "pareto.png", root / "benchmark" / "f1_vs_latency.png"):
        if src.is_file():
            shutil.copyfile(src, out / src.name)
            plots.append(src.name)
    data = evaluation["data"]
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
        lines.append(
            f"| {r['model']} | {r['backend']} | {_fmt(r['size_mb'], 1)} "
            f"| {_tokens(r['length_config'], ref, r.get('layers', layers))} "
            f"| {_fmt(r['f1'])} | {_fmt(r['exact_match'])} | {_fmt(r['latency_ms'], 1)} | {_fmt(r['macs'] / 1e9, 3)} "
            f"| {_fmt(r['speedup_vs_bert_base'], 2)} | {_fmt(r['speedup_vs_minilm_fp32'], 2)} |"
        )
    if bench:
        m = bench["machine"]
        lines += ["", f"Latency: one `quala benchmark` run on {m.get('cpu')} ({m.get('cores')} cores, "
                  f"{m.get('threads')} threads), serving protocol (real lengths), batch 1, median; the full "
                  "benchmark (batch 32, paper protocol) is in `benchmark.md`."]
    lines += ["", "## Stage wall times", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {info['seconds']} |" for name, info in state["completed"].items()]
    lines += [""] + [f"![{p}]({p})" for p in plots]
    if bench_path.is_file():
        shutil.copyfile(bench_path, out / "benchmark.json")
        if (root / "benchmark" / "benchmark.md").is_file():
            shutil.copyfile(root / "benchmark" / "benchmark.md", out / "benchmark.md")
    if search_path.is_file():
        shutil.copyfile(search_path, out / "search.json")
    write_json_atomic(out / "report.json", {"config": to_dict(config), "rows": rows, "stages": state["completed"],
                                            "data": data})
    path = out / "REPORT.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
