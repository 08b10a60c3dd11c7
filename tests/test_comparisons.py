"""Honest comparisons (issue 16): length rules on padded batches, depth configurations, the panel verdict."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from conftest import tiny_hf_qa

from quala.benchmark import PAPER_CONFIG
from quala.benchmark_report import verdict
from quala.config import LengthAdaptiveConfig
from quala.errors import QualaError
from quala.io import cpu_isa_flags
from quala.lengths import depth_config, parse_length_config
from quala.macs import count_macs
from quala.model import LengthAdaptiveQA


def padded_batch(real_lengths: list[int], length: int = 384, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (len(real_lengths), length), generator=g)
    mask = torch.zeros(len(real_lengths), length, dtype=torch.long)
    for row, r in enumerate(real_lengths):
        mask[row, :r] = 1
    ids = ids * mask  # padding id 0
    types = (torch.arange(length) >= 12).long().expand(len(real_lengths), length) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


# Tokens through each layer's FFN for (315,251,242,159,142,33) on rows with 384, 200, 100 and 20 real tokens, all
# padded to 384 (docs/inference.md). clip: min(n_i, r). ratio: ceil(n_i * r / 384), never more than the layer before.
KEPT = {
    "clip": [
        [315, 251, 242, 159, 142, 33],
        [200, 200, 200, 159, 142, 33],
        [100, 100, 100, 100, 100, 33],
        [20, 20, 20, 20, 20, 20],
    ],
    "ratio": [
        [315, 251, 242, 159, 142, 33],
        [165, 131, 127, 83, 74, 18],  # e.g. layer 1: 315 * 200 / 384 = 164.06 -> 165
        [83, 66, 64, 42, 37, 9],
        [17, 14, 13, 9, 8, 2],  # layer 6: 33 * 20 / 384 = 1.72 -> 2
    ],
}


@pytest.mark.parametrize("rule", ["clip", "ratio"])
def test_length_rules_keep_documented_token_counts_on_a_padded_batch(rule):
    model = LengthAdaptiveQA(tiny_hf_qa("bert", layers=6), LengthAdaptiveConfig(384, rule))
    batch = padded_batch([384, 200, 100, 20])
    with torch.no_grad():
        out = model(**batch, length_config=list(PAPER_CONFIG), output_hidden_states=True)
    kept = torch.stack([a.sum(-1) for a in out.alive], dim=1)  # (B, layers)
    assert kept.tolist() == KEPT[rule]
    assert not any(a[1, 200:].any() or a[3, 20:].any() for a in out.alive)  # padding is never kept


def truncated(hf: torch.nn.Module, k: int) -> torch.nn.Module:
    """A plain Hugging Face QA model with only its first ``k`` layers (the independent reference)."""
    ref = copy.deepcopy(hf)
    ref.bert.encoder.layer = ref.bert.encoder.layer[:k]
    ref.config.num_hidden_layers = k
    return ref


@pytest.mark.parametrize("k", [1, 2, 3])
def test_depth_config_matches_hf_model_truncated_to_k_layers(k):
    hf = tiny_hf_qa("bert", layers=4, seed=3)
    batch = padded_batch([40, 27], length=40)
    lengths = depth_config(k, 4, 384)
    assert lengths == [384] * k + [0] * (4 - k)
    with torch.no_grad():
        ours = LengthAdaptiveQA(hf)(**batch, length_config=lengths)
        ref = truncated(hf, k)(**batch)
        full = hf(**batch)
    torch.testing.assert_close(ours.start_logits, ref.start_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.end_logits, ref.end_logits, rtol=0, atol=1e-5)
    assert (ours.start_logits - full.start_logits).abs().max() > 1e-3  # control: the cut changes the logits
    # analytic cost: exactly a k-layer model's
    assert count_macs(hf.config, 384, lengths).total == count_macs(truncated(hf, k).config, 384).total


def test_depth_config_is_a_length_config():
    assert parse_length_config("384,384,0,0", 4, 384) == [384, 384, 0, 0]
    assert parse_length_config("300,200,0,0", 4, 384) == [300, 200, 0, 0]  # dropping, then skipping (PyTorch)
    with pytest.raises(QualaError, match=r"length_config\[0\] must be >= 1"):
        parse_length_config("0,0,0,0", 4, 384)
    with pytest.raises(QualaError, match="non-increasing"):
        parse_length_config("384,0,384,0", 4, 384)
    with pytest.raises(QualaError, match="depth must be between 1"):
        depth_config(5, 4, 384)


def test_onnx_depth_config_runs_the_cut_fused_graph(tiny_model_dir, tmp_path):
    from quala.engine import OnnxPredictor
    from quala.export import export_model

    export_model(tiny_model_dir, tmp_path / "onnx")
    predictor = OnnxPredictor(tmp_path / "onnx", threads=1)
    hf = LengthAdaptiveQA.from_pretrained(tiny_model_dir).hf
    batch = padded_batch([40, 27], length=40)
    numpy_batch = {k: v.numpy() for k, v in batch.items()}
    for k in (2, 3):
        with torch.no_grad():
            ref = truncated(hf, k)(**batch)
        out = predictor.logits(numpy_batch, depth_config(k, 4, 384))
        np.testing.assert_allclose(out.start, ref.start_logits.numpy(), atol=1e-4)
        np.testing.assert_allclose(out.end, ref.end_logits.numpy(), atol=1e-4)
    with pytest.raises(QualaError, match="depth configuration at full length only"):
        predictor.logits(numpy_batch, [300, 200, 0, 0])


def test_clip_rule_export_computes_clip_counts(tmp_path):
    """A graph exported with ``length_rule="clip"`` matches PyTorch under clip and differs from ratio (control)."""
    from transformers import AutoTokenizer

    from quala.engine import OnnxPredictor
    from quala.export import export_model
    from quala.model_dir import PACKAGED_MINILM, resolve_model_path

    model = LengthAdaptiveQA(tiny_hf_qa("bert", layers=6, seed=1))
    model.save_pretrained(tmp_path / "m")
    AutoTokenizer.from_pretrained(resolve_model_path(PACKAGED_MINILM)).save_pretrained(tmp_path / "m")
    export_model(tmp_path / "m", tmp_path / "clip", full_graph=False, length_rule="clip")
    predictor = OnnxPredictor(tmp_path / "clip", threads=1)
    assert predictor.la_config.length_rule == "clip"
    batch = padded_batch([384, 200, 100, 20])
    out = predictor.logits({k: v.numpy() for k, v in batch.items()}, list(PAPER_CONFIG))
    with torch.no_grad():
        clip = dataclasses.replace(model.la_config, length_rule="clip")
        ref = LengthAdaptiveQA(model.hf, clip)(**batch, length_config=list(PAPER_CONFIG))
        ratio = model(**batch, length_config=list(PAPER_CONFIG))
    np.testing.assert_allclose(out.start, ref.start_logits.numpy(), atol=1e-4)
    assert np.abs(out.start[1:] - ratio.start_logits.numpy()[1:]).max() > 1e-3


def row(name: str, kind: str, ms: float, f1: float | None) -> dict:
    return {"name": name, "kind": kind, "latency_ms_median": ms, "f1": f1}


def test_verdict_on_synthetic_rows():
    rows = [
        row("BERT-base", "reference", 300.0, None),
        row("MiniLM fp32 PyTorch eager", "model", 50.0, 86.0),  # beaten by int8 only: not named
        row("MiniLM int8 ONNX Runtime", "model", 25.0, 86.0),  # beats the 30 ms front point
        row("LA", "front", 10.0, 70.0),
        row("LA", "front", 20.0, 80.0),
        row("LA", "front", 30.0, 85.0),
        row("LA (model card config)", "paper-config", 5.0, 90.0),  # not a baseline: ignored
        row("MiniLM int8 ONNX Runtime, first 4 layers", "baseline", 15.0, 60.0),  # beaten by the 10 ms point
        row("MiniLM int8 ONNX Runtime, windows 256/128", "baseline", 40.0, 84.0),  # beaten by the 30 ms point
    ]
    assert verdict(rows) == (
        "front dominates MiniLM int8 ORT, first 4 layers, MiniLM int8 ORT, windows 256/128 between 10.0 and 30.0 ms; "
        "is dominated by MiniLM int8 ORT between 30.0 and 30.0 ms"
    )
    only_lost = [r for r in rows if "first 4" not in r["name"] and "windows" not in r["name"]]
    assert verdict(only_lost) == "front is dominated by MiniLM int8 ORT between 30.0 and 30.0 ms"
    apart = [row("LA", "front", 10.0, 70.0), row("int8", "baseline", 20.0, 90.0)]
    assert verdict(apart) == "front neither dominates nor is dominated by any baseline"
    assert verdict([row("int8", "baseline", 20.0, 90.0)]) == "no scored front points to judge"


def test_cpu_isa_flags():
    info = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile amx_int8\nbogomips\t: 1\n"
    assert cpu_isa_flags(info) == ["avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"]
    assert cpu_isa_flags("") == []
