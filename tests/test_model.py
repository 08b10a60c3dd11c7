"""Drop-and-Restore model: equivalence with Hugging Face, restore semantics, padding, validation, round trip."""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import tiny_hf_qa

from quala.config import LengthAdaptiveConfig
from quala.errors import QualaError
from quala.graph_ops import reshape
from quala.lengths import parse_length_config
from quala.model import LengthAdaptiveQA, keep_counts


def padded_batch(vocab: int, lengths: list[int], pad_id: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), L), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    ids[mask == 0] = pad_id
    types = (torch.arange(L)[None, :] >= 4).long().expand_as(ids) * mask
    return ids, mask, types


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_full_length_matches_huggingface(family):
    hf = tiny_hf_qa(family, layers=3)
    model = LengthAdaptiveQA(hf).eval()
    ids, mask, types = padded_batch(hf.config.vocab_size, [17, 9, 13, 3], hf.config.pad_token_id)
    types = types if family == "bert" else None
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        for length_config in (None, [384, 384, 384]):  # explicit full length keeps every real token
            out = model(ids, mask, types, length_config=length_config)
            real = mask.bool()
            assert torch.allclose(out.start_logits[real], ref.start_logits[real], atol=1e-5)
            assert torch.allclose(out.end_logits[real], ref.end_logits[real], atol=1e-5)


def reference_drop_and_restore(model: LengthAdaptiveQA, ids, types, lengths, ref_len):
    """Independent single-row Drop-and-Restore built from the HF modules (LAT §3.2), for one unpadded row."""
    hf = model.hf
    hf.config._attn_implementation = "eager"  # materialise attention probabilities
    h = model.embeddings(input_ids=ids[None], token_type_ids=None if types is None else types[None])[0]  # (L, D)
    L = h.shape[0]
    state = h.clone()  # (L, D): newest state of every original position
    alive = list(range(L))
    last_layer = [0] * L  # layer after which each position was last updated (0 = embeddings)
    for i, layer in enumerate(model.layers):
        x = state[alive][None]  # (1, n, D)
        att, probs = layer.attention(x, attention_mask=None)  # probs (1, H, n, n)
        keep = max(1, math.ceil(lengths[i] * L / ref_len))
        keep = min(keep, len(alive))
        sig = probs[0].sum(dim=(0, 1))  # (n,) attention received, summed over heads and queries
        order = torch.argsort(sig, descending=True, stable=True)[:keep].tolist()
        kept = [alive[j] for j in order]
        out = layer.feed_forward_chunk(att[:, order])[0]  # FFN on kept tokens only
        for j, pos in enumerate(kept):
            state[pos] = out[j]
            last_layer[pos] = i + 1
        alive = kept
    return state, last_layer


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_drop_and_restore_matches_independent_reference_in_padded_batch(family):
    hf = tiny_hf_qa(family, layers=4, seed=1)
    model = LengthAdaptiveQA(hf, LengthAdaptiveConfig(reference_length=20)).eval()
    lengths = [20, 14, 9, 5]  # configured for reference length 20: drops at every layer
    row_lengths = [20, 15, 11, 7]
    ids, mask, types = padded_batch(hf.config.vocab_size, row_lengths, hf.config.pad_token_id, seed=3)
    types = types if family == "bert" else None
    with torch.no_grad():
        out = model(ids, mask, types, length_config=lengths, output_hidden_states=True)
        for row, n in enumerate(row_lengths):
            state, last = reference_drop_and_restore(
                model, ids[row, :n], None if types is None else types[row, :n], lengths, 20
            )
            # the span head ran on the restored buffer: compare logits and the final restored states
            ref_logits = model.qa_outputs(state)
            assert torch.allclose(out.start_logits[row, :n], ref_logits[:, 0], atol=1e-5)
            assert torch.allclose(out.end_logits[row, :n], ref_logits[:, 1], atol=1e-5)
            final = out.hidden_states[-1][row, :n]
            assert torch.allclose(final, state, atol=1e-5)
            # every position holds the state of the layer where it was last alive
            for pos in range(n):
                layer_state = out.hidden_states[last[pos]][row, pos]
                assert torch.allclose(final[pos], layer_state, atol=1e-5), (row, pos, last[pos])
            assert len(set(last)) > 2, "the config must drop tokens at several layers"
        # alive sets shrink as configured (ratio rule): ceil(n_i * r / 20)
        for i, n_i in enumerate(lengths):
            expected = [max(1, math.ceil(n_i * r / 20)) for r in row_lengths]
            assert out.alive[i].sum(-1).tolist() == expected


def test_padding_is_dropped_first_and_does_not_change_results():
    hf = tiny_hf_qa("bert", layers=3, seed=2)
    model = LengthAdaptiveQA(hf, LengthAdaptiveConfig(length_rule="clip")).eval()
    ids, mask, types = padded_batch(hf.config.vocab_size, [12], 0)
    lengths = [10, 6, 2]
    with torch.no_grad():
        alone = model(ids, mask, types, length_config=lengths, output_hidden_states=True)
        pad = torch.zeros(1, 20, dtype=torch.long)
        padded = model(
            torch.cat([ids, pad], 1),
            torch.cat([mask, pad], 1),
            torch.cat([types, pad], 1),
            length_config=lengths,
            output_hidden_states=True,
        )
    assert torch.allclose(alone.start_logits, padded.start_logits[:, :12], atol=1e-5)
    # clip rule: at most n_i real tokens survive, and no padding position is ever alive
    assert [a.sum().item() for a in padded.alive] == [10, 6, 2]
    assert not any(a[0, 12:].any() for a in padded.alive)


def test_keep_counts_rules():
    real = torch.tensor([384, 192, 10, 1])
    alive = real.clone()
    assert keep_counts(315, real, alive, "ratio", 384).tolist() == [315, 158, 9, 1]
    assert keep_counts(315, real, alive, "clip", 384).tolist() == [315, 192, 10, 1]
    assert keep_counts(1, real, alive, "ratio", 384).tolist() == [1, 1, 1, 1]


def test_graph_reshape_follows_onnx_semantics():
    """quala.graph_ops.reshape, run eagerly, is what ONNX Reshape does with the same constant shape (0 copies the
    input's dimension at that index, -1 is inferred), so the exported graph and PyTorch agree."""
    x = torch.arange(24).reshape(2, 3, 4)
    assert reshape(x, (0, -1, 2, 2)).shape == (2, 3, 2, 2)
    assert torch.equal(reshape(x, (0, 0, -1)), x)
    assert reshape(x, (-1, 4)).shape == (6, 4)
    assert reshape(x.reshape(2, 2, 3, 2), (0, -1, 0)).shape == (2, 4, 3)  # index 2 copies the input's dim 2
    with pytest.raises(ValueError, match="-1"):
        reshape(x, (0, 3, 4))


def test_layer_skip_keeps_previous_length():
    hf = tiny_hf_qa("bert", layers=3)
    model = LengthAdaptiveQA(hf, LengthAdaptiveConfig(reference_length=16)).eval()
    ids, mask, types = padded_batch(hf.config.vocab_size, [16], 0)
    with torch.no_grad():
        out = model(ids, mask, types, length_config=[12, 8, 8], skip_layers=[1], output_hidden_states=True)
    assert [a.sum().item() for a in out.alive] == [12, 12, 8]
    assert torch.equal(out.hidden_states[2], out.hidden_states[1])


@pytest.mark.parametrize(
    "text, message",
    [
        ("1,2", "one token count per layer"),
        ("5,6,4,3", "non-increasing"),
        ("0,0,0,0", r"length_config\[0\] must be >= 1"),
        ("5,4,-1,-1", r"length_config\[2\] must be >= 0"),
        ("500,4,3,2", "exceeds"),
        ("a,b", "comma-separated integers"),
    ],
)
def test_length_config_validation(text, message):
    with pytest.raises(QualaError, match=message):
        parse_length_config(text, 4, 384)


def test_parse_full_and_valid():
    assert parse_length_config("full", 4) is None
    assert parse_length_config(None, 4) is None
    assert parse_length_config("(315, 251, 242, 159)", 4, 384) == [315, 251, 242, 159]


def test_save_and_load_round_trip(tmp_path):
    hf = tiny_hf_qa("bert", layers=2)
    model = LengthAdaptiveQA(hf, LengthAdaptiveConfig(reference_length=256, length_rule="clip"))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # Hugging Face writes 0600
    assert not list(tmp_path.glob("*.bin"))
    loaded = LengthAdaptiveQA.from_pretrained(tmp_path)
    assert loaded.la_config == LengthAdaptiveConfig(reference_length=256, length_rule="clip")
    ids, mask, types = padded_batch(hf.config.vocab_size, [7, 5], 0)
    with torch.no_grad():
        a = model.eval()(ids, mask, types, length_config=[200, 100])
        b = loaded(ids, mask, types, length_config=[200, 100])
    assert torch.equal(a.start_logits, b.start_logits)


def test_plain_encoder_checkpoint_loads_with_fresh_head(tmp_path):
    from conftest import tiny_config
    from transformers import BertModel

    BertModel(tiny_config("bert", layers=2)).save_pretrained(tmp_path)
    model = LengthAdaptiveQA.from_pretrained(tmp_path)
    assert model.num_layers == 2 and model.la_config == LengthAdaptiveConfig()


def test_not_a_model_directory(tmp_path):
    with pytest.raises(QualaError, match="no config.json"):
        LengthAdaptiveQA.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(QualaError, match="pickle"):
        LengthAdaptiveQA.from_pretrained(tmp_path)
