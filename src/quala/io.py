"""Atomic file output, JSON reading and the machine description every result records.

Files are written to a temporary name in the same directory and renamed into place, so an interrupted run never
leaves a half-written artifact behind. The ``manifest.json`` each stage writes is :mod:`quala.model_dir`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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
        # mkstemp creates the file 0600; an artifact gets the mode a plain open() would give it (0666 & ~umask)
        set_umask_mode(tmp_path)
        _fsync(tmp_path)
        os.replace(tmp_path, path)
        _fsync(path.parent)  # the rename itself survives a power cut only once the directory is synced
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def set_umask_mode(path: str | os.PathLike) -> None:
    """Give a file the mode a plain ``open()`` would (0666 & ~umask): writers that go through a private temporary
    file (mkstemp, and Hugging Face's safetensors writer) leave it 0600."""
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Refuse, before any work, an output file path that cannot be written: a directory, or a parent that is a
    file or not writable. Missing parent directories are fine (they are created at write time)."""
    from quala.errors import QualaError

    path = Path(path)
    if path.is_dir():
        raise QualaError(f"{flag} {path} is a directory; give a file path such as {path / 'out.json'}")
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise QualaError(f"{flag} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise QualaError(f"{flag} {path}: {parent} is not writable; choose another path")
    return path


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


def machine_info() -> dict[str, Any]:
    """CPU, its int8/bf16-relevant instruction sets, core count and library versions, stored next to every timing."""
    import torch

    info: dict[str, Any] = {
        "cpu": _cpu_name(),
        "isa_flags": cpu_isa_flags(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {"torch": torch.__version__},
    }
    if torch.cuda.is_available():  # training runs record the accelerator they ran on
        info["gpu"] = torch.cuda.get_device_name(0)
    for name in ("transformers", "onnxruntime", "onnx", "numpy"):
        with contextlib.suppress(ImportError):
            info["versions"][name] = __import__(name).__version__
    return info


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)  # what decides int8/fp32 kernel speed


def cpu_isa_flags(cpuinfo: str | None = None) -> list[str]:
    """The vector ISA extensions of this CPU that matter for inference speed (int8 VNNI/AMX, bf16), in
    :data:`ISA_FLAGS` order, from ``/proc/cpuinfo`` (or the given text); [] where it cannot be read."""
    if cpuinfo is None:
        cpuinfo = ""
        with contextlib.suppress(OSError):
            cpuinfo = Path("/proc/cpuinfo").read_text()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return [f for f in ISA_FLAGS if f in present]
    return []


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
