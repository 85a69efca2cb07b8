"""The command-line edge every CLI shares: a user mistake is one line on stderr and exit 2 (no traceback),
argparse usage errors likewise, and an output dir a failed run created is removed again."""

from __future__ import annotations

import argparse
import functools
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

F = TypeVar("F", bound=Callable[..., object])

EXIT_USER_ERROR = 2


# scheme://user:password@host... (the password ends at the first @, as SQLAlchemy parses it)
URL_PASSWORD = re.compile(r"(\b[A-Za-z][\w+.-]*://[^\s:/@]*:)[^\s@]*@")


def mask_passwords(text: str) -> str:
    """`text` with the password of every URL in it masked, as it may appear in messages, logs and saved configs."""
    return URL_PASSWORD.sub(r"\1***@", text)


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
