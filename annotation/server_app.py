"""What the launcher (annotation/server.py) runs inside the Argilla server's own venv.

    python -m annotation.server_app prepare    # migrate, text index, owner (JSON on stdin)
    python -m annotation.server_app serve --host 127.0.0.1 --port 6900
    python -m annotation.server_app worker

The stock `python -m argilla_server start|worker` cannot load a custom search engine: each entry
here imports `annotation.search_engine` first, which registers it for `ARGILLA_SEARCH_ENGINE`. The
worker needs it too (it recomputes record statuses through the engine). Configuration comes from the
ARGILLA_* environment the launcher sets. Imports only argilla_server, its dependencies and stdlib.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from annotation import search_engine

OWNER = "argilla"  # Argilla's default owner and workspace names, which its docs and SDK examples use


def prepare(owner: dict | None) -> None:
    """Bring the database to Argilla's schema plus the engine's text index; set the owner's key and password."""
    from argilla_server.cli.database.migrate import migrate_db
    from argilla_server.database import sync_engine

    migrate_db("head")
    with sync_engine.connect() as connection:
        # WAL: the server and the worker read while the other writes.
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    with sync_engine.begin() as connection:
        rebuilt = search_engine.ensure_schema(connection)
    if rebuilt:
        print(f"rebuilt the text index of {rebuilt} dataset(s)")
    if owner is not None:
        print(asyncio.run(_set_owner(owner["api_key"], owner["password"])))


async def _set_owner(api_key: str, password: str) -> str:
    """Create the owner, or give an existing one this key and password (its key file was lost)."""
    from argilla_server.cli.database.users.utils import get_or_new_workspace
    from argilla_server.contexts import accounts
    from argilla_server.database import AsyncSessionLocal
    from argilla_server.models import User, UserRole

    async with AsyncSessionLocal() as db:
        user = await accounts.get_user_by_username(db, OWNER)
        if user is None:
            await User.create(
                db,
                first_name="Owner",
                username=OWNER,
                role=UserRole.owner,
                api_key=api_key,
                password_hash=accounts.hash_password(password),
                workspaces=[await get_or_new_workspace(db, OWNER)],
            )
            return f"created the owner {OWNER!r}"
        await user.update(db, api_key=api_key, password_hash=accounts.hash_password(password))
        return f"gave the owner {OWNER!r} a new API key and password"


def serve(host: str, port: int) -> None:
    import uvicorn
    from argilla_server import app

    uvicorn.run(app, host=host, port=port, access_log=False)


def worker() -> None:
    from argilla_server.jobs.queues import DEFAULT_QUEUE, HIGH_QUEUE, REDIS_CONNECTION
    from rq import Worker

    Worker([HIGH_QUEUE, DEFAULT_QUEUE], connection=REDIS_CONNECTION).work(with_scheduler=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m annotation.server_app")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prepare", help="migrate the database; owner credentials as JSON on stdin (optional)")
    serve_parser = commands.add_parser("serve", help="the API and UI (uvicorn)")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=6900)
    commands.add_parser("worker", help="the rq worker for background jobs")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(json.loads(sys.stdin.read() or "null"))
    elif args.command == "serve":
        serve(args.host, args.port)
    else:
        worker()


if __name__ == "__main__":
    main()
