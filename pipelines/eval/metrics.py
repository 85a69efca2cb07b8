"""Text metrics computed offline: exact match and corpus BLEU (sacrebleu; `evaluate.load` needs the hub)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import sacrebleu


def normalize(text: str) -> str:
    """Whitespace-insensitive form for exact match (case and punctuation are kept)."""
    return re.sub(r"\s+", " ", text).strip()


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    if not references:
        return 0.0
    hits = sum(normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True))
    return hits / len(references)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    if not references:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)
