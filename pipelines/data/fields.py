"""Which columns curation reads as text, their text, and their token counts with the target tokenizer.

A field is a string column, or a chat column (a list of `{role, content}` messages, whose contents are
joined). Every curation step measures, compares or hashes the same fields unless it names its own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from pipelines.cli import UserError

# Columns read as text when `fields` is not set, in this order (the shapes pipelines.data.formats and the
# reward stage read, plus the annotation export's).
TEXT_COLUMNS = (
    "text",
    "content",
    "prompt",
    "question",
    "instruction",
    "input",
    "context",
    "completion",
    "answer",
    "response",
    "output",
    "chosen",
    "rejected",
    "messages",
)
# Hidden columns the steps add (original row number, token counts); none of them reaches the output.
INTERNAL = "__curate_"
ROW = f"{INTERNAL}row"
TOKENS = f"{INTERNAL}tokens"


def tokens_column(field: str) -> str:
    return f"{TOKENS}.{field}"


def user_columns(dataset: Dataset) -> list[str]:
    return [c for c in dataset.column_names if not c.startswith(INTERNAL)]


def column(dataset: Dataset, name: str) -> list[Any]:
    """A column as a list, read at once (iterating a `datasets` column formats row by row: ~100x slower)."""
    return dataset[name][:]


def check_columns(dataset: Dataset, columns: Sequence[str], what: str) -> None:
    """A one-line error naming the unknown column(s) and the data's columns."""
    found = user_columns(dataset)
    missing = [c for c in columns if c not in found]
    if missing:
        raise UserError(f"unknown column(s) {', '.join(missing)} in {what}; the data has {', '.join(found)}")


def text_fields(dataset: Dataset, fields: Sequence[str] | None) -> list[str]:
    """`fields` checked against the data, or the known text columns it has, or every string column."""
    if fields:
        check_columns(dataset, fields, "fields")
        return list(fields)
    columns = user_columns(dataset)
    known = [c for c in TEXT_COLUMNS if c in columns]
    if known:
        return known
    strings = [c for c in columns if getattr(dataset.features[c], "dtype", None) in ("string", "large_string")]
    if not strings:
        raise UserError(f"no text column found (columns: {', '.join(columns)}); set `fields` to the columns to curate")
    return strings


def as_text(value: Any) -> str:
    """A string cell as is, a chat cell as its messages' contents, one per line; missing values as ''."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(as_text(m.get("content") if isinstance(m, dict) else m) for m in value)
    return str(value)


def row_texts(dataset: Dataset, fields: Sequence[str]) -> list[str]:
    """One text per row: its fields joined by a newline (what dedup embeds)."""
    columns = [[as_text(v) for v in column(dataset, f)] for f in fields]
    return ["\n".join(parts) for parts in zip(*columns, strict=True)]


def load_fast_tokenizer(name_or_path: str) -> Any:
    """The target model's tokenizer from a folder or a name under models/; a wrong path is a `UserError`."""
    from transformers import AutoTokenizer

    from pipelines.models import MODELS_DIR, local_models

    path = Path(name_or_path).expanduser()
    if not path.is_dir() and (MODELS_DIR / name_or_path).is_dir():
        path = MODELS_DIR / name_or_path
    if not path.is_dir():
        known = ", ".join(local_models()) or "none (run `python -m pipelines.models prepare`)"
        raise UserError(f"tokenizer not found: {name_or_path!r} is not a folder (local models: {known})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a tokenizer from {name_or_path!r}: {str(err).splitlines()[0]}") from None
    if not tokenizer.is_fast:
        print(f"warning: {name_or_path} has no fast tokenizer (tokenizer.json); counting tokens will be slow")
    return tokenizer


def token_lengths(tokenizer: Any, texts: list[str]) -> list[int]:
    """Tokens per text. A fast tokenizer's Rust backend counts without offsets or Python id lists (1.6x faster)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [len(encoding) for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
    return [len(ids) for ids in encoded["input_ids"]]


def add_token_counts(dataset: Dataset, tokenizer: Any, fields: Sequence[str], num_proc: int) -> Dataset:
    """Add a token-count column per field (no special tokens, no chat template) and their total.

    Batched, and in `num_proc` processes for large data (a worker costs more than it saves on small data).
    Counts already there are kept, so steps that share fields count once.
    """
    todo = [f for f in fields if tokens_column(f) not in dataset.column_names]
    if todo:

        def count(batch: dict[str, list[Any]]) -> dict[str, list[int]]:
            return {tokens_column(f): token_lengths(tokenizer, [as_text(v) for v in batch[f]]) for f in todo}

        procs = max(1, min(num_proc, os.cpu_count() or 1)) if len(dataset) >= 20_000 else 1
        counted = dataset.select_columns(todo).map(
            count, batched=True, batch_size=2000, num_proc=procs if procs > 1 else None, desc="Counting tokens"
        )
        for field in todo:
            dataset = dataset.add_column(tokens_column(field), np.asarray(column(counted, tokens_column(field))))
    if TOKENS in dataset.column_names:
        dataset = dataset.remove_columns(TOKENS)
    totals = sum(np.asarray(column(dataset, tokens_column(f)), dtype=np.int64) for f in fields)
    return dataset.add_column(TOKENS, totals)
