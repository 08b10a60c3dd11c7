"""The main job: train -> LengthDrop -> search -> quantize -> evaluate -> benchmark -> report.

Each stage writes its own sub-directory of the output directory and is recorded in ``pipeline.json`` when it
completes, so re-running the same command skips finished stages and resumes an interrupted one (training and
search resume from their own checkpoints). The resolved configuration is saved as ``quala_config.yaml``.

This is the QuaLA-MiniLM recipe (arXiv 2210.17114, §3): fine-tune, train length-adaptively with LengthDrop
(LAT §3), search per-layer token counts on a validation split (LAT §4), quantize to int8, and report accuracy
against latency.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from quala.benchmark import BenchmarkConfig
from quala.config import from_dict, load_yaml, merge, save_resolved
from quala.data import SquadData
from quala.errors import QualaError
from quala.evaluate import EvaluateConfig
from quala.io import read_json, write_json_atomic
from quala.model_dir import ModelDir, write_manifest
from quala.quantize import QuantizeConfig
from quala.search import SearchConfig
from quala.train_config import TrainConfig

STAGES = ("finetune", "lengthdrop", "search", "quantize", "evaluate", "benchmark", "report")
TRAINING = ("finetune", "lengthdrop")
STATE_FILE = "pipeline.json"
PACKAGE_PREFIX = "quala:"  # paths inside the installed package, e.g. quala:assets/demo/train.json


@dataclass
class PipelineConfig:
    """Everything the pipeline runs; the stage sections are the stages' own config dataclasses."""

    output_dir: str = ""
    model: str = "packaged:minilm"
    note: str = ""  # printed at the top of the report (e.g. "demo data: numbers say nothing about accuracy")
    train_files: list[str] = field(default_factory=list)
    train_articles: list[str] = field(default_factory=list)
    validation_file: str = ""
    validation_articles: str | None = None
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    # evaluate and benchmark at most this many front configurations besides full length, spread evenly over
    # MACs (cheapest and dearest included); None: every point. The engine still serves the whole front.
    front_points: int | None = None
    # the simple alternatives to token dropping (int8 with shorter windows, int8 with fewer layers) in the evaluate
    # and benchmark stages: all | none
    baselines: str = "all"
    finetune: TrainConfig = field(default_factory=TrainConfig)
    lengthdrop: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise QualaError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
        if self.baselines not in ("all", "none"):
            raise QualaError(f"baselines must be 'all' or 'none', got {self.baselines!r}")
        if self.front_points is not None and self.front_points < 1:
            raise QualaError(f"front_points must be >= 1 (or null for every point), got {self.front_points}")


def spread_configs(points: list[tuple[int, list[int]]], n: int | None) -> list[list[int]]:
    """At most ``n`` of ``(macs, length_config)`` points: the nearest to ``n`` MACs targets evenly spaced from
    the cheapest to the dearest point, in MACs order (all of them when ``n`` is None or covers them)."""
    points = sorted(points, key=lambda p: p[0])
    if n is None or len(points) <= n:
        return [c for _, c in points]
    lo, hi = points[0][0], points[-1][0]
    picked: list[int] = []
    for k in range(n):
        target = lo if n == 1 else lo + (hi - lo) * k / (n - 1)
        free = [i for i in range(len(points)) if i not in picked]
        picked.append(min(free, key=lambda i: abs(points[i][0] - target)))
    return [points[i][1] for i in sorted(picked)]


def trained_model_dir(root: Path, trained: Iterable[str]) -> Path | None:
    """The model a run's later stages use, of the ``trained`` stages: the LengthDrop stage's, else the fine-tuned
    one (None: neither)."""
    trained = set(trained)
    return next((root / stage for stage in ("lengthdrop", "finetune") if stage in trained), None)


def preset_path(name: str) -> Path:
    """The packaged preset ``configs/pipeline-NAME.yaml``."""
    path = Path(str(resources.files("quala") / "configs" / f"pipeline-{name}.yaml"))
    if not path.is_file():
        known = sorted(p.stem.removeprefix("pipeline-") for p in path.parent.glob("pipeline-*.yaml"))
        raise QualaError(f"unknown preset {name!r}; presets: {known}")
    return path


def resolve_path(path: str) -> str:
    """Expand ``quala:...`` to a file inside the installed package."""
    if path.startswith(PACKAGE_PREFIX):
        return str(resources.files("quala") / path[len(PACKAGE_PREFIX) :])
    return path


def load_pipeline_config(config: str | None, preset: str | None, overrides: dict[str, Any]) -> PipelineConfig:
    if (config is None) == (preset is None):
        raise QualaError("give exactly one of --config FILE.yaml or --preset NAME")
    values = load_yaml(config if config else preset_path(preset))
    return from_dict(PipelineConfig, merge(values, overrides), where="pipeline")


# --------------------------------------------------------------------------------------------- running
class Pipeline:
    """Runs the stages in order, skipping the ones recorded as complete."""

    def __init__(self, config: PipelineConfig):
        if not config.output_dir:
            raise QualaError("--output-dir is required")
        self.config = config
        self.root = Path(config.output_dir)
        self.train_files = [resolve_path(p) for p in config.train_files]
        self.validation_file = resolve_path(config.validation_file)
        if not self.train_files or not self.validation_file:
            raise QualaError("the pipeline config needs train_files and a validation_file")
        for path in [*self.train_files, self.validation_file]:
            if path.endswith(".json") and not Path(path).is_file():  # other names: hub datasets
                raise QualaError(f"data file not found: {path}")
        self.state_path = self.root / STATE_FILE
        self.state = read_json(self.state_path) if self.state_path.is_file() else {"completed": {}}

    def dir(self, stage: str) -> Path:
        return self.root / stage

    def has(self, stage: str) -> bool:
        """Whether ``stage`` runs now or completed in an earlier run (its directory is then usable)."""
        return stage in self.config.stages or stage in self.state["completed"]

    def front_configs(self) -> list[list[int]]:
        """The front configurations (full length excluded) that the evaluate and benchmark stages measure."""
        from quala.lengths import full_config

        model = self.trained_model
        full = list(full_config(model.num_layers, model.reference_length))  # the same model as full length
        points = [
            (p.macs, p.length_config) for p in model.front() if p.length_config is not None and p.length_config != full
        ]
        return spread_configs(points, self.config.front_points)

    @property
    def trained_model(self) -> ModelDir:
        """The model the later stages use: the LengthDrop model, else the fine-tuned one, else the start."""
        trained = trained_model_dir(self.root, [s for s in TRAINING if self.has(s)])
        return ModelDir.resolve(trained if trained is not None else resolve_path(self.config.model))

    def validation_data(self) -> SquadData:
        from quala.data import load_squad

        return load_squad(self.validation_file, self.config.validation_articles)

    def run(self, progress: bool = True, rerun: tuple[str, ...] = ()) -> dict[str, Any]:
        """Run the configured stages; ``rerun`` names completed stages to run again."""
        unknown = [s for s in rerun if s not in STAGES]
        if unknown:
            raise QualaError(f"unknown stage(s) {unknown} in --rerun; stages are {list(STAGES)}")
        self._invalidate(rerun)
        # Under `accelerate launch` / `torchrun` every process runs this; only training is data-parallel, and only
        # the main process records state.
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        single = [s for s in self.config.stages if s not in ("finetune", "lengthdrop")]
        if world > 1 and single:
            raise QualaError(
                f"with {world} processes run only the training stages (--stages finetune,lengthdrop), then the "
                f"rest in one process: quala pipeline ... --stages {','.join(single)}"
            )
        main = rank == 0
        self.root.mkdir(parents=True, exist_ok=True)
        if main:
            save_resolved(self.root, self.config)
        for stage in self.config.stages:
            if stage in self.state["completed"]:
                print(f"[pipeline] {stage}: complete, skipped", flush=True)
                continue
            print(f"[pipeline] {stage}: running", flush=True)
            t0 = time.perf_counter()
            summary = getattr(self, f"_{stage}")(progress)
            self.state["completed"][stage] = {"seconds": round(time.perf_counter() - t0, 1), **(summary or {})}
            if main:
                write_json_atomic(self.state_path, self.state)
            print(f"[pipeline] {stage}: done in {self.state['completed'][stage]['seconds']} s", flush=True)
        if main:
            write_manifest(self.root, "pipeline", stages=self.config.stages)
        return self.state

    def _invalidate(self, rerun: tuple[str, ...]) -> None:
        """A re-run stage starts from scratch (its old output, checkpoints included, is removed: otherwise
        training would resume from its final checkpoint and do nothing), and every later stage, which was built
        on its output, is marked as needing a re-run too."""
        if not rerun:
            return
        if not self.state_path.is_file():  # e.g. a mistyped --output-dir: nothing there to run again
            raise QualaError(
                f"--rerun {','.join(rerun)}: {self.root} holds no pipeline run ({STATE_FILE} not found); check "
                "--output-dir, or leave out --rerun to start a new run there"
            )
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise QualaError("--rerun clears stage outputs: run it in one process, then launch the training")
        first = min(STAGES.index(s) for s in rerun)
        for stage in STAGES[first:]:
            done = self.state["completed"].pop(stage, None) is not None
            existed = self.dir(stage).exists()
            if existed:  # a stale or partial output would be resumed instead of redone
                shutil.rmtree(self.dir(stage))
            if stage in rerun:
                what = "previous output removed" if existed else "no previous output"
                print(f"[pipeline] {stage}: {what}, will run again", flush=True)
            elif done:
                print(f"[pipeline] {stage}: built on {STAGES[first]}, will run again", flush=True)
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.state_path, self.state)

    # ---------------------------------------------------------------------------------------- stages
    def _train(self, section: TrainConfig, model: str, out: Path, progress: bool, length_drop: bool) -> dict:
        from quala.data import TrainData
        from quala.train import train

        data = TrainData.load(
            self.train_files, self.config.train_articles, self.validation_file, self.config.validation_articles
        )
        settings = dataclasses.replace(
            section,
            resume=out.exists(),  # an interrupted stage continues from its latest checkpoint
            progress=progress,
            length_drop=dataclasses.replace(section.length_drop, enabled=length_drop),
        )
        result = train(model, data, out, settings)
        if result is None:  # another process of a multi-process run: it goes on to the next stage, the main one reports
            return {}
        return {"best_f1": result.best_f1, "steps": result.steps, "examples_per_second": result.examples_per_second}

    def _finetune(self, progress: bool) -> dict:
        return self._train(
            self.config.finetune, resolve_path(self.config.model), self.dir("finetune"), progress, length_drop=False
        )

    def _lengthdrop(self, progress: bool) -> dict:
        start = self.dir("finetune") if self.has("finetune") else Path(resolve_path(self.config.model))
        return self._train(self.config.lengthdrop, str(start), self.dir("lengthdrop"), progress, length_drop=True)

    def _search(self, progress: bool) -> dict:
        from quala.search import search

        config = self.config.search
        trained_smallest = self.config.lengthdrop.length_drop.smallest if self.has("lengthdrop") else None
        if config.smallest is None and trained_smallest is not None:
            config = replace(config, smallest=list(trained_smallest))  # search what the sandwich trained
        result, document = search(
            self.trained_model,
            self.validation_data(),
            self.dir("search"),
            config,
            backend="torch",
            attach=True,
            progress=progress,
        )
        if not result.completed:
            raise QualaError("the search stopped before completing (max_evaluations); re-run to continue")
        return {"num_evaluations": result.num_evaluations, "front_size": len(document["front"])}

    def _quantize(self, progress: bool) -> dict:
        from quala.quantize import quantize

        out = self.dir("quantize")
        if out.exists():  # an interrupted quantization: start it again
            shutil.rmtree(out)
        calibration = self.validation_data() if self.config.quantize.mode == "static" else None
        result = quantize(self.trained_model, calibration, out, self.config.quantize)
        return {"size_mb": result.size_mb, "mode": result.mode}

    def _measured(self, section: Any) -> Any:
        """A stage section with what the pipeline decides: the front points, the baselines, the int8 model."""
        int8 = str(self.dir("quantize")) if self.has("quantize") else None
        return dataclasses.replace(
            section, length_configs=self.front_configs(), baselines=self.config.baselines, int8_model=int8
        )

    def _evaluate(self, progress: bool) -> dict:
        """Validation F1 of the fp32 and int8 models at full length and at the front points (``front_points``),
        and of the baselines (``baselines``) on the int8 model (fp32 without a quantize stage)."""
        from quala.evaluate import evaluate_stage

        settings = self._measured(self.config.evaluate)
        document = evaluate_stage(self.trained_model, self.validation_data(), self.dir("evaluate"), settings, progress)
        return {"rows": len(document["rows"])}

    def _benchmark(self, progress: bool) -> dict:
        from quala.benchmark import benchmark

        settings = self._measured(self.config.benchmark)
        if not settings.length_configs:  # no front point besides full length: the model's own (empty) front
            settings.length_configs = None
        result = benchmark(self.trained_model, self.validation_data(), self.dir("benchmark"), settings, progress)
        return {"rows": len(result.rows)}

    def _report(self, progress: bool) -> dict:
        from quala.report import ReportInputs, write_report

        model = self.trained_model
        inputs = ReportInputs(
            evaluation=self.dir("evaluate"),
            benchmark=self.dir("benchmark") if self.has("benchmark") else None,
            search=self.dir("search") if self.has("search") else None,
            metrics={s: self.dir(s) / "metrics.jsonl" for s in ("finetune", "lengthdrop")},
            threads={s: getattr(self.config, s).threads or 1 for s in ("finetune", "lengthdrop")},
            num_layers=model.num_layers,
            reference_length=model.reference_length,
        )
        path = write_report(self.dir("report"), inputs, self.config, self.state)
        return {"report": str(path)}
