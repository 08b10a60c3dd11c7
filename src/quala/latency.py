"""Measured latency of a length configuration on the machine at hand, for any inference backend.

The analytic MAC count (:mod:`quala.macs`) says how much work a configuration does; this module says how long
it takes here. Dynamic-TinyBERT (arXiv 2111.09645, §3) searched on measured time rather than FLOPs, because
token dropping adds gathers and top-k that FLOPs do not see. A measurement runs warm-up passes, then times
``repeats`` forward passes with a fixed thread count, and reports the median (robust to the noise of a shared
machine) with the 90th percentile. The backend is whatever :class:`~quala.engine.Predictor` is passed in.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from quala.config import setting
from quala.engine import Predictor
from quala.errors import QualaError
from quala.model import torch_threads


@dataclass
class LatencyConfig:
    """How to time one length configuration."""

    # untimed passes first (allocator, caches, lazy initialisation)
    warmup: int = setting(2, "Untimed passes before timing.")
    repeats: int = setting(7, "Timed passes per configuration (the median is reported).")
    batch_size: int = setting(1, "Batch size when timing.")
    seq_length: int | None = None  # real tokens per row; None: the model's reference length (384)
    seed: int = 0  # of the synthetic token ids
    threads: int | None = setting(None, "Threads when timing (default: the model's; use 1 on a shared machine).")

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise QualaError(f"latency warmup must be >= 0, got {self.warmup}")
        if self.repeats < 1:
            raise QualaError(f"latency repeats must be >= 1, got {self.repeats}")
        if self.batch_size < 1:
            raise QualaError(f"latency batch_size must be >= 1, got {self.batch_size}")
        if self.seq_length is not None and self.seq_length < 8:
            raise QualaError(f"latency seq_length must be >= 8, got {self.seq_length}")
        if self.threads is not None and self.threads < 1:
            raise QualaError(f"latency threads must be >= 1, got {self.threads}")


@dataclass
class LatencyResult:
    """Wall time of one forward pass (one batch) at a length configuration, in milliseconds."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    repeats: int
    warmup: int
    batch_size: int
    seq_length: int
    threads: int
    backend: str
    length_config: list[int] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def synthetic_batch(predictor: Predictor, batch_size: int, seq_length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch shaped like a real feature, ``[CLS] question [SEP] context [SEP]``, with no padding.

    Token ids are drawn at random from the ordinary vocabulary; latency depends on the shape and the length
    configuration, not on which tokens are kept.
    """
    tok = predictor.tokenizer
    special = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id}
    if None in (tok.cls_token_id, tok.sep_token_id):
        raise QualaError("the tokenizer has no [CLS]/[SEP] (or <s>/</s>) token to build a synthetic input from")
    rng = np.random.default_rng(seed)
    vocab = int(predictor.model_config.vocab_size)
    low = min(1000, vocab // 2)
    ids = rng.integers(low, vocab, size=(batch_size, seq_length), dtype=np.int64)
    ids[np.isin(ids, list(special))] = low
    question = min(16, max(1, seq_length // 8))  # question tokens, as in a typical SQuAD feature
    ids[:, 0] = tok.cls_token_id
    ids[:, question + 1] = tok.sep_token_id
    ids[:, -1] = tok.sep_token_id
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "token_type_ids" in tok.model_input_names:
        types = np.zeros_like(ids)
        types[:, question + 2 :] = 1
        batch["token_type_ids"] = types
    return batch


def measure_latency(
    predictor: Predictor,
    length_config: Sequence[int] | None,
    config: LatencyConfig | None = None,
    batch: dict[str, np.ndarray] | None = None,
    threads: int | None = None,
) -> LatencyResult:
    """Median wall time of ``predictor.logits`` on one batch at ``length_config``.

    ``batch``: the input to time (e.g. collated real features); default a :func:`synthetic_batch` of
    ``config.batch_size`` rows of ``config.seq_length`` real tokens. ``threads``: intra-op threads for the
    measurement (default: ``config.threads``, else the predictor's own setting, else all of PyTorch's threads).
    On a machine whose cores other processes also use, time with fewer threads than cores: oversubscribed
    threads make the many small operations of token dropping erratically slow.
    """
    config = config or LatencyConfig()
    threads = threads or config.threads
    if batch is None:
        seq_length = config.seq_length or int(predictor.la_config.reference_length)
        batch = synthetic_batch(predictor, config.batch_size, seq_length, config.seed)
    batch_size, seq_length = batch["input_ids"].shape
    lengths = list(length_config) if length_config is not None else None
    own = getattr(predictor, "threads", None)
    used = threads or own or torch.get_num_threads()
    restore = hasattr(predictor, "threads") and threads is not None
    if restore:
        predictor.threads = threads  # type: ignore[attr-defined]
    times = []
    try:
        with torch_threads(used):
            for _ in range(config.warmup):
                predictor.logits(batch, lengths)
            for _ in range(config.repeats):
                t0 = time.perf_counter()
                predictor.logits(batch, lengths)
                times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        if restore:
            predictor.threads = own  # type: ignore[attr-defined]
    ms = np.asarray(times)
    return LatencyResult(
        median_ms=round(float(np.median(ms)), 3),
        p90_ms=round(float(np.percentile(ms, 90)), 3),
        mean_ms=round(float(ms.mean()), 3),
        min_ms=round(float(ms.min()), 3),
        repeats=config.repeats,
        warmup=config.warmup,
        batch_size=int(batch_size),
        seq_length=int(seq_length),
        threads=int(used),
        backend=str(getattr(predictor, "backend", type(predictor).__name__)),
        length_config=lengths,
    )
