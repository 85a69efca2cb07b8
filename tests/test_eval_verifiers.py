"""`eval compare` picks its verifier from the data: SQL rows by execution, math rows by the final number;
a math comparison reports answer accuracy by tier, mistake categories and verifier win rates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli import UserError
from pipelines.eval.__main__ import main as eval_main
from pipelines.eval.report import build_report
from pipelines.eval.verifiers import pick_verifier
from pipelines.tasks.mathqa.evaluate import ERROR_CATEGORIES

REPO = Path(__file__).resolve().parents[1]
SQL_DB = REPO / "data" / "textsql" / "shop.sqlite"
MATH_COLUMNS = ["id", "question", "answer", "solution", "difficulty", "topic", "template", "params"]
SQL_COLUMNS = ["id", "question", "answer", "difficulty", "template"]


def test_auto_picks_math_for_math_rows_and_sql_for_sql_rows_with_a_database() -> None:
    assert pick_verifier("auto", MATH_COLUMNS, SQL_DB).name == "math"
    assert pick_verifier("auto", SQL_COLUMNS, SQL_DB).name == "sql"
    assert pick_verifier("auto", SQL_COLUMNS, Path("/nonexistent.sqlite")) is None
    assert pick_verifier("auto", ["prompt", "completion"], SQL_DB) is None
    assert pick_verifier("none", MATH_COLUMNS, SQL_DB) is None


def test_a_verifier_asked_for_explains_what_it_lacks() -> None:
    with pytest.raises(UserError, match=r"needs the columns params$"):
        pick_verifier("math", SQL_COLUMNS, SQL_DB)
    with pytest.raises(UserError, match="not a file"):
        pick_verifier("sql", SQL_COLUMNS, Path("/nonexistent.sqlite"))


def test_math_comparison_reports_answer_accuracy_and_mistake_categories(tiny_model: Path, tmp_path: Path) -> None:
    rows = (REPO / "data" / "mathqa" / "test.jsonl").read_text().splitlines()[:6]
    data = tmp_path / "math.jsonl"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "comparison"
    eval_main(
        ["compare", "--models", str(tiny_model), "--names", "tiny", "--data", str(data), "--samples", "6",
         "--max_new_tokens", "8", "--batch_size", "6", "--output_dir", str(out)]
    )  # fmt: skip
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["verifier"]["name"] == "math"
    metrics = comparison["metrics"]["tiny"]
    assert metrics["answer_accuracy"] == pytest.approx(sum(comparison["per_prompt"]["tiny"]["correct"]) / 6)
    assert "execution_accuracy" not in metrics
    assert {k for k in metrics if k.startswith("answer_accuracy_")} <= {
        f"answer_accuracy_{t}" for t in ("easy", "medium", "hard")
    }
    errors = comparison["errors"]["tiny"]
    assert list(errors) == list(ERROR_CATEGORIES)
    assert sum(e["count"] for e in errors.values()) == 6 - sum(comparison["per_prompt"]["tiny"]["correct"])
    page = build_report(out)
    assert "answer accuracy" in page and "execution accuracy" not in page
