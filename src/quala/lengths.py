"""Length configurations: per-layer token counts of a length-adaptive model (Kim & Cho 2021, LAT §3).

A *length configuration* ``(n_1, ..., n_N)`` gives, for each of the ``N`` encoder layers, how many tokens survive
that layer's Drop-and-Restore step at the model's reference length ``L``. ``None`` means full length. Entries
are non-increasing (a dropped token never comes back); ``n_i = 0`` skips layer ``i`` and every later one (a
*depth configuration*, the model cut to fewer layers). The search calls a configuration, as a tuple, a *gene*.

This module owns parsing and validation (a :class:`~quala.errors.QualaError` for every mistake, since
configurations come from users) and the named configurations: full length, constant drop ratio (whose
ratio-bound instance is LengthDrop's smallest sub-model) and depth.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

from quala.errors import QualaError

Gene = tuple[int, ...]
EXAMPLE = "315,251,242,159,142,33"  # the QuaLA-MiniLM model card's configuration, as an example for messages


def integer(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int of at least ``minimum`` (bools and floats rejected), or a QualaError naming it."""
    if isinstance(value, bool):
        raise QualaError(f"{name} must be an integer, got the bool {value!r}")
    try:
        result = operator.index(value)
    except TypeError:
        raise QualaError(f"{name} must be an integer, got {value!r} ({type(value).__name__})") from None
    if result < minimum:
        raise QualaError(f"{name} must be >= {minimum}, got {result}")
    return result


def validate_length_config(values: Sequence[int], num_layers: int, reference_length: int | None = None) -> Gene:
    """Check a configuration and return it as a tuple: one integer per layer, the first in
    ``[1, reference_length]`` (any positive number when no reference length is given), the others ``>= 0``,
    non-increasing."""
    try:
        return _checked(values, num_layers, reference_length)
    except QualaError as exc:
        shown = list(values) if isinstance(values, Sequence) and not isinstance(values, str | bytes) else values
        raise QualaError(f"invalid length config {shown!r}: {exc}") from None


def _checked(values: Sequence[int], num_layers: int, reference_length: int | None) -> Gene:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        try:
            values = list(values)  # type: ignore[arg-type]
        except TypeError:
            raise QualaError(f"give a sequence of {num_layers} integers or None, got {values!r}") from None
    if len(values) != num_layers:
        raise QualaError(
            f"it has {len(values)} entries but the model has {num_layers} layers; "
            "give exactly one token count per layer"
        )
    lengths = tuple(integer(n, f"length_config[{i}]", int(i == 0)) for i, n in enumerate(values))
    if reference_length is not None and lengths and lengths[0] > reference_length:
        raise QualaError(
            f"length_config[0]={lengths[0]} exceeds the reference length {reference_length}; a layer cannot keep "
            "more tokens than the sequence has"
        )
    for i in range(1, num_layers):
        if lengths[i] > lengths[i - 1]:
            raise QualaError(
                f"it must be non-increasing (dropped tokens cannot come back), but "
                f"length_config[{i}]={lengths[i]} > length_config[{i - 1}]={lengths[i - 1]}"
            )
    return lengths


def parse_counts(text: str) -> list[int] | None:
    """The token counts written in ``text`` (``"N1,N2,..."``, brackets allowed); None for ``"full"``."""
    text = text.strip()
    if text.lower() in ("", "full", "none"):
        return None
    try:
        return [int(v) for v in text.replace(" ", "").strip("()[]").split(",")]
    except ValueError:
        raise QualaError(
            f"length config must be 'full' or comma-separated integers like {EXAMPLE}; got {text!r}"
        ) from None


def parse_length_config(
    text: str | Sequence[int] | None, num_layers: int, reference_length: int | None = None
) -> list[int] | None:
    """Parse ``"full"`` / ``None`` (no dropping) or ``"N1,N2,..."`` and validate it for ``num_layers`` layers."""
    values = parse_counts(text) if isinstance(text, str) else text
    if values is None:
        return None
    return list(validate_length_config(list(values), num_layers, reference_length))


def full_config(num_layers: int, reference_length: int) -> Gene:
    """Every layer keeps every token: the full model as a gene."""
    return (reference_length,) * num_layers


def constant_ratio_gene(num_layers: int, length: int, ratio: float, min_length: int = 2) -> Gene:
    """Each layer keeps ``ceil((1 - ratio) * previous)`` tokens, from ``length`` on (LengthDrop, LAT §4.1)."""
    gene, n = [], length
    for _ in range(num_layers):
        n = max(min_length, min(n, math.ceil(n * (1.0 - ratio) - 1e-9)))
        gene.append(n)
    return tuple(gene)


def smallest_config(num_layers: int, length: int, bound: float, min_length: int = 2) -> Gene:
    """LengthDrop's smallest sub-model for ratio bound ``bound`` (LAT §3.1): the cost floor of the search."""
    return constant_ratio_gene(num_layers, length, bound, min_length)


def is_valid_gene(
    gene: Sequence[int], num_layers: int | None = None, length: int | None = None, min_length: int = 2
) -> bool:
    """A gene the search may evaluate: ``num_layers`` integers (when given) in ``[min_length, length]``,
    non-increasing."""
    return (
        len(gene) > 0
        and (num_layers is None or len(gene) == num_layers)
        and all(isinstance(n, int) and n >= min_length for n in gene)
        and (length is None or max(gene) <= length)
        and all(a >= b for a, b in zip(gene, gene[1:], strict=False))
    )


def check_smallest(
    values: Sequence[int],
    what: str,
    num_layers: int | None = None,
    reference_length: int | None = None,
    min_length: int = 1,
) -> Gene:
    """An explicit cheapest configuration (``length_drop.smallest``, the search's ``smallest``): one token count
    per layer (when the layer count is known), each in ``[min_length, reference_length]``, non-increasing. The one
    rule for the training config, the LengthDrop sampler and the search, each knowing what it knows."""
    gene = tuple(values)
    if not is_valid_gene(gene, num_layers, reference_length, min_length):
        layers = f"{num_layers} " if num_layers is not None else ""
        top = f", at most {reference_length}" if reference_length is not None else ""
        raise QualaError(
            f"{what} must be {layers}non-increasing token counts, one per layer, each at least {min_length}{top}; "
            f"got {list(gene)}"
        )
    return gene


def depth_config(depth: int, num_layers: int, reference_length: int) -> list[int]:
    """The first ``depth`` layers at full length and the rest skipped (0 tokens): the model cut to ``depth`` layers,
    as LayerDrop-trained models tolerate (Fan et al. 2020, §4), served like any length configuration."""
    if not 1 <= depth <= num_layers:
        raise QualaError(f"depth must be between 1 and the model's {num_layers} layers, got {depth}")
    return [reference_length] * depth + [0] * (num_layers - depth)
