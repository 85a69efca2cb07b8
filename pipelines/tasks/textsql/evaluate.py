"""Execution accuracy of text-to-SQL predictions, by difficulty tier, with every failure given a cause.

Predictions are read the way the PPO reward reads them (`reward.extract_sql`), so evaluation and
reward agree on what the model answered. Exact match compares `normalize_sql` forms; execution
accuracy compares results as `execution_match` does.

A failure gets the first category that applies, in this order (`ERROR_CATEGORIES`):

- runaway_generation: the prediction hit the token limit (`no_eos`) and is wrong, whatever else.
- empty_or_not_sql: no SELECT/WITH statement in the text.
- syntax_error: the SQL does not execute (syntax or name error, not a single SELECT, timeout).
- The rest run but return a wrong result; the predicted SQL is compared with the gold SQL as
  tokens (after `normalize_sql`, with table qualifiers such as `c.` dropped):
  - wrong_join: different tables, JOIN kinds, ON conditions, or `IN (SELECT col` link columns.
  - wrong_aggregation: different aggregate functions, DISTINCT, or GROUP BY.
  - wrong_column: different columns in the SELECT list.
  - wrong_condition: WHERE/HAVING differ in literals, operators or connectives.
  - wrong_column again: the same conditions on different columns.
  - wrong_order: only ORDER BY / LIMIT differ (direction, key or count).
  - other_wrong_result: none of the above differs (e.g. only aliases or a CTE).
These are heuristics for reading a model's mistakes at a glance, not a grammar: a query wrong in
several ways is counted once, under its first category.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.tasks.textsql.execute import execute, has_order_by, normalize_sql, results_match, top_level_view
from pipelines.tasks.textsql.questions import DB_NAME, TIERS
from pipelines.tasks.textsql.reward import data_dir, extract_sql

ERROR_CATEGORIES = (
    "runaway_generation",
    "empty_or_not_sql",
    "syntax_error",
    "wrong_join",
    "wrong_aggregation",
    "wrong_column",
    "wrong_condition",
    "wrong_order",
    "other_wrong_result",
)
EXAMPLES_PER_CATEGORY = 3
_EXAMPLE_CHARS = 300  # runaway predictions can be long; an example only needs their start

_TOKEN = re.compile(r"'(?:[^']|'')*'?|\"(?:[^\"]|\"\")*\"?|\d+(?:\.\d+)?|\w+(?:\.\w+)?|<>|!=|<=|>=|==|\|\||\S")
_IDENTIFIER = re.compile(r"[a-z_]\w*")
_CLAUSE = re.compile(r"\b(select|from|where|group by|having|order by|limit)\b")
_KEYWORDS = frozenset((
    "select", "from", "where", "group", "by", "having", "order", "limit", "offset", "and", "or", "not", "in",
    "between", "like", "glob", "is", "null", "join", "left", "right", "full", "inner", "outer", "cross", "natural",
    "on", "using", "as", "distinct", "all", "asc", "desc", "case", "when", "then", "else", "end", "exists", "union",
    "intersect", "except", "with", "recursive", "cast", "collate", "escape",
))  # fmt: skip
_AGGREGATES = frozenset(("count", "sum", "avg", "min", "max", "total", "group_concat"))
_FUNCTIONS = _AGGREGATES | frozenset((
    "abs", "round", "lower", "upper", "length", "coalesce", "ifnull", "nullif", "substr", "substring", "trim",
    "instr", "replace", "date", "strftime", "julianday", "typeof", "printf", "iif",
))  # fmt: skip
_JOIN_WORDS = frozenset(("left", "right", "full", "inner", "outer", "cross", "natural"))
_ON_STOP = _JOIN_WORDS | {"join", "where", "group", "order", "limit", "having", "union", ")", ";"}


def _tokens(text: str) -> list[str]:
    """Tokens with qualifiers dropped (`c.name` -> `name`), so aliases do not count as differences."""
    return [tok.rsplit(".", 1)[-1] if _IDENTIFIER.match(tok) else tok for tok in _TOKEN.findall(text)]


def _is_column(tok: str) -> bool:
    return bool(_IDENTIFIER.fullmatch(tok)) and tok not in _KEYWORDS and tok not in _FUNCTIONS


def _clauses(sql: str) -> dict[str, list[str]]:
    """Tokens of each top-level clause (a subquery stays inside the clause it appears in)."""
    view = top_level_view(sql)
    starts = [(m.start(), m.group(1)) for m in _CLAUSE.finditer(view)]
    out: dict[str, list[str]] = {}
    for (start, name), (end, _) in zip(starts, [*starts[1:], (len(sql), "")], strict=True):
        out.setdefault(name, []).extend(_tokens(sql[start + len(name) : end]))
    return out


def _join_feature(tokens: list[str]) -> tuple[Any, ...]:
    """Tables, JOIN kinds, ON conditions (sides sorted) and `IN (SELECT col` link columns."""
    tables, kinds, conditions, links = [], [], [], []
    for i, tok in enumerate(tokens):
        after = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok in ("from", "join") and _is_column(after):
            tables.append(after)
        if tok == "join":
            j = i
            while j > 0 and tokens[j - 1] in _JOIN_WORDS:
                j -= 1
            kinds.append(" ".join(tokens[j : i + 1]))
        if tok == "on":
            condition = []
            for other in tokens[i + 1 :]:
                if other in _ON_STOP:
                    break
                condition.append(other)
            parts = " ".join(condition).split(" and ")
            conditions += sorted(" = ".join(sorted(p.split(" = "))) if p.count(" = ") == 1 else p for p in parts)
        if tok == "in" and tokens[i + 1 : i + 3] == ["(", "select"]:
            link = []
            for other in tokens[i + 3 :]:
                if other == "from":
                    break
                link.append(other)
            links.append(tuple(link))
    return sorted(tables), sorted(kinds), sorted(conditions), links


def _columns(tokens: list[str]) -> list[str]:
    """Column names in order, without output aliases (`AS x`)."""
    return [tok for i, tok in enumerate(tokens) if _is_column(tok) and (i == 0 or tokens[i - 1] != "as")]


def _features(sql: str) -> list[tuple[str, Any]]:
    """(category, what must match) in the documented order; the first mismatch names the failure."""
    normalized = normalize_sql(sql)
    tokens, clauses = _tokens(normalized), _clauses(normalized)

    def clause(*names: str) -> list[str]:
        return [tok for name in names for tok in clauses.get(name, [])]

    aggregates = sorted(tok for tok, nxt in itertools.pairwise([*tokens, ""]) if tok in _AGGREGATES and nxt == "(")
    conditions = clause("where", "having")
    return [
        ("wrong_join", _join_feature(tokens)),
        ("wrong_aggregation", (aggregates, tokens.count("distinct"), clause("group by"))),
        ("wrong_column", _columns(clause("select"))),
        ("wrong_condition", ["·" if _is_column(tok) else tok for tok in conditions]),  # columns masked
        ("wrong_column", _columns(conditions)),
        ("wrong_order", clause("order by", "limit")),
    ]


def failure_category(gold_sql: str, pred_sql: str) -> str:
    """The category of a prediction that runs but returns a wrong result (the token heuristics above)."""
    for (category, gold), (_, pred) in zip(_features(gold_sql), _features(pred_sql), strict=True):
        if gold != pred:
            return category
    return "other_wrong_result"


def _ratio(hits: int, total: int) -> float:
    return hits / total if total else 0.0


def evaluate_predictions(
    rows: Sequence[Mapping[str, Any]],
    predictions: Sequence[str],
    no_eos: Sequence[bool] | None = None,
    db_path: str | Path | None = None,
) -> dict[str, Any]:
    """Exact match, execution accuracy (overall and by tier) and failure categories with examples.

    `rows` carry question, answer (gold SQL) and difficulty; `no_eos[i]` is True when prediction i
    stopped at the token limit. `db_path` defaults to the shop database of `reward.data_dir()`.
    Returns {n, exact_match, execution_accuracy, executable, by_difficulty: {tier: execution accuracy},
    exact_match_by_difficulty, n_by_difficulty, errors: {category: {count, examples}}, per_prediction}.
    """
    if len(predictions) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(predictions)} predictions")
    if no_eos is not None and len(no_eos) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(no_eos)} no_eos flags")
    db = Path(db_path) if db_path is not None else data_dir() / DB_NAME
    errors: dict[str, dict[str, Any]] = {category: {"count": 0, "examples": []} for category in ERROR_CATEGORIES}
    per_prediction = []
    for i, (row, prediction) in enumerate(zip(rows, predictions, strict=True)):
        gold_sql = row["answer"]
        gold = execute(db, gold_sql)
        if gold.rows is None:
            raise ValueError(f"gold SQL fails ({gold.error}): {gold_sql}")
        sql = extract_sql(prediction)
        pred_rows = execute(db, sql).rows if sql is not None else None
        runs = pred_rows is not None
        correct = pred_rows is not None and results_match(gold.rows, pred_rows, has_order_by(gold_sql))
        exact = sql is not None and normalize_sql(sql) == normalize_sql(gold_sql)
        category = None
        if not correct:
            if no_eos is not None and no_eos[i]:
                category = "runaway_generation"
            elif sql is None:
                category = "empty_or_not_sql"
            elif not runs:
                category = "syntax_error"
            else:
                category = failure_category(gold_sql, sql)
            errors[category]["count"] += 1
            if len(errors[category]["examples"]) < EXAMPLES_PER_CATEGORY:
                errors[category]["examples"].append(
                    {
                        "id": row.get("id"),
                        "question": row["question"],
                        "gold": gold_sql,
                        "prediction": prediction[:_EXAMPLE_CHARS],
                    }
                )
        per_prediction.append(
            {"difficulty": row["difficulty"], "runs": runs, "correct": correct, "exact": exact, "category": category}
        )

    tiers = [t for t in TIERS if any(p["difficulty"] == t for p in per_prediction)]
    tiers += sorted({p["difficulty"] for p in per_prediction} - set(TIERS))
    n_by_tier = Counter(p["difficulty"] for p in per_prediction)

    def by_tier(key: str) -> dict[str, float]:
        hits = Counter(p["difficulty"] for p in per_prediction if p[key])
        return {tier: _ratio(hits[tier], n_by_tier[tier]) for tier in tiers}

    n = len(per_prediction)
    return {
        "n": n,
        "exact_match": _ratio(sum(p["exact"] for p in per_prediction), n),
        "execution_accuracy": _ratio(sum(p["correct"] for p in per_prediction), n),
        "executable": _ratio(sum(p["runs"] for p in per_prediction), n),
        "by_difficulty": by_tier("correct"),
        "exact_match_by_difficulty": by_tier("exact"),
        "n_by_difficulty": {tier: n_by_tier[tier] for tier in tiers},
        "errors": errors,
        "per_prediction": per_prediction,
    }
