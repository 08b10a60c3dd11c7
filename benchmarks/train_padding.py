"""Training throughput with dynamic padding versus padding every batch to max_seq_length, in one run.

Both runs use the same model, data, seed, batch size and number of steps, one after the other; the JSON
holds both rates (training features per second, validation and checkpoints excluded), their ratio and the
machine. Example (the numbers in docs/training.md):

    python benchmarks/train_padding.py --model packaged:minilm \\
        --train-file ../shared/data/squad/train-v1.1-prefix.json --steps 20 --batch-size 16 --threads 2 \\
        --out runs/bench/train-padding.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from quala.config import from_dict
from quala.data import TrainData
from quala.io import machine_info, write_json_atomic
from quala.train import build_trainer
from quala.train_config import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="packaged:minilm")
    parser.add_argument("--train-file", required=True)
    parser.add_argument("--train-articles", default=":")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-seq-length", type=int, default=384)
    parser.add_argument("--length-drop", action="store_true", help="measure LengthDrop steps instead")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data = TrainData.load([args.train_file], [args.train_articles])
    results = {}
    for mode, pad in (("dynamic", False), ("pad_to_max_length", True)):
        with tempfile.TemporaryDirectory() as tmp:
            config = from_dict(
                TrainConfig,
                dict(
                    max_steps=args.steps,
                    batch_size=args.batch_size,
                    threads=args.threads,
                    pad_to_max_length=pad,
                    save_every=10**9,
                    log_every=args.steps,
                    progress=False,
                    data={"max_seq_length": args.max_seq_length},
                    length_drop={"enabled": args.length_drop},
                ),
            )
            trainer = build_trainer(args.model, data, tmp, config)
            lengths = trainer.features.lengths
            result = trainer.train()
            results[mode] = {"examples_per_second": result.examples_per_second, "seconds": result.seconds}
    report = {
        "benchmark": "train_padding",
        "model": args.model,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length,
        "length_drop": args.length_drop,
        "mean_feature_length": round(float(lengths.mean()), 1),
        "results": results,
        "speedup_dynamic_over_padded": round(
            results["dynamic"]["examples_per_second"] / results["pad_to_max_length"]["examples_per_second"], 3
        ),
        "machine": machine_info(),
    }
    write_json_atomic(args.out, report)
    print(report)


if __name__ == "__main__":
    main()
