"""Database sources: a SQLite view and a table in a real PostgreSQL cluster give the same rows and splits as
the JSONL file they were filled from; first/last test splits; a run's metrics written to a database table;
and each mistake with a database source is one `error:` line with exit code 2 that never shows the password.

The PostgreSQL cluster is started once for the module (tests/pg.py: initdb + pg_ctl in a temp dir, unix
socket only) and stopped at the end.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from pipelines.cli import UserError
from pipelines.data.sources import DataArguments, load_splits, metrics_sinks
from pipelines.runner import run as runner
from pipelines.runner.config import resolved_config
from pipelines.sft.__main__ import main as sft_main
from tests.pg import Cluster, throwaway_cluster
from tests.test_errors import error_line

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_FILE = REPO_ROOT / "data" / "textsql" / "train.jsonl"
TEST_FILE = REPO_ROOT / "data" / "textsql" / "test.jsonl"
TINY_CONFIG = REPO_ROOT / "configs" / "sft" / "tiny.yaml"
COLUMNS = ("id", "question", "answer", "difficulty", "template")
PASSWORD = "pg-test-secret"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def create_table(engine: sa.Engine, name: str, rows: list[dict[str, Any]], *extra: sa.Column) -> None:
    """A text table holding `rows` (plus `extra` columns), keyed by `id` (the files are in id order)."""
    columns = [sa.Column(column, sa.Text, primary_key=column == "id") for column in COLUMNS]
    table = sa.Table(name, sa.MetaData(), *extra, *columns)
    with engine.begin() as connection:
        table.create(connection)
        connection.execute(table.insert(), rows)


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `questions` table holding train and test rows (a `split` column, a `seq` for their order) and the
    views `train_questions` / `test_questions` over it: the way a shop keeps its data."""
    path = tmp_path_factory.mktemp("sqlite") / "shop.sqlite"
    train, test = read_jsonl(TRAIN_FILE), read_jsonl(TEST_FILE)
    rows = [
        {"seq": seq, "split": split, **row}
        for seq, (split, row) in enumerate([("train", row) for row in train] + [("test", row) for row in test])
    ]
    engine = sa.create_engine(f"sqlite:///{path}")
    create_table(engine, "questions", rows, sa.Column("seq", sa.Integer), sa.Column("split", sa.Text))
    with engine.begin() as connection:
        for split in ("train", "test"):
            connection.exec_driver_sql(
                f"CREATE VIEW {split}_questions AS SELECT {', '.join(COLUMNS)} FROM questions "
                f"WHERE split = '{split}' ORDER BY seq"
            )
    engine.dispose()
    return path


@pytest.fixture(scope="module")
def postgres() -> Iterator[Cluster]:
    """A throwaway cluster whose `train_questions` and `test_questions` tables hold the sample files' rows."""
    with throwaway_cluster(PASSWORD) as cluster:
        engine = sa.create_engine(cluster.url().replace("postgresql://", "postgresql+psycopg2://"))
        create_table(engine, "train_questions", read_jsonl(TRAIN_FILE))
        create_table(engine, "test_questions", read_jsonl(TEST_FILE))
        engine.dispose()
        yield cluster


@pytest.fixture(scope="module")
def sources(sqlite_db: Path, postgres: Cluster) -> dict[str, str]:
    return {"sqlite view": f"sqlite:///{sqlite_db}", "sqlite file path": str(sqlite_db), "postgresql": postgres.url()}


def as_lists(*splits: Any) -> list[list[dict[str, Any]]]:
    return [split.to_list() for split in splits]


# --- the same dataset as from the file -------------------------------------------------------------


@pytest.mark.parametrize("source", ["sqlite view", "sqlite file path", "postgresql"])
def test_database_source_gives_the_file_s_seeded_split(sources: dict[str, str], source: str) -> None:
    from_file = load_splits(DataArguments(dataset=str(TRAIN_FILE), test_size=0.1), seed=7)
    from_db = load_splits(DataArguments(dataset=sources[source], sql="train_questions", test_size=0.1), seed=7)
    assert as_lists(*from_db) == as_lists(*from_file)
    assert (len(from_db[0]), len(from_db[1])) == (1800, 200)


@pytest.mark.parametrize("source", ["sqlite view", "postgresql"])
def test_eval_sql_reads_held_out_rows_from_the_same_database(sources: dict[str, str], source: str) -> None:
    args = DataArguments(dataset=sources[source], sql="train_questions", eval_sql="test_questions")
    train, held_out = load_splits(args, seed=0)
    assert train.to_list() == read_jsonl(TRAIN_FILE)
    assert held_out.to_list() == read_jsonl(TEST_FILE)


def test_a_query_selects_and_orders_rows(sources: dict[str, str]) -> None:
    query = "SELECT question, answer FROM train_questions WHERE difficulty = 'hard' ORDER BY id DESC"
    train, _ = load_splits(DataArguments(dataset=sources["postgresql"], sql=query, eval_sql=query), seed=0)
    hard = sorted((row for row in read_jsonl(TRAIN_FILE) if row["difficulty"] == "hard"), key=lambda r: r["id"])
    assert train.to_list() == [{"question": row["question"], "answer": row["answer"]} for row in reversed(hard)]


# --- how the test rows are taken ---------------------------------------------------------------------


@pytest.mark.parametrize("source", ["file", "sqlite view", "postgresql"])
def test_first_and_last_test_splits_take_the_rows_at_that_end(sources: dict[str, str], source: str) -> None:
    spec, sql = (str(TRAIN_FILE), None) if source == "file" else (sources[source], "train_questions")
    rows = read_jsonl(TRAIN_FILE)
    train, test = load_splits(DataArguments(dataset=spec, sql=sql, test_size=0.05, test_split="first"), seed=0)
    assert as_lists(train, test) == [rows[100:], rows[:100]]
    train, test = load_splits(DataArguments(dataset=spec, sql=sql, test_size=30, test_split="last"), seed=0)
    assert as_lists(train, test) == [rows[:-30], rows[-30:]]


def test_shuffle_false_caps_training_rows_in_source_order(sources: dict[str, str]) -> None:
    rows = read_jsonl(TRAIN_FILE)
    common = {"dataset": sources["sqlite view"], "sql": "train_questions", "test_split": "last", "test_size": 10}
    kept, _ = load_splits(DataArguments(**common, max_train_samples=8, shuffle=False), seed=0)
    assert kept.to_list() == rows[:8]
    shuffled, _ = load_splits(DataArguments(**common, max_train_samples=8), seed=0)
    assert len(shuffled) == 8
    assert shuffled.to_list() != rows[:8]
    assert all(row in rows[:-10] for row in shuffled.to_list())


def test_a_test_size_leaving_no_training_rows_is_a_user_error(sources: dict[str, str]) -> None:
    with pytest.raises(UserError, match="too few to split off"):
        load_splits(DataArguments(dataset=sources["postgresql"], sql="train_questions", test_size=2000), seed=0)


# --- metrics in the database -------------------------------------------------------------------------


def test_sft_run_from_a_sqlite_view_writes_its_metrics_to_a_table(
    sqlite_db: Path, tiny_model: Path, run_cli, tmp_path: Path
) -> None:
    output_dir = tmp_path / "run"
    result = run_cli(
        "pipelines.sft",
        *("--config", TINY_CONFIG, "--model_name_or_path", tiny_model, "--output_dir", output_dir),
        *("--dataset", f"sqlite:///{sqlite_db}", "--sql", "train_questions"),
        # "": held-out rows from `dataset`'s database; 16 of them keep the final evaluation short
        *("--eval_dataset", "", "--eval_sql", "SELECT * FROM test_questions LIMIT 16"),
        *("--metrics_table", "training_metrics", "--max_steps", 4, "--eval_generation_samples", 0),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    logged = read_jsonl(output_dir / "metrics.jsonl")
    assert [row["step"] for row in logged if "loss" in row] == [2, 4]
    assert any("eval_loss" in row for row in logged)
    with sqlite3.connect(sqlite_db) as connection:
        rows = connection.execute(
            "SELECT run_id, output_dir, step, logged_at, metrics FROM training_metrics ORDER BY id"
        ).fetchall()
    assert [json.loads(row[4]) for row in rows] == logged  # one row per metrics.jsonl line, same payload
    assert [row[2] for row in rows] == [record["step"] for record in logged]
    run_ids = {row[0] for row in rows}
    assert len(run_ids) == 1 and run_ids.pop().startswith("run-")
    assert {row[1] for row in rows} == {str(output_dir.resolve())}
    assert all(row[3] for row in rows)
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["data"] == {"train_examples": 64, "eval_examples": 16}
    saved = yaml.safe_load((output_dir / "run_config.yaml").read_text())
    assert (saved["sql"], saved["metrics_table"]) == ("train_questions", "training_metrics")


def test_metrics_table_on_postgresql_stores_json_and_nan_as_null(
    postgres: Cluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(
        runner, "METRICS_SINKS", metrics_sinks(DataArguments(dataset=postgres.url(), metrics_table="ppo_metrics"))
    )
    metrics_file = tmp_path / "ppo-run" / "metrics.jsonl"
    runner.append_metrics(metrics_file, {"step": 1, "objective/kl": 0.25, "loss/value": math.nan})
    runner.append_metrics(metrics_file, {"step": 2, "objective/kl": 0.5, "loss/value": 1.0})
    engine = sa.create_engine(postgres.url().replace("postgresql://", "postgresql+psycopg2://"))
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT run_id, step, metrics->>'objective/kl', metrics->'loss/value' FROM ppo_metrics ORDER BY id"
        ).fetchall()
    engine.dispose()
    assert [row[1:] for row in rows] == [(1, "0.25", None), (2, "0.5", 1.0)]
    assert rows[0][0] == rows[1][0]
    assert rows[0][0].startswith("ppo-run-")
    assert len(read_jsonl(metrics_file)) == 2


def test_saved_config_masks_a_database_url_password(postgres: Cluster) -> None:
    saved = resolved_config(DataArguments(dataset=postgres.url(), sql="train_questions"))
    assert postgres.password not in json.dumps(saved)
    assert saved["dataset"] == postgres.url().replace(postgres.password, "***")


# --- mistakes: one line, exit 2, no password ---------------------------------------------------------


@pytest.fixture
def run_sft(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], tiny_sft_args, tmp_path: Path):
    """`run_sft(*flags) -> error line`: the SFT entry point on tiny.yaml must exit 2 with one `error:` line."""
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(runner, "METRICS_SINKS", [])
    output_dir = tmp_path / "run"

    def run(*flags: Any) -> str:
        capfd.readouterr()
        with pytest.raises(SystemExit) as exited:
            sft_main(tiny_sft_args(output_dir, *flags))
        out, err = capfd.readouterr()
        assert exited.value.code == 2, err[-3000:]
        assert not output_dir.exists()
        for text in (out, err):
            assert PASSWORD not in text
        return error_line(err)

    return run


def test_sql_that_fails_shows_the_database_error(run_sft, postgres: Cluster) -> None:
    message = run_sft("--dataset", postgres.url(), "--sql", "SELECT question, answer FROM train_questions WHERE")
    masked = postgres.url().replace(postgres.password, "***")
    assert message == f"error: SQL failed on {masked}: syntax error at end of input"


def test_unknown_table_lists_the_tables_there(run_sft, postgres: Cluster) -> None:
    message = run_sft("--dataset", postgres.url(), "--sql", "train_questoins")
    assert "no table or view 'train_questoins'" in message
    assert "test_questions, train_questions" in message.partition("tables and views there: ")[2]


def test_database_without_sql_asks_for_it(run_sft, sqlite_db: Path) -> None:
    message = run_sft("--dataset", sqlite_db)
    assert "is a database: set `sql`" in message
    assert "questions, test_questions, train_questions" in message


def test_unknown_column_in_the_mapping(run_sft, postgres: Cluster) -> None:
    message = run_sft(
        "--dataset", postgres.url(), "--sql", "train_questions", "--columns", "prompt=question,completion=gold_sql"
    )
    assert "missing column(s) gold_sql" in message
    assert "the data has id, question, answer, difficulty, template" in message


def test_wrong_password_is_refused_by_the_server(run_sft, postgres: Cluster) -> None:
    wrong = postgres.url().replace(postgres.password, "not-the-password")
    message = run_sft("--dataset", wrong, "--sql", "train_questions")
    assert "cannot connect to postgresql://pipelines:***@/postgres" in message
    assert 'password authentication failed for user "pipelines"' in message


def test_unreachable_database(run_sft, tmp_path: Path) -> None:
    url = f"postgresql://pipelines:{PASSWORD}@/postgres?host={tmp_path}"  # no server listens there
    message = run_sft("--dataset", url, "--sql", "train_questions")
    assert "cannot connect to postgresql://pipelines:***@/postgres" in message
    assert "No such file or directory" in message


def test_missing_sqlite_file_is_not_created(run_sft, tmp_path: Path) -> None:
    missing = tmp_path / "typo.sqlite"
    message = run_sft("--dataset", missing, "--sql", "train_questions")
    assert message == f"error: SQLite database not found: {missing}"
    assert not missing.exists()


def test_sql_with_a_file_dataset(run_sft) -> None:
    message = run_sft("--dataset", TRAIN_FILE, "--sql", "train_questions")
    assert "`sql` is set, but" in message and "is not a database" in message


def test_metrics_table_needs_a_database(run_sft) -> None:
    message = run_sft("--dataset", TRAIN_FILE, "--metrics_table", "training_metrics")
    assert "metrics_table needs a database `dataset`" in message


def test_unknown_test_split(run_sft) -> None:
    assert "invalid choice: 'middle'" in run_sft("--test_split", "middle")
