"""Analytic multiply-accumulate (MAC) counts for length-adaptive encoders.

A *length configuration* ``(n_1, ..., n_N)`` gives, for each of the ``N``
encoder layers, how many tokens survive that layer's Drop-and-Restore step
(Kim & Cho 2021, "Length-Adaptive Transformer", arXiv 2010.07003, §3):
layer ``i`` runs self-attention on the ``n_{i-1}`` tokens still alive
(``n_0 = L``, the sequence length) and keeps ``n_i`` of them for its FFN.
``None`` means full length (``n_i = L`` for every layer). ``n_i = 0`` skips layer ``i`` and, the
configuration being non-increasing, every later one: ``(L,) * k + (0,) * (N - k)`` runs the first ``k``
layers only (a depth configuration; tokens reach the span head with their layer-``k`` states).

The count follows the convention used by LAT §3 and by the QuaLA-MiniLM paper
(Guskin et al. 2022, arXiv 2210.17114), with ``d`` the hidden size and ``f``
the FFN (intermediate) size::

    MACs = sum_i [ 4 n_{i-1} d^2 + 2 n_{i-1}^2 d + 2 n_i d f ] + 2 L d

Both papers report these numbers under the label "FLOPs" (e.g. 35.3G for
BERT-base at L=384, 4.76G for MiniLM-L6-H384); they are MACs — one
multiply plus one add each — i.e. half of what a strict FLOP counter such as
:class:`torch.utils.flop_counter.FlopCounterMode` reports for the same matmuls.
Only the matmul-like work is counted: embedding lookups, LayerNorm, softmax,
GELU, bias additions and residual adds are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quala.errors import QualaError
from quala.lengths import full_config, integer, validate_length_config

__all__ = ["MacsBreakdown", "count_macs", "macs_fraction"]


@dataclass(frozen=True)
class MacsBreakdown:
    """Per-component MAC counts of one forward pass over a single sequence.

    Attributes:
        attention_projections: ``sum_i 4 n_{i-1} d^2`` — the Q, K, V and
            attention-output projections. Following the check-value convention
            of LAT §3 / arXiv 2210.17114, the output projection is charged on
            all ``n_{i-1}`` tokens that entered attention (even though under
            Drop-and-Restore only the ``n_i`` kept tokens strictly need it).
        attention_scores: ``sum_i 2 n_{i-1}^2 d`` — ``Q K^T`` (``n^2 d``) plus
            attention-probabilities times ``V`` (``n^2 d``), summed over heads.
        ffn: ``sum_i 2 n_i d f`` — the two FFN linears (``d->f`` and ``f->d``)
            on the ``n_i`` kept tokens.
        span_head: ``2 L d`` — the ``Linear(d, 2)`` start/end head on every one
            of the ``L`` positions (dropped tokens are restored before it).
        embeddings: always 0 — word/position/type embeddings are table lookups
            plus additions, not multiply-accumulates. Kept so that the
            breakdown names every part of the model explicitly.
    """

    attention_projections: int
    attention_scores: int
    ffn: int
    span_head: int
    embeddings: int = 0

    @property
    def total(self) -> int:
        """Sum of all components (the formula's value)."""
        return self.attention_projections + self.attention_scores + self.ffn + self.span_head + self.embeddings


def _model_dims(config: Any) -> tuple[int, int, int]:
    dims = []
    for attr in ("hidden_size", "intermediate_size", "num_hidden_layers"):
        if not hasattr(config, attr):
            raise QualaError(
                f"config of type {type(config).__name__} has no attribute {attr!r}; pass a "
                "BERT/RoBERTa/MiniLM-style config with hidden_size, intermediate_size and num_hidden_layers"
            )
        dims.append(integer(getattr(config, attr), f"config.{attr}"))
    return dims[0], dims[1], dims[2]


def count_macs(config: Any, seq_length: int = 384, length_config: Sequence[int] | None = None) -> MacsBreakdown:
    """MACs of one extractive-QA forward pass (batch size 1) under a length configuration.

    Implements ``sum_i [4 n_{i-1} d^2 + 2 n_{i-1}^2 d + 2 n_i d f] + 2 L d``
    (LAT §3, arXiv 2010.07003; QuaLA-MiniLM, arXiv 2210.17114 — reported there
    as "FLOPs").

    Args:
        config: any Hugging Face config-like object with ``hidden_size``,
            ``intermediate_size`` and ``num_hidden_layers`` (BERT, RoBERTa,
            MiniLM families).
        seq_length: ``L``, the padded input length (default 384, as in SQuAD).
        length_config: tokens kept after each layer, or ``None`` for full length.

    Raises:
        QualaError: if ``seq_length`` or ``length_config`` is invalid.
    """
    d, f, num_layers = _model_dims(config)
    seq_length = integer(seq_length, "seq_length")
    lengths = (
        full_config(num_layers, seq_length)
        if length_config is None
        else validate_length_config(length_config, num_layers, seq_length)
    )

    projections = scores = ffn = 0
    alive = seq_length  # n_{i-1}
    for kept in lengths:  # n_i
        if kept == 0:  # skipped layer, and every later one
            break
        projections += 4 * alive * d * d
        scores += 2 * alive * alive * d
        ffn += 2 * kept * d * f
        alive = kept
    return MacsBreakdown(
        attention_projections=projections,
        attention_scores=scores,
        ffn=ffn,
        span_head=2 * seq_length * d,
        embeddings=0,
    )


def macs_fraction(config: Any, seq_length: int = 384, length_config: Sequence[int] | None = None) -> float:
    """``count_macs(config, L, length_config).total / count_macs(config, L).total``."""
    return count_macs(config, seq_length, length_config).total / count_macs(config, seq_length).total
