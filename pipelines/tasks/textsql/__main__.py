r"""Make or check the text-to-SQL demo data.

    # the shipped data (deterministic: the same command gives the same files)
    python -m pipelines.tasks.textsql generate --out data/textsql
    python -m pipelines.tasks.textsql generate --out /tmp/textsql --seed 1 --n-train 500 --n-test 50
    # re-run every gold query against the folder's database; one summary line, exit 1 on failures
    python -m pipelines.tasks.textsql check --data data/textsql
    # verifiable preference pairs (gold vs a wrong rewrite) from the folder's train/test questions:
    # writes pairs_train.jsonl, pairs_test.jsonl and the README's "Preference pairs" section
    python -m pipelines.tasks.textsql pairs --data data/textsql --seed 0 --per-question 1

Mistakes a user can make (a missing folder, asking for more questions than exist) end with one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipelines.cli import CliParser, UserError, claim_output_dir, cli_entry, release_output_dir
from pipelines.tasks.textsql.pairs import (
    PAIR_FILES,
    kind_counts,
    pair_splits,
    readme_section,
    update_readme,
    write_pairs,
)
from pipelines.tasks.textsql.perturb import KINDS
from pipelines.tasks.textsql.questions import DB_NAME, SPLITS, TIERS, check_dataset, load_split, write_dataset


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The subcommands and their flags."""
    parser = CliParser(prog="python -m pipelines.tasks.textsql", description=(__doc__ or "").split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CliParser)
    gen = commands.add_parser("generate", help="write shop.sqlite, train.jsonl, test.jsonl and README.md")
    gen.add_argument("--out", type=Path, required=True, help="folder to write (created if missing)")
    gen.add_argument("--seed", type=int, default=0, help="seeds the database and the question sampling")
    gen.add_argument("--n-train", type=_positive_int, default=2000, help="training questions")
    gen.add_argument("--n-test", type=_positive_int, default=200, help="held-out questions")
    check = commands.add_parser("check", help="re-run every gold query of a data folder")
    check.add_argument("--data", type=Path, required=True, help="folder written by `generate`")
    pairs = commands.add_parser("pairs", help="write pairs_train.jsonl and pairs_test.jsonl (gold vs wrong SQL)")
    pairs.add_argument("--data", type=Path, required=True, help="folder written by `generate`; pairs go there")
    pairs.add_argument("--seed", type=int, default=0, help="seeds which wrong rewrite each question gets")
    pairs.add_argument("--per-question", type=_positive_int, default=1, help="pairs per train question")
    pairs.add_argument("--per-question-test", type=_positive_int, default=1, help="pairs per test question")
    return parser


def _write_pairs(args: argparse.Namespace) -> None:
    """The `pairs` subcommand: pairs from the folder's own splits, so they are held out by question."""
    db_path = args.data / DB_NAME
    if not db_path.is_file():
        raise UserError(
            f"{db_path} not found; create it with `python -m pipelines.tasks.textsql generate --out {args.data}`"
        )
    splits = {split: load_split(args.data, split) for split in SPLITS}
    pairs = pair_splits(db_path, splits, args.seed, args.per_question, args.per_question_test)
    write_pairs(args.data, pairs)
    update_readme(args.data / "README.md", readme_section(pairs, args.seed, args.per_question, args.per_question_test))
    for split, name in PAIR_FILES.items():
        counts = kind_counts(pairs[split])
        kinds = ", ".join(f"{kind} {counts[kind]}" for kind in KINDS)
        print(f"wrote {args.data / name}: {len(pairs[split])} pairs from {len(splits[split])} questions ({kinds})")


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit code (a `UserError` exits 2 through `cli_entry`)."""
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        if args.out.exists() and not args.out.is_dir():
            raise UserError(f"--out {args.out} is a file; give a folder")
        claim_output_dir(args.out)  # a folder made by this run is removed again if it fails
        args.out.mkdir(parents=True, exist_ok=True)
        counts = write_dataset(args.out, seed=args.seed, n_train=args.n_train, n_test=args.n_test)
        release_output_dir()
        tiers = "; ".join(
            f"{split} {sum(c.values())} (" + ", ".join(f"{t} {c[t]}" for t in TIERS) + ")"
            for split, c in counts.items()
        )
        print(f"wrote {args.out}: {tiers}")
        return 0
    if args.command == "pairs":
        _write_pairs(args)
        return 0
    report = check_dataset(args.data)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
