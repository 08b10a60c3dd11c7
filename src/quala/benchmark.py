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
which dominate it, at equal or lower latency (:mod:`quala.benchmark_report` writes the verdicts, tables and plot).
The module stays a little over 500 lines: the engines it builds, their round-robin timing and the stage that
prepares them are one measurement protocol.
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

from quala.config import DataConfig, setting
from quala.data import Features, SquadData, collate, postprocess, prepare_features
from quala.engine import Predictor
from quala.errors import QualaError
from quala.macs import count_macs
from quala.metric import squad_v1_scores
from quala.model_dir import FULL_GRAPH, LA_GRAPH, ModelDir

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
        from quala.benchmark_report import verdict

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

    src = Path(ModelDir.resolve(model).path)
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
            int8_ort.without_full_graph(),
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


def clip_rule_model(model: ModelDir, int8_dir: Path, output: Path) -> Path:
    """``model`` exported with the ``clip`` length rule (the papers' protocol) and quantized like ``int8_dir``
    (same mode, fp32 exclusions and calibration), into ``output``; reused when already there."""
    import tempfile

    from quala.data import load_squad
    from quala.export import export_model
    from quala.model_dir import read_manifest
    from quala.quantize import QuantizeConfig, quantize

    if (output / LA_GRAPH).is_file():
        return output
    manifest = read_manifest(int8_dir) or {}
    calibration = manifest.get("calibration") or {}
    with tempfile.TemporaryDirectory(prefix="quala-clip-") as scratch:
        fp32 = export_model(model, Path(scratch) / "fp32", full_graph=False, length_rule="clip").directory
        settings = QuantizeConfig(
            mode=manifest.get("mode", "dynamic"),
            keep_fp32=manifest.get("keep_fp32", "ffn-output"),
            calibration_features=calibration.get("features") or QuantizeConfig.calibration_features,
        )
        data = load_squad(calibration["file"], calibration.get("articles")) if calibration.get("file") else None
        quantize(fp32, data, output, settings)
    return output


@dataclass
class BenchmarkConfig:
    """Settings of the benchmark stage."""

    max_examples: int | None = setting(200, "Benchmark the first N questions (None: all).")
    batch_sizes: list[int] = setting(
        help="Comma-separated batch sizes (serving protocol).", default_factory=lambda: [1, 32]
    )
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))  # serving | papers
    threads: int | None = setting(None, "CPU threads (default: all cores).")
    baselines: str = setting(
        "all", "all: also time int8 with windows 256/128 and 192/64 and with 4 and 5 layers; none."
    )
    length_configs: list[list[int]] | None = None  # the LA rows (None: the model's search front)
    baseline_model: str | None = setting(None, "Trained BERT-base QA directory; default: random 12x768 weights.")
    onnx_model: str | None = setting(None, "Existing fp32 export of --model (default: exported into OUTPUT/models).")
    int8_model: str | None = setting(None, "Existing int8 model of --model (default: quantized into OUTPUT/models).")
    label: str = setting("MiniLM", "Name of the model in the rows.")

    def __post_init__(self) -> None:
        # resolved configs written before the papers' protocol got its clip rule name it "paper"
        self.protocols = ["papers" if p == "paper" else p for p in self.protocols]
        if any(b < 1 for b in self.batch_sizes):
            raise QualaError(f"--batch-sizes must be positive integers, got {list(self.batch_sizes)}")
        if self.baselines not in BASELINES:
            raise QualaError(f"--baselines must be one of {list(BASELINES)}, got {self.baselines!r}")
        settings_for(self.protocols, self.batch_sizes)  # rejects unknown protocols before any work
        if self.threads is not None and self.threads < 1:
            raise QualaError(f"--threads must be >= 1, got {self.threads}")


def benchmark(
    model: str | Path | ModelDir, data: SquadData, output: Path, config: BenchmarkConfig, progress: bool = True
) -> BenchmarkResult:
    """The benchmark stage (``quala benchmark``): prepare the engines, run them on the first
    ``config.max_examples`` questions of ``data``, and write JSON, Markdown and a plot."""
    import torch

    from quala.export import export_model
    from quala.io import machine_info, write_json_atomic, write_text_atomic
    from quala.lengths import parse_length_config
    from quala.model_dir import PACKAGED_MINILM, read_manifest
    from quala.quantize import quantize

    cfg = config
    batch_sizes, protocols, baseline = cfg.batch_sizes, cfg.protocols, cfg.baseline_model
    length_configs, onnx_model, int8_model = cfg.length_configs, cfg.onnx_model, cfg.int8_model
    label, baselines = cfg.label, cfg.baselines
    threads = cfg.threads or os.cpu_count() or 1
    squad = data.first(cfg.max_examples)
    model = ModelDir.resolve(model)
    if model.is_onnx:
        raise QualaError(f"--model {model} is an ONNX directory; pass the fp32 PyTorch model (safetensors)")
    layers, ref = model.num_layers, model.reference_length
    if length_configs is None:
        configs = [p.length_config for p in model.front() if p.length_config is not None]
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
    if onnx_model is None and not (onnx_dir / LA_GRAPH).is_file():
        export_model(model, onnx_dir)
    if int8_model is None and not (int8_dir / LA_GRAPH).is_file():
        quantize(onnx_dir, None, int8_dir)
    if (read_manifest(int8_dir) or {}).get("dtype") != "int8":
        raise QualaError(f"{int8_dir} is not an int8 model directory (quala quantize writes one)")
    clip_dir = None
    if "papers" in protocols and (configs or paper_config):
        clip_dir = clip_rule_model(model, int8_dir, models / "int8-clip")
    trained = model.name != PACKAGED_MINILM  # the packaged MiniLM has a random span head
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
        "model": model.name,
        "onnx": str(onnx_dir),
        "int8": str(int8_dir),
        "int8_clip_rule": str(clip_dir) if clip_dir else None,
        "baseline": baseline,
    }
    result.sample["baselines"] = baselines
    result.sample["paper_config"] = paper_config
    write_json_atomic(output / "benchmark.json", result.to_dict())
    from quala.benchmark_report import markdown_table, plot_f1_latency

    write_text_atomic(output / "benchmark.md", markdown_table(result) + "\n")
    plot_f1_latency(result, output / "f1_vs_latency.png")
    return result
