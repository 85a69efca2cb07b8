"""What the launcher (annotation/server.py) runs inside the Argilla server's own venv.

    python -m annotation.server_app serve --host 127.0.0.1 --port 6900 < owner.json
    python -m annotation.server_app worker

`serve` first brings the database up to date (Argilla's migrations, the engine's text index, the
owner whose API key and password it reads as JSON on stdin, never from the command line), then serves
the API and UI: one Python start-up instead of two.

Five changes to how the stock server runs, each measured on bulk upserts of 500 records (see
bench/annotation_ingest.py): webhook events are built only when a webhook listens, a new record is
validated without a throwaway ORM record when it has no suggestions or responses to check, a record
status that does not change is not written again, a new record with nothing attached is not read back
from the database, and the garbage collector leaves the loaded app alone. The three record patches
are for argilla-server 2.8.0 only (another version runs stock).
(SQLite's `synchronous=NORMAL` was measured too: an fsync costs 0.2 ms a commit here, nothing next to
a request, so commits stay fully durable.)

The stock `python -m argilla_server start|worker` cannot load a custom search engine: each entry
here imports `annotation.search_engine` first, which registers it for `ARGILLA_SEARCH_ENGINE`. The
worker needs it too (it recomputes record statuses through the engine). Configuration comes from the
ARGILLA_* environment the launcher sets. Imports only argilla_server, its dependencies and stdlib.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from annotation import search_engine

GC_THRESHOLD = 50_000
PATCHED_VERSION = "2.8.0"  # the argilla-server whose validator and status code the record patches were read from
OWNER = "argilla"  # Argilla's default owner and workspace names, which its docs and SDK examples use


_LISTENED = "annotation_webhook_events"  # session.info key: the events the enabled webhooks listen to


def _when_heard(notify: Callable[..., Awaitable[list]]) -> Callable[..., Awaitable[list]]:
    """`notify(db, event, obj)` that first checks whether an enabled webhook listens to `event`.

    The enabled webhooks are read once per database session (one request, or one worker job), not once per
    record: a webhook enabled while a bulk request runs gets events from the next request on.
    """

    @functools.wraps(notify)
    async def wrapper(db: Any, event_name: Any, obj: Any) -> list:
        from argilla_server.contexts import webhooks

        listened = db.info.get(_LISTENED)
        if listened is None:
            hooks = await webhooks.list_enabled_webhooks(db)
            listened = db.info[_LISTENED] = [event for hook in hooks for event in hook.events]
        if event_name not in listened:
            return []  # what Argilla's own enqueue returns then, after building the event for nobody
        return await notify(db, event_name, obj)

    return wrapper


def build_events_only_when_heard() -> None:
    """Argilla builds each record's webhook event (its dataset reloaded with five eager loads, the record
    serialised) and then queries the enabled webhooks, per record, before it finds nobody to send it to:
    80 % of a bulk upsert's server time without webhooks. Wrapped, the same jobs are enqueued."""
    from argilla_server.bulk import records_bulk
    from argilla_server.contexts import datasets, distribution, records

    for module in (records_bulk, records, datasets, distribution):
        for name in ("notify_record_event_v1", "notify_response_event_v1"):
            if hasattr(module, name):
                setattr(module, name, _when_heard(getattr(module, name)))


def validate_without_throwaway_records() -> None:
    """Argilla's create validator builds `Record(fields=..., dataset=dataset)` for every new record, only to check
    its suggestions and responses against; the backref puts each one in `dataset.records`, never in the session, so
    the request's next flush walks all 500 and warns once per record (SAWarning "not in session"): 13 % of a bulk
    upsert's server CPU. Without suggestions and responses the same checks run, in the same order, without it."""
    from argilla_server.validators.records import RecordCreateValidator

    stock = RecordCreateValidator.validate.__func__

    async def validate(cls: type[RecordCreateValidator], record_create: Any, dataset: Any) -> None:
        if record_create.suggestions or record_create.responses:
            return await stock(cls, record_create, dataset)
        cls._validate_fields(record_create.fields, dataset)
        cls._validate_metadata(record_create.metadata, dataset)
        cls._validate_vectors(record_create.vectors, dataset)

    RecordCreateValidator.validate = classmethod(validate)


def _loaded(record: Any, keys: tuple[str, ...]) -> bool:
    """Whether the ORM record holds the attributes `keys` (SQLAlchemy's own test: in `__dict__`, not expired)."""
    return all(key in record.__dict__ for key in keys)


def _unloaded(records: list, keys: tuple[str, ...]) -> list:
    """The records that still have one of the attributes `keys` to load."""
    return [record for record in records if not _loaded(record, keys)]


def write_only_changed_statuses() -> None:
    """Argilla sets every upserted record's status, changed or not, and adds the record to the session again: each
    assignment marks the record dirty, so the commit flushes all 500 to find nothing to write, and each add cascades
    through its relationships (8 % of a bulk upsert's server CPU). The same status rule (overlap: completed once
    `min_submitted` responses are submitted), assigned only when it differs; a record not yet in the session is
    added as before."""
    from argilla_server.contexts import distribution
    from argilla_server.enums import RecordStatus

    async def update_status(db: Any, record: Any) -> Any:
        submitted = len(record.responses_submitted) >= record.dataset.distribution["min_submitted"]
        status = RecordStatus.completed if submitted else RecordStatus.pending
        if not _loaded(record, ("status",)) or record.status != status:
            record.status = status
        if record not in db:
            db.add(record)
        return record

    distribution._update_record_status_with_overlap_strategy = update_status


_RELATED = ("dataset", "responses", "responses_submitted", "suggestions", "vectors")


def skip_reloading_new_bare_records() -> None:
    """After inserting a bulk, Argilla reads its records back twice (for the status: each record, its dataset and
    submitted responses; before answering: each record, its responses, suggestions and vectors), five queries and
    500 rows each time, 30 % of a bulk upsert's server CPU. A record this request just created, with no responses,
    suggestions or vectors in it, has none of them: they are set as loaded and empty (its dataset, the request's
    own, from the session), and only the other records are read back, by the stock code."""
    from argilla_server.bulk import records_bulk
    from argilla_server.contexts import distribution
    from argilla_server.models import Dataset
    from sqlalchemy.orm.attributes import set_committed_value

    fetch_existing = records_bulk.UpsertRecordsBulk._fetch_existing_dataset_records
    upsert_relationships = records_bulk.CreateRecordsBulk._upsert_records_relationships
    update_statuses = distribution.unsafe_update_records_status
    preload = records_bulk._preload_records_relationships_before_index

    async def fetch_existing_noted(self: Any, dataset: Any, records_upsert: list) -> dict:
        self.annotation_found = found = await fetch_existing(self, dataset, records_upsert)
        return found

    async def upsert_relationships_noted(self: Any, records: list, records_create: list) -> None:
        found = getattr(self, "annotation_found", None)  # None on the create endpoint: stock
        existing = {record.id for record in found.values()} if found is not None else None
        datasets: dict = {}
        for record, create in zip(records, records_create, strict=True):
            if existing is None or record.id in existing or create.suggestions or create.responses or create.vectors:
                continue
            if record.dataset_id not in datasets:
                datasets[record.dataset_id] = await self._db.get(Dataset, record.dataset_id)
            set_committed_value(record, "dataset", datasets[record.dataset_id])
            for key in _RELATED[1:]:
                set_committed_value(record, key, [])
        await upsert_relationships(self, records, records_create)

    async def update_statuses_of_unloaded(db: Any, records: list) -> None:
        unloaded = _unloaded(records, ("dataset", "responses_submitted"))
        if len(unloaded) == len(records):
            return await update_statuses(db, records)
        if unloaded:
            await update_statuses(db, unloaded)
        reread = set(map(id, unloaded))  # their statuses are set by the stock code above
        for record in records:
            if id(record) not in reread:
                await distribution._update_record_status(db, record)

    async def preload_unloaded(db: Any, records: list) -> None:
        unloaded = _unloaded(records, _RELATED[1:])
        if unloaded:
            await preload(db, unloaded)

    records_bulk.UpsertRecordsBulk._fetch_existing_dataset_records = fetch_existing_noted
    records_bulk.CreateRecordsBulk._upsert_records_relationships = upsert_relationships_noted
    distribution.unsafe_update_records_status = update_statuses_of_unloaded
    records_bulk._preload_records_relationships_before_index = preload_unloaded


def patch_record_writes() -> None:
    """The record patches above, on the argilla-server they were written against; any other runs stock."""
    from argilla_server._version import __version__

    if __version__ == PATCHED_VERSION:
        validate_without_throwaway_records()
        write_only_changed_statuses()
        skip_reloading_new_bare_records()


def prepare(owner: dict) -> None:
    """Bring the database to Argilla's schema plus the engine's text index; make sure the owner exists."""
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


def serve(host: str, port: int, owner: dict) -> None:
    prepare(owner)
    build_events_only_when_heard()
    patch_record_writes()

    import uvicorn
    from argilla_server import app

    collect_garbage_less()
    uvicorn.run(app, host=host, port=port, access_log=False)


def worker() -> None:
    from argilla_server.jobs.queues import DEFAULT_QUEUE, HIGH_QUEUE, REDIS_CONNECTION
    from rq import Worker

    build_events_only_when_heard()
    patch_record_writes()
    collect_garbage_less()
    Worker([HIGH_QUEUE, DEFAULT_QUEUE], connection=REDIS_CONNECTION).work(with_scheduler=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m annotation.server_app")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="migrate, then serve the API and UI (owner JSON on stdin)")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=6900)
    commands.add_parser("worker", help="the rq worker for background jobs")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.host, args.port, json.loads(sys.stdin.read()))
    else:
        worker()


if __name__ == "__main__":
    main()
