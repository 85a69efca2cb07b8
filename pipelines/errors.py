"""User-facing errors: one line on stderr, exit code 2, no traceback, no half-written output."""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

F = TypeVar("F", bound=Callable[..., object])

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file, ...); the message says how."""


class CliParser(argparse.ArgumentParser):
    """argparse whose usage errors are the project's one line and exit 2, not usage text plus a message."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


class _OutputGuard:
    """Remembers an output dir created by this run so a failed run can remove it again."""

    path: Path | None = None


def claim_output_dir(path: str | Path) -> None:
    """Mark `path` as created by this run if it does not exist yet (so it is removed on a user error)."""
    path = Path(path)
    if not path.exists():
        _OutputGuard.path = path


def release_output_dir() -> None:
    """Training has started writing results worth keeping: never remove the dir from now on."""
    _OutputGuard.path = None


def cli_entry(main: F) -> F:
    """Wrap a CLI `main` so a `UserError` prints one line and exits 2 instead of a traceback."""

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            if _OutputGuard.path is not None and _OutputGuard.path.exists():
                shutil.rmtree(_OutputGuard.path, ignore_errors=True)
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]
