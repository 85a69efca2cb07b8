"""`python -m annotation <command>`: the annotation CLI (server, datasets, users, export)."""

from annotation.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
