r"""Make or check the text-to-SQL demo data.

    # the shipped data (deterministic: the same command gives the same files)
    python -m pipelines.textsql generate --out data/textsql
    python -m pipelines.textsql generate --out /tmp/textsql --seed 1 --n-train 500 --n-test 50
    # re-run every gold query against the folder's database; one summary line, exit 1 on failures
    python -m pipelines.textsql check --data data/textsql

Mistakes a user can make (a missing folder, asking for more questions than exist) end with one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from pipelines.errors import EXIT_USER_ERROR, UserError, claim_output_dir, cli_entry, release_output_dir
from pipelines.textsql.generate import TIERS, check_dataset, write_dataset


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line error instead of usage plus message."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `python -m pipelines.textsql --help`)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The two subcommands and their flags."""
    parser = _Parser(prog="python -m pipelines.textsql", description=(__doc__ or "").split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    gen = commands.add_parser("generate", help="write shop.sqlite, train.jsonl, test.jsonl and README.md")
    gen.add_argument("--out", type=Path, required=True, help="folder to write (created if missing)")
    gen.add_argument("--seed", type=int, default=0, help="seeds the database and the question sampling")
    gen.add_argument("--n-train", type=_positive_int, default=2000, help="training questions")
    gen.add_argument("--n-test", type=_positive_int, default=200, help="held-out questions")
    check = commands.add_parser("check", help="re-run every gold query of a data folder")
    check.add_argument("--data", type=Path, required=True, help="folder written by `generate`")
    return parser


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
    report = check_dataset(args.data)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
