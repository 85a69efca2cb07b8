"""Argilla's search engine without Elasticsearch: SQL over Argilla's own SQLite tables.

Runs inside the Argilla server's venv (imports only argilla_server, its dependencies and the
standard library). Registered as `ARGILLA_SEARCH_ENGINE=sqlite-fts5`; `annotation.server.app`
imports this module so the server and the rq worker both know it.

Why the database is the index: Argilla creates one engine instance per request (and the worker
its own), so nothing can live in memory. Records, responses, suggestions and vectors are already in
the database, so filters, sorting, progress and metrics are queries over those tables, and the
write hooks Elasticsearch needs (`index_records`, `update_record_response`, ...) have nothing to
do. The derived structures are kept by triggers inside the same transaction as the write, so a kill -9
can never leave them behind the data: a full-text index (SQLite FTS5), and the counts an annotator
waits for (records per dataset and status; responses per dataset, user, response status and record
status), which with an index on `records (dataset_id, status, id)` answer the UI's queue, progress and
metrics without scanning the dataset (`_queue_page`, `get_dataset_progress`, `users_progress`).

FTS rows: one per (record, field); rowid = doc * 256 + the field's position in its dataset, where
`doc` is a stable integer per record (`annotation_search_docs`, never reused), so its rows are one rowid
range. Text queries follow Elasticsearch's `simple_query_string` as Argilla uses it: terms are
ANDed, `|` is OR, `+` AND, `-` NOT, `"..."` a phrase, `word*` a prefix, parentheses group; a
record matches when its fields (or the named field) match, across fields. Vector similarity is an
exact cosine search.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from argilla_server.database import AsyncSessionLocal
from argilla_server.enums import MetadataPropertyType, SimilarityOrder, SortOrder
from argilla_server.models import Dataset, MetadataProperty, Record, Response, Suggestion, User, VectorSettings
from argilla_server.search_engine.base import (
    AndFilter,
    Filter,
    FloatMetadataMetrics,
    IntegerMetadataMetrics,
    MetadataFilterScope,
    MetadataMetrics,
    Order,
    RangeFilter,
    RecordFilterScope,
    ResponseFilterScope,
    SearchEngine,
    SearchResponseItem,
    SearchResponses,
    SuggestionFilterScope,
    TermsFilter,
    TermsMetrics,
    TextQuery,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_object_session

ENGINE_NAME = "sqlite-fts5"
FIELD_SLOTS = 256  # FTS rowids per record: fields beyond this many in one dataset are not text-searchable
MAX_TERMS = 2**14  # as many terms as Elasticsearch's terms aggregation returns

DOCS = "annotation_search_docs"
TEXT = "annotation_search_text"
FIELD_TEXT = "annotation_search_field_text"

# A field's position among its dataset's fields (stable: fields are fixed once a dataset has records).
_FIELD_POSITION = (
    "(SELECT COUNT(*) FROM fields f2 WHERE f2.dataset_id = f.dataset_id "
    "AND (f2.inserted_at, f2.id) < (f.inserted_at, f.id))"
)
# Searchable text of a field value: strings as they are, chat messages and custom objects as their leaf values.
_LEAVES = "(SELECT group_concat(t.atom, ' ') FROM json_tree(je.value) t WHERE t.atom IS NOT NULL)"
_RANGE = f"BETWEEN {{doc}} * {FIELD_SLOTS} AND {{doc}} * {FIELD_SLOTS} + {FIELD_SLOTS - 1}"
_OLD_DOC = f"(SELECT doc FROM {DOCS} WHERE record_id = OLD.id)"
_REINDEX_NEW = (
    f"INSERT INTO {TEXT}(rowid, content) SELECT text_rowid, content FROM {FIELD_TEXT} "
    "WHERE record_id = NEW.id AND content IS NOT NULL AND content != '';"
)

SCHEMA = [
    f"CREATE TABLE IF NOT EXISTS {DOCS} (doc INTEGER PRIMARY KEY AUTOINCREMENT, record_id CHAR(32) NOT NULL UNIQUE, "
    "dataset_id CHAR(32) NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS ix_{DOCS}_dataset_id ON {DOCS} (dataset_id)",
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {TEXT} USING fts5(content, tokenize = 'unicode61 remove_diacritics 2')",
    f"""CREATE VIEW IF NOT EXISTS {FIELD_TEXT} AS
    SELECT r.id AS record_id, r.dataset_id AS dataset_id, d.doc * {FIELD_SLOTS} + {_FIELD_POSITION} AS text_rowid,
           CASE je.type WHEN 'text' THEN je.value WHEN 'null' THEN NULL
                WHEN 'object' THEN {_LEAVES} WHEN 'array' THEN {_LEAVES} ELSE CAST(je.value AS TEXT) END AS content
    FROM records r
    JOIN {DOCS} d ON d.record_id = r.id
    JOIN fields f ON f.dataset_id = r.dataset_id AND json_extract(f.settings, '$.type') IS NOT 'image'
    JOIN json_each(r.fields) je ON je.key = f.name
    WHERE {_FIELD_POSITION} < {FIELD_SLOTS}""",
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
# Rebuild the text index of some records' datasets (records written before the triggers existed).
REBUILD = [
    f"DELETE FROM {TEXT} WHERE rowid IN (SELECT t.rowid FROM {TEXT} t JOIN {DOCS} d ON d.doc = t.rowid / {FIELD_SLOTS} "
    "WHERE d.dataset_id IN ({datasets}))",
    f"DELETE FROM {DOCS} WHERE dataset_id IN ({{datasets}})",
    f"INSERT INTO {DOCS}(record_id, dataset_id) SELECT id, dataset_id FROM records WHERE dataset_id IN ({{datasets}}) "
    "ORDER BY inserted_at, id",
    f"INSERT INTO {TEXT}(rowid, content) SELECT text_rowid, content FROM {FIELD_TEXT} "
    "WHERE dataset_id IN ({datasets}) AND content IS NOT NULL AND content != ''",
]
# Datasets whose records and docs disagree (a database the stock server wrote, or one restored from a backup).
STALE_DATASETS = (
    "SELECT ds FROM (SELECT dataset_id AS ds, 1 AS n, 0 AS m FROM records "
    f"UNION ALL SELECT dataset_id, 0, 1 FROM {DOCS}) GROUP BY ds HAVING SUM(n) != SUM(m)"
)


RECORD_COUNTS = "annotation_record_counts"
RESPONSE_COUNTS = "annotation_response_counts"
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
# Count some datasets again (records written before the triggers existed, or by a server without them).
RECOUNT = [
    f"DELETE FROM {RECORD_COUNTS} WHERE dataset_id IN ({{datasets}})",
    f"INSERT INTO {RECORD_COUNTS} (dataset_id, status, n) SELECT dataset_id, status, COUNT(*) FROM records "
    "WHERE dataset_id IN ({datasets}) GROUP BY dataset_id, status",
    f"DELETE FROM {RESPONSE_COUNTS} WHERE dataset_id IN ({{datasets}})",
    f"INSERT INTO {RESPONSE_COUNTS} (dataset_id, user_id, status, record_status, n) "
    "SELECT r.dataset_id, rs.user_id, rs.status, r.status, COUNT(*) FROM responses rs JOIN records r "
    "ON r.id = rs.record_id WHERE r.dataset_id IN ({datasets}) GROUP BY r.dataset_id, rs.user_id, rs.status, r.status",
]
_COUNTED_RECORDS = "SELECT dataset_id, status, COUNT(*) FROM records GROUP BY dataset_id, status"
_COUNTED_RESPONSES = (
    "SELECT r.dataset_id, rs.user_id, rs.status, r.status, COUNT(*) FROM responses rs JOIN records r "
    "ON r.id = rs.record_id GROUP BY r.dataset_id, rs.user_id, rs.status, r.status"
)
_KEPT_RECORDS = f"SELECT dataset_id, status, n FROM {RECORD_COUNTS} WHERE n != 0"
_KEPT_RESPONSES = f"SELECT dataset_id, user_id, status, record_status, n FROM {RESPONSE_COUNTS} WHERE n != 0"
STALE_COUNTS = (
    f"SELECT dataset_id FROM ({_COUNTED_RECORDS} EXCEPT {_KEPT_RECORDS}) "
    f"UNION SELECT dataset_id FROM ({_KEPT_RECORDS} EXCEPT {_COUNTED_RECORDS}) "
    f"UNION SELECT dataset_id FROM ({_COUNTED_RESPONSES} EXCEPT {_KEPT_RESPONSES}) "
    f"UNION SELECT dataset_id FROM ({_KEPT_RESPONSES} EXCEPT {_COUNTED_RESPONSES})"
)


# Records whose status disagrees with their submitted responses (overlap: completed once `min_submitted` are
# submitted): a server killed between a response's commit and its record's status update leaves one behind.
# Looked for among the records with responses or completed only.
_DUE_STATUS = (
    "CASE WHEN (SELECT COUNT(*) FROM responses rs WHERE rs.record_id = records.id AND rs.status = 'submitted') >= "
    "(SELECT json_extract(d.distribution, '$.min_submitted') FROM datasets d WHERE d.id = records.dataset_id) "
    "THEN 'completed' ELSE 'pending' END"
)
SET_STATUS = (
    f"UPDATE records SET status = {_DUE_STATUS}, updated_at = :now WHERE id = :id AND status IS NOT {_DUE_STATUS}"
)
REPAIR_STATUSES = (
    f"UPDATE records SET status = {_DUE_STATUS} WHERE (id IN (SELECT record_id FROM responses) "
    f"OR status = 'completed') AND status IS NOT {_DUE_STATUS}"
)


def _rebuild(connection: Any, statements: list[str], stale_query: str) -> int:
    """Run `statements` for the datasets `stale_query` names; returns how many there were."""
    stale = [row[0] for row in connection.execute(text(stale_query)) if row[0] is not None]
    datasets = ", ".join(f"'{dataset_id}'" for dataset_id in stale if re.fullmatch(r"[0-9a-f]{32}", dataset_id))
    if datasets:
        for statement in statements:
            connection.execute(text(statement.format(datasets=datasets)))
    return len(stale)


def ensure_schema(connection: Any) -> int:
    """Create the text index, the counts and their triggers if missing, rebuild what is stale in any dataset and
    set the statuses a crash left behind; returns how many datasets had their text index rebuilt.

    `connection` is a SQLAlchemy sync connection (the launcher's migrate step); the caller commits.
    """
    for statement in SCHEMA + COUNTS_SCHEMA:
        connection.execute(text(statement))
    rebuilt = _rebuild(connection, REBUILD, STALE_DATASETS)
    _rebuild(connection, RECOUNT, STALE_COUNTS)
    connection.execute(text(REPAIR_STATUSES))
    return rebuilt


# ------------------------------------------------------------------------------------------------ text queries


def _fts_term(word: str) -> str | None:
    """One `simple_query_string` word or phrase as an FTS5 string; None when it has nothing to search for."""
    phrase = word.startswith('"')
    word = word.strip('"') if phrase else re.sub(r"~\d*$", "", word)
    prefix = not phrase and word.endswith("*")
    word = word.rstrip("*") if prefix else word
    if not re.search(r"\w", word):
        return None
    return '"' + word.replace('"', '""') + '"' + (" *" if prefix else "")


_TOKENS = re.compile(r'\s*(?:(?P<op>[|+()])|(?P<neg>-)(?=\S)|(?P<word>"[^"]*"?|[^\s|+()"]+))')


class _QueryParser:
    """`simple_query_string` syntax -> a tree of ("or"|"and", [nodes]), ("not", node), ("term", fts5 string)."""

    def __init__(self, query: str) -> None:
        self.tokens = [(m.lastgroup, m.group(m.lastgroup)) for m in _TOKENS.finditer(query) if m.lastgroup is not None]
        self.pos = 0

    def parse(self) -> tuple | None:
        node = self._or()
        while self.pos < len(self.tokens):  # a stray ")" ends a group early: keep reading, as Elasticsearch does
            self.pos += 1
            node = _combine("and", [node, self._or()])
        return node

    def _peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def _or(self) -> tuple | None:
        parts = [self._and()]
        while self._peek() == "|":
            self.pos += 1
            parts.append(self._and())
        return _combine("or", parts)

    def _and(self) -> tuple | None:
        parts = []
        while self._peek() not in (None, "|", ")"):
            if self._peek() == "+":
                self.pos += 1
                continue
            parts.append(self._unary())
        return _combine("and", parts)

    def _unary(self) -> tuple | None:
        kind, value = self.tokens[self.pos]
        self.pos += 1
        if kind == "neg":
            inner = self._unary() if self._peek() not in (None, "|", ")", "+") else None
            return ("not", inner) if inner is not None else None
        if value == "(":
            node = self._or()
            if self._peek() == ")":
                self.pos += 1
            return node
        term = _fts_term(value)
        return ("term", term) if term is not None else None


def _combine(kind: str, parts: list[tuple | None]) -> tuple | None:
    kept = [part for part in parts if part is not None]
    if len(kept) <= 1:
        return kept[0] if kept else None
    return (kind, kept)


def _positive_terms(node: tuple, negated: bool = False) -> list[str]:
    """The terms that add to a record's score (those not under a NOT)."""
    if node[0] == "term":
        return [] if negated else [node[1]]
    if node[0] == "not":
        return _positive_terms(node[1], not negated)
    return [term for child in node[1] for term in _positive_terms(child, negated)]


# ------------------------------------------------------------------------------------------------ SQL building


def _hex(value: UUID | str) -> str:
    return value.hex if isinstance(value, UUID) else UUID(str(value)).hex


def _json_path(name: str) -> str:
    return '$."' + name.replace('"', '""') + '"'


def _as_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _as_timestamp(value: Any) -> str | None:
    """A filter bound on inserted_at/updated_at in SQLite's stored format (numbers are epoch milliseconds)."""
    try:
        if isinstance(value, int | float):
            moment = datetime.fromtimestamp(value / 1000, tz=UTC)
        else:
            moment = datetime.fromisoformat(str(value))
    except (ValueError, OverflowError, OSError):
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


class _Sql:
    """Builds one search statement over `records r` for a dataset, collecting its bound parameters."""

    RECORD_COLUMNS = frozenset({"id", "external_id", "inserted_at", "updated_at", "status"})

    def __init__(self, dataset_id: UUID, metadata_types: dict[str, str], field_positions: dict[str, int]) -> None:
        self.params: dict[str, Any] = {"dataset_id": dataset_id.hex}
        self.metadata_types = metadata_types
        self.field_positions = field_positions

    def bind(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def bind_all(self, values: Iterable[Any]) -> str:
        return ", ".join(self.bind(value) for value in values) or "NULL"

    # ---- text

    def _field_clause(self, field: str | None, rowid: str) -> str:
        if field is None:
            return ""
        if field not in self.field_positions:
            raise ValueError(f"Field {field} not found in dataset")
        return f" AND {rowid} % {FIELD_SLOTS} = {self.bind(self.field_positions[field])}"

    def text_match(self, node: tuple, field: str | None) -> str:
        if node[0] == "term":
            return (
                f"r.id IN (SELECT d.record_id FROM {TEXT} JOIN {DOCS} d ON d.doc = {TEXT}.rowid / {FIELD_SLOTS} "
                f"WHERE {TEXT} MATCH {self.bind(node[1])} AND d.dataset_id = :dataset_id"
                f"{self._field_clause(field, f'{TEXT}.rowid')})"
            )
        if node[0] == "not":
            return f"NOT ({self.text_match(node[1], field)})"
        joiner = " AND " if node[0] == "and" else " OR "
        return "(" + joiner.join(self.text_match(child, field) for child in node[1]) + ")"

    def text_scores(self, node: tuple, field: str | None) -> str | None:
        """A subquery of (record_id, score): the sum of BM25 over the matching fields of the positive terms."""
        terms = _positive_terms(node)
        if not terms:
            return None
        # bm25() is only allowed where FTS5 drives the query: LIMIT -1 keeps SQLite from flattening the subquery.
        return (
            f"SELECT d.record_id AS record_id, SUM(s) AS score FROM (SELECT rowid AS text_rowid, -bm25({TEXT}) AS s "
            f"FROM {TEXT} WHERE {TEXT} MATCH {self.bind(' OR '.join(terms))}{self._field_clause(field, 'rowid')} "
            f"LIMIT -1) JOIN {DOCS} d ON d.doc = text_rowid / {FIELD_SLOTS} WHERE d.dataset_id = :dataset_id "
            "GROUP BY d.record_id"
        )

    # ---- filters

    def filter(self, filter_: Filter) -> str:
        if isinstance(filter_, AndFilter):
            return "(" + " AND ".join([self.filter(f) for f in filter_.filters] or ["1"]) + ")"
        scope = filter_.scope
        if isinstance(scope, ResponseFilterScope):
            return self._response_filter(filter_, scope)
        if isinstance(scope, SuggestionFilterScope):
            return self._suggestion_filter(filter_, scope)
        if isinstance(scope, MetadataFilterScope):
            return self._metadata_filter(filter_, scope)
        if isinstance(scope, RecordFilterScope):
            return self._record_filter(filter_, scope)
        raise ValueError(f"Cannot process request for search scope {scope}")

    def _terms_or_range(self, filter_: Filter, as_text: str, as_number: str) -> str:
        if isinstance(filter_, TermsFilter):
            return f"{as_text} IN ({self.bind_all(str(value) for value in filter_.values)})"
        if isinstance(filter_, RangeFilter):
            return self._range(filter_, as_number, _as_float)
        raise ValueError(f"Cannot process request for filter {filter_}")

    def _range(self, filter_: RangeFilter, expression: str, convert: Any) -> str:
        bounds = [expression + " IS NOT NULL"]
        for op, bound in ((">=", filter_.ge), ("<=", filter_.le)):
            if bound is not None:
                value = convert(bound)
                if value is None:
                    return "0"
                bounds.append(f"{expression} {op} {self.bind(value)}")
        return "(" + " AND ".join(bounds) + ")"

    def _value_match(self, filter_: Filter, json_column: str, path: str) -> str:
        """Any value at `path` (a list matches when one of its items does) is in the terms / in the range."""
        each = f"json_each({json_column}, {self.bind(path)})"
        return (
            f"EXISTS (SELECT 1 FROM {each} v WHERE "
            f"{self._terms_or_range(filter_, 'CAST(v.value AS TEXT)', 'CAST(v.value AS REAL)')})"
        )

    def _response_filter(self, filter_: Filter, scope: ResponseFilterScope) -> str:
        by_user = f" AND rs.user_id = {self.bind(scope.user.id.hex)}" if scope.user else ""
        responses = f"SELECT 1 FROM responses rs WHERE rs.record_id = r.id{by_user}"
        if scope.question:
            value = self._value_match(filter_, 'rs."values"', _json_path(scope.question) + ".value")
            return f"EXISTS ({responses} AND {value})"
        if scope.property != "status" or not isinstance(filter_, TermsFilter):
            raise ValueError(f"Cannot process filter scope {scope}")
        statuses = [str(value) for value in filter_.values]
        answered = [status for status in statuses if status != "pending"]
        # "pending" means no response (by this user, when the scope has one); the other statuses are response statuses.
        parts = [f"NOT EXISTS ({responses})"] if "pending" in statuses else []
        if answered:
            parts.append(f"EXISTS ({responses} AND rs.status IN ({self.bind_all(answered)}))")
        elif not parts:
            parts.append(f"EXISTS ({responses})" if scope.user else "1")
        return "(" + " OR ".join(parts) + ")"

    def _suggestion_filter(self, filter_: Filter, scope: SuggestionFilterScope) -> str:
        if scope.property in ("agent", "type"):
            match = self._terms_or_range(filter_, f"s.{scope.property}", f"CAST(s.{scope.property} AS REAL)")
        elif scope.property == "score":
            if isinstance(filter_, TermsFilter):
                scores = [score for score in map(_as_float, filter_.values) if score is not None]
                match = f"EXISTS (SELECT 1 FROM json_each(s.score) v WHERE v.value IN ({self.bind_all(scores)}))"
            else:
                match = self._value_match(filter_, "s.score", "$")
        else:
            match = self._value_match(filter_, "s.value", "$")
        return (
            "EXISTS (SELECT 1 FROM suggestions s JOIN questions q ON q.id = s.question_id "
            f"WHERE s.record_id = r.id AND q.dataset_id = :dataset_id AND q.name = {self.bind(scope.question)} "
            f"AND {match})"
        )

    def _metadata_filter(self, filter_: Filter, scope: MetadataFilterScope) -> str:
        path = _json_path(scope.metadata_property)
        if isinstance(filter_, RangeFilter):
            return self._range(filter_, self.metadata_value(scope.metadata_property, numeric=True), _as_float)
        return self._value_match(filter_, 'r."metadata"', path)

    def metadata_value(self, name: str, numeric: bool | None = None) -> str:
        numeric = self.metadata_types.get(name) in ("integer", "float") if numeric is None else numeric
        path = self.bind(_json_path(name))
        if not numeric:
            return f'json_extract(r."metadata", {path})'
        return (
            f"CASE WHEN json_type(r.\"metadata\", {path}) IN ('integer', 'real', 'text') "
            f'THEN CAST(json_extract(r."metadata", {path}) AS REAL) END'
        )

    def _record_filter(self, filter_: Filter, scope: RecordFilterScope) -> str:
        column = self.record_column(scope.property)
        convert: Any = str
        if scope.property == "id":
            convert = self._uuid_hex
        elif scope.property in ("inserted_at", "updated_at"):
            convert = _as_timestamp
        if isinstance(filter_, TermsFilter):
            values = [value for value in map(convert, filter_.values) if value is not None]
            return f"{column} IN ({self.bind_all(values)})"
        return self._range(filter_, column, convert)

    @staticmethod
    def _uuid_hex(value: Any) -> str | None:
        try:
            return _hex(value)
        except ValueError:
            return None

    def record_column(self, name: str) -> str:
        if name not in self.RECORD_COLUMNS:
            raise ValueError(f"Cannot process request for record property {name}")
        return f"r.{name}"

    # ---- sorting

    def sort_key(self, order: Order) -> str:
        scope = order.scope
        if isinstance(scope, RecordFilterScope):
            key = self.record_column(scope.property)
        elif isinstance(scope, MetadataFilterScope):
            key = self.metadata_value(scope.metadata_property)
        elif isinstance(scope, SuggestionFilterScope):
            column = {
                "score": "CAST(CASE json_type(s.score) WHEN 'array' THEN (SELECT MAX(value) FROM json_each(s.score)) "
                "ELSE s.score END AS REAL)",
                "agent": "s.agent",
                "type": "s.type",
            }.get(scope.property, "json_extract(s.value, '$')")
            key = (
                f"(SELECT {column} FROM suggestions s JOIN questions q ON q.id = s.question_id "
                f"WHERE s.record_id = r.id AND q.dataset_id = :dataset_id AND q.name = {self.bind(scope.question)})"
            )
        elif isinstance(scope, ResponseFilterScope):
            by_user = f" AND rs.user_id = {self.bind(scope.user.id.hex)}" if scope.user else ""
            value = (
                f'AVG(CAST(json_extract(rs."values", {self.bind(_json_path(scope.question) + ".value")}) AS REAL))'
                if scope.question
                else "MIN(rs.status)"
            )
            key = f"(SELECT {value} FROM responses rs WHERE rs.record_id = r.id{by_user})"
        else:
            raise ValueError(f"Cannot process request for search scope {scope}")
        direction = "DESC" if order.order == SortOrder.desc else "ASC"
        return f"{key} IS NULL, {key} {direction}"  # records without a value last, as Elasticsearch sorts


# ------------------------------------------------------------------------------------------------ annotators' queues

ANSWERED = frozenset({"submitted", "discarded", "draft"})
# The focus view's queue: pending records without a response of this user, in id order from the user's start, then
# from the dataset's first id: two walks of the queue index, each stopping after offset + limit records.
_QUEUE_WALK = (
    "SELECT r.id FROM records r WHERE r.dataset_id = :ds AND r.status = 'pending' AND r.id {cmp} :start "
    "AND NOT EXISTS (SELECT 1 FROM responses rs WHERE rs.record_id = r.id AND rs.user_id = :user) "
    "ORDER BY r.id LIMIT :window"
)
QUEUE_PAGE = (
    f"SELECT id FROM (SELECT id, 0 AS lap FROM ({_QUEUE_WALK.format(cmp='>=')}) "
    f"UNION ALL SELECT id, 1 AS lap FROM ({_QUEUE_WALK.format(cmp='<')})) ORDER BY lap, id LIMIT :limit OFFSET :offset"
)
QUEUE_TOTAL = (
    f"SELECT COALESCE((SELECT n FROM {RECORD_COUNTS} WHERE dataset_id = :ds AND status = 'pending'), 0) "
    f"- COALESCE((SELECT SUM(n) FROM {RESPONSE_COUNTS} WHERE dataset_id = :ds AND user_id = :user "
    "AND record_status = 'pending'), 0)"
)
# The other tabs: the user's own responses of some statuses, in the same order.
ANSWERED_PAGE = (
    "SELECT rs.record_id FROM responses rs JOIN records r ON r.id = rs.record_id WHERE rs.user_id = :user "
    "AND rs.status IN ({statuses}) AND r.dataset_id = :ds ORDER BY rs.record_id < :start, rs.record_id "
    "LIMIT :limit OFFSET :offset"
)
ANSWERED_TOTAL = (
    f"SELECT COALESCE(SUM(n), 0) FROM {RESPONSE_COUNTS} WHERE dataset_id = :ds AND user_id = :user "
    "AND status IN ({statuses})"
)


def _queue_start(user_id: UUID) -> str:
    """Where the user's walk through a dataset's ids begins: spread evenly over the id space, fixed per user."""
    return hashlib.blake2b(user_id.bytes, digest_size=16).hexdigest()


def _plain(value: Any) -> str:
    return str(getattr(value, "value", value))


def _queue_statuses(filter_: Filter | None, user_id: UUID | None) -> list[str] | None:
    """The response statuses of an annotator's queue when `filter_` is one as the UI sends it: ["pending"] together
    with the record status "pending" (the focus view), or answered statuses alone (the other tabs); else None."""
    if user_id is None or not isinstance(filter_, AndFilter):
        return None
    values: dict[str, list[str]] = {}
    for part in filter_.filters:
        scope = getattr(part, "scope", None)
        if not isinstance(part, TermsFilter):
            return None
        if isinstance(scope, ResponseFilterScope) and scope.property == "status" and scope.question is None:
            if scope.user is None or scope.user.id != user_id:
                return None
            key = "response"
        elif isinstance(scope, RecordFilterScope) and scope.property == "status":
            key = "record"
        else:
            return None
        if key in values:
            return None
        values[key] = sorted({_plain(value) for value in part.values})
    response, record = values.get("response"), values.get("record")
    if response == ["pending"] and record == ["pending"]:
        return response
    if response and record is None and ANSWERED.issuperset(response):
        return response
    return None


async def _queue_page(
    db: AsyncSession, dataset_id: UUID, user_id: UUID, statuses: list[str], offset: int, limit: int
) -> SearchResponses:
    params: dict[str, Any] = {"ds": dataset_id.hex, "user": user_id.hex, "start": _queue_start(user_id)}
    params.update(offset=offset, limit=limit, window=offset + limit)
    if statuses == ["pending"]:
        total_sql, page_sql = QUEUE_TOTAL, QUEUE_PAGE
    else:
        params.update({f"s{i}": status for i, status in enumerate(statuses)})
        listed = ", ".join(f":s{i}" for i in range(len(statuses)))
        total_sql, page_sql = ANSWERED_TOTAL.format(statuses=listed), ANSWERED_PAGE.format(statuses=listed)
    total = int((await db.execute(text(total_sql), params)).scalar_one())
    if limit <= 0 or offset >= total:
        return SearchResponses(items=[], total=total)
    rows = (await db.execute(text(page_sql), params)).all()
    items = [SearchResponseItem(record_id=UUID(hex=row[0]), score=1.0) for row in rows]
    return SearchResponses(items=items, total=total)


# ------------------------------------------------------------------------------------------------ the engine


@SearchEngine.register(engine_name=ENGINE_NAME)
class SQLiteSearchEngine(SearchEngine):
    """Search, filters, sorting, progress, metrics and similarity as SQL over Argilla's SQLite database.

    Every query runs in the session of the objects it is given (the request's own transaction), or a
    fresh one for detached objects. The write hooks are no-ops: the data is already in the tables.
    """

    @classmethod
    async def new_instance(cls) -> SQLiteSearchEngine:
        return cls()

    async def close(self) -> None:
        """Nothing to release: the engine holds no connection of its own."""

    async def ping(self) -> bool:
        from argilla_server.settings import settings

        return settings.database_is_sqlite and _has_fts5()

    async def info(self) -> dict:
        return {"engine": ENGINE_NAME, "sqlite": sqlite3.sqlite_version}

    # ---- index life cycle (the tables are the index; the triggers keep the text index)

    async def create_index(self, dataset: Dataset) -> None:
        async with _session(dataset, write=True) as db:
            for statement in SCHEMA:
                await db.execute(text(statement))
            for statement in REBUILD:
                await db.execute(text(statement.format(datasets=f"'{dataset.id.hex}'")))

    async def delete_index(self, dataset: Dataset) -> None:
        async with _session(dataset, write=True) as db:
            for statement in REBUILD[:2]:
                await db.execute(text(statement.format(datasets=f"'{dataset.id.hex}'")))

    async def configure_metadata_property(self, dataset: Dataset, metadata_property: MetadataProperty) -> None:
        """Metadata is filtered straight from `records.metadata`: nothing to configure."""

    async def configure_index_vectors(self, vector_settings: VectorSettings) -> None:
        """Vectors are read from the `vectors` table: nothing to configure."""

    async def index_records(self, dataset: Dataset, records: Iterable[Record]) -> None:
        """The triggers on `records` indexed the text in the writing transaction."""

    async def partial_record_update(self, record: Record, **update: Any) -> None:
        """Record status and fields are read from `records`."""

    async def delete_records(self, dataset: Dataset, records: Iterable[Record]) -> None:
        """The delete trigger removed their text."""

    async def update_record_response(self, response: Response) -> None:
        """Responses are read from `responses`."""

    async def delete_record_response(self, response: Response) -> None:
        """Responses are read from `responses`."""

    async def update_record_suggestion(self, suggestion: Suggestion) -> None:
        """Suggestions are read from `suggestions`."""

    async def delete_record_suggestion(self, suggestion: Suggestion) -> None:
        """Suggestions are read from `suggestions`."""

    # ---- progress and metrics

    async def get_dataset_progress(self, dataset: Dataset) -> dict:
        if dataset.is_draft:
            return {}
        async with _session(dataset) as db:
            rows = (
                await db.execute(
                    text(f"SELECT status, n FROM {RECORD_COUNTS} WHERE dataset_id = :ds AND n > 0"),
                    {"ds": dataset.id.hex},
                )
            ).all()
        return {"total": sum(count for _, count in rows), **dict(rows)}

    async def get_dataset_user_progress(self, dataset: Dataset, user: User) -> dict:
        if dataset.is_draft:
            return {}
        async with _session(dataset) as db:
            rows = (
                await db.execute(
                    text(
                        f"SELECT status, SUM(n) FROM {RESPONSE_COUNTS} WHERE dataset_id = :ds AND user_id = :user "
                        "GROUP BY status HAVING SUM(n) > 0"
                    ),
                    {"ds": dataset.id.hex, "user": user.id.hex},
                )
            ).all()
        return {"total": sum(count for _, count in rows), **dict(rows)}

    async def compute_metrics_for(self, metadata_property: MetadataProperty) -> MetadataMetrics:
        params = {"ds": metadata_property.dataset_id.hex, "path": _json_path(metadata_property.name)}
        async with _session(metadata_property) as db:
            if metadata_property.type == MetadataPropertyType.terms:
                values = (
                    'FROM records r, json_each(r."metadata", :path) v '
                    "WHERE r.dataset_id = :ds AND v.type NOT IN ('null', 'object', 'array')"
                )
                total = (await db.execute(text(f"SELECT COUNT(*) {values}"), params)).scalar_one()
                rows = (
                    await db.execute(
                        text(
                            f"SELECT CAST(v.value AS TEXT) AS term, COUNT(DISTINCT r.id) AS n {values} "
                            f"GROUP BY term ORDER BY n DESC, term LIMIT {MAX_TERMS}"
                        ),
                        params,
                    )
                ).all()
                return TermsMetrics(total=total, values=[TermsMetrics.TermCount(term=t, count=n) for t, n in rows])
            number = 'CAST(json_extract(r."metadata", :path) AS REAL)'
            low, high = (
                await db.execute(
                    text(
                        f"SELECT MIN({number}), MAX({number}) FROM records r WHERE r.dataset_id = :ds "
                        "AND json_type(r.\"metadata\", :path) IN ('integer', 'real', 'text')"
                    ),
                    params,
                )
            ).one()
        if metadata_property.type == MetadataPropertyType.integer:
            return IntegerMetadataMetrics(
                min=None if low is None else int(low), max=None if high is None else int(high)
            )
        return FloatMetadataMetrics(min=low, max=high)

    # ---- search

    async def search(
        self,
        dataset: Dataset,
        query: TextQuery | str | None = None,
        filter: Filter | None = None,
        sort: list[Order] | None = None,
        offset: int = 0,
        limit: int = 100,
        user_id: UUID | None = None,
    ) -> SearchResponses:
        """Records matching the text query and filters; without a sort, by relevance for a text query, for an
        annotator (`user_id`) in id order from a start of its own (annotators begin far apart in the dataset and
        see the same order on every page: Elasticsearch's per-user random score, from an index), else in insertion
        order. An annotator's queue as the UI asks for it is read from the queue index and the kept counts."""
        statuses = _queue_statuses(filter, user_id) if query is None and not sort else None
        async with _session(dataset) as db:
            if statuses is not None and user_id is not None:
                return await _queue_page(db, dataset.id, user_id, statuses, offset, limit)
            sql, where, scores = await self._prepare(db, dataset, query, filter)
            total = (await db.execute(text(f"SELECT COUNT(*) FROM records r WHERE {where}"), sql.params)).scalar_one()
            if limit <= 0 or offset >= total:
                return SearchResponses(items=[], total=total)
            score = "1.0 + COALESCE(ts.score, 0)" if scores else "1.0"
            join = f"LEFT JOIN ({scores}) ts ON ts.record_id = r.id" if scores else ""
            if sort:
                order = ", ".join(sql.sort_key(o) for o in sort)
            elif scores:
                order = "score DESC"
            elif user_id is not None:
                order = f"r.id < {sql.bind(_queue_start(user_id))}, r.id"
            else:
                order = "r.inserted_at"
            statement = (
                f"SELECT r.id, {score} AS score FROM records r {join} WHERE {where} "
                f"ORDER BY {order}, r.inserted_at, r.id LIMIT {sql.bind(limit)} OFFSET {sql.bind(offset)}"
            )
            rows = (await db.execute(text(statement), sql.params)).all()
        return SearchResponses(
            items=[SearchResponseItem(record_id=UUID(hex=row[0]), score=row[1]) for row in rows], total=total
        )

    async def similarity_search(
        self,
        dataset: Dataset,
        vector_settings: VectorSettings,
        value: list[float] | None = None,
        record: Record | None = None,
        query: TextQuery | str | None = None,
        filter: Filter | None = None,
        max_results: int = 100,
        order: SimilarityOrder = SimilarityOrder.most_similar,
        threshold: float | None = None,
    ) -> SearchResponses:
        """Exact cosine similarity over the dataset's vectors that pass the text query and filters."""
        if bool(value) == bool(record):
            raise ValueError("Must provide either vector value or record to compute the similarity search")
        target = value or record.vector_value_by_vector_settings(vector_settings)
        if not target:
            raise ValueError("Cannot find a vector value to apply with provided info")
        async with _session(dataset) as db:
            sql, where, _ = await self._prepare(db, dataset, query, filter)
            if record is not None:
                where += f" AND r.id != {sql.bind(record.id.hex)}"
            rows = (
                await db.execute(
                    text(
                        "SELECT r.id, v.value FROM records r JOIN vectors v ON v.record_id = r.id "
                        f"AND v.vector_settings_id = {sql.bind(vector_settings.id.hex)} WHERE {where}"
                    ),
                    sql.params,
                )
            ).all()
        scored = _cosine_scores(target, rows, least_similar=order == SimilarityOrder.least_similar)
        if threshold is not None:
            scored = [(record_id, score) for record_id, score in scored if score >= threshold]
        items = [SearchResponseItem(record_id=UUID(hex=rid), score=score) for rid, score in scored[:max_results]]
        return SearchResponses(items=items, total=len(items))

    async def _prepare(
        self, db: AsyncSession, dataset: Dataset, query: TextQuery | str | None, filter_: Filter | None
    ) -> tuple[_Sql, str, str | None]:
        """The statement builder, the WHERE clause and the text-score subquery (None without positive terms)."""
        ds = {"ds": dataset.id.hex}
        metadata_types = dict(
            (
                await db.execute(
                    text(
                        "SELECT name, json_extract(settings, '$.type') FROM metadata_properties WHERE dataset_id = :ds"
                    ),
                    ds,
                )
            ).all()
        )
        positions = (
            await db.execute(
                text(f"SELECT f.name, {_FIELD_POSITION} FROM fields f WHERE f.dataset_id = :ds"),
                ds,
            )
        ).all()
        sql = _Sql(dataset.id, metadata_types, dict(positions))
        where = ["r.dataset_id = :dataset_id"]
        scores = None
        if query is not None:
            query = TextQuery(q=query) if isinstance(query, str) else query
            if query.field is not None and query.field not in sql.field_positions:
                raise Exception(f"Field {query.field} not found in dataset {dataset.id}")
            tree = _QueryParser(query.q).parse()
            if tree is None:
                where.append("0")
            else:
                where.append(sql.text_match(tree, query.field))
                scores = sql.text_scores(tree, query.field)
        if filter_ is not None:
            where.append(sql.filter(filter_))
        return sql, " AND ".join(where), scores


def _cosine_scores(target: Sequence[float], rows: Sequence[Any], least_similar: bool) -> list[tuple[str, float]]:
    """(record id, score), best first: (1 + cos) / 2 as Elasticsearch's cosine kNN scores, (1 - cos) / 2 reversed."""
    import numpy as np

    if not rows:
        return []
    query = np.asarray(target, dtype=np.float64)
    matrix = np.asarray([json.loads(row[1]) if isinstance(row[1], str) else row[1] for row in rows], dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1) * (np.linalg.norm(query) or 1.0)
    cosine = matrix @ query / np.where(norms == 0, 1.0, norms)
    scores = (1 - cosine) / 2 if least_similar else (1 + cosine) / 2
    ranked = np.argsort(-scores, kind="stable")
    return [(rows[i][0], float(scores[i])) for i in ranked]


def _has_fts5() -> bool:
    try:
        sqlite3.connect(":memory:").execute("CREATE VIRTUAL TABLE t USING fts5(c)")
    except sqlite3.OperationalError:
        return False
    return True


@asynccontextmanager
async def _session(obj: Any, write: bool = False) -> AsyncIterator[AsyncSession]:
    """The session `obj` belongs to (a write is committed only if this call began the transaction)."""
    db = async_object_session(obj)
    if db is None:
        async with AsyncSessionLocal() as own:
            yield own
            if write:
                await own.commit()
        return
    began = not db.in_transaction()
    yield db
    if write and began:
        await db.commit()


async def users_progress(db: AsyncSession, dataset_id: UUID) -> list[dict]:
    """Each user's responses by record status and response status, from the kept counts, users in creation order."""
    rows = (
        await db.execute(
            text(
                f"SELECT u.username, c.record_status, c.status, c.n FROM {RESPONSE_COUNTS} c "
                "JOIN users u ON u.id = c.user_id WHERE c.dataset_id = :ds AND c.n > 0 ORDER BY u.inserted_at, u.id"
            ),
            {"ds": dataset_id.hex},
        )
    ).all()
    progress: dict[str, dict[str, dict[str, int]]] = {}
    for username, record_status, status, count in rows:
        progress.setdefault(username, {}).setdefault(record_status, {})[status] = count
    return [{"username": username, **statuses} for username, statuses in progress.items()]
