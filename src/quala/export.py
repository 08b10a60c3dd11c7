"""ONNX export of a length-adaptive QA model: one graph for every length configuration, plus a fused one.

``model.onnx`` (the *length-adaptive graph*) takes the per-layer token counts as an int64 graph input
``length_config`` of shape ``(N,)`` that feeds TopK (Drop-and-Restore, LAT §3.2), so a server switches budgets
per request without loading another model; batch and sequence axes are dynamic. This goes beyond the reference
implementations, which export one graph per configuration.

``model_full.onnx`` (optional, the *full-length graph*) is the plain encoder exported from eager attention
with the legacy exporter, then fused by ONNX Runtime's transformer optimizer (Attention, SkipLayerNorm, Gelu).
With learned significance (nothing reads the attention probabilities) every layer of the length-adaptive graph
runs ONNX Runtime's fused ``Attention`` (``QAttention`` once quantized, as in the full-length graph); with
attention significance the layers stay unfused, since significance reads the probabilities. Full-length requests
and depth configurations run on the second graph (measured in docs/inference.md).

The output directory holds the graphs, ``config.json`` (with the length-adaptive settings), the tokenizer, a
copy of ``search.json`` when the source has one, and ``manifest.json`` with ``"backend": "onnxruntime"``, so
:func:`quala.engine.load_predictor` (backend ``auto``) loads it like an fp32 PyTorch directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from quala.errors import QualaError
from quala.model import LengthAdaptiveQA, load_tokenizer
from quala.model_dir import FULL_GRAPH, LA_GRAPH, SEARCH_FILE, ModelDir, store_la_config

OPSET = 17
# bump whenever the exported graphs change: the built-in model's cached int8 builds are keyed by it
# (2: fused Attention with learned significance)
GRAPH_VERSION = 2
FUSED_OPS = ("Attention", "SkipLayerNormalization")  # what the optimizer must produce on the full graph
LA_FUSED_OPS = ("SkipLayerNormalization", "BiasGelu")  # ... and on the length-adaptive graph


@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    directory: Path
    la_graph: Path
    full_graph: Path | None
    fusion: dict[str, int] | None  # fused-operator counts of the full-length graph


def _input_names(model: LengthAdaptiveQA) -> list[str]:
    uses_types = getattr(model.config, "type_vocab_size", 1) > 1
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if uses_types else [])


def _dummy_inputs(model: LengthAdaptiveQA, names: list[str]) -> dict[str, torch.Tensor]:
    """A padded batch of two rows, so tracing sees both dynamic axes and padding."""
    B, L = 2, 24
    ids = torch.randint(5, min(int(model.config.vocab_size), 1000), (B, L))
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 17:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        types = torch.zeros(B, L, dtype=torch.long)
        types[:, 10:] = 1
        out["token_type_ids"] = types
    return out


class _LengthAdaptiveGraph(nn.Module):
    """``LengthAdaptiveQA`` with positional inputs and a tensor ``length_config`` (what the tracer needs)."""

    def __init__(self, model: LengthAdaptiveQA, uses_types: bool):
        super().__init__()
        self.model, self.uses_types = model, uses_types

    def forward(self, input_ids, attention_mask, *rest):
        token_type_ids = rest[0] if self.uses_types else None
        length_config = rest[-1]
        out = self.model(input_ids, attention_mask, token_type_ids, length_config=length_config)
        return out.start_logits, out.end_logits


class _FullGraph(nn.Module):
    """The wrapped Hugging Face QA model at full length (eager attention, so the optimizer can fuse it)."""

    def __init__(self, hf: nn.Module, uses_types: bool):
        super().__init__()
        self.hf, self.uses_types = hf, uses_types

    def forward(self, input_ids, attention_mask, *rest):
        kwargs = {"token_type_ids": rest[0]} if self.uses_types else {}
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return out.start_logits, out.end_logits


def _export(module: nn.Module, args: tuple, names: list[str], path: Path) -> None:
    dynamic = {n: {0: "batch", 1: "sequence"} for n in names if n != "length_config"}
    dynamic.update({"start_logits": {0: "batch", 1: "sequence"}, "end_logits": {0: "batch", 1: "sequence"}})
    with warnings.catch_warnings():
        # TracerWarnings about shape-dependent Python values, which the model handles as tensors when tracing
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names,
            output_names=["start_logits", "end_logits"],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def export_length_adaptive(model: LengthAdaptiveQA, path: str | Path, fuse: bool = False) -> Path:
    """Export the Drop-and-Restore model with ``length_config`` (int64, (N,)) as a graph input.

    ``fuse``: run the transformer optimizer with attention fusion off (see :data:`LA_FUSED_OPS`): every
    residual + LayerNorm becomes ``SkipLayerNormalization`` and every bias + GELU ``BiasGelu`` (attention is
    fused by the export itself where nothing reads its probabilities: learned significance).
    """
    path = Path(path)
    names = _input_names(model)
    dummy = _dummy_inputs(model, names)
    ref = model.la_config.reference_length
    # a dropping configuration while tracing, so every layer's TopK size is a tensor expression
    counts = torch.tensor([max(2, ref - 7 * (i + 1)) for i in range(model.num_layers)], dtype=torch.long)
    module = _LengthAdaptiveGraph(model.eval(), "token_type_ids" in names)
    with torch.no_grad():
        _export(module, (*dummy.values(), counts), [*names, "length_config"], path)
    if fuse:
        fuse_graph(path, int(model.config.num_attention_heads), int(model.config.hidden_size), attention=False)
    return path


def export_full_length(model: LengthAdaptiveQA, path: str | Path, optimize: bool = True) -> dict[str, int] | None:
    """Export the full-length encoder and fuse it with ONNX Runtime's transformer optimizer.

    Returns the fused-operator counts (``None`` without ``optimize``). Fusion needs eager attention and the
    legacy exporter (docs/inference.md); a lost fusion raises, so it cannot go unnoticed.
    """
    path = Path(path)
    names = _input_names(model)
    dummy = _dummy_inputs(model, names)
    hf = model.hf
    previous = hf.config._attn_implementation
    hf.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            _export(_FullGraph(hf.eval(), "token_type_ids" in names), tuple(dummy.values()), names, path)
    finally:
        hf.set_attn_implementation(previous)
    if not optimize:
        return None
    return fuse_graph(path, int(model.config.num_attention_heads), int(model.config.hidden_size))


def fuse_graph(path: str | Path, num_heads: int, hidden_size: int, attention: bool = True) -> dict[str, int]:
    """Run the transformer optimizer in place on a BERT-style graph; return its fusion counts.

    ``attention=False`` (the length-adaptive graph) leaves attention and the embeddings unfused: the fused
    ``Attention`` has no probabilities output, and ``EmbedLayerNormalization`` would expect the full-length mask.
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_gelu_approximation = False  # keep the exact GELU: no accuracy change
    options.enable_attention = options.enable_embed_layer_norm = attention
    opt = optimizer.optimize_model(
        str(path),
        model_type="bert",
        num_heads=num_heads,
        hidden_size=hidden_size,
        optimization_options=options,
        opt_level=0,
    )
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items()}
    missing = [op for op in (FUSED_OPS if attention else LA_FUSED_OPS) if stats.get(op, 0) == 0]
    if missing:
        raise QualaError(f"ONNX Runtime did not fuse {missing} in {path}; export with eager attention, opset {OPSET}")
    opt.save_model_to_file(str(path))
    return stats


def truncate_graph(path: str | Path, depth: int, num_layers: int) -> bytes:
    """The fused full-length graph cut to its first ``depth`` layers (a depth configuration, see
    :func:`quala.lengths.depth_config`), serialized for an ONNX Runtime session.

    A fused BERT layer ends in two ``SkipLayerNormalization`` nodes (after attention, after the FFN): the span head
    is rewired from the last layer's output to layer ``depth``'s, and nodes no graph output needs are removed, so
    the cut graph costs what a ``depth``-layer model would.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    norms = [n for n in graph.node if n.op_type == "SkipLayerNormalization"]  # in layer order (topological)
    if len(norms) != 2 * num_layers:
        raise QualaError(
            f"{path} has {len(norms)} SkipLayerNormalization nodes, not 2 per layer ({num_layers} layers): "
            "depth configurations need the fused full-length graph of quala export"
        )
    last, cut = norms[-1].output[0], norms[2 * depth - 1].output[0]
    for node in graph.node:  # the span head (and its quantization) reads the cut layer instead
        for j, name in enumerate(node.input):
            if name == last:
                node.input[j] = cut
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):  # nodes are topologically sorted: walk back from the outputs
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    return model.SerializeToString()


def copy_model_files(source: ModelDir, output: Path, model: LengthAdaptiveQA) -> None:
    """config.json (with the length-adaptive settings), tokenizer files and search.json next to the graphs."""
    store_la_config(model.config, model.la_config)
    model.config.save_pretrained(output)
    load_tokenizer(source).save_pretrained(output)
    search = source.file(SEARCH_FILE)
    if search is not None:
        shutil.copyfile(search, output / SEARCH_FILE)


def export_model(
    source: str | Path | ModelDir, output: str | Path, full_graph: bool = True, length_rule: str | None = None
) -> ExportResult:
    """Export ``source`` (a model directory or ``packaged:minilm``) to an ONNX Runtime model directory.

    ``length_rule`` overrides the model's rule (the graph computes kept counts with it; see
    :class:`~quala.config.LengthAdaptiveConfig`), e.g. ``"clip"`` for the papers' protocol.
    """
    from quala.model_dir import write_manifest

    output = Path(output)
    source = ModelDir.resolve(source)
    model = LengthAdaptiveQA.from_pretrained(source)
    if length_rule is not None:
        model.la_config = dataclasses.replace(model.la_config, length_rule=length_rule)
    with staging_dir(output) as tmp:
        export_length_adaptive(model, tmp / LA_GRAPH)
        fusion = export_full_length(model, tmp / FULL_GRAPH) if full_graph else None
        copy_model_files(source, tmp, model)
        write_manifest(
            tmp,
            "export",
            backend="onnxruntime",
            source=source.name,
            dtype="fp32",
            graphs={"length_adaptive": LA_GRAPH, "full_length": FULL_GRAPH if full_graph else None},
            graph_version=GRAPH_VERSION,
            fusion=fusion,
        )
    return ExportResult(output, output / LA_GRAPH, output / FULL_GRAPH if full_graph else None, fusion)


@contextlib.contextmanager
def staging_dir(output: Path) -> Iterator[Path]:
    """Build a model directory in a temporary sibling and move it onto ``output`` only when complete."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise QualaError(f"output {output} already exists and is not an empty directory; choose a new one")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        if output.exists():
            output.rmdir()
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
