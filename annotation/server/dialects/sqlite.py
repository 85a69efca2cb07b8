"""SQLite: the text index in FTS5, the counts and their triggers, JSON through json_each/json_extract.

FTS rows: one per (record, field); rowid = doc * 256 + the field's position in its dataset, where `doc` is a stable
integer per record (`annotation_search_docs`, never reused), so a record's rows are one rowid range. Ids are stored
as 32 hex digits, timestamps as text.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from annotation.server.dialects import FIELD_POSITION, RECORD_COUNTS, RESPONSE_COUNTS, Dialect, Term

FIELD_SLOTS = 256  # FTS rowids per record: fields beyond this many in one dataset are not text-searchable
DOCS = "annotation_search_docs"
TEXT = "annotation_search_text"
FIELD_TEXT = "annotation_search_field_text"
# Searchable text of a field value: strings as they are, chat messages and custom objects as their leaf values.
_LEAVES = "(SELECT group_concat(t.atom, ' ') FROM json_tree(je.value) t WHERE t.atom IS NOT NULL)"
_RANGE = f"BETWEEN {{doc}} * {FIELD_SLOTS} AND {{doc}} * {FIELD_SLOTS} + {FIELD_SLOTS - 1}"
_OLD_DOC = f"(SELECT doc FROM {DOCS} WHERE record_id = OLD.id)"
_REINDEX_NEW = (
    f"INSERT INTO {TEXT}(rowid, content) SELECT text_rowid, content FROM {FIELD_TEXT} "
    "WHERE record_id = NEW.id AND content IS NOT NULL AND content != '';"
)
TEXT_SCHEMA = [
    f"CREATE TABLE IF NOT EXISTS {DOCS} (doc INTEGER PRIMARY KEY AUTOINCREMENT, record_id CHAR(32) NOT NULL UNIQUE, "
    "dataset_id CHAR(32) NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS ix_{DOCS}_dataset_id ON {DOCS} (dataset_id)",
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {TEXT} USING fts5(content, tokenize = 'unicode61 remove_diacritics 2')",
    f"""CREATE VIEW IF NOT EXISTS {FIELD_TEXT} AS
    SELECT r.id AS record_id, r.dataset_id AS dataset_id, d.doc * {FIELD_SLOTS} + {FIELD_POSITION} AS text_rowid,
           CASE je.type WHEN 'text' THEN je.value WHEN 'null' THEN NULL
                WHEN 'object' THEN {_LEAVES} WHEN 'array' THEN {_LEAVES} ELSE CAST(je.value AS TEXT) END AS content
    FROM records r
    JOIN {DOCS} d ON d.record_id = r.id
    JOIN fields f ON f.dataset_id = r.dataset_id AND json_extract(f.settings, '$.type') IS NOT 'image'
    JOIN json_each(r.fields) je ON je.key = f.name
    WHERE {FIELD_POSITION} < {FIELD_SLOTS}""",
    f"""CREATE TRIGGER IF NOT EXISTS annotation_search_records_insert AFTER INSERT ON records BEGIN
    INSERT OR REPLACE INTO {DOCS}(record_id, dataset_id) VALUES (NEW.id, NEW.dataset_id);
    {_REINDEX_NEW}
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS annotation_search_records_update AFTER UPDATE OF fields ON records BEGIN
    DELETE FROM {TEXT} WHERE rowid {_RANGE.format(doc=_OLD_DOC)};
    {_REINDEX_NEW}
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS annotation_search_records_delete AFTER DELETE ON records BEGIN
    DELETE FROM {TEXT} WHERE rowid {_RANGE.format(doc=_OLD_DOC)};
    DELETE FROM {DOCS} WHERE record_id = OLD.id;
    END""",
]

# Records per (dataset, status) and responses per (dataset, user, response status, record status), kept by triggers
# in the writing transaction: progress, metrics and an annotator's queue size are read from them, not counted.
_RESPONSES_OF_OLD = (
    f"UPDATE {RESPONSE_COUNTS} SET n = n - (SELECT COUNT(*) FROM responses rs WHERE rs.record_id = OLD.id "
    f"AND rs.user_id = {RESPONSE_COUNTS}.user_id AND rs.status = {RESPONSE_COUNTS}.status) "
    "WHERE dataset_id = OLD.dataset_id AND record_status = OLD.status "
    "AND user_id IN (SELECT user_id FROM responses WHERE record_id = OLD.id);"
)
_ONE_RESPONSE = (
    f"INSERT INTO {RESPONSE_COUNTS} (dataset_id, user_id, status, record_status, n) "
    "SELECT r.dataset_id, NEW.user_id, NEW.status, r.status, 1 FROM records r WHERE r.id = NEW.record_id "
    "ON CONFLICT DO UPDATE SET n = n + 1;"
)
_NO_RESPONSE = (
    f"UPDATE {RESPONSE_COUNTS} SET n = n - 1 WHERE user_id = OLD.user_id AND status = OLD.status "
    "AND (dataset_id, record_status) IN (SELECT r.dataset_id, r.status FROM records r WHERE r.id = OLD.record_id);"
)
COUNTS_SCHEMA = [
    f"CREATE TABLE IF NOT EXISTS {RECORD_COUNTS} (dataset_id CHAR(32) NOT NULL, status VARCHAR NOT NULL, "
    "n INTEGER NOT NULL, PRIMARY KEY (dataset_id, status)) WITHOUT ROWID",
    f"CREATE TABLE IF NOT EXISTS {RESPONSE_COUNTS} (dataset_id CHAR(32) NOT NULL, user_id CHAR(32) NOT NULL, "
    "status VARCHAR NOT NULL, record_status VARCHAR NOT NULL, n INTEGER NOT NULL, "
    "PRIMARY KEY (dataset_id, user_id, status, record_status)) WITHOUT ROWID",
    # An annotator's queue (pending records it has not answered) walked in id order from a per-user start.
    "CREATE INDEX IF NOT EXISTS annotation_ix_records_queue ON records (dataset_id, status, id)",
    f"""CREATE TRIGGER IF NOT EXISTS annotation_counts_records_insert AFTER INSERT ON records BEGIN
    INSERT INTO {RECORD_COUNTS} (dataset_id, status, n) VALUES (NEW.dataset_id, NEW.status, 1)
    ON CONFLICT DO UPDATE SET n = n + 1;
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS annotation_counts_records_status AFTER UPDATE OF status ON records
    WHEN OLD.status IS NOT NEW.status BEGIN
    UPDATE {RECORD_COUNTS} SET n = n - 1 WHERE dataset_id = OLD.dataset_id AND status = OLD.status;
    INSERT INTO {RECORD_COUNTS} (dataset_id, status, n) VALUES (NEW.dataset_id, NEW.status, 1)
    ON CONFLICT DO UPDATE SET n = n + 1;
    {_RESPONSES_OF_OLD}
    INSERT INTO {RESPONSE_COUNTS} (dataset_id, user_id, status, record_status, n)
    SELECT NEW.dataset_id, user_id, status, NEW.status, COUNT(*) FROM responses WHERE record_id = NEW.id
    GROUP BY user_id, status ON CONFLICT DO UPDATE SET n = n + excluded.n;
    END""",
    # A deleted record's responses go by cascade after it, when it can no longer be looked up: counted off here.
    f"""CREATE TRIGGER IF NOT EXISTS annotation_counts_records_delete BEFORE DELETE ON records BEGIN
    UPDATE {RECORD_COUNTS} SET n = n - 1 WHERE dataset_id = OLD.dataset_id AND status = OLD.status;
    {_RESPONSES_OF_OLD}
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS annotation_counts_responses_insert AFTER INSERT ON responses
    BEGIN {_ONE_RESPONSE} END""",
    f"""CREATE TRIGGER IF NOT EXISTS annotation_counts_responses_status AFTER UPDATE OF status ON responses
    WHEN OLD.status IS NOT NEW.status BEGIN {_NO_RESPONSE} {_ONE_RESPONSE} END""",
    f"""CREATE TRIGGER IF NOT EXISTS annotation_counts_responses_delete AFTER DELETE ON responses
    BEGIN {_NO_RESPONSE} END""",
    f"""CREATE TRIGGER IF NOT EXISTS annotation_counts_datasets_delete AFTER DELETE ON datasets BEGIN
    DELETE FROM {RECORD_COUNTS} WHERE dataset_id = OLD.id;
    DELETE FROM {RESPONSE_COUNTS} WHERE dataset_id = OLD.id;
    END""",
]
_COUNTED_RECORDS = "SELECT dataset_id, status, COUNT(*) FROM records GROUP BY dataset_id, status"
_COUNTED_RESPONSES = (
    "SELECT r.dataset_id, rs.user_id, rs.status, r.status, COUNT(*) FROM responses rs JOIN records r "
    "ON r.id = rs.record_id GROUP BY r.dataset_id, rs.user_id, rs.status, r.status"
)
_KEPT_RECORDS = f"SELECT dataset_id, status, n FROM {RECORD_COUNTS} WHERE n != 0"
_KEPT_RESPONSES = f"SELECT dataset_id, user_id, status, record_status, n FROM {RESPONSE_COUNTS} WHERE n != 0"

# Records whose status disagrees with their submitted responses (overlap: completed once `min_submitted` are
# submitted): a server killed between a response's commit and its record's status update leaves one behind.
# `+rs.status`: the record's responses are found by its id. Without statistics SQLite chose the index on status,
# and counted a record's responses by walking every submitted response of the database: 4.2 ms per submission
# at 25,000 submitted responses, under the write lock, and 129 s of `repair_statuses` at each start (10^6 records).
_DUE_STATUS = (
    "CASE WHEN (SELECT COUNT(*) FROM responses rs WHERE rs.record_id = records.id AND +rs.status = 'submitted') >= "
    "(SELECT json_extract(d.distribution, '$.min_submitted') FROM datasets d WHERE d.id = records.dataset_id) "
    "THEN 'completed' ELSE 'pending' END"
)


class SQLite(Dialect):
    name = "sqlite"
    schema: ClassVar[list[str]] = TEXT_SCHEMA + COUNTS_SCHEMA
    delete_text: ClassVar[list[str]] = [
        f"DELETE FROM {TEXT} WHERE rowid IN (SELECT t.rowid FROM {TEXT} t JOIN {DOCS} d "
        f"ON d.doc = t.rowid / {FIELD_SLOTS} WHERE d.dataset_id IN ({{datasets}}))",
        f"DELETE FROM {DOCS} WHERE dataset_id IN ({{datasets}})",
    ]
    rebuild_text: ClassVar[list[str]] = [
        *delete_text,
        f"INSERT INTO {DOCS}(record_id, dataset_id) SELECT id, dataset_id FROM records "
        "WHERE dataset_id IN ({datasets}) ORDER BY inserted_at, id",
        f"INSERT INTO {TEXT}(rowid, content) SELECT text_rowid, content FROM {FIELD_TEXT} "
        "WHERE dataset_id IN ({datasets}) AND content IS NOT NULL AND content != ''",
    ]
    # Datasets whose records and docs disagree (a database the stock server wrote, or one restored from a backup).
    stale_text = (
        "SELECT ds FROM (SELECT dataset_id AS ds, 1 AS n, 0 AS m FROM records "
        f"UNION ALL SELECT dataset_id, 0, 1 FROM {DOCS}) GROUP BY ds HAVING SUM(n) != SUM(m)"
    )
    recount: ClassVar[list[str]] = [
        f"DELETE FROM {RECORD_COUNTS} WHERE dataset_id IN ({{datasets}})",
        f"INSERT INTO {RECORD_COUNTS} (dataset_id, status, n) SELECT dataset_id, status, COUNT(*) FROM records "
        "WHERE dataset_id IN ({datasets}) GROUP BY dataset_id, status",
        f"DELETE FROM {RESPONSE_COUNTS} WHERE dataset_id IN ({{datasets}})",
        f"INSERT INTO {RESPONSE_COUNTS} (dataset_id, user_id, status, record_status, n) "
        "SELECT r.dataset_id, rs.user_id, rs.status, r.status, COUNT(*) FROM responses rs JOIN records r "
        "ON r.id = rs.record_id WHERE r.dataset_id IN ({datasets}) "
        "GROUP BY r.dataset_id, rs.user_id, rs.status, r.status",
    ]
    stale_counts = (
        f"SELECT dataset_id FROM ({_COUNTED_RECORDS} EXCEPT {_KEPT_RECORDS}) "
        f"UNION SELECT dataset_id FROM ({_KEPT_RECORDS} EXCEPT {_COUNTED_RECORDS}) "
        f"UNION SELECT dataset_id FROM ({_COUNTED_RESPONSES} EXCEPT {_KEPT_RESPONSES}) "
        f"UNION SELECT dataset_id FROM ({_KEPT_RESPONSES} EXCEPT {_COUNTED_RESPONSES})"
    )
    set_status = (
        f"UPDATE records SET status = {_DUE_STATUS}, updated_at = :now WHERE id = :id AND status IS NOT {_DUE_STATUS}"
    )
    # Looked for among the records with responses or completed only.
    repair_statuses = (
        f"UPDATE records SET status = {_DUE_STATUS} WHERE (id IN (SELECT record_id FROM responses) "
        f"OR status = 'completed') AND status IS NOT {_DUE_STATUS}"
    )
    item_text = "CAST(v.value AS TEXT)"
    item_number = "CAST(v.value AS REAL)"
    item_kind = "v.type"
    metadata_type = "json_extract(settings, '$.type')"

    def ident(self, value: UUID) -> str:
        return value.hex

    def literal(self, value: UUID) -> str:
        return f"'{value.hex}'"

    def path(self, *keys: str) -> str:
        return "$" + "".join('."' + key.replace('"', '""') + '"' for key in keys)

    def timestamp(self, moment: datetime) -> str:
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f")

    def each(self, column: str, path: str) -> str:
        return f"json_each({column}, {path}) v"

    def value(self, column: str, path: str) -> list[str]:
        return [f"json_extract({column}, {path})"]

    def number(self, column: str, path: str) -> str:
        return (
            f"CASE WHEN json_type({column}, {path}) IN ('integer', 'real', 'text') "
            f"THEN CAST(json_extract({column}, {path}) AS REAL) END"
        )

    @staticmethod
    def _fts(term: Term) -> str:
        return '"' + term.words.replace('"', '""') + '"' + (" *" if term.prefix else "")

    @staticmethod
    def _in_field(position: int | None, rowid: str, bind: Callable[[Any], str]) -> str:
        return "" if position is None else f" AND {rowid} % {FIELD_SLOTS} = {bind(position)}"

    def text_match(self, term: Term, position: int | None, bind: Callable[[Any], str]) -> str:
        return (
            f"SELECT d.record_id FROM {TEXT} JOIN {DOCS} d ON d.doc = {TEXT}.rowid / {FIELD_SLOTS} "
            f"WHERE {TEXT} MATCH {bind(self._fts(term))} AND d.dataset_id = :dataset_id"
            f"{self._in_field(position, f'{TEXT}.rowid', bind)}"
        )

    def text_scores(self, terms: list[Term], position: int | None, bind: Callable[[Any], str]) -> str:
        """BM25 of each matching field, summed per record."""
        query = bind(" OR ".join(self._fts(term) for term in terms))
        # bm25() is only allowed where FTS5 drives the query: LIMIT -1 keeps SQLite from flattening the subquery.
        return (
            f"SELECT d.record_id AS record_id, SUM(s) AS score FROM (SELECT rowid AS text_rowid, -bm25({TEXT}) AS s "
            f"FROM {TEXT} WHERE {TEXT} MATCH {query}{self._in_field(position, 'rowid', bind)} LIMIT -1) "
            f"JOIN {DOCS} d ON d.doc = text_rowid / {FIELD_SLOTS} WHERE d.dataset_id = :dataset_id "
            "GROUP BY d.record_id"
        )

    def prepare(self, connection: Any) -> None:
        """WAL: the server processes and the worker read while another writes."""
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")
