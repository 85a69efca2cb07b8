"""Row filters: empty fields, token-count bounds, and exact duplicates after a language-agnostic normalisation.

Each filter returns the rows it keeps per split and one review record per removed row (why, and for a
duplicate, which row was kept). Duplicates are looked for across splits, keeping held-out rows first, so
a training row that repeats a test row is the one removed.
"""

from __future__ import annotations

import functools
import hashlib
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any

from datasets import Dataset

from pipelines.data.fields import ROW, TOKENS, as_text, column
from pipelines.data.sources import EVAL_SPLIT_NAMES

Splits = dict[str, Dataset]
Removed = dict[str, Any]


def priority(splits: Splits) -> list[str]:
    """Split names in keep order for duplicates: held-out splits first (they are what a model is judged on)."""
    return sorted(splits, key=lambda s: (s not in EVAL_SPLIT_NAMES, list(splits).index(s)))


def removed_record(
    step: str, reason: str, split: str, rows: Dataset, index: int, fields: Sequence[str], **extra: Any
) -> Removed:
    """What a reviewer needs to find and judge a removed row: its split, original row number, fields."""
    row = rows[index]
    return {
        "step": step,
        "reason": reason,
        "split": split,
        "row": row[ROW],
        **({"id": row["id"]} if "id" in row else {}),
        "fields": {field: as_text(row[field]) for field in fields},
        **extra,
    }


def keep(splits: Splits, kept: dict[str, list[int]]) -> Splits:
    return {
        split: rows if len(kept[split]) == len(rows) else rows.select(kept[split]) for split, rows in splits.items()
    }


def drop_empty(splits: Splits, fields: Sequence[str], step: str) -> tuple[Splits, list[Removed]]:
    """Rows where any field is empty or whitespace only."""
    kept: dict[str, list[int]] = {}
    removed: list[Removed] = []
    for split, rows in splits.items():
        columns = {field: column(rows, field) for field in fields}
        kept[split] = []
        for index in range(len(rows)):
            empty = next((f for f in fields if not as_text(columns[f][index]).strip()), None)
            if empty is None:
                kept[split].append(index)
            else:
                removed.append(removed_record(step, f"empty field {empty!r}", split, rows, index, fields))
    return keep(splits, kept), removed


def token_bounds(
    splits: Splits, fields: Sequence[str], min_tokens: int | None, max_tokens: int | None, step: str
) -> tuple[Splits, list[Removed]]:
    """Rows whose token total (over `fields`, counted by `fields.add_token_counts`) is outside the bounds."""
    kept: dict[str, list[int]] = {}
    removed: list[Removed] = []
    for split, rows in splits.items():
        kept[split] = []
        for index, count in enumerate(column(rows, TOKENS)):
            if max_tokens is not None and count > max_tokens:
                reason = f"over max_tokens {max_tokens}"
            elif min_tokens is not None and count < min_tokens:
                reason = f"under min_tokens {min_tokens}"
            else:
                kept[split].append(index)
                continue
            removed.append(removed_record(step, reason, split, rows, index, fields, tokens=count))
    return keep(splits, kept), removed


@functools.cache
def _separators() -> dict[int, int]:
    """Every punctuation, symbol, separator and control character (any script) -> a space."""
    return {
        code: 0x20 for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code))[0] in ("P", "S", "Z", "C")
    }


def normalise(text: str) -> str:
    """Case, width, punctuation and whitespace differences removed (NFKC + casefold), letters and marks kept.

    Works the same for every script: categories come from the Unicode database, not from an ASCII list.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(folded.translate(_separators()).split())


def fingerprint(row_fields: Sequence[str]) -> bytes:
    """A hash of the normalised fields, each kept apart (moving words between fields is a different row)."""
    joined = "\x1f".join(normalise(text) for text in row_fields)
    return hashlib.blake2b(joined.encode("utf-8"), digest_size=16).digest()


def exact_dedup(splits: Splits, fields: Sequence[str], step: str) -> tuple[Splits, list[Removed]]:
    """Rows whose normalised fields equal an earlier row's (held-out splits first, then source order)."""
    seen: dict[bytes, tuple[str, int]] = {}
    kept: dict[str, list[int]] = {split: [] for split in splits}
    removed: list[Removed] = []
    for split in priority(splits):
        rows = splits[split]
        texts_by_field = [[as_text(v) for v in column(rows, f)] for f in fields]
        originals = column(rows, ROW)
        for index, (texts, original) in enumerate(zip(zip(*texts_by_field, strict=True), originals, strict=True)):
            key = fingerprint(texts)
            if key in seen:
                twin = {"kept_split": seen[key][0], "kept_row": seen[key][1]}
                removed.append(removed_record(step, "exact duplicate", split, rows, index, fields, **twin))
            else:
                seen[key] = (split, original)
                kept[split].append(index)
    return keep(splits, kept), removed
