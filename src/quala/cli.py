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
DataOpt = Annotated[
    str, typer.Option("--data", help="SQuAD v1.1 JSON file (or a hub dataset NAME[:SPLIT] when online).")
]
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
    path = resolve_model_path(model, require_weights=False)
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


def _settings_file(name: str | None) -> Path | None:
    """A YAML settings file given by path, or by the name of a packaged preset (``search-cpu``)."""
    if name is None:
        return None
    if Path(name).is_file():
        return Path(name)
    presets = Path(__file__).parent / "configs"
    preset = presets / f"{Path(name).stem}.yaml"
    if preset.is_file():
        return preset
    known = sorted(p.stem for p in presets.glob("*.yaml"))
    raise QualaError(f"--config {name!r} is neither a file nor a packaged preset; presets: {known}")


@app.command()
def search(
    model: ModelOpt,
    data: DataOpt,
    output: Annotated[
        Path, typer.Option("--output", help="Directory for search.json, pareto.png and the resumable state.")
    ],
    articles: ArticlesOpt = None,
    config: Annotated[
        str | None,
        typer.Option(help="YAML settings file, or a packaged preset: search-cpu (< 30 min on 2 cores)."),
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help="evolution (LAT's search) | random (baseline over the same space).")
    ] = None,
    objective: Annotated[
        str | None, typer.Option(help="Cost axis of the front: macs (analytic) | latency (measured here).")
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(
            "--budget",
            help="Cost budgets as fractions of the full model's cost, e.g. 0.5,0.7,0.9: the progress bar and "
            "the summary show the best F1 found within each.",
        ),
    ] = None,
    population: Annotated[
        int | None, typer.Option(help="Initial constant-ratio genes (LAT: 20).")
    ] = None,
    iterations: Annotated[int | None, typer.Option(help="Evolution iterations (LAT: 30).")] = None,
    mutations: Annotated[int | None, typer.Option(help="Mutated genes per iteration (LAT: 30).")] = None,
    crossovers: Annotated[int | None, typer.Option(help="Crossed genes per iteration (LAT: 30).")] = None,
    mutation_prob: Annotated[
        float | None, typer.Option(help="Probability that a mutation changes each layer (LAT: 0.5).")
    ] = None,
    ratio_bound: Annotated[
        float | None,
        typer.Option(help="LengthDrop ratio bound; its smallest sub-model is the cheapest allowed (0.2)."),
    ] = None,
    evaluations: Annotated[
        int | None,
        typer.Option(help="Random strategy: candidates to evaluate (default: the evolution's maximum)."),
    ] = None,
    max_evaluations: Annotated[
        int | None, typer.Option(help="Stop after this many candidates; run again to resume.")
    ] = None,
    max_examples: Annotated[
        int | None, typer.Option(help="Score each candidate on N questions spread evenly over the split.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same seed, same search).")] = None,
    latency: Annotated[
        bool | None,
        typer.Option("--latency/--no-latency", help="Time every candidate (for the latency plot)."),
    ] = None,
    latency_repeats: Annotated[int | None, typer.Option(help="Timed passes per candidate (median).")] = None,
    latency_warmup: Annotated[int | None, typer.Option(help="Untimed passes before timing.")] = None,
    latency_batch_size: Annotated[int | None, typer.Option(help="Batch size when timing.")] = None,
    latency_threads: Annotated[
        int | None, typer.Option(help="Threads when timing (default --threads; use 1 on a shared machine).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Features per forward pass when scoring F1.")] = None,
    backend: Annotated[str, typer.Option(help="auto | torch | onnxruntime")] = "auto",
    threads: ThreadsOpt = None,
    attach: Annotated[
        bool, typer.Option(help="Copy search.json into the model directory (the engine reads it).")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Search length configurations (LAT evolution): the F1-vs-cost Pareto front on a validation split."""
    from quala.config import resolve
    from quala.search import SEARCH_FILE, SearchConfig
    from quala.search import search as run_search

    overrides = {
        "strategy": strategy,
        "objective": objective,
        "budgets": budget,
        "population": population,
        "iterations": iterations,
        "mutations": mutations,
        "crossovers": crossovers,
        "mutation_prob": mutation_prob,
        "ratio_bound": ratio_bound,
        "evaluations": evaluations,
        "max_evaluations": max_evaluations,
        "max_examples": max_examples,
        "seed": seed,
        "measure_latency": latency,
        "evaluation": {"batch_size": batch_size, "threads": threads},
        "latency": {
            "repeats": latency_repeats,
            "warmup": latency_warmup,
            "batch_size": latency_batch_size,
            "threads": latency_threads,
        },
    }
    overrides = {k: ({n: v for n, v in o.items() if v is not None} if isinstance(o, dict) else o)
                 for k, o in overrides.items()}  # unset nested flags must not erase YAML values
    settings = resolve(SearchConfig, _settings_file(config), overrides)
    result, document = run_search(model, data, articles, output, settings, backend, attach, progress)
    out = {
        "search": str(output / SEARCH_FILE),
        "completed": result.completed,
        "num_evaluations": result.num_evaluations,
        "wall_seconds": result.wall_seconds,
        "area": result.area,
        "area_macs": result.area_macs,
        "best_f1_per_budget": result.best_per_budget,
        "data": document["data"],
        "front": document["front"],
        "attached": str(Path(model) / SEARCH_FILE) if attach and result.completed else None,
    }
    if not result.completed:
        out["note"] = "stopped at --max-evaluations; run the same command again to continue"
    _emit(out)


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
