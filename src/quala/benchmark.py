"""Side-by-side CPU benchmark: BERT-base, MiniLM fp32 (PyTorch, ONNX Runtime), int8, and length-adaptive int8.

Every engine answers the same fixed sample of real SQuAD questions in **one process**, and the engines take
turns batch by batch (round robin), so machine load drifts affect all rows alike and the ratios are fair.
Two protocols:

- ``serving``: requests in sample order, each batch padded only to its longest feature; latency is the wall
  time of one forward call (one request of ``batch_size`` features).
- ``paper``: every feature padded to 384, batch 32; latency is the batch time divided by its features
  (amortised per feature), as in the QuaLA-MiniLM model card (references.md).

Latency covers the model call only (feature tensors in, span logits out); tokenisation and answer extraction
are the same for every engine. F1/EM come from each row's own logits; rows with random weights report none.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quala.data import Features, SquadData, collate, postprocess, prepare_features
from quala.engine import Predictor
from quala.errors import QualaError
from quala.macs import count_macs
from quala.metric import squad_v1_scores

PROTOCOLS = ("serving", "paper")
PAPER_LENGTH = 384
PAPER_BATCH = 32
WEIGHT_FILES = ("*.safetensors", "*.onnx", "*.onnx.data")


@dataclass
class BenchEngine:
    """One row family: a loaded predictor run at one length configuration."""

    name: str
    predictor: Predictor
    dtype: str
    length_config: list[int] | None
    size_mb: float | None
    trained: bool  # False for random weights: no accuracy is reported


@dataclass
class BenchRow:
    """One line of ``benchmark.json`` (``None`` where a figure does not apply)."""

    name: str
    backend: str
    dtype: str
    length_config: list[int] | None
    batch_size: int
    protocol: str
    latency_ms_median: float
    latency_ms_p90: float
    throughput: float  # features per second
    macs: int  # per sequence at the reference length (paper convention)
    size_mb: float | None
    f1: float | None
    exact_match: float | None
    speedup_vs_bert_base: float | None = None
    speedup_vs_minilm_fp32: float | None = None
    num_features: int = 0
    weights: str = "trained"


@dataclass
class BenchmarkResult:
    machine: dict[str, Any]
    rows: list[BenchRow]
    sample: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "sample": self.sample, "rows": [asdict(r) for r in self.rows]}


def weights_size_mb(paths: Sequence[Path]) -> float:
    """Size on disk of the given weight files, in MB (1e6 bytes)."""
    return round(sum(p.stat().st_size for p in paths) / 1e6, 1)


def dir_weights(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    return sorted(p for pattern in WEIGHT_FILES for p in directory.glob(pattern))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one call in milliseconds, and its result."""
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1000.0, out


def batches_for(
    features: Features, protocol: str, batch_size: int, pad_id: int
) -> list[dict[str, np.ndarray]]:
    """Model inputs of each batch, in sample order (serving: dynamic padding; paper: padded to 384)."""
    pad_to = PAPER_LENGTH if protocol == "paper" else None
    order = list(range(len(features)))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    out = []
    for chunk in chunks:
        batch = collate(features, chunk, pad_to=pad_to, pad_id=pad_id)
        out.append({k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
    return out


def run_benchmark(
    engines: Sequence[BenchEngine],
    squad: SquadData,
    batch_sizes: Sequence[int] = (1, 32),
    protocols: Sequence[str] = PROTOCOLS,
    warmup: int = 2,
    progress: bool = True,
    machine: dict[str, Any] | None = None,
) -> BenchmarkResult:
    """Time every engine on the same features, round robin batch by batch; score each row's answers."""
    from tqdm.auto import tqdm

    from quala.config import DataConfig

    for p in protocols:
        if p not in PROTOCOLS:
            raise QualaError(f"unknown protocol {p!r}; choose from {list(PROTOCOLS)}")
    references = squad.references()
    # features per tokenizer (engines with identical tokenizers share them)
    feats: dict[str, Features] = {}
    keys = [e.predictor.tokenizer.backend_tokenizer.to_str() for e in engines]
    for e, key in zip(engines, keys, strict=True):
        if key not in feats:
            feats[key] = prepare_features(squad.examples, e.predictor.tokenizer, DataConfig())
    settings = [(p, bs) for p in protocols for bs in batch_sizes if p == "serving" or bs == PAPER_BATCH]
    if "paper" in protocols and PAPER_BATCH not in batch_sizes:
        settings.append(("paper", PAPER_BATCH))
    rows: list[BenchRow] = []
    for protocol, bs in settings:
        per_engine_batches = [
            batches_for(feats[k], protocol, bs, e.predictor.tokenizer.pad_token_id or 0)
            for e, k in zip(engines, keys, strict=True)
        ]
        n_batches = len(per_engine_batches[0])
        times: list[list[float]] = [[] for _ in engines]
        logits: list[list[Any]] = [[] for _ in engines]
        for i, e in enumerate(engines):  # warm-up (allocations, thread pools); one batch of 32 is plenty
            for w in range(min(warmup if bs == 1 else 1, n_batches)):
                e.predictor.logits(per_engine_batches[i][w], e.length_config)
        bar = tqdm(
            range(n_batches), desc=f"{protocol} b{bs}", unit="batch", disable=not progress, leave=False
        )
        for b in bar:
            for i, e in enumerate(engines):
                batch = per_engine_batches[i][b]
                ms, out = timed(lambda e=e, batch=batch: e.predictor.logits(batch, e.length_config))
                times[i].append(ms)
                logits[i].append(out)
        for i, e in enumerate(engines):
            f = feats[keys[i]]
            t = np.asarray(times[i])
            per = t / bs if protocol == "paper" else t
            f1 = em = None
            if e.trained and references:
                starts = [row for out in logits[i] for row in out.start]
                ends = [row for out in logits[i] for row in out.end]
                preds = postprocess(squad.examples, f, starts, ends)
                scores = squad_v1_scores({q: p[0].text for q, p in preds.items()}, references)
                f1, em = round(scores.f1, 2), round(scores.exact_match, 2)
            rows.append(
                BenchRow(
                    name=e.name,
                    backend=e.predictor.backend,
                    dtype=e.dtype,
                    length_config=e.length_config,
                    batch_size=bs,
                    protocol=protocol,
                    latency_ms_median=round(float(np.median(per)), 2),
                    latency_ms_p90=round(float(np.percentile(per, 90)), 2),
                    throughput=round(len(f) / (t.sum() / 1000.0), 2),
                    macs=count_macs(
                        e.predictor.model_config, e.predictor.la_config.reference_length, e.length_config
                    ).total,
                    size_mb=e.size_mb,
                    f1=f1,
                    exact_match=em,
                    num_features=len(f),
                    weights="trained" if e.trained else "random",
                )
            )
    _speedups(rows, engines)
    info = machine or {}
    return BenchmarkResult(info, rows, {"data": squad.describe(), "num_features": len(feats[keys[0]])})


def _speedups(rows: list[BenchRow], engines: Sequence[BenchEngine]) -> None:
    """Speedups against BERT-base and MiniLM fp32 eager, within each (protocol, batch size)."""
    bert_name, minilm_name = engines[0].name, engines[1].name
    for row in rows:
        same = [r for r in rows if r.protocol == row.protocol and r.batch_size == row.batch_size]
        bert = next((r for r in same if r.name == bert_name), None)
        minilm = next((r for r in same if r.name == minilm_name), None)
        if bert is not None:
            row.speedup_vs_bert_base = round(bert.latency_ms_median / row.latency_ms_median, 2)
        if minilm is not None:
            row.speedup_vs_minilm_fp32 = round(minilm.latency_ms_median / row.latency_ms_median, 2)


# ------------------------------------------------------------------------------------------- engines
def bert_base_engine(baseline: str | None, tokenizer_source: str | Path, threads: int) -> BenchEngine:
    """BERT-base (12×768) fp32 in PyTorch eager: trained weights from ``baseline``, else random (no hub)."""
    from quala.engine import TorchPredictor
    from quala.model import LengthAdaptiveQA, load_tokenizer

    if baseline is not None:
        model = LengthAdaptiveQA.from_pretrained(baseline)
        size = weights_size_mb(dir_weights(baseline))
        return BenchEngine(
            "BERT-base", TorchPredictor(model, load_tokenizer(baseline), threads), "fp32", None, size, True
        )
    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = BertForQuestionAnswering(BertConfig()).eval()  # defaults: 12 layers, hidden 768, 30522 vocab
    size = round(sum(p.numel() * p.element_size() for p in hf.parameters()) / 1e6, 1)  # as safetensors would
    predictor = TorchPredictor(LengthAdaptiveQA(hf), load_tokenizer(tokenizer_source), threads)
    return BenchEngine("BERT-base (random weights)", predictor, "fp32", None, size, False)


def build_engines(
    model: str | Path,
    onnx_dir: Path,
    int8_dir: Path,
    length_configs: Sequence[list[int]],
    baseline: str | None,
    threads: int,
    label: str = "MiniLM",
    trained: bool = True,
) -> list[BenchEngine]:
    """BERT-base, {label} fp32 eager / fp32 ORT / int8 ORT, and LA-{label} int8 at each length config."""
    from quala.engine import OnnxPredictor, TorchPredictor
    from quala.export import FULL_GRAPH, LA_GRAPH
    from quala.model import resolve_model_path

    src = Path(resolve_model_path(model))
    fp32_ort = OnnxPredictor(onnx_dir, threads)
    int8_ort = OnnxPredictor(int8_dir, threads)
    engines = [
        bert_base_engine(baseline, src, threads),
        BenchEngine(
            f"{label} fp32 PyTorch eager",
            TorchPredictor.from_pretrained(model, threads),
            "fp32",
            None,
            weights_size_mb(dir_weights(src)),
            trained,
        ),
        BenchEngine(
            f"{label} fp32 ONNX Runtime",
            fp32_ort,
            "fp32",
            None,
            weights_size_mb([onnx_dir / FULL_GRAPH]),
            trained,
        ),
        BenchEngine(
            f"{label} int8 ONNX Runtime",
            int8_ort,
            "int8",
            None,
            weights_size_mb([int8_dir / FULL_GRAPH]),
            trained,
        ),
        BenchEngine(
            f"LA-{label} int8 ONNX Runtime (one graph, full length)",
            _FullViaLengthGraph(int8_ort),
            "int8",
            None,
            weights_size_mb([int8_dir / LA_GRAPH]),
            trained,
        ),
    ]
    for lengths in length_configs:
        engines.append(
            BenchEngine(
                f"LA-{label} int8 ONNX Runtime",
                int8_ort,
                "int8",
                list(lengths),
                weights_size_mb([int8_dir / LA_GRAPH]),
                trained,
            )
        )
    return engines


class _FullViaLengthGraph:
    """Runs full-length requests on the length-adaptive graph (to measure what one graph for all costs)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.backend, self.tokenizer = inner.backend, inner.tokenizer
        self.model_config, self.la_config = inner.model_config, inner.la_config

    def logits(self, batch: dict[str, np.ndarray], length_config: Sequence[int] | None):
        n = int(self.model_config.num_hidden_layers)
        return self.inner.logits(batch, length_config or [self.la_config.reference_length] * n)


# ------------------------------------------------------------------------------------------- reports
COLUMNS = [
    ("model", lambda r: r.name),
    ("dtype", lambda r: r.dtype),
    ("backend", lambda r: r.backend),
    ("tokens per layer", lambda r: ",".join(map(str, r.length_config)) if r.length_config else "full"),
    ("size MB", lambda r: _fmt(r.size_mb, 1)),
    ("F1", lambda r: _fmt(r.f1, 2)),
    ("EM", lambda r: _fmt(r.exact_match, 2)),
    ("GMACs", lambda r: f"{r.macs / 1e9:.2f}"),
    ("median ms", lambda r: _fmt(r.latency_ms_median, 1)),
    ("p90 ms", lambda r: _fmt(r.latency_ms_p90, 1)),
    ("features/s", lambda r: _fmt(r.throughput, 1)),
    ("× BERT-base", lambda r: _fmt(r.speedup_vs_bert_base, 2, "×")),
    ("× fp32 eager", lambda r: _fmt(r.speedup_vs_minilm_fp32, 2, "×")),
]


def _fmt(value: float | None, digits: int, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def markdown_table(result: BenchmarkResult) -> str:
    """One Markdown table per (protocol, batch size), in the style of references.md."""
    m = result.machine
    lines = [
        "# QuaLA benchmark",
        "",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('threads')} threads; "
        + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()),
        f"Sample: {result.sample.get('data')} ({result.sample.get('num_features')} features).",
        f"Load average (1, 5, 15 min) before: {m.get('load_average_before')}, after: "
        f"{m.get('load_average_after')}; OMP_WAIT_POLICY={m.get('omp_wait_policy')}.",
        "",
    ]
    groups: dict[tuple[str, int], list[BenchRow]] = {}
    for r in result.rows:
        groups.setdefault((r.protocol, r.batch_size), []).append(r)
    for (protocol, bs), rows in groups.items():
        what = "latency per request" if protocol == "serving" else "latency per feature (batch time / 32)"
        pad = "real lengths" if protocol == "serving" else "padded to 384"
        lines += [f"## {protocol}, batch {bs} ({pad}; {what})", ""]
        lines.append("| " + " | ".join(c for c, _ in COLUMNS) + " |")
        lines.append("|" + "---|" * len(COLUMNS))
        lines += ["| " + " | ".join(f(r) for _, f in COLUMNS) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def plot_f1_latency(result: BenchmarkResult, path: Path) -> bool:
    """F1 against median latency for every (protocol, batch size); False when no row has an F1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in result.rows if r.f1 is not None]
    if not scored:
        return False
    panels = sorted({(r.protocol, r.batch_size) for r in scored})
    names = list(dict.fromkeys(r.name for r in scored))  # one marker and colour per engine, in row order
    markers = "osD^v<>ph*"
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, (protocol, bs) in zip(axes[0], panels):
        for i, name in enumerate(names):
            rows = sorted(
                (r for r in scored if r.name == name and r.protocol == protocol and r.batch_size == bs),
                key=lambda r: r.latency_ms_median,
            )
            if rows:  # the front's configurations of one engine are joined by a line
                ax.plot([r.latency_ms_median for r in rows], [r.f1 for r in rows],
                        marker=markers[i % len(markers)], linestyle="-" if len(rows) > 1 else "",
                        color=f"C{i}", label=name.replace(" ONNX Runtime", " ORT"))
        ax.set_xscale("log")
        ax.set_xlabel("median latency, ms (log)")
        ax.set_title(f"{protocol}, batch {bs}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("F1")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle("SQuAD F1 against CPU latency (token-dropping front joined)", fontsize=11)
    fig.tight_layout()
    from quala.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)
    return True


def benchmark(
    model: str,
    data: str,
    output: Path,
    articles: str | None = None,
    max_examples: int | None = None,
    batch_sizes: Sequence[int] = (1, 32),
    protocols: Sequence[str] = PROTOCOLS,
    baseline: str | None = None,
    length_configs: Sequence[str | Sequence[int]] | None = None,
    onnx_model: str | None = None,
    int8_model: str | None = None,
    threads: int | None = None,
    label: str = "MiniLM",
    progress: bool = True,
) -> BenchmarkResult:
    """``quala benchmark``: prepare the engines, run, and write JSON, Markdown and a plot."""
    import torch

    from quala.budget import load_front
    from quala.data import load_squad
    from quala.export import export_model
    from quala.io import machine_info, read_manifest, write_json_atomic, write_text_atomic
    from quala.model import PACKAGED_MINILM, parse_length_config, resolve_model_path
    from quala.quantize import quantize_model, reference_length

    if any(b < 1 for b in batch_sizes):
        raise QualaError(f"--batch-sizes must be positive integers, got {list(batch_sizes)}")
    threads = threads or os.cpu_count() or 1
    if threads < 1:
        raise QualaError(f"--threads must be >= 1, got {threads}")
    squad = load_squad(data, articles, max_examples)
    src = Path(resolve_model_path(model))
    if (src / "model.onnx").is_file():
        raise QualaError(f"--model {model} is an ONNX directory; pass the fp32 PyTorch model (safetensors)")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(src)
    layers, ref = int(config.num_hidden_layers), reference_length(config)
    if length_configs is None:
        full = count_macs(config, ref).total
        configs = [p.length_config for p in load_front(src, full) if p.length_config is not None]
    else:
        configs = [parse_length_config(c, layers, ref) for c in length_configs]
        configs = [c for c in configs if c is not None]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    models = output / "models"
    onnx_dir = Path(onnx_model) if onnx_model else models / "fp32-onnx"
    int8_dir = Path(int8_model) if int8_model else models / "int8-dynamic"
    if onnx_model is None and not (onnx_dir / "model.onnx").is_file():
        export_model(model, onnx_dir)
    if int8_model is None and not (int8_dir / "model.onnx").is_file():
        quantize_model(onnx_dir, int8_dir)
    if (read_manifest(int8_dir) or {}).get("dtype") != "int8":
        raise QualaError(f"{int8_dir} is not an int8 model directory (quala quantize writes one)")
    trained = str(model) != PACKAGED_MINILM  # the packaged MiniLM has a random span head
    torch.set_num_threads(threads)
    engines = build_engines(model, onnx_dir, int8_dir, configs, baseline, threads, label, trained)
    machine = machine_info()
    machine["threads"] = threads
    # a shared machine changes everything: record how busy it was, and whether OpenMP threads spin-wait
    machine["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    machine["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    result = run_benchmark(engines, squad, batch_sizes, protocols, progress=progress, machine=machine)
    machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result.sample["models"] = {
        "model": str(model),
        "onnx": str(onnx_dir),
        "int8": str(int8_dir),
        "baseline": baseline,
    }
    write_json_atomic(output / "benchmark.json", result.to_dict())
    write_text_atomic(output / "benchmark.md", markdown_table(result) + "\n")
    plot_f1_latency(result, output / "f1_vs_latency.png")
    return result
