"""Text-to-SQL preference pairs, the PPO execution reward and the execution-accuracy evaluation."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from pipelines.cli import UserError
from pipelines.tasks.samples import PAIR_FILES
from pipelines.tasks.textsql import KINDS, execute, execution_match
from pipelines.tasks.textsql.__main__ import main
from pipelines.tasks.textsql.evaluate import ERROR_CATEGORIES, evaluate_predictions, failure_category
from pipelines.tasks.textsql.pairs import make_pairs, pair_splits, question_pairs
from pipelines.tasks.textsql.questions import load_split
from pipelines.tasks.textsql.reward import (
    CORRECT_REWARD,
    DATA_ENV,
    FAILED_REWARD,
    WRONG_RESULT_REWARD,
    execution_reward,
    extract_sql,
)

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "textsql"
DB = SHIPPED / "shop.sqlite"
GROUPED = "SELECT city, COUNT(*) FROM customers WHERE country = 'Italy' GROUP BY city;"
BEST_SELLER = (
    "SELECT p.name FROM order_items oi JOIN products p ON p.id = oi.product_id WHERE p.category = 'book' "
    "GROUP BY p.id ORDER BY SUM(oi.quantity) DESC LIMIT 1;"
)


def _pairs(split: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (SHIPPED / PAIR_FILES[split]).read_text().splitlines()]


def _row(sql: str, question: str = "q") -> dict[str, str]:
    return {"id": "tsql-99999", "question": question, "answer": sql, "difficulty": "hard"}


# --- pairs -------------------------------------------------------------------------------------


def test_pairs_are_deterministic_per_seed() -> None:
    rows = load_split(SHIPPED, "train")[:60]
    first = make_pairs(DB, rows, seed=0)
    assert first == make_pairs(DB, rows, seed=0)
    assert first != make_pairs(DB, rows, seed=1)
    assert make_pairs(DB, rows[30:], seed=0) == first[30:]  # a question's pair does not depend on other rows


def test_shipped_pairs_are_what_the_pairs_command_writes(tmp_path: Path) -> None:
    for name in ("shop.sqlite", "train.jsonl", "test.jsonl", "README.md"):
        shutil.copy(SHIPPED / name, tmp_path / name)
    assert main(["pairs", "--data", str(tmp_path)]) == 0
    for name in [*PAIR_FILES.values(), "README.md"]:  # the README's pairs section is already up to date
        assert (tmp_path / name).read_text() == (SHIPPED / name).read_text(), f"regenerate data/textsql ({name})"


def test_pairs_are_held_out_by_question() -> None:
    train, test = _pairs("train"), _pairs("test")
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in test}
    assert {p["prompt"] for p in train} == {r["question"] for r in load_split(SHIPPED, "train")}
    assert {p["prompt"] for p in test} == {r["question"] for r in load_split(SHIPPED, "test")}
    assert 1800 <= len(train) <= 2200 and len(test) == 200


def test_splits_sharing_a_question_are_refused() -> None:
    row = load_split(SHIPPED, "test")[0]
    with pytest.raises(UserError, match="share 1 questions"):
        pair_splits(DB, {"train": [row], "test": [row]})


def test_every_rejected_runs_and_returns_a_different_result() -> None:
    pairs = _pairs("test") + _pairs("train")[::10]
    for pair in pairs:
        assert set(pair) == {"id", "prompt", "chosen", "rejected", "kind", "difficulty"}
        assert pair["rejected"] != pair["chosen"]
        assert execute(DB, pair["rejected"]).ok, pair
        assert not execution_match(DB, pair["chosen"], pair["rejected"]), pair


def test_kinds_are_spread_and_drawn_uniformly_among_the_available_ones() -> None:
    counts = Counter(p["kind"] for p in _pairs("train"))
    assert set(counts) == set(KINDS)
    assert max(counts.values()) < 0.6 * sum(counts.values())
    # BEST_SELLER has a verified rewrite of every kind: 300 seeds give each kind about 60 times
    drawn = Counter(question_pairs(DB, _row(BEST_SELLER), seed=seed)[0]["kind"] for seed in range(300))
    assert set(drawn) == set(KINDS) and min(drawn.values()) > 30


def test_more_pairs_per_question_use_distinct_kinds_first() -> None:
    pairs = question_pairs(DB, _row(BEST_SELLER), per_question=5)
    assert sorted(p["kind"] for p in pairs) == sorted(KINDS)
    pairs = question_pairs(DB, _row(GROUPED), per_question=3)
    assert len(pairs) == 3 and len({p["rejected"] for p in pairs}) == 3
    assert len({p["kind"] for p in pairs[:2]}) == 2
    assert [p["id"] for p in pairs] == ["tsql-99999-p0", "tsql-99999-p1", "tsql-99999-p2"]


# --- reward ------------------------------------------------------------------------------------


def test_execution_reward_scores_correct_wrong_and_broken_sql() -> None:
    row = load_split(SHIPPED, "test")[0]
    gold = row["answer"]
    responses = [
        gold,
        f"Here is the query:\n```sql\n{gold.rstrip(';')}\n```\nIt counts the rows.",
        "SELECT 1;",
        gold.replace("FROM", "FORM"),
        "I don't know.",
    ]
    rewards = execution_reward([row["question"]] * len(responses), responses)
    assert rewards == [CORRECT_REWARD, CORRECT_REWARD, WRONG_RESULT_REWARD, FAILED_REWARD, FAILED_REWARD]
    assert (CORRECT_REWARD, WRONG_RESULT_REWARD, FAILED_REWARD) == (1.0, 0.0, -0.5)


def test_execution_reward_is_fast_on_a_ppo_batch() -> None:
    rows = load_split(SHIPPED, "test")[:64]
    questions, answers = [r["question"] for r in rows], [r["answer"] for r in rows]
    execution_reward(questions, answers)  # loads the questions and gold results once
    start = time.perf_counter()
    assert execution_reward(questions, answers) == [1.0] * 64
    assert time.perf_counter() - start < 0.5  # ~0.3 ms per response in practice


def test_unknown_question_is_a_user_error_naming_it() -> None:
    with pytest.raises(UserError, match="What is the meaning of life"):
        execution_reward(["What is the meaning of life?"], ["SELECT 42;"])


def test_data_folder_can_be_overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(DB, tmp_path / "shop.sqlite")
    own = {"id": "tsql-00000", "question": "How many customers are there?", "difficulty": "easy"}
    (tmp_path / "train.jsonl").write_text(json.dumps({**own, "answer": "SELECT COUNT(*) FROM customers;"}) + "\n")
    other = {"id": "tsql-00001", "question": "How many products are there?", "difficulty": "easy"}
    (tmp_path / "test.jsonl").write_text(json.dumps({**other, "answer": "SELECT COUNT(*) FROM products;"}) + "\n")
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert execution_reward([own["question"]], ["SELECT COUNT(id) FROM customers"]) == [1.0]
    monkeypatch.delenv(DATA_ENV)
    with pytest.raises(UserError, match="How many customers are there"):
        execution_reward([own["question"]], ["SELECT COUNT(id) FROM customers"])


@pytest.mark.parametrize(
    ("text", "sql"),
    [
        ("SELECT name FROM products;", "SELECT name FROM products;"),
        ("Answer with a join:\n```sql\nselect name from products\n```", "select name from products"),
        (
            "SELECT name FROM customers WHERE city = 'a;b'; DELETE FROM x;",
            "SELECT name FROM customers WHERE city = 'a;b';",
        ),
        ("SELECT 1\n\nThis query returns one.", "SELECT 1"),
        ("WITH t AS (SELECT 1 AS x) SELECT x FROM t;", "WITH t AS (SELECT 1 AS x) SELECT x FROM t;"),
        ("I cannot answer that.", None),
        ("", None),
    ],
)
def test_extract_sql_takes_the_first_statement(text: str, sql: str | None) -> None:
    assert extract_sql(text) == sql


# --- evaluation --------------------------------------------------------------------------------


# (tier, gold, prediction, category or None when right); the last one stops at the token limit
HAND_MADE = [
    ("easy", "SELECT name FROM customers WHERE city = 'Lyon';",
     "SELECT name FROM customers WHERE city = 'Lyon';", None),  # exact match
    ("easy", "SELECT COUNT(*) FROM customers WHERE country = 'Italy';",
     "select count(id) from customers where 'Italy' = country", None),  # right result, not exact
    ("easy", "SELECT city FROM customers WHERE name = 'Ada Weber';",
     "SELECT country FROM customers WHERE name = 'Ada Weber';", "wrong_column"),
    ("medium", "SELECT MAX(price) FROM products WHERE category = 'toy';",
     "SELECT MIN(price) FROM products WHERE category = 'toy';", "wrong_aggregation"),
    ("medium", "SELECT name FROM products WHERE price < 50;",
     "SELECT name FROM products WHERE price > 50;", "wrong_condition"),
    ("medium", "SELECT name FROM products ORDER BY price DESC LIMIT 3;",
     "SELECT name FROM products ORDER BY price LIMIT 3;", "wrong_order"),
    ("hard", "SELECT COUNT(*) FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.city = 'Lyon';",
     "SELECT COUNT(*) FROM customers c JOIN orders o ON o.id = c.id WHERE c.city = 'Lyon';", "wrong_join"),
    ("hard", "SELECT name FROM products WHERE price > (SELECT AVG(price) FROM products);",
     "SELECT name FROM products WHERE price > (SELECT AVG(price) FROM", "syntax_error"),
    ("hard", "SELECT name FROM products WHERE category = 'book';",
     "The products are listed below.", "empty_or_not_sql"),
    ("hard", "SELECT name FROM products WHERE category = 'game';",
     "SELECT name FROM products WHERE category = 'game' AND AND AND", "runaway_generation"),
]  # fmt: skip


def test_evaluate_predictions_reports_accuracy_by_tier_and_failure_categories() -> None:
    rows = [{"question": f"q{i}", "answer": gold, "difficulty": tier} for i, (tier, gold, _, _) in enumerate(HAND_MADE)]
    predictions = [prediction for _, _, prediction, _ in HAND_MADE]
    no_eos = [False] * (len(HAND_MADE) - 1) + [True]
    report = evaluate_predictions(rows, predictions, no_eos=no_eos, db_path=DB)
    assert report["n"] == 10
    assert report["execution_accuracy"] == pytest.approx(0.2)
    assert report["exact_match"] == pytest.approx(0.1)
    assert report["executable"] == pytest.approx(0.7)
    assert report["by_difficulty"] == pytest.approx({"easy": 2 / 3, "medium": 0.0, "hard": 0.0})
    assert report["n_by_difficulty"] == {"easy": 3, "medium": 3, "hard": 4}
    assert [p["category"] for p in report["per_prediction"]] == [category for *_, category in HAND_MADE]
    assert list(report["errors"]) == list(ERROR_CATEGORIES)
    counts = {category: entry["count"] for category, entry in report["errors"].items()}
    assert counts == {category: int(category != "other_wrong_result") for category in ERROR_CATEGORIES}
    example = report["errors"]["wrong_order"]["examples"][0]
    assert example["prediction"] == predictions[5] and example["gold"] == rows[5]["answer"]


def test_runaway_only_counts_wrong_predictions_and_examples_are_capped() -> None:
    rows = [{"question": "q", "answer": "SELECT name FROM products WHERE price < 50;", "difficulty": "easy"}] * 5
    predictions = ["SELECT name FROM products WHERE price < 50;"] + ["SELECT"] * 4
    report = evaluate_predictions(rows, predictions, no_eos=[True, False, False, False, False], db_path=DB)
    assert report["execution_accuracy"] == pytest.approx(0.2)
    assert report["errors"]["runaway_generation"]["count"] == 0
    assert report["errors"]["syntax_error"]["count"] == 4
    assert len(report["errors"]["syntax_error"]["examples"]) == 3


def test_failure_categories_recover_the_perturbation_kinds() -> None:
    pairs = _pairs("test")
    agree = sum(failure_category(p["chosen"], p["rejected"]) == p["kind"] for p in pairs)
    assert agree >= 0.95 * len(pairs)
