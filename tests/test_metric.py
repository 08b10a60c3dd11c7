"""Golden tests for quala.metric (SQuAD v1.1 EM/F1).

Expected values are worked out by hand in comments; the oracle test compares
against a verbatim copy of the official evaluate-v1.1.py logic.
"""

from __future__ import annotations

import dataclasses
import random
import re
import string
from collections import Counter

import pytest

from quala.metric import (
    SquadScores,
    exact_match_score,
    f1_score,
    metric_max_over_ground_truths,
    normalize_answer,
    references_from_squad_json,
    squad_v1_scores,
)

# ---------------------------------------------------------------------------
# Reference oracle: verbatim logic of the official SQuAD v1.1 script
# (evaluate-v1.1.py, Rajpurkar et al. 2016).
# ---------------------------------------------------------------------------


def _official_normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def _official_f1_score(prediction, ground_truth):
    prediction_tokens = _official_normalize_answer(prediction).split()
    ground_truth_tokens = _official_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def _official_exact_match_score(prediction, ground_truth):
    return _official_normalize_answer(prediction) == _official_normalize_answer(ground_truth)


# ---------------------------------------------------------------------------
# normalize_answer
# ---------------------------------------------------------------------------


def test_punctuation_removed() -> None:
    # "Denver Broncos!" -> lower "denver broncos!" -> drop "!" -> "denver broncos"
    assert normalize_answer("Denver Broncos!") == "denver broncos"
    assert exact_match_score("Denver Broncos!", "denver broncos") is True
    assert f1_score("Denver Broncos!", "denver broncos") == 1.0


def test_punctuation_inside_token_joins_pieces() -> None:
    # Punctuation is deleted, not replaced by a space: "U.S.-based" -> "usbased";
    # "$1,000" -> "1000"; "rock'n'roll" -> "rocknroll".
    assert normalize_answer("U.S.-based") == "usbased"
    assert normalize_answer("$1,000") == "1000"
    assert normalize_answer("rock'n'roll") == "rocknroll"


def test_articles_removed_as_whole_words() -> None:
    # "the Eiffel Tower" -> "the eiffel tower" -> " eiffel tower" -> "eiffel tower"
    assert normalize_answer("the Eiffel Tower") == "eiffel tower"
    assert exact_match_score("the Eiffel Tower", "Eiffel Tower") is True
    # "an apple" -> " apple" -> "apple"
    assert exact_match_score("an apple", "apple") is True
    # "A" is lower-cased first, then removed: "A dog" -> "dog"
    assert normalize_answer("A dog") == "dog"


def test_articles_inside_words_kept() -> None:
    # "theatre": \bthe\b does not match (followed by word char "a")
    assert normalize_answer("theatre") == "theatre"
    # "another", "anthem", "bathe", "an" inside "banana" are untouched
    assert normalize_answer("another anthem bathe banana") == "another anthem bathe banana"
    assert exact_match_score("theatre", "atre") is False


def test_article_exposed_by_punctuation_removal() -> None:
    # Punctuation goes first: "the-end" -> "theend" (one word, kept), while
    # "(the) end" -> "the end" -> " end" -> "end".
    assert normalize_answer("the-end") == "theend"
    assert normalize_answer("(the) end") == "end"


def test_unicode_letters_lowercased_not_stripped() -> None:
    # str.lower handles "Ü" -> "ü"; accents are not stripped.
    assert normalize_answer("Zürich") == "zürich"
    assert exact_match_score("Zürich", "zürich") is True
    assert exact_match_score("Zürich", "Zurich") is False
    assert normalize_answer("Café Crème") == "café crème"


def test_unicode_punctuation_kept() -> None:
    # "—" (U+2014) and curly quotes (U+201C/U+201D) are NOT in string.punctuation.
    for ch in ("\u2014", "\u201c", "\u201d", "\u2019", "\u00bf"):
        assert ch not in string.punctuation
    # "“Hello” — world" -> lower -> no ASCII punc -> no articles -> same tokens
    assert normalize_answer("\u201cHello\u201d \u2014 world") == "\u201chello\u201d \u2014 world"
    assert exact_match_score("\u201cHello\u201d", "Hello") is False
    # "—" is a non-word char, so "the" next to it is still a whole word:
    # "the—end" -> "the—end" -> " —end" -> "—end"
    assert normalize_answer("the\u2014end") == "\u2014end"


def test_unicode_matches_official_oracle() -> None:
    for s in ("Zürich", "\u201cThe\u201d", "the\u2014end", "Ça va? — oui", "théâtre the"):
        assert normalize_answer(s) == _official_normalize_answer(s)


def test_whitespace_collapsed() -> None:
    # tabs/newlines/multiple spaces collapse to single spaces, ends stripped
    assert normalize_answer("  New \t York\n City  ") == "new york city"
    assert exact_match_score("New   York", "new york") is True
    # non-breaking space (U+00A0) is whitespace for str.split()
    assert normalize_answer("New\u00a0York") == "new york"


# ---------------------------------------------------------------------------
# exact_match_score / f1_score
# ---------------------------------------------------------------------------


def test_empty_prediction() -> None:
    # "" -> [] tokens; gold "Denver" -> [denver]; common 0 -> F1 0; EM "" != "denver"
    assert exact_match_score("", "Denver") is False
    assert f1_score("", "Denver") == 0.0


def test_both_normalize_to_empty() -> None:
    # "the" -> "" and "the" -> "": EM compares "" == "" -> True.
    # F1: both token lists empty, num_same == 0 -> 0 (official behaviour).
    assert normalize_answer("the") == ""
    assert exact_match_score("the", "the") is True
    assert f1_score("the", "the") == 0.0
    # "a." vs "!": both -> "" ; same outcome
    assert exact_match_score("a.", "!") is True
    assert f1_score("a.", "!") == 0.0


def test_partial_overlap_f1() -> None:
    # pred "the big red dog" -> [big, red, dog]; gold "red dog house" -> [red, dog, house]
    # common {red:1, dog:1} = 2; P = 2/3, R = 2/3; F1 = 2*(4/9)/(4/3) = 2/3
    assert f1_score("the big red dog", "red dog house") == pytest.approx(2 / 3)
    assert exact_match_score("the big red dog", "red dog house") is False


def test_asymmetric_overlap_f1() -> None:
    # pred "Denver" -> [denver]; gold "Denver Broncos" -> [denver, broncos]
    # common 1; P = 1/1, R = 1/2; F1 = 2*0.5/1.5 = 2/3
    assert f1_score("Denver", "Denver Broncos") == pytest.approx(2 / 3)
    # pred "Denver Broncos team" vs gold "Broncos": common 1; P = 1/3, R = 1
    # F1 = 2*(1/3)/(4/3) = 1/2
    assert f1_score("Denver Broncos team", "Broncos") == pytest.approx(0.5)


def test_duplicate_tokens_use_counter_min() -> None:
    # pred "very very very good" -> {very:3, good:1} (4 tokens)
    # gold "very good" -> {very:1, good:1} (2 tokens)
    # intersection = min counts {very:1, good:1} -> 2; P = 2/4, R = 2/2
    # F1 = 2*0.5*1/1.5 = 2/3
    assert f1_score("very very very good", "very good") == pytest.approx(2 / 3)
    # pred "new new" vs gold "new york new": {new:2} & {new:2, york:1} -> 2
    # P = 2/2, R = 2/3 -> F1 = 2*(2/3)/(5/3) = 4/5
    assert f1_score("new new", "new york new") == pytest.approx(0.8)


def test_no_common_tokens() -> None:
    # [paris] vs [london] -> num_same 0 -> F1 0
    assert f1_score("Paris", "London") == 0.0


def test_f1_order_insensitive() -> None:
    # Bag of tokens: [york, new] vs [new, york] -> common 2, P = R = 1
    assert f1_score("York New", "New York") == 1.0
    assert exact_match_score("York New", "New York") is False


def test_max_over_ground_truths() -> None:
    golds = ["Denver Broncos", "The Broncos", "Broncos of Denver"]
    # pred "Broncos": EM vs "The Broncos" -> "broncos" == "broncos" -> True
    assert metric_max_over_ground_truths(exact_match_score, "Broncos", golds) is True
    # F1 vs each: [denver, broncos] -> 2/3 ; [broncos] -> 1 ; [broncos, of, denver] -> 1/2
    assert metric_max_over_ground_truths(f1_score, "Broncos", golds) == 1.0
    # pred "Denver": F1 = 2/3, 0, 1/2 -> max 2/3
    assert metric_max_over_ground_truths(f1_score, "Denver", golds) == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------
# squad_v1_scores / references_from_squad_json
# ---------------------------------------------------------------------------


def test_aggregate_three_questions() -> None:
    references = {
        "q1": ["Denver Broncos", "Broncos"],
        "q2": ["red dog house"],
        "q3": ["Paris"],
    }
    predictions = {
        "q1": "the Denver Broncos!",  # EM 1, F1 1
        "q2": "the big red dog",  # EM 0, F1 2/3
        "q3": "London",  # EM 0, F1 0
        "extra": "ignored",  # not in references: ignored
    }
    scores = squad_v1_scores(predictions, references)
    # EM = 100 * (1 + 0 + 0) / 3 = 33.333...
    # F1 = 100 * (1 + 2/3 + 0) / 3 = 100 * (5/3) / 3 = 500/9 = 55.555...
    assert scores.exact_match == pytest.approx(100 / 3)
    assert scores.f1 == pytest.approx(500 / 9)
    assert scores.num_questions == 3


def test_missing_prediction_counts_zero() -> None:
    references = {"q1": ["Paris"], "q2": ["London"]}
    # q2 missing -> 0; q1 perfect -> EM = F1 = 100 * 1 / 2 = 50
    scores = squad_v1_scores({"q1": "paris"}, references)
    assert scores == SquadScores(exact_match=50.0, f1=50.0, num_questions=2)
    # nothing predicted at all -> 0 / 0 over 2 questions
    assert squad_v1_scores({}, references) == SquadScores(0.0, 0.0, 2)


def test_empty_references_raise() -> None:
    with pytest.raises(ValueError, match="references"):
        squad_v1_scores({"q1": "x"}, {})


def test_squad_scores_frozen() -> None:
    scores = SquadScores(exact_match=1.0, f1=2.0, num_questions=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        scores.f1 = 5.0  # type: ignore[misc]


def test_references_from_squad_json() -> None:
    data = {
        "version": "1.1",
        "data": [
            {
                "title": "A",
                "paragraphs": [
                    {
                        "context": "...",
                        "qas": [
                            {
                                "id": "q1",
                                "question": "?",
                                "answers": [
                                    {"answer_start": 0, "text": "Denver Broncos"},
                                    {"answer_start": 7, "text": "Broncos"},
                                ],
                            },
                            {"id": "q2", "question": "?", "answers": [{"text": "Paris"}]},
                        ],
                    }
                ],
            },
            {"title": "B", "paragraphs": [{"qas": [{"id": "q3", "answers": [{"text": "x"}]}]}]},
        ],
    }
    assert references_from_squad_json(data) == {
        "q1": ["Denver Broncos", "Broncos"],
        "q2": ["Paris"],
        "q3": ["x"],
    }


# ---------------------------------------------------------------------------
# Oracle comparison on tricky and random strings
# ---------------------------------------------------------------------------

_TRICKY = [
    "",
    " ",
    "the",
    "a an the",
    "The Eiffel Tower",
    "theatre",
    "Denver Broncos!",
    "denver broncos",
    "Zürich",
    "zürich",
    "\u201cquoted\u201d \u2014 dash",
    "the\u2014end",
    "U.S.-based",
    "$1,000.00",
    "  New \t York\n City  ",
    "very very very good",
    "very good",
    "the big red dog",
    "red dog house",
    "A. B. C.",
    "an_apple",  # "_" is punctuation -> "anapple"
    "ANother THE an",
    "İstanbul",  # lower() yields a combining dot
    "ß straße STRASSE",
    "日本 の 首都",
    "New\u00a0York",
]

_ALPHABET = "abcdeéü theAN.,!?-_'\"()\u2014\u201c \t\n"


def _random_strings(n: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    words = ["the", "a", "an", "The", "A.", "theatre", "dog", "Dog!", "red", "zürich", "—"]
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            out.append("".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 20))))
        else:
            out.append(" ".join(rng.choice(words) for _ in range(rng.randint(0, 6))))
    return out


_ORACLE_STRINGS = _TRICKY + _random_strings(30)


@pytest.mark.parametrize("s", _ORACLE_STRINGS)
def test_normalize_matches_official(s: str) -> None:
    assert normalize_answer(s) == _official_normalize_answer(s)


def test_pairwise_em_f1_match_official() -> None:
    rng = random.Random(42)
    pairs = [(p, g) for p in _TRICKY for g in _TRICKY]
    pairs += [(rng.choice(_ORACLE_STRINGS), rng.choice(_ORACLE_STRINGS)) for _ in range(300)]
    for pred, gold in pairs:
        assert exact_match_score(pred, gold) == _official_exact_match_score(pred, gold)
        assert f1_score(pred, gold) == pytest.approx(_official_f1_score(pred, gold))


def test_aggregate_matches_official_loop() -> None:
    # Re-implement the official evaluate() loop with the oracle and compare.
    rng = random.Random(7)
    references = {f"q{i}": [rng.choice(_ORACLE_STRINGS) for _ in range(rng.randint(1, 3))] for i in range(40)}
    predictions = {qid: rng.choice(_ORACLE_STRINGS) for qid in references if rng.random() < 0.8}
    em = f1 = 0.0
    for qid, golds in references.items():
        if qid not in predictions:
            continue
        em += max(_official_exact_match_score(predictions[qid], g) for g in golds)
        f1 += max(_official_f1_score(predictions[qid], g) for g in golds)
    scores = squad_v1_scores(predictions, references)
    assert scores.exact_match == pytest.approx(100.0 * em / len(references))
    assert scores.f1 == pytest.approx(100.0 * f1 / len(references))
    assert scores.num_questions == 40
