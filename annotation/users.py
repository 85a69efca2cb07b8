"""`python -m annotation users add|list`: annotator accounts and the workspaces they work in.

    python -m annotation users add demo alice bob carol          # annotators of workspace `demo`
    python -m annotation users add demo dana --role admin
    python -m annotation users list demo

New users get a random password, written (never printed) to the credentials file, mode 0600
(default `annotators.json` in the server's var dir, `--credentials FILE`); they log in to the UI with it. A user that
already exists is only added to the workspace. How many annotators answer each record is the
dataset's overlap: `python -m annotation create ws/dataset --kind K --min_submitted N`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
from pathlib import Path
from typing import Any

from annotation.client import connect
from pipelines.cli import CliParser, UserError, cli_entry

ROLES = ("annotator", "admin", "owner")


def _save_credentials(path: Path, new: dict[str, dict[str, Any]]) -> None:
    """Merge `new` into the 0600 JSON file at `path` (written beside and renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({**existing, **new}, out, indent=2)
    os.replace(partial, path)


def default_credentials() -> Path:
    from annotation.server.launcher import home_dir

    return home_dir() / "annotators.json"


def add_users(
    workspace_name: str, usernames: list[str], role: str, credentials: Path, full_name: str | None = None
) -> dict[str, str]:
    """Create missing users with random passwords and add every one to the workspace; username -> action.

    `full_name` (first word: first name, the rest: last name) is what the UI shows for a new user, e.g.
    "Simulated annotator" for the loop's simulated annotators; by default the username.
    """
    import argilla as rg
    from argilla._exceptions import ArgillaAPIError

    client = connect()
    workspace = client.workspaces(workspace_name)
    actions: dict[str, str] = {}
    new: dict[str, dict[str, Any]] = {}  # saved even if a later user fails: these accounts exist now
    try:
        if workspace is None:
            workspace = rg.Workspace(name=workspace_name, client=client).create()
        members = {user.username for user in workspace.users}
        for username in usernames:
            user = client.users(username)
            if user is None:
                password = secrets.token_urlsafe(12)
                first, _, last = (full_name or username).partition(" ")
                user = rg.User(
                    username=username,
                    first_name=first,
                    last_name=last or None,
                    password=password,
                    role=role,
                    client=client,
                ).create()
                new[username] = {"password": password, "role": role, "url": client.api_url}
                actions[username] = "created"
            else:
                actions[username] = "exists"
            if username not in members:
                user.add_to_workspace(workspace)
                actions[username] += ", added to workspace"
    except ArgillaAPIError as err:
        raise UserError(f"the server refused to create or add users: {str(err).splitlines()[0][:300]}") from None
    finally:
        if new:
            _save_credentials(credentials, new)
    return actions


def list_users(workspace_name: str) -> list[dict[str, str]]:
    client = connect()
    workspace = client.workspaces(workspace_name)
    if workspace is None:
        raise UserError(f"workspace {workspace_name!r} not found")
    return [
        {"username": user.username, "role": getattr(user.role, "value", str(user.role))} for user in workspace.users
    ]


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = CliParser(
        prog="python -m annotation users",
        description="Create annotators and add them to a workspace, or list a workspace's users.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="create users (if missing) and add them to a workspace")
    add.add_argument("workspace")
    add.add_argument("usernames", nargs="+")
    add.add_argument("--role", choices=ROLES, default="annotator")
    add.add_argument("--credentials", type=Path, help="0600 JSON file for new passwords (default: in the var dir)")
    show = commands.add_parser("list", help="the users of a workspace")
    show.add_argument("workspace")
    args = parser.parse_args(argv)
    if args.command == "add":
        credentials = args.credentials or default_credentials()
        actions = add_users(args.workspace, args.usernames, args.role, credentials)
        print(json.dumps({"workspace": args.workspace, "users": actions, "credentials": str(credentials)}))
    else:
        print(json.dumps({"workspace": args.workspace, "users": list_users(args.workspace)}))
    return 0
