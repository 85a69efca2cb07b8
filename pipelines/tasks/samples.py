"""What the tasks' generated sample data sets (pipelines.tasks.textsql, pipelines.tasks.mathqa) share: their JSONL
files, the preference-pair files and their data-card section, the report of `check`, and one CLI
(`sample_data_cli`: generate | check | pairs) that every task's `__main__` is."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.cli import CliParser, UserError, check_output_dir, claim_output_dir, cli_entry, release_output_dir
from pipelines.data import sources

TIERS = ("easy", "medium", "hard")
SPLITS = ("train", "test")
PAIR_FILES = {"train": "pairs_train.jsonl", "test": "pairs_test.jsonl"}
README_HEADING = "## Preference pairs"


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object per line, UTF-8 as is (the files are diffed and read by people)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def read_jsonl(path: Path, required: Sequence[str], remedy: str) -> list[dict[str, Any]]:
    """Rows of a JSONL file (the project's reader); a missing file, a bad line or a missing key is a `UserError`
    saying `remedy`."""
    if not path.is_file():
        raise UserError(f"{path} not found; {remedy}")
    try:
        rows = sources.read_jsonl(path)
    except UserError as err:
        raise UserError(f"{err}; {remedy}") from None
    for number, row in enumerate(rows, start=1):
        if not set(required) <= row.keys():
            raise UserError(f"{path}: row {number} needs {', '.join(required)}; {remedy}")
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


def pairs_section(
    task: str,
    intro: Sequence[str],
    notes: Sequence[str],
    pairs: Mapping[str, Sequence[Mapping[str, Any]]],
    kinds: Sequence[str],
    seed: int,
    per_question: int,
    per_question_test: int,
) -> list[str]:
    """A data card's "Preference pairs" section: `intro`, the command that writes the pairs, `notes`, and a
    table of pairs per kind and in all, one row per split."""
    table = ["| split | " + " | ".join(kinds) + " | total |", "|---" * (len(kinds) + 2) + "|"]
    for split in PAIR_FILES:
        counts = Counter(row["kind"] for row in pairs[split])
        table.append(f"| {split} | " + " | ".join(str(counts[k]) for k in kinds) + f" | {len(pairs[split])} |")
    command = (
        f".venv/bin/python -m pipelines.tasks.{task} pairs --data data/{task} --seed {seed} "
        f"--per-question {per_question} --per-question-test {per_question_test}"
    )
    return [README_HEADING, "", *intro, "", "```bash", command, "```", "", *notes, "", *table, ""]


def write_pairs(data_dir: str | Path, pairs: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """pairs_train.jsonl and pairs_test.jsonl in `data_dir`, one JSON object per line."""
    for split, name in PAIR_FILES.items():
        write_jsonl(Path(data_dir) / name, pairs[split])


def kind_counts(pairs: Sequence[Mapping[str, Any]]) -> Counter[str]:
    """Pairs per kind of mistake."""
    return Counter(pair["kind"] for pair in pairs)


def update_readme(readme: str | Path, section: Sequence[str]) -> None:
    """Replace the README's "Preference pairs" section (the last one) with `section`, or append it."""
    path = Path(readme)
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    start = text.find("\n" + README_HEADING + "\n")
    head = text if start < 0 else text[: start + 1]
    path.write_text(head.rstrip("\n") + "\n\n" + "\n".join(section), encoding="utf-8")


# ---------------------------------------------------------------------------- the one sample-data CLI


@dataclass(frozen=True)
class SampleData:
    """A task's sample data, as the CLI drives it."""

    name: str  # the task package under pipelines/tasks/
    description: str
    write_dataset: Callable[[Path, int, int, int], Mapping[str, Counter[str]]]  # (out, seed, train, test) -> tiers
    rewrite_pairs: Callable[[Path, int, int, int], Mapping[str, Sequence[Mapping[str, Any]]]]  # (data, seed, n, n)
    check_dataset: Callable[[Path], CheckReport]
    kinds: Sequence[str]  # the kinds of mistake its rejected answers make
    generate_help: str = "write train/test questions, pairs_train/pairs_test and README.md"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser(task: SampleData) -> argparse.ArgumentParser:
    parser = CliParser(prog=f"python -m pipelines.tasks.{task.name}", description=task.description)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CliParser)
    gen = commands.add_parser("generate", help=task.generate_help)
    gen.add_argument("--out", type=Path, required=True, help="folder to write (created if missing)")
    gen.add_argument("--seed", type=int, default=0, help="seeds everything drawn (the same seed gives the same files)")
    gen.add_argument("--n-train", type=_positive_int, default=2000, help="training questions")
    gen.add_argument("--n-test", type=_positive_int, default=200, help="held-out questions")
    check = commands.add_parser("check", help="rebuild and re-check every row and pair of a data folder")
    check.add_argument("--data", type=Path, required=True, help="folder written by `generate`")
    pairs = commands.add_parser("pairs", help="rewrite pairs_train.jsonl and pairs_test.jsonl from the questions")
    pairs.add_argument("--data", type=Path, required=True, help="folder written by `generate`; pairs go there")
    pairs.add_argument("--seed", type=int, default=0, help="seeds which mistake each question's pair shows")
    pairs.add_argument("--per-question", type=_positive_int, default=1, help="pairs per train question")
    pairs.add_argument("--per-question-test", type=_positive_int, default=1, help="pairs per test question")
    return parser


def sample_data_cli(task: SampleData) -> Callable[[Sequence[str] | None], int]:
    """`main(argv) -> exit code` of `python -m pipelines.tasks.<task> generate|check|pairs`: mistakes a user
    can make (a missing folder, more questions than exist) end with one line and exit 2."""

    @cli_entry
    def main(argv: Sequence[str] | None = None) -> int:
        args = _parser(task).parse_args(argv)
        if args.command == "generate":
            claim_output_dir(check_output_dir(args.out, "--out"))  # a folder made by this run is removed on failure
            args.out.mkdir(parents=True, exist_ok=True)
            counts = task.write_dataset(args.out, args.seed, args.n_train, args.n_test)
            release_output_dir()
            tiers = "; ".join(
                f"{split} {sum(c.values())} (" + ", ".join(f"{t} {c[t]}" for t in TIERS) + ")"
                for split, c in counts.items()
            )
            print(f"wrote {args.out}: {tiers}; pairs: {', '.join(PAIR_FILES.values())}")
            return 0
        if args.command == "pairs":
            pairs = task.rewrite_pairs(args.data, args.seed, args.per_question, args.per_question_test)
            for split, name in PAIR_FILES.items():
                counts = kind_counts(pairs[split])
                kinds = ", ".join(f"{kind} {counts[kind]}" for kind in task.kinds)
                print(f"wrote {args.data / name}: {len(pairs[split])} pairs ({kinds})")
            return 0
        report = task.check_dataset(args.data)
        print(report.summary())
        return 0 if report.ok else 1

    return main
