"""The command-line edge every CLI shares: a user mistake is one line on stderr and exit 2 (no traceback),
argparse usage errors likewise, output paths checked before any work, an output dir a failed run created
removed again, and Ctrl-C / SIGTERM a one-line stop (exit 130 / 143) that leaves only complete work."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import NoReturn, TypeVar

from tqdm import tqdm

F = TypeVar("F", bound=Callable[..., object])

EXIT_USER_ERROR = 2


# scheme://user:password@host... (the password ends at the first @, as SQLAlchemy parses it)
URL_PASSWORD = re.compile(r"(\b[A-Za-z][\w+.-]*://[^\s:/@]*:)[^\s@]*@")


def mask_passwords(text: str) -> str:
    """`text` with the password of every URL in it masked, as it may appear in messages, logs and saved configs."""
    return URL_PASSWORD.sub(r"\1***@", text)


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file, ...); the message says how."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised where the program was, like Ctrl-C's KeyboardInterrupt: the same clean stop for both."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class CliParser(argparse.ArgumentParser):
    """argparse whose usage errors are the project's one line and exit 2, not usage text plus a message."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


# ---------------------------------------------------------------------------- output paths


def _check_writable(folder: Path, what: str) -> None:
    """Write a probe file: permission bits say nothing for root, nor for a read-only mount."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"cannot write in {folder} ({err.strerror}): choose another {what}") from None


def check_output_dir(path: str | Path, flag: str = "--output_dir") -> Path:
    """`path` as an output dir: a folder or not there yet (missing parents are made), never under a file, and
    writable; otherwise a one-line `UserError` naming `flag`. Call it before any work."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder: choose another {flag}")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {path} cannot be made: {existing} is a file; choose another {flag}")
    _check_writable(existing, flag)
    return path


def check_output_file(path: str | Path, flag: str = "--output", make_folder: bool = False) -> Path:
    """`path` as an output file: not a folder, in a writable folder that exists (or, with `make_folder`, can be
    made); otherwise a one-line `UserError` naming `flag`. Call it before any work."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder: give a file path")
    folder = path.parent
    if make_folder:  # the writer makes the folder; its nearest existing ancestor must take it
        check_output_dir(folder, flag)
        return path
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise UserError(f"{flag} {path}: its folder {folder} {what}; create the folder or choose another {flag}")
    _check_writable(folder, flag)
    return path


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` whole or not at all: a stop mid-write never leaves half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


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


def _remove_claimed_dir() -> str | None:
    path, _OutputGuard.path = _OutputGuard.path, None
    if path is None or not path.exists():
        return None
    shutil.rmtree(path, ignore_errors=True)
    return f"removed {path}, which this run had created"


# ---------------------------------------------------------------------------- stopping


# What to do when the run is stopped: each hook tidies what it owns and says what it kept or removed.
_INTERRUPT_HOOKS: list[Callable[[], str | None]] = []


def on_interrupt(hook: Callable[[], str | None]) -> None:
    """Call `hook` if this CLI run is stopped by Ctrl-C or SIGTERM; its answer goes into the one-line message."""
    _INTERRUPT_HOOKS.append(hook)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _stop(err: KeyboardInterrupt) -> NoReturn:
    signum = getattr(err, "signum", signal.SIGINT)
    for name in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the tidying short
        signal.signal(name, signal.SIG_IGN)
    outcomes = [hook() for hook in reversed(_INTERRUPT_HOOKS)] + [_remove_claimed_dir()]
    said = "; ".join(outcome for outcome in outcomes if outcome) or "nothing was written"
    if os.environ.get("RANK", "0") == "0":  # one message for a multi-process run
        # the last line a user sees: open progress bars are closed first (tqdm.write would redraw them after it)
        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
        print(f"stopped by {signal.Signals(signum).name}: {said}", file=sys.stderr)
    sys.exit(128 + signum)


def cli_entry(main: F) -> F:
    """Wrap a CLI `main`: a `UserError` prints one line and exits 2 instead of a traceback; Ctrl-C and SIGTERM
    stop it with one line (what was kept) and exit 130 / 143; library load reports stay quiet."""

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> object:
        in_main_thread = threading.current_thread() is threading.main_thread()  # signals: main thread only
        previous = {name: signal.getsignal(name) for name in (signal.SIGINT, signal.SIGTERM)} if in_main_thread else {}
        if in_main_thread:
            signal.signal(signal.SIGTERM, _raise_interrupted)
        show_library_reports(False)
        try:
            return main(*args, **kwargs)
        except UserError as err:
            _remove_claimed_dir()
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt as err:
            _stop(err)
        finally:
            _INTERRUPT_HOOKS.clear()
            _OutputGuard.path = None
            for name, handler in previous.items():
                if handler is not None:  # None: set outside Python, cannot be put back from here
                    signal.signal(name, handler)

    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------------------- library noise


class _ExpectedReportFilter(logging.Filter):
    """Library reports that are expected here, not news: transformers' LOAD REPORT table (e.g. a reward model's
    fresh score head) and accelerate's note that a checkpoint stores tied embeddings once (the tie restores the
    output embedding on load: the PPO resume test compares every weight)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return "LOAD REPORT" not in message and "Removed shared tensor" not in message


_EXPECTED_REPORTS = _ExpectedReportFilter()
_REPORTING_LOGGERS = ("transformers.modeling_utils", "accelerate.utils.other")


def show_library_reports(verbose: bool) -> None:
    """Show the libraries' expected reports (model load tables, tied weights saved once) only with `--verbose`."""
    for name in _REPORTING_LOGGERS:
        logger = logging.getLogger(name)
        logger.removeFilter(_EXPECTED_REPORTS)
        if not verbose:
            logger.addFilter(_EXPECTED_REPORTS)
