"""Selection: the top k rows by token count or by a rating/reward column, and difficulty tiers.

Selection applies to the training rows only: held-out splits (test, validation, eval) are never cut to
the best-rated rows, or the evaluation would no longer measure what it did. Tiers are written for every
split (a column, `tier` by default), so results can be broken down by difficulty and curricula built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from datasets import Dataset

from pipelines.cli import UserError
from pipelines.data.fields import TOKENS, check_columns, column, user_columns
from pipelines.data.filters import Splits
from pipelines.data.sources import EVAL_SPLIT_NAMES

TIERS = ("easy", "medium", "hard")
BY_TOKENS = "tokens"


def values_of(rows: Dataset, by: str) -> np.ndarray:
    """The numbers to rank or tier rows by: the token total, or a numeric column (missing values as NaN)."""
    if by == BY_TOKENS:
        return np.asarray(column(rows, TOKENS), dtype=np.float64)
    check_columns(rows, [by], "`by`/`tiers_by`")
    values = column(rows, by)
    bad = next((v for v in values if v is not None and (isinstance(v, bool) or not isinstance(v, int | float))), None)
    if bad is not None:
        raise UserError(f"column {by!r} is not numeric (e.g. {bad!r}); rank or tier by a number column or by tokens")
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def top_k(splits: Splits, k: int, by: str, ascending: bool) -> tuple[Splits, dict[str, Any]]:
    """The k highest (or lowest) rows of each training split, in their source order; ties by source order."""
    if k <= 0:
        raise UserError(f"top_k must be a positive number of rows, got {k}")
    selected: Splits = {}
    report: dict[str, Any] = {}
    for split, rows in splits.items():
        if split in EVAL_SPLIT_NAMES:
            selected[split] = rows
            continue
        values = values_of(rows, by)
        if k >= len(rows):
            if k > len(rows):
                print(f"warning: top_k {k} is larger than split {split!r} ({len(rows)} rows): keeping all of them")
            selected[split] = rows
            report[split] = {"kept": len(rows), "cutoff": None}
            continue
        # NaN (missing) ranks last either way; a stable sort keeps source order among equal values
        key = np.where(np.isnan(values), np.inf, values if ascending else -values)
        chosen = np.sort(np.argsort(key, kind="stable")[:k])
        selected[split] = rows.select(chosen.tolist())
        cutoff = np.nanmax(values[chosen]) if ascending else np.nanmin(values[chosen])
        report[split] = {"kept": k, "cutoff": float(cutoff)}
    return selected, report


def tier_bounds(splits: Splits, by: str, bounds: Sequence[float] | None) -> tuple[float, float]:
    """`bounds` (checked by the select step's config), or the tertiles of the values over all splits."""
    if bounds is not None:
        return float(bounds[0]), float(bounds[1])
    values = np.concatenate([values_of(rows, by) for rows in splits.values()])
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise UserError(f"no values to tier by in {by!r}")
    low, high = np.quantile(values, [1 / 3, 2 / 3])
    return float(low), float(high)


def add_tiers(splits: Splits, by: str, bounds: tuple[float, float], column: str) -> tuple[Splits, dict[str, Any]]:
    """easy: value < bounds[0]; medium: up to bounds[1]; hard: >= bounds[1]; a missing value has no tier."""
    tiered: Splits = {}
    counts: dict[str, dict[str, int]] = {}
    for split, rows in splits.items():
        values = values_of(rows, by)
        names = [None if np.isnan(v) else TIERS[int(v >= bounds[0]) + int(v >= bounds[1])] for v in values]
        if column in user_columns(rows):
            print(f"note: replacing the existing column {column!r} with the tiers by {by}")
            rows = rows.remove_columns(column)
        tiered[split] = rows.add_column(column, names)
        counts[split] = {tier: names.count(tier) for tier in TIERS}
    return tiered, counts
