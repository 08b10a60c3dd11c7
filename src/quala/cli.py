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
    length_config: Annotated[
        str | None, typer.Option("--length-config", help="Explicit per-layer token counts (or 'full').")
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(help="Compute budget resolved on the model's search front: fast | balanced | accurate | "
                     "macs=FRACTION | latency=MS. Default: the most accurate configuration."),
    ] = None,
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
    _emit(engine.answer(question, context, budget=budget, length_config=length_config).to_dict())


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
def serve(
    model: ModelOpt,
    host: Annotated[str, typer.Option(help="Interface to listen on (127.0.0.1: this machine only).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    backend: Annotated[str, typer.Option(help="auto | torch | onnxruntime")] = "auto",
    threads: ThreadsOpt = None,
    max_context_chars: Annotated[
        int, typer.Option(help="Longest context accepted, in characters; longer ones get HTTP 413.")
    ] = 100_000,
    max_question_chars: Annotated[int, typer.Option(help="Longest question accepted (characters).")] = 1_000,
    max_batch: Annotated[
        int, typer.Option(help="Most questions per /v1/answer/batch request and per merged micro-batch.")
    ] = 32,
    max_body_mb: Annotated[
        float, typer.Option(help="Largest request body in MiB; larger ones get HTTP 413.")
    ] = 8.0,
    micro_batch: Annotated[
        bool, typer.Option(help="Merge concurrent requests with the same length config into one call.")
    ] = False,
    batch_window_ms: Annotated[
        float, typer.Option(help="With --micro-batch: how long to wait for more requests to merge (ms).")
    ] = 2.0,
    max_queue: Annotated[
        int, typer.Option(help="Most requests waiting for the engine; more get HTTP 503 (bounds memory).")
    ] = 256,
) -> None:
    """Serve the model over HTTP: POST /v1/answer with per-request budgets, demo page at /, docs at /docs."""
    from quala.serve import ServeConfig
    from quala.serve import serve as run_server

    if max_body_mb <= 0:
        raise QualaError(f"--max-body-mb must be > 0, got {max_body_mb}")
    run_server(ServeConfig(
        model=model, host=host, port=port, backend=backend, threads=threads,
        max_context_chars=max_context_chars, max_question_chars=max_question_chars, max_batch=max_batch,
        max_body_bytes=int(max_body_mb * 1024 * 1024), micro_batch=micro_batch,
        batch_window_ms=batch_window_ms, max_queue=max_queue,
    ))


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
