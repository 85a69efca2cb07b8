"""Argilla's search engine without Elasticsearch: SQL over Argilla's own tables, on SQLite or PostgreSQL.

Runs inside the Argilla server's venv (imports only argilla_server, its dependencies and the standard library).
Registered as `ARGILLA_SEARCH_ENGINE=annotation-sql`; `annotation.server.app` imports this module so the server and
the rq worker both know it.

Why the database is the index: Argilla creates one engine instance per request (and the worker its own), so
nothing can live in memory. Records, responses, suggestions and vectors are already in the database, so filters,
sorting, progress and metrics are queries over those tables, and the write hooks Elasticsearch needs
(`index_records`, `update_record_response`, ...) have nothing to do. The derived structures are kept by triggers
inside the same transaction as the write, so a kill -9 can never leave them behind the data: a full-text index
(SQLite FTS5, or PostgreSQL `tsvector` rows with a GIN index), and the counts an annotator waits for (records per
dataset and status; responses per dataset, user, response status and record status), which with an index on
`records (dataset_id, status, id)` answer the UI's queue, progress and metrics without scanning the dataset
(`_queue_page`, `get_dataset_progress`, `users_progress`). What differs between the two databases is in
`annotation/server/dialects/`; the statements here are built from its fragments.

Text queries follow Elasticsearch's `simple_query_string` as Argilla uses it: terms are ANDed, `|` is OR, `+` AND,
`-` NOT, `"..."` a phrase, `word*` a prefix, parentheses group; a record matches when its fields (or the named
field) match, across fields. Vector similarity is an exact cosine search.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
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

from annotation.server.dialects import FIELD_POSITION, RECORD_COUNTS, RESPONSE_COUNTS, Dialect, Term
from annotation.server.dialects.postgresql import PostgreSQL
from annotation.server.dialects.sqlite import SQLite

ENGINE_NAME = "annotation-sql"
MAX_TERMS = 2**14  # as many terms as Elasticsearch's terms aggregation returns
_DIALECTS: dict[str, type[Dialect]] = {"sqlite": SQLite, "postgresql": PostgreSQL}
_IN_USE: dict[str, Dialect] = {}


def dialect_of(db: Any) -> Dialect:
    """The dialect of a session or connection's database."""
    name = db.bind.dialect.name if hasattr(db, "bind") and db.bind is not None else db.dialect.name
    if name not in _IN_USE:
        if name not in _DIALECTS:
            raise ValueError(f"the project's search engine runs on SQLite or PostgreSQL, not {name}")
        _IN_USE[name] = _DIALECTS[name]()
    return _IN_USE[name]


def ensure_schema(connection: Any) -> int:
    """Create the text index, the counts and their triggers if missing, rebuild what is stale in any dataset and
    set the statuses a crash left behind; returns how many datasets had their text index rebuilt.

    `connection` is a SQLAlchemy sync connection (the launcher's migrate step); the caller commits.
    """
    return dialect_of(connection).ensure_schema(connection)


async def set_record_status(db: AsyncSession, record_id: UUID) -> None:
    """Set a record's status from its submitted responses, in one statement (overlap: completed once
    `min_submitted` are submitted)."""
    dialect = dialect_of(db)
    now = dialect.timestamp(datetime.now(UTC).replace(tzinfo=None))
    await db.execute(text(dialect.set_status), {"id": dialect.ident(record_id), "now": now})


# ------------------------------------------------------------------------------------------------ text queries


def _term(word: str) -> Term | None:
    """One `simple_query_string` word or phrase; None when it has nothing to search for."""
    phrase = word.startswith('"')
    word = word.strip('"') if phrase else re.sub(r"~\d*$", "", word)
    prefix = not phrase and word.endswith("*")
    word = word.rstrip("*") if prefix else word
    if not re.search(r"\w", word):
        return None
    return Term(word, prefix)


_TOKENS = re.compile(r'\s*(?:(?P<op>[|+()])|(?P<neg>-)(?=\S)|(?P<word>"[^"]*"?|[^\s|+()"]+))')


class _QueryParser:
    """`simple_query_string` syntax -> a tree of ("or"|"and", [nodes]), ("not", node), ("term", Term)."""

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
        term = _term(value)
        return ("term", term) if term is not None else None


def _combine(kind: str, parts: list[tuple | None]) -> tuple | None:
    kept = [part for part in parts if part is not None]
    if len(kept) <= 1:
        return kept[0] if kept else None
    return (kind, kept)


def _positive_terms(node: tuple, negated: bool = False) -> list[Term]:
    """The terms that add to a record's score (those not under a NOT)."""
    if node[0] == "term":
        return [] if negated else [node[1]]
    if node[0] == "not":
        return _positive_terms(node[1], not negated)
    return [term for child in node[1] for term in _positive_terms(child, negated)]


# ------------------------------------------------------------------------------------------------ SQL building


def _uuid(value: Any) -> UUID | None:
    try:
        return value if isinstance(value, UUID) else UUID(str(value))
    except ValueError:
        return None


def _as_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _as_moment(value: Any) -> datetime | None:
    """A filter bound on inserted_at/updated_at as a naive UTC datetime (numbers are epoch milliseconds)."""
    try:
        if isinstance(value, int | float):
            moment = datetime.fromtimestamp(value / 1000, tz=UTC)
        else:
            moment = datetime.fromisoformat(str(value))
    except (ValueError, OverflowError, OSError):
        return None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo is not None else moment


class _Sql:
    """Builds one search statement over `records r` for a dataset, collecting its bound parameters."""

    RECORD_COLUMNS = frozenset({"id", "external_id", "inserted_at", "updated_at", "status"})

    def __init__(
        self, dialect: Dialect, dataset_id: UUID, metadata_types: dict[str, str], field_positions: dict[str, int]
    ) -> None:
        self.dialect = dialect
        self.params: dict[str, Any] = {"dataset_id": dialect.ident(dataset_id)}
        self.metadata_types = metadata_types
        self.field_positions = field_positions

    def bind(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def bind_all(self, values: Iterable[Any]) -> str:
        return ", ".join(self.bind(value) for value in values) or "NULL"

    def path(self, *keys: str) -> str:
        return self.bind(self.dialect.path(*keys))

    # ---- text

    def _position(self, field: str | None) -> int | None:
        if field is None:
            return None
        if field not in self.field_positions:
            raise ValueError(f"Field {field} not found in dataset")
        return self.field_positions[field]

    def text_match(self, node: tuple, field: str | None) -> str:
        if node[0] == "term":
            return f"r.id IN ({self.dialect.text_match(node[1], self._position(field), self.bind)})"
        if node[0] == "not":
            return f"NOT ({self.text_match(node[1], field)})"
        joiner = " AND " if node[0] == "and" else " OR "
        return "(" + joiner.join(self.text_match(child, field) for child in node[1]) + ")"

    def text_scores(self, node: tuple, field: str | None) -> str | None:
        """A subquery of (record_id, score): relevance summed over the matching fields of the positive terms."""
        terms = _positive_terms(node)
        return self.dialect.text_scores(terms, self._position(field), self.bind) if terms else None

    # ---- filters

    def filter(self, filter_: Filter) -> str:
        if isinstance(filter_, AndFilter):
            return "(" + " AND ".join([self.filter(f) for f in filter_.filters] or ["TRUE"]) + ")"
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
                    return "FALSE"
                bounds.append(f"{expression} {op} {self.bind(value)}")
        return "(" + " AND ".join(bounds) + ")"

    def _value_match(self, filter_: Filter, json_column: str, path: str) -> str:
        """Any value at `path` (a list matches when one of its items does) is in the terms / in the range."""
        dialect = self.dialect
        return (
            f"EXISTS (SELECT 1 FROM {dialect.each(json_column, path)} WHERE "
            f"{self._terms_or_range(filter_, dialect.item_text, dialect.item_number)})"
        )

    def _response_filter(self, filter_: Filter, scope: ResponseFilterScope) -> str:
        by_user = f" AND rs.user_id = {self.bind(self.dialect.ident(scope.user.id))}" if scope.user else ""
        responses = f"SELECT 1 FROM responses rs WHERE rs.record_id = r.id{by_user}"
        if scope.question:
            value = self._value_match(filter_, 'rs."values"', self.path(scope.question, "value"))
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
            parts.append(f"EXISTS ({responses})" if scope.user else "TRUE")
        return "(" + " OR ".join(parts) + ")"

    def _suggestion_filter(self, filter_: Filter, scope: SuggestionFilterScope) -> str:
        dialect = self.dialect
        if scope.property in ("agent", "type"):
            match = self._terms_or_range(filter_, f"s.{scope.property}", "NULL")
        elif scope.property == "score" and isinstance(filter_, TermsFilter):
            scores = [score for score in map(_as_float, filter_.values) if score is not None]
            match = (
                f"EXISTS (SELECT 1 FROM {dialect.each('s.score', self.path())} "
                f"WHERE {dialect.item_number} IN ({self.bind_all(scores)}))"
            )
        else:
            match = self._value_match(filter_, f"s.{'score' if scope.property == 'score' else 'value'}", self.path())
        return (
            "EXISTS (SELECT 1 FROM suggestions s JOIN questions q ON q.id = s.question_id "
            f"WHERE s.record_id = r.id AND q.dataset_id = :dataset_id AND q.name = {self.bind(scope.question)} "
            f"AND {match})"
        )

    def _metadata_filter(self, filter_: Filter, scope: MetadataFilterScope) -> str:
        if isinstance(filter_, RangeFilter):
            return self._range(filter_, self.metadata_keys(scope.metadata_property, numeric=True)[0], _as_float)
        return self._value_match(filter_, 'r."metadata"', self.path(scope.metadata_property))

    def metadata_keys(self, name: str, numeric: bool | None = None) -> list[str]:
        """The sort keys of a metadata property's value (its number, for integer and float properties)."""
        numeric = self.metadata_types.get(name) in ("integer", "float") if numeric is None else numeric
        path = self.path(name)
        if numeric:
            return [self.dialect.number('r."metadata"', path)]
        return self.dialect.value('r."metadata"', path)

    def _record_filter(self, filter_: Filter, scope: RecordFilterScope) -> str:
        column = self.record_column(scope.property)
        convert: Any = str
        if scope.property == "id":
            convert = self._ident
        elif scope.property in ("inserted_at", "updated_at"):
            convert = self._moment
        if isinstance(filter_, TermsFilter):
            values = [value for value in map(convert, filter_.values) if value is not None]
            return f"{column} IN ({self.bind_all(values)})"
        return self._range(filter_, column, convert)

    def _ident(self, value: Any) -> Any:
        uuid = _uuid(value)
        return None if uuid is None else self.dialect.ident(uuid)

    def _moment(self, value: Any) -> Any:
        moment = _as_moment(value)
        return None if moment is None else self.dialect.timestamp(moment)

    def record_column(self, name: str) -> str:
        if name not in self.RECORD_COLUMNS:
            raise ValueError(f"Cannot process request for record property {name}")
        return f"r.{name}"

    # ---- sorting

    def sort_keys(self, order: Order) -> list[str]:
        scope = order.scope
        if isinstance(scope, RecordFilterScope):
            keys = [self.record_column(scope.property)]
        elif isinstance(scope, MetadataFilterScope):
            keys = self.metadata_keys(scope.metadata_property)
        elif isinstance(scope, SuggestionFilterScope):
            keys = self._suggestion_keys(scope)
        elif isinstance(scope, ResponseFilterScope):
            by_user = f" AND rs.user_id = {self.bind(self.dialect.ident(scope.user.id))}" if scope.user else ""
            if scope.question:
                number = self.dialect.number('rs."values"', self.path(scope.question, "value"))
                value = f"AVG({number})"
            else:
                value = "MIN(CAST(rs.status AS TEXT))"
            keys = [f"(SELECT {value} FROM responses rs WHERE rs.record_id = r.id{by_user})"]
        else:
            raise ValueError(f"Cannot process request for search scope {scope}")
        direction = "DESC" if order.order == SortOrder.desc else "ASC"
        return [f"{key} IS NULL, {key} {direction}" for key in keys]  # records without a value last, as Elasticsearch

    def _suggestion_keys(self, scope: SuggestionFilterScope) -> list[str]:
        dialect = self.dialect
        if scope.property == "score":  # a list of scores (a ranking's) sorts by its highest
            values = [f"(SELECT MAX({dialect.item_number}) FROM {dialect.each('s.score', self.path())})"]
        elif scope.property in ("agent", "type"):
            values = [f"s.{scope.property}"]
        else:
            values = dialect.value("s.value", self.path())
        return [
            f"(SELECT {value} FROM suggestions s JOIN questions q ON q.id = s.question_id "
            f"WHERE s.record_id = r.id AND q.dataset_id = :dataset_id AND q.name = {self.bind(scope.question)})"
            for value in values
        ]


# ------------------------------------------------------------------------------------------------ annotators' queues

ANSWERED = frozenset({"submitted", "discarded", "draft"})


def _queue_start(user_id: UUID) -> UUID:
    """Where the user's walk through a dataset's ids begins: spread evenly over the id space, fixed per user."""
    return UUID(bytes=hashlib.blake2b(user_id.bytes, digest_size=16).digest())


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
    dialect = dialect_of(db)
    params: dict[str, Any] = {
        "ds": dialect.ident(dataset_id),
        "user": dialect.ident(user_id),
        "start": dialect.ident(_queue_start(user_id)),
    }
    params.update(offset=offset, limit=max(limit, 0), window=offset + max(limit, 0))
    if statuses == ["pending"]:
        statement = dialect.queue_page
    else:
        params.update({f"s{i}": status for i, status in enumerate(statuses)})
        statement = dialect.answered_page.format(statuses=", ".join(f":s{i}" for i in range(len(statuses))))
    rows = (await db.execute(text(statement), params)).all()
    items = [SearchResponseItem(record_id=_uuid(row[1]), score=1.0) for row in rows if row[1] is not None]
    return SearchResponses(items=items, total=int(rows[0][0]))


# ------------------------------------------------------------------------------------------------ the engine


@SearchEngine.register(engine_name=ENGINE_NAME)
class SQLSearchEngine(SearchEngine):
    """Search, filters, sorting, progress, metrics and similarity as SQL over Argilla's database.

    Every query runs in the session of the objects it is given (the request's own transaction), or a
    fresh one for detached objects. The write hooks are no-ops: the data is already in the tables.
    """

    @classmethod
    async def new_instance(cls) -> SQLSearchEngine:
        return cls()

    async def close(self) -> None:
        """Nothing to release: the engine holds no connection of its own."""

    async def ping(self) -> bool:
        """Whether the database is one the engine runs on."""
        from argilla_server.database import async_engine

        return async_engine.dialect.name in ("sqlite", "postgresql")

    async def info(self) -> dict:
        from argilla_server.database import async_engine

        return {"engine": ENGINE_NAME, "database": async_engine.dialect.name}

    # ---- index life cycle (the tables are the index; the triggers keep the text index)

    async def create_index(self, dataset: Dataset) -> None:
        """Index the text of the records the dataset has (the triggers index those written from now on)."""
        async with _session(dataset, write=True) as db:
            dialect = dialect_of(db)
            for statement in dialect.for_datasets(dialect.rebuild_text, dataset.id):
                await db.execute(text(statement))

    async def delete_index(self, dataset: Dataset) -> None:
        async with _session(dataset, write=True) as db:
            dialect = dialect_of(db)
            for statement in dialect.for_datasets(dialect.delete_text, dataset.id):
                await db.execute(text(statement))

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
                    {"ds": dialect_of(db).ident(dataset.id)},
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
                    {"ds": dialect_of(db).ident(dataset.id), "user": dialect_of(db).ident(user.id)},
                )
            ).all()
        return {"total": sum(count for _, count in rows), **dict(rows)}

    async def compute_metrics_for(self, metadata_property: MetadataProperty) -> MetadataMetrics:
        async with _session(metadata_property) as db:
            dialect = dialect_of(db)
            params = {"ds": dialect.ident(metadata_property.dataset_id), "path": dialect.path(metadata_property.name)}
            if metadata_property.type == MetadataPropertyType.terms:
                each = dialect.each('r."metadata"', ":path")
                values = (
                    f"FROM records r, {each} WHERE r.dataset_id = :ds "
                    f"AND {dialect.item_kind} NOT IN ('null', 'object', 'array')"
                )
                total = (await db.execute(text(f"SELECT COUNT(*) {values}"), params)).scalar_one()
                rows = (
                    await db.execute(
                        text(
                            f"SELECT {dialect.item_text} AS term, COUNT(DISTINCT r.id) AS n {values} "
                            f"GROUP BY term ORDER BY n DESC, term LIMIT {MAX_TERMS}"
                        ),
                        params,
                    )
                ).all()
                return TermsMetrics(total=total, values=[TermsMetrics.TermCount(term=t, count=n) for t, n in rows])
            number = dialect.number('r."metadata"', ":path")
            low, high = (
                await db.execute(
                    text(f"SELECT MIN({number}), MAX({number}) FROM records r WHERE r.dataset_id = :ds"), params
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
                order = ", ".join(key for o in sort for key in sql.sort_keys(o))
            elif scores:
                order = "score DESC"
            elif user_id is not None:
                order = f"r.id < {sql.bind(sql.dialect.ident(_queue_start(user_id)))}, r.id"
            else:
                order = "r.inserted_at"
            statement = (
                f"SELECT r.id, {score} AS score FROM records r {join} WHERE {where} "
                f"ORDER BY {order}, r.inserted_at, r.id LIMIT {sql.bind(limit)} OFFSET {sql.bind(offset)}"
            )
            rows = (await db.execute(text(statement), sql.params)).all()
        return SearchResponses(
            items=[SearchResponseItem(record_id=_uuid(row[0]), score=row[1]) for row in rows], total=total
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
                where += f" AND r.id != {sql.bind(sql.dialect.ident(record.id))}"
            rows = (
                await db.execute(
                    text(
                        "SELECT r.id, v.value FROM records r JOIN vectors v ON v.record_id = r.id "
                        f"AND v.vector_settings_id = {sql.bind(sql.dialect.ident(vector_settings.id))} WHERE {where}"
                    ),
                    sql.params,
                )
            ).all()
        scored = _cosine_scores(target, rows, least_similar=order == SimilarityOrder.least_similar)
        if threshold is not None:
            scored = [(record_id, score) for record_id, score in scored if score >= threshold]
        items = [SearchResponseItem(record_id=_uuid(rid), score=score) for rid, score in scored[:max_results]]
        return SearchResponses(items=items, total=len(items))

    async def _prepare(
        self, db: AsyncSession, dataset: Dataset, query: TextQuery | str | None, filter_: Filter | None
    ) -> tuple[_Sql, str, str | None]:
        """The statement builder, the WHERE clause and the text-score subquery (None without positive terms)."""
        dialect = dialect_of(db)
        ds = {"ds": dialect.ident(dataset.id)}
        metadata_types = dict(
            (
                await db.execute(
                    text(f"SELECT name, {dialect.metadata_type} FROM metadata_properties WHERE dataset_id = :ds"), ds
                )
            ).all()
        )
        positions = (
            await db.execute(text(f"SELECT f.name, {FIELD_POSITION} FROM fields f WHERE f.dataset_id = :ds"), ds)
        ).all()
        sql = _Sql(dialect, dataset.id, metadata_types, dict(positions))
        where = ["r.dataset_id = :dataset_id"]
        scores = None
        if query is not None:
            query = TextQuery(q=query) if isinstance(query, str) else query
            if query.field is not None and query.field not in sql.field_positions:
                raise Exception(f"Field {query.field} not found in dataset {dataset.id}")
            tree = _QueryParser(query.q).parse()
            if tree is None:
                where.append("FALSE")
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
            {"ds": dialect_of(db).ident(dataset_id)},
        )
    ).all()
    progress: dict[str, dict[str, dict[str, int]]] = {}
    for username, record_status, status, count in rows:
        progress.setdefault(username, {}).setdefault(record_status, {})[status] = count
    return [{"username": username, **statuses} for username, statuses in progress.items()]
