"""Post-training int8 quantization of an exported model directory with ONNX Runtime (QuaLA §3.3).

Weights of the Linear layers (ONNX ``MatMul`` with a constant weight, and the fused ``Attention`` projections)
become per-channel symmetric int8; embeddings, LayerNorm and the softmax stay fp32. Two modes:

- ``dynamic`` (default): activations are quantized at run time per tensor. Fastest on AVX2 CPUs without VNNI
  (docs/inference.md has the measurements).
- ``static``: QDQ graph with activation ranges (per tensor, affine uint8, min/max) calibrated on about 100
  features, as the QuaLA reference does.

The length configuration is a run-time input, so it applies after quantization (as in the reference). The FFN
output projections see activation outliers (post-GELU inputs quantized per tensor): by default
``keep_fp32="ffn-output"`` leaves them in fp32, which kept the trained SQuAD-mini model within 1 F1 of fp32
where quantizing them too lost 1.25 F1 (docs/inference.md).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quala.data import SquadData, load_squad
from quala.errors import QualaError
from quala.export import FULL_GRAPH, LA_GRAPH, export_model, staging_dir
from quala.io import read_manifest, write_manifest

MODES = ("dynamic", "static")
KEEP_FP32 = ("none", "ffn-output")
CALIBRATION_FEATURES = 100


@dataclass
class QuantizeResult:
    """What :func:`quantize_model` wrote."""

    directory: Path
    mode: str
    graphs: list[str]
    excluded_nodes: int  # per graph, the MatMuls left in fp32
    size_mb: float


def ffn_output_nodes(graph_path: Path, intermediate_size: int) -> list[str]:
    """The MatMuls whose constant weight is (intermediate_size, hidden): the FFN output projections."""
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and len(n.input) > 1 and shapes.get(n.input[1], (None,))[0] == intermediate_size
    ]


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


def quantize_model(
    model: str | Path,
    output: str | Path,
    mode: str = "dynamic",
    calibration_file: str | None = None,
    calibration_articles: str | None = None,
    keep_fp32: str = "ffn-output",
    num_calibration_features: int = CALIBRATION_FEATURES,
) -> QuantizeResult:
    """Quantize a model directory (PyTorch safetensors or an fp32 ONNX export) into an int8 ONNX directory."""
    from transformers import AutoConfig

    if mode not in MODES:
        raise QualaError(f"unknown quantization mode {mode!r}; choose one of {list(MODES)}")
    if keep_fp32 not in KEEP_FP32:
        raise QualaError(f"--keep-fp32 must be one of {list(KEEP_FP32)}, got {keep_fp32!r}")
    if mode == "static" and calibration_file is None:
        raise QualaError("--mode static needs --calibration-file (SQuAD JSON) to calibrate activation ranges")
    if mode == "dynamic" and calibration_file is not None:
        raise QualaError("--calibration-file only applies to --mode static")
    if num_calibration_features < 1:
        raise QualaError(f"the number of calibration features must be >= 1, got {num_calibration_features}")
    squad = load_squad(calibration_file, calibration_articles, num_calibration_features) if calibration_file else None
    output = Path(output)
    manifest = read_manifest(model) if Path(str(model)).is_dir() else None
    if manifest is not None and manifest.get("dtype") == "int8":
        raise QualaError(f"{model} is already quantized; pass the fp32 model directory")
    with tempfile.TemporaryDirectory(prefix="quala-export-") as scratch:
        if Path(str(model)).is_dir() and (Path(str(model)) / LA_GRAPH).is_file():
            fp32 = Path(str(model))
        else:  # a PyTorch directory: export it first
            fp32 = export_model(model, Path(scratch) / "fp32").directory
        config = AutoConfig.from_pretrained(fp32)
        graphs = [g for g in (LA_GRAPH, FULL_GRAPH) if (fp32 / g).is_file()]
        with staging_dir(output) as tmp:
            excluded = 0
            for graph in graphs:
                exclude = ffn_output_nodes(fp32 / graph, config.intermediate_size) if keep_fp32 == "ffn-output" else []
                excluded = len(exclude)
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
                        reference_length(config),
                    )
                quantize_graph(fp32 / graph, tmp / graph, mode, exclude, calibration)
            for item in fp32.iterdir():
                if item.name not in (LA_GRAPH, FULL_GRAPH, "manifest.json") and item.is_file():
                    shutil.copyfile(item, tmp / item.name)
            size_mb = sum((tmp / g).stat().st_size for g in graphs) / 1e6
            write_manifest(
                tmp,
                "quantize",
                backend="onnxruntime",
                dtype="int8",
                source=str(model),
                mode=mode,
                keep_fp32=keep_fp32,
                per_channel=True,
                calibration={
                    "file": calibration_file,
                    "articles": calibration_articles,
                    "features": num_calibration_features,
                }
                if mode == "static"
                else None,
                graphs=graphs,
            )
    return QuantizeResult(output, mode, graphs, excluded, round(size_mb, 2))


def reference_length(config) -> int:
    """The length-adaptive reference length stored in a Hugging Face config (384 when absent)."""
    from quala.model import CONFIG_KEY

    return int((getattr(config, CONFIG_KEY, None) or {}).get("reference_length", 384))
