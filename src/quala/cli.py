"""The ``quala`` command line. Each command is a thin layer over one stage module.

User mistakes raise :class:`~quala.errors.QualaError`; :func:`main` prints them on one line and exits with 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from quala.errors import QualaError

app = typer.Typer(
    name="quala",
    help="Length-adaptive, quantized extractive question answering that runs fast on CPUs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ModelOpt = Annotated[
    str, typer.Option("--model", help="Model directory (or hub name, or 'packaged:minilm' for the bundled MiniLM).")
]
DataOpt = Annotated[str, typer.Option("--data", help="SQuAD v1.1 JSON file (or a hub dataset NAME[:SPLIT] when online).")]
ArticlesOpt = Annotated[
    str | None, typer.Option("--articles", help="Article range A:B (0-based, B exclusive), e.g. 32:40.")
]
LengthOpt = Annotated[
    str,
    typer.Option(
        "--length-config",
        help="'full', or one token count per layer (non-increasing), e.g. 315,251,242,159,142,33.",
    ),
]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads (default: all cores).")]


def _emit(obj: dict) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False))


@app.command()
def evaluate(
    model: ModelOpt,
    data: DataOpt,
    articles: ArticlesOpt = None,
    length_config: LengthOpt = "full",
    max_examples: Annotated[int | None, typer.Option(help="Evaluate only the first N questions.")] = None,
    batch_size: Annotated[int, typer.Option(help="Features per forward pass.")] = 32,
    backend: Annotated[str, typer.Option(help="auto | torch | onnxruntime")] = "auto",
    threads: ThreadsOpt = None,
    predictions_out: Annotated[
        Path | None, typer.Option(help="Write {question_id: answer} (official SQuAD format).")
    ] = None,
    metrics_out: Annotated[Path | None, typer.Option(help="Write the metrics JSON here.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Score a model on SQuAD-format data (official v1.1 EM/F1) at a length configuration."""
    from quala.config import EvalConfig
    from quala.data import load_squad
    from quala.engine import load_predictor
    from quala.evaluate import evaluate as run_eval
    from quala.evaluate import write_outputs
    from quala.model import parse_length_config

    if batch_size < 1:
        raise QualaError(f"--batch-size must be >= 1, got {batch_size}")
    squad = load_squad(data, articles, max_examples)
    predictor = load_predictor(model, backend=backend, threads=threads)
    lengths = parse_length_config(
        length_config, predictor.model_config.num_hidden_layers, predictor.la_config.reference_length
    )
    result, predictions = run_eval(predictor, squad, lengths, EvalConfig(batch_size=batch_size), progress=progress)
    write_outputs(result, predictions, metrics_out, predictions_out)
    out = result.to_dict()
    out["data"] = squad.describe()
    _emit(out)


@app.command()
def answer(
    model: ModelOpt,
    question: Annotated[str, typer.Option("--question", help="The question.")],
    context: Annotated[str, typer.Option("--context", help="The context to find the answer in.")],
    length_config: LengthOpt = "full",
    backend: Annotated[str, typer.Option(help="auto | torch | onnxruntime")] = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Answer one question from a context; prints {answer, score, start, end} (character offsets)."""
    from quala.engine import QAEngine

    if not question.strip():
        raise QualaError("--question is empty; give a question")
    if not context.strip():
        raise QualaError("--context is empty; give the text to search for the answer")
    engine = QAEngine.from_pretrained(model, backend=backend, threads=threads)
    _emit(engine.answer(question, context, length_config=length_config).to_dict())


@app.command()
def macs(
    model: Annotated[str, typer.Option("--model", help="Model directory, or a directory holding only config.json.")],
    length_config: LengthOpt = "full",
    seq_length: Annotated[int, typer.Option(help="Sequence length L.")] = 384,
) -> None:
    """Analytic multiply-accumulate count of one sequence (the papers' 'FLOPs')."""
    from transformers import AutoConfig

    from quala.macs import count_macs
    from quala.model import parse_length_config, resolve_model_path

    if seq_length < 1:
        raise QualaError(f"--seq-length must be >= 1, got {seq_length}")
    path = resolve_model_path(model)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise QualaError(f"could not read a model config from {model!r}: {str(exc).splitlines()[0]}") from None
    lengths = parse_length_config(length_config, config.num_hidden_layers, seq_length)
    breakdown = count_macs(config, seq_length, lengths)
    full = count_macs(config, seq_length).total
    _emit(
        {
            "macs": breakdown.total,
            "gmacs": round(breakdown.total / 1e9, 4),
            "fraction_of_full": round(breakdown.total / full, 4),
            "seq_length": seq_length,
            "length_config": lengths,
            "breakdown": {k: v for k, v in vars(breakdown).items()},
        }
    )


@app.command()
def train(
    model: Annotated[
        str | None,
        typer.Option("--model", help="Student to train: model directory, hub name, or 'packaged:minilm'."),
    ] = None,
    train_file: Annotated[
        list[str] | None,
        typer.Option(
            "--train-file", help="SQuAD v1.1 JSON training file; repeat to concatenate several files."
        ),
    ] = None,
    train_articles: Annotated[
        list[str] | None,
        typer.Option(
            "--train-articles", help="Article range A:B for each --train-file, in the same order (':' = all)."
        ),
    ] = None,
    eval_file: Annotated[
        str | None, typer.Option(help="Validation file (best model = best full-length F1).")
    ] = None,
    eval_articles: Annotated[
        str | None, typer.Option(help="Article range A:B of --eval-file, e.g. 32:40.")
    ] = None,
    output_dir: Annotated[
        str | None, typer.Option(help="Where the model, checkpoints and metrics go.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file of defaults; flags override it.")
    ] = None,
    teacher: Annotated[str | None, typer.Option(help="Teacher QA model for knowledge distillation.")] = None,
    kd_alpha: Annotated[
        float | None, typer.Option(help="Weight of the KD loss (1 - alpha on gold spans).")
    ] = None,
    kd_temperature: Annotated[float | None, typer.Option(help="Distillation temperature T.")] = None,
    kd_intermediate: Annotated[
        bool | None,
        typer.Option(
            "--kd-intermediate/--no-kd-intermediate",
            help="Add hidden-state and attention MSE to the teacher.",
        ),
    ] = None,
    length_drop: Annotated[
        bool | None,
        typer.Option(
            "--length-drop/--no-length-drop",
            help="Train with LengthDrop: sandwich rule + in-place distillation.",
        ),
    ] = None,
    num_sandwich: Annotated[
        int | None, typer.Option(help="Random sub-models per batch (LengthDrop).")
    ] = None,
    length_drop_bound: Annotated[
        float | None,
        typer.Option(help="Length-drop ratio bound: each layer keeps >= ceil((1-bound) * previous length)."),
    ] = None,
    layer_drop_prob: Annotated[float | None, typer.Option(help="LayerDrop probability (LengthDrop).")] = None,
    epochs: Annotated[float | None, typer.Option(help="Epochs (fractions allowed).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Features per device per micro-batch.")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Micro-batches per optimizer step.")] = None,
    lr: Annotated[
        float | None, typer.Option(help="Peak learning rate (linear warm-up, then linear decay).")
    ] = None,
    warmup_ratio: Annotated[float | None, typer.Option(help="Fraction of steps spent warming up.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (data order, dropout, sub-models).")] = None,
    mixed_precision: Annotated[str | None, typer.Option(help="no | bf16 | fp16 (GPU).")] = None,
    max_seq_length: Annotated[int | None, typer.Option(help="Tokens per window.")] = None,
    doc_stride: Annotated[int | None, typer.Option(help="Overlap between windows of long contexts.")] = None,
    pad_to_max_length: Annotated[
        bool | None,
        typer.Option(
            "--pad-to-max-length/--dynamic-padding",
            help="Pad every batch to max_seq_length (default: dynamic).",
        ),
    ] = None,
    max_train_examples: Annotated[
        int | None, typer.Option(help="Use the first N training questions.")
    ] = None,
    max_eval_examples: Annotated[
        int | None, typer.Option(help="Validate on N evenly spaced questions during training.")
    ] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="Steps between validations (default: each epoch).")
    ] = None,
    save_every: Annotated[int | None, typer.Option(help="Steps between checkpoints.")] = None,
    log_every: Annotated[int | None, typer.Option(help="Steps between metrics.jsonl lines.")] = None,
    threads: ThreadsOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the latest checkpoint in --output-dir.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Fine-tune, distil or LengthDrop-train a span-QA model (one command for every mode)."""
    from quala.config import resolve
    from quala.train import TrainConfig
    from quala.train import train as run_train

    overrides = {
        "model": model,
        "output_dir": output_dir,
        "train_files": train_file or None,
        "train_articles": train_articles or None,
        "eval_file": eval_file,
        "eval_articles": eval_articles,
        "epochs": epochs,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "lr": lr,
        "warmup_ratio": warmup_ratio,
        "weight_decay": weight_decay,
        "seed": seed,
        "mixed_precision": mixed_precision,
        "pad_to_max_length": pad_to_max_length,
        "max_train_examples": max_train_examples,
        "max_eval_examples": max_eval_examples,
        "eval_every": eval_every,
        "save_every": save_every,
        "log_every": log_every,
        "threads": threads,
        "resume": resume or None,
        "progress": progress,
        "data": {"max_seq_length": max_seq_length, "doc_stride": doc_stride},
        "kd": {
            "teacher": teacher,
            "alpha": kd_alpha,
            "temperature": kd_temperature,
            "intermediate": kd_intermediate,
        },
        "length_drop": {
            "enabled": length_drop,
            "num_sandwich": num_sandwich,
            "bound": length_drop_bound,
            "layer_drop_prob": layer_drop_prob,
        },
    }
    result = run_train(resolve(TrainConfig, config, overrides))
    if result is not None:  # the main process reports
        _emit(result.__dict__)


def main() -> None:
    """Entry point: run the app; user mistakes become one line on stderr and exit code 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(prog_name="quala", standalone_mode=True)
    except QualaError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
