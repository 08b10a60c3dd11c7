"""Inference engine: one API over every backend, answering questions at a chosen length configuration.

A *predictor* maps a padded batch of features to start/end logits; the engine adds tokenisation, doc-stride
windows and answer extraction on top. ``quala evaluate``, ``quala answer``, the benchmark and the server all
go through :func:`load_predictor`, so an fp32 PyTorch directory and an int8 ONNX directory behave the same.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from quala.budget import Budget, resolve_budget
from quala.builtin import BUILTIN_MODEL
from quala.config import DataConfig, LengthAdaptiveConfig
from quala.data import Example, Prediction, collate, length_grouped_batches, postprocess, prepare_features
from quala.errors import QualaError
from quala.front import FrontPoint, full_length_front, read_front
from quala.lengths import parse_length_config, validate_length_config
from quala.macs import count_macs
from quala.model import LengthAdaptiveQA, load_tokenizer, torch_threads
from quala.model_dir import FULL_GRAPH, LA_GRAPH, ModelDir


@dataclass
class SpanLogits:
    """Start/end logits of a batch, as numpy arrays."""

    start: np.ndarray  # (B, L)
    end: np.ndarray  # (B, L)


class Predictor(Protocol):
    """What every backend provides."""

    backend: str
    tokenizer: Any
    model_config: Any  # the Hugging Face config (sizes for MACs)
    la_config: LengthAdaptiveConfig

    def logits(self, batch: dict[str, np.ndarray], length_config: Sequence[int] | None) -> SpanLogits: ...


class TorchPredictor:
    """PyTorch eager fp32 backend, on whatever device the model is (the trainer validates on its GPU)."""

    backend = "torch"

    def __init__(self, model: LengthAdaptiveQA, tokenizer: Any, threads: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_config = model.config
        self.la_config = model.la_config
        self.threads = threads

    @classmethod
    def from_pretrained(cls, model: str | Path | ModelDir, threads: int | None = None) -> TorchPredictor:
        model = ModelDir.resolve(model)
        return cls(LengthAdaptiveQA.from_pretrained(model), load_tokenizer(model), threads)

    @torch.inference_mode()
    def logits(self, batch: dict[str, np.ndarray], length_config: Sequence[int] | None) -> SpanLogits:
        device = next(self.model.parameters()).device
        with torch_threads(self.threads):
            out = self.model(
                torch.from_numpy(batch["input_ids"]).to(device),
                torch.from_numpy(batch["attention_mask"]).to(device),
                torch.from_numpy(batch["token_type_ids"]).to(device) if "token_type_ids" in batch else None,
                length_config=length_config,
            )
        return SpanLogits(out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy())


def session_options(threads: int | None, spinning: bool = True):
    """The ONNX Runtime session options every QuaLA session uses: ``threads`` intra-op threads (default: all
    cores), sequential execution, every graph optimization.

    ``spinning`` (default): worker threads spin-wait between the operators *of one run* and stop when it returns
    (``session.force_spinning_stop``), so a graph of many small operators does not pay a thread wake-up per
    operator, and idle sessions (the other graphs of one process, a server between requests) do not steal the
    cores. ``False``: threads sleep between operators too (slower at batch 1: docs/inference.md, issue 18).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


# ONNX Runtime's load-time optimizers left off on the length-adaptive graph. SkipLayerNormFusion fuses residual +
# LayerNorm once the graph's shapes are static enough to check (quala.graph_ops made them so): it changes int8
# answers (dynamic quantization rounds the slightly different sums differently: -0.9 F1 on 300 validation
# questions for the squad-mini model) and measured no faster (docs/inference.md, issue 18).
LA_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def la_session(path: str | Path, options: Any) -> Any:
    """An ONNX Runtime session on a length-adaptive graph (see :data:`LA_DISABLED_OPTIMIZERS`)."""
    import onnxruntime as ort

    return ort.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=list(LA_DISABLED_OPTIMIZERS)
    )


class OnnxPredictor:
    """ONNX Runtime backend over an exported (fp32 or int8) model directory (see :mod:`quala.export`).

    ``model.onnx`` runs any length configuration (an int64 graph input); ``model_full.onnx``, when present,
    serves full-length requests with fused attention. Both sessions share the thread settings of
    :func:`session_options`, under which an idle session never spin-waits, so they do not steal each other's cores.
    """

    backend = "onnxruntime"

    def __init__(self, model: str | Path | ModelDir, threads: int | None = None, spinning: bool = True):
        import onnxruntime as ort

        model = ModelDir.resolve(model, require_weights=False)
        directory = Path(model.path)
        if not (directory / LA_GRAPH).is_file():
            raise QualaError(f"{directory} has no {LA_GRAPH}; create it with quala export or quala quantize")
        self.directory = directory
        self.threads, self.spinning = threads, spinning
        self.model_config = model.hf_config
        self.la_config = model.la_config
        self.tokenizer = load_tokenizer(model)
        options = session_options(threads, spinning)
        providers = ["CPUExecutionProvider"]
        self.session = la_session(directory / LA_GRAPH, options)
        full = directory / FULL_GRAPH
        self.full_session = ort.InferenceSession(str(full), options, providers=providers) if full.is_file() else None
        self.input_names = {i.name for i in self.session.get_inputs()}
        self._options, self._depth_sessions = options, {}

    @classmethod
    def from_pretrained(cls, model: str | Path | ModelDir, threads: int | None = None) -> OnnxPredictor:
        return cls(model, threads)

    def logits(self, batch: dict[str, np.ndarray], length_config: Sequence[int] | None) -> SpanLogits:
        feed = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in batch.items() if k in self.input_names}
        n = int(self.model_config.num_hidden_layers)
        counts = None if length_config is None else [int(c) for c in length_config]
        if counts is not None:
            validate_length_config(counts, n)
        depth = n if counts is None else sum(c > 0 for c in counts)
        if depth < n:
            start, end = self._depth_session(counts, depth).run(None, feed)
        elif counts is None and self.full_session is not None:
            start, end = self.full_session.run(None, feed)
        else:
            # the ratio rule at the reference length keeps every real token
            counts = counts or [self.la_config.reference_length] * n
            feed["length_config"] = np.asarray(counts, dtype=np.int64)
            start, end = self.session.run(None, feed)
        return SpanLogits(start, end)

    def without_full_graph(self) -> OnnxPredictor:
        """This predictor, sessions shared, answering full-length requests on the length-adaptive graph: the
        fallback of a directory without ``model_full.onnx`` (the benchmark measures what one graph for all costs)."""
        clone = copy.copy(self)
        clone.full_session = None
        return clone

    def _depth_session(self, counts: list[int], depth: int) -> Any:
        """A session on the full-length graph cut to ``depth`` layers (built once per depth)."""
        import onnxruntime as ort

        from quala.export import truncate_graph

        ref = self.la_config.reference_length
        if counts[:depth] != [ref] * depth:
            raise QualaError(
                f"ONNX Runtime runs a depth configuration at full length only: give {ref} for each layer it runs, "
                f"then 0 (e.g. {','.join(map(str, [ref] * depth + [0] * (len(counts) - depth)))}); got {counts}"
            )
        if self.full_session is None:
            raise QualaError(f"{self.directory} has no {FULL_GRAPH}, which depth configurations run on; re-export it")
        if depth not in self._depth_sessions:
            graph = truncate_graph(self.directory / FULL_GRAPH, depth, len(counts))
            self._depth_sessions[depth] = ort.InferenceSession(graph, self._options, providers=["CPUExecutionProvider"])
        return self._depth_sessions[depth]


_BACKENDS: dict[str, Any] = {"torch": TorchPredictor, "onnxruntime": OnnxPredictor}


def load_predictor(model: str | Path | ModelDir, backend: str = "auto", threads: int | None = None) -> Predictor:
    """Load a model directory with the given backend (``auto``: what the directory's manifest says; for the
    built-in model, its int8 ONNX Runtime model, built on first use)."""
    if backend not in ("auto", *_BACKENDS):
        raise QualaError(f"unknown backend {backend!r}; choose one of {sorted(_BACKENDS)}")
    if str(model) == BUILTIN_MODEL and backend in ("auto", "onnxruntime"):
        from quala.builtin import int8_model

        model, backend = int8_model(), "onnxruntime"
    model = ModelDir.resolve(model)
    if backend == "auto":
        backend = model.backend
    return _BACKENDS[backend].from_pretrained(model, threads=threads)


def run_logits(
    predictor: Predictor,
    features: Any,
    length_config: Sequence[int] | None,
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Logits for every feature, in feature order, batching features of similar length together."""
    from tqdm.auto import tqdm

    starts: list[np.ndarray | None] = [None] * len(features)
    ends: list[np.ndarray | None] = [None] * len(features)
    pad_id = predictor.tokenizer.pad_token_id or 0
    batches = length_grouped_batches(features.lengths, batch_size)
    for indices in tqdm(batches, desc="predict", unit="batch", disable=not progress, leave=False):
        out = predictor.logits(collate(features, indices, pad_id=pad_id), length_config)
        for row, i in enumerate(indices):
            n = int(features.lengths[i])
            starts[i], ends[i] = out.start[row, :n], out.end[row, :n]
    return starts, ends  # type: ignore[return-value]


@dataclass
class Answer:
    """One answer: text, probability among the n-best spans, and character offsets into the context."""

    answer: str
    score: float
    start: int
    end: int
    length_config: list[int] | None = None
    macs: int | None = None  # per sequence at the reference length
    latency_ms: float | None = None  # wall time of the whole request (batch) that produced this answer
    alternatives: list[Prediction] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "score": self.score, "start": self.start, "end": self.end}


class QAEngine:
    """Answer questions with a length-adaptive model on any backend, at a per-request compute budget.

    >>> engine = QAEngine.from_pretrained("runs/model", backend="torch", threads=2)  # doctest: +SKIP
    >>> engine.answer("Who?", "Ada wrote it.", budget="fast").answer  # doctest: +SKIP
    """

    def __init__(
        self,
        predictor: Predictor,
        front: list[FrontPoint] | None = None,
        data_config: DataConfig | None = None,
        batch_size: int = 32,
    ):
        self.predictor = predictor
        self.data_config = data_config or DataConfig()
        self.batch_size = batch_size
        self.full_macs = self.macs(None)
        self.front = front or full_length_front(self.full_macs)

    @classmethod
    def from_pretrained(
        cls, model: str | Path | ModelDir = BUILTIN_MODEL, backend: str = "auto", threads: int | None = None
    ) -> QAEngine:
        """Load a model (default: the built-in QuaLA-MiniLM) and the search front stored with it."""
        predictor = load_predictor(model, backend=backend, threads=threads)
        full = count_macs(predictor.model_config, predictor.la_config.reference_length).total
        front = read_front(ModelDir.resolve(model, require_weights=False).directory, full)
        return cls(predictor, front)

    @property
    def num_layers(self) -> int:
        return int(self.predictor.model_config.num_hidden_layers)

    def macs(self, length_config: Sequence[int] | None) -> int:
        return count_macs(self.predictor.model_config, self.predictor.la_config.reference_length, length_config).total

    def processed_tokens(self, question: str, context: str) -> int:
        """Tokens the model runs to answer one question: every window's question, context and special tokens, as
        :func:`quala.data.prepare_features` splits a long context (the latency target's request size). Counted
        from the question and the context tokenized apart, so the window edges may differ by a token."""
        cfg = self.data_config
        question_ids, context_ids = self._token_counter.encode_batch(
            [question.lstrip(), context], add_special_tokens=False
        )
        q, c = min(len(question_ids.ids), cfg.max_query_length), len(context_ids.ids)
        fixed = q + self.predictor.tokenizer.num_special_tokens_to_add(pair=True)
        room = max(1, cfg.max_seq_length - fixed)  # context tokens per window
        windows = 1 + math.ceil(max(0, c - room) / max(1, room - cfg.doc_stride))
        return windows * fixed + c + (windows - 1) * cfg.doc_stride

    @functools.cached_property
    def _token_counter(self) -> Any:
        """A private copy of the tokenizer, without truncation or padding: the engine's own is stateful (each call
        that makes windows sets its truncation) and the server counts a request while the engine thread runs."""
        from tokenizers import Tokenizer

        counter = Tokenizer.from_str(self.predictor.tokenizer.backend_tokenizer.to_str())
        counter.no_truncation()
        counter.no_padding()
        return counter

    def presets(self) -> dict[str, FrontPoint]:
        """What each named preset resolves to on this model's front."""
        from quala.budget import PRESETS

        return {name: resolve_budget(self.front, Budget(preset=name), self.full_macs) for name in PRESETS}

    def resolve(
        self, budget: Budget | dict | str | None = None, length_config: str | Sequence[int] | None = None
    ) -> list[int] | None:
        """The length configuration to run: an explicit one, else the front point that fits ``budget``."""
        budget = Budget.parse(budget)
        if budget is not None and length_config is not None:
            raise QualaError("give either a budget or a length config, not both")
        if length_config is not None:
            return parse_length_config(length_config, self.num_layers, self.predictor.la_config.reference_length)
        return resolve_budget(self.front, budget, self.full_macs).length_config

    def answer(
        self,
        question: str,
        context: str,
        budget: Budget | dict | str | None = None,
        length_config: str | Sequence[int] | None = None,
        top_k: int = 1,
    ) -> Answer:
        return self.answer_batch([(question, context)], budget=budget, length_config=length_config, top_k=top_k)[0]

    def answer_batch(
        self,
        items: Sequence[tuple[str, str]],
        budget: Budget | dict | str | None = None,
        length_config: str | Sequence[int] | None = None,
        top_k: int = 1,
    ) -> list[Answer]:
        """Answer many (question, context) pairs; long contexts are split into doc-stride windows."""
        if not items:
            raise QualaError("nothing to answer: give at least one (question, context) pair")
        for question, context in items:
            if not isinstance(question, str) or not question.strip():
                raise QualaError("the question is empty; give a non-empty question")
            if not isinstance(context, str) or not context.strip():
                raise QualaError("the context is empty; give a non-empty context")
        if top_k < 1:
            raise QualaError(f"top_k must be >= 1, got {top_k}")
        lengths = self.resolve(budget, length_config)
        t0 = time.perf_counter()
        examples = [Example(id=str(i), question=q, context=c) for i, (q, c) in enumerate(items)]
        features = prepare_features(examples, self.predictor.tokenizer, self.data_config)
        starts, ends = run_logits(self.predictor, features, lengths, self.batch_size)
        preds = postprocess(examples, features, starts, ends, self.data_config, top_k=top_k)
        latency_ms = (time.perf_counter() - t0) * 1000
        macs = self.macs(lengths)
        answers = []
        for ex in examples:
            best = preds[ex.id][0]
            answers.append(Answer(best.text, best.score, best.start, best.end, lengths, macs, latency_ms, preds[ex.id]))
        return answers
