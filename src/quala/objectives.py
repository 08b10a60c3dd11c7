"""Training objectives for span QA: hard span loss, knowledge distillation and LengthDrop sampling.

Every objective is a small object whose ``__call__`` returns a named dataclass of losses, so the trainer can
log each term. Nothing here touches the optimizer; the trainer owns the loop (``quala.train``).

- :class:`SpanLoss`: start/end cross-entropy on gold token positions (Devlin et al. 2019, §4.2).
- :class:`PredictionKD`: prediction-layer distillation, KL or soft cross-entropy at temperature T on start and
  end logits (Hinton et al. 2015; Dynamic-TinyBERT §3 / TinyBERT §3.1).
- :class:`IntermediateKD`: hidden-state MSE through a learned projection plus attention-probability MSE, with
  student layer i matched to teacher layer i·N_t/N_s (2i for 6 vs 12 layers) (TinyBERT §3.1).
- :class:`LengthDropSampler`: sub-model length configurations and LayerDrop for the sandwich rule
  (LAT §3.1, §3.3; Yu & Huang 2019 for the sandwich rule and in-place distillation).
- :class:`TokenScorerLoss`: trains the learned token significance (``significance: learned``) to rank tokens
  by :func:`answer_relevance`, where the full model puts its answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from quala.errors import QualaError
from quala.lengths import check_smallest, constant_ratio_gene, smallest_config


def _masked(logits: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Padding positions can never be an answer: give them the lowest logit."""
    if attention_mask is None:
        return logits
    return logits.masked_fill(attention_mask == 0, torch.finfo(logits.dtype).min)


# ------------------------------------------------------------------------------------------- span loss
@dataclass
class SpanLossOutput:
    loss: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor


class SpanLoss:
    """Mean of start and end cross-entropy against gold token indices (0 = [CLS] when not in the window)."""

    def __call__(
        self,
        start_logits: torch.Tensor,  # (B, L)
        end_logits: torch.Tensor,  # (B, L)
        start_positions: torch.Tensor,  # (B,)
        end_positions: torch.Tensor,  # (B,)
        attention_mask: torch.Tensor | None = None,  # (B, L)
    ) -> SpanLossOutput:
        start = F.cross_entropy(_masked(start_logits.float(), attention_mask), start_positions)
        end = F.cross_entropy(_masked(end_logits.float(), attention_mask), end_positions)
        return SpanLossOutput(loss=(start + end) / 2, start=start, end=end)


# ------------------------------------------------------------------------------------ prediction KD
@dataclass
class PredictionKDOutput:
    loss: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor


def soft_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, kind: str = "kl") -> torch.Tensor:
    """Batch-mean KL(p_t || p_s) or soft cross-entropy −Σ p_t log p_s at temperature T, scaled by T².

    The T² factor keeps gradient magnitudes comparable across temperatures (Hinton et al. 2015, §2).
    """
    log_p_s = F.log_softmax(student.float() / temperature, dim=-1)  # (B, L)
    p_t = F.softmax(teacher.float() / temperature, dim=-1)  # (B, L)
    if kind == "kl":
        per_row = (p_t * (torch.log(p_t.clamp_min(1e-30)) - log_p_s)).sum(-1)  # (B,)
    elif kind == "soft_ce":
        per_row = -(p_t * log_p_s).sum(-1)
    else:
        raise QualaError(f"unknown distillation loss {kind!r}; choose 'kl' or 'soft_ce'")
    return per_row.mean() * temperature**2


class PredictionKD:
    """Distil start and end distributions: both of them, each at temperature T, averaged."""

    def __init__(self, temperature: float = 1.0, kind: str = "kl"):
        if temperature <= 0:
            raise QualaError(f"distillation temperature must be > 0, got {temperature}")
        if kind not in ("kl", "soft_ce"):
            raise QualaError(f"unknown distillation loss {kind!r}; choose 'kl' or 'soft_ce'")
        self.temperature = temperature
        self.kind = kind

    def __call__(
        self,
        student_start: torch.Tensor,  # (B, L)
        student_end: torch.Tensor,
        teacher_start: torch.Tensor,  # (B, L), detached by the caller or here
        teacher_end: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> PredictionKDOutput:
        T, kind = self.temperature, self.kind
        start = soft_loss(
            _masked(student_start, attention_mask), _masked(teacher_start.detach(), attention_mask), T, kind
        )
        end = soft_loss(_masked(student_end, attention_mask), _masked(teacher_end.detach(), attention_mask), T, kind)
        return PredictionKDOutput(loss=(start + end) / 2, start=start, end=end)


# ------------------------------------------------------------------------------- learned significance
def answer_relevance(
    start_logits: torch.Tensor,  # (B, L) the full model's, detached
    end_logits: torch.Tensor,  # (B, L)
    attention_mask: torch.Tensor,  # (B, L)
    token_type_ids: torch.Tensor | None = None,  # (B, L): 0 for [CLS] question [SEP]
    window: int = 15,
    question_weight: float = 0.2,
) -> torch.Tensor:
    """Which tokens a sub-model should keep, as a distribution over positions (B, L).

    The mean of the full model's start and end distributions, widened by a max-filter of ``window`` tokens (the
    answer's neighbourhood carries the evidence its states are built from) and renormalised; then
    ``question_weight`` of the mass is spread evenly over the question segment, which every later layer attends
    from. Token dropping with this target as an oracle keeps the full model's answers at half the MACs, where
    attention-received significance does not (docs/training.md).
    """
    with torch.no_grad():
        mask = attention_mask.bool()
        p_start = F.softmax(_masked(start_logits.float(), attention_mask), dim=-1)
        p_end = F.softmax(_masked(end_logits.float(), attention_mask), dim=-1)
        target = (p_start + p_end) / 2  # (B, L)
        if window > 1:
            L = target.shape[-1]
            target = F.max_pool1d(target[:, None], window, stride=1, padding=window // 2)[:, 0, :L]
        target = target.masked_fill(~mask, 0.0)
        target = target / target.sum(-1, keepdim=True).clamp_min(1e-12)
        if token_type_ids is not None and question_weight > 0:
            question = (mask & (token_type_ids == 0)).float()  # (B, L)
            question = question / question.sum(-1, keepdim=True).clamp_min(1.0)
            target = (1 - question_weight) * target + question_weight * question
        return target


@dataclass
class TokenScorerLossOutput:
    loss: torch.Tensor  # mean over the scored layers
    per_layer: list[float]


class TokenScorerLoss:
    """Soft cross-entropy between each layer's scorer distribution over its alive tokens and the target
    (:func:`answer_relevance`) restricted to those tokens: the scorer learns a ranking, which is all top-k uses."""

    def __call__(
        self,
        scores: tuple[torch.Tensor, ...],  # per layer (B, n_i) scorer logits
        positions: tuple[torch.Tensor, ...],  # per layer (B, n_i) original position of each slot
        masks: tuple[torch.Tensor, ...],  # per layer (B, n_i) alive slots
        target: torch.Tensor,  # (B, L) distribution over original positions
    ) -> TokenScorerLossOutput:
        if not scores:
            raise QualaError("the token scorer loss needs at least one scored layer")
        losses = []
        for s, pos, alive in zip(scores, positions, masks):
            t = target.gather(1, pos) * alive  # (B, n_i)
            t = t / t.sum(-1, keepdim=True).clamp_min(1e-12)
            log_q = F.log_softmax(s.float().masked_fill(~alive, torch.finfo(torch.float32).min), dim=-1)
            losses.append(-(t * log_q).sum(-1).mean())
        loss = torch.stack(losses).mean()
        return TokenScorerLossOutput(loss=loss, per_layer=[x.item() for x in losses])


# ---------------------------------------------------------------------------------- intermediate KD
@dataclass
class IntermediateKDOutput:
    loss: torch.Tensor
    hidden: torch.Tensor
    attention: torch.Tensor


def default_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer for each student layer 1..N_s: i·N_t/N_s (2i for 6 vs 12 layers); 0 = embeddings."""
    if teacher_layers % student_layers:
        raise QualaError(
            f"cannot map {student_layers} student layers onto {teacher_layers} teacher layers evenly; "
            "give kd.layer_map explicitly"
        )
    step = teacher_layers // student_layers
    return [i * step for i in range(1, student_layers + 1)]


class IntermediateKD(nn.Module):
    """MSE between student and teacher hidden states (via a learned projection) and attention probabilities.

    Holds trainable parameters (the projection) when the widths differ, so the trainer optimises and
    checkpoints it with the model.
    """

    def __init__(
        self,
        student_hidden: int,
        teacher_hidden: int,
        layer_map: list[int],
        hidden_weight: float = 1.0,
        attention_weight: float = 1.0,
    ):
        super().__init__()
        self.layer_map = list(layer_map)
        self.hidden_weight = hidden_weight
        self.attention_weight = attention_weight
        self.proj = nn.Linear(student_hidden, teacher_hidden) if student_hidden != teacher_hidden else nn.Identity()

    def forward(
        self,
        student_hidden: tuple[torch.Tensor, ...],  # N_s+1 × (B, L, D_s)
        teacher_hidden: tuple[torch.Tensor, ...],  # N_t+1 × (B, L, D_t)
        student_attn: tuple[torch.Tensor, ...],  # N_s × (B, H, L, L)
        teacher_attn: tuple[torch.Tensor, ...],  # N_t × (B, H, L, L)
        attention_mask: torch.Tensor,  # (B, L)
    ) -> IntermediateKDOutput:
        m = attention_mask.to(student_hidden[0].dtype)  # (B, L)
        pairs = [(0, 0)] + [(i + 1, t) for i, t in enumerate(self.layer_map)]
        hidden = student_hidden[0].new_zeros(())
        for s, t in pairs:
            diff = (self.proj(student_hidden[s]) - teacher_hidden[t].detach()) ** 2  # (B, L, D_t)
            hidden = hidden + (diff.mean(-1) * m).sum() / m.sum()
        hidden = hidden / len(pairs)
        attention = student_hidden[0].new_zeros(())
        if self.attention_weight > 0:
            pair_mask = (m[:, :, None] * m[:, None, :])[:, None]  # (B, 1, L, L) real query × real key
            for i, t in enumerate(self.layer_map):
                sa, ta = student_attn[i], teacher_attn[t - 1].detach()  # (B, H, L, L)
                if sa.shape[1] != ta.shape[1]:  # different head counts: compare head-averaged maps
                    sa, ta = sa.mean(1, keepdim=True), ta.mean(1, keepdim=True)
                diff = (sa - ta) ** 2 * pair_mask
                attention = attention + diff.sum() / (pair_mask.sum() * sa.shape[1])
            attention = attention / len(self.layer_map)
        loss = self.hidden_weight * hidden + self.attention_weight * attention
        return IntermediateKDOutput(loss=loss, hidden=hidden, attention=attention)


# --------------------------------------------------------------------------------------- LengthDrop
@dataclass
class SubModel:
    """One sampled sub-model: per-layer token counts at the reference length, and layers to skip."""

    length_config: list[int]
    skip_layers: list[int]
    kind: str  # "smallest" | "random"


class LengthDropSampler:
    """Sample sub-models for the sandwich rule (LAT §3.1, §3.3).

    Lengths are drawn at the model's reference length (n_0 = 384): layer i keeps an integer uniform in
    [ceil((1−bound)·n_{i−1}), n_{i−1}]; the smallest sub-model keeps ceil((1−bound)·n_{i−1}) at every layer.
    :class:`~quala.model.LengthAdaptiveQA`'s default ``"ratio"`` rule scales these counts to each row's real
    length, so the same configuration drops the same fraction of every dynamically padded sequence.
    LayerDrop skips each layer with probability ``layer_drop_prob``; a skipped layer keeps the previous
    length.

    ``smallest`` replaces the ratio bound with an explicit floor ("late-drop sampling", docs/training.md):
    layer i keeps an integer uniform in [smallest_i, n_{i−1}], so the sandwich can train the shapes the search
    front prefers (every token in the first layers, hard drops in the last), which LAT's bound never samples.
    """

    def __init__(
        self,
        num_layers: int,
        reference_length: int = 384,
        bound: float = 0.2,
        layer_drop_prob: float = 0.0,
        seed: int = 0,
        min_length: int = 2,
        smallest: Sequence[int] | None = None,
    ):
        if not 0 < bound < 1:
            raise QualaError(f"length_drop ratio bound must be in (0, 1), got {bound}")
        if not 0 <= layer_drop_prob < 1:
            raise QualaError(f"layer_drop_prob must be in [0, 1), got {layer_drop_prob}")
        if smallest is not None:
            check_smallest(smallest, "length_drop.smallest", num_layers, reference_length)
        self.floor = None if smallest is None else [max(int(n), min_length) for n in smallest]
        self.num_layers = num_layers
        self.reference_length = reference_length
        self.bound = bound
        self.layer_drop_prob = layer_drop_prob
        self.min_length = min_length
        self.rng = np.random.default_rng(seed)

    def _lower(self, layer: int, prev: int) -> int:
        """Fewest tokens ``layer`` may keep after ``prev``: the explicit floor, else one ratio step at the bound."""
        if self.floor is not None:
            return min(self.floor[layer], prev)
        return constant_ratio_gene(1, prev, self.bound, self.min_length)[0]

    def smallest(self) -> SubModel:
        if self.floor is not None:
            return SubModel(list(self.floor), [], "smallest")
        lengths = smallest_config(self.num_layers, self.reference_length, self.bound, self.min_length)
        return SubModel(list(lengths), [], "smallest")

    def random(self, layer_drop: bool = True) -> SubModel:
        lengths, skips, prev = [], [], self.reference_length
        for i in range(self.num_layers):
            if layer_drop and self.layer_drop_prob > 0 and self.rng.random() < self.layer_drop_prob:
                skips.append(i)  # skipped layer: no attention, no FFN, length unchanged
            else:
                prev = int(self.rng.integers(self._lower(i, prev), prev + 1))
            lengths.append(prev)
        if len(skips) == self.num_layers:  # keep at least one layer
            skips = skips[:-1]
        return SubModel(lengths, skips, "random")

    def sandwich(self, num_sandwich: int) -> list[SubModel]:
        """Sub-models of one batch after the full model: the smallest, then ``num_sandwich`` random ones."""
        return [self.smallest()] + [self.random() for _ in range(num_sandwich)]

    def state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state
