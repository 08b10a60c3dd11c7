"""Side-by-side CPU benchmark: BERT-base, MiniLM fp32 (PyTorch, ONNX Runtime), int8, length-adaptive int8, and
the simple alternatives to token dropping.

Every engine answers the same fixed sample of real SQuAD questions in **one process**, and the engines take
turns batch by batch (round robin), so machine load drifts affect all rows alike and the ratios are fair.
Two protocols:

- ``serving`` (default): real lengths; a request is ``batch_size`` questions (all their doc-stride windows) in
  one forward call, padded only to its longest feature; latency is the wall time of that call. Length
  configurations apply with the model's own rule (``ratio``: the same fraction of every input's real tokens).
- ``papers``: the papers' protocol (QuaLA-MiniLM model card, LAT §4): every feature padded to 384, batch 32,
  latency is the batch time divided by its features; length configurations apply with the ``clip`` rule
  (absolute token counts, so padding is dropped first), on an int8 graph exported with that rule. Rows: the
  model card's, i.e. BERT-base (1.00×), MiniLM fp32, int8 full length, int8 at (315,251,242,159,142,33) and
  at the front points, plus the depth baselines.

Baselines (``baselines="all"``), int8 ONNX Runtime without token dropping: shorter windows (256/128 and
192/64: more, shorter features per question, answers merged across windows as usual; serving protocol only,
since a per-feature latency would hide their extra features), and the first ``k`` layers only (a depth
configuration, :func:`quala.lengths.depth_config`, on the fused graph cut to ``k`` layers).

Latency covers the model call only (feature tensors in, span logits out); tokenisation and answer extraction
are the same for every engine. F1/EM come from each row's own logits on the same questions; rows with random
weights report none. Each panel gets a verdict (:func:`verdict`): which baselines the front dominates and
which dominate it, at equal or lower latency.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quala.config import DataConfig
from quala.data import Features, SquadData, collate, postprocess, prepare_features
from quala.engine import Predictor
from quala.errors import QualaError
from quala.macs import count_macs
from quala.metric import squad_v1_scores
from quala.report import fmt

PROTOCOLS = ("serving", "papers")
PAPERS_LENGTH = 384
PAPERS_BATCH = 32
PAPER_CONFIG = (315, 251, 242, 159, 142, 33)  # the QuaLA-MiniLM model card's 8.8x configuration (arXiv 2210.17114)
BASELINES = ("none", "all")
WINDOWS = ((256, 128), (192, 64))  # (max_seq_length, doc_stride) of the shorter-window baselines
DEPTHS = (4, 5)  # layers kept by the depth baselines (of the models with more)
KINDS = ("reference", "model", "graph", "front", "paper-config", "baseline")
WEIGHT_FILES = ("*.safetensors", "*.onnx", "*.onnx.data")


@dataclass
class BenchEngine:
    """One row family: a loaded predictor run at one length configuration and window size."""

    name: str
    predictor: Predictor
    dtype: str
    length_config: list[int] | None
    size_mb: float | None
    trained: bool  # False for random weights: no accuracy is reported
    kind: str = "model"  # one of KINDS: the plot joins the front; the verdict judges it against model/baseline
    protocols: tuple[str, ...] = PROTOCOLS
    data: DataConfig = field(default_factory=DataConfig)


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
    kind: str = "model"
    length_rule: str | None = None  # how length_config applied (None: full length, or a depth configuration)
    max_seq_length: int = 384
    doc_stride: int = 128
    questions_per_second: float = 0.0
    f1_delta_vs_fp32: float | None = None  # F1 minus the MiniLM fp32 eager row's, same protocol and batch


@dataclass
class BenchmarkResult:
    machine: dict[str, Any]
    rows: list[BenchRow]
    sample: dict[str, Any] = field(default_factory=dict)

    def verdicts(self) -> dict[str, str]:
        """One verdict line per (protocol, batch size) panel."""
        return {f"{p}, batch {bs}": verdict([asdict(r) for r in rows]) for (p, bs), rows in panels(self.rows).items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "sample": self.sample,
            "verdicts": self.verdicts(),
            "rows": [asdict(r) for r in self.rows],
        }


def panels(rows: Sequence[BenchRow]) -> dict[tuple[str, int], list[BenchRow]]:
    """Rows grouped by (protocol, batch size), in row order."""
    groups: dict[tuple[str, int], list[BenchRow]] = {}
    for r in rows:
        groups.setdefault((r.protocol, r.batch_size), []).append(r)
    return groups


# ------------------------------------------------------------------------------------------- verdict
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


def batches_for(features: Features, protocol: str, batch_size: int, pad_id: int) -> list[dict[str, np.ndarray]]:
    """Model inputs of each batch, in sample order.

    serving: ``batch_size`` questions per batch with all their windows, padded to the longest feature;
    papers: ``batch_size`` features per batch, padded to 384 (the model card's protocol).
    """
    order = list(range(len(features)))
    if protocol == "papers":
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    else:
        questions = np.asarray(features.example_index) // batch_size  # features are in question order
        chunks = [[i for i in order if questions[i] == q] for q in dict.fromkeys(questions.tolist())]
    pad_to = PAPERS_LENGTH if protocol == "papers" else None
    out = []
    for chunk in chunks:
        batch = collate(features, chunk, pad_to=pad_to, pad_id=pad_id)
        out.append({k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
    return out


def settings_for(protocols: Sequence[str], batch_sizes: Sequence[int]) -> list[tuple[str, int]]:
    """(protocol, batch size) panels: serving at every batch size, papers at batch 32 only."""
    for p in protocols:
        if p not in PROTOCOLS:
            raise QualaError(f"unknown protocol {p!r}; choose from {list(PROTOCOLS)}")
    settings = [("serving", bs) for bs in batch_sizes if "serving" in protocols]
    return settings + ([("papers", PAPERS_BATCH)] if "papers" in protocols else [])


def run_benchmark(
    engines: Sequence[BenchEngine],
    squad: SquadData,
    batch_sizes: Sequence[int] = (1, 32),
    protocols: Sequence[str] = PROTOCOLS,
    warmup: int = 2,
    progress: bool = True,
    machine: dict[str, Any] | None = None,
) -> BenchmarkResult:
    """Time every engine on the same questions, round robin batch by batch; score each row's answers."""
    from tqdm.auto import tqdm

    settings = settings_for(protocols, batch_sizes)
    references = squad.references()
    # features per (tokenizer, window): engines with identical tokenizers and windows share them
    feats: dict[tuple[str, int, int], Features] = {}
    keys = []
    for e in engines:
        key = (e.predictor.tokenizer.backend_tokenizer.to_str(), e.data.max_seq_length, e.data.doc_stride)
        if key not in feats:
            feats[key] = prepare_features(squad.examples, e.predictor.tokenizer, e.data)
        keys.append(key)
    rows: list[BenchRow] = []
    for protocol, bs in settings:
        active = [i for i, e in enumerate(engines) if protocol in e.protocols]
        batches = {
            i: batches_for(feats[keys[i]], protocol, bs, engines[i].predictor.tokenizer.pad_token_id or 0)
            for i in active
        }
        times: dict[int, list[float]] = {i: [] for i in active}
        sizes: dict[int, list[int]] = {i: [] for i in active}
        logits: dict[int, list[Any]] = {i: [] for i in active}
        for i in active:  # warm-up (allocations, thread pools); one batch of 32 is plenty
            for w in range(min(warmup if bs == 1 else 1, len(batches[i]))):
                engines[i].predictor.logits(batches[i][w], engines[i].length_config)
        n_batches = max(len(b) for b in batches.values())
        bar = tqdm(range(n_batches), desc=f"{protocol} b{bs}", unit="batch", disable=not progress, leave=False)
        for b in bar:
            for i in active:
                if b >= len(batches[i]):
                    continue
                e, batch = engines[i], batches[i][b]
                ms, out = timed(lambda e=e, batch=batch: e.predictor.logits(batch, e.length_config))
                times[i].append(ms)
                sizes[i].append(len(batch["input_ids"]))
                logits[i].append(out)
        for i in active:
            rows.append(
                _row(engines[i], feats[keys[i]], squad, references, protocol, bs, times[i], sizes[i], logits[i])
            )
    _relative(rows, engines)
    info = machine or {}
    sample = {"data": squad.describe(), "num_features": len(feats[keys[0]])}
    return BenchmarkResult(info, rows, sample)


def _row(
    e: BenchEngine,
    f: Features,
    squad: SquadData,
    references: dict[str, list[str]],
    protocol: str,
    bs: int,
    times: list[float],
    sizes: list[int],
    logits: list[Any],
) -> BenchRow:
    t = np.asarray(times)
    per = t / np.asarray(sizes) if protocol == "papers" else t  # papers: amortised per feature
    f1 = em = None
    if e.trained and references:
        starts = [row for out in logits for row in out.start]
        ends = [row for out in logits for row in out.end]
        preds = postprocess(squad.examples, f, starts, ends, e.data)
        scores = squad_v1_scores({q: p[0].text for q, p in preds.items()}, references)
        f1, em = round(scores.f1, 2), round(scores.exact_match, 2)
    la = e.predictor.la_config
    dropping = e.length_config is not None and 0 not in e.length_config
    return BenchRow(
        name=e.name,
        backend=e.predictor.backend,
        dtype=e.dtype,
        length_config=e.length_config,
        batch_size=bs,
        protocol=protocol,
        latency_ms_median=round(float(np.median(per)), 2),
        latency_ms_p90=round(float(np.percentile(per, 90)), 2),
        throughput=round(len(f) / (t.sum() / 1000.0), 2),
        macs=count_macs(e.predictor.model_config, la.reference_length, e.length_config).total,
        size_mb=e.size_mb,
        f1=f1,
        exact_match=em,
        num_features=len(f),
        weights="trained" if e.trained else "random",
        kind=e.kind,
        length_rule=la.length_rule if dropping else None,
        max_seq_length=e.data.max_seq_length,
        doc_stride=e.data.doc_stride,
        questions_per_second=round(len(squad.examples) / (t.sum() / 1000.0), 2),
    )


def _relative(rows: list[BenchRow], engines: Sequence[BenchEngine]) -> None:
    """Speedups against BERT-base and MiniLM fp32 eager, and F1 against the latter, per (protocol, batch size)."""
    bert_name, minilm_name = engines[0].name, engines[1].name
    for same in panels(rows).values():
        bert = next((r for r in same if r.name == bert_name), None)
        minilm = next((r for r in same if r.name == minilm_name), None)
        for row in same:
            if bert is not None:
                row.speedup_vs_bert_base = round(bert.latency_ms_median / row.latency_ms_median, 2)
            if minilm is not None:
                row.speedup_vs_minilm_fp32 = round(minilm.latency_ms_median / row.latency_ms_median, 2)
                if row.f1 is not None and minilm.f1 is not None:
                    row.f1_delta_vs_fp32 = round(row.f1 - minilm.f1, 2)


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
    baselines: str = "all",
    clip_dir: Path | None = None,
    paper_config: list[int] | None = None,
) -> list[BenchEngine]:
    """BERT-base, {label} fp32 eager / fp32 ORT / int8 ORT, LA-{label} int8 at each length config (serving: the
    model's rule; papers: the ``clip_dir`` graph), and with ``baselines="all"`` the window and depth baselines."""
    from quala.engine import OnnxPredictor, TorchPredictor
    from quala.export import FULL_GRAPH, LA_GRAPH
    from quala.model import resolve_model_path

    src = Path(resolve_model_path(model))
    fp32_ort = OnnxPredictor(onnx_dir, threads)
    int8_ort = OnnxPredictor(int8_dir, threads)
    full_mb, la_mb = weights_size_mb([int8_dir / FULL_GRAPH]), weights_size_mb([int8_dir / LA_GRAPH])
    serving = ("serving",)
    engines = [
        dataclasses.replace(bert_base_engine(baseline, src, threads), kind="reference"),
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
            protocols=serving,
        ),
        BenchEngine(f"{label} int8 ONNX Runtime", int8_ort, "int8", None, full_mb, trained),
        BenchEngine(
            f"LA-{label} int8 ONNX Runtime (one graph, full length)",
            _FullViaLengthGraph(int8_ort),
            "int8",
            None,
            la_mb,
            trained,
            kind="graph",
            protocols=serving,
        ),
    ]
    clip = OnnxPredictor(clip_dir, threads) if clip_dir is not None else None
    la_rows = [(list(c), "front", f"LA-{label} int8 ONNX Runtime") for c in length_configs]
    if paper_config is not None and paper_config not in [c for c, _, _ in la_rows]:
        la_rows.append((paper_config, "paper-config", f"LA-{label} int8 ONNX Runtime (model card config)"))
    for lengths, kind, name in la_rows:
        engines.append(BenchEngine(name, int8_ort, "int8", lengths, la_mb, trained, kind=kind, protocols=serving))
        if clip is not None:
            engines.append(BenchEngine(name, clip, "int8", lengths, la_mb, trained, kind=kind, protocols=("papers",)))
    if baselines == "all":
        layers, ref = int(int8_ort.model_config.num_hidden_layers), int8_ort.la_config.reference_length
        for name, data, lengths in baseline_specs(layers, ref):
            # windows change the features per question, which a per-feature (papers) latency would hide
            engines.append(
                BenchEngine(
                    f"{label} int8 ONNX Runtime, {name}",
                    int8_ort,
                    "int8",
                    lengths,
                    full_mb,
                    trained,
                    kind="baseline",
                    protocols=PROTOCOLS if lengths else serving,
                    data=data,
                )
            )
    return engines


def baseline_specs(num_layers: int, reference_length: int) -> list[tuple[str, DataConfig, list[int] | None]]:
    """(name, feature windows, length config) of each baseline: the shorter windows at full length, then the
    depth configurations that keep fewer layers than the model has."""
    from quala.lengths import depth_config

    specs = [(f"windows {m}/{s}", DataConfig(max_seq_length=m, doc_stride=s), None) for m, s in WINDOWS]
    specs += [
        (f"first {k} layers", DataConfig(), depth_config(k, num_layers, reference_length))
        for k in DEPTHS
        if k < num_layers
    ]
    return specs


def clip_rule_model(model: str | Path, int8_dir: Path, output: Path) -> Path:
    """``model`` exported with the ``clip`` length rule (the papers' protocol) and quantized like ``int8_dir``
    (same mode, fp32 exclusions and calibration), into ``output``; reused when already there."""
    import tempfile

    from quala.export import LA_GRAPH, export_model
    from quala.io import read_manifest
    from quala.quantize import quantize_model

    if (output / LA_GRAPH).is_file():
        return output
    manifest = read_manifest(int8_dir) or {}
    calibration = manifest.get("calibration") or {}
    with tempfile.TemporaryDirectory(prefix="quala-clip-") as scratch:
        fp32 = export_model(model, Path(scratch) / "fp32", full_graph=False, length_rule="clip").directory
        quantize_model(
            fp32,
            output,
            manifest.get("mode", "dynamic"),
            calibration.get("file"),
            calibration.get("articles"),
            manifest.get("keep_fp32", "ffn-output"),
            calibration.get("features") or 100,
        )
    return output


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
    baselines: str = "all",
) -> BenchmarkResult:
    """``quala benchmark``: prepare the engines, run, and write JSON, Markdown and a plot."""
    import torch

    from quala.budget import load_front
    from quala.data import load_squad
    from quala.export import export_model
    from quala.io import machine_info, read_manifest, write_json_atomic, write_text_atomic
    from quala.lengths import parse_length_config
    from quala.model import PACKAGED_MINILM, resolve_model_path
    from quala.quantize import quantize_model, reference_length

    if any(b < 1 for b in batch_sizes):
        raise QualaError(f"--batch-sizes must be positive integers, got {list(batch_sizes)}")
    if baselines not in BASELINES:
        raise QualaError(f"--baselines must be one of {list(BASELINES)}, got {baselines!r}")
    settings_for(protocols, batch_sizes)  # rejects unknown protocols before any work
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
    try:  # the model card's configuration exists for 6-layer models at reference length >= 315 only
        paper_config = parse_length_config(list(PAPER_CONFIG), layers, ref)
    except QualaError:
        paper_config = None
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
    clip_dir = None
    if "papers" in protocols and (configs or paper_config):
        clip_dir = clip_rule_model(model, int8_dir, models / "int8-clip")
    trained = str(model) != PACKAGED_MINILM  # the packaged MiniLM has a random span head
    torch.set_num_threads(threads)
    engines = build_engines(
        model, onnx_dir, int8_dir, configs, baseline, threads, label, trained, baselines, clip_dir, paper_config
    )
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
        "int8_clip_rule": str(clip_dir) if clip_dir else None,
        "baseline": baseline,
    }
    result.sample["baselines"] = baselines
    result.sample["paper_config"] = paper_config
    write_json_atomic(output / "benchmark.json", result.to_dict())
    write_text_atomic(output / "benchmark.md", markdown_table(result) + "\n")
    plot_f1_latency(result, output / "f1_vs_latency.png")
    return result
