"""The text-to-SQL demo data: deterministic, verified gold SQL, clean splits, a safe executor."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest

from pipelines.tasks.textsql import (
    KINDS,
    TIERS,
    check_dataset,
    execute,
    execution_match,
    normalize_sql,
    perturbations,
    results_match,
    write_dataset,
)
from pipelines.tasks.textsql.__main__ import main
from pipelines.tasks.textsql.questions import load_split

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "textsql"
FILES = ("shop.sqlite", "train.jsonl", "test.jsonl", "pairs_train.jsonl", "pairs_test.jsonl", "README.md")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated folder shared by the read-only tests."""
    out = tmp_path_factory.mktemp("textsql")
    write_dataset(out, seed=0, n_train=300, n_test=30)
    return out


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_dataset(tmp_path / name, seed=3, n_train=120, n_test=12)
    for file in FILES:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file


def test_shipped_data_is_what_the_generator_writes(tmp_path: Path) -> None:
    write_dataset(tmp_path)  # the defaults of `python -m pipelines.tasks.textsql generate`
    for file in ("train.jsonl", "test.jsonl", "README.md"):
        assert (tmp_path / file).read_text() == (SHIPPED / file).read_text(), f"regenerate data/textsql ({file})"
    assert (SHIPPED / "shop.sqlite").stat().st_size < 200_000


def test_every_gold_query_runs_with_an_informative_result(small: Path) -> None:
    report = check_dataset(small)
    assert report.ok, report.summary()
    assert report.counts == {"train": 300, "test": 30}


def test_train_and_test_share_no_question(small: Path) -> None:
    train, test = load_split(small, "train"), load_split(small, "test")
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert len({r["question"] for r in train + test}) == len(train) + len(test)
    assert len({r["id"] for r in train + test}) == len(train) + len(test)


def test_every_tier_is_in_both_splits(small: Path) -> None:
    for split in ("train", "test"):
        assert {r["difficulty"] for r in load_split(small, split)} == set(TIERS)


def test_rows_follow_the_documented_format(small: Path) -> None:
    for row in load_split(small, "train"):
        assert set(row) == {"id", "question", "answer", "difficulty", "template"}
        assert re.fullmatch(r"tsql-\d{5}", row["id"])
        sql = row["answer"]
        assert sql.startswith("SELECT ") and sql.endswith(";") and "  " not in sql and '"' not in sql
        assert normalize_sql(sql) == normalize_sql(normalize_sql(sql))


def test_perturbations_run_and_differ_from_gold(small: Path) -> None:
    db = small / "shop.sqlite"
    one_per_template = {r["template"]: r["answer"] for r in load_split(small, "train")}
    rng = random.Random(0)
    seen_kinds = set()
    for gold in one_per_template.values():
        wrong = perturbations(db, gold, rng)
        assert wrong, gold
        for kind, sql in wrong:
            assert kind in KINDS
            assert execute(db, sql).ok, sql
            assert not execution_match(db, gold, sql), (gold, sql)
            seen_kinds.add(kind)
    assert seen_kinds == set(KINDS)


def test_execution_match_ignores_row_order_unless_gold_orders(small: Path) -> None:
    db = small / "shop.sqlite"
    gold = "SELECT name FROM customers WHERE city = 'Lyon';"
    assert execution_match(db, gold, "SELECT name FROM customers WHERE 'Lyon' = city ORDER BY name DESC;")
    assert not execution_match(db, gold, "SELECT name FROM customers WHERE city = 'Paris';")
    assert not execution_match(db, gold, "SELECT nme FROM customers;")
    ordered = "SELECT name FROM products ORDER BY price DESC LIMIT 3;"
    reversed_rows = "SELECT name FROM (SELECT name, price FROM products ORDER BY price DESC LIMIT 3) ORDER BY price;"
    assert not execution_match(db, ordered, reversed_rows)
    assert results_match([(1, 2.0)], [(1.0, 2.0000000001)], ordered=True)


def test_runaway_recursive_cte_is_stopped(small: Path) -> None:
    start = time.monotonic()
    result = execute(
        small / "shop.sqlite",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT COUNT(*) FROM r;",
        timeout_s=0.2,
    )
    assert result.error is not None and "timeout" in result.error
    assert time.monotonic() - start < 2


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM customers;",
        "DROP TABLE orders;",
        "ATTACH DATABASE ':memory:' AS other;",
        "SELECT 1; DELETE FROM customers;",
        "WITH x AS (SELECT 1) DELETE FROM customers;",
    ],
)
def test_only_a_single_read_only_select_runs(small: Path, sql: str) -> None:
    db = small / "shop.sqlite"
    assert not execute(db, sql).ok
    assert execute(db, "SELECT COUNT(*) FROM customers;").rows == [(200,)]


def test_normalize_sql_keeps_quoted_case() -> None:
    assert normalize_sql("select  name\nFROM customers WHERE city = 'Lyon'  ") == normalize_sql(
        "SELECT name FROM customers WHERE city = 'Lyon';;"
    )
    assert normalize_sql("SELECT 'Lyon  X';") == "select 'Lyon  X';"
    assert normalize_sql("SELECT 'Lyon';") != normalize_sql("SELECT 'lyon';")


def test_cli_generates_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new" / "textsql"
    assert main(["generate", "--out", str(out), "--n-train", "60", "--n-test", "6"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert main(["check", "--data", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("ok: 66/66")
    assert len((out / "train.jsonl").read_text().splitlines()) == 60
    assert json.loads((out / "test.jsonl").read_text().splitlines()[0])["id"].startswith("tsql-")


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "--data", "{tmp}/missing"],
        ["generate", "--out", "{tmp}/big", "--n-train", "100000"],
        ["generate", "--out", "{tmp}/small", "--n-test", "0"],
        ["generate", "--out", "{tmp}/file.txt"],
    ],
)
def test_cli_user_errors_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    (tmp_path / "file.txt").write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        main([arg.format(tmp=tmp_path) for arg in argv])
    assert exit_info.value.code == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # nothing half-written is left
