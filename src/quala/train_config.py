"""Settings of the train stage (:mod:`quala.train`): the run, knowledge distillation and LengthDrop.

:class:`TrainConfig` is saved as ``quala_config.yaml`` next to the trained model. ``quala train`` reads
:class:`TrainRun`, the settings plus :class:`TrainInputs` (model, data files, output directory) as flat YAML keys;
each field with a help text is also a ``quala train`` option (:mod:`quala.cli_options`). Kept apart from the
training loop so that reading them imports no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from quala.config import DataConfig, setting
from quala.errors import QualaError
from quala.lengths import check_smallest

if TYPE_CHECKING:
    from quala.data import TrainData


@dataclass
class KDConfig:
    """Knowledge distillation from a teacher (TinyBERT §3.1; Dynamic-TinyBERT §3)."""

    teacher: str | None = setting(None, "Teacher QA model for knowledge distillation.", flag="--teacher")
    alpha: float = setting(0.5, "Weight of the KD loss (1 - alpha on gold spans).")
    temperature: float = setting(1.0, "Distillation temperature T.")
    loss: str = "kl"  # "kl" | "soft_ce"
    intermediate: bool = setting(False, "Add hidden-state and attention MSE to the teacher.")
    hidden_weight: float = 1.0
    attention_weight: float = 1.0
    layer_map: list[int] | None = None  # teacher layer (1-based) per student layer; default i*N_t/N_s

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise QualaError(f"kd.alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise QualaError(f"kd.temperature must be > 0, got {self.temperature}")
        if self.loss not in ("kl", "soft_ce"):
            raise QualaError(f"kd.loss must be 'kl' or 'soft_ce', got {self.loss!r}")
        if self.hidden_weight < 0 or self.attention_weight < 0:
            raise QualaError("kd.hidden_weight and kd.attention_weight must be >= 0")


@dataclass
class LengthDropConfig:
    """LengthDrop with the sandwich rule, in-place distillation and LayerDrop (LAT §3.1–3.3)."""

    enabled: bool = setting(
        False, "Train with LengthDrop: sandwich rule + in-place distillation.", flag="--length-drop"
    )
    bound: float = setting(0.2, "Length-drop ratio bound: each layer keeps >= ceil((1-bound) * previous length).")
    num_sandwich: int = setting(
        2, "Random sub-models per batch, besides the full and the smallest (LengthDrop).", flag="--num-sandwich"
    )
    layer_drop_prob: float = setting(
        0.2, "LayerDrop probability of the random sub-models (LengthDrop).", flag="--layer-drop-prob"
    )
    smallest: list[int] | None = setting(
        None,
        "Explicit smallest sub-model at the reference length, e.g. 384,384,192,96,48,24: every random sub-model "
        "then keeps, at each layer, between this count and the previous layer's (default: LAT's ratio bound; "
        "docs/training.md, 'late-drop sampling').",
        flag="--ld-smallest",
    )
    inplace_distillation: bool = True  # sub-models learn the full model's start/end distributions

    def __post_init__(self) -> None:
        if not 0 < self.bound < 1:
            raise QualaError(f"length_drop.bound must be in (0, 1), got {self.bound}")
        if self.smallest is not None:
            check_smallest(self.smallest, "length_drop.smallest")
        if self.num_sandwich < 0:
            raise QualaError(f"length_drop.num_sandwich must be >= 0, got {self.num_sandwich}")
        if not 0 <= self.layer_drop_prob < 1:
            raise QualaError(f"length_drop.layer_drop_prob must be in [0, 1), got {self.layer_drop_prob}")


@dataclass
class ScorerConfig:
    """Learned token significance (``significance: learned``): how its scorer is trained (docs/training.md)."""

    weight: float = setting(1.0, "Weight of the token-scorer loss beside the span losses.")
    window: int = setting(15, "Tokens around the full model's answer that count as relevant to the scorer.")
    question_weight: float = setting(0.2, "Share of the scorer's target spread over the question segment.")
    lr: float | None = setting(None, "The token scorer's own learning rate (default: --lr).")
    question: bool | None = setting(
        None,
        "Condition the scorer on the question (s = h·(w + U·q̄) + b; BERT-family models; a linear scorer "
        "warm-starts it). Default: keep the model's scorer.",
        flag="--scorer-question",
    )
    question_layers: int | None = setting(
        None,
        "Only the first K layers' scorers read the question; the later ones stay linear (U = 0). Default: all.",
        flag="--scorer-question-layers",
    )

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise QualaError(f"scorer.weight must be >= 0, got {self.weight}")
        if self.window < 1:
            raise QualaError(f"scorer.window must be >= 1, got {self.window}")
        if not 0 <= self.question_weight < 1:
            raise QualaError(f"scorer.question_weight must be in [0, 1), got {self.question_weight}")
        if self.question_layers is not None and self.question_layers < 0:
            raise QualaError(f"scorer.question_layers must be >= 0, got {self.question_layers}")
        if self.lr is not None and self.lr <= 0:
            raise QualaError(f"scorer.lr must be > 0, got {self.lr}")


@dataclass
class TrainConfig:
    """How a training run trains (the settings of :func:`quala.train.train`); saved as ``quala_config.yaml`` in
    the output directory. Where the model, the data and the output are is :class:`TrainInputs`."""

    max_train_examples: int | None = setting(None, "Use the first N training questions.")
    max_eval_examples: int | None = setting(None, "Validate on N evenly spaced questions during training.")
    epochs: float = setting(2.0, "Epochs (fractions allowed).")
    max_steps: int | None = setting(None, "Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = setting(8, "Features per device per micro-batch.")
    grad_accum: int = setting(1, "Micro-batches per optimizer step.")
    lr: float = setting(3e-5, "Peak learning rate (linear warm-up, then linear decay).")
    weight_decay: float = setting(0.01, "AdamW weight decay.")
    warmup_ratio: float = setting(0.1, "Fraction of steps spent warming up.")
    max_grad_norm: float = 1.0
    seed: int = setting(42, "Random seed (data order, dropout, sub-models).")
    mixed_precision: str = setting("no", "no | bf16 | fp16 (GPU).")
    pad_to_max_length: bool = setting(
        False, "Pad every batch to max_seq_length (default: dynamic).", flag="--pad-to-max-length/--dynamic-padding"
    )
    freeze_word_embeddings: bool = setting(
        False, "Do not train the (V, D) word embeddings: no gradient and no optimizer state for them."
    )
    # the Drop-and-Restore control flow stays eager, so sub-models with new length configurations do not recompile
    compile: bool = setting(False, "torch.compile the per-layer FFN and attention-output blocks (dynamic shapes).")
    significance: str | None = setting(
        None, "'learned': convert the model to learned token significance (a new scorer unless it has one)."
    )
    trainable: str = setting("all", "all | scorer: train only the token scorer, everything else frozen.")
    threads: int | None = setting(None, "CPU threads (default: all cores).")
    log_every: int = setting(10, "Steps between metrics.jsonl lines.")
    eval_every: int | None = setting(None, "Steps between validations (default: each epoch).")
    patience: int | None = setting(
        None,
        "Stop after N validations in a row without a better --select score (the best model is kept either way).",
    )
    select: str | None = setting(
        None,
        "Validation F1 that picks the saved model: full | smallest | mean (default: smallest when only the "
        "scorer trains, else full).",
    )
    eval_batch_size: int = 32
    save_every: int = setting(200, "Steps between checkpoints.")
    keep_checkpoints: int = 2
    resume: bool = setting(False, "Continue from the latest checkpoint in --output-dir.", flag="--resume", switch=False)
    progress: bool = setting(True, "Show a progress bar.")
    data: DataConfig = field(default_factory=DataConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    length_drop: LengthDropConfig = field(default_factory=LengthDropConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs > 0, f"epochs must be > 0, got {self.epochs}"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}"),
            (
                self.mixed_precision in ("no", "bf16", "fp16"),
                f"mixed_precision must be no|bf16|fp16, got {self.mixed_precision!r}",
            ),
            (self.log_every >= 1 and self.save_every >= 1, "log_every and save_every must be >= 1"),
            (
                self.eval_every is None or self.eval_every >= 1,
                f"eval_every must be >= 1, got {self.eval_every}",
            ),
            (self.patience is None or self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (
                self.significance in (None, "attention", "learned"),
                f"significance must be 'attention' or 'learned', got {self.significance!r}",
            ),
            (self.trainable in ("all", "scorer"), f"trainable must be 'all' or 'scorer', got {self.trainable!r}"),
            (
                self.select in (None, "full", "smallest", "mean"),
                f"select must be 'full', 'smallest' or 'mean', got {self.select!r}",
            ),
            (self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}"),
            (self.eval_batch_size >= 1, "eval_batch_size must be >= 1"),
            (self.threads is None or self.threads >= 1, f"threads must be >= 1, got {self.threads}"),
            (
                self.max_train_examples is None or self.max_train_examples >= 1,
                "max_train_examples must be >= 1",
            ),
            (self.max_eval_examples is None or self.max_eval_examples >= 1, "max_eval_examples must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise QualaError(message)


@dataclass
class TrainInputs:
    """Where a stand-alone ``quala train`` run starts from, reads its data and writes (the pipeline decides these
    itself)."""

    model: str = setting("", "Student to train: model directory, hub name, or 'packaged:minilm'.", flag="--model")
    output_dir: str = setting("", "Where the model, checkpoints and metrics go.")
    train_files: list[str] = setting(
        help="SQuAD v1.1 JSON training file; repeat to concatenate several files.",
        flag="--train-file",
        default_factory=list,
    )
    train_articles: list[str] = setting(
        help="Article range A:B for each --train-file, in the same order (':' = all).", default_factory=list
    )
    eval_file: str | None = setting(None, "Validation file (the best model by --select is kept).")
    eval_articles: str | None = setting(None, "Article range A:B of --eval-file, e.g. 32:40.")

    def check_io(self) -> None:
        """Checks that need the run's inputs: call before loading anything."""
        if not self.model:
            raise QualaError("--model is required")
        if not self.output_dir:
            raise QualaError("--output-dir is required")
        if not self.train_files:
            raise QualaError("--train-file is required")
        for path in [*self.train_files, *([self.eval_file] if self.eval_file else [])]:
            if path.endswith(".json") and not Path(path).is_file():
                raise QualaError(f"data file not found: {path}")
        if self.eval_articles and not self.eval_file:
            raise QualaError("--eval-articles needs --eval-file")

    def load_data(self) -> TrainData:
        """The training and validation questions these inputs name."""
        from quala.data import TrainData

        return TrainData.load(self.train_files, self.train_articles, self.eval_file, self.eval_articles)


@dataclass
class TrainRun(TrainConfig, TrainInputs):
    """A stand-alone ``quala train`` run: :class:`TrainInputs` and :class:`TrainConfig` as one flat set of YAML keys
    and flags (this base order lists the inputs first in ``--help``)."""

    def settings(self) -> TrainConfig:
        """The settings alone, for :func:`quala.train.train`."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})
