"""int8 vs fp32 accuracy: SQuAD F1/EM of a model and its int8 version at full length and each configuration.

    python benchmarks/int8_accuracy.py --model runs/squad-mini/lengthdrop --int8 runs/lengthdrop-int8 \
        --data ../shared/data/squad/dev-v1.1-part-a.json --articles 32:40 [--max-examples 400] \
        [--length-configs "315,251,242,159,142,33;..."] --output runs/int8-accuracy.json

Without --length-configs the configurations come from the model's search front (search.json). Writes JSON with
machine info, and each configuration's fp32/int8 scores and their difference (the target: within 1.0 F1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from quala.config import EvalConfig
from quala.data import load_squad
from quala.engine import load_predictor
from quala.evaluate import evaluate
from quala.front import read_front
from quala.io import machine_info, write_json_atomic
from quala.lengths import parse_length_config
from quala.macs import count_macs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="fp32 PyTorch model directory")
    ap.add_argument("--int8", required=True, help="its int8 directory (quala quantize)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--articles", default=None)
    ap.add_argument("--max-examples", type=int, default=None)
    ap.add_argument("--length-configs", default=None, help="';'-separated; default: the search front")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", required=True)
    args = ap.parse_args()

    squad = load_squad(args.data, args.articles, args.max_examples)
    fp32 = load_predictor(args.model, backend="torch", threads=args.threads)
    int8 = load_predictor(args.int8, backend="onnxruntime", threads=args.threads)
    layers, ref = fp32.model_config.num_hidden_layers, fp32.la_config.reference_length
    if args.length_configs:
        configs = [parse_length_config(c, layers, ref) for c in args.length_configs.split(";")]
    else:
        full = count_macs(fp32.model_config, ref).total
        configs = [p.length_config for p in read_front(args.model, full)]
    if None not in configs:
        configs.insert(0, None)
    rows = []
    for lengths in configs:
        a, _ = evaluate(fp32, squad, lengths, EvalConfig())
        b, _ = evaluate(int8, squad, lengths, EvalConfig())
        row = {
            "length_config": lengths,
            "macs": a.macs,
            "fp32": {"f1": round(a.f1, 2), "exact_match": round(a.exact_match, 2), "seconds": a.seconds},
            "int8": {"f1": round(b.f1, 2), "exact_match": round(b.exact_match, 2), "seconds": b.seconds},
            "f1_drop": round(a.f1 - b.f1, 2),
        }
        rows.append(row)
        print(row, flush=True)
    out = {"machine": machine_info(), "data": squad.describe(), "model": args.model, "int8": args.int8, "rows": rows}
    write_json_atomic(Path(args.output), out)


if __name__ == "__main__":
    main()
