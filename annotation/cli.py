"""One CLI for the Argilla side: `python -m annotation <command> ...` (`--help` lists them).

Each command lives in its own module exposing `main(argv) -> int`; this file only dispatches, so
`python -m annotation server --help` costs no Argilla SDK import.
"""

from __future__ import annotations

import difflib
import importlib
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "server": ("annotation.server.launcher", "start|stop|status|logs the embedded Argilla server"),
    "create": ("annotation.create", "create a text, instruction or comparison dataset (or set its overlap)"),
    "users": ("annotation.users", "add annotators to a workspace, list a workspace's users"),
    "push": ("annotation.push", "push records from a file or dataset (idempotent on record ids)"),
    "pull": ("annotation.pull", "pull every annotator's answers; agreement and per-annotator counts"),
    "export": ("annotation.export", "unify answers and write SFT / reward data (versioned HF dataset, JSONL, CSV)"),
    "loop": ("annotation.loop", "run|status|collect a round of the human-feedback loop (policy -> people -> retrain)"),
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
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"choose from {', '.join(COMMANDS)}"
        print(f"error: unknown command {command!r}; {hint} (see `python -m annotation --help`)", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[command][0]).main(rest)
