"""Evaluation: SQuAD v1.1 EM/F1 of a model at a length configuration, with cost (MACs) and wall time."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quala.config import EvalConfig
from quala.data import Features, SquadData, postprocess, prepare_features
from quala.engine import Predictor, run_logits
from quala.errors import QualaError
from quala.io import write_json_atomic
from quala.macs import count_macs
from quala.metric import squad_v1_scores
from quala.model_dir import ModelDir


@dataclass
class EvalResult:
    """Scores and costs of one evaluation. ``macs`` is per sequence at the reference length (paper convention)."""

    exact_match: float
    f1: float
    num_questions: int
    length_config: list[int] | None
    macs: int
    seconds: float
    questions_per_second: float
    num_features: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    predictor: Predictor,
    data: SquadData,
    length_config: Sequence[int] | None = None,
    config: EvalConfig | None = None,
    progress: bool = False,
) -> tuple[EvalResult, dict[str, str]]:
    """Predict every question of ``data`` and score it; returns the result and ``{question_id: answer}``."""
    config = config or EvalConfig()
    t0 = time.perf_counter()
    features = prepare_features(data.examples, predictor.tokenizer, config.data)
    return evaluate_features(predictor, data, features, length_config, config, progress, started=t0)


def evaluate_features(
    predictor: Predictor,
    data: SquadData,
    features: Features,
    length_config: Sequence[int] | None = None,
    config: EvalConfig | None = None,
    progress: bool = False,
    started: float | None = None,
) -> tuple[EvalResult, dict[str, str]]:
    """:func:`evaluate` on features already tokenised from ``data`` (so a search tokenises only once).

    ``started``: a :func:`time.perf_counter` value to count the wall time from (default: now).
    """
    config = config or EvalConfig()
    references = data.references()
    if not references:
        raise QualaError(f"{data.source} has no gold answers to score against")
    t0 = time.perf_counter() if started is None else started
    starts, ends = run_logits(predictor, features, length_config, config.batch_size, progress=progress)
    preds = postprocess(data.examples, features, starts, ends, config.data)
    seconds = time.perf_counter() - t0
    predictions = {qid: p[0].text for qid, p in preds.items()}
    scores = squad_v1_scores(predictions, references)
    lengths = list(length_config) if length_config is not None else None
    macs = count_macs(predictor.model_config, predictor.la_config.reference_length, lengths).total
    result = EvalResult(
        exact_match=scores.exact_match,
        f1=scores.f1,
        num_questions=scores.num_questions,
        length_config=lengths,
        macs=macs,
        seconds=round(seconds, 3),
        questions_per_second=round(len(data.examples) / seconds, 3),
        num_features=len(features),
    )
    return result, predictions


def write_outputs(
    result: EvalResult, predictions: dict[str, str], metrics_out: Path | None, predictions_out: Path | None
) -> None:
    """Write the finished results; a failure to write is a :class:`QualaError` naming the file."""
    for path, obj in ((predictions_out, predictions), (metrics_out, result.to_dict())):
        if path is None:
            continue
        try:
            write_json_atomic(path, obj)
        except OSError as exc:
            raise QualaError(f"could not write {path}: {exc.strerror or exc}") from None


# ------------------------------------------------------------------------------------------- the stage
EVALUATION_FILE = "evaluation.json"
BASELINES = ("all", "none")


@dataclass
class EvaluateConfig:
    """Settings of the evaluate stage: validation F1 of a model and its int8 version, side by side."""

    max_examples: int | None = None  # the first N validation questions (None: all)
    batch_size: int = 32
    length_configs: list[list[int]] = field(default_factory=list)  # measured besides full length
    int8_model: str | None = None  # the model's int8 version (quala quantize); None: fp32 only
    baselines: str = "all"  # all: the window and depth baselines too, on the int8 model (fp32 without one) | none

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise QualaError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.baselines not in BASELINES:
            raise QualaError(f"baselines must be one of {list(BASELINES)}, got {self.baselines!r}")


def evaluate_stage(
    model: str | Path | ModelDir, data: SquadData, output: str | Path, config: EvaluateConfig, progress: bool = False
) -> dict[str, Any]:
    """The evaluate stage: F1 of the fp32 and int8 models at full length and at ``config.length_configs``, and of
    the baselines (shorter windows, fewer layers); writes ``evaluation.json`` into ``output``."""
    from quala.benchmark import baseline_specs
    from quala.engine import load_predictor
    from quala.model_dir import write_manifest

    model = ModelDir.resolve(model)
    data = data.first(config.max_examples)
    fp32 = load_predictor(model, backend="torch")
    int8 = load_predictor(config.int8_model, backend="auto") if config.int8_model is not None else None
    rows = []
    for name, predictor in (("fp32", fp32), ("int8", int8)):
        if predictor is None:
            continue
        for lengths in [None, *config.length_configs]:  # full length first
            result, _ = evaluate(predictor, data, lengths, EvalConfig(batch_size=config.batch_size), progress=progress)
            rows.append({"model": name, "backend": predictor.backend, **result.to_dict()})
            print(f"[evaluate] {name} {lengths or 'full'}: F1 {result.f1:.2f} EM {result.exact_match:.2f}", flush=True)
    name, predictor = ("int8", int8) if int8 is not None else ("fp32", fp32)
    specs = baseline_specs(model.num_layers, predictor.la_config.reference_length)
    for baseline, data_config, lengths in specs if config.baselines == "all" else []:
        settings = EvalConfig(batch_size=config.batch_size, data=data_config)
        result, _ = evaluate(predictor, data, lengths, settings, progress=progress)
        rows.append(
            {
                "model": name,
                "backend": predictor.backend,
                "baseline": baseline,
                "max_seq_length": data_config.max_seq_length,
                "doc_stride": data_config.doc_stride,
                **result.to_dict(),
            }
        )
        print(f"[evaluate] {name} {baseline}: F1 {result.f1:.2f} EM {result.exact_match:.2f}", flush=True)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    document = {"data": data.describe(), "rows": rows}
    write_json_atomic(output / EVALUATION_FILE, document)
    write_manifest(output, "evaluate", model=model.name, data=data.describe())
    return document
