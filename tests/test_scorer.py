"""Learned token significance: the target, the loss, the model's use of the scorer, saving, and training it."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config, tiny_hf_qa
from safetensors.torch import load_file
from test_model import padded_batch
from test_train import _trainer

from quala.config import LengthAdaptiveConfig, from_dict
from quala.errors import QualaError
from quala.model import LengthAdaptiveQA, TokenScorer
from quala.objectives import TokenScorerLoss, answer_relevance
from quala.train_config import TrainConfig


def test_answer_relevance_by_hand():
    """One row of 5 tokens: start peaks at 2, end at 3 (logit 0 vs -inf elsewhere means probability 1)."""
    neg = -1e9
    start = torch.tensor([[neg, neg, 0.0, neg, neg]])
    end = torch.tensor([[neg, neg, neg, 0.0, neg]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    plain = answer_relevance(start, end, mask, None, window=1, question_weight=0.0)
    assert torch.allclose(plain, torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.0]]))
    # window 3: the max-filter spreads each 0.5 one token left and right -> [0, .5, .5, .5, (.5 padding)] /1.5
    wide = answer_relevance(start, end, mask, None, window=3, question_weight=0.0)
    assert torch.allclose(wide, torch.tensor([[0.0, 1 / 3, 1 / 3, 1 / 3, 0.0]]))
    # question segment = tokens 0..1 (type 0); 0.2 of the mass spread evenly over them
    types = torch.tensor([[0, 0, 1, 1, 1]])
    mixed = answer_relevance(start, end, mask, types, window=1, question_weight=0.2)
    assert torch.allclose(mixed, torch.tensor([[0.1, 0.1, 0.4, 0.4, 0.0]]))


def test_scorer_loss_by_hand():
    """Two layers: soft cross-entropy over alive slots, target renormalised to them, then the mean."""
    target = torch.tensor([[0.5, 0.25, 0.25]])
    s1 = torch.tensor([[0.0, 0.0, 0.0]])  # all alive, uniform: -sum t log(1/3) = log 3
    s2 = torch.tensor([[2.0, 0.0]])  # slots hold positions 2 and 0; only the first is alive -> loss 0
    pos = (torch.tensor([[0, 1, 2]]), torch.tensor([[2, 0]]))
    masks = (torch.tensor([[True, True, True]]), torch.tensor([[True, False]]))
    out = TokenScorerLoss()((s1, s2), pos, masks, target)
    assert out.per_layer == pytest.approx([math.log(3), 0.0], abs=1e-6)
    assert out.loss.item() == pytest.approx(math.log(3) / 2, abs=1e-6)


def test_learned_significance_keeps_the_tokens_the_scorer_ranks_highest():
    """A scorer that scores every token by its original position (later = better) must keep the last tokens,
    whatever attention would have chosen; the attention model on the same weights keeps others."""
    hf = tiny_hf_qa("bert", layers=2)
    model = LengthAdaptiveQA(hf, LengthAdaptiveConfig(length_rule="clip", significance="learned")).eval()
    ids, mask, types = padded_batch(hf.config.vocab_size, [12, 9], 0)
    model.embeddings.position_embeddings.weight.data.zero_()
    model.embeddings.token_type_embeddings.weight.data.zero_()

    def by_position(h: torch.Tensor, layer: int, question=None) -> torch.Tensor:  # (B, n): original position
        return current_positions[0].float()

    current_positions = [None]
    real_forward = model.scorer.forward
    with torch.no_grad():
        # the first layer sees tokens in original order; layer 1 keeps the 5 highest positions of each row
        current_positions[0] = torch.arange(12).expand(2, 12)
        model.scorer.forward = by_position
        out = model(ids, mask, types, length_config=[5, 5], output_hidden_states=True)
    model.scorer.forward = real_forward
    kept = out.alive[0]  # (B, L) positions through layer 0's FFN
    assert kept[0].nonzero().flatten().tolist() == [7, 8, 9, 10, 11]
    assert kept[1].nonzero().flatten().tolist() == [4, 5, 6, 7, 8]  # row 1 has 9 real tokens: padding never wins
    attention = LengthAdaptiveQA(hf, LengthAdaptiveConfig(length_rule="clip")).eval()
    with torch.no_grad():
        other = attention(ids, mask, types, length_config=[5, 5], output_hidden_states=True)
    assert not torch.equal(other.alive[0], kept)


def test_learned_model_round_trip_and_missing_scorer(tmp_path):
    hf = tiny_hf_qa("bert", layers=2)
    model = LengthAdaptiveQA(hf, LengthAdaptiveConfig(significance="learned")).eval()
    model.save_pretrained(tmp_path / "m")
    stored = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert stored[TokenScorer.PREFIX + "weight"].shape == (2, hf.config.hidden_size)
    loaded = LengthAdaptiveQA.from_pretrained(tmp_path / "m").eval()
    assert loaded.la_config.significance == "learned"
    assert torch.equal(loaded.scorer.weight, model.scorer.weight)
    ids, mask, types = padded_batch(hf.config.vocab_size, [30, 21], 0)
    with torch.no_grad():
        a = model(ids, mask, types, length_config=[200, 100])
        b = loaded(ids, mask, types, length_config=[200, 100])
    assert torch.equal(a.start_logits, b.start_logits)
    # a config that promises a learned scorer, on weights without one, is refused
    LengthAdaptiveQA(tiny_hf_qa("bert", layers=2)).save_pretrained(tmp_path / "plain")
    config_file = tmp_path / "plain" / "config.json"
    config_file.write_text(config_file.read_text().replace('"attention"', '"learned"'))
    with pytest.raises(QualaError, match="no quala_scorer weights"):
        LengthAdaptiveQA.from_pretrained(tmp_path / "plain")


def test_output_token_scores_needs_a_learned_model():
    model = LengthAdaptiveQA(tiny_hf_qa("bert", layers=2)).eval()
    ids, mask, types = padded_batch(model.config.vocab_size, [8], 0)
    with pytest.raises(QualaError, match="significance 'learned'"):
        model(ids, mask, types, output_token_scores=True)


def test_training_only_the_scorer_leaves_the_encoder_bit_identical(tmp_path, minilm_path):
    """trainable 'scorer' on a converted attention model: every encoder and span-head tensor is unchanged,
    the scorer moved away from its initialisation, and the saved model says 'learned'."""
    from transformers import AutoTokenizer, BertForQuestionAnswering

    torch.manual_seed(0)
    src = tmp_path / "src"
    LengthAdaptiveQA(BertForQuestionAnswering(tiny_config("bert", layers=2))).save_pretrained(src)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(src)
    trainer = _trainer(
        src, tmp_path / "out", max_train_examples=24, max_steps=4, lr=1e-2, significance="learned", trainable="scorer"
    )
    initial = trainer.model.scorer.weight.detach().clone()
    trainer.train()
    before = load_file(str(src / "model.safetensors"))
    after = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(after) == set(before) | {TokenScorer.PREFIX + "weight", TokenScorer.PREFIX + "bias"}
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
    assert not torch.equal(after[TokenScorer.PREFIX + "weight"], initial)
    assert LengthAdaptiveQA.from_pretrained(tmp_path / "out").la_config.significance == "learned"


def test_trainable_scorer_needs_learned_significance(tmp_path, tiny_model_dir):
    with pytest.raises(QualaError, match="needs significance 'learned'"):
        _trainer(tiny_model_dir, tmp_path / "o", trainable="scorer")
    with pytest.raises(QualaError, match="trainable must be"):
        from_dict(TrainConfig, {"trainable": "head"})


def test_scorer_has_its_own_learning_rate_and_lengthdrop_trains_it(tmp_path, tiny_model_dir):
    """scorer.lr puts exactly the scorer's parameters in a group of their own; a LengthDrop step with learned
    significance moves both the scorer and the encoder."""
    trainer = _trainer(
        tiny_model_dir,
        tmp_path / "o",
        max_train_examples=16,
        max_steps=2,
        significance="learned",
        scorer={"lr": 5e-2},
        length_drop={"enabled": True, "num_sandwich": 1},
    )
    model = trainer.model
    scorer_group = [g for g in trainer.optimizer.param_groups if any(p is model.scorer.weight for p in g["params"])]
    assert len(scorer_group) == 1 and len(scorer_group[0]["params"]) == 2
    assert scorer_group[0]["initial_lr"] == pytest.approx(5e-2)
    others = [g for g in trainer.optimizer.param_groups if g is not scorer_group[0]]
    assert all(g["initial_lr"] == pytest.approx(1e-3) for g in others)
    scorer0 = model.scorer.weight.detach().clone()
    ffn0 = model.layers[0].intermediate.dense.weight.detach().clone()
    trainer.train()
    assert not torch.equal(model.scorer.weight, scorer0)
    assert not torch.equal(model.layers[0].intermediate.dense.weight, ffn0)


def test_question_scorer_by_hand():
    """s = h·(w + U q̄) + b with q̄ the mean of the question tokens' states, on numbers small enough to check."""
    scorer = TokenScorer(num_layers=1, hidden_size=2, question=True)
    with torch.no_grad():
        scorer.weight.copy_(torch.tensor([[1.0, 0.0]]))
        scorer.bias.fill_(0.5)
        scorer.question.copy_(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))  # U swaps the two coordinates
    h = torch.tensor([[[2.0, 0.0], [0.0, 4.0], [1.0, 1.0], [3.0, -1.0]]])  # (1, 4, 2)
    question = torch.tensor([[True, True, False, False]])  # q̄ = (1, 2) -> U q̄ = (2, 1) -> w + U q̄ = (3, 1)
    expected = [2 * 3 + 0.5, 4 * 1 + 0.5, 3 + 1 + 0.5, 9 - 1 + 0.5]
    assert scorer(h, 0, question)[0].tolist() == pytest.approx(expected)
    # the linear part alone (U = 0) is the linear scorer on the same weights
    scorer.question.data.zero_()
    linear = TokenScorer(1, 2)
    linear.load_state_dict(scorer.state_dict(), strict=False)
    assert torch.equal(scorer(h, 0, question), linear(h, 0))


def test_question_scorer_conversion_selection_and_round_trip(tmp_path):
    """A question scorer converted from a linear one keeps its weights and, with U = 0, keeps the same tokens;
    a non-zero U changes the kept tokens; saving and loading keeps U."""
    hf = tiny_hf_qa("bert", layers=2)
    linear = LengthAdaptiveQA(hf, LengthAdaptiveConfig(significance="learned")).eval()
    weight = linear.scorer.weight.detach().clone()
    model = linear.with_significance("learned", scorer_question=True).eval()
    assert model.la_config.scorer_question and torch.equal(model.scorer.weight, weight)
    assert torch.count_nonzero(model.scorer.question) == 0
    ids, mask, types = padded_batch(hf.config.vocab_size, [40, 33], 0)
    types[:, :8], types[:, 8:] = 0, 1  # an 8-token question segment
    with torch.no_grad():
        plain = model(ids, mask, types, length_config=[20, 10], output_hidden_states=True).alive
        reference = linear(ids, mask, types, length_config=[20, 10], output_hidden_states=True).alive
        torch.manual_seed(3)
        model.scorer.question.normal_(0.0, 1.0)
        conditioned = model(ids, mask, types, length_config=[20, 10], output_hidden_states=True).alive
    assert all(torch.equal(a, b) for a, b in zip(plain, reference, strict=True)), "U = 0 ranks as the linear scorer"
    assert not torch.equal(conditioned[0], plain[0]), "a non-zero U changes which tokens are kept"
    model.save_pretrained(tmp_path / "q")
    loaded = LengthAdaptiveQA.from_pretrained(tmp_path / "q")
    assert loaded.la_config.scorer_question and torch.equal(loaded.scorer.question, model.scorer.question)
    with pytest.raises(QualaError, match="needs token_type_ids"):
        loaded(ids, mask, None, length_config=[20, 10])
    # a stored question matrix of another size is refused with the tensor's name, not a torch copy error
    from safetensors.torch import save_file

    stored = load_file(str(tmp_path / "q" / "model.safetensors"))
    stored[TokenScorer.PREFIX + "question"] = torch.zeros(2, 8, 8)
    save_file(stored, str(tmp_path / "q" / "model.safetensors"))
    with pytest.raises(QualaError, match=r"quala_scorer.question has shape \(2, 8, 8\), expected \(2, 32, 32\)"):
        LengthAdaptiveQA.from_pretrained(tmp_path / "q")
    with pytest.raises(QualaError, match="needs significance 'learned'"):
        LengthAdaptiveConfig(scorer_question=True)


def test_question_layers_train_only_the_first_layers_question_weights(tmp_path, minilm_path):
    """scorer.question_layers K: a linear scorer converted to a question scorer trains U in layers < K only; the
    later layers' U stays exactly zero (they rank as linear scorers) while their w still trains."""
    from transformers import AutoTokenizer, BertForQuestionAnswering

    torch.manual_seed(0)
    src = tmp_path / "src"
    hf = BertForQuestionAnswering(tiny_config("bert", layers=3))
    LengthAdaptiveQA(hf, LengthAdaptiveConfig(significance="learned")).save_pretrained(src)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(src)
    saved = {}
    for k in (1, None):  # None: the control arm, every layer's U trains
        out = tmp_path / f"out-{k}"
        trainer = _trainer(
            src,
            out,
            max_train_examples=24,
            max_steps=3,
            lr=1e-2,
            trainable="scorer",
            scorer={"question": True, "question_layers": k},
        )
        w0 = trainer.model.scorer.weight.detach().clone()
        trainer.train()
        saved[k] = load_file(str(out / "model.safetensors"))
        assert all(not torch.equal(saved[k][TokenScorer.PREFIX + "weight"][i], w0[i]) for i in range(3))
        assert LengthAdaptiveQA.from_pretrained(out).la_config.scorer_question
    u, control = saved[1][TokenScorer.PREFIX + "question"], saved[None][TokenScorer.PREFIX + "question"]
    assert torch.count_nonzero(u[0]) > 0 and torch.count_nonzero(u[1:]) == 0
    assert all(torch.count_nonzero(control[i]) > 0 for i in range(3))
    with pytest.raises(QualaError, match="question_layers must be >= 0"):
        from_dict(TrainConfig, {"scorer": {"question_layers": -1}})
