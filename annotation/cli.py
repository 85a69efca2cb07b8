"""One CLI for the Argilla side: `python -m annotation <command> ...` (`--help` lists them).

Each command lives in its own module exposing `main(argv) -> int`; this file only dispatches, so
`python -m annotation server --help` costs no Argilla SDK import.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "server": ("annotation.server", "start|stop|status|logs the embedded Argilla server"),
}


def usage() -> str:
    lines = ["usage: python -m annotation <command> [--help]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"}:
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[command][0]).main(rest)
