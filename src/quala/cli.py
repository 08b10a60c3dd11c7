"""The ``quala`` command line. Each command is a thin layer over one stage module.

User mistakes raise :class:`~quala.errors.QualaError`; :func:`main` prints them on one line and exits with 2.
The settings of ``evaluate``, ``search``, ``quantize``, ``benchmark``, ``serve`` and ``train`` are options generated
from their config dataclasses (:mod:`quala.cli_options`); each command declares here only what it reads or writes
(model, data, output files), and the other commands all of theirs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from quala.benchmark import BenchmarkConfig
from quala.builtin import BUILTIN_MODEL
from quala.cli_options import with_config_options
from quala.config import EvalConfig
from quala.errors import QualaError
from quala.model_dir import ModelDir
from quala.quantize import QuantizeConfig
from quala.search import SearchConfig
from quala.serve_config import ServeConfig
from quala.train_config import TrainRun

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
DefaultModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="Model directory, 'packaged:minilm' (the untrained MiniLM) or 'builtin:quala-minilm' (default: the "
        "trained QuaLA-MiniLM shipped with quala, int8 with backend auto; see its MODEL_CARD.md).",
    ),
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
@with_config_options(EvalConfig)
def evaluate(
    data: DataOpt,
    model: DefaultModelOpt = BUILTIN_MODEL,
    articles: ArticlesOpt = None,
    length_config: LengthOpt = "full",
    max_examples: Annotated[int | None, typer.Option(help="Evaluate only the first N questions.")] = None,
    backend: Annotated[str, typer.Option(help="auto | torch | onnxruntime")] = "auto",
    threads: ThreadsOpt = None,
    predictions_out: Annotated[
        Path | None, typer.Option(help="Write {question_id: answer} (official SQuAD format).")
    ] = None,
    metrics_out: Annotated[Path | None, typer.Option(help="Write the metrics JSON here.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    overrides: dict | None = None,
) -> None:
    """Score a model on SQuAD-format data (official v1.1 EM/F1) at a length configuration.

    The batch and window options are fields of EvalConfig.
    """
    from quala.config import from_dict
    from quala.data import load_squad
    from quala.engine import load_predictor
    from quala.evaluate import evaluate as run_eval
    from quala.evaluate import write_outputs
    from quala.io import check_output_file
    from quala.lengths import parse_length_config

    settings = from_dict(EvalConfig, overrides, "evaluate")
    for path, flag in ((predictions_out, "--predictions-out"), (metrics_out, "--metrics-out")):
        if path is not None:
            check_output_file(path, flag)
    squad = load_squad(data, articles, max_examples)
    predictor = load_predictor(model, backend=backend, threads=threads)
    lengths = parse_length_config(
        length_config, predictor.model_config.num_hidden_layers, predictor.la_config.reference_length
    )
    result, predictions = run_eval(predictor, squad, lengths, settings, progress=progress)
    out = result.to_dict()
    out["data"] = squad.describe()
    _emit(out)  # printed first: a failed write below must not lose the finished scores
    write_outputs(result, predictions, metrics_out, predictions_out)


@app.command()
def answer(
    question: Annotated[str, typer.Option("--question", help="The question.")],
    context: Annotated[str, typer.Option("--context", help="The context to find the answer in.")],
    model: DefaultModelOpt = BUILTIN_MODEL,
    length_config: Annotated[
        str | None, typer.Option("--length-config", help="Explicit per-layer token counts (or 'full').")
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(
            help="Compute budget resolved on the model's search front: fast | balanced | accurate | "
            "macs=FRACTION | latency=MS. Default: the most accurate configuration."
        ),
    ] = None,
    backend: Annotated[str, typer.Option(help="auto | torch | onnxruntime")] = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Answer one question from a context; prints {answer, score, start, end, model, backend} (character offsets)."""
    from quala.engine import QAEngine

    if not question.strip():
        raise QualaError("--question is empty; give a question")
    if not context.strip():
        raise QualaError("--context is empty; give the text to search for the answer")
    engine = QAEngine.from_pretrained(model, backend=backend, threads=threads)
    out = engine.answer(question, context, budget=budget, length_config=length_config).to_dict()
    _emit({**out, "model": model, "backend": engine.predictor.backend})


@app.command()
def macs(
    model: Annotated[str, typer.Option("--model", help="Model directory, or a directory holding only config.json.")],
    length_config: LengthOpt = "full",
    seq_length: Annotated[int, typer.Option(help="Sequence length L.")] = 384,
) -> None:
    """Analytic multiply-accumulate count of one sequence (the papers' 'FLOPs')."""
    from quala.lengths import parse_length_config
    from quala.macs import count_macs

    if seq_length < 1:
        raise QualaError(f"--seq-length must be >= 1, got {seq_length}")
    config = ModelDir.resolve(model, require_weights=False).hf_config
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
@with_config_options(SearchConfig)
def search(
    model: ModelOpt,
    data: DataOpt,
    output: Annotated[
        Path, typer.Option("--output", help="Directory for search.json, pareto.png and the resumable state.")
    ],
    articles: ArticlesOpt = None,
    config: Annotated[
        str | None,
        typer.Option(help="YAML settings file, or a packaged preset: search-cpu (a short search on a small CPU)."),
    ] = None,
    backend: Annotated[str, typer.Option(help="auto | torch | onnxruntime")] = "auto",
    attach: Annotated[
        bool, typer.Option(help="Copy search.json into the model directory (the engine reads it).")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    overrides: dict | None = None,
) -> None:
    """Search length configurations (LAT evolution): the F1-vs-cost Pareto front on a validation split.

    Every other option is a field of SearchConfig (docs/search.md); flags override --config.
    """
    from quala.config import resolve
    from quala.data import load_squad
    from quala.model_dir import SEARCH_FILE
    from quala.search import search as run_search

    settings = resolve(SearchConfig, _settings_file(config), overrides)
    md = ModelDir.resolve(model)
    squad = load_squad(data, articles)
    result, document = run_search(md, squad, output, settings, backend=backend, attach=attach, progress=progress)
    summary = {k: v for k, v in document["summary"].items() if k not in ("strategy", "objective", "note", "machine")}
    out = {
        "search": str(output / SEARCH_FILE),
        **summary,
        "data": document["data"],
        "front": document["front"],
        "attached": str(Path(md.path) / SEARCH_FILE) if attach and result.completed else None,
    }
    if "rescore" in document:  # the front's F1 come from these questions
        out["rescore"] = {k: document["rescore"][k] for k in ("data", "best_f1_per_budget")}
    if not result.completed:
        out["note"] = "stopped at --max-evaluations; run the same command again to continue"
    _emit(out)


OutputDirOpt = Annotated[Path, typer.Option("--output", help="New directory to write (absent or empty).")]


@app.command()
def export(
    model: ModelOpt,
    output: OutputDirOpt,
    full_graph: Annotated[
        bool,
        typer.Option(help="Write model_full.onnx: a fused full-length graph, used when nothing is dropped."),
    ] = True,
) -> None:
    """Export a model to ONNX: one graph for every length configuration (+ a fused full-length graph)."""
    from quala.export import export_model

    result = export_model(model, output, full_graph=full_graph)
    _emit({"output": str(result.directory), "fusion": result.fusion})


@app.command()
@with_config_options(QuantizeConfig)
def quantize(
    model: Annotated[
        str, typer.Option("--model", help="fp32 model directory (PyTorch safetensors, or a quala export).")
    ],
    output: OutputDirOpt,
    calibration_file: Annotated[
        str | None, typer.Option(help="SQuAD JSON whose first features calibrate activations (static mode).")
    ] = None,
    calibration_articles: Annotated[
        str | None, typer.Option(help="Article range A:B of --calibration-file to calibrate on, e.g. 32:40.")
    ] = None,
    overrides: dict | None = None,
) -> None:
    """Quantize a model to int8 (per-channel weights, embeddings fp32) for ONNX Runtime.

    The mode and precision options are fields of QuantizeConfig.
    """
    from quala.config import from_dict
    from quala.data import load_squad
    from quala.quantize import quantize

    settings = from_dict(QuantizeConfig, overrides, "quantize")
    md = ModelDir.resolve(model)
    calibration = load_squad(calibration_file, calibration_articles) if calibration_file is not None else None
    result = quantize(md, calibration, output, settings)
    _emit(
        {
            "output": str(result.directory),
            "mode": result.mode,
            "graphs": result.graphs,
            "size_mb": result.size_mb,
            "fp32_nodes_per_graph": result.excluded_nodes,
        }
    )


@app.command()
@with_config_options(BenchmarkConfig)
def benchmark(
    model: Annotated[str, typer.Option("--model", help="fp32 length-adaptive model directory (or 'packaged:minilm').")],
    data: DataOpt,
    output: Annotated[Path, typer.Option("--output", help="Directory for benchmark.json/.md and the plot.")],
    articles: ArticlesOpt = None,
    protocol: Annotated[
        str,
        typer.Option(
            help="serving (real lengths, the model's length rule), papers (padded to 384, batch 32, clip rule), "
            "or both."
        ),
    ] = "both",
    length_configs: Annotated[
        str | None,
        typer.Option(help="Length configs for the LA rows, separated by ';' (default: the model's search front)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    overrides: dict | None = None,
) -> None:
    """Time BERT-base, fp32/int8, length-adaptive int8 and the simple baselines side by side on real SQuAD questions."""
    from quala.benchmark import PROTOCOLS
    from quala.benchmark import benchmark as run_benchmark
    from quala.config import from_dict
    from quala.data import load_squad
    from quala.lengths import parse_counts

    protocols = list(PROTOCOLS) if protocol == "both" else [protocol]
    if any(p not in PROTOCOLS for p in protocols):
        raise QualaError(f"--protocol must be serving, papers or both; got {protocol!r}")
    configs = None
    if length_configs is not None:
        configs = [c for c in (parse_counts(t) for t in length_configs.split(";") if t.strip()) if c is not None]
    settings = from_dict(BenchmarkConfig, {**overrides, "protocols": protocols, "length_configs": configs}, "benchmark")
    md = ModelDir.resolve(model)
    result = run_benchmark(md, load_squad(data, articles), output, settings, progress)
    _emit({"output": str(output), "rows": len(result.rows)})


@app.command()
@with_config_options(ServeConfig)
def serve(model: DefaultModelOpt = BUILTIN_MODEL, overrides: dict | None = None) -> None:
    """Serve the model over HTTP: POST /v1/answer with per-request budgets, demo page at /, docs at /docs.

    Every other option is a field of ServeConfig (docs/serving.md).
    """
    from quala.serve import serve as run_server

    # built directly, not through from_dict: a --target-p95-ms that is no number reaches ServeConfig's own check
    run_server(ServeConfig(model=model, **overrides))


@app.command()
@with_config_options(TrainRun)
def train(
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="YAML file of defaults, or a packaged preset (e.g. train-quala-finetune); flags override it.",
        ),
    ] = None,
    overrides: dict | None = None,
) -> None:
    """Fine-tune, distil or LengthDrop-train a span-QA model (one command for every mode).

    Every option is a field of TrainRun: the model, data and output (TrainInputs) and the settings (TrainConfig;
    docs/training.md); flags override --config.
    """
    from quala.config import resolve
    from quala.train import train as run_train

    run = resolve(TrainRun, _settings_file(config), overrides)
    run.check_io()
    model = ModelDir.resolve(run.model)
    result = run_train(model, run.load_data(), Path(run.output_dir), run.settings())
    if result is not None:  # the main process reports
        _emit(result.__dict__)


@app.command()
def pipeline(
    config: Annotated[
        str | None, typer.Option("--config", help="Pipeline YAML file (see configs/pipeline-*.yaml).")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Packaged preset: demo (offline, tiny data), squad-mini (2-core CPU), "
            "squad-mini-full (to the plateau), squad-mini-full-gpu (the built-in recipe), squad (GPU)."
        ),
    ] = None,
    output_dir: Annotated[str | None, typer.Option(help="Where every stage writes its sub-directory.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Override the starting model (dir, hub name, packaged:minilm).")
    ] = None,
    stages: Annotated[
        str | None,
        typer.Option(help="Comma-separated subset of: finetune,lengthdrop,search,quantize,evaluate,benchmark,report."),
    ] = None,
    rerun: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated stages to redo from scratch (their output is removed); "
            "every later stage runs again too."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run train -> LengthDrop -> search -> quantize -> evaluate -> benchmark -> report; re-run to resume."""
    from quala.pipeline import Pipeline, load_pipeline_config

    overrides = {
        "output_dir": output_dir,
        "model": model,
        "stages": [s.strip() for s in stages.split(",") if s.strip()] if stages else None,
    }
    settings = load_pipeline_config(config, preset, overrides)
    again = tuple(s.strip() for s in rerun.split(",") if s.strip()) if rerun else ()
    state = Pipeline(settings).run(progress=progress, rerun=again)
    _emit(
        {
            "output_dir": settings.output_dir,
            "report": str(Path(settings.output_dir) / "report" / "REPORT.md"),
            "stages": state["completed"],
        }
    )


@app.command()
def demo(
    model: DefaultModelOpt = BUILTIN_MODEL,
    backend: Annotated[str, typer.Option(help="auto | torch | onnxruntime")] = "auto",
    threads: ThreadsOpt = None,
    examples: Annotated[int, typer.Option(help="Questions whose answers are shown at every budget.")] = 3,
) -> None:
    """Answer the shipped demo questions at the fast, balanced and accurate budgets: F1, latency and MACs each."""
    import time

    from quala.demo import DEMO_QUESTIONS, demo_questions, run_demo
    from quala.engine import QAEngine

    if examples < 0:
        raise QualaError(f"--examples must be >= 0, got {examples}")
    data = demo_questions()
    t0 = time.perf_counter()
    engine = QAEngine.from_pretrained(model, backend=backend, threads=threads)
    typer.echo(f"model {model} ({engine.predictor.backend}), loaded in {time.perf_counter() - t0:.1f} s")
    result = run_demo(engine, data)
    typer.echo(f"{result.num_questions} demo questions ({DEMO_QUESTIONS}), answered one at a time:\n")
    typer.echo(f"{'budget':<10}{'F1':>7}{'EM':>7}{'ms/question':>13}{'GMACs':>8}{'of full':>9}  tokens per layer")
    for p in result.presets:
        tokens = "full length" if p.length_config is None else ",".join(map(str, p.length_config))
        typer.echo(
            f"{p.preset:<10}{p.f1:>7.1f}{p.exact_match:>7.1f}{p.latency_ms:>13.1f}{p.macs / 1e9:>8.3f}"
            f"{p.macs_fraction:>9.0%}  {tokens}"
        )
    for ex in data.examples[:examples]:
        typer.echo(f"\nQ: {ex.question}  (gold: {' | '.join(ex.answers)})")
        for p in result.presets:
            typer.echo(f"   {p.preset:<9} {p.answers[ex.id]}")
    flag = "" if model == BUILTIN_MODEL else f" --model {model}"
    typer.echo(
        f"\nNext: run  quala serve{flag}  and open http://127.0.0.1:8000/ to ask your own questions "
        "and compare the three budgets side by side."
    )


@app.command("package-builtin")
def package_builtin(
    run: Annotated[Path, typer.Option("--run", help="Output directory of a finished quala pipeline run.")],
    output: Annotated[
        Path | None, typer.Option(help="Where to write (default: the built-in model directory in the package).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace a model already there.")] = False,
) -> None:
    """Package a pipeline run as the built-in model: fp16 weights, tokenizer, front, MODEL_CARD.md, checksums."""
    from quala.builtin import package_builtin as run_package

    result = run_package(run, output, force)
    _emit(
        {
            "output": str(result.directory),
            "source_model": str(result.source_model),
            "size_mb": result.size_mb,
            "files": result.files,
        }
    )


@app.command()
def card(
    model: Annotated[
        Path | None, typer.Option("--model", help="Packaged model directory (default: the built-in one).")
    ] = None,
) -> None:
    """Re-generate MODEL_CARD.md of a packaged model from its results.json (and refresh its checksums)."""
    from quala.builtin import builtin_dir
    from quala.card import card_from_directory

    _emit({"card": str(card_from_directory(model if model is not None else builtin_dir()))})


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
