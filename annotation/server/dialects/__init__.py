"""The SQL the search engine needs from each database it runs on, behind one interface.

`annotation.server.search_engine` builds its statements from the fragments a `Dialect` gives (JSON values, the
text index, timestamps, how ids bind) and reads the queue, counts and status statements from it, so the engine's
logic (filters, sorting, the annotators' queues, progress, metrics) is written once. `sqlite.py` keeps the text
index in FTS5, `postgresql.py` in a `tsvector` table with a GIN index; both keep the same counts, by triggers in
the writing transaction, and the same queue index. Imports only argilla_server's dependencies and the standard
library (runs in the server venv).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from sqlalchemy import text


@dataclass(frozen=True)
class Term:
    """One word or phrase of a text query (`words`, as typed), optionally a prefix (`word*`)."""

    words: str
    prefix: bool = False


RECORD_COUNTS = "annotation_record_counts"
RESPONSE_COUNTS = "annotation_response_counts"
# A field's position among its dataset's fields (stable: fields are fixed once a dataset has records).
FIELD_POSITION = (
    "(SELECT COUNT(*) FROM fields f2 WHERE f2.dataset_id = f.dataset_id "
    "AND (f2.inserted_at, f2.id) < (f.inserted_at, f.id))"
)
# The focus view's queue: pending records without a response of this user, in id order from the user's start, then
# from the dataset's first id: two walks of the queue index, each stopping after offset + limit records.
_QUEUE_WALK = (
    "SELECT r.id FROM records r WHERE r.dataset_id = :ds AND r.status = 'pending' AND r.id {cmp} :start "
    "AND NOT EXISTS (SELECT 1 FROM responses rs WHERE rs.record_id = r.id AND rs.user_id = :user) "
    "ORDER BY r.id LIMIT :window"
)


class Dialect:
    """What differs between the databases; the statements marked `{datasets}` take a list of quoted dataset ids."""

    name: ClassVar[str]
    # Idempotent DDL run at every start: the text index, the counts, their triggers, the queue index.
    schema: ClassVar[list[str]]
    # The text index of some datasets built again, or emptied; the datasets whose text index is stale (None: those
    # whose counts are).
    rebuild_text: ClassVar[list[str]]
    delete_text: ClassVar[list[str]]
    stale_text: ClassVar[str | None]
    # The counts of some datasets counted again; the datasets whose counts disagree with the tables.
    recount: ClassVar[list[str]]
    stale_counts: ClassVar[str]
    # A record's status from its submitted responses (`:id`, `:now`), and every status a crash left behind.
    set_status: ClassVar[str]
    repair_statuses: ClassVar[str]
    # Expressions over the items `v` of `each`, and the type of a metadata property.
    item_text: ClassVar[str]
    item_number: ClassVar[str]
    item_kind: ClassVar[str]
    metadata_type: ClassVar[str]

    # An annotator's queue (`:ds`, `:user`, `:start`, `:window`, `:limit`, `:offset`): its size from the counts, and
    # its page (rows of total, record id; one row with a NULL id when the page is empty).
    queue_page: ClassVar[str] = (
        f"SELECT t.total, q.id FROM (SELECT COALESCE((SELECT n FROM {RECORD_COUNTS} WHERE dataset_id = :ds "
        f"AND status = 'pending'), 0) - COALESCE((SELECT SUM(n) FROM {RESPONSE_COUNTS} WHERE dataset_id = :ds "
        "AND user_id = :user AND record_status = 'pending'), 0) AS total) AS t "
        f"LEFT JOIN (SELECT id, 0 AS lap FROM ({_QUEUE_WALK.format(cmp='>=')}) AS a "
        f"UNION ALL SELECT id, 1 AS lap FROM ({_QUEUE_WALK.format(cmp='<')}) AS b "
        "ORDER BY lap, id LIMIT :limit OFFSET :offset) AS q ON TRUE ORDER BY q.lap, q.id"
    )
    # The other tabs: the user's own responses of some statuses (`{statuses}`), in the same order.
    answered_page: ClassVar[str] = (
        f"SELECT t.total, q.id FROM (SELECT COALESCE(SUM(n), 0) AS total FROM {RESPONSE_COUNTS} "
        "WHERE dataset_id = :ds AND user_id = :user AND status IN ({statuses})) AS t "
        "LEFT JOIN (SELECT rs.record_id AS id, rs.record_id < :start AS lap FROM responses rs "
        "JOIN records r ON r.id = rs.record_id WHERE rs.user_id = :user AND CAST(rs.status AS TEXT) IN ({statuses}) "
        "AND r.dataset_id = :ds ORDER BY lap, rs.record_id LIMIT :limit OFFSET :offset) AS q ON TRUE "
        "ORDER BY q.lap, q.id"
    )

    def ident(self, value: UUID) -> Any:
        """An id as this database binds it."""
        raise NotImplementedError

    def literal(self, value: UUID) -> str:
        """An id as an SQL literal (from a UUID object only: safe to format into a statement)."""
        raise NotImplementedError

    def path(self, *keys: str) -> Any:
        """The bind value of a JSON path to nested keys (none: the value itself)."""
        raise NotImplementedError

    def timestamp(self, moment: datetime) -> Any:
        """A naive UTC datetime as `inserted_at`/`updated_at` compare with it."""
        raise NotImplementedError

    def each(self, column: str, path: str) -> str:
        """A FROM item `v`: the value at `path` of JSON `column`, or each item when it is a list."""
        raise NotImplementedError

    def value(self, column: str, path: str) -> list[str]:
        """Sort keys for the JSON scalar at `path` (numbers by value, text as text)."""
        raise NotImplementedError

    def number(self, column: str, path: str) -> str:
        """The number at `path` (numbers, and text that reads as one), else NULL."""
        raise NotImplementedError

    def text_match(self, term: Term, position: int | None, bind: Callable[[Any], str]) -> str:
        """A subquery of the ids of the dataset's (`:dataset_id`) records with a field (the one at `position`, when
        given) matching `term`; `bind` turns a value into a bound parameter."""
        raise NotImplementedError

    def text_scores(self, terms: list[Term], position: int | None, bind: Callable[[Any], str]) -> str:
        """A subquery of (record_id, score): relevance summed over the fields matching any of `terms`."""
        raise NotImplementedError

    def prepare(self, connection: Any) -> None:
        """What the database needs once per start, before the schema (a journal mode, a lock)."""

    def ensure_schema(self, connection: Any) -> int:
        """Create what is missing, rebuild what is stale in any dataset and set the statuses a crash left behind;
        returns how many datasets had their text index rebuilt. `connection`: a SQLAlchemy sync connection in a
        transaction (the caller commits)."""
        self.prepare(connection)
        for statement in self.schema:
            connection.execute(text(statement))
        stale_counts = self._stale(connection, self.stale_counts)
        rebuilt = stale_counts if self.stale_text is None else self._stale(connection, self.stale_text)
        self._run_for(connection, self.rebuild_text, rebuilt)
        self._run_for(connection, self.recount, stale_counts)
        connection.execute(text(self.repair_statuses))
        return len(rebuilt)

    def _stale(self, connection: Any, query: str) -> set[UUID]:
        return {UUID(str(row[0])) for row in connection.execute(text(query)) if row[0] is not None}

    def _run_for(self, connection: Any, statements: list[str], datasets: set[UUID]) -> None:
        if datasets:
            for statement in self.for_datasets(statements, *sorted(datasets)):
                connection.execute(text(statement))

    def for_datasets(self, statements: list[str], *datasets: UUID) -> list[str]:
        """`statements` for these datasets."""
        listed = ", ".join(self.literal(dataset) for dataset in datasets)
        return [statement.format(datasets=listed) for statement in statements]
