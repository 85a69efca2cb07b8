"""Checks that run inside the embedded server's venv (argilla-server's dependencies), started by
tests/test_annotation_server_patches.py: `python tests/server_venv_checks.py one-hop|admission` prints JSON."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


async def _statements(url: str) -> list[Any]:
    """What SQLAlchemy's aiosqlite adapter gives back for each kind of statement: rows, counts, ids, errors."""
    from sqlalchemy import exc, text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    seen: list[Any] = []
    async with engine.begin() as db:
        await db.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE)"))
        inserted = await db.execute(text("INSERT INTO t (name) VALUES ('a')"))
        seen.append(["insert", inserted.rowcount, inserted.lastrowid])
        many = await db.execute(text("INSERT INTO t (name) VALUES (:name)"), [{"name": "b"}, {"name": "c"}])
        seen.append(["executemany", many.rowcount])
        rows = await db.execute(text("SELECT id, name FROM t ORDER BY id"))
        seen.append(["select", list(rows.keys()), [list(row) for row in rows]])
        empty = await db.execute(text("SELECT id FROM t WHERE name = 'z'"))
        seen.append(["empty", empty.all()])
        updated = await db.execute(text("UPDATE t SET name = name || '!' WHERE id > 1"))
        seen.append(["update", updated.rowcount])
        try:
            await db.execute(text("INSERT INTO t (name) VALUES ('a')"))
        except exc.IntegrityError as error:
            seen.append(["integrity-error", type(error.orig).__name__])
    async with engine.connect() as db:
        streamed = await db.stream(text("SELECT name FROM t ORDER BY id"))
        seen.append(["server-side", [row[0] async for row in streamed]])
    await engine.dispose()
    return seen


def one_hop() -> dict[str, Any]:
    """The same statements answered by the stock adapter and by `execute_sqlite_statements_in_one_hop`."""
    from annotation.server import patches

    with tempfile.TemporaryDirectory() as tmp:
        stock = asyncio.run(_statements(f"sqlite+aiosqlite:///{tmp}/stock.db"))
        patches.execute_sqlite_statements_in_one_hop()
        patched = asyncio.run(_statements(f"sqlite+aiosqlite:///{tmp}/patched.db"))
    return {"stock": stock, "patched": patched}


def admission() -> dict[str, Any]:
    """How many of 12 requests sent at once were inside the app together, and in which order they got in."""
    from annotation.server.app import Admission

    async def run(limit: int) -> dict[str, Any]:
        inside, most, order = 0, 0, []

        async def app(scope: dict, receive: Any, send: Any) -> None:
            nonlocal inside, most
            inside += 1
            most = max(most, inside)
            order.append(scope.get("n"))
            await asyncio.sleep(0.01)
            inside -= 1

        admitted = Admission(app, limit)
        await asyncio.gather(*(admitted({"type": "http", "n": n}, None, None) for n in range(12)))
        lifespan_inside = most
        await asyncio.gather(*(admitted({"type": "lifespan"}, None, None) for _ in range(3)))
        return {"most_inside": lifespan_inside, "order": order[:12], "lifespan_most_inside": most}

    return {str(limit): asyncio.run(run(limit)) for limit in (1, 3)}


if __name__ == "__main__":
    print(json.dumps({"one-hop": one_hop, "admission": admission}[sys.argv[1]]()))
