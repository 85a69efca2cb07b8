"""Run SQL against the shop database safely, and decide whether two queries mean the same.

Model output is untrusted: it runs on a read-only connection (`mode=ro` URI plus `query_only`),
only a single SELECT/WITH statement is accepted, a progress handler stops any query after
`timeout_s` (a recursive CTE cannot spin forever) and results are capped at `max_rows`.

Two queries match when their results match: as multisets of rows, or as sequences when the gold
query orders its top level (ORDER BY). Floats are compared to 6 decimals so AVG and SUM/COUNT
agree. Column order counts; column names do not.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Row = tuple[Any, ...]

_FIRST_WORD = re.compile(r"^\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*(\w+)", re.DOTALL)
_ALLOWED_FIRST_WORDS = {"SELECT", "WITH"}
_PROGRESS_STEPS = 1000  # VM instructions between deadline checks (microseconds apart)


@dataclass(frozen=True)
class ExecResult:
    """Rows of a query that ran, or why it did not (never both)."""

    rows: list[Row] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the query ran and `rows` holds its result."""
        return self.error is None


def execute(db_path: str | Path, sql: str, timeout_s: float = 2.0, max_rows: int = 10_000) -> ExecResult:
    """Run one SELECT/WITH statement read-only; any SQL failure comes back as `error`, not an exception."""
    path = Path(db_path)
    if not path.is_file():
        raise FileNotFoundError(f"no database at {path}")
    first = _FIRST_WORD.match(sql)
    if first is None or first.group(1).upper() not in _ALLOWED_FIRST_WORDS:
        return ExecResult(error="only SELECT/WITH queries are allowed")

    deadline = time.monotonic() + timeout_s
    timed_out = False

    def past_deadline() -> int:
        nonlocal timed_out
        timed_out = time.monotonic() > deadline
        return int(timed_out)  # non-zero interrupts the statement

    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.set_progress_handler(past_deadline, _PROGRESS_STEPS)
        cursor = conn.execute(sql)
        rows = cursor.fetchmany(max_rows + 1)
        if len(rows) > max_rows:
            return ExecResult(error=f"more than {max_rows} rows")
        return ExecResult(rows=[tuple(row) for row in rows])
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as err:
        if timed_out:
            return ExecResult(error=f"timeout after {timeout_s:g} s")
        return ExecResult(error=f"{type(err).__name__}: {err}")
    finally:
        conn.close()


def _canonical_row(row: Row) -> Row:
    """Round floats so equivalent arithmetic (AVG vs SUM/COUNT) compares equal."""
    return tuple(round(value, 6) if isinstance(value, float) else value for value in row)


def results_match(gold_rows: Sequence[Row], pred_rows: Sequence[Row], ordered: bool) -> bool:
    """Same rows in the same order (`ordered`), or the same multiset of rows."""
    gold = [_canonical_row(row) for row in gold_rows]
    pred = [_canonical_row(row) for row in pred_rows]
    if ordered:
        return gold == pred
    return Counter(gold) == Counter(pred)


def split_literals(sql: str) -> list[tuple[str, bool]]:
    """Cut SQL into (text, is_quoted) pieces; quoted pieces keep their quotes ('' escapes stay inside)."""
    pieces: list[tuple[str, bool]] = []
    start = i = 0
    while i < len(sql):
        quote = sql[i]
        if quote not in "'\"":
            i += 1
            continue
        if start < i:
            pieces.append((sql[start:i], False))
        end = i + 1
        while end < len(sql):
            if sql[end] == quote and sql[end + 1 : end + 2] == quote:
                end += 2
            elif sql[end] == quote:
                break
            else:
                end += 1
        pieces.append((sql[i : end + 1], True))
        start = i = end + 1
    if start < len(sql):
        pieces.append((sql[start:], False))
    return pieces


def _mask_piece(text: str, quoted: bool) -> str:
    if not quoted:
        return text
    if len(text) >= 2 and text[-1] == text[0]:
        return text[0] + "~" * (len(text) - 2) + text[-1]
    return text[0] + "~" * (len(text) - 1)  # unterminated quote: runs to the end


def mask_quoted(sql: str) -> str:
    """Same length as `sql`, with the inside of quotes replaced by '~': pattern matches never hit a literal."""
    return "".join(_mask_piece(text, quoted) for text, quoted in split_literals(sql))


def top_level_view(sql: str) -> str:
    """Like `mask_quoted`, and everything inside parentheses is '~' too: matches are top-level syntax."""
    out, depth = [], 0
    for char in mask_quoted(sql):
        if char == ")":
            depth = max(depth - 1, 0)
        out.append(char if depth == 0 else "~")
        if char == "(":
            depth += 1
    return "".join(out)


def has_order_by(sql: str) -> bool:
    """True when the statement's top level has ORDER BY, i.e. its row order is part of the answer."""
    return re.search(r"\bORDER\s+BY\b", top_level_view(sql), re.IGNORECASE) is not None


def execution_match(db_path: str | Path, gold_sql: str, pred_sql: str) -> bool:
    """True when `pred_sql` runs and returns the gold result; a failing gold query is a bug and raises."""
    gold = execute(db_path, gold_sql)
    if gold.rows is None:
        raise ValueError(f"gold SQL fails ({gold.error}): {gold_sql}")
    pred = execute(db_path, pred_sql)
    return pred.rows is not None and results_match(gold.rows, pred.rows, ordered=has_order_by(gold_sql))


def normalize_sql(sql: str) -> str:
    """The form exact match compares: whitespace collapsed, case folded, one trailing ';'.

    Quoted text (string literals, quoted identifiers) keeps its case and spacing, since
    'Lyon' and 'lyon' are different values.
    """
    text = "".join(piece if quoted else re.sub(r"\s+", " ", piece).lower() for piece, quoted in split_literals(sql))
    text = text.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    return text + ";"
