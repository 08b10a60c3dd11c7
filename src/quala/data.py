"""SQuAD v1.1 data: loading, article selection, windowed features and answer post-processing.

Features follow the standard BERT recipe for SQuAD (Devlin et al. 2019, §4.2): the question and a window of
the context are packed into one sequence of at most ``max_seq_length`` tokens; long contexts are split into
windows that overlap by ``doc_stride`` tokens. Post-processing picks the best span over the n-best start/end
candidates of *all* windows of an example and maps it back to character offsets in the original context.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quala.config import DataConfig
from quala.errors import QualaError
from quala.io import read_json


@dataclass(frozen=True)
class Example:
    """One question over one context, with its gold answers (empty for unlabelled input)."""

    id: str
    question: str
    context: str
    answers: tuple[str, ...] = ()
    answer_starts: tuple[int, ...] = ()
    title: str = ""


@dataclass
class SquadData:
    """Examples loaded from one source, and which articles of it were selected."""

    examples: list[Example]
    source: str
    articles: str | None
    num_articles: int

    def references(self) -> dict[str, list[str]]:
        return {ex.id: list(ex.answers) for ex in self.examples if ex.answers}

    def describe(self) -> dict[str, Any]:
        return {"file": self.source, "articles": self.articles, "num_questions": len(self.examples)}

    def first(self, n: int | None) -> SquadData:
        """The first ``n`` questions in file order (``None``: all of them)."""
        if n is not None and n < 1:
            raise QualaError(f"--max-examples must be >= 1, got {n}")
        return self if n is None else SquadData(self.examples[:n], self.source, self.articles, self.num_articles)

    def spread(self, n: int | None) -> SquadData:
        """``n`` questions evenly spaced over the split, in file order, so that every article contributes: the
        ``i``-th of ``n`` is question ``floor(i * N / n)``. Training's validation subset and the search use this
        one rule, so the same ``n`` picks the same questions in both. ``None`` or ``n >= N``: all of them."""
        total = len(self.examples)
        if n is None or n >= total:
            return self
        return SquadData(
            [self.examples[(i * total) // n] for i in range(n)], self.source, self.articles, self.num_articles
        )


# ----------------------------------------------------------------------------------------------- loading
def parse_articles(spec: str | None) -> slice | None:
    """Parse an article range ``A:B`` (Python slice semantics, 0-based, B exclusive) or a single index ``A``."""
    if spec is None or spec == "" or spec == ":":
        return None
    text = str(spec).strip()
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            start = int(a) if a.strip() else None
            stop = int(b) if b.strip() else None
        else:
            start = int(text)
            stop = start + 1
    except ValueError:
        raise QualaError(f"--articles must look like A:B (e.g. 32:40), got {spec!r}") from None
    if (start is not None and start < 0) or (stop is not None and stop < 0):
        raise QualaError(f"--articles indices must be >= 0, got {spec!r}")
    if start is not None and stop is not None and stop <= start:
        raise QualaError(f"--articles range {spec!r} is empty; B must be greater than A")
    return slice(start, stop)


def load_squad(source: str | Path, articles: str | None = None, max_examples: int | None = None) -> SquadData:
    """Load SQuAD v1.1 JSON from a file, or ``NAME[:SPLIT]`` through ``datasets`` when the hub is reachable."""
    path = Path(source)
    if path.exists() or str(source).endswith(".json"):
        raw = read_json(path)
        return squad_from_json(raw, str(source), articles, max_examples)
    return _load_from_hub(str(source), articles, max_examples)


def squad_from_json(
    raw: Any, source: str = "<memory>", articles: str | None = None, max_examples: int | None = None
) -> SquadData:
    """Select articles from SQuAD-format JSON and turn them into :class:`Example` objects."""
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise QualaError(f"{source} is not SQuAD v1.1 JSON: expected an object with a 'data' list of articles")
    all_articles = raw["data"]
    selection = parse_articles(articles)
    chosen = all_articles[selection] if selection else all_articles
    if selection is not None and not chosen:
        raise QualaError(f"--articles {articles} selects nothing: {source} has {len(all_articles)} articles")
    examples: list[Example] = []
    try:
        for article in chosen:
            title = article.get("title", "")
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    answers = qa.get("answers", [])
                    examples.append(
                        Example(
                            id=str(qa["id"]),
                            question=qa["question"],
                            context=context,
                            answers=tuple(a["text"] for a in answers),
                            answer_starts=tuple(int(a["answer_start"]) for a in answers),
                            title=title,
                        )
                    )
    except (KeyError, TypeError, ValueError) as exc:
        raise QualaError(f"{source} is not SQuAD v1.1 JSON: missing or malformed field {exc}") from None
    if not examples:
        raise QualaError(f"{source} holds no questions for articles {articles or 'all'}")
    return SquadData(examples, source, articles, len(chosen)).first(max_examples)


def _load_from_hub(name: str, articles: str | None, max_examples: int | None) -> SquadData:
    dataset, _, split = name.partition(":")
    split = split or "validation"
    try:
        import datasets

        ds = datasets.load_dataset(dataset, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, ...: all mean "pass a file"
        raise QualaError(
            f"could not load dataset {name!r} ({type(exc).__name__}); it is not a file, and the Hugging Face hub "
            "is unreachable or has no such dataset. Pass a SQuAD v1.1 JSON file instead."
        ) from None
    # Rebuild the article structure (hub rows are flat, in article order).
    data: list[dict[str, Any]] = []
    for row in ds:
        if not data or data[-1]["title"] != row["title"]:
            data.append({"title": row["title"], "paragraphs": []})
        paragraphs = data[-1]["paragraphs"]
        if not paragraphs or paragraphs[-1]["context"] != row["context"]:
            paragraphs.append({"context": row["context"], "qas": []})
        gold = row["answers"]
        answers = [{"text": t, "answer_start": s} for t, s in zip(gold["text"], gold["answer_start"])]
        paragraphs[-1]["qas"].append({"id": row["id"], "question": row["question"], "answers": answers})
    return squad_from_json({"data": data}, name, articles, max_examples)


@dataclass
class TrainData:
    """The data of the train stage: the training questions (one split per file, used in order) and the optional
    validation split that picks the saved model."""

    train: list[SquadData]
    validation: SquadData | None = None

    @classmethod
    def load(
        cls,
        train_files: Sequence[str],
        train_articles: Sequence[str | None] | None = None,
        validation_file: str | None = None,
        validation_articles: str | None = None,
    ) -> TrainData:
        """Load each training file with its article range (``':'`` or none: every article) and the validation
        file (optional)."""
        articles = list(train_articles or [None] * len(train_files))
        if len(articles) != len(train_files):
            raise QualaError(
                f"give one --train-articles per --train-file ({len(train_files)} files, {len(articles)} article "
                "ranges); use ':' for all articles"
            )
        train = [load_squad(f, a if a not in ("", ":") else None) for f, a in zip(train_files, articles, strict=True)]
        validation = load_squad(validation_file, validation_articles) if validation_file else None
        return cls(train, validation)


# ---------------------------------------------------------------------------------------------- features
@dataclass
class Features:
    """Tokenised windows. Lists of per-feature arrays (unpadded); padding happens per batch in :func:`collate`."""

    input_ids: list[np.ndarray]
    attention_mask: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None
    offsets: list[list[tuple[int, int] | None]]  # char span per token, None outside the context
    example_index: np.ndarray  # (F,) which example each window belongs to
    start_positions: np.ndarray | None = None  # (F,) gold token index, 0 ([CLS]) when not in the window
    end_positions: np.ndarray | None = None
    lengths: np.ndarray = field(init=False)  # (F,) real token count

    def __post_init__(self) -> None:
        self.lengths = np.array([len(x) for x in self.input_ids], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.input_ids)


def _truncate_question(question: str, tokenizer: Any, max_query_length: int) -> str:
    question = question.lstrip()
    enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= max_query_length:
        return question
    return question[: enc["offset_mapping"][max_query_length - 1][1]]


def prepare_features(
    examples: Sequence[Example], tokenizer: Any, config: DataConfig | None = None, training: bool = False
) -> Features:
    """Tokenise examples into overlapping windows (BERT: with token_type_ids; RoBERTa: without)."""
    config = config or DataConfig()
    if not examples:
        raise QualaError("no examples to tokenise")
    if tokenizer.padding_side != "right":
        raise QualaError("the tokenizer must pad on the right for span QA")
    questions = [_truncate_question(ex.question, tokenizer, config.max_query_length) for ex in examples]
    want_types = "token_type_ids" in tokenizer.model_input_names
    enc = tokenizer(
        questions,
        [ex.context for ex in examples],
        truncation="only_second",
        max_length=config.max_seq_length,
        stride=config.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_token_type_ids=want_types,
        padding=False,
    )
    sample_map = enc["overflow_to_sample_mapping"]
    offsets: list[list[tuple[int, int] | None]] = []
    starts: list[int] = []
    ends: list[int] = []
    for i, offset in enumerate(enc["offset_mapping"]):
        seq_ids = enc.sequence_ids(i)
        offsets.append([tuple(o) if s == 1 else None for o, s in zip(offset, seq_ids)])
        if training:
            s, e = _gold_token_span(examples[sample_map[i]], offsets[-1])
            starts.append(s)
            ends.append(e)
    return Features(
        input_ids=[np.asarray(x, dtype=np.int64) for x in enc["input_ids"]],
        attention_mask=[np.asarray(x, dtype=np.int64) for x in enc["attention_mask"]],
        token_type_ids=[np.asarray(x, dtype=np.int64) for x in enc["token_type_ids"]] if want_types else None,
        offsets=offsets,
        example_index=np.asarray(sample_map, dtype=np.int64),
        start_positions=np.asarray(starts, dtype=np.int64) if training else None,
        end_positions=np.asarray(ends, dtype=np.int64) if training else None,
    )


def _gold_token_span(example: Example, offsets: list[tuple[int, int] | None]) -> tuple[int, int]:
    """Token indices of the first gold answer inside this window, or (0, 0) when it is not fully inside."""
    if not example.answers:
        return 0, 0
    char_start = example.answer_starts[0]
    char_end = char_start + len(example.answers[0])
    ctx = [i for i, o in enumerate(offsets) if o is not None]
    if not ctx or offsets[ctx[0]][0] > char_start or offsets[ctx[-1]][1] < char_end:
        return 0, 0
    start = next(i for i in ctx if offsets[i][1] > char_start)
    end = next(i for i in reversed(ctx) if offsets[i][0] < char_end)
    return start, max(start, end)


def collate(features: Features, indices: Sequence[int], pad_to: int | None = None, pad_id: int = 0) -> dict:
    """Pad the selected features to the longest in the batch (or ``pad_to``) and stack them as numpy arrays."""
    length = max(int(features.lengths[i]) for i in indices)
    if pad_to is not None:
        length = max(length, pad_to)
    batch_size = len(indices)
    input_ids = np.full((batch_size, length), pad_id, dtype=np.int64)
    mask = np.zeros((batch_size, length), dtype=np.int64)
    types = np.zeros((batch_size, length), dtype=np.int64) if features.token_type_ids is not None else None
    for row, i in enumerate(indices):
        n = int(features.lengths[i])
        input_ids[row, :n] = features.input_ids[i]
        mask[row, :n] = features.attention_mask[i]
        if types is not None:
            types[row, :n] = features.token_type_ids[i]
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    if features.start_positions is not None:
        batch["start_positions"] = features.start_positions[list(indices)]
        batch["end_positions"] = features.end_positions[list(indices)]
    return batch


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None = None) -> list:
    """Batches of similar length, so dynamic padding pads little.

    Without ``rng``: sorted by length. With ``rng`` (training): a random permutation is cut into mega-batches
    of 50 batches, each sorted by length, and the batches are shuffled, so epochs differ.
    """
    n = len(lengths)
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]
    perm = rng.permutation(n)
    mega = 50 * batch_size
    batches = []
    for i in range(0, n, mega):
        chunk = perm[i : i + mega]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[j : j + batch_size].tolist() for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


# ------------------------------------------------------------------------------------------ post-process
@dataclass(frozen=True)
class Prediction:
    """A predicted answer: its text, a probability over the n-best spans, and character offsets."""

    text: str
    score: float
    start: int
    end: int


def postprocess(
    examples: Sequence[Example],
    features: Features,
    start_logits: np.ndarray | Sequence[np.ndarray],
    end_logits: np.ndarray | Sequence[np.ndarray],
    config: DataConfig | None = None,
    top_k: int = 1,
) -> dict[str, list[Prediction]]:
    """Best spans per example over the n-best candidates of all its windows (score = start + end logit).

    ``start_logits[f]`` may be longer than feature ``f`` (padding); only real context tokens are considered.
    Returns ``{example_id: [Prediction, ...]}`` with ``top_k`` entries, best first; an example for which no
    valid span exists gets an empty answer with score 0.
    """
    config = config or DataConfig()
    by_example: dict[int, list[int]] = {}
    for f, e in enumerate(features.example_index):
        by_example.setdefault(int(e), []).append(f)
    out: dict[str, list[Prediction]] = {}
    for e, example in enumerate(examples):
        candidates: list[tuple[float, int, int]] = []
        for f in by_example.get(e, []):
            offsets = features.offsets[f]
            n = len(offsets)
            s_log = np.asarray(start_logits[f][:n], dtype=np.float64)
            e_log = np.asarray(end_logits[f][:n], dtype=np.float64)
            k = config.n_best_size
            s_idx = np.argsort(-s_log, kind="stable")[: k * 4]
            e_idx = np.argsort(-e_log, kind="stable")[: k * 4]
            s_idx = [i for i in s_idx if offsets[i] is not None][:k]
            e_idx = [i for i in e_idx if offsets[i] is not None][:k]
            for s in s_idx:
                for t in e_idx:
                    if t < s or t - s + 1 > config.max_answer_length:
                        continue
                    candidates.append((float(s_log[s] + e_log[t]), offsets[s][0], offsets[t][1]))
        if not candidates:
            out[example.id] = [Prediction("", 0.0, 0, 0)]
            continue
        candidates.sort(key=lambda c: -c[0])
        # the same character span can come from two overlapping windows: keep its best score only
        seen: set[tuple[int, int]] = set()
        unique = []
        for c in candidates:
            if (c[1], c[2]) not in seen:
                seen.add((c[1], c[2]))
                unique.append(c)
        unique = unique[: config.n_best_size]
        top = max(c[0] for c in unique)
        weights = [math.exp(c[0] - top) for c in unique]
        total = sum(weights)
        out[example.id] = [
            Prediction(example.context[s:t], w / total, s, t) for (_, s, t), w in zip(unique[:top_k], weights)
        ]
    return out
