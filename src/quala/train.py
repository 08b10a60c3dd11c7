"""Training: span-QA fine-tuning, knowledge distillation and LengthDrop, on CPU, one GPU or many (accelerate).

One loop serves every mode:

- plain fine-tuning: start/end cross-entropy (:class:`~quala.objectives.SpanLoss`);
- distillation from a teacher (``kd.teacher``): prediction-layer KD mixed with the hard loss by ``kd.alpha``,
  optionally intermediate-layer KD (TinyBERT §3.1, Dynamic-TinyBERT §3);
- LengthDrop (``length_drop.enabled``, LAT §3.1–3.3): per batch the full model on gold spans, the smallest
  sub-model and ``num_sandwich`` random sub-models (with LayerDrop) trained by in-place distillation on both
  start and end logits; each pass has its own backward, losses divided by the number of passes, one clip and
  one optimizer step (sandwich rule, Yu & Huang 2019).

Checkpoints (``checkpoints/step-N/``) hold the model (safetensors), the optimizer state (safetensors + JSON),
the scheduler, RNG states and the data position, and are written to a temporary directory that is renamed into
place, so ``--resume`` always finds a complete one. The output directory itself holds the model with the best
full-length validation F1 (or the last one without validation), which ``quala evaluate`` and
``quala answer`` load directly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quala.config import DataConfig, EvalConfig, save_resolved
from quala.data import Features, SquadData, collate, length_grouped_batches, load_squad, prepare_features
from quala.engine import SpanLogits, TorchPredictor
from quala.errors import QualaError
from quala.io import machine_info, write_json_atomic, write_manifest
from quala.model import LengthAdaptiveQA, load_tokenizer
from quala.objectives import (
    IntermediateKD,
    LengthDropSampler,
    PredictionKD,
    SpanLoss,
    SubModel,
    TokenScorerLoss,
    answer_relevance,
    default_layer_map,
)

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
STATE = "trainer_state.json"


# ------------------------------------------------------------------------------------------------ config
@dataclass
class KDConfig:
    """Knowledge distillation from a teacher (TinyBERT §3.1; Dynamic-TinyBERT §3)."""

    teacher: str | None = None  # teacher model directory or hub name; None: no distillation
    alpha: float = 0.5  # loss = (1 - alpha) * hard + alpha * prediction KD
    temperature: float = 1.0
    loss: str = "kl"  # "kl" | "soft_ce"
    intermediate: bool = False  # add hidden-state and attention MSE
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

    enabled: bool = False
    bound: float = 0.2  # length-drop ratio bound: each layer keeps >= ceil((1 - bound) * previous)
    num_sandwich: int = 2  # random sub-models per batch, besides the full and the smallest
    layer_drop_prob: float = 0.2  # LayerDrop probability for the random sub-models
    inplace_distillation: bool = True  # sub-models learn the full model's start/end distributions

    def __post_init__(self) -> None:
        if not 0 < self.bound < 1:
            raise QualaError(f"length_drop.bound must be in (0, 1), got {self.bound}")
        if self.num_sandwich < 0:
            raise QualaError(f"length_drop.num_sandwich must be >= 0, got {self.num_sandwich}")
        if not 0 <= self.layer_drop_prob < 1:
            raise QualaError(f"length_drop.layer_drop_prob must be in [0, 1), got {self.layer_drop_prob}")


@dataclass
class ScorerConfig:
    """Learned token significance (``significance: learned``): how its scorer is trained (docs/training.md)."""

    weight: float = 1.0  # weight of the scorer loss beside the span losses
    window: int = 15  # tokens around the full model's answer that count as relevant
    question_weight: float = 0.2  # share of the target spread over the question segment
    lr: float | None = None  # the scorer's own learning rate (a fresh linear head learns faster); None: lr

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise QualaError(f"scorer.weight must be >= 0, got {self.weight}")
        if self.window < 1:
            raise QualaError(f"scorer.window must be >= 1, got {self.window}")
        if not 0 <= self.question_weight < 1:
            raise QualaError(f"scorer.question_weight must be in [0, 1), got {self.question_weight}")
        if self.lr is not None and self.lr <= 0:
            raise QualaError(f"scorer.lr must be > 0, got {self.lr}")


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``quala_config.yaml`` in the output directory."""

    model: str = ""
    output_dir: str = ""
    train_files: list[str] = field(default_factory=list)
    train_articles: list[str] = field(default_factory=list)  # one A:B per train file ("" or ":" = all)
    eval_file: str | None = None
    eval_articles: str | None = None
    max_train_examples: int | None = None  # first N questions of the training data
    max_eval_examples: int | None = None  # evenly spaced subset of the validation questions during training
    epochs: float = 2.0
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    batch_size: int = 8  # features per device per micro-batch
    grad_accum: int = 1
    lr: float = 3e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (GPU)
    pad_to_max_length: bool = False  # pad every batch to max_seq_length instead of dynamic padding
    freeze_word_embeddings: bool = False  # no gradient and no optimizer state for the (V, D) word embeddings
    # torch.compile the per-layer FFN and attention-output blocks (dynamic shapes); the Drop-and-Restore
    # control flow stays eager, so sub-models with new length configurations do not recompile
    compile: bool = False
    # "learned": convert the model to learned token significance (a new scorer unless it has one)
    significance: str | None = None
    trainable: str = "all"  # "all" | "scorer": train only the token scorer, the encoder and span head frozen
    threads: int | None = None  # CPU threads for torch
    log_every: int = 10
    eval_every: int | None = None  # optimizer steps between validations (None: end of each epoch)
    # stop once this many validations in a row have not beaten the best score of `select` (None: run to the end);
    # the output directory keeps the best model either way
    patience: int | None = None
    # validation score that picks the saved model: "full" F1, the "smallest" sub-model's, or their "mean"
    # (LengthDrop); default "smallest" when only the scorer trains (the full model cannot change), else "full"
    select: str | None = None
    eval_batch_size: int = 32
    save_every: int = 200  # optimizer steps between checkpoints
    keep_checkpoints: int = 2
    resume: bool = False
    progress: bool = True
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
        if self.train_articles and len(self.train_articles) != len(self.train_files):
            raise QualaError(
                f"give one --train-articles per --train-file ({len(self.train_files)} files, "
                f"{len(self.train_articles)} article ranges); use ':' for all articles"
            )

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


# ------------------------------------------------------------------------------------------- results
@dataclass
class TrainResult:
    """Summary of a run; ``examples_per_second`` counts training features, not validation or checkpoints."""

    steps: int
    best_f1: float | None
    best_step: int | None
    seconds: float
    examples_per_second: float
    output_dir: str


# ------------------------------------------------------------------------------------------- helpers
class DevicePredictor(TorchPredictor):
    """TorchPredictor that moves batches to the model's device (the trainer's model may live on a GPU)."""

    @torch.inference_mode()
    def logits(self, batch: dict[str, np.ndarray], length_config) -> SpanLogits:
        device = next(self.model.parameters()).device
        out = self.model(
            torch.from_numpy(batch["input_ids"]).to(device),
            torch.from_numpy(batch["attention_mask"]).to(device),
            torch.from_numpy(batch["token_type_ids"]).to(device) if "token_type_ids" in batch else None,
            length_config=length_config,
        )
        return SpanLogits(out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy())


def load_train_data(config: TrainConfig) -> list[SquadData]:
    articles = config.train_articles or [None] * len(config.train_files)
    return [load_squad(f, a if a not in ("", ":") else None) for f, a in zip(config.train_files, articles, strict=True)]


def check_same_vocab(student_tok: Any, teacher_tok: Any, teacher: str) -> None:
    """Logit distillation compares token positions, so both models must tokenise identically."""
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        raise QualaError(
            f"teacher {teacher!r} uses a different vocabulary than the student; distillation needs the same "
            "tokenizer vocabulary (token positions must line up)"
        )


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the peak learning rate, then linear decay to 0 (Devlin et al. 2019)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@contextlib.contextmanager
def _quiet_hf():
    """No Hugging Face progress bars while saving (they would break the training bar)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


# -------------------------------------------------------------------------------- optimizer state I/O
def save_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Optimizer state as safetensors (tensors) + JSON (hyper-parameters): no pickle."""
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    save_file(tensors, str(directory / "optimizer.safetensors"))
    write_json_atomic(directory / "optimizer.json", {"param_groups": state["param_groups"], "scalars": scalars})


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(directory / "optimizer.safetensors"))
    meta = json.loads((directory / "optimizer.json").read_text(encoding="utf-8"))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ------------------------------------------------------------------------------------------- trainer
class Trainer:
    """The training loop. Build it with :func:`build_trainer` (files) or directly (features in memory)."""

    def __init__(
        self,
        config: TrainConfig,
        model: LengthAdaptiveQA,
        tokenizer: Any,
        train_features: Features,
        eval_data: SquadData | None = None,
        teacher: LengthAdaptiveQA | None = None,
    ):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.config = config
        self.out = Path(config.output_dir)
        if config.threads:
            torch.set_num_threads(config.threads)
        ld = config.length_drop
        handlers = [DistributedDataParallelKwargs(find_unused_parameters=ld.enabled and ld.layer_drop_prob > 0)]
        # several processes without CUDA (torchrun / accelerate launch on CPUs): gloo data parallelism
        multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=multi_cpu, kwargs_handlers=handlers)
        torch.manual_seed(config.seed)
        self.tokenizer = tokenizer
        self.features = train_features
        self.eval_data = eval_data
        self.span_loss = SpanLoss()
        self.kd = PredictionKD(config.kd.temperature, config.kd.loss) if teacher is not None else None
        self.inplace = PredictionKD(1.0, "kl")  # LAT: KL against the full model's detached logits at T = 1
        self.scorer_loss = TokenScorerLoss() if model.scorer is not None else None
        self.intermediate: IntermediateKD | None = None
        if teacher is not None and config.kd.intermediate:
            n_s, n_t = model.num_layers, teacher.num_layers
            layer_map = config.kd.layer_map or default_layer_map(n_s, n_t)
            if len(layer_map) != n_s or not all(1 <= t <= n_t for t in layer_map):
                raise QualaError(f"kd.layer_map must give one teacher layer in 1..{n_t} per student layer ({n_s})")
            self.intermediate = IntermediateKD(
                model.config.hidden_size,
                teacher.config.hidden_size,
                layer_map,
                config.kd.hidden_weight,
                config.kd.attention_weight,
            )
        self.sampler = LengthDropSampler(
            model.num_layers, model.la_config.reference_length, ld.bound, ld.layer_drop_prob, seed=config.seed
        )
        # the sub-models are sampled at the reference length; the "ratio" rule maps them to each row's length
        if ld.enabled and model.la_config.length_rule != "ratio":
            raise QualaError("LengthDrop with dynamic padding needs the model's length_rule 'ratio'")
        if config.freeze_word_embeddings:
            model.embeddings.word_embeddings.weight.requires_grad_(False)
        if config.trainable == "scorer":
            if model.scorer is None:
                raise QualaError("trainable 'scorer' needs significance 'learned' (set significance: learned)")
            for p in model.parameters():
                p.requires_grad_(False)
            model.scorer.requires_grad_(True)
        if config.compile:
            for layer in model.layers:
                for block in (layer.attention.output, layer.intermediate, layer.output):
                    block.compile(dynamic=True)
        decay, no_decay, scorer = [], [], []
        scorer_ids = {id(p) for p in model.scorer.parameters()} if model.scorer is not None else set()
        modules = [model] + ([self.intermediate] if self.intermediate is not None else [])
        for module in modules:
            for name, p in module.named_parameters():
                if not p.requires_grad:
                    continue
                if id(p) in scorer_ids:
                    scorer.append(p)
                else:
                    (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith("bias") else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if scorer:
            groups.append({"params": scorer, "weight_decay": 0.0, "lr": config.scorer.lr or config.lr})
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)
        acc = self.accelerator
        self.micro_per_epoch = len(self._epoch_batches(0))
        self.steps_per_epoch = max(1, self.micro_per_epoch // config.grad_accum)
        self.total_steps = config.max_steps or math.ceil(config.epochs * self.steps_per_epoch)
        scheduler = linear_schedule(optimizer, int(config.warmup_ratio * self.total_steps), self.total_steps)
        # the scheduler stays unwrapped: total_steps already counts global optimizer steps, whereas
        # accelerate's wrapper would step it once per process
        self.scheduler = scheduler
        if self.intermediate is not None:
            model, self.intermediate, self.optimizer = acc.prepare(model, self.intermediate, optimizer)
        else:
            model, self.optimizer = acc.prepare(model, optimizer)
        self.model = model
        self.teacher = teacher.to(acc.device).eval() if teacher is not None else None
        self.step = 0
        self.epoch = 0
        self.micro = 0  # next micro-batch of the current epoch
        self.best_f1: float | None = None
        self.best_step: int | None = None

    # ------------------------------------------------------------------------------------ data order
    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's micro-batches of ``epoch``: length-grouped, shuffled by (seed, epoch), sharded."""
        rng = np.random.default_rng([self.config.seed, epoch])
        batches = length_grouped_batches(self.features.lengths, self.config.batch_size, rng)
        n_proc, rank = self.accelerator.num_processes, self.accelerator.process_index
        usable = len(batches) // n_proc * n_proc or len(batches)
        return batches[rank:usable:n_proc] if len(batches) >= n_proc else batches

    def _tensors(self, indices: list[int]) -> dict[str, torch.Tensor]:
        pad_to = self.config.data.max_seq_length if self.config.pad_to_max_length else None
        batch = collate(self.features, indices, pad_to=pad_to, pad_id=self.tokenizer.pad_token_id or 0)
        return {k: torch.from_numpy(v).to(self.accelerator.device) for k, v in batch.items()}

    # ----------------------------------------------------------------------------------- one batch
    def _forward_full(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any, dict[str, float]]:
        """Full model on gold spans (+ teacher KD). Returns the loss, the output and logged terms."""
        need_internals = self.intermediate is not None
        out = self.model(
            batch["input_ids"],
            batch["attention_mask"],
            batch.get("token_type_ids"),
            output_hidden_states=need_internals,
            output_attentions=need_internals,
            output_token_scores=self.scorer_loss is not None,
        )
        mask = batch["attention_mask"]
        hard = self.span_loss(out.start_logits, out.end_logits, batch["start_positions"], batch["end_positions"], mask)
        logged = {"full": hard.loss.item()}
        loss = hard.loss
        if self.config.trainable == "scorer":  # the span head is frozen: only the scorer learns
            scored = self._scorer_term(batch, out, out)
            logged["scorer"] = scored.item()
            return scored, out, logged
        if self.teacher is not None:
            with torch.no_grad():
                t_out = self.teacher(
                    batch["input_ids"],
                    mask,
                    batch.get("token_type_ids") if self._teacher_types else None,
                    output_hidden_states=need_internals,
                    output_attentions=need_internals,
                )
            kd = self.kd(out.start_logits, out.end_logits, t_out.start_logits, t_out.end_logits, mask)
            alpha = self.config.kd.alpha
            loss = (1 - alpha) * hard.loss + alpha * kd.loss
            logged["kd"] = kd.loss.item()
            if self.intermediate is not None:
                inter = self.intermediate(
                    out.hidden_states, t_out.hidden_states, out.attentions, t_out.attentions, mask
                )
                loss = loss + inter.loss
                logged["intermediate"] = inter.loss.item()
        if self.scorer_loss is not None:
            scored = self._scorer_term(batch, out, out)
            loss = loss + self.config.scorer.weight * scored
            logged["scorer"] = scored.item()
        return loss, out, logged

    def _scorer_term(self, batch: dict[str, torch.Tensor], out: Any, full_out: Any) -> torch.Tensor:
        """Scorer loss of ``out``'s scored layers against where ``full_out`` (the full model) puts its answer."""
        sc = self.config.scorer
        target = answer_relevance(
            full_out.start_logits.detach(),
            full_out.end_logits.detach(),
            batch["attention_mask"],
            batch.get("token_type_ids"),
            sc.window,
            sc.question_weight,
        )
        return self.scorer_loss(out.token_scores, out.token_positions, out.token_masks, target).loss

    @property
    def _teacher_types(self) -> bool:
        return self.teacher is not None and getattr(self.teacher.config, "type_vocab_size", 1) > 1

    def _sub_loss(self, batch: dict[str, torch.Tensor], sub: SubModel, full_out: Any) -> torch.Tensor:
        out = self.model(
            batch["input_ids"],
            batch["attention_mask"],
            batch.get("token_type_ids"),
            length_config=sub.length_config,
            skip_layers=sub.skip_layers,
            output_token_scores=self.scorer_loss is not None,
        )
        mask = batch["attention_mask"]
        if self.config.length_drop.inplace_distillation:
            loss = self.inplace(
                out.start_logits,
                out.end_logits,
                full_out.start_logits.detach(),
                full_out.end_logits.detach(),
                mask,
            ).loss
        else:
            loss = self.span_loss(
                out.start_logits, out.end_logits, batch["start_positions"], batch["end_positions"], mask
            ).loss
        if self.scorer_loss is not None:
            loss = loss + self.config.scorer.weight * self._scorer_term(batch, out, full_out)
        return loss

    def _micro_batch(self, indices: list[int], sync: bool) -> dict[str, float]:
        """Forward/backward of every pass of one micro-batch; gradients sync on the step's last backward."""
        acc, ld = self.accelerator, self.config.length_drop
        batch = self._tensors(indices)
        subs = self.sampler.sandwich(ld.num_sandwich) if ld.enabled else []
        scale = 1.0 / ((1 + len(subs)) * self.config.grad_accum)
        logged: dict[str, float] = {}

        def sync_ctx(last: bool):
            return contextlib.nullcontext() if (sync and last) else acc.no_sync(self.model)

        with sync_ctx(not subs), acc.autocast():
            loss, full_out, logged = self._forward_full(batch)
            acc.backward(loss * scale)
        logged["loss"] = loss.item()
        random_losses = []
        for j, sub in enumerate(subs):
            with sync_ctx(j == len(subs) - 1), acc.autocast():
                sub_loss = self._sub_loss(batch, sub, full_out)
                acc.backward(sub_loss * scale)
            if sub.kind == "smallest":
                logged["smallest"] = sub_loss.item()
            else:
                random_losses.append(sub_loss.item())
            logged["loss"] += sub_loss.item()
        if subs:
            logged["loss"] /= 1 + len(subs)
        if random_losses:
            logged["random"] = float(np.mean(random_losses))
        return logged

    # ----------------------------------------------------------------------------------------- loop
    def train(self) -> TrainResult:
        """Run to ``total_steps`` (or until validation F1 plateaus, with ``patience``)."""
        from tqdm.auto import tqdm

        acc, cfg = self.accelerator, self.config
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_resolved(self.out, cfg)
        if cfg.resume:
            self._resume()
        self.model.train()
        if self.intermediate is not None:
            self.intermediate.train()
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not (cfg.progress and acc.is_main_process),
            dynamic_ncols=True,
        )
        t_start = time.perf_counter()
        paused = 0.0
        window: list[dict[str, float]] = []
        window_examples, window_t0 = 0, time.perf_counter()
        total_examples = 0
        while self.step < self.total_steps:
            batches = self._epoch_batches(self.epoch)
            usable = len(batches) // cfg.grad_accum * cfg.grad_accum or len(batches)
            while self.micro < usable and self.step < self.total_steps:
                group = batches[self.micro : self.micro + cfg.grad_accum]
                step_logs = []
                for k, indices in enumerate(group):
                    step_logs.append(self._micro_batch(indices, sync=k == len(group) - 1))
                    window_examples += len(indices) * acc.num_processes
                acc.clip_grad_norm_(self._trainable(), cfg.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.micro += len(group)
                self.step += 1
                window.append({k: float(np.mean([s[k] for s in step_logs])) for k in step_logs[0]})
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    seconds = time.perf_counter() - window_t0
                    rate = window_examples / max(seconds, 1e-9)
                    record = {k: round(float(np.mean([w[k] for w in window])), 5) for k in window[0]}
                    record.update(
                        step=self.step,
                        epoch=round(self.epoch + self.micro / max(1, usable), 4),
                        lr=self.scheduler.get_last_lr()[0],
                        examples_per_s=round(rate, 3),
                        elapsed_s=round(time.perf_counter() - t_start, 1),
                    )
                    self._log(record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", ex_s=f"{rate:.1f}")
                    total_examples += window_examples
                    window, window_examples, window_t0 = [], 0, time.perf_counter()
                t_pause = time.perf_counter()  # validation and checkpoints do not count towards throughput
                end_of_epoch = self.micro >= usable
                if (
                    (cfg.eval_every and self.step % cfg.eval_every == 0)
                    or (not cfg.eval_every and end_of_epoch)
                    or self.step == self.total_steps
                ):
                    self._validate()
                if self.step % cfg.save_every == 0 or self.step == self.total_steps:
                    self._save_checkpoint()
                window_t0 += time.perf_counter() - t_pause
                paused += time.perf_counter() - t_pause
                if self._plateaued(usable // cfg.grad_accum):
                    self._log({"step": self.step, "early_stop": True, "best_step": self.best_step})
                    break
            if self._plateaued(usable // cfg.grad_accum):
                if self.step % cfg.save_every != 0:
                    self._save_checkpoint()
                break
            if self.micro >= usable:
                self.epoch += 1
                self.micro = 0
        bar.close()
        seconds = time.perf_counter() - t_start
        total_examples += window_examples
        self._finish()
        return TrainResult(
            self.step,
            self.best_f1,
            self.best_step,
            round(seconds, 1),
            round(total_examples / max(seconds - paused, 1e-9), 3),
            str(self.out),
        )

    def _plateaued(self, steps_per_epoch: int) -> bool:
        """True once ``patience`` validations in a row have not improved the best validation score."""
        cfg = self.config
        if not cfg.patience or self.best_step is None:
            return False
        every = cfg.eval_every or max(1, steps_per_epoch)
        return self.step - self.best_step >= cfg.patience * every

    def _trainable(self):
        params = list(self.model.parameters())
        if self.intermediate is not None:
            params += list(self.intermediate.parameters())
        return params

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.out / METRICS, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    # ----------------------------------------------------------------------------------- validation
    def _validate(self) -> None:
        """Full-length F1 on the validation data (main process); the best model goes to the output dir."""
        acc = self.accelerator
        if self.eval_data is None:
            return
        if acc.is_main_process:
            from quala.evaluate import evaluate

            model = acc.unwrap_model(self.model)
            predictor = DevicePredictor(model, self.tokenizer)
            eval_cfg = EvalConfig(batch_size=self.config.eval_batch_size, data=self.config.data)
            full, _ = evaluate(predictor, self.eval_data, None, eval_cfg)
            record: dict[str, Any] = {
                "step": self.step,
                "eval_f1": round(full.f1, 3),
                "eval_exact_match": round(full.exact_match, 3),
                "eval_questions": full.num_questions,
                "eval_seconds": full.seconds,
            }
            select = self.selection
            score = full.f1
            if self.config.length_drop.enabled or model.scorer is not None or select != "full":
                small = self.sampler.smallest().length_config
                sub, _ = evaluate(predictor, self.eval_data, small, eval_cfg)
                record.update(eval_f1_smallest=round(sub.f1, 3), smallest_length_config=small)
                score = {"full": full.f1, "smallest": sub.f1, "mean": (full.f1 + sub.f1) / 2}[select]
            self._log(record)
            if self.best_f1 is None or score > self.best_f1:
                self.best_f1, self.best_step = score, self.step
                self._save_model(self.out)
            model.train()
        acc.wait_for_everyone()

    @property
    def selection(self) -> str:
        """Which validation F1 picks the saved model (``TrainConfig.select``)."""
        return self.config.select or ("smallest" if self.config.trainable == "scorer" else "full")

    # ---------------------------------------------------------------------------------- checkpoints
    def _save_model(self, directory: Path) -> None:
        with _quiet_hf():
            self._save_model_files(directory)

    def _save_model_files(self, directory: Path) -> None:
        """Model + tokenizer, each file replaced atomically; the manifest is written last."""
        model = self.accelerator.unwrap_model(self.model)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".tmp-model-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        for item in tmp.iterdir():
            os.replace(item, directory / item.name)
        tmp.rmdir()

    def _save_checkpoint(self) -> None:
        acc = self.accelerator
        root = self.out / CHECKPOINTS
        final = root / f"step-{self.step}"
        tmp = root / f".tmp-step-{self.step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            with _quiet_hf():
                acc.unwrap_model(self.model).save_pretrained(tmp)
            save_optimizer(self.optimizer, tmp)
            write_json_atomic(tmp / "scheduler.json", self.scheduler.state_dict())
            if self.intermediate is not None:
                from safetensors.torch import save_file

                save_file(
                    {k: v.contiguous() for k, v in acc.unwrap_model(self.intermediate).state_dict().items()},
                    str(tmp / "objectives.safetensors"),
                )
        acc.wait_for_everyone()
        self._save_rng(tmp / f"rng-{acc.process_index}.safetensors")
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "micro_batch": self.micro,
                "best_f1": self.best_f1,
                "best_step": self.best_step,
                "sampler": self.sampler.state(),
                "num_processes": acc.num_processes,
                "total_steps": self.total_steps,
            }
            write_json_atomic(tmp / STATE, state)  # written last: marks the checkpoint complete
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in sorted(self._checkpoints())[: -self.config.keep_checkpoints]:
                shutil.rmtree(old[1], ignore_errors=True)
        acc.wait_for_everyone()

    def _save_rng(self, path: Path) -> None:
        from safetensors.torch import save_file

        tensors = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"torch_cuda_{i}"] = s
        save_file(tensors, str(path))

    def _checkpoints(self) -> list[tuple[int, Path]]:
        root = self.out / CHECKPOINTS
        if not root.is_dir():
            return []
        found = []
        for d in root.glob("step-*"):
            if (d / STATE).is_file() and d.name[5:].isdigit():
                found.append((int(d.name[5:]), d))
        return found

    def _resume(self) -> None:
        from safetensors.torch import load_file, load_model

        found = self._checkpoints()
        if not found:
            if self.accelerator.is_main_process:
                print(f"--resume: no checkpoint in {self.out / CHECKPOINTS}, starting from scratch", flush=True)
            return
        step, ckpt = max(found)
        state = json.loads((ckpt / STATE).read_text(encoding="utf-8"))
        if state["num_processes"] != self.accelerator.num_processes:
            raise QualaError(
                f"checkpoint {ckpt} was written by {state['num_processes']} processes; resume with "
                f"the same number (got {self.accelerator.num_processes})"
            )
        model = self.accelerator.unwrap_model(self.model)
        load_model(model.hf, str(ckpt / "model.safetensors"), device="cpu")
        load_optimizer(self.optimizer, ckpt)
        self.scheduler.load_state_dict(json.loads((ckpt / "scheduler.json").read_text(encoding="utf-8")))
        if self.intermediate is not None:
            self.accelerator.unwrap_model(self.intermediate).load_state_dict(
                load_file(str(ckpt / "objectives.safetensors"))
            )
        rng = load_file(str(ckpt / f"rng-{self.accelerator.process_index}.safetensors"))
        torch.set_rng_state(rng["torch_cpu"])
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all([rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")])
        self.step, self.epoch, self.micro = state["step"], state["epoch"], state["micro_batch"]
        self.best_f1, self.best_step = state["best_f1"], state["best_step"]
        self.sampler.set_state(state["sampler"])
        if self.accelerator.is_main_process:
            print(f"resumed from {ckpt} (step {step})", flush=True)

    def _finish(self) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return
        if self.eval_data is None:
            self._save_model(self.out)
        cfg = self.config
        write_manifest(
            self.out,
            "train",
            source_model=cfg.model,
            teacher=cfg.kd.teacher,
            length_drop=cfg.length_drop.enabled,
            train_data=[
                {"file": f, "articles": a}
                for f, a in zip(cfg.train_files, cfg.train_articles or [None] * len(cfg.train_files), strict=True)
            ],
            eval_data={"file": cfg.eval_file, "articles": cfg.eval_articles} if cfg.eval_file else None,
            steps=self.step,
            best_f1=self.best_f1,
            best_step=self.best_step,
            selected="last step" if self.eval_data is None else f"best validation F1 ({self.selection})",
            machine=machine_info(),
        )


# ------------------------------------------------------------------------------------------- building
def build_trainer(config: TrainConfig) -> Trainer:
    """Load model, teacher, tokenizer and data, checking every input before any training starts."""
    config.check_io()
    out = Path(config.output_dir)
    if not config.resume and (out / CHECKPOINTS).is_dir() and any((out / CHECKPOINTS).glob("step-*")):
        raise QualaError(
            f"{out} holds checkpoints of an earlier run; pass --resume to continue it or choose another --output-dir"
        )
    if out.exists() and not out.is_dir():
        raise QualaError(f"--output-dir {out} exists and is not a directory")
    train_sets = load_train_data(config)
    eval_data = None
    if config.eval_file:
        eval_data = load_squad(config.eval_file, config.eval_articles).spread(config.max_eval_examples)
    model = LengthAdaptiveQA.from_pretrained(config.model, seed=config.seed)
    if config.significance and config.significance != model.la_config.significance:
        model = model.with_significance(config.significance, seed=config.seed)
    tokenizer = load_tokenizer(config.model)
    teacher = None
    if config.kd.teacher:
        teacher = LengthAdaptiveQA.from_pretrained(config.kd.teacher)
        check_same_vocab(tokenizer, load_tokenizer(config.kd.teacher), config.kd.teacher)
    if config.data.max_seq_length > model.config.max_position_embeddings:
        raise QualaError(
            f"max_seq_length {config.data.max_seq_length} exceeds the model's "
            f"{model.config.max_position_embeddings} positions"
        )
    examples = [ex for data in train_sets for ex in data.examples]
    if config.max_train_examples:
        examples = examples[: config.max_train_examples]
    features = prepare_features(examples, tokenizer, config.data, training=True)
    return Trainer(config, model, tokenizer, features, eval_data, teacher)


def train(config: TrainConfig) -> TrainResult | None:
    """Build and run a trainer; the main process returns the summary (also in ``metrics.jsonl``)."""
    trainer = build_trainer(config)
    result = trainer.train()
    if not trainer.accelerator.is_main_process:
        return None
    trainer._log({"summary": asdict(result)})
    return result
