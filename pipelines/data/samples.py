"""What the generated sample data sets (pipelines.tasks.textsql, pipelines.tasks.mathqa) share: their JSONL files, the
report of `check`, and the per-kind table of their preference pairs' data card."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.cli import UserError

TIERS = ("easy", "medium", "hard")


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object per line, UTF-8 as is (the files are diffed and read by people)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def read_jsonl(path: Path, required: Sequence[str], remedy: str) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a missing file, a bad line or a missing key is a `UserError` saying `remedy`."""
    if not path.is_file():
        raise UserError(f"{path} not found; {remedy}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: not JSON ({err.msg}); {remedy}") from err
            if not isinstance(row, dict) or not set(required) <= row.keys():
                raise UserError(f"{path}:{number}: needs {', '.join(required)}; {remedy}")
            rows.append(row)
    return rows


@dataclass(frozen=True)
class CheckReport:
    """What a data set's `check` found: rows per file, failures, questions in both splits."""

    counts: dict[str, int]
    tiers: Counter[str]
    failures: list[tuple[str, str]]  # (id, why)
    shared_questions: int
    checked: str  # what a passing row is, for the summary ("gold queries run with an informative result")

    @property
    def ok(self) -> bool:
        return not self.failures and self.shared_questions == 0

    def summary(self) -> str:
        """One line for the terminal."""
        total = sum(self.counts.values())
        files = ", ".join(f"{name} {n}" for name, n in self.counts.items())
        tiers = ", ".join(f"{tier} {self.tiers[tier]}" for tier in TIERS)
        first = f"; first failure {self.failures[0][0]}: {self.failures[0][1]}" if self.failures else ""
        return (
            f"{'ok' if self.ok else 'FAILED'}: {total - len(self.failures)}/{total} {self.checked} "
            f"({files}; {tiers}); {self.shared_questions} questions in both splits{first}"
        )


def kind_table(pairs: Mapping[str, Sequence[Mapping[str, Any]]], kinds: Sequence[str]) -> list[str]:
    """Markdown rows: pairs per kind and in all, one row per split."""
    table = ["| split | " + " | ".join(kinds) + " | total |", "|---" * (len(kinds) + 2) + "|"]
    for split, rows in pairs.items():
        counts = Counter(row["kind"] for row in rows)
        table.append(f"| {split} | " + " | ".join(str(counts[k]) for k in kinds) + f" | {len(rows)} |")
    return table
