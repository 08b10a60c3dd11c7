#!/usr/bin/env python3
"""One device call: the squad-mini-full preset on a GPU (issue 15), sized to a wall-clock budget.

probe (2 concurrent fine-tunes, then 2 concurrent LengthDrops) -> fine-tune lr A || lr B -> LengthDrop linear
scorer || question scorer from the better fine-tune -> evaluate all on the 1,746 validation questions -> export
the better LengthDrop model in fp16 parts + logs to $OUT.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
T0 = time.time()
FT_FEATURES, LD_FEATURES = 37598, 32238  # training features per epoch at 256/128 and 384/128 (measured here)
SMALLEST = [308, 247, 198, 159, 128, 103]
CONFIGS = {  # the earlier runs' front points, evaluated on every LengthDrop model
    "0.69": [384, 384, 384, 150, 120, 60],
    "0.60": [379, 342, 263, 168, 65, 65],
    "0.548": [377, 322, 239, 116, 54, 52],
    "smallest": SMALLEST,
}


def el() -> float:
    return time.time() - T0


def log(msg: str) -> None:
    line = f"[{el():6.1f}s] {msg}"
    print(line, flush=True)
    with open(ARGS.out / "drive.log", "a") as f:
        f.write(line + "\n")


def setup() -> dict:
    data = ARGS.work / "data"
    if not data.exists():
        data.mkdir(parents=True)
        with tarfile.open(ROOT / "gpu/data.tgz") as t:
            t.extractall(data, filter="data")
    model = ARGS.work / "minilm"
    if not (model / "model.safetensors").exists():
        import torch
        from safetensors.torch import load_file, save_file

        model.mkdir(parents=True, exist_ok=True)
        for f in (ROOT / "gpu/minilm16").iterdir():
            if f.name != "model.safetensors":
                shutil.copy(f, model / f.name)
        sd = load_file(ROOT / "gpu/minilm16/model.safetensors")
        save_file(
            {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in sd.items()},
            model / "model.safetensors",
            metadata={"format": "pt"},
        )
    import torch
    import transformers

    info = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    log(f"setup done {info}")
    return info


def preset():
    sys.path.insert(0, str(ROOT / "src"))
    from quala.pipeline import load_pipeline_config

    return load_pipeline_config(str(ROOT / "configs/pipeline-squad-mini-full.yaml"), None, {})


def merge(d: dict, o: dict) -> dict:
    d = dict(d)
    for k, v in o.items():
        d[k] = merge(d[k], v) if isinstance(v, dict) and isinstance(d.get(k), dict) else v
    return d


def write_yaml(section, overrides: dict, model: str, out: Path, eval_data: bool) -> Path:
    D = str(ARGS.work / "data")
    d = merge(dataclasses.asdict(section), overrides)
    d.update(
        model=model,
        output_dir=str(out),
        progress=False,
        threads=ARGS.threads,
        train_files=[
            f"{D}/squad/train-v1.1-prefix.json",
            f"{D}/squad/dev-v1.1-part-a.json",
            f"{D}/squadshifts/amazon-reviews-v1.0.json",
            f"{D}/squadshifts/reddit-v1.0.json",
        ],
        train_articles=[":", "0:32", ":", ":"],
        eval_file=f"{D}/squad/dev-v1.1-part-a.json" if eval_data else None,
        eval_articles="32:40" if eval_data else None,
    )
    d.pop("resume", None)
    path = ARGS.work / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def launch(cfg: Path, name: str) -> subprocess.Popen:
    env = dict(
        os.environ,
        PYTHONPATH=f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}",
        PYTHONUNBUFFERED="1",
        TORCH_ALLOW_TF32_CUBLAS_OVERRIDE="1",
        TOKENIZERS_PARALLELISM="true",
    )
    logf = open(ARGS.work / f"{name}.log", "w")
    cmd = [sys.executable, str(ROOT / "gpu/run_train.py"), str(cfg)]
    return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)


def wait_all(procs: dict[str, subprocess.Popen], deadline: float) -> dict[str, int]:
    """Wait until every process ends or the deadline (seconds since start) passes; then SIGINT, then kill."""
    codes = {}
    while len(codes) < len(procs):
        for name, p in procs.items():
            if name not in codes and p.poll() is not None:
                codes[name] = p.returncode
                log(f"{name} ended rc={p.returncode}")
        if el() > deadline:
            for name, p in procs.items():
                if name not in codes:
                    log(f"{name}: deadline, stopping")
                    os.killpg(p.pid, 2)
            t = time.time()
            for name, p in procs.items():
                if name not in codes:
                    try:
                        p.wait(timeout=max(1.0, 8 - (time.time() - t)))
                    except subprocess.TimeoutExpired:
                        os.killpg(p.pid, 9)
                        p.wait()
                    codes[name] = p.returncode
            break
        time.sleep(1)
    for name, code in codes.items():
        if code not in (0, None):
            tail = (ARGS.work / f"{name}.log").read_text()[-1500:]
            log(f"{name} log tail:\n{tail}")
    return codes


def metrics(out: Path) -> list[dict]:
    f = out / "metrics.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.exists() else []


def step_time(out: Path) -> tuple[float, float]:
    """Seconds per training step after the first logged record, and seconds of the final validation."""
    rec = [r for r in metrics(out) if "elapsed_s" in r and "step" in r]
    ev = [r["eval_seconds"] for r in metrics(out) if "eval_seconds" in r]
    if len(rec) < 2:
        raise SystemExit(f"probe {out.name} logged too little: {metrics(out)[-3:]}")
    a, b = (rec[1] if len(rec) > 2 else rec[0]), rec[-1]
    return (b["elapsed_s"] - a["elapsed_s"]) / (b["step"] - a["step"]), (max(ev) if ev else 3.0)


def sizing(t_step: float, t_eval: float, features: int, batch: int, epochs: float, budget: float, n_evals_min: int):
    """Steps and eval interval that fit ``budget`` seconds (load and saves included as fixed costs)."""
    full = int(epochs * features / batch)
    fixed = 35.0
    for steps in range(full, 50, -max(1, full // 100)):
        every = max(steps // max(n_evals_min, int(0.15 * steps * t_step / max(t_eval, 0.1))), 1)
        every = max(every, steps // 40)
        if fixed + steps * t_step + (steps // every + 1) * (t_eval + 0.5) <= budget:
            return steps, every, full
    return 50, 25, full


def train_pair(kind: str, section, variants: dict[str, dict], model: str, budget: float, probe: bool):
    """Run the variants concurrently; returns their output dirs."""
    procs, outs = {}, {}
    for name, ov in variants.items():
        out = ARGS.work / name
        if out.exists():
            shutil.rmtree(out)
        cfg = write_yaml(section, ov, model, out, eval_data=True)
        procs[name], outs[name] = launch(cfg, name), out
    log(f"{kind}: launched {list(variants)} budget {budget:.0f}s")
    codes = wait_all(procs, el() + budget)
    return outs, codes


def evaluate_models(models: dict[str, Path], configs: dict[str, list[int] | None]) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from quala.data import load_squad
    from quala.engine import TorchPredictor
    from quala.evaluate import EvalConfig, evaluate
    from quala.model import LengthAdaptiveQA, load_tokenizer
    from quala.train_config import DataConfig

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    data = load_squad(ARGS.work / "data/squad/dev-v1.1-part-a.json", "32:40", ARGS.max_eval)
    cfg = EvalConfig(batch_size=64, data=DataConfig(max_seq_length=384, doc_stride=128))
    res = {}
    for name, path in models.items():
        if not (path / "model.safetensors").exists():
            log(f"eval {name}: no model")
            continue
        model = LengthAdaptiveQA.from_pretrained(path).to(dev).eval()
        pred = TorchPredictor(model, load_tokenizer(path))
        res[name] = {}
        for cname, lc in configs.items():
            if lc is not None and model.scorer is None and name.startswith("ft"):
                continue
            r, _ = evaluate(pred, data, lc, cfg)
            res[name][cname] = {"f1": round(r.f1, 3), "em": round(r.exact_match, 3), "n": r.num_questions}
        log(f"eval {name}: {res[name]}")
        (ARGS.out / "evals.json").write_text(json.dumps(res, indent=1))
    return res


def fp16_check(path: Path) -> dict:
    import torch

    from quala.data import load_squad
    from quala.engine import TorchPredictor
    from quala.evaluate import EvalConfig, evaluate
    from quala.model import LengthAdaptiveQA, load_tokenizer
    from quala.train_config import DataConfig

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = LengthAdaptiveQA.from_pretrained(path)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    model = model.to(dev).eval()
    data = load_squad(ARGS.work / "data/squad/dev-v1.1-part-a.json", "32:40", ARGS.max_eval)
    cfg = EvalConfig(batch_size=64, data=DataConfig(max_seq_length=384, doc_stride=128))
    out = {}
    for cname in ("full", "0.69", "0.548"):
        r, _ = evaluate(TorchPredictor(model, load_tokenizer(path)), data, CONFIGS.get(cname), cfg)
        out[cname] = round(r.f1, 3)
    log(f"fp16-rounded weights: {out}")
    return out


def export(path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    sd = load_file(path / "model.safetensors")
    tmp = ARGS.work / "model16.safetensors"
    save_file(
        {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in sd.items()}, tmp, metadata={"format": "pt"}
    )
    raw = tmp.read_bytes()
    part = 15 * 1024 * 1024
    for i in range(0, len(raw), part):
        (ARGS.out / f"model16.part{i // part}").write_bytes(raw[i : i + part])
    log(f"exported {path.name}: {len(raw)} bytes in {(len(raw) + part - 1) // part} parts")


def pack(names: list[str]) -> None:
    with tarfile.open(ARGS.out / "runs.tgz", "w:gz") as t:
        for name in names:
            d = ARGS.work / name
            for f in [
                "metrics.jsonl",
                "quala_config.yaml",
                "manifest.json",
                "config.json",
                "summary.json",
                "tokenizer.json",
                "tokenizer_config.json",
            ]:
                if (d / f).exists():
                    t.add(d / f, f"{name}/{f}")
            for f in (ARGS.work / f"{name}.log", ARGS.work / f"{name}.yaml"):
                if f.exists():
                    t.add(f, f"logs/{f.name}")


def main() -> None:
    if ARGS.post_only:
        sys.path.insert(0, str(ROOT / "src"))
        return post(ARGS.post_only)
    info = setup()
    (ARGS.out / "info.json").write_text(json.dumps(info, indent=1))
    cfg = preset()
    ft, ld = cfg.finetune, cfg.lengthdrop
    small = {
        "max_train_examples": ARGS.probe_examples,
        "max_eval_examples": 100,
        "eval_every": 10**6,
        "log_every": 5,
        "save_every": 10**6,
    }
    ftv = {"ft_a": {"lr": 1.0e-4}, "ft_b": {"lr": 2.0e-4}}
    ldv = {"ld_l": {}, "ld_q": {"scorer": {"question": True, "question_layers": 3}}}
    ft_common = {"batch_size": ARGS.ft_batch, "patience": 4, "save_every": 10**6, "length_drop": {"enabled": False}}
    ld_common = {"batch_size": ARGS.ld_batch, "lr": ARGS.ld_lr, "save_every": 10**6, "length_drop": {"enabled": True}}
    # --- probes
    model = str(ARGS.work / "minilm")
    outs, _ = train_pair(
        "probe-ft",
        ft,
        {f"p{k}": {**ft_common, **v, **small, "max_steps": ARGS.probe_steps} for k, v in ftv.items()},
        model,
        150,
        True,
    )
    t_ft, e_ft = max(step_time(o) for o in outs.values())
    outs, _ = train_pair(
        "probe-ld",
        ld,
        {f"p{k}": merge({**ld_common, **small, "max_steps": max(6, ARGS.probe_steps // 2)}, v) for k, v in ldv.items()},
        model,
        150,
        True,
    )
    t_ld, e_ld = max(step_time(o) for o in outs.values())
    e_ft, e_ld = e_ft * 3, e_ld * 3  # probes validate on 100 questions, runs on 300
    log(f"probe: fine-tune {t_ft:.4f} s/step (eval {e_ft:.1f}s), LengthDrop {t_ld:.4f} s/step (eval {e_ld:.1f}s)")
    left = ARGS.budget - el() - ARGS.post
    c_ft = 35 + ft.epochs * FT_FEATURES / ARGS.ft_batch * t_ft * 1.1
    c_ld = 35 + ld.epochs * LD_FEATURES / ARGS.ld_batch * t_ld * 1.1
    share = min(1.0, left / (c_ft + c_ld))
    b_ft = max(60.0, c_ft / (c_ft + c_ld) * left) if share < 1 else c_ft
    s_ft, every_ft, full_ft = sizing(t_ft, e_ft, FT_FEATURES, ARGS.ft_batch, ft.epochs, b_ft, 12)
    log(f"fine-tune: {s_ft}/{full_ft} steps, eval every {every_ft}, budget {b_ft:.0f}s (share {share:.2f})")
    ft_ov = {"max_steps": s_ft if s_ft < full_ft else None, "eval_every": every_ft, **ft_common}
    if ARGS.smoke:
        ft_ov.update(max_train_examples=ARGS.probe_examples, max_eval_examples=ARGS.max_eval)
    outs, _ = train_pair("fine-tune", ft, {k: {**ft_ov, **v} for k, v in ftv.items()}, model, b_ft * 1.25, False)
    best = {k: max((r.get("eval_f1", -1) for r in metrics(o)), default=-1) for k, o in outs.items()}
    start = max(best, key=best.get)
    log(f"fine-tune best (300 q): {best} -> LengthDrop from {start}")
    b_ld = ARGS.budget - el() - ARGS.post
    s_ld, every_ld, full_ld = sizing(t_ld, 2 * e_ld, LD_FEATURES, ARGS.ld_batch, ld.epochs, b_ld, 10)
    log(f"LengthDrop: {s_ld}/{full_ld} steps, eval every {every_ld}, budget {b_ld:.0f}s")
    ld_ov = {"max_steps": s_ld if s_ld < full_ld else None, "eval_every": every_ld, **ld_common}
    if ARGS.smoke:
        ld_ov.update(max_train_examples=ARGS.probe_examples, max_eval_examples=ARGS.max_eval)
    train_pair("LengthDrop", ld, {k: merge(ld_ov, v) for k, v in ldv.items()}, str(ARGS.work / start), b_ld, False)
    pack(["ft_a", "ft_b", "ld_l", "ld_q", "pft_a", "pft_b", "pld_l", "pld_q"])
    post(start)


def post(start: str) -> None:
    # --- evaluate on all validation questions
    res = evaluate_models(
        {start: ARGS.work / start, "ld_l": ARGS.work / "ld_l", "ld_q": ARGS.work / "ld_q"}, {"full": None, **CONFIGS}
    )
    score = {
        k: (v["full"]["f1"] + v["0.69"]["f1"] + v["0.548"]["f1"] + v["smallest"]["f1"]) / 4
        for k, v in res.items()
        if k.startswith("ld") and "0.69" in v
    }
    if not score:
        log("no LengthDrop model to export")
        return
    win = max(score, key=score.get)
    log(f"LengthDrop mean F1 (full, 0.69, 0.548, smallest): {score} -> export {win}")
    export(ARGS.work / win)
    res["fp16_" + win] = fp16_check(ARGS.work / win)
    res["exported"] = win
    (ARGS.out / "evals.json").write_text(json.dumps(res, indent=1))
    pack(["ft_a", "ft_b", "ld_l", "ld_q", "pft_a", "pft_b", "pld_l", "pld_q"])
    log("done")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/g"))
    ap.add_argument("--budget", type=float, default=540)
    ap.add_argument("--post", type=float, default=75, help="seconds kept for evaluation and export")
    ap.add_argument("--ft-batch", type=int, default=32)
    ap.add_argument("--ld-batch", type=int, default=64)
    ap.add_argument("--ld-lr", type=float, default=4.0e-5)
    ap.add_argument("--probe-examples", type=int, default=1200)
    ap.add_argument("--probe-steps", type=int, default=25)
    ap.add_argument("--max-eval", type=int, default=None)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--post-only", default=None, help="evaluate and export existing runs (the fine-tune's name)")
    ap.add_argument("--threads", type=int, default=4)
    ARGS = ap.parse_args()
    ARGS.out.mkdir(parents=True, exist_ok=True)
    ARGS.work.mkdir(parents=True, exist_ok=True)
    try:
        main()
    except BaseException as exc:  # the logs must come back whatever failed
        import traceback

        log("FAILED: " + "".join(traceback.format_exception(exc))[-3000:])
        try:
            pack(["ft_a", "ft_b", "ld_l", "ld_q", "pft_a", "pft_b", "pld_l", "pld_q"])
        except Exception:  # noqa: BLE001
            pass
        raise
