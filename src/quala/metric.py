"""SQuAD v1.1 exact-match and F1 metric.

A from-the-definition reimplementation of the official SQuAD v1.1 evaluation
script (``evaluate-v1.1.py``) accompanying Rajpurkar et al., 2016,
"SQuAD: 100,000+ Questions for Machine Comprehension of Text" (EMNLP 2016).
Normalization, token-level F1 and the max-over-gold-answers aggregation follow
that script exactly; predictions missing for a reference id score 0.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "SquadScores",
    "exact_match_score",
    "f1_score",
    "metric_max_over_ground_truths",
    "normalize_answer",
    "references_from_squad_json",
    "squad_v1_scores",
]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")

T = TypeVar("T", bool, float, int)


def normalize_answer(s: str) -> str:
    """Lower-case, strip ASCII punctuation, drop articles, collapse whitespace.

    Same order as the official script: lower -> remove punctuation ->
    remove articles (``\\b(a|an|the)\\b``) -> whitespace fix.
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES_RE.sub(" ", s)
    return " ".join(s.split())


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    """True iff both strings are identical after normalization."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction: str, ground_truth: str) -> float:
    """Bag-of-tokens F1 between normalized prediction and ground truth.

    Returns 0 when there is no common token (so an empty prediction, or two
    strings that both normalize to empty, score 0), as the official script.
    """
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def metric_max_over_ground_truths(
    metric_fn: Callable[[str, str], T],
    prediction: str,
    ground_truths: Sequence[str],
) -> T:
    """Best score of ``prediction`` against any of the gold answers."""
    if not ground_truths:
        raise ValueError("ground_truths must contain at least one answer")
    return max(metric_fn(prediction, gt) for gt in ground_truths)


@dataclass(frozen=True)
class SquadScores:
    """Aggregate SQuAD v1.1 scores (EM and F1 on a 0-100 scale)."""

    exact_match: float
    f1: float
    num_questions: int


def squad_v1_scores(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
) -> SquadScores:
    """Score predictions against references, averaging over all reference ids.

    A reference id absent from ``predictions`` contributes 0 to both EM and F1
    (the official script prints a warning and does the same). Predictions for
    ids not in ``references`` are ignored.
    """
    if not references:
        raise ValueError("references is empty: need at least one question to score")
    exact_match = 0.0
    f1 = 0.0
    for qid, ground_truths in references.items():
        if qid not in predictions:
            continue
        prediction = predictions[qid]
        exact_match += float(metric_max_over_ground_truths(exact_match_score, prediction, ground_truths))
        f1 += metric_max_over_ground_truths(f1_score, prediction, ground_truths)
    total = len(references)
    return SquadScores(
        exact_match=100.0 * exact_match / total,
        f1=100.0 * f1 / total,
        num_questions=total,
    )


def references_from_squad_json(data: Mapping[str, Any]) -> dict[str, list[str]]:
    """Map question id -> list of gold answer texts from a loaded SQuAD JSON."""
    references: dict[str, list[str]] = {}
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                references[qa["id"]] = [answer["text"] for answer in qa["answers"]]
    return references
