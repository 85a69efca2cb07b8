r"""Make or check the verifiable math demo data.

    # the shipped data (deterministic: the same command gives the same files)
    python -m pipelines.tasks.mathqa generate --out data/mathqa
    python -m pipelines.tasks.mathqa generate --out /tmp/mathqa --seed 1 --n-train 500 --n-test 50
    # rebuild every row from its template, re-check every answer and pair; one summary line, exit 1 on failures
    python -m pipelines.tasks.mathqa check --data data/mathqa
    # other preference pairs from the folder's own questions (and the README's "Preference pairs" section)
    python -m pipelines.tasks.mathqa pairs --data data/mathqa --seed 0 --per-question 2

Mistakes a user can make (a missing folder, asking for more questions than the templates hold)
end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipelines.cli import CliParser, UserError, claim_output_dir, cli_entry, release_output_dir
from pipelines.data.samples import TIERS
from pipelines.tasks.mathqa.dataset import check_dataset, rewrite_pairs, write_dataset
from pipelines.tasks.mathqa.pairs import PAIR_FILES, kind_counts
from pipelines.tasks.mathqa.problems import KINDS


def build_parser() -> argparse.ArgumentParser:
    """The subcommands and their flags."""
    parser = CliParser(prog="python -m pipelines.tasks.mathqa", description=(__doc__ or "").split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CliParser)
    gen = commands.add_parser("generate", help="write train/test questions, pairs_train/pairs_test and README.md")
    gen.add_argument("--out", type=Path, required=True, help="folder to write (created if missing)")
    gen.add_argument("--seed", type=int, default=0, help="seeds the numbers drawn and the pairs' mistake kinds")
    gen.add_argument("--n-train", type=int, default=2000, help="training questions")
    gen.add_argument("--n-test", type=int, default=200, help="held-out questions")
    check = commands.add_parser("check", help="rebuild and re-check every row and pair of a data folder")
    check.add_argument("--data", type=Path, required=True, help="folder written by `generate`")
    pairs = commands.add_parser("pairs", help="rewrite pairs_train.jsonl and pairs_test.jsonl")
    pairs.add_argument("--data", type=Path, required=True, help="folder written by `generate`; pairs go there")
    pairs.add_argument("--seed", type=int, default=0, help="seeds which mistake each question's pair shows")
    pairs.add_argument("--per-question", type=int, default=1, help="pairs per train question (different kinds)")
    pairs.add_argument("--per-question-test", type=int, default=1, help="pairs per test question")
    return parser


def _at_least_one(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit code (a `UserError` exits 2 through `cli_entry`)."""
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        _at_least_one(n_train=args.n_train, n_test=args.n_test)
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
        print(f"wrote {args.out}: {tiers}; pairs: {', '.join(PAIR_FILES.values())}")
        return 0
    if args.command == "pairs":
        _at_least_one(per_question=args.per_question, per_question_test=args.per_question_test)
        pairs = rewrite_pairs(args.data, args.seed, args.per_question, args.per_question_test)
        for split, name in PAIR_FILES.items():
            counts = kind_counts(pairs[split])
            print(
                f"wrote {args.data / name}: {len(pairs[split])} pairs ("
                + ", ".join(f"{k} {counts[k]}" for k in KINDS)
                + ")"
            )
        return 0
    report = check_dataset(args.data)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
