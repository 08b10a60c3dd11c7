"""CPU training throughput of fine-tuning and LengthDrop for each training option, in one run.

Every option is a set of TrainConfig overrides on top of the same baseline (same model, questions, seed, batch
order); each runs ``--warmup`` + ``--steps`` optimizer steps and its rate is training features per second over the
steps after the warm-up (validation and checkpoints excluded). Options that need CPU features the machine lacks
(bf16 autocast without AVX512-BF16 or AMX) are reported as skipped. With ``--f1-steps N`` every option is also
trained N steps from the same start and scored on the validation questions, so that a faster option can be
checked for lost accuracy at equal steps. Example (the table in docs/training.md):

    python benchmarks/train_throughput.py --model packaged:minilm \\
        --train-file ../shared/data/squad/train-v1.1-prefix.json --steps 12 --threads 2 \\
        --out benchmarks/results/train_throughput.json

The JSON holds the machine (CPU and ISA flags), every option's rate for both modes and its ratio to the
baseline of the same mode, measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from quala.config import from_dict, merge
from quala.data import TrainData, load_squad
from quala.io import machine_info, write_json_atomic
from quala.train import build_trainer
from quala.train_config import TrainConfig

LENGTH_DROP = {"enabled": True, "bound": 0.2, "num_sandwich": 2, "layer_drop_prob": 0.2}

# name -> (overrides, CPU flags of which one is needed); batch 32 doubles the learning rate (linear scaling)
OPTIONS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "baseline": ({}, ()),
    "compile": ({"compile": True}, ()),
    "bf16": ({"mixed_precision": "bf16"}, ("avx512_bf16", "amx_bf16")),
    "window_256_128": ({"data": {"max_seq_length": 256, "doc_stride": 128}}, ()),
    "num_sandwich_1": ({"length_drop": {"num_sandwich": 1}}, ()),
    "freeze_word_embeddings": ({"freeze_word_embeddings": True}, ()),
    "batch_32_lr_x2": ({"batch_size": 32, "lr": 2e-4}, ()),
    "threads_1": ({"threads": 1}, ()),
    # gloo data parallelism on the CPU: 2 processes of 1 thread, 8 features each (the same 16 per step)
    "processes_2_threads_1": ({"threads": 1, "batch_size": 8, "processes": 2}, ()),
}


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def rate_after_warmup(metrics: Path, warmup: int, batch_size: int) -> float:
    """Features per second over the steps after the warm-up (log_every = 1: one record per step)."""
    seconds, features = 0.0, 0
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        if "examples_per_s" in r and r["step"] > warmup:
            seconds += batch_size / r["examples_per_s"]
            features += batch_size
    return features / seconds if seconds else float("nan")


def run_processes(values: dict[str, Any], processes: int, args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    """The same run as ``quala train`` under ``torchrun`` (gloo on CPUs); rank 0 logs the global rate."""
    inputs = {"model": args.model, "output_dir": f"{tmp}/run", "train_files": args.train_file}
    if args.train_articles:
        inputs["train_articles"] = args.train_articles
    config_path = Path(tmp) / "train.yaml"
    config_path.write_text(yaml.safe_dump({**values, **inputs, "max_steps": args.warmup + args.steps}))
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    subprocess.run([*launch, "-m", "quala.cli", "train", "--config", str(config_path)], check=True)
    rate = rate_after_warmup(Path(tmp) / "run" / "metrics.jsonl", args.warmup, values["batch_size"] * processes)
    return {"features_per_second": round(rate, 3), "processes": processes}


def run(
    base: dict[str, Any], overrides: dict[str, Any], mode: str, data: TrainData, args: argparse.Namespace
) -> dict[str, Any]:
    overrides = dict(overrides)
    processes = overrides.pop("processes", 1)
    values = merge(base, overrides)
    if mode == "lengthdrop":
        values = merge(values, {"length_drop": merge(LENGTH_DROP, overrides.get("length_drop", {}))})
    elif "length_drop" in overrides:
        return {"skipped": "LengthDrop option"}
    with tempfile.TemporaryDirectory() as tmp:
        if processes > 1:
            if args.f1_steps:
                return {"skipped": "--f1-steps runs in one process"}
            return run_processes(values, processes, args, tmp)
        config = from_dict(TrainConfig, {**values, "max_steps": args.warmup + args.steps})
        trainer = build_trainer(args.model, data, tmp, config)
        trainer.train()
        rate = rate_after_warmup(Path(tmp) / "metrics.jsonl", args.warmup, config.batch_size)
        out: dict[str, Any] = {"features_per_second": round(rate, 3), "features_per_epoch": len(trainer.features)}
        if args.f1_steps:
            config = from_dict(
                TrainConfig,
                {
                    **values,
                    "max_steps": args.f1_steps,
                    "max_eval_examples": args.max_eval_examples,
                    "eval_every": args.f1_steps,
                },
            )
            validated = TrainData(data.train, load_squad(args.eval_file, args.eval_articles))
            out["f1_at_equal_steps"] = build_trainer(args.model, validated, tmp + "-f1", config).train().best_f1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="packaged:minilm")
    parser.add_argument("--train-file", action="append", required=True)
    parser.add_argument("--train-articles", action="append", help="one A:B per --train-file (default: all)")
    parser.add_argument("--max-train-examples", type=int, default=800, help="questions to draw batches from")
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per option and mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--options", default=",".join(OPTIONS), help=f"comma-separated subset of {list(OPTIONS)}")
    parser.add_argument("--modes", default="finetune,lengthdrop")
    parser.add_argument("--f1-steps", type=int, default=0, help="also train N steps per option and score F1")
    parser.add_argument("--eval-file")
    parser.add_argument("--eval-articles")
    parser.add_argument("--max-eval-examples", type=int, default=300)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    names = [n.strip() for n in args.options.split(",") if n.strip()]
    unknown = sorted(set(names) - set(OPTIONS))
    if unknown:
        parser.error(f"unknown options {unknown}; choose from {list(OPTIONS)}")
    if args.f1_steps and not args.eval_file:
        parser.error("--f1-steps needs --eval-file")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = TrainData.load(args.train_file, args.train_articles)
    base = {
        "max_train_examples": args.max_train_examples,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "threads": args.threads,
        "save_every": 10**9,
        "log_every": 1,
        "progress": False,
    }
    flags = cpu_flags()
    results: dict[str, dict[str, Any]] = {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        results[mode] = {}
        for name in names:
            overrides, needs = OPTIONS[name]
            if needs and not flags & set(needs):
                results[mode][name] = {"skipped": f"needs one of {list(needs)}"}
            else:
                results[mode][name] = run(base, overrides, mode, data, args)
            print(mode, name, results[mode][name], flush=True)
        ref = results[mode].get("baseline", {}).get("features_per_second")
        for r in results[mode].values():
            if ref and "features_per_second" in r:
                r["ratio_to_baseline"] = round(r["features_per_second"] / ref, 3)
    report = {
        "machine": machine_info(),
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": results,
    }
    write_json_atomic(args.out, report)
    print(json.dumps(report["results"], indent=1))


if __name__ == "__main__":
    main()
