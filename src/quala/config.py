"""Typed configuration: dataclasses are the single source of truth.

YAML files set defaults, the CLI overrides them, and :func:`save_resolved` writes the resolved configuration
next to every artifact (``quala_config.yaml``). Unknown keys and wrongly typed values are rejected with a
message naming the key, so a typo in a YAML file never passes silently.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from quala.errors import QualaError

T = TypeVar("T")
RESOLVED_CONFIG = "quala_config.yaml"


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    flag: str | None = None,
    switch: bool = True,
    default_factory: Any = dataclasses.MISSING,
    metavar: str | None = None,
    as_text: bool = False,
) -> Any:
    """A dataclass field documented once: ``help`` is its ``quala`` option's help text (see
    :mod:`quala.cli_options`), ``flag`` the option's name when not derived from the field's path; a bool
    option gets a ``--no-`` form unless ``switch`` is False. ``metavar`` names the option's value in ``--help``;
    ``as_text`` makes the option take text that the dataclass itself rejects when it is not a number."""
    metadata = {"help": help, "switch": switch, "as_text": as_text}
    metadata |= {k: v for k, v in (("flag", flag), ("metavar", metavar)) if v}
    return field(default=default, default_factory=default_factory, metadata=metadata)


@dataclass
class DataConfig:
    """How examples become features (Devlin et al. 2019, SQuAD fine-tuning recipe)."""

    max_seq_length: int = setting(384, "Tokens per window.", flag="--max-seq-length")
    doc_stride: int = setting(128, "Overlap between windows of long contexts.", flag="--doc-stride")
    max_query_length: int = 64
    max_answer_length: int = 30
    n_best_size: int = 20

    def __post_init__(self) -> None:
        if self.max_seq_length < 32:
            raise QualaError(f"max_seq_length must be >= 32, got {self.max_seq_length}")
        if not 0 < self.doc_stride < self.max_seq_length:
            raise QualaError(f"doc_stride must be in (0, max_seq_length), got {self.doc_stride}")
        if not 0 < self.max_query_length < self.max_seq_length // 2:
            raise QualaError(f"max_query_length must be in (0, max_seq_length/2), got {self.max_query_length}")
        if self.max_answer_length < 1 or self.n_best_size < 1:
            raise QualaError("max_answer_length and n_best_size must be >= 1")


@dataclass
class LengthAdaptiveConfig:
    """Drop-and-Restore settings stored in the model's ``config.json`` under ``"quala"`` (LAT §3.2).

    ``reference_length`` is the sequence length that length configurations are written for (384 in the
    papers). ``length_rule`` says how a configuration applies to an input of real length ``r``:

    - ``"ratio"`` (default): layer ``i`` keeps ``ceil(n_i * r / reference_length)`` tokens, so every input
      drops the same fraction of its tokens and the MACs fraction is about the same for short and long inputs.
    - ``"clip"``: layer ``i`` keeps ``min(n_i, r)`` tokens, which is what the reference implementations do
      on inputs padded to ``reference_length`` (padding is dropped first).

    ``significance`` says which tokens a layer keeps:

    - ``"attention"`` (default): the attention probability each token receives, summed over heads and alive
      queries (LAT §3.2). Needs the attention probabilities, so the layers that drop cannot use fused attention.
    - ``"learned"``: a per-layer linear token scorer on the layer's attention output, trained to predict where
      the full model puts its answer (docs/training.md, "Learned token significance"; in the spirit of
      Block-Skim, Guan et al. 2022). Attention stays fused in every layer.

    ``scorer_question`` (learned significance only): the scorer also reads the question, ``s = h · (w_i + U_i q̄)
    + b_i`` with ``q̄`` the mean state of the alive question tokens (``token_type_ids`` 0), so that a layer can
    keep the context tokens that match *this* question rather than those that look like answers in general.
    """

    reference_length: int = 384
    length_rule: str = "ratio"
    significance: str = "attention"
    scorer_question: bool = False

    def __post_init__(self) -> None:
        if self.length_rule not in ("ratio", "clip"):
            raise QualaError(f"length_rule must be 'ratio' or 'clip', got {self.length_rule!r}")
        if self.significance not in ("attention", "learned"):
            raise QualaError(f"significance must be 'attention' or 'learned', got {self.significance!r}")
        if self.reference_length < 1:
            raise QualaError(f"reference_length must be >= 1, got {self.reference_length}")
        if self.scorer_question and self.significance != "learned":
            raise QualaError("scorer_question needs significance 'learned'")


@dataclass
class EvalConfig:
    """Evaluation settings."""

    batch_size: int = setting(32, "Features per forward pass when scoring F1.", flag="--batch-size")
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise QualaError(f"batch-size must be >= 1, got {self.batch_size}")


def from_dict(cls: type[T], values: dict[str, Any] | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from a (possibly nested) dict, rejecting unknown keys and wrong types."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise QualaError(f"unknown {where} key(s) {unknown}; valid keys: {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise QualaError(f"{where}: {exc}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise QualaError(f"{where} must be a mapping, got {value!r}")
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except QualaError:
                continue
        raise QualaError(f"{where} has the wrong type: {value!r} is not {hint}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise QualaError(f"{where} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [_coerce(item, v, where) for v in value]
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise QualaError(f"{where} must be true or false, got {value!r}")
    if hint in (int, float, str):
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, hint) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and hint is not str:
            try:
                return hint(value)
            except ValueError:
                pass
        raise QualaError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise QualaError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise QualaError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise QualaError(f"{path} must hold a mapping of settings at the top level")
    return data


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into ``base``; ``None`` values in ``overrides`` (unset CLI flags) are ignored."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(out.get(key, {}), dict):
            out[key] = merge(out.get(key, {}), value)
        else:
            out[key] = value
    return out


def resolve(cls: type[T], yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Defaults from ``cls``, then the YAML file, then CLI ``overrides``."""
    values = load_yaml(yaml_path) if yaml_path else {}
    return from_dict(cls, merge(values, overrides or {}))


def save_resolved(directory: str | Path, config: Any) -> Path:
    """Write the resolved configuration as YAML next to an artifact."""
    from quala.io import write_text_atomic

    path = Path(directory) / RESOLVED_CONFIG
    write_text_atomic(path, yaml.safe_dump(to_dict(config), sort_keys=False))
    return path
