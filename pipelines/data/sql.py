"""SQL databases as data sources, and as a home for a run's metrics.

A source is a SQLite file (`.sqlite`, `.sqlite3`, `.db`) or any SQLAlchemy URL (`sqlite:///relative.db`,
`sqlite:////absolute.db`, `postgresql://user@host/db`, `postgresql://user@/db?host=/run/postgresql` for a
local socket), plus a table, view or query. A table is read in primary-key order, a view or query in the
order its ORDER BY gives (without one, PostgreSQL returns rows in no fixed order). Rows are read with
`datasets`' own SQL loader (`Dataset.from_sql`) into a fresh cache folder per load: the loader keys its
cache by query text, so a shared cache would serve yesterday's rows after the table changed.

URLs are shown with the password masked (`postgresql://ml:***@db/shop`); better still, leave the password
out of the URL and let the driver find it (`PGPASSWORD`, `~/.pgpass`).
"""

from __future__ import annotations

import atexit
import datetime
import math
import re
import shutil
import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from datasets import Dataset
from sqlalchemy.engine import URL, Engine

from pipelines.cli import UserError, mask_passwords

SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
# A bare (optionally schema-qualified) name is a table or view; anything else is a query.
TABLE_NAME = re.compile(r"^(?:(?P<schema>[A-Za-z_][\w$]*)\.)?(?P<name>[A-Za-z_][\w$]*)$")
CONNECT_TIMEOUT_S = 10


def database_url(spec: str) -> URL | None:
    """The SQLAlchemy URL `spec` names (a SQLite file path or a URL of a known dialect), else None."""
    if "://" not in spec:
        path = Path(spec).expanduser()
        return URL.create("sqlite", database=str(path)) if path.suffix.lower() in SQLITE_SUFFIXES else None
    try:
        url = sa.make_url(spec)
        url.get_dialect()
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError):
        return None
    return url


def _first_line(err: BaseException) -> str:
    """The database's own message: the DBAPI error under the SQLAlchemy/pandas/datasets wrappers."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, sa.exc.DBAPIError) and cause.orig is not None:
            err = cause.orig
            break
        err = cause  # no DBAPI error below: the innermost exception says the most
        cause = cause.__cause__ or cause.__context__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def connect(spec: str) -> Engine:
    """An engine for `spec`, checked to connect now, so that a typo fails before any model is loaded."""
    url = database_url(spec)
    if url is None:
        raise UserError(f"{spec!r} is not a database: use a {'/'.join(SQLITE_SUFFIXES)} file or a SQLAlchemy URL")
    name = mask_passwords(spec)
    if url.drivername == "postgresql" and find_spec("psycopg") is None and find_spec("psycopg2") is not None:
        url = url.set(drivername="postgresql+psycopg2")  # SQLAlchemy 2.1 defaults to psycopg 3; use what is installed
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:" and not Path(url.database).is_file():
            raise UserError(f"SQLite database not found: {url.database}")  # SQLite would create an empty one
    elif url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S  # an unreachable host fails in seconds, not minutes
    try:
        engine = sa.create_engine(url, connect_args=connect_args)
    except ModuleNotFoundError as err:
        raise UserError(f"the database driver for {url.drivername} is not installed: pip install {err.name}") from None
    try:
        with engine.connect():
            pass
    except sa.exc.SQLAlchemyError as err:
        engine.dispose()
        raise UserError(f"cannot connect to {name}: {_first_line(err)}") from None
    return engine


def _relations(engine: Engine) -> list[str]:
    inspector = sa.inspect(engine)
    return sorted(inspector.get_table_names() + inspector.get_view_names())


def _query(engine: Engine, spec: str, sql: str | None) -> str:
    """`sql` as a query. A table or view name becomes `SELECT *` from it, once it is known to exist, in
    primary-key order: without ORDER BY a database may return rows in any order (PostgreSQL does, after
    inserts fill gaps in earlier pages), and a seeded split is only reproducible over a fixed order."""
    if not sql or not sql.strip():
        raise UserError(
            f"{mask_passwords(spec)} is a database: set `sql` to a table, view or query "
            f"(tables and views there: {', '.join(_relations(engine)) or 'none'})"
        )
    match = TABLE_NAME.match(sql.strip())
    if match is None:
        return sql.strip().rstrip(";")
    schema, name = match["schema"], match["name"]
    if not sa.inspect(engine).has_table(name, schema=schema):
        raise UserError(
            f"no table or view {sql.strip()!r} in {mask_passwords(spec)} "
            f"(tables and views there: {', '.join(_relations(engine)) or 'none'})"
        )
    quote = engine.dialect.identifier_preparer.quote
    query = f"SELECT * FROM {quote(schema) + '.' if schema else ''}{quote(name)}"
    key = sa.inspect(engine).get_pk_constraint(name, schema=schema).get("constrained_columns") or []
    return f"{query} ORDER BY {', '.join(quote(column) for column in key)}" if key else query


def _fresh_cache_dir() -> str:
    path = tempfile.mkdtemp(prefix="pipelines-sql-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def load_sql(spec: str, sql: str | None) -> Dataset:
    """The rows of a table, view or query in the database `spec` names; failures are one-line `UserError`s."""
    engine = connect(spec)
    try:
        query = _query(engine, spec, sql)
        try:
            return Dataset.from_sql(query, engine, cache_dir=_fresh_cache_dir())
        except Exception as err:  # noqa: BLE001 - datasets wraps the database's error in its own
            raise UserError(f"SQL failed on {mask_passwords(spec)}: {_first_line(err)}") from None
    finally:
        engine.dispose()


def _json_safe(value: Any) -> Any:
    """NaN and infinities are not JSON (PostgreSQL rejects them): stored as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsTable:
    """A run's metrics as rows of a table in the data's database: run id, step, time, JSON payload.

    One row per `metrics.jsonl` line. `run_id` is `<output dir name>-<UTC start time>`; a resumed run gets a
    new one (its first steps repeat the last ones the stopped run logged after its checkpoint).
    """

    def __init__(self, spec: str, table: str, is_main_process: bool) -> None:
        if TABLE_NAME.match(table) is None:
            raise UserError(f"metrics_table must be a table name (optionally schema.table), got {table!r}")
        schema, name = table.split(".", 1) if "." in table else (None, table)
        self.where = f"table {table} of {mask_passwords(spec)}"
        self.engine = connect(spec)
        self.table = sa.Table(
            name,
            sa.MetaData(schema=schema),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("run_id", sa.String(255), nullable=False, index=True),
            sa.Column("output_dir", sa.Text, nullable=False),
            sa.Column("step", sa.Integer),
            sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("metrics", sa.JSON, nullable=False),
        )
        self.started = datetime.datetime.now(datetime.UTC)
        self.run_id: str | None = None
        self.failed = False
        if is_main_process:  # only the main process logs metrics; one CREATE, no race between ranks
            try:
                self.table.metadata.create_all(self.engine, checkfirst=True)
            except sa.exc.SQLAlchemyError as err:
                raise UserError(f"cannot create the metrics {self.where}: {_first_line(err)}") from None

    def __call__(self, metrics_file: Path, record: dict[str, Any]) -> None:
        """Insert one record; a database hiccup warns once and never stops training (metrics.jsonl has it all)."""
        output_dir = metrics_file.parent
        if self.run_id is None:
            self.run_id = f"{output_dir.name}-{self.started:%Y%m%dT%H%M%SZ}"
            print(f"metrics also go to {self.where} as run_id {self.run_id!r}")
        row = {
            "run_id": self.run_id,
            "output_dir": str(output_dir.resolve()),
            "step": record.get("step"),
            "logged_at": datetime.datetime.now(datetime.UTC),
            "metrics": {key: _json_safe(value) for key, value in record.items()},
        }
        try:
            with self.engine.begin() as connection:
                connection.execute(self.table.insert(), row)
        except sa.exc.SQLAlchemyError as err:
            if not self.failed:
                print(f"warning: cannot write metrics to {self.where}: {_first_line(err)}", file=sys.stderr)
            self.failed = True
