"""What the launcher (annotation/server/launcher.py) runs inside the Argilla server's own venv.

    python -m annotation.server.app serve --host 127.0.0.1 --port 6900 --processes 2 < owner.json
    python -m annotation.server.app worker

(The launcher starts them as `python -c "from annotation.server.app import main; main()" ...`: with
several processes, uvicorn's children are fresh interpreters, and those of a `-m` main module died.)

`serve` first brings the database up to date (Argilla's migrations, the engine's text index, the
owner whose API key and password it reads as JSON on stdin, never from the command line), then serves
the API and UI: one Python start-up instead of two.

Both apply the project's patches of argilla-server's internals (annotation/server/patches.py, each
with what it saves) and set the garbage collector to leave the loaded app alone. (SQLite's
`synchronous=NORMAL` was measured too: an fsync costs 0.2 ms a commit here, nothing next to a
request, so commits stay fully durable.)

The stock `python -m argilla_server start|worker` cannot load a custom search engine: each entry
here imports `annotation.server.search_engine` first, which registers it for `ARGILLA_SEARCH_ENGINE`. The
worker needs it too (it recomputes record statuses through the engine). Configuration comes from the
ARGILLA_* environment the launcher sets. Imports only argilla_server, its dependencies and stdlib.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
from typing import Any

from annotation.server import patches, search_engine

GC_THRESHOLD = 50_000
CONCURRENCY_ENV = "ANNOTATION_SERVER_CONCURRENCY"  # from `serve` to its server processes (fresh interpreters)
OWNER = "argilla"  # Argilla's default owner and workspace names, which its docs and SDK examples use


def prepare(owner: dict) -> None:
    """Bring the database to Argilla's schema plus the engine's text index; make sure the owner exists."""
    from argilla_server.cli.database.migrate import migrate_db
    from argilla_server.database import sync_engine

    migrate_db("head")
    with sync_engine.begin() as connection:
        rebuilt = search_engine.ensure_schema(connection)
    if rebuilt:
        print(f"rebuilt the text index of {rebuilt} dataset(s)")
    message = asyncio.run(_set_owner(owner["api_key"], owner["password"], owner["replace"]))
    if message:
        print(message, flush=True)


async def _set_owner(api_key: str, password: str, replace: bool) -> str | None:
    """Create the owner if missing; with `replace` (new key files), give an existing one this key and password."""
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
        if not replace:
            return None
        await user.update(db, api_key=api_key, password_hash=accounts.hash_password(password))
        return f"gave the owner {OWNER!r} a new API key and password"


def collect_garbage_less() -> None:
    """The app's own objects (modules, pydantic schemas, SQLAlchemy mappers) set aside for good, and a
    collection every 50,000 new objects instead of 700: a bulk of 500 records creates tens of thousands of
    short-lived ORM objects, and each full collection walked the whole app again (40 % of a bulk's time)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


class Admission:
    """ASGI wrapper: at most `limit` HTTP requests of this process inside the app at once, the others wait their
    turn (first come, first served).

    A request's work is CPU on the event loop and SQLite calls on aiosqlite's threads, in the same process. With
    50 annotators at once (25 requests per process) each request's next step waited behind the others' Python:
    a write transaction held SQLite's write lock 5.2 ms on average (busy 93 % of the time; every writer of both
    processes queued behind it), and the server spent 22 ms of CPU per fetch + submit against 19 ms with one
    request at a time: 77 against 91-93 submissions/s (20,000 records, 2 processes on 2 cores; the README has
    the figures per limit). A request that takes long (a large bulk upload, a slow client reading a large
    answer) holds its process's turn meanwhile: raise `--concurrency` where such requests are common."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self._turns = asyncio.Semaphore(limit)  # bound to the serving event loop when first waited on

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        async with self._turns:
            await self.app(scope, receive, send)


def serve(host: str, port: int, owner: dict, processes: int, concurrency: int) -> None:
    """Migrate, then serve with `processes` server processes (uvicorn's workers, each a fresh interpreter that
    imports `process_app`; with one, this process serves), each with `concurrency` requests at once."""
    patches.apply_all()  # first: the owner's connections below stay in the pool the app uses
    prepare(owner)
    os.environ[CONCURRENCY_ENV] = str(concurrency)

    import uvicorn

    if processes > 1:
        target = "annotation.server.app:process_app"
        uvicorn.run(target, factory=True, host=host, port=port, workers=processes, access_log=False)
    else:
        uvicorn.run(_loaded_app(), host=host, port=port, access_log=False)


def _loaded_app() -> Any:
    from argilla_server import app

    collect_garbage_less()
    return Admission(app, int(os.environ[CONCURRENCY_ENV]))


def process_app() -> Any:
    """The app in each of several server processes: patched, as `serve` patches its own."""
    patches.apply_all()
    return _loaded_app()


def worker() -> None:
    from argilla_server.jobs.queues import DEFAULT_QUEUE, HIGH_QUEUE, REDIS_CONNECTION
    from rq import Worker

    patches.apply_all()
    collect_garbage_less()
    Worker([HIGH_QUEUE, DEFAULT_QUEUE], connection=REDIS_CONNECTION).work(with_scheduler=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m annotation.server.app")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="migrate, then serve the API and UI (owner JSON on stdin)")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=6900)
    serve_parser.add_argument("--processes", type=int, default=1, help="server processes")
    serve_parser.add_argument("--concurrency", type=int, default=1, help="requests at once in each server process")
    commands.add_parser("worker", help="the rq worker for background jobs")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.host, args.port, json.loads(sys.stdin.read()), args.processes, args.concurrency)
    else:
        worker()


if __name__ == "__main__":
    main()
