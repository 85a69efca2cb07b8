"""PostgreSQL: the text index as `tsvector` rows with a GIN index, the counts kept by plpgsql triggers, JSON through
`#>`/`json_array_elements`.

Text rows: one per (record, searchable field), `to_tsvector('simple', ...)` of the field's text (a string as it is,
chat messages and custom objects as their leaf values); a record's rows go with it (foreign key, on delete cascade).
The 'simple' configuration lowercases words and neither stems them nor drops stop words, as the SQLite index's
unicode61 tokenizer (which also folds diacritics; 'simple' keeps them).

Concurrency: writers run at once here, so every count change is one upsert of signed deltas in key order (two
transactions lock the rows they share in the same order: no deadlock), and a response's count reads its record's
status under a share lock on the record: a status update running at the same moment either finished first (the
response is counted with the new status) or waits for the response's commit (and then moves it with the others).
Ids are `uuid`, timestamps `timestamp without time zone` (UTC, as Argilla stores them).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from annotation.server.dialects import RECORD_COUNTS, RESPONSE_COUNTS, Dialect, Term

TEXT = "annotation_search_text"
SCHEMA_LOCK = 0x616E6E6F  # pg_advisory_xact_lock key: one start at a time brings a database's schema up to date

_NUMBER_TEXT = r"'^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$'"


def _number(json_value: str, text_value: str) -> str:
    return (
        f"CASE json_typeof({json_value}) WHEN 'number' THEN ({text_value})::float8 "
        f"WHEN 'string' THEN CASE WHEN {text_value} ~ {_NUMBER_TEXT} THEN ({text_value})::float8 END END"
    )


def _text_rows(source: str, where: str = "") -> str:
    """INSERT the text rows of the records in `source` (a table or transition table aliased `s`)."""
    return (
        f"INSERT INTO {TEXT} (record_id, dataset_id, position, content) "
        "SELECT s.id, s.dataset_id, p.position, to_tsvector('simple', t.content) "
        f"FROM {source} s JOIN annotation_field_positions p ON p.dataset_id = s.dataset_id AND p.searchable "
        "CROSS JOIN LATERAL annotation_json_text(s.fields -> p.name) AS t(content) "
        f"WHERE t.content <> ''{where}"
    )


def _upsert(table: str, keys: str, deltas: str) -> str:
    """Add the signed `deltas` (a query of the keys then n) to the counts in `table`, rows locked in key order."""
    positions = ", ".join(str(i + 1) for i in range(keys.count(",") + 1))
    return (
        f"INSERT INTO {table} AS c ({keys}, n) SELECT {keys}, SUM(n) FROM ({deltas}) AS d ({keys}, n) "
        f"GROUP BY {positions} ORDER BY {positions} ON CONFLICT ({keys}) DO UPDATE SET n = c.n + excluded.n"
    )


def _function(name: str, *statements: str) -> str:
    body = " ".join(f"{statement};" for statement in statements)
    return f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} END $$"


def _trigger(name: str, when: str, table: str, rows: str) -> list[str]:
    """(Re)create trigger `name`, which runs the function of the same name."""
    return [
        f"DROP TRIGGER IF EXISTS {name} ON {table}",
        f"CREATE TRIGGER {name} {when} ON {table} {rows} EXECUTE FUNCTION {name}()",
    ]


def _lock_records(responses: str) -> str:
    """Share-lock the records of some responses (in id order): their status is read for the counts."""
    return f"PERFORM 1 FROM records WHERE id IN (SELECT record_id FROM {responses}) ORDER BY id FOR SHARE"


RECORD_KEYS = "dataset_id, status"
RESPONSE_KEYS = "dataset_id, user_id, status, record_status"
_MOVED = "old_records o JOIN new_records n ON n.id = o.id"
_MOVED_RESPONSES = f"{_MOVED} JOIN responses rs ON rs.record_id = o.id WHERE o.status <> n.status"
_FIELDS_CHANGED = " AND s.fields::text IS DISTINCT FROM (SELECT o.fields::text FROM old_records o WHERE o.id = s.id)"
_CHANGED_RESPONSES = "old_responses o JOIN new_responses s ON s.id = o.id WHERE o.status <> s.status"
_LEAVES = (
    "(SELECT string_agg(leaf #>> '{}', ' ') FROM jsonb_path_query(value::jsonb, 'strict $.**') leaf "
    "WHERE jsonb_typeof(leaf) NOT IN ('object', 'array', 'null'))"
)

SCHEMA = [
    f"CREATE TABLE IF NOT EXISTS {TEXT} (record_id uuid NOT NULL REFERENCES records (id) ON DELETE CASCADE, "
    "dataset_id uuid NOT NULL, position integer NOT NULL, content tsvector NOT NULL, "
    "PRIMARY KEY (record_id, position))",
    f"CREATE INDEX IF NOT EXISTS annotation_ix_search_text_content ON {TEXT} USING gin (content)",
    f"CREATE INDEX IF NOT EXISTS annotation_ix_search_text_dataset ON {TEXT} (dataset_id)",
    f"CREATE TABLE IF NOT EXISTS {RECORD_COUNTS} (dataset_id uuid NOT NULL, status text NOT NULL, "
    "n bigint NOT NULL, PRIMARY KEY (dataset_id, status))",
    f"CREATE TABLE IF NOT EXISTS {RESPONSE_COUNTS} (dataset_id uuid NOT NULL, user_id uuid NOT NULL, "
    "status text NOT NULL, record_status text NOT NULL, n bigint NOT NULL, "
    "PRIMARY KEY (dataset_id, user_id, status, record_status))",
    # An annotator's queue (pending records it has not answered) walked in id order from a per-user start.
    "CREATE INDEX IF NOT EXISTS annotation_ix_records_queue ON records (dataset_id, status, id)",
    # Searchable text of a field value: strings as they are, chat messages and custom objects as their leaf values.
    "CREATE OR REPLACE FUNCTION annotation_json_text(value json) RETURNS text LANGUAGE sql IMMUTABLE AS $$ "
    "SELECT CASE json_typeof(value) WHEN 'string' THEN value #>> '{}' WHEN 'null' THEN NULL "
    f"WHEN 'object' THEN {_LEAVES} WHEN 'array' THEN {_LEAVES} ELSE value #>> '{{}}' END $$",
    # A field's position among its dataset's fields (stable: fields are fixed once a dataset has records).
    "CREATE OR REPLACE VIEW annotation_field_positions AS SELECT f.dataset_id, f.name, "
    "(row_number() OVER (PARTITION BY f.dataset_id ORDER BY f.inserted_at, f.id) - 1)::integer AS position, "
    "(f.settings ->> 'type') IS DISTINCT FROM 'image' AS searchable FROM fields f",
    _function(
        "annotation_records_inserted",
        _text_rows("new_records"),
        _upsert(RECORD_COUNTS, RECORD_KEYS, "SELECT dataset_id, status::text, 1 FROM new_records"),
        "RETURN NULL",
    ),
    *_trigger(
        "annotation_records_inserted",
        "AFTER INSERT",
        "records",
        "REFERENCING NEW TABLE AS new_records FOR EACH STATEMENT",
    ),
    _function(
        "annotation_records_updated",
        f"DELETE FROM {TEXT} t USING {_MOVED} WHERE t.record_id = o.id "
        "AND o.fields::text IS DISTINCT FROM n.fields::text",
        _text_rows("new_records", _FIELDS_CHANGED),
        _upsert(
            RECORD_COUNTS,
            RECORD_KEYS,
            f"SELECT o.dataset_id, o.status::text, -1 FROM {_MOVED} WHERE o.status <> n.status "
            f"UNION ALL SELECT n.dataset_id, n.status::text, 1 FROM {_MOVED} WHERE o.status <> n.status",
        ),
        _upsert(
            RESPONSE_COUNTS,
            RESPONSE_KEYS,
            f"SELECT o.dataset_id, rs.user_id, rs.status::text, o.status::text, -1 FROM {_MOVED_RESPONSES} "
            f"UNION ALL SELECT n.dataset_id, rs.user_id, rs.status::text, n.status::text, 1 FROM {_MOVED_RESPONSES}",
        ),
        "RETURN NULL",
    ),
    *_trigger(
        "annotation_records_updated",
        "AFTER UPDATE",
        "records",
        "REFERENCING OLD TABLE AS old_records NEW TABLE AS new_records FOR EACH STATEMENT",
    ),
    # Before: a deleted record's responses go by cascade after it, when it can no longer be looked up. A record
    # whose dataset is being deleted is skipped: the dataset's counts go with it.
    _function(
        "annotation_records_deleted",
        "IF EXISTS (SELECT 1 FROM datasets WHERE id = OLD.dataset_id) THEN "
        f"UPDATE {RECORD_COUNTS} SET n = n - 1 WHERE dataset_id = OLD.dataset_id AND status = OLD.status::text; "
        f"UPDATE {RESPONSE_COUNTS} c SET n = c.n - d.k FROM (SELECT user_id, status::text AS status, COUNT(*) AS k "
        "FROM responses WHERE record_id = OLD.id GROUP BY 1, 2) d WHERE c.dataset_id = OLD.dataset_id "
        "AND c.user_id = d.user_id AND c.status = d.status AND c.record_status = OLD.status::text; END IF",
        "RETURN OLD",
    ),
    *_trigger("annotation_records_deleted", "BEFORE DELETE", "records", "FOR EACH ROW"),
    _function(
        "annotation_responses_inserted",
        _lock_records("new_responses"),
        _upsert(
            RESPONSE_COUNTS,
            RESPONSE_KEYS,
            "SELECT r.dataset_id, s.user_id, s.status::text, r.status::text, 1 "
            "FROM new_responses s JOIN records r ON r.id = s.record_id",
        ),
        "RETURN NULL",
    ),
    *_trigger(
        "annotation_responses_inserted",
        "AFTER INSERT",
        "responses",
        "REFERENCING NEW TABLE AS new_responses FOR EACH STATEMENT",
    ),
    _function(
        "annotation_responses_updated",
        _lock_records("new_responses"),
        _upsert(
            RESPONSE_COUNTS,
            RESPONSE_KEYS,
            "SELECT r.dataset_id, d.user_id, d.status, r.status::text, d.n FROM ("
            f"SELECT o.record_id, o.user_id, o.status::text AS status, -1 AS n FROM {_CHANGED_RESPONSES} "
            f"UNION ALL SELECT s.record_id, s.user_id, s.status::text, 1 FROM {_CHANGED_RESPONSES}) d "
            "JOIN records r ON r.id = d.record_id",
        ),
        "RETURN NULL",
    ),
    *_trigger(
        "annotation_responses_updated",
        "AFTER UPDATE",
        "responses",
        "REFERENCING OLD TABLE AS old_responses NEW TABLE AS new_responses FOR EACH STATEMENT",
    ),
    # Responses whose record is gone (deleted in the same statement, cascading) were counted off with it.
    _function(
        "annotation_responses_deleted",
        _lock_records("old_responses"),
        _upsert(
            RESPONSE_COUNTS,
            RESPONSE_KEYS,
            "SELECT r.dataset_id, o.user_id, o.status::text, r.status::text, -1 "
            "FROM old_responses o JOIN records r ON r.id = o.record_id",
        ),
        "RETURN NULL",
    ),
    *_trigger(
        "annotation_responses_deleted",
        "AFTER DELETE",
        "responses",
        "REFERENCING OLD TABLE AS old_responses FOR EACH STATEMENT",
    ),
    _function(
        "annotation_datasets_deleted",
        f"DELETE FROM {RECORD_COUNTS} WHERE dataset_id = OLD.id",
        f"DELETE FROM {RESPONSE_COUNTS} WHERE dataset_id = OLD.id",
        "RETURN NULL",
    ),
    *_trigger("annotation_datasets_deleted", "AFTER DELETE", "datasets", "FOR EACH ROW"),
]

_COUNTED_RECORDS = "SELECT dataset_id, status::text, COUNT(*) FROM records GROUP BY 1, 2"
_COUNTED_RESPONSES = (
    "SELECT r.dataset_id, rs.user_id, rs.status::text, r.status::text, COUNT(*) FROM responses rs JOIN records r "
    "ON r.id = rs.record_id GROUP BY 1, 2, 3, 4"
)
_KEPT_RECORDS = f"SELECT dataset_id, status, n FROM {RECORD_COUNTS} WHERE n != 0"
_KEPT_RESPONSES = f"SELECT dataset_id, user_id, status, record_status, n FROM {RESPONSE_COUNTS} WHERE n != 0"
_DUE_STATUS = (
    "CASE WHEN (SELECT COUNT(*) FROM responses rs WHERE rs.record_id = records.id AND rs.status = 'submitted') >= "
    "(SELECT (d.distribution ->> 'min_submitted')::integer FROM datasets d WHERE d.id = records.dataset_id) "
    "THEN 'completed'::record_status_enum ELSE 'pending'::record_status_enum END"
)


class PostgreSQL(Dialect):
    name = "postgresql"
    schema: ClassVar[list[str]] = SCHEMA
    delete_text: ClassVar[list[str]] = [f"DELETE FROM {TEXT} WHERE dataset_id IN ({{datasets}})"]
    rebuild_text: ClassVar[list[str]] = [*delete_text, _text_rows("records", " AND s.dataset_id IN ({datasets})")]
    # Counts that disagree with the tables mean writes without the triggers (the stock server): text too.
    stale_text = None
    recount: ClassVar[list[str]] = [
        f"DELETE FROM {RECORD_COUNTS} WHERE dataset_id IN ({{datasets}})",
        f"INSERT INTO {RECORD_COUNTS} (dataset_id, status, n) SELECT dataset_id, status::text, COUNT(*) FROM records "
        "WHERE dataset_id IN ({datasets}) GROUP BY 1, 2",
        f"DELETE FROM {RESPONSE_COUNTS} WHERE dataset_id IN ({{datasets}})",
        f"INSERT INTO {RESPONSE_COUNTS} (dataset_id, user_id, status, record_status, n) "
        "SELECT r.dataset_id, rs.user_id, rs.status::text, r.status::text, COUNT(*) FROM responses rs JOIN records r "
        "ON r.id = rs.record_id WHERE r.dataset_id IN ({datasets}) GROUP BY 1, 2, 3, 4",
    ]
    stale_counts = (
        f"SELECT dataset_id FROM ({_COUNTED_RECORDS} EXCEPT {_KEPT_RECORDS}) a "
        f"UNION SELECT dataset_id FROM ({_KEPT_RECORDS} EXCEPT {_COUNTED_RECORDS}) b "
        f"UNION SELECT dataset_id FROM ({_COUNTED_RESPONSES} EXCEPT {_KEPT_RESPONSES}) c "
        f"UNION SELECT dataset_id FROM ({_KEPT_RESPONSES} EXCEPT {_COUNTED_RESPONSES}) d"
    )
    set_status = (
        f"UPDATE records SET status = {_DUE_STATUS}, updated_at = :now "
        f"WHERE id = :id AND status IS DISTINCT FROM {_DUE_STATUS}"
    )
    repair_statuses = (
        f"UPDATE records SET status = {_DUE_STATUS} WHERE (id IN (SELECT record_id FROM responses) "
        f"OR status = 'completed') AND status IS DISTINCT FROM {_DUE_STATUS}"
    )
    item_text = "(v.value #>> '{}')"
    item_number = _number("v.value", "(v.value #>> '{}')")
    item_kind = "json_typeof(v.value)"
    metadata_type = "(settings ->> 'type')"

    def ident(self, value: UUID) -> UUID:
        return value

    def literal(self, value: UUID) -> str:
        return f"'{value}'"

    def path(self, *keys: str) -> list[str]:
        return list(keys)

    def timestamp(self, moment: datetime) -> datetime:
        return moment

    def each(self, column: str, path: str) -> str:
        at = f"{column} #> {path}"
        items = f"CASE json_typeof({at}) WHEN 'array' THEN {at} ELSE json_build_array({at}) END"
        return f"json_array_elements({items}) v(value)"

    def value(self, column: str, path: str) -> list[str]:
        return [
            f"CASE WHEN json_typeof({column} #> {path}) = 'number' THEN ({column} #>> {path})::float8 END",
            f"({column} #>> {path})",
        ]

    def number(self, column: str, path: str) -> str:
        return _number(f"{column} #> {path}", f"({column} #>> {path})")

    @staticmethod
    def _tsquery(term: Term, bind: Callable[[Any], str]) -> str:
        if term.prefix:
            return f"to_tsquery('simple', {bind(chr(39) + term.words.replace(chr(39), chr(39) * 2) + chr(39) + ':*')})"
        return f"phraseto_tsquery('simple', {bind(term.words)})"

    @staticmethod
    def _in_field(position: int | None, bind: Callable[[Any], str]) -> str:
        return "" if position is None else f" AND t.position = {bind(position)}"

    def text_match(self, term: Term, position: int | None, bind: Callable[[Any], str]) -> str:
        return (
            f"SELECT t.record_id FROM {TEXT} t WHERE t.dataset_id = :dataset_id "
            f"AND t.content @@ {self._tsquery(term, bind)}{self._in_field(position, bind)}"
        )

    def text_scores(self, terms: list[Term], position: int | None, bind: Callable[[Any], str]) -> str:
        """ts_rank of each matching field, summed per record."""
        query = " || ".join(self._tsquery(term, bind) for term in terms)
        return (
            f"SELECT t.record_id AS record_id, SUM(ts_rank(t.content, q.q)) AS score FROM {TEXT} t, "
            f"(SELECT {query} AS q) q WHERE t.dataset_id = :dataset_id AND t.content @@ q.q"
            f"{self._in_field(position, bind)} GROUP BY t.record_id"
        )

    def prepare(self, connection: Any) -> None:
        """One start at a time brings the schema up to date (two servers on one database start together)."""
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
