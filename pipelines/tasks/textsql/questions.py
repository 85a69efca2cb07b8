"""Text-to-SQL questions with gold SQL that has been run against the shop database.

Questions come from templates in three tiers, with slot values taken from the database itself.
A small model is trained to reproduce the gold SQL exactly, so every template writes the same
canonical style (see `SQL_STYLE`). A question is kept only when its gold SQL runs and has an
informative answer (`_gold_is_usable`); questions are unique, and train and test never share a
question text, since the split is made on distinct (template, slot values) questions.
"""

from __future__ import annotations

import itertools
import random
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.cli import UserError
from pipelines.tasks.samples import SPLITS, TIERS, CheckReport, read_jsonl, update_readme, write_jsonl, write_pairs
from pipelines.tasks.textsql.execute import Row, execute, has_order_by, results_match, top_level_view
from pipelines.tasks.textsql.pairs import Pair, pair_splits, readme_section
from pipelines.tasks.textsql.schema import SCHEMA_SQL, build_database

DB_NAME = "shop.sqlite"

SQL_STYLE = (
    "keywords and functions in upper case (`SELECT COUNT(*) FROM`), identifiers in lower case",
    "string values in single quotes, numbers bare; one space between words and around operators, "
    "none after `(` or before `)`, `,` and `;`",
    "one statement ending in `;`; ascending order is written without `ASC`",
    "single-table queries use bare column names; joins alias every table (customers c, orders o, "
    "order_items oi, products p), join along customers → orders → order_items → products, and write "
    "`JOIN t x ON x.key = previous.key` with the newly joined table on the left",
)


@dataclass(frozen=True)
class Template:
    """One question pattern and its gold SQL; `{slot}` placeholders are filled from `SLOTS`."""

    name: str
    tier: str
    question: str
    sql: str

    @property
    def slots(self) -> tuple[str, ...]:
        """Slot names used by the question, in a fixed order."""
        return tuple(sorted({field for _, field, _, _ in string.Formatter().parse(self.question) if field}))


# slot -> a query for its values, or the values themselves. Text values are quoted by the templates.
SLOTS: dict[str, str | tuple[int, ...]] = {
    "city": "SELECT city FROM customers",
    "country": "SELECT country FROM customers",
    "signup": "SELECT signup_year FROM customers",
    "customer": "SELECT name FROM customers",
    "cid": "SELECT id FROM customers",
    "category": "SELECT category FROM products",
    "product": "SELECT name FROM products",
    "pid": "SELECT id FROM products",
    "status": "SELECT status FROM orders",
    "year": "SELECT order_year FROM orders",
    "oid": "SELECT id FROM orders",
    "price": (10, 20, 25, 30, 40, 50, 75, 100, 150, 200, 250, 300),
    "low": (10, 20, 30, 50),
    "high": (60, 80, 100, 150, 200, 300),
    "n": (2, 3, 4, 5),
    "k": (2, 3, 4, 5, 6, 7, 8),
    "many": (8, 10, 12, 14, 16),
}

_C_O = "customers c JOIN orders o ON o.customer_id = c.id"
_OI_P = "order_items oi JOIN products p ON p.id = oi.product_id"

TEMPLATES: tuple[Template, ...] = (
    # easy: one table, one filter or one aggregate
    Template("customers_in_city", "easy",
             "How many customers live in {city}?",
             "SELECT COUNT(*) FROM customers WHERE city = '{city}';"),
    Template("names_in_city", "easy",
             "List the customers who live in {city}.",
             "SELECT name FROM customers WHERE city = '{city}';"),
    Template("customers_in_country", "easy",
             "How many customers are from {country}?",
             "SELECT COUNT(*) FROM customers WHERE country = '{country}';"),
    Template("signups_in_year", "easy",
             "How many customers signed up in {signup}?",
             "SELECT COUNT(*) FROM customers WHERE signup_year = {signup};"),
    Template("signed_up_before", "easy",
             "Which customers signed up before {signup}?",
             "SELECT name FROM customers WHERE signup_year < {signup};"),
    Template("city_of_customer", "easy",
             "Which city does {customer} live in?",
             "SELECT city FROM customers WHERE name = '{customer}';"),
    Template("signup_of_customer", "easy",
             "In which year did {customer} sign up?",
             "SELECT signup_year FROM customers WHERE name = '{customer}';"),
    Template("products_in_category", "easy",
             "Which products are in the {category} category?",
             "SELECT name FROM products WHERE category = '{category}';"),
    Template("products_below_price", "easy",
             "Which products cost less than {price}?",
             "SELECT name FROM products WHERE price < {price};"),
    Template("products_above_price", "easy",
             "How many products cost more than {price}?",
             "SELECT COUNT(*) FROM products WHERE price > {price};"),
    Template("price_of_product", "easy",
             "What is the price of the {product}?",
             "SELECT price FROM products WHERE name = '{product}';"),
    Template("category_of_product", "easy",
             "Which category is the {product} in?",
             "SELECT category FROM products WHERE name = '{product}';"),
    Template("orders_with_status", "easy",
             "How many orders are {status}?",
             "SELECT COUNT(*) FROM orders WHERE status = '{status}';"),
    Template("orders_in_year", "easy",
             "How many orders were placed in {year}?",
             "SELECT COUNT(*) FROM orders WHERE order_year = {year};"),
    Template("status_of_order", "easy",
             "What is the status of order {oid}?",
             "SELECT status FROM orders WHERE id = {oid};"),
    Template("orders_of_customer_id", "easy",
             "How many orders has customer {cid} placed?",
             "SELECT COUNT(*) FROM orders WHERE customer_id = {cid};"),
    # medium: GROUP BY, ORDER BY + LIMIT, two conditions, AVG/MAX/MIN/SUM
    Template("city_counts_in_country", "medium",
             "How many customers live in each city of {country}?",
             "SELECT city, COUNT(*) FROM customers WHERE country = '{country}' GROUP BY city;"),
    Template("customers_per_country", "medium",
             "How many customers are there per country?",
             "SELECT country, COUNT(*) FROM customers GROUP BY country;"),
    Template("products_per_category", "medium",
             "How many products does each category have?",
             "SELECT category, COUNT(*) FROM products GROUP BY category;"),
    Template("status_counts_in_year", "medium",
             "How many orders of each status were placed in {year}?",
             "SELECT status, COUNT(*) FROM orders WHERE order_year = {year} GROUP BY status;"),
    Template("avg_price_in_category", "medium",
             "What is the average price of {category} products?",
             "SELECT AVG(price) FROM products WHERE category = '{category}';"),
    Template("max_price_in_category", "medium",
             "What is the highest price among {category} products?",
             "SELECT MAX(price) FROM products WHERE category = '{category}';"),
    Template("min_price_in_category", "medium",
             "What is the lowest price among {category} products?",
             "SELECT MIN(price) FROM products WHERE category = '{category}';"),
    Template("most_expensive", "medium",
             "What are the {n} most expensive products?",
             "SELECT name FROM products ORDER BY price DESC LIMIT {n};"),
    Template("cheapest_in_category", "medium",
             "What are the {n} cheapest {category} products?",
             "SELECT name FROM products WHERE category = '{category}' ORDER BY price LIMIT {n};"),
    Template("priciest_in_category", "medium",
             "What is the most expensive {category} product?",
             "SELECT name FROM products WHERE category = '{category}' ORDER BY price DESC LIMIT 1;"),
    Template("biggest_cities", "medium",
             "Which {n} cities have the most customers?",
             "SELECT city FROM customers GROUP BY city ORDER BY COUNT(*) DESC LIMIT {n};"),
    Template("city_and_signup", "medium",
             "Which customers from {city} signed up in {signup}?",
             "SELECT name FROM customers WHERE city = '{city}' AND signup_year = {signup};"),
    Template("country_signups_after", "medium",
             "How many customers from {country} signed up after {signup}?",
             "SELECT COUNT(*) FROM customers WHERE country = '{country}' AND signup_year > {signup};"),
    Template("status_in_year", "medium",
             "How many {status} orders were placed in {year}?",
             "SELECT COUNT(*) FROM orders WHERE status = '{status}' AND order_year = {year};"),
    Template("category_below_price", "medium",
             "Which {category} products cost less than {price}?",
             "SELECT name FROM products WHERE category = '{category}' AND price < {price};"),
    Template("price_between", "medium",
             "Which products cost between {low} and {high}?",
             "SELECT name FROM products WHERE price BETWEEN {low} AND {high};"),
    Template("units_in_order", "medium",
             "How many units are in order {oid}?",
             "SELECT SUM(quantity) FROM order_items WHERE order_id = {oid};"),
    Template("units_of_product", "medium",
             "How many units of product {pid} were sold?",
             "SELECT SUM(quantity) FROM order_items WHERE product_id = {pid};"),
    Template("customer_orders_per_year", "medium",
             "How many orders did customer {cid} place each year?",
             "SELECT order_year, COUNT(*) FROM orders WHERE customer_id = {cid} GROUP BY order_year;"),
    # hard: joins over 2-3 tables, HAVING, subqueries
    Template("orders_of_customer", "hard",
             "How many orders did {customer} place?",
             f"SELECT COUNT(*) FROM {_C_O} WHERE c.name = '{{customer}}';"),
    Template("order_years_of_customer", "hard",
             "In which years did {customer} place orders?",
             f"SELECT DISTINCT o.order_year FROM {_C_O} WHERE c.name = '{{customer}}';"),
    Template("customer_of_order", "hard",
             "Who placed order {oid}?",
             f"SELECT c.name FROM {_C_O} WHERE o.id = {{oid}};"),
    Template("products_in_order", "hard",
             "Which products are in order {oid}?",
             f"SELECT p.name FROM {_OI_P} WHERE oi.order_id = {{oid}};"),
    Template("order_value", "hard",
             "What is the total value of order {oid}?",
             f"SELECT SUM(oi.quantity * p.price) FROM {_OI_P} WHERE oi.order_id = {{oid}};"),
    Template("buyers_of_product", "hard",
             "Which customers bought product {pid}?",
             f"SELECT DISTINCT c.name FROM {_C_O} JOIN order_items oi ON oi.order_id = o.id "
             "WHERE oi.product_id = {pid};"),
    Template("units_sold_in_year", "hard",
             "How many units were sold in {year}?",
             "SELECT SUM(oi.quantity) FROM orders o JOIN order_items oi ON oi.order_id = o.id "
             "WHERE o.order_year = {year};"),
    Template("units_sold_in_category", "hard",
             "How many {category} units were sold?",
             f"SELECT SUM(oi.quantity) FROM {_OI_P} WHERE p.category = '{{category}}';"),
    Template("status_orders_from_city", "hard",
             "How many {status} orders came from {city}?",
             f"SELECT COUNT(*) FROM {_C_O} WHERE c.city = '{{city}}' AND o.status = '{{status}}';"),
    Template("country_orders_in_year", "hard",
             "How many orders came from each country in {year}?",
             f"SELECT c.country, COUNT(*) FROM {_C_O} WHERE o.order_year = {{year}} GROUP BY c.country;"),
    Template("frequent_customers", "hard",
             "Which customers placed more than {k} orders?",
             f"SELECT c.name FROM {_C_O} GROUP BY c.id HAVING COUNT(*) > {{k}};"),
    Template("top_products", "hard",
             "Which {n} products sold the most units?",
             f"SELECT p.name FROM {_OI_P} GROUP BY p.id ORDER BY SUM(oi.quantity) DESC LIMIT {{n}};"),
    Template("best_seller_in_category", "hard",
             "Which {category} product sold the most units?",
             f"SELECT p.name FROM {_OI_P} WHERE p.category = '{{category}}' GROUP BY p.id "
             "ORDER BY SUM(oi.quantity) DESC LIMIT 1;"),
    Template("populous_cities", "hard",
             "Which cities have more than {many} customers?",
             "SELECT city FROM customers GROUP BY city HAVING COUNT(*) > {many};"),
    Template("pricey_categories", "hard",
             "Which categories have an average price above {price}?",
             "SELECT category FROM products GROUP BY category HAVING AVG(price) > {price};"),
    Template("above_average", "hard",
             "Which products cost more than the average product?",
             "SELECT name FROM products WHERE price > (SELECT AVG(price) FROM products);"),
    Template("above_category_average", "hard",
             "Which {category} products cost more than their category average?",
             "SELECT name FROM products WHERE category = '{category}' AND price > "
             "(SELECT AVG(price) FROM products WHERE category = '{category}');"),
    Template("never_ordered_in_city", "hard",
             "Which customers from {city} never placed an order?",
             "SELECT name FROM customers WHERE city = '{city}' AND id NOT IN (SELECT customer_id FROM orders);"),
    Template("ordered_in_year_from_city", "hard",
             "Which customers from {city} ordered in {year}?",
             "SELECT name FROM customers WHERE city = '{city}' AND id IN "
             "(SELECT customer_id FROM orders WHERE order_year = {year});"),
)  # fmt: skip


def _slot_values(db_path: Path, source: str | tuple[int, ...]) -> list[Any]:
    """Distinct values of a slot, sorted, so candidates do not depend on table order."""
    if isinstance(source, tuple):
        return list(source)
    result = execute(db_path, source)
    if result.rows is None:
        raise RuntimeError(f"slot query fails ({result.error}): {source}")
    return sorted({row[0] for row in result.rows})


def _is_informative(rows: Sequence[Row]) -> bool:
    """Non-empty and not a lone 0/NULL: wrong SQL too easily returns 0 or NULL, so those verify little."""
    return bool(rows) and not (len(rows) == 1 and all(value in (0, None) for value in rows[0]))


def _with_tiebreak(sql: str, n_columns: int, direction: str) -> str:
    """The same query with every output column appended to its top-level ORDER BY."""
    view = top_level_view(sql)
    limit = view.rfind(" LIMIT ")
    end = limit if limit > view.rfind("ORDER BY") else view.rstrip().rfind(";")
    extra = "".join(f", {i} {direction}" for i in range(1, n_columns + 1))
    return sql[:end] + extra + sql[end:]


def _gold_is_usable(db_path: Path, sql: str) -> bool:
    """Runs, informative, and (if ordered) free of ties that would make other correct orders look wrong."""
    result = execute(db_path, sql)
    if result.rows is None or not _is_informative(result.rows):
        return False
    if not has_order_by(sql):
        return True
    n_columns = len(result.rows[0])
    for direction in ("ASC", "DESC"):
        broken = execute(db_path, _with_tiebreak(sql, n_columns, direction))
        if broken.rows is None or not results_match(result.rows, broken.rows, ordered=True):
            return False
    return True


def _apportion(weights: Sequence[int], total: int) -> list[int]:
    """Split `total` in proportion to `weights` (largest remainder; earlier entries win ties)."""
    whole = sum(weights)
    exact = [total * weight / whole for weight in weights]
    counts = [int(share) for share in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _fill(template: Template, values: dict[str, Any]) -> tuple[str, str]:
    return template.question.format(**values), template.sql.format(**values)


def _pick_tier(
    db_path: Path,
    templates: list[Template],
    slots: dict[str, list[Any]],
    quota: int,
    rng: random.Random,
    seen: set[str],
) -> list[dict[str, str]]:
    """Round-robin over the tier's templates so small templates are used up and big ones fill the rest."""
    pools = []
    for template in templates:
        combos = [
            dict(zip(template.slots, combo, strict=True))
            for combo in itertools.product(*(slots[slot] for slot in template.slots))
        ]
        rng.shuffle(combos)
        pools.append(combos)
    rows: list[dict[str, str]] = []
    while len(rows) < quota and any(pools):
        for template, pool in zip(templates, pools, strict=True):
            while pool and len(rows) < quota:
                question, sql = _fill(template, pool.pop())
                if question not in seen and _gold_is_usable(db_path, sql):
                    seen.add(question)
                    rows.append(
                        {"question": question, "answer": sql, "difficulty": template.tier, "template": template.name}
                    )
                    break
    if len(rows) < quota:
        raise UserError(
            f"only {len(rows)} usable {templates[0].tier} questions exist; ask for fewer (--n-train/--n-test)"
        )
    return rows


def generate_rows(
    db_path: str | Path, seed: int = 0, n_train: int = 2000, n_test: int = 200
) -> dict[str, list[dict[str, str]]]:
    """Train and test rows ({id, question, answer, difficulty, template}), tiers in equal shares."""
    db_path = Path(db_path)
    rng = random.Random(seed)
    slots = {name: _slot_values(db_path, source) for name, source in SLOTS.items()}
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    for tier, quota in zip(TIERS, _apportion([1] * len(TIERS), n_train + n_test), strict=True):
        rows += _pick_tier(db_path, [t for t in TEMPLATES if t.tier == tier], slots, quota, rng, seen)
    rng.shuffle(rows)
    rows = [{"id": f"tsql-{i:05d}", **row} for i, row in enumerate(rows)]

    # Test takes the same share of every template, so each template is measured on unseen questions.
    by_template: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_template.setdefault(row["template"], []).append(row)
    test_ids: set[str] = set()
    names = sorted(by_template)
    for name, count in zip(names, _apportion([len(by_template[n]) for n in names], n_test), strict=True):
        test_ids.update(row["id"] for row in rng.sample(by_template[name], count))
    return {
        "train": [row for row in rows if row["id"] not in test_ids],
        "test": [row for row in rows if row["id"] in test_ids],
    }


def _counts(splits: dict[str, list[dict[str, str]]]) -> dict[str, Counter[str]]:
    return {split: Counter(row["difficulty"] for row in rows) for split, rows in splits.items()}


def _readme(splits: dict[str, list[dict[str, str]]], seed: int, pairs_section: Sequence[str]) -> str:
    """The data card: how the files were made, what they hold, the rules the gold SQL follows, and the
    preference pairs (`pairs_section`, what `python -m pipelines.tasks.textsql pairs` writes with the defaults)."""
    counts = _counts(splits)
    table = ["| split | easy | medium | hard | total |", "|---|---|---|---|---|"]
    for split in SPLITS:
        table.append(f"| {split} | " + " | ".join(str(counts[split][t]) for t in TIERS) + f" | {len(splits[split])} |")
    examples = {}
    for row in splits["train"]:
        examples.setdefault(row["template"], row)
    tiers = []
    for tier in TIERS:
        tiers.append(f"### {tier}\n")
        tiers += [
            f"- `{t.name}`: {examples[t.name]['question']} → `{examples[t.name]['answer']}`"
            if t.name in examples
            else f"- `{t.name}`: {t.question} → `{t.sql}`"
            for t in TEMPLATES
            if t.tier == tier
        ]
        tiers.append("")
    n_train, n_test = len(splits["train"]), len(splits["test"])
    return "\n".join(
        [
            "# textsql: verifiable text-to-SQL demo data",
            "",
            "Questions about a small invented shop database, each with a gold SQL query that has been run",
            "against that database. Generated by this project, no outside data; licence Apache-2.0.",
            "",
            "```bash",
            f".venv/bin/python -m pipelines.tasks.textsql generate --out data/textsql --seed {seed} "
            f"--n-train {n_train} --n-test {n_test}",
            ".venv/bin/python -m pipelines.tasks.textsql check --data data/textsql   # re-runs every gold query",
            "```",
            "",
            "The same command gives byte-identical files (same seed, same SQLite library).",
            "",
            "## Files",
            "",
            f"- `{DB_NAME}`: the database, built from the seed with Python's `random` and small word lists",
            "  (`pipelines/tasks/textsql/schema.py`).",
            "- `train.jsonl`, `test.jsonl`: one row per question:",
            '  `{"id": "tsql-00042", "question": ..., "answer": <gold SQL>, "difficulty": "easy"|"medium"|"hard",'
            ' "template": ...}`.',
            "  The question is the whole prompt (the schema is not in it).",
            "",
            "## Counts",
            "",
            *table,
            "",
            "## Schema",
            "",
            "```sql",
            SCHEMA_SQL.rstrip(),
            "```",
            "",
            "## How questions are made",
            "",
            "- Templates in three tiers (below); slot values (cities, years, product names, ids, ...) come",
            "  from the database or from short fixed lists of thresholds.",
            "- Tiers get equal shares; inside a tier, templates take turns, so small templates are used up",
            "  and large ones fill the rest.",
            "- A question is kept only if its gold SQL runs, returns rows, and is not a lone 0 or NULL (wrong",
            "  SQL too often returns those). Queries with ORDER BY are kept only if breaking ties in either",
            "  direction gives the same rows, so the order in the gold answer is the only correct one.",
            "- Question texts are unique. The test split takes ~10% of every template's distinct questions,",
            "  so no question text appears in both splits.",
            "",
            "## SQL style (for exact match)",
            "",
            *[f"- {rule}" for rule in SQL_STYLE],
            "",
            "Exact match compares `normalize_sql` forms (whitespace collapsed, case folded outside quotes, one",
            "trailing `;`); execution match compares result rows (as a multiset unless the gold query has a",
            "top-level ORDER BY), see `pipelines/tasks/textsql/execute.py`.",
            "",
            "## Templates (with a train example each)",
            "",
            *tiers,
            *pairs_section,
        ]
    )


def write_dataset(
    out_dir: str | Path, seed: int = 0, n_train: int = 2000, n_test: int = 200
) -> dict[str, Counter[str]]:
    """Write shop.sqlite, train.jsonl, test.jsonl, the pair files and README.md into `out_dir`; returns tier
    counts per split."""
    out_dir = Path(out_dir)
    partial = build_database(out_dir / f"{DB_NAME}.partial", seed=seed)
    try:  # files are written only once all questions exist, so a failed request leaves the folder as it was
        splits = generate_rows(partial, seed=seed, n_train=n_train, n_test=n_test)
        pairs = pair_splits(partial, splits, seed=seed)
        for split in SPLITS:
            write_jsonl(out_dir / f"{split}.jsonl", sorted(splits[split], key=lambda r: r["id"]))
        write_pairs(out_dir, pairs)
        (out_dir / "README.md").write_text(_readme(splits, seed, readme_section(pairs, seed)), encoding="utf-8")
        partial.replace(out_dir / DB_NAME)
    finally:
        partial.unlink(missing_ok=True)
    return _counts(splits)


def rewrite_pairs(
    data_dir: Path, seed: int = 0, per_question: int = 1, per_question_test: int = 1
) -> dict[str, list[Pair]]:
    """The `pairs` command: pairs from the folder's own splits (so they are held out by question), written
    with the README's "Preference pairs" section."""
    db_path = data_dir / DB_NAME
    if not db_path.is_file():
        raise UserError(
            f"{db_path} not found; create it with `python -m pipelines.tasks.textsql generate --out {data_dir}`"
        )
    splits = {split: load_split(data_dir, split) for split in SPLITS}
    pairs = pair_splits(db_path, splits, seed, per_question, per_question_test)
    write_pairs(data_dir, pairs)
    update_readme(data_dir / "README.md", readme_section(pairs, seed, per_question, per_question_test))
    return pairs


def load_split(data_dir: str | Path, split: str) -> list[dict[str, str]]:
    """Rows of one split file; a missing or malformed file is a `UserError` (the user can regenerate it)."""
    remedy = f"create it with `python -m pipelines.tasks.textsql generate --out {data_dir}`"
    return read_jsonl(Path(data_dir) / f"{split}.jsonl", ("id", "question", "answer", "difficulty"), remedy)


def check_dataset(data_dir: str | Path) -> CheckReport:
    """Re-run every gold query of a data folder against its database."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(
            f"{data_dir} is not a folder; create it with `python -m pipelines.tasks.textsql generate --out {data_dir}`"
        )
    db_path = data_dir / DB_NAME
    if not db_path.is_file():
        raise UserError(
            f"{db_path} not found; regenerate with `python -m pipelines.tasks.textsql generate --out {data_dir}`"
        )
    splits = {split: load_split(data_dir, split) for split in SPLITS}
    failures = []
    for row in itertools.chain(*splits.values()):
        result = execute(db_path, row["answer"])
        if result.rows is None:
            failures.append((row["id"], result.error or "error"))
        elif not _is_informative(result.rows):
            failures.append((row["id"], "empty, 0 or NULL result"))
    questions = [{row["question"] for row in rows} for rows in splits.values()]
    return CheckReport(
        counts={split: len(rows) for split, rows in splits.items()},
        tiers=Counter(row["difficulty"] for row in itertools.chain(*splits.values())),
        failures=failures,
        shared_questions=len(set.intersection(*questions)),
        checked="gold queries run with an informative result",
    )
