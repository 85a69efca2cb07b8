"""Plausible wrong SQL for a gold query: the rejected answers of reward-model preference pairs.

Each kind is a short list of textual rewrites of the canonical gold SQL (quoted values are never
touched), one occurrence at a time:

- wrong_column: a column swapped for a sibling (city ↔ country, name → city/category,
  category → name, signup_year ↔ order_year, price ↔ quantity).
- wrong_condition: a comparison flipped (`=` → `!=`, `<` ↔ `>`), `AND` → `OR`, `IN` ↔ `NOT IN`,
  `BETWEEN` → `NOT BETWEEN`, or a year off by one. Join conditions (`ON ...`) are left to
  wrong_join.
- wrong_aggregation: MAX ↔ MIN, AVG → SUM/MAX, SUM → AVG/COUNT, `SUM(oi.quantity * p.price)` →
  `SUM(p.price)`, `SELECT DISTINCT` → `SELECT`.
- wrong_join: a join or subquery linked on the wrong key (`o.customer_id = c.id` → `o.id = c.id`,
  `oi.order_id = o.id` → `oi.product_id = o.id`, `p.id = oi.product_id` → `p.id = oi.order_id`,
  `(SELECT customer_id` → `(SELECT id`), or `JOIN` → `LEFT JOIN`.
- wrong_order: the top-level ORDER BY direction flipped.

A rewrite is kept only if it runs and its result differs from the gold result (compared as
`execution_match` does), so every rejected answer is verifiably wrong, and it stays in the
canonical style, so style never gives the answer away.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

from pipelines.tasks.textsql.execute import execute, has_order_by, mask_quoted, results_match, top_level_view

KINDS = ("wrong_column", "wrong_condition", "wrong_aggregation", "wrong_join", "wrong_order")

Replacement = str | Callable[[str], str]  # fixed text, or a function of the matched text

_COLUMN_SWAPS = {
    "city": ("country",),
    "country": ("city",),
    "name": ("city", "category"),
    "category": ("name",),
    "signup_year": ("order_year",),
    "order_year": ("signup_year",),
    "price": ("quantity",),
    "quantity": ("price",),
}
_COLUMN_RULES: list[tuple[str, Replacement]] = [
    (rf"\b{column}\b", swap) for column, swaps in _COLUMN_SWAPS.items() for swap in swaps
]
_CONDITION_RULES: list[tuple[str, Replacement]] = [
    (r"(?<=[\w)]) = (?=[\w'(])", " != "),
    (r"(?<=[\w)]) < (?=[\w'(])", " > "),
    (r"(?<=[\w)]) > (?=[\w'(])", " < "),
    (r"\bAND\b", "OR"),
    (r"\bNOT IN \(", "IN ("),
    (r"(?<!NOT )\bIN \(", "NOT IN ("),
    (r"\bBETWEEN\b", "NOT BETWEEN"),
    (r"(?<=_year [=<>] )\d{4}\b", lambda year: str(int(year) + 1)),
]
_AGGREGATION_RULES: list[tuple[str, Replacement]] = [
    (r"\bMAX\(", "MIN("),
    (r"\bMIN\(", "MAX("),
    (r"\bAVG\(", "SUM("),
    (r"\bAVG\(", "MAX("),
    (r"\bSUM\(", "AVG("),
    (r"\bSUM\(", "COUNT("),
    (r"\bSUM\(oi\.quantity \* p\.price\)", "SUM(p.price)"),
    (r"\bSELECT DISTINCT ", "SELECT "),
]
_JOIN_RULES: list[tuple[str, Replacement]] = [
    (r"\bo\.customer_id = c\.id\b", "o.id = c.id"),
    (r"\boi\.order_id = o\.id\b", "oi.product_id = o.id"),
    (r"\bp\.id = oi\.product_id\b", "p.id = oi.order_id"),
    (r"\(SELECT customer_id\b", "(SELECT id"),
    (r"(?<!LEFT )\bJOIN\b", "LEFT JOIN"),
]
_ORDER_RULE = r"\bORDER BY .+?(?: DESC)?(?= LIMIT|;)"


def _flip_order(clause: str) -> str:
    return clause.removesuffix(" DESC") if clause.endswith(" DESC") else clause + " DESC"


def _in_join_condition(masked: str, pos: int) -> bool:
    """True when `pos` sits in an `ON ...` clause (the last clause keyword before it is ON)."""
    keywords = re.findall(r"\b(ON|WHERE|HAVING|JOIN|SELECT|FROM|GROUP BY|ORDER BY)\b", masked[:pos])
    return bool(keywords) and keywords[-1] == "ON"


def _rewrites(
    sql: str, rules: list[tuple[str, Replacement]], view: str, skip: Callable[[str, int], bool] | None = None
) -> list[str]:
    """`sql` with one match replaced, for every match of every rule; matching runs on `view` (same length)."""
    out = []
    for pattern, replacement in rules:
        for match in re.finditer(pattern, view):
            if skip is not None and skip(view, match.start()):
                continue
            old = sql[match.start() : match.end()]
            new = replacement(old) if callable(replacement) else replacement
            out.append(sql[: match.start()] + new + sql[match.end() :])
    return out


def candidates(gold_sql: str, kind: str) -> list[str]:
    """Every rewrite of one kind, unverified, in a fixed order."""
    masked = mask_quoted(gold_sql)
    if kind == "wrong_column":
        found = _rewrites(gold_sql, _COLUMN_RULES, masked)
    elif kind == "wrong_condition":
        found = _rewrites(gold_sql, _CONDITION_RULES, masked, skip=_in_join_condition)
    elif kind == "wrong_aggregation":
        found = _rewrites(gold_sql, _AGGREGATION_RULES, masked)
    elif kind == "wrong_join":
        found = _rewrites(gold_sql, _JOIN_RULES, masked)
    elif kind == "wrong_order":
        found = _rewrites(gold_sql, [(_ORDER_RULE, _flip_order)], top_level_view(gold_sql))
    else:
        raise ValueError(f"unknown perturbation kind {kind!r}; one of {', '.join(KINDS)}")
    return list(dict.fromkeys(sql for sql in found if sql != gold_sql))


def perturbations(db_path: str | Path, gold_sql: str, rng: random.Random, per_kind: int = 1) -> list[tuple[str, str]]:
    """Up to `per_kind` verified wrong queries per kind, as (kind, wrong_sql), kinds in `KINDS` order."""
    gold = execute(db_path, gold_sql)
    if gold.rows is None:
        raise ValueError(f"gold SQL fails ({gold.error}): {gold_sql}")
    ordered = has_order_by(gold_sql)
    out = []
    for kind in KINDS:
        options = candidates(gold_sql, kind)
        rng.shuffle(options)
        kept = 0
        for wrong_sql in options:
            if kept == per_kind:
                break
            result = execute(db_path, wrong_sql)
            if result.rows is not None and not results_match(gold.rows, result.rows, ordered):
                out.append((kind, wrong_sql))
                kept += 1
    return out
