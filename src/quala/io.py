"""Atomic file output and stage manifests.

Every stage writes a directory (``save_pretrained`` style) plus a small ``manifest.json`` that says which stage
wrote it, from what, and when. Files are written to a temporary name in the same directory and renamed into
place, so an interrupted run never leaves a half-written artifact behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file raises a :class:`~quala.errors.QualaError`."""
    from quala.errors import QualaError

    path = Path(path)
    if not path.is_file():
        raise QualaError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QualaError(f"{path} is not valid JSON ({exc}); pass a UTF-8 JSON file") from None


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def machine_info() -> dict[str, Any]:
    """CPU, its int8/bf16-relevant instruction sets, core count and library versions, stored next to every timing."""
    import torch

    info: dict[str, Any] = {
        "cpu": _cpu_name(),
        "isa": cpu_isa(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {"torch": torch.__version__},
    }
    for name in ("transformers", "onnxruntime", "onnx", "numpy"):
        with contextlib.suppress(ImportError):
            info["versions"][name] = __import__(name).__version__
    return info


def cpu_isa(cpuinfo: str | None = None) -> dict[str, bool]:
    """Which of :data:`ISA_FLAGS` the CPU reports (``/proc/cpuinfo`` flags; all False where unreadable).

    They decide the int8 kernels ONNX Runtime can use (VNNI, AMX), so a timing means little without them.
    """
    if cpuinfo is None:
        cpuinfo = ""
        with contextlib.suppress(OSError):
            cpuinfo = Path("/proc/cpuinfo").read_text()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {flag: flag in flags for flag in ISA_FLAGS}


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def write_manifest(directory: str | os.PathLike, stage: str, **fields: Any) -> None:
    """Write ``manifest.json``: the stage that produced ``directory``, its inputs and a timestamp."""
    from quala import __version__

    manifest = {"stage": stage, "quala_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    manifest.update(fields)
    write_json_atomic(Path(directory) / MANIFEST, manifest)


def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
