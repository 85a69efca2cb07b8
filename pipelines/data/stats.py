"""Token-count distributions per split and field, and label/rating distributions, as tables and PNG plots.

Token counts answer the questions a training config depends on: what `max_length` keeps how many rows,
how much padding a batch carries, whether one split is longer than another. Label and rating columns
(annotated data) show class balance and the spread of scores before anything is trained on them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from pipelines.data.fields import TEXT_COLUMNS, TOKENS, check_columns, column, tokens_column, user_columns

QUANTILES = (0.05, 0.5, 0.95, 0.99)
# A string column with at most this many distinct values is a label; more is free text or an id.
MAX_LABELS = 20
TOTAL = "(all fields)"


def summarize(values: Sequence[int] | np.ndarray, max_length: int | None = None) -> dict[str, Any]:
    """Count, total, mean, min, quantiles and max of token counts (and the share above `max_length`)."""
    array = np.asarray(values, dtype=np.int64)
    if array.size == 0:
        return {"rows": 0}
    summary: dict[str, Any] = {
        "rows": int(array.size),
        "tokens": int(array.sum()),
        "mean": round(float(array.mean()), 1),
        "min": int(array.min()),
        **{f"p{round(q * 100)}": float(np.quantile(array, q)) for q in QUANTILES},
        "max": int(array.max()),
    }
    if max_length:
        summary[f"over_{max_length}"] = int((array > max_length).sum())
    return summary


def token_stats(
    splits: dict[str, Dataset], fields: Sequence[str], max_length: int | None
) -> dict[str, dict[str, dict[str, Any]]]:
    """{split: {field or TOTAL: summary}} from the token columns `fields.add_token_counts` added."""
    return {
        split: {
            **{field: summarize(column(rows, tokens_column(field)), max_length) for field in fields},
            **({TOTAL: summarize(column(rows, TOKENS), max_length)} if len(fields) > 1 else {}),
        }
        for split, rows in splits.items()
    }


def label_columns(dataset: Dataset, fields: Sequence[str], columns: Sequence[str] | None) -> list[str]:
    """`columns` checked, or the columns that look like labels or scores: numbers, and strings with few values."""
    if columns is not None:
        check_columns(dataset, columns, "label_columns")
        return list(columns)
    found = []
    for name in user_columns(dataset):
        if name in fields or name in TEXT_COLUMNS or name == "id" or name.endswith("_id"):
            continue
        dtype = getattr(dataset.features[name], "dtype", None)
        if dtype in ("string", "large_string"):
            if len(set(column(dataset, name))) <= MAX_LABELS:
                found.append(name)
        elif dtype is not None and (dtype.startswith(("int", "uint", "float")) or dtype == "bool"):
            found.append(name)
    return found


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def label_distribution(values: Sequence[Any], as_scores: bool) -> dict[str, Any]:
    """Counts per value (labels, small rating scales) or, `as_scores`, a summary of continuous scores."""
    present = [v for v in values if v is not None]
    head = {"rows": len(values), "missing": len(values) - len(present)}
    if as_scores:
        array = np.asarray(present, dtype=np.float64)
        if array.size == 0:
            return {"kind": "score", **head}
        quantiles = {f"p{round(q * 100)}": round(float(np.quantile(array, q)), 4) for q in QUANTILES}
        return {
            "kind": "score",
            **head,
            "mean": round(float(array.mean()), 4),
            "min": float(array.min()),
            **quantiles,
            "max": float(array.max()),
        }
    counts = Counter(present)
    numeric = all(_is_number(v) for v in counts)
    ordered = sorted(counts, key=lambda v: (v, "") if numeric else (-counts[v], str(v)))
    return {"kind": "labels", **head, "counts": {str(v): counts[v] for v in ordered}}


def label_stats(splits: dict[str, Dataset], columns: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """{split: {column: distribution}}; a numeric column with many distinct values (over all splits) is a score."""
    values = {split: {c: column(rows, c) for c in columns} for split, rows in splits.items()}
    as_scores = {}
    for name in columns:
        distinct = {v for per_column in values.values() for v in per_column[name] if v is not None}
        as_scores[name] = len(distinct) > MAX_LABELS and all(_is_number(v) for v in distinct)
    return {
        split: {c: label_distribution(per_column[c], as_scores[c]) for c in columns}
        for split, per_column in values.items()
    }


# ---------------------------------------------------------------------------- rendering


def token_table(stats: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown: one row per split and field."""
    keys = sorted({k for per_field in stats.values() for s in per_field.values() for k in s}, key=_key_order)
    lines = ["| split | field | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for split, per_field in stats.items():
        for field, summary in per_field.items():
            cells = [_cell(summary.get(k, "")) for k in keys]
            lines.append(f"| {split} | {field} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def label_table(stats: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown: counts per value (labels) or a summary (scores), per split and column."""
    lines = ["| split | column | distribution |", "|---|---|---|"]
    for split, per_column in stats.items():
        for name, dist in per_column.items():
            if dist["kind"] == "labels":
                text = ", ".join(f"{value}: {count}" for value, count in dist["counts"].items())
            else:
                text = ", ".join(f"{k} {_cell(dist.get(k, '-'))}" for k in ("mean", "min", "p5", "p50", "p95", "max"))
            missing = f" (missing {dist['missing']})" if dist["missing"] else ""
            lines.append(f"| {split} | {name} | {text}{missing} |")
    return "\n".join(lines)


def _key_order(key: str) -> tuple[int, str]:
    order = ["rows", "tokens", "mean", "min", *(f"p{round(q * 100)}" for q in QUANTILES), "max"]
    return (order.index(key), key) if key in order else (len(order), key)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}" if value == int(value) else f"{value:.2f}"
    return str(value)


def plot_tokens(splits: dict[str, Dataset], fields: Sequence[str], path: Path, max_length: int | None) -> Path:
    """One histogram per field (and the total), the splits overlaid; a dashed line at `max_length`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [(f, tokens_column(f)) for f in fields] + ([(TOTAL, TOKENS)] if len(fields) > 1 else [])
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.4), squeeze=False)
    for ax, (title, name) in zip(axes[0], columns, strict=True):
        values = {split: np.asarray(column(rows, name)) for split, rows in splits.items() if len(rows)}
        top = max((int(v.max()) for v in values.values()), default=1)
        # one bar per token count when they fit, else 40 equal bins
        bins = np.arange(top + 2) - 0.5 if top <= 80 else np.linspace(0, top, 41)
        for split, array in values.items():
            ax.hist(array, bins=bins, alpha=0.55, label=f"{split} ({array.size})")
        if max_length:
            ax.axvline(max_length, color="black", linestyle="--", linewidth=1, label=f"max_length {max_length}")
        ax.set_title(title)
        ax.set_xlabel("tokens")
        ax.set_ylabel("rows")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_labels(stats: dict[str, dict[str, dict[str, Any]]], path: Path) -> Path | None:
    """Bar charts of the label columns (scores have their numbers in the table only)."""
    columns = sorted({c for per_column in stats.values() for c, d in per_column.items() if d["kind"] == "labels"})
    if not columns:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.4), squeeze=False)
    for ax, name in zip(axes[0], columns, strict=True):
        values = list(dict.fromkeys(v for per_column in stats.values() for v in per_column[name]["counts"]))
        width = 0.8 / len(stats)
        for index, (split, per_column) in enumerate(stats.items()):
            counts = per_column[name]["counts"]
            ax.bar(np.arange(len(values)) + index * width, [counts.get(v, 0) for v in values], width=width, label=split)
        ax.set_xticks(np.arange(len(values)) + 0.4 - width / 2, values, rotation=45, ha="right", fontsize=7)
        ax.set_title(name)
        ax.set_ylabel("rows")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
