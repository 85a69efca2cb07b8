"""pytest plugin: argilla-server's own search-engine tests, pointed at `annotation.server.search_engine`.

Loaded by `python -m annotation.server.conformance` with `--noconftest`, inside the server venv, from the
unpacked argilla-server sdist (so `tests.factories` and `tests.database` are theirs, unchanged). It
replaces the sdist's conftests: the database fixtures (SQLite, migrated, one savepoint per test),
`search_engine` (this project's engine) and `opensearch`, the client the tests use to read and write
Elasticsearch documents directly. Here the database is the index, so `opensearch` writes what the
tests put in a document (responses, a text field) into Argilla's tables before the engine's next
query. Tests that assert Elasticsearch internals (index mappings, the stored document layout, its
float32 numbers, the engine classes themselves) are skipped, each with its reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import UUID

import opensearchpy.helpers
import pytest
import pytest_asyncio
from argilla_server.cli.database.migrate import migrate_db
from argilla_server.database import sync_engine
from argilla_server.models import Field, Record, Response
from argilla_server.settings import settings
from sqlalchemy import NullPool, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, create_async_engine
from tests.database import TestSession, set_task

from annotation.server.search_engine import SQLSearchEngine, ensure_schema

MAPPING = "asserts the Elasticsearch index mapping"
DOCUMENT = "asserts the layout of the Elasticsearch document (_source)"
SKIPS = {
    "test_create_index_for_dataset": MAPPING,
    "test_create_index_for_dataset_with_fields": MAPPING,
    "test_create_metadata_property": MAPPING,
    "test_create_index_for_dataset_with_metadata_properties": MAPPING,
    "test_create_index_for_dataset_with_questions": MAPPING,
    "test_configure_metadata_property": MAPPING,
    "test_annotators_limits": MAPPING + " (its field limits)",
    "test_annotator_limits_increasing_default_fields_limit": MAPPING + " (its field limits)",
    "test_index_records": DOCUMENT,
    "test_index_records_with_none_field_values": DOCUMENT,
    "test_index_records_with_suggestions": DOCUMENT,
    "test_index_records_with_metadata": DOCUMENT,
    "test_index_records_with_vectors": DOCUMENT,
    "test_update_record_response": DOCUMENT + " and the index mapping",
    "test_delete_record_response": DOCUMENT + " (responses left in the database but removed from the index)",
    "test_delete_records": DOCUMENT + " (records left in the database but removed from the index)",
}
FLOAT32 = "asserts Elasticsearch's float32 rounding of float metadata (this engine returns the stored values exactly)"
ENGINE_CLASSES = "tests the ElasticSearchEngine/OpenSearchEngine classes themselves (index settings, client errors)"


def skip_reason(item: pytest.Item) -> str | None:
    if item.cls is not None and item.cls.__name__ in ("TestElasticSearchEngine", "TestOpenSearchEngine"):
        return ENGINE_CLASSES
    name = item.originalname  # type: ignore[attr-defined]
    params = getattr(item, "callspec", None)
    if name == "test_compute_metrics_for" and params is not None and params.params["property_name"] == "seq_float":
        return FLOAT32
    return SKIPS.get(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the Elasticsearch/OpenSearch suites (skipped upstream for other engines) on this engine, minus the skips."""
    for item in items:
        for node in item.listchain():
            node.own_markers = [m for m in node.own_markers if m.name != "skipif"]
        reason = skip_reason(item)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    stats = terminalreporter.stats
    passed = len(stats.get("passed", []))
    skipped = stats.get("skipped", [])
    failed = len(stats.get("failed", [])) + len(stats.get("error", []))
    total = passed + failed + len(skipped)
    write = terminalreporter.write_line
    write("")
    write(f"skipped ({len(skipped)}, Elasticsearch internals):")
    for report in skipped:
        write(f"  {report.nodeid.split('::', 1)[1]}: {report.longrepr[2].removeprefix('Skipped: ')}")
    write(f"conformance: {passed}/{total} passed, {failed} failed, {len(skipped)} skipped")


# ------------------------------------------------------------------------------------------------ database


@pytest.fixture(scope="session")
def event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest_asyncio.fixture(scope="session")
async def connection() -> AsyncIterator[AsyncConnection]:
    """The migrated database with the engine's text index, as the launcher's start prepares it."""
    set_task(asyncio.current_task())
    migrate_db("head")
    with sync_engine.begin() as sync_connection:
        ensure_schema(sync_connection)
    engine = create_async_engine(settings.database_url, poolclass=NullPool)
    conn = await engine.connect()
    TestSession.configure(bind=conn)
    yield conn
    await conn.close()
    await engine.dispose()


@pytest_asyncio.fixture(autouse=True)
async def db(connection: AsyncConnection) -> AsyncIterator[AsyncSession]:
    """Each test in a savepoint that is rolled back."""
    await connection.begin_nested()
    session = TestSession()
    yield session
    await session.close()
    await TestSession.remove()
    await connection.rollback()


# ------------------------------------------------------------------------------------------------ "the index"


class IndexShim:
    """What the tests write through the OpenSearch client, written into Argilla's tables instead.

    `update(..., {"doc": {"responses": [...]}})` becomes Response rows. The database allows one
    response per user and record; where a test gives one user several on a record (possible only in an
    Elasticsearch document), the first is kept. A bulk-indexed `fields.text` becomes the record's
    `text` field (added to the dataset when it has none).
    """

    class Indices:
        def create(self, *args: Any, **kwargs: Any) -> None:
            """The tables exist already."""

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            """Writes are visible to the next query."""

        def delete(self, *args: Any, **kwargs: Any) -> None:
            """Each test's rows are rolled back."""

    def __init__(self) -> None:
        self.indices = self.Indices()
        self.responses: dict[str, list[dict]] = {}
        self.changed: set[str] = set()
        self.texts: dict[str, str] = {}

    def get(self, index: str, id: Any) -> dict:
        return {"_source": {"responses": list(self.responses.get(str(id), []))}}

    def update(self, index: str, id: Any, body: dict) -> None:
        self.responses[str(id)] = list(body["doc"]["responses"])
        self.changed.add(str(id))

    def bulk_index(self, actions: list[dict]) -> None:
        for action in actions:
            self.texts[str(action["_id"])] = action["fields"]["text"]

    async def flush(self) -> None:
        session: AsyncSession = TestSession()
        for record_id in sorted(self.changed):
            await session.execute(delete(Response).where(Response.record_id == UUID(record_id)))
            users: set[str] = set()
            for doc in self.responses[record_id]:
                if doc["user_id"] in users:
                    continue
                users.add(doc["user_id"])
                session.add(
                    Response(
                        id=UUID(doc["id"]),
                        record_id=UUID(record_id),
                        user_id=UUID(doc["user_id"]),
                        status=doc["status"],
                        values={"rating": {"value": doc["rating"]}},
                    )
                )
        for record_id, value in sorted(self.texts.items()):
            dataset_id, fields = (
                await session.execute(select(Record.dataset_id, Record.fields).where(Record.id == UUID(record_id)))
            ).one()
            has_text = await session.execute(
                select(Field.id).where(Field.dataset_id == dataset_id, Field.name == "text")
            )
            if has_text.first() is None:
                session.add(Field(name="text", title="text", settings={"type": "text"}, dataset_id=dataset_id))
                await session.flush()
            await session.execute(
                update(Record).where(Record.id == UUID(record_id)).values(fields={**fields, "text": value})
            )
        self.changed.clear()
        self.texts.clear()
        await session.commit()


def _bulk(client: Any, actions: list[dict], **kwargs: Any) -> tuple[int, list]:
    if isinstance(client, IndexShim):
        client.bulk_index(actions)
        return len(actions), []
    return _opensearch_bulk(client, actions, **kwargs)


_opensearch_bulk = opensearchpy.helpers.bulk
opensearchpy.helpers.bulk = _bulk


class ConformanceEngine(SQLSearchEngine):
    """The project's engine; each query first applies what the test wrote through `opensearch`."""

    def __init__(self, shim: IndexShim) -> None:
        self.shim = shim

    async def _bulk_op_request(self, actions: list[dict]) -> None:
        """The tests' Elasticsearch vector sync: the vectors are in the database already."""

    async def search(self, *args: Any, **kwargs: Any) -> Any:
        await self.shim.flush()
        return await super().search(*args, **kwargs)

    async def similarity_search(self, *args: Any, **kwargs: Any) -> Any:
        await self.shim.flush()
        return await super().similarity_search(*args, **kwargs)

    async def get_dataset_progress(self, *args: Any, **kwargs: Any) -> Any:
        await self.shim.flush()
        return await super().get_dataset_progress(*args, **kwargs)

    async def get_dataset_user_progress(self, *args: Any, **kwargs: Any) -> Any:
        await self.shim.flush()
        return await super().get_dataset_user_progress(*args, **kwargs)


@pytest.fixture(scope="session")
def elasticsearch_config() -> dict:
    return {}


@pytest.fixture
def opensearch() -> IndexShim:
    return IndexShim()


@pytest.fixture
def search_engine(opensearch: IndexShim) -> ConformanceEngine:
    return ConformanceEngine(opensearch)
