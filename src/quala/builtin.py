"""The built-in model ``builtin:quala-minilm``: the pipeline's trained QuaLA-MiniLM, shipped inside the package.

The directory ``quala/assets/models/quala-minilm/`` holds fp16 safetensors weights (half the size of fp32; the
engine loads them as fp32), ``config.json`` with the length-adaptive settings, the tokenizer, the search front
(``search.json``), ``MODEL_CARD.md``, ``results.json`` (the numbers the card was generated from) and
``checksums.sha256`` (``sha256sum -c`` format) over every other file. :func:`package_builtin` writes it from a
``quala pipeline`` output directory.

The int8 ONNX Runtime model (QuaLA §3.3) is not shipped: the first onnxruntime use builds it with
:func:`quala.quantize.quantize` into a cache directory keyed by the checksum manifest and
:data:`quala.export.GRAPH_VERSION`, in a temporary directory renamed into place, with its own checksum manifest.
A cache entry whose files do not match it (corrupt, or half-written by hand or by a full disk) is rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from quala.errors import QualaError
from quala.io import sha256_file

BUILTIN_MODEL = "builtin:quala-minilm"  # the name that model options accept
BUILTIN_DIR = Path(__file__).resolve().parent / "assets" / "models" / "quala-minilm"
WEIGHTS = "model.safetensors"
CHECKSUMS = "checksums.sha256"
CACHE_ENV = "QUALA_CACHE"


# ------------------------------------------------------------------------------------------ checksums
def file_hashes(directory: str | Path) -> dict[str, str]:
    """SHA-256 of every file under ``directory`` but the manifest itself, by POSIX relative path."""
    root = Path(directory)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def write_checksums(directory: str | Path) -> Path:
    """Write ``checksums.sha256`` (one ``HASH  NAME`` line per file, as ``sha256sum`` prints)."""
    path = Path(directory) / CHECKSUMS
    lines = [f"{digest}  {name}\n" for name, digest in file_hashes(directory).items()]
    path.write_text("".join(lines), encoding="utf-8")
    path.chmod(0o644)
    return path


def read_checksums(directory: str | Path) -> dict[str, str]:
    path = Path(directory) / CHECKSUMS
    if not path.is_file():
        raise QualaError(f"{directory} has no {CHECKSUMS}")
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name:
            raise QualaError(f"{path}:{n} is not a 'SHA256  NAME' line")
        out[name] = digest
    return out


def verify_checksums(directory: str | Path) -> None:
    """Raise a :class:`QualaError` naming every file that is missing, changed or not in the manifest."""
    expected, found = read_checksums(directory), file_hashes(directory)
    problems = [f"{name}: missing" for name in expected if name not in found]
    problems += [f"{name}: changed" for name in expected if name in found and found[name] != expected[name]]
    problems += [f"{name}: not in {CHECKSUMS}" for name in found if name not in expected]
    if problems:
        raise QualaError(f"{directory} does not match its {CHECKSUMS} ({'; '.join(problems)}); reinstall quala")


def model_key(directory: str | Path) -> str:
    """Identity of a packaged model: the hash of its checksum manifest (so of every file in it)."""
    return hashlib.sha256((Path(directory) / CHECKSUMS).read_bytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ resolution
def builtin_dir(require_weights: bool = True) -> Path:
    """The built-in model's directory; a clear error when this installation has no weights in it."""
    if require_weights and not (BUILTIN_DIR / WEIGHTS).is_file():
        raise QualaError(
            f"the built-in model {BUILTIN_MODEL} is not packaged in this installation ({BUILTIN_DIR} has no "
            f"{WEIGHTS}): pass --model DIR (a trained model directory, or packaged:minilm for the untrained "
            "MiniLM), or package one with quala package-builtin --run PIPELINE_OUTPUT_DIR"
        )
    return BUILTIN_DIR


def cache_root() -> Path:
    """``$QUALA_CACHE``, else ``$XDG_CACHE_HOME/quala``, else ``~/.cache/quala``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "quala"


def _valid(entry: Path) -> bool:
    try:
        verify_checksums(entry)
    except QualaError:
        return False
    return True


def _remove_stale_builds(parent: Path, keep: Path) -> None:
    """Temporary build directories left by processes that no longer run (killed mid-build)."""
    for tmp in parent.glob(".build-*"):
        if tmp == keep:
            continue
        try:
            os.kill(int(tmp.name.split("-")[1]), 0)
        except (ValueError, IndexError, ProcessLookupError):
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def int8_model(directory: str | Path | None = None) -> Path:
    """The int8 ONNX Runtime model of a packaged model (default: the built-in one), built on first use."""
    source = Path(directory) if directory is not None else builtin_dir()
    read_checksums(source)  # a packaged model has a checksum manifest: it names the cache entry
    from quala.export import GRAPH_VERSION

    # a new export (GRAPH_VERSION) builds a new entry: an old build would keep serving the old graph
    entry = cache_root() / "int8" / f"{source.name}-{model_key(source)}-g{GRAPH_VERSION}"
    if _valid(entry):
        return entry
    from quala.quantize import quantize

    verify_checksums(source)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=f".build-{os.getpid()}-", dir=entry.parent))
    except OSError as exc:
        raise QualaError(
            f"cannot write the int8 model cache in {entry.parent} ({exc.strerror}); set {CACHE_ENV} to a "
            "writable directory, or use --backend torch"
        ) from None
    _remove_stale_builds(entry.parent, keep=build)
    what = "rebuilding the corrupt" if entry.exists() else "building the"
    print(f"[quala] {what} int8 model of {source.name} in {entry} (once, about a minute)", file=sys.stderr, flush=True)
    root_logger = logging.getLogger()  # onnxruntime's quantizer warns on the root logger about pre-processing
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)
    try:
        quantize(source, None, build / "model")
        root_logger.setLevel(level)
        write_checksums(build / "model")
        if entry.exists():
            shutil.rmtree(entry)
        try:
            os.replace(build / "model", entry)
        except OSError:  # another process renamed its build into place first
            if not _valid(entry):
                raise
    finally:
        root_logger.setLevel(level)
        shutil.rmtree(build, ignore_errors=True)
    return entry


# ------------------------------------------------------------------------------------------ packaging
@dataclass
class PackageResult:
    """What :func:`package_builtin` wrote."""

    directory: Path
    source_model: Path
    files: dict[str, int]  # name -> bytes
    size_mb: float


def pipeline_model(run_dir: Path) -> Path:
    """The length-adaptive model of a pipeline run (the LengthDrop stage's, else the fine-tuned one)."""
    from quala.io import read_json
    from quala.pipeline import STATE_FILE, trained_model_dir

    state = read_json(run_dir / STATE_FILE) if (run_dir / STATE_FILE).is_file() else {"completed": {}}
    model = trained_model_dir(run_dir, [s for s in state["completed"] if (run_dir / s / WEIGHTS).is_file()])
    if model is not None:
        return model
    raise QualaError(
        f"{run_dir} has no completed lengthdrop or finetune stage with {WEIGHTS}; pass the "
        "output directory of a finished quala pipeline run"
    )


def package_builtin(run_dir: str | Path, output: str | Path | None = None, force: bool = False) -> PackageResult:
    """Write the built-in model directory from a pipeline output directory (fp16 weights, card, checksums).

    Every input is checked before anything is written; the directory is built in a temporary sibling and
    renamed into place, so ``output`` is either the old model or the complete new one.
    """
    import torch

    from quala.card import collect_results, render_card, write_results
    from quala.model import LengthAdaptiveQA, load_tokenizer
    from quala.model_dir import SEARCH_FILE

    run_dir, output = Path(run_dir), Path(output) if output is not None else BUILTIN_DIR
    if not run_dir.is_dir():
        raise QualaError(f"pipeline output directory {run_dir} does not exist")
    if output.exists() and any(output.iterdir()) and not force:
        raise QualaError(f"{output} already holds a model; pass --force to replace it")
    source = pipeline_model(run_dir)
    results = collect_results(run_dir, source)  # raises when a results file is missing, before the slow part
    render_card(results)  # and when they cannot make a card
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        from transformers.utils import logging as hf_logging

        model = LengthAdaptiveQA.from_pretrained(source)
        model.hf.half()
        if not all(torch.isfinite(p).all() for p in model.hf.parameters()):
            raise QualaError(f"{source} has weights beyond the fp16 range (|w| > 65504); it cannot ship as fp16")
        hf_logging.disable_progress_bar()
        try:
            model.save_pretrained(tmp)
        finally:
            hf_logging.enable_progress_bar()
        load_tokenizer(source).save_pretrained(tmp)
        shutil.copyfile(run_dir / "search" / SEARCH_FILE, tmp / SEARCH_FILE)
        results["package"] = {
            "weights": WEIGHTS,
            "dtype": "float16",
            "weights_mb": round((tmp / WEIGHTS).stat().st_size / 1e6, 1),
        }
        write_results(tmp, results)
        (tmp / "MODEL_CARD.md").write_text(render_card(results), encoding="utf-8")
        for path in tmp.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        write_checksums(tmp)
        tmp.chmod(0o755)
        old = None
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old.", dir=output.parent))
            os.replace(output, old / "model")
        os.replace(tmp, output)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = {p.relative_to(output).as_posix(): p.stat().st_size for p in sorted(output.rglob("*")) if p.is_file()}
    return PackageResult(output, source, files, round(sum(files.values()) / 1e6, 1))
