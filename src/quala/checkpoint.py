"""Training checkpoints: written atomically under ``checkpoints/step-N/``, and resumed.

A checkpoint holds the model (safetensors), the optimizer state (safetensors + JSON, never a pickle), the
scheduler, each process's RNG state, the intermediate-KD projections when there are any, and the trainer's
position (``trainer_state.json``, written last: it marks the checkpoint complete). It is built in a temporary
directory that is renamed into place, so a resumed run always finds a complete one; the oldest are removed
beyond ``keep``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from quala.errors import QualaError
from quala.io import write_json_atomic

CHECKPOINTS = "checkpoints"
STATE = "trainer_state.json"


@dataclass
class Parts:
    """What a checkpoint saves and restores besides the trainer's position (model and KD wrapped by accelerate)."""

    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    intermediate: Any | None


@contextlib.contextmanager
def quiet_hf():
    """No Hugging Face progress bars while saving (they would break the training bar)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def save_model_files(model: Any, tokenizer: Any, directory: Path) -> None:
    """Model + tokenizer, each file replaced atomically; the manifest is written last."""
    with quiet_hf():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".tmp-model-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for item in tmp.iterdir():
            os.replace(item, directory / item.name)
        tmp.rmdir()


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


# ------------------------------------------------------------------------------------------- checkpoints
def save_rng(path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    save_file(tensors, str(path))


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints under ``out`` as (step, directory)."""
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for d in root.glob("step-*"):
        if (d / STATE).is_file() and d.name[5:].isdigit():
            found.append((int(d.name[5:]), d))
    return found


def save_checkpoint(acc: Any, out: Path, parts: Parts, state: dict[str, Any], keep: int) -> None:
    """Write ``checkpoints/step-{state['step']}`` (every process its RNG state), keeping the ``keep`` newest."""
    step = state["step"]
    root = out / CHECKPOINTS
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with quiet_hf():
            acc.unwrap_model(parts.model).save_pretrained(tmp)
        save_optimizer(parts.optimizer, tmp)
        write_json_atomic(tmp / "scheduler.json", parts.scheduler.state_dict())
        if parts.intermediate is not None:
            from safetensors.torch import save_file

            save_file(
                {k: v.contiguous() for k, v in acc.unwrap_model(parts.intermediate).state_dict().items()},
                str(tmp / "objectives.safetensors"),
            )
    acc.wait_for_everyone()
    save_rng(tmp / f"rng-{acc.process_index}.safetensors")
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_json_atomic(tmp / STATE, state)  # written last: marks the checkpoint complete
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(list_checkpoints(out))[:-keep]:
            shutil.rmtree(old[1], ignore_errors=True)
    acc.wait_for_everyone()


def resume_checkpoint(acc: Any, out: Path, parts: Parts) -> dict[str, Any] | None:
    """Restore ``parts`` and the RNG from the newest checkpoint under ``out``; returns the trainer's position
    (None, with a note, when there is no checkpoint)."""
    from safetensors.torch import load_file, load_model

    found = list_checkpoints(out)
    if not found:
        if acc.is_main_process:
            print(f"--resume: no checkpoint in {out / CHECKPOINTS}, starting from scratch", flush=True)
        return None
    step, ckpt = max(found)
    state = json.loads((ckpt / STATE).read_text(encoding="utf-8"))
    if state["num_processes"] != acc.num_processes:
        raise QualaError(
            f"checkpoint {ckpt} was written by {state['num_processes']} processes; resume with "
            f"the same number (got {acc.num_processes})"
        )
    model = acc.unwrap_model(parts.model)
    load_model(model.hf, str(ckpt / "model.safetensors"), device="cpu")
    load_optimizer(parts.optimizer, ckpt)
    parts.scheduler.load_state_dict(json.loads((ckpt / "scheduler.json").read_text(encoding="utf-8")))
    if parts.intermediate is not None:
        acc.unwrap_model(parts.intermediate).load_state_dict(load_file(str(ckpt / "objectives.safetensors")))
    rng = load_file(str(ckpt / f"rng-{acc.process_index}.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")])
    if acc.is_main_process:
        print(f"resumed from {ckpt} (step {step})", flush=True)
    return state
