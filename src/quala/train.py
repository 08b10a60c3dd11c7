"""Training: span-QA fine-tuning, knowledge distillation and LengthDrop, on CPU, one GPU or many (accelerate).

One loop serves every mode:

- plain fine-tuning: start/end cross-entropy (:class:`~quala.objectives.SpanLoss`);
- distillation from a teacher (``kd.teacher``): prediction-layer KD mixed with the hard loss by ``kd.alpha``,
  optionally intermediate-layer KD (TinyBERT §3.1, Dynamic-TinyBERT §3);
- LengthDrop (``length_drop.enabled``, LAT §3.1–3.3): per batch the full model on gold spans, the smallest
  sub-model and ``num_sandwich`` random sub-models (with LayerDrop) trained by in-place distillation on both
  start and end logits; each pass has its own backward, losses divided by the number of passes, one clip and
  one optimizer step (sandwich rule, Yu & Huang 2019).

``train(model, data, output, config)`` is the stage: the starting model, the training and validation questions
(:class:`~quala.data.TrainData`), the output directory and the settings (:mod:`quala.train_config`); checkpoints
and ``resume`` are :mod:`quala.checkpoint`. The output directory holds the model with the best validation F1 (the
full model's, or as ``select`` says; the last one without validation), which ``quala evaluate`` and ``quala
answer`` load directly. The module is one loop (:class:`Trainer`) and its builder, a little over 500 lines:
splitting the loop would spread one training step over several files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quala.checkpoint import CHECKPOINTS, Parts, resume_checkpoint, save_checkpoint, save_model_files
from quala.config import EvalConfig, save_resolved
from quala.data import Features, SquadData, TrainData, collate, length_grouped_batches, prepare_features
from quala.engine import TorchPredictor
from quala.errors import QualaError
from quala.io import machine_info
from quala.model import LengthAdaptiveQA, load_tokenizer
from quala.model_dir import ModelDir, write_manifest
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
from quala.train_config import KDConfig, TrainConfig

METRICS = "metrics.jsonl"


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


def intermediate_kd(model: LengthAdaptiveQA, teacher: LengthAdaptiveQA, kd: KDConfig) -> IntermediateKD:
    """Hidden-state and attention distillation, student layer i against teacher layer ``layer_map[i]``."""
    n_s, n_t = model.num_layers, teacher.num_layers
    layer_map = kd.layer_map or default_layer_map(n_s, n_t)
    if len(layer_map) != n_s or not all(1 <= t <= n_t for t in layer_map):
        raise QualaError(f"kd.layer_map must give one teacher layer in 1..{n_t} per student layer ({n_s})")
    return IntermediateKD(
        model.config.hidden_size, teacher.config.hidden_size, layer_map, kd.hidden_weight, kd.attention_weight
    )


def adamw(
    modules: list[torch.nn.Module],
    lr: float,
    weight_decay: float,
    own_lr: tuple[list[torch.nn.Parameter], float] = ([], 0.0),
) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and LayerNorm weights (Devlin et al. 2019); ``own_lr`` gives some
    parameters (the learned token scorer) a learning rate of their own, without weight decay."""
    special = {id(p) for p in own_lr[0]}
    decay, no_decay, own = [], [], []
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if id(p) in special:
                own.append(p)
            else:
                (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith("bias") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        {"params": own, "weight_decay": 0.0, "lr": own_lr[1]},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


# ------------------------------------------------------------------------------------------- trainer
class Trainer:
    """The training loop. Build it with :func:`build_trainer` (questions) or directly (features in memory).

    ``sources``: what ``manifest.json`` records about where the model and the data came from.
    """

    def __init__(
        self,
        model: LengthAdaptiveQA,
        tokenizer: Any,
        train_features: Features,
        output: str | Path,
        config: TrainConfig,
        eval_data: SquadData | None = None,
        teacher: LengthAdaptiveQA | None = None,
        sources: dict[str, Any] | None = None,
    ):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.config = config
        self.out = Path(output)
        self.sources = sources or {}
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
            self.intermediate = intermediate_kd(model, teacher, config.kd)
        self.sampler = LengthDropSampler(
            model.num_layers,
            model.la_config.reference_length,
            ld.bound,
            ld.layer_drop_prob,
            seed=config.seed,
            smallest=ld.smallest,
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
        k = config.scorer.question_layers
        if k is not None:
            if model.scorer is None or model.scorer.question is None:
                raise QualaError("scorer.question_layers needs a question scorer (scorer.question: true)")
            keep = (torch.arange(model.num_layers) < k).to(model.scorer.question.dtype)[:, None, None]  # (N, 1, 1)
            with torch.no_grad():
                model.scorer.question.mul_(keep)  # later layers stay linear: U = 0, and no gradient moves it
            # the hook runs on the training device, which the model reaches only later (accelerate's prepare)
            model.scorer.question.register_hook(lambda grad: grad * keep.to(grad.device))
        if config.compile:
            for layer in model.layers:
                for block in (layer.attention.output, layer.intermediate, layer.output):
                    block.compile(dynamic=True)
        modules = [model] + ([self.intermediate] if self.intermediate is not None else [])
        scorer = list(model.scorer.parameters()) if model.scorer is not None else []
        optimizer = adamw(modules, config.lr, config.weight_decay, own_lr=(scorer, config.scorer.lr or config.lr))
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
                logged, examples = self._optimizer_step(batches[self.micro : self.micro + cfg.grad_accum])
                window.append(logged)
                window_examples += examples
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
                if self._validation_due(end_of_epoch=self.micro >= usable):
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

    def _optimizer_step(self, group: list[list[int]]) -> tuple[dict[str, float], int]:
        """One optimizer step over the micro-batches of ``group``: the logged terms (mean over the micro-batches)
        and the training features it took, all processes together."""
        acc = self.accelerator
        step_logs, examples = [], 0
        for k, indices in enumerate(group):
            step_logs.append(self._micro_batch(indices, sync=k == len(group) - 1))
            examples += len(indices) * acc.num_processes
        acc.clip_grad_norm_(self._trainable(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.micro += len(group)
        self.step += 1
        return {k: float(np.mean([s[k] for s in step_logs])) for k in step_logs[0]}, examples

    def _validation_due(self, end_of_epoch: bool) -> bool:
        cfg = self.config
        every = cfg.eval_every and self.step % cfg.eval_every == 0
        return bool(every or (not cfg.eval_every and end_of_epoch) or self.step == self.total_steps)

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
            predictor = TorchPredictor(model, self.tokenizer)
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
        save_model_files(self.accelerator.unwrap_model(self.model), self.tokenizer, directory)

    def _save_checkpoint(self) -> None:
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "micro_batch": self.micro,
            "best_f1": self.best_f1,
            "best_step": self.best_step,
            "sampler": self.sampler.state(),
            "num_processes": self.accelerator.num_processes,
            "total_steps": self.total_steps,
        }
        parts = Parts(self.model, self.optimizer, self.scheduler, self.intermediate)
        save_checkpoint(self.accelerator, self.out, parts, state, self.config.keep_checkpoints)

    def _resume(self) -> None:
        parts = Parts(self.model, self.optimizer, self.scheduler, self.intermediate)
        state = resume_checkpoint(self.accelerator, self.out, parts)
        if state is None:
            return
        self.step, self.epoch, self.micro = state["step"], state["epoch"], state["micro_batch"]
        self.best_f1, self.best_step = state["best_f1"], state["best_step"]
        self.sampler.set_state(state["sampler"])

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
            **self.sources,
            teacher=cfg.kd.teacher,
            length_drop=cfg.length_drop.enabled,
            steps=self.step,
            best_f1=self.best_f1,
            best_step=self.best_step,
            selected="last step" if self.eval_data is None else f"best validation F1 ({self.selection})",
            machine=machine_info(),
        )


# ------------------------------------------------------------------------------------------- building
def build_trainer(
    model: str | Path | ModelDir, data: TrainData, output: str | Path, config: TrainConfig | None = None
) -> Trainer:
    """Load the model, teacher and tokenizer and tokenise the data, checking every input before any training
    starts."""
    config = config or TrainConfig()
    out = Path(output)
    if not config.resume and (out / CHECKPOINTS).is_dir() and any((out / CHECKPOINTS).glob("step-*")):
        raise QualaError(
            f"{out} holds checkpoints of an earlier run; pass --resume to continue it or choose another --output-dir"
        )
    if out.exists() and not out.is_dir():
        raise QualaError(f"--output-dir {out} exists and is not a directory")
    if not data.train:
        raise QualaError("no training data: give at least one --train-file")
    eval_data = data.validation.spread(config.max_eval_examples) if data.validation is not None else None
    source = ModelDir.resolve(model)
    model = LengthAdaptiveQA.from_pretrained(source, seed=config.seed)
    significance = config.significance or model.la_config.significance
    question = config.scorer.question if config.scorer.question is not None else model.la_config.scorer_question
    if (significance, question) != (model.la_config.significance, model.la_config.scorer_question):
        model = model.with_significance(significance, seed=config.seed, scorer_question=question)
    tokenizer = load_tokenizer(source)
    teacher = None
    if config.kd.teacher:
        teacher = LengthAdaptiveQA.from_pretrained(config.kd.teacher)
        check_same_vocab(tokenizer, load_tokenizer(config.kd.teacher), config.kd.teacher)
    if config.data.max_seq_length > model.config.max_position_embeddings:
        raise QualaError(
            f"max_seq_length {config.data.max_seq_length} exceeds the model's "
            f"{model.config.max_position_embeddings} positions"
        )
    examples = [ex for split in data.train for ex in split.examples][: config.max_train_examples]
    features = prepare_features(examples, tokenizer, config.data, training=True)
    sources = {
        "source_model": source.name,
        "train_data": [split.describe() for split in data.train],
        "eval_data": eval_data.describe() if eval_data is not None else None,
    }
    return Trainer(model, tokenizer, features, out, config, eval_data, teacher, sources)


def train(
    model: str | Path | ModelDir, data: TrainData, output: str | Path, config: TrainConfig | None = None
) -> TrainResult | None:
    """The train stage: train ``model`` on ``data`` into ``output``. Every process trains (under ``accelerate
    launch`` or ``torchrun``); the main process returns the summary (also in ``metrics.jsonl``), the others None."""
    trainer = build_trainer(model, data, output, config)
    result = trainer.train()
    if not trainer.accelerator.is_main_process:
        return None
    trainer._log({"summary": asdict(result)})
    return result
