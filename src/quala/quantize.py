"""Post-training int8 quantization of an exported model directory with ONNX Runtime (QuaLA §3.3).

Weights of the Linear layers (ONNX ``MatMul`` with a constant weight, and the fused ``Attention`` projections)
become per-channel symmetric int8; embeddings, LayerNorm and the softmax stay fp32. Two modes:

- ``dynamic`` (default): activations are quantized at run time per tensor. Fastest on AVX2 CPUs without VNNI
  (docs/inference.md has the measurements).
- ``static``: QDQ graph with activation ranges (per tensor, affine uint8, min/max) calibrated on about 100
  features, as the QuaLA reference does.

The length configuration is a run-time input, so it applies after quantization (as in the reference). The FFN
output projections see activation outliers (post-GELU inputs quantized per tensor): by default
``keep_fp32="ffn-output"`` leaves them in fp32 (the accuracy each choice costs is measured in docs/inference.md).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quala.config import setting
from quala.data import SquadData
from quala.errors import QualaError
from quala.export import export_model, staging_dir
from quala.model_dir import FULL_GRAPH, LA_GRAPH, MANIFEST, ModelDir, write_manifest

MODES = ("dynamic", "static")
KEEP_FP32 = ("none", "ffn-output")
CALIBRATION_FEATURES = 100


@dataclass
class QuantizeConfig:
    """Settings of the quantize stage; each field is also a ``quala quantize`` option (:mod:`quala.cli_options`)."""

    mode: str = setting(
        "dynamic",
        "dynamic: activations quantized at run time (fastest here); static: QDQ graph with activation ranges "
        "calibrated on --calibration-file.",
    )
    keep_fp32: str = setting(
        "ffn-output",
        "ffn-output: keep the FFN output projections (activation outliers) in fp32; none: every Linear layer int8 "
        "(faster, less accurate; measured in docs/inference.md).",
    )
    calibration_features: int = setting(CALIBRATION_FEATURES, "Number of calibration features (--mode static).")

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise QualaError(f"unknown quantization mode {self.mode!r}; choose one of {list(MODES)}")
        if self.keep_fp32 not in KEEP_FP32:
            raise QualaError(f"--keep-fp32 must be one of {list(KEEP_FP32)}, got {self.keep_fp32!r}")
        if self.calibration_features < 1:
            raise QualaError(f"the number of calibration features must be >= 1, got {self.calibration_features}")


@dataclass
class QuantizeResult:
    """What :func:`quantize` wrote."""

    directory: Path
    mode: str
    graphs: list[str]
    excluded_nodes: int  # per graph, the MatMuls left in fp32
    size_mb: float


def _matmul_weights(graph_path: Path) -> list[tuple[str, tuple[int, ...]]]:
    """Each MatMul whose second input is a constant, with that weight's shape."""
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return [
        (n.name, shapes[n.input[1]])
        for n in model.graph.node
        if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in shapes
    ]


def ffn_output_nodes(graph_path: Path, intermediate_size: int) -> list[str]:
    """The MatMuls whose constant weight is (intermediate_size, hidden): the FFN output projections."""
    return [name for name, shape in _matmul_weights(graph_path) if shape[:1] == (intermediate_size,)]


def vector_weight_nodes(graph_path: Path) -> list[str]:
    """MatMuls with a 1-D constant weight: the learned token scorer's GEMVs (``significance: learned``). ONNX
    Runtime's per-channel int8 MatMul cannot take a vector weight, and a scorer costs D MACs a token: keep fp32."""
    return [name for name, shape in _matmul_weights(graph_path) if len(shape) == 1]


class _CalibrationReader:
    """Feeds calibration features one at a time (real lengths, full length configuration)."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self._batches = batches
        self._iter: Iterator[dict[str, np.ndarray]] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def calibration_batches(
    source_dir: Path,
    squad: SquadData,
    num_features: int,
    input_names: set[str],
    num_layers: int,
    reference_length: int,
) -> list[dict[str, np.ndarray]]:
    """The first ``num_features`` features of the calibration questions, as single-row graph inputs."""
    from quala.data import collate, prepare_features
    from quala.model import load_tokenizer

    tokenizer = load_tokenizer(source_dir)
    features = prepare_features(squad.examples, tokenizer)
    batches = []
    for i in range(min(num_features, len(features))):
        batch = {
            k: v for k, v in collate(features, [i], pad_id=tokenizer.pad_token_id or 0).items() if k in input_names
        }
        if "length_config" in input_names:
            batch["length_config"] = np.full(num_layers, reference_length, dtype=np.int64)
        batches.append(batch)
    return batches


def quantize_graph(
    source: Path,
    output: Path,
    mode: str,
    exclude: list[str],
    calibration: list[dict[str, np.ndarray]] | None = None,
) -> None:
    """Quantize one graph: per-channel int8 weights for MatMul/Attention, embeddings kept fp32."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}  # else the fused graph fails "Unable to find data type"
    if mode == "dynamic":
        quantize_dynamic(
            source,
            output,
            op_types_to_quantize=["MatMul", "Attention"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            extra_options=extra,
        )
        return
    if not calibration:
        raise QualaError("static quantization needs calibration data: pass --calibration-file")
    quantize_static(
        source,
        output,
        _CalibrationReader(calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        extra_options={**extra, "WeightSymmetric": True, "ActivationSymmetric": False},
    )


def quantize(
    model: str | Path | ModelDir,
    data: SquadData | None,
    output: str | Path,
    config: QuantizeConfig | None = None,
) -> QuantizeResult:
    """The quantize stage: a model directory (PyTorch safetensors or an fp32 ONNX export) into an int8 ONNX
    directory. ``data``: the calibration questions (static mode only; their first features are used)."""
    settings = config or QuantizeConfig()
    mode, keep_fp32, num_calibration_features = settings.mode, settings.keep_fp32, settings.calibration_features
    if mode == "static" and data is None:
        raise QualaError("--mode static needs --calibration-file (SQuAD JSON) to calibrate activation ranges")
    if mode == "dynamic" and data is not None:
        raise QualaError("--calibration-file only applies to --mode static")
    squad = data
    output = Path(output)
    model = ModelDir.resolve(model)
    if model.is_int8:
        raise QualaError(f"{model.name} is already quantized; pass the fp32 model directory")
    with tempfile.TemporaryDirectory(prefix="quala-export-") as scratch:
        if model.is_onnx:
            fp32_model = model
        else:  # a PyTorch directory: export it first
            fp32_model = ModelDir.resolve(export_model(model, Path(scratch) / "fp32").directory)
        fp32, config = fp32_model.directory, fp32_model.hf_config
        graphs = [g for g in (LA_GRAPH, FULL_GRAPH) if (fp32 / g).is_file()]
        with staging_dir(output) as tmp:
            excluded = 0
            for graph in graphs:
                exclude = ffn_output_nodes(fp32 / graph, config.intermediate_size) if keep_fp32 == "ffn-output" else []
                excluded = len(exclude)
                exclude += vector_weight_nodes(fp32 / graph)
                calibration = None
                if mode == "static":
                    import onnxruntime as ort

                    names = {i.name for i in ort.InferenceSession(str(fp32 / graph)).get_inputs()}
                    calibration = calibration_batches(
                        fp32,
                        squad,
                        num_calibration_features,
                        names,
                        int(config.num_hidden_layers),
                        fp32_model.reference_length,
                    )
                quantize_graph(fp32 / graph, tmp / graph, mode, exclude, calibration)
            for item in fp32.iterdir():
                if item.name not in (LA_GRAPH, FULL_GRAPH, MANIFEST) and item.is_file():
                    shutil.copyfile(item, tmp / item.name)
            size_mb = sum((tmp / g).stat().st_size for g in graphs) / 1e6
            write_manifest(
                tmp,
                "quantize",
                backend="onnxruntime",
                dtype="int8",
                source=model.name,
                mode=mode,
                keep_fp32=keep_fp32,
                per_channel=True,
                calibration={
                    "file": squad.source,
                    "articles": squad.articles,
                    "features": num_calibration_features,
                }
                if mode == "static"
                else None,
                graphs=graphs,
            )
    return QuantizeResult(output, mode, graphs, excluded, round(size_mb, 2))
