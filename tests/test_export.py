"""ONNX export: the length-adaptive graph matches PyTorch at any configuration; the full one is fused."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import tiny_hf_qa

from quala.config import LengthAdaptiveConfig
from quala.export import FUSED_OPS, export_full_length, export_length_adaptive, export_model
from quala.model import LengthAdaptiveQA

DROPPED = [300, 250, 120, 40]


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _batch(family: str, lengths: list[int], vocab: int, seed: int = 1) -> dict[str, np.ndarray]:
    """A right-padded batch whose rows have the given real lengths."""
    rng = np.random.default_rng(seed)
    L = max(lengths)
    ids = rng.integers(5, vocab, size=(len(lengths), L)).astype(np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        ids[row, n:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if family == "bert":
        types = np.zeros_like(ids)
        types[:, L // 3 :] = 1
        batch["token_type_ids"] = types * mask
    return batch


def _torch_logits(model, batch, length_config):
    with torch.no_grad():
        out = model(
            torch.from_numpy(batch["input_ids"]),
            torch.from_numpy(batch["attention_mask"]),
            torch.from_numpy(batch["token_type_ids"]) if "token_type_ids" in batch else None,
            length_config=length_config,
        )
    return out.start_logits.numpy(), out.end_logits.numpy()


@pytest.fixture(scope="module", params=["bert", "roberta", "bert-learned", "roberta-learned", "bert-question"])
def exported(request, tmp_path_factory):
    """The one length-adaptive graph of a tiny model, with the optional SkipLayerNorm/BiasGelu fusion;
    ``-learned``: significance from the learned scorer (fused ``Attention``, no SkipLayerNorm: as the engine serves
    it); ``-question``:
    the question scorer, its U made non-zero so that the question changes which tokens are kept."""
    family, _, significance = request.param.partition("-")
    question = significance == "question"
    la_config = LengthAdaptiveConfig(
        significance="learned" if question else significance or "attention", scorer_question=question
    )
    model = LengthAdaptiveQA(tiny_hf_qa(family, vocab_size=1000), la_config).eval()
    if question:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(7)
            model.scorer.question.normal_(0.0, 0.5)
    path = tmp_path_factory.mktemp(f"onnx-{request.param}") / "model.onnx"
    path = export_length_adaptive(model, path, fuse=not significance)
    return family, model, _session(path)


@pytest.mark.parametrize("length_config", [None, DROPPED])
def test_length_adaptive_graph_matches_pytorch(exported, length_config):
    family, model, session = exported
    batch = _batch(family, [57, 80, 33], vocab=1000)  # longer than the traced input, with padding
    counts = length_config or [model.la_config.reference_length] * model.num_layers
    start, end = session.run(None, {**batch, "length_config": np.asarray(counts, dtype=np.int64)})
    ref_start, ref_end = _torch_logits(model, batch, length_config)
    mask = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(start[mask], ref_start[mask], atol=1e-4)
    np.testing.assert_allclose(end[mask], ref_end[mask], atol=1e-4)


def test_length_adaptive_graph_moves_whole_rows(tmp_path):
    """Drop-and-Restore exports as row Gather/ScatterND, not element-wise ops over (B, k, D) index tensors
    (those dominated the int8 graph's overhead; docs/inference.md section 1)."""
    model = LengthAdaptiveQA(tiny_hf_qa("bert", vocab_size=1000)).eval()
    path = export_length_adaptive(model, tmp_path / "model.onnx")
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("TopK") == ops.count("ScatterND") == model.num_layers
    assert "ScatterElements" not in ops
    assert ops.count("ReduceSum") <= 1  # the real-length count only; significance is a MatMul


def _loaded_ops(path, tmp_path) -> list[str]:
    """Operator types of the graph as ONNX Runtime runs it: after its load-time optimizations, in the session the
    engine opens on a length-adaptive graph (quala.engine.la_session)."""
    from quala.engine import la_session

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}.loaded.onnx")
    la_session(path, options)
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


SHAPE_OPS = ("Shape", "Concat", "ConstantOfShape", "Expand")


@pytest.mark.parametrize("significance", ["attention", "learned"])
def test_length_adaptive_graph_has_no_per_layer_shape_arithmetic(tmp_path, significance):
    """Issue 18: the legacy exporter turned every view(B, n, H, dh), zeros(B, 1, 1, n) and flat-row index of the
    forward into Shape/Gather/Unsqueeze/Concat arithmetic on the dynamic axes, ~110-120 nodes a layer after ONNX
    Runtime's own optimizations (tiny BERT: 106 with learned significance, 122 with attention significance; 21 of
    them Shape/Concat/ConstantOfShape), a fixed cost per request that tokens dropped do not reduce. With
    quala.graph_ops's constant-shape Reshape and flat-row Gather/ScatterND a layer is ~50-55 nodes (attention,
    LayerNorms, FFN, scorer or attention-received GEMV, TopK and the row bookkeeping) and the shape lookups happen
    once per graph, not per layer."""
    counts = {}
    for layers in (2, 4):
        model = LengthAdaptiveQA(
            tiny_hf_qa("bert", layers=layers, vocab_size=1000), LengthAdaptiveConfig(significance=significance)
        ).eval()
        path = export_length_adaptive(model, tmp_path / f"{significance}-{layers}.onnx")
        ops = _loaded_ops(path, tmp_path)
        counts[layers] = (len(ops), sum(ops.count(op) for op in SHAPE_OPS))
        assert ops.count("TopK") == ops.count("ScatterND") == layers
    per_layer = (counts[4][0] - counts[2][0]) / 2
    assert per_layer <= 60, counts  # 106-122 before issue 18
    assert counts[4][1] == counts[2][1] <= 4, counts  # shape lookups: once per graph


def test_length_adaptive_session_keeps_layernorm_unfused(tiny_model_dir, tmp_path):
    """The engine's session leaves residual + LayerNorm unfused in the int8 length-adaptive graph: ONNX Runtime
    fuses them into SkipLayerNormalization once the graph's shapes are static enough to check, which changes int8
    answers (dynamic quantization rounds the slightly different sums differently; -0.9 F1 on 300 validation
    questions at 384,384,384,130,82,24 for the squad-mini LengthDrop model) and was not faster (docs/inference.md)."""
    from quala.quantize import quantize

    quantize(tiny_model_dir, None, tmp_path / "int8")
    path = tmp_path / "int8" / "model.onnx"
    ops = _loaded_ops(path, tmp_path)
    assert "SkipLayerNormalization" not in ops and ops.count("LayerNormalization") == 1 + 2 * 4
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert "SkipLayerNormalization" in [n.op_type for n in onnx.load(str(tmp_path / "fused.onnx")).graph.node]


def test_length_adaptive_graph_is_fused_except_attention(tmp_path):
    """Residual + LayerNorm and bias + GELU are fused in every layer; attention is not (significance reads its
    probabilities), so each layer keeps its Softmax."""
    model = LengthAdaptiveQA(tiny_hf_qa("bert", vocab_size=1000)).eval()
    ops = [n.op_type for n in onnx.load(str(export_length_adaptive(model, tmp_path / "m.onnx", fuse=True))).graph.node]
    assert ops.count("SkipLayerNormalization") == 2 * model.num_layers
    assert ops.count("BiasGelu") == model.num_layers
    assert ops.count("Softmax") == model.num_layers and "Attention" not in ops
    plain = [
        n.op_type for n in onnx.load(str(export_length_adaptive(model, tmp_path / "p.onnx", fuse=False))).graph.node
    ]
    assert "SkipLayerNormalization" not in plain  # the control: the fusion comes from the optimizer


@pytest.mark.parametrize("significance", ["attention", "learned"])
def test_attention_is_fused_unless_significance_reads_it(tmp_path, significance):
    """Issue 18: with learned significance nothing reads the attention probabilities, so each layer's attention is
    one ``com.microsoft.Attention`` node, which dynamic quantization turns into the fused ``QAttention`` of the
    full-length graph; attention significance needs the probabilities (control: unfused, one Softmax a layer). The
    fused graph's logits are checked against PyTorch by the ``exported`` tests."""
    from quala.quantize import quantize_graph

    model = LengthAdaptiveQA(tiny_hf_qa("bert", vocab_size=1000), LengthAdaptiveConfig(significance=significance))
    path = export_length_adaptive(model.eval(), tmp_path / "model.onnx")
    quantize_graph(path, tmp_path / "int8.onnx", "dynamic", [])
    ops, int8 = ([n.op_type for n in onnx.load(str(p)).graph.node] for p in (path, tmp_path / "int8.onnx"))
    fused = significance == "learned"
    assert ops.count("Attention") == (model.num_layers if fused else 0)
    assert ops.count("Softmax") == (0 if fused else model.num_layers)
    assert int8.count("QAttention") == (model.num_layers if fused else 0)


def test_one_session_runs_two_length_configs(exported):
    family, model, session = exported
    batch = _batch(family, [64, 64], vocab=1000, seed=3)
    outputs = []
    for counts in ([384, 384, 384, 384], DROPPED, [100, 100, 50, 20]):
        start, _ = session.run(None, {**batch, "length_config": np.asarray(counts, dtype=np.int64)})
        ref, _ = _torch_logits(model, batch, counts)
        np.testing.assert_allclose(start, ref, atol=1e-4)
        outputs.append(start)
    # the configurations really change the computation (dropped tokens reach the head with older states)
    assert not np.allclose(outputs[0], outputs[2], atol=1e-3)


def test_padded_batch_matches_rows(exported):
    family, model, session = exported
    lengths = [70, 41, 12]
    batch = _batch(family, lengths, vocab=1000, seed=5)
    counts = np.asarray(DROPPED, dtype=np.int64)
    start, _ = session.run(None, {**batch, "length_config": counts})
    for row, n in enumerate(lengths):
        single = {k: v[row : row + 1, :n] for k, v in batch.items()}
        alone, _ = session.run(None, {**single, "length_config": counts})
        np.testing.assert_allclose(start[row, :n], alone[0], atol=1e-4)


def test_full_graph_is_fused_and_matches(tmp_path):
    model = LengthAdaptiveQA(tiny_hf_qa("bert", vocab_size=1000)).eval()
    before = model.hf.config._attn_implementation
    fusion = export_full_length(model, tmp_path / "full.onnx")
    assert fusion["Attention"] == model.num_layers
    assert all(fusion[op] > 0 for op in FUSED_OPS)
    graph_ops = {n.op_type for n in onnx.load(str(tmp_path / "full.onnx")).graph.node}
    assert "Attention" in graph_ops and "Softmax" not in graph_ops
    batch = _batch("bert", [90, 40], vocab=1000)
    start, end = _session(tmp_path / "full.onnx").run(None, batch)
    ref_start, ref_end = _torch_logits(model, batch, None)
    mask = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(start[mask], ref_start[mask], atol=1e-4)
    np.testing.assert_allclose(end[mask], ref_end[mask], atol=1e-4)
    assert model.hf.config._attn_implementation == before  # export restores the caller's setting


def test_export_model_directory(tiny_model_dir, tmp_path):
    from quala.model_dir import read_manifest

    out = tmp_path / "onnx"
    result = export_model(tiny_model_dir, out)
    assert {"model.onnx", "model_full.onnx", "config.json", "tokenizer.json", "manifest.json"} <= {
        p.name for p in out.iterdir()
    }
    assert read_manifest(out)["backend"] == "onnxruntime"
    assert result.fusion["Attention"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_export_refuses_non_empty_output(tiny_model_dir, tmp_path):
    from quala.errors import QualaError

    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(QualaError, match="not an empty directory"):
        export_model(tiny_model_dir, tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_int8_graph_packs_qkv_without_changing_logits(tiny_model_dir, tmp_path, monkeypatch):
    """Issue 18: the export computes each layer's Q, K and V as one (D, 3D) product. Under per-channel dynamic
    int8 every output column keeps the scale it had as a separate product and the input is quantized once either
    way, so the int8 logits are bit-identical to the unpacked export's (control arm: packing switched off)."""
    import quala.model
    from quala.engine import OnnxPredictor
    from quala.quantize import quantize

    quantize(tiny_model_dir, None, tmp_path / "packed")
    monkeypatch.setattr(quala.model, "exporting", lambda: False)  # the forward's only use outside tracing checks
    quantize(tiny_model_dir, None, tmp_path / "separate")
    monkeypatch.undo()

    def packed_weights(directory):
        graph = onnx.load(str(directory / "model.onnx")).graph
        return sum(list(w.dims) == [32, 96] and w.data_type == onnx.TensorProto.INT8 for w in graph.initializer)

    assert packed_weights(tmp_path / "packed") == 4 and packed_weights(tmp_path / "separate") == 0
    packed, separate = (OnnxPredictor.from_pretrained(tmp_path / d, threads=1) for d in ("packed", "separate"))
    batch = {k: v for k, v in _batch("bert", [70, 41, 12], vocab=1000, seed=7).items() if k != "length_config"}
    for counts in ([384] * 4, DROPPED):
        a, b = packed.logits(batch, counts), separate.logits(batch, counts)
        assert np.array_equal(a.start, b.start) and np.array_equal(a.end, b.end)
        assert not np.array_equal(a.start, np.zeros_like(a.start))
