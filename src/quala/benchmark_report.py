"""The benchmark's reading: a verdict per panel (does the token-dropping front dominate the simple alternatives?),
the Markdown tables and the F1-against-latency plot of ``benchmark.json`` (:mod:`quala.benchmark`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quala.benchmark import panels
from quala.report import fmt

if TYPE_CHECKING:
    from quala.benchmark import BenchmarkResult


def _dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` is at most as slow and at least as accurate as ``b``, and strictly better in one."""
    la, lb, fa, fb = a["latency_ms_median"], b["latency_ms_median"], a["f1"], b["f1"]
    return la <= lb and fa >= fb and (la < lb or fa > fb)


def verdict(rows: Sequence[dict[str, Any]]) -> str:
    """One line judging the token-dropping front (``kind == "front"``) against every plain model and baseline
    (``kind`` ``model`` or ``baseline``) of one panel, by Pareto dominance on (median latency, F1).

    "front dominates A between X and Y ms": some front point is at most as slow and at least as accurate as A;
    X..Y spans the front points that dominate a baseline. "is dominated by B between X and Y ms": B dominates
    the front points in X..Y. Rows without an F1 are ignored.
    """
    scored = [r for r in rows if r.get("f1") is not None]
    front = [r for r in scored if r["kind"] == "front"]
    others = [r for r in scored if r["kind"] in ("model", "baseline")]
    if not front:
        return "no scored front points to judge"
    if not others:
        return "no scored baselines to judge the front against"

    def span(points: list[dict[str, Any]]) -> str:
        lat = [p["latency_ms_median"] for p in points]
        return f"between {min(lat):.1f} and {max(lat):.1f} ms"

    def names(points: list[dict[str, Any]]) -> str:
        return ", ".join(dict.fromkeys(p["name"].replace(" ONNX Runtime", " ORT") for p in points))

    beaten = [o for o in others if any(_dominates(f, o) for f in front)]
    winning = [f for f in front if any(_dominates(f, o) for o in others)]
    beaters = [o for o in others if any(_dominates(o, f) for f in front)]
    losing = [f for f in front if any(_dominates(o, f) for o in others)]
    parts = []
    if beaten:
        parts.append(f"front dominates {names(beaten)} {span(winning)}")
    if beaters:
        parts.append(f"{'is' if parts else 'front is'} dominated by {names(beaters)} {span(losing)}")
    return "; ".join(parts) or "front neither dominates nor is dominated by any baseline"


COLUMNS = [
    ("model", lambda r: r.name),
    ("dtype", lambda r: r.dtype),
    ("backend", lambda r: r.backend),
    ("tokens per layer", lambda r: ",".join(map(str, r.length_config)) if r.length_config else "full"),
    ("rule", lambda r: r.length_rule or "–"),
    ("windows", lambda r: f"{r.max_seq_length}/{r.doc_stride}"),
    ("size MB", lambda r: fmt(r.size_mb, 1)),
    ("F1", lambda r: fmt(r.f1, 2)),
    ("EM", lambda r: fmt(r.exact_match, 2)),
    ("ΔF1 vs fp32", lambda r: fmt(r.f1_delta_vs_fp32, 2)),
    ("GMACs", lambda r: f"{r.macs / 1e9:.2f}"),
    ("median ms", lambda r: fmt(r.latency_ms_median, 1)),
    ("p90 ms", lambda r: fmt(r.latency_ms_p90, 1)),
    ("questions/s", lambda r: fmt(r.questions_per_second, 1)),
    ("× BERT-base", lambda r: fmt(r.speedup_vs_bert_base, 2, "×")),
    ("× fp32 eager", lambda r: fmt(r.speedup_vs_minilm_fp32, 2, "×")),
]
PANEL_TITLES = {
    "serving": "real lengths, model's length rule; latency per request of {bs} question(s)",
    "papers": "padded to 384, clip length rule; latency per feature (batch time / features)",
}


def markdown_table(result: BenchmarkResult) -> str:
    """One Markdown table per (protocol, batch size), in the style of the QuaLA-MiniLM model card, each with its
    verdict."""
    m = result.machine
    isa = ", ".join(m.get("isa_flags") or []) or "unknown"
    lines = [
        "# QuaLA benchmark",
        "",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('threads')} threads; ISA: {isa}; "
        + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()),
        f"Sample: {result.sample.get('data')} ({result.sample.get('num_features')} features at 384/128).",
        f"Load average (1, 5, 15 min) before: {m.get('load_average_before')}, after: "
        f"{m.get('load_average_after')}; OMP_WAIT_POLICY={m.get('omp_wait_policy')}.",
        "",
    ]
    verdicts = result.verdicts()
    for (protocol, bs), rows in panels(result.rows).items():
        lines += [f"## {protocol}, batch {bs} ({PANEL_TITLES[protocol].format(bs=bs)})", ""]
        lines.append("| " + " | ".join(c for c, _ in COLUMNS) + " |")
        lines.append("|" + "---|" * len(COLUMNS))
        lines += ["| " + " | ".join(f(r) for _, f in COLUMNS) + " |" for r in rows]
        lines += ["", f"Verdict: {verdicts[f'{protocol}, batch {bs}']}.", ""]
    return "\n".join(lines)


def plot_f1_latency(result: BenchmarkResult, path: Path) -> bool:
    """F1 against median latency per (protocol, batch size): the front as a line, every other row a marked point,
    the panel's verdict underneath. False when no row has an F1."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in result.rows if r.f1 is not None]
    if not scored:
        return False
    groups = {k: [r for r in rows if r.f1 is not None] for k, rows in panels(scored).items()}
    names = list(dict.fromkeys(r.name for r in scored if r.kind != "front"))  # one marker and colour per row
    markers = "osD^v<>ph*XP"
    verdicts = result.verdicts()
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 5.4), squeeze=False)
    for ax, ((protocol, bs), rows) in zip(axes[0], groups.items(), strict=True):
        front = sorted((r for r in rows if r.kind == "front"), key=lambda r: r.latency_ms_median)
        if front:
            ax.plot(
                [r.latency_ms_median for r in front],
                [r.f1 for r in front],
                "-o",
                color="k",
                markersize=4,
                label="token-dropping front",
            )
        for i, name in enumerate(names):
            for r in (r for r in rows if r.name == name):
                ax.plot(
                    r.latency_ms_median,
                    r.f1,
                    linestyle="",
                    marker=markers[i % len(markers)],
                    color=f"C{i % 10}",
                    markersize=7,
                    label=name.replace(" ONNX Runtime", " ORT"),
                )
        ax.set_xscale("log")
        ax.set_xlabel("median latency, ms (log)")
        ax.set_title(f"{protocol}, batch {bs}", fontsize=10)
        ax.grid(alpha=0.3)
        text = textwrap.fill(verdicts[f"{protocol}, batch {bs}"], 70)
        ax.text(0.0, -0.16, text, transform=ax.transAxes, fontsize=7, va="top", ha="left")
    axes[0][0].set_ylabel("F1")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:  # one legend entry per row name across panels
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, fontsize=7, loc="upper center", ncol=3, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("SQuAD F1 against CPU latency: the token-dropping front and the simple alternatives", fontsize=11)
    fig.tight_layout()
    from quala.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return True
