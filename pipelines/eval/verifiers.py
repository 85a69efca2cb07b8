"""The verifiers `eval compare` judges answers with: SQL by execution, math by the final number.

Both report in one shape ({<metric>, by_difficulty, errors: {category: {count, examples}},
per_prediction: [{correct, category, ...}]}), so the comparison, its win rates and the report's
error analysis do not care which task they look at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.cli import UserError

Evaluate = Callable[[Sequence[dict[str, Any]], Sequence[str], Sequence[bool]], dict[str, Any]]
CHOICES = ("auto", "sql", "math", "none")
MATH_COLUMNS = {"question", "answer", "difficulty", "template", "params"}  # rows of pipelines.tasks.mathqa
SQL_COLUMNS = {"question", "answer", "difficulty"}  # rows of pipelines.tasks.textsql (plus the --db database)


@dataclass(frozen=True)
class Verifier:
    name: str
    metric: str  # the accuracy key in the verifier's report and in the comparison's metrics
    judges_by: str  # how it decides, for the report ("execution result", "final answer")
    evaluate: Evaluate


def _sql(db: Path) -> Verifier:
    from pipelines.tasks.textsql.evaluate import evaluate_predictions

    def evaluate(rows: Sequence[dict[str, Any]], texts: Sequence[str], no_eos: Sequence[bool]) -> dict[str, Any]:
        return evaluate_predictions(rows, texts, no_eos=no_eos, db_path=db)

    return Verifier("sql", "execution_accuracy", "execution result", evaluate)


def _math() -> Verifier:
    from pipelines.tasks.mathqa.evaluate import evaluate_predictions

    def evaluate(rows: Sequence[dict[str, Any]], texts: Sequence[str], no_eos: Sequence[bool]) -> dict[str, Any]:
        return evaluate_predictions(rows, texts, no_eos=no_eos)

    return Verifier("math", "answer_accuracy", "final answer", evaluate)


def _gold_sql_failure(rows: Sequence[dict[str, Any]], db: Path) -> str | None:
    """Why the rows' reference answers are not text-to-SQL answers for `db` (the first that does not run), if so."""
    from pipelines.tasks.textsql.execute import execute

    for number, row in enumerate(rows, start=1):
        result = execute(db, str(row["answer"]))
        if result.rows is None:
            answer = str(row["answer"])[:40]
            return f"the reference answer of row {number} ({answer!r}) does not run on {db} ({result.error})"
    return None


def pick_verifier(
    choice: str, columns: Sequence[str], db: Path | None, rows: Sequence[dict[str, Any]] = ()
) -> Verifier | None:
    """The verifier asked for, or for `auto` the one the data's columns fit (math rows first: they carry
    their template and parameters; SQL rows need the database their answers run on). With `rows`, a SQL
    verifier first checks their reference answers run, before any generation."""
    have = set(columns)
    if choice == "auto":
        if have >= MATH_COLUMNS:
            return _math()
        sql_fits = have >= SQL_COLUMNS and db is not None and db.is_file() and _gold_sql_failure(rows, db) is None
        return _sql(db) if sql_fits else None
    if choice == "none":
        return None
    needed = MATH_COLUMNS if choice == "math" else SQL_COLUMNS
    if not needed <= have:
        raise UserError(f"--verifier {choice} needs the columns {', '.join(sorted(needed - have))}")
    if choice == "math":
        return _math()
    if db is None or not db.is_file():
        raise UserError(f"--verifier sql runs the answers on --db, and {db} is not a file")
    failure = _gold_sql_failure(rows, db)
    if failure:
        raise UserError(
            f"--verifier sql: {failure}: not text-to-SQL data for it; use --verifier auto|math|none or --db"
        )
    return _sql(db)
