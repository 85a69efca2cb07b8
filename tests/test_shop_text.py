"""Domain text for continued pretraining: the shipped shop corpus, the Python docs source, and a tiny
continued-pretraining run on it through the SFT stage's plain-text mode."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.tasks.shop_text.corpus import main, python_docs_documents, shop_documents
from pipelines.tasks.textsql.questions import load_split

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED = REPO_ROOT / "data" / "pretraining" / "shop.jsonl"


def test_shipped_corpus_is_what_the_builder_writes(tmp_path: Path) -> None:
    assert main(["build", "--source", "shop", "--out", str(tmp_path / "shop.jsonl")]) == 0
    assert (tmp_path / "shop.jsonl").read_bytes() == SHIPPED.read_bytes(), "rebuild data/pretraining/shop.jsonl"


def test_shop_corpus_describes_the_database_without_its_questions_or_queries() -> None:
    docs = shop_documents()
    assert len({d["id"] for d in docs}) == len(docs)
    assert Counter(d["kind"] for d in docs).keys() == {"schema", "customer", "product", "year", "city"}
    text = "\n".join(d["text"] for d in docs)
    assert "CREATE TABLE order_items" in text  # the data dictionary
    gold = load_split(REPO_ROOT / "data" / "textsql", "test")
    for row in gold:
        assert row["question"] not in text
        assert row["answer"] not in text
    assert "SELECT" not in text


def test_python_docs_are_cut_at_paragraphs_within_the_limit() -> None:
    docs = python_docs_documents(max_chars=1500)
    assert len(docs) > 100
    assert all(0 < len(d["text"]) <= 1500 for d in docs)
    assert len({d["id"] for d in docs}) == len(docs)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["build", "--out", "corpus.txt"], "must be a .jsonl file"),
        (["build", "--out", "c.jsonl", "--max-chars", "10"], "--max-chars must be at least 200"),
        (["build", "--out", "c.jsonl", "--source", "bbc"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_continued_pretraining_config_packs_the_text_and_learns(run_cli: Any, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "pretrain"
    config = yaml.safe_load((REPO_ROOT / "configs" / "sft" / "pretrain_tiny.yaml").read_text())
    result = run_cli(
        "pipelines.sft",
        *("--config", REPO_ROOT / "configs" / "sft" / "pretrain_tiny.yaml", "--model_name_or_path", tiny_model),
        *("--output_dir", out, "--report_to", "none"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses[-1] < losses[0] * 0.9
    summary = json.loads((out / "summary.json").read_text())
    # packed rows are (nearly) full: documents fill max_length rows instead of being padded one per row
    row_capacity = config["max_steps"] * config["per_device_train_batch_size"] * config["max_length"]
    assert summary["train"]["train_tokens"] >= 0.9 * row_capacity
    assert summary["eval"]["eval_perplexity"] > 1
