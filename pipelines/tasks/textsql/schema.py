"""The shop database the text-to-SQL questions are asked about, built from a seed alone.

Everything is invented from the small word lists below with Python's `random`, so the same seed
gives the same rows (and, with the same SQLite library, the same file bytes) on any machine, and
no third-party data or licence is involved. Text values never contain a quote, so gold SQL can
quote them verbatim.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

# Quoted by prompts and READMEs; the one definition of the tables.
SCHEMA_SQL = """\
CREATE TABLE customers (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  city TEXT NOT NULL,
  country TEXT NOT NULL,
  signup_year INTEGER NOT NULL
);
CREATE TABLE products (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  category TEXT NOT NULL,
  price REAL NOT NULL
);
CREATE TABLE orders (
  id INTEGER PRIMARY KEY,
  customer_id INTEGER NOT NULL REFERENCES customers (id),
  order_year INTEGER NOT NULL,
  status TEXT NOT NULL
);
CREATE TABLE order_items (
  order_id INTEGER NOT NULL REFERENCES orders (id),
  product_id INTEGER NOT NULL REFERENCES products (id),
  quantity INTEGER NOT NULL,
  PRIMARY KEY (order_id, product_id)
);
"""

CITIES: dict[str, tuple[str, ...]] = {
    "France": ("Paris", "Lyon", "Nantes"),
    "Germany": ("Berlin", "Munich", "Hamburg"),
    "Spain": ("Madrid", "Seville", "Valencia"),
    "Italy": ("Rome", "Milan", "Turin"),
    "Portugal": ("Lisbon", "Porto", "Braga"),
}
FIRST_NAMES = (
    "Ada", "Ben", "Clara", "David", "Elena", "Felix", "Greta", "Hugo", "Ines", "Jonas",
    "Karin", "Leo", "Marta", "Nils", "Olga", "Pablo", "Rosa", "Sven", "Tara", "Victor",
)  # fmt: skip
LAST_NAMES = (
    "Almeida", "Berger", "Costa", "Dubois", "Esposito", "Fischer", "Garcia", "Hoffmann", "Lambert", "Moreau",
    "Navarro", "Ortega", "Petit", "Ricci", "Santos", "Schmidt", "Silva", "Vogel", "Weber", "Romano",
)  # fmt: skip
# category -> (nouns, price range): the price range keeps categories distinguishable by AVG/MAX.
CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[int, int]]] = {
    "book": (("Atlas", "Novel", "Cookbook", "Guide", "Diary"), (5, 40)),
    "game": (("Chess", "Dice", "Cards", "Domino", "Quiz"), (8, 60)),
    "garden": (("Rake", "Hose", "Shovel", "Planter", "Lantern"), (10, 120)),
    "kitchen": (("Kettle", "Pan", "Knife", "Blender", "Toaster"), (12, 150)),
    "music": (("Guitar", "Drum", "Flute", "Ukulele", "Harmonica"), (15, 400)),
    "sport": (("Ball", "Racket", "Helmet", "Skates", "Bike"), (10, 500)),
    "toy": (("Puzzle", "Kite", "Robot", "Yoyo", "Teddy"), (5, 80)),
}
ADJECTIVES = ("Classic", "Mini", "Pro", "Eco", "Deluxe", "Smart", "Retro", "Junior")
STATUSES = (("delivered", 60), ("shipped", 15), ("pending", 10), ("cancelled", 15))  # (status, weight)
SIGNUP_YEARS = (2016, 2024)
ORDER_YEARS = (2018, 2024)

N_CUSTOMERS = 200
N_PRODUCTS = 60
N_ORDERS = 600


def shop_rows(seed: int = 0) -> dict[str, list[tuple[object, ...]]]:
    """All rows per table; separate from writing so tests and docs can look at them directly."""
    rng = random.Random(seed)
    cities = [(city, country) for country, names in CITIES.items() for city in names]
    full_names = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
    customers = []
    for cid, name in enumerate(rng.sample(full_names, N_CUSTOMERS), start=1):
        city, country = rng.choice(cities)
        customers.append((cid, name, city, country, rng.randint(*SIGNUP_YEARS)))

    product_names = sorted(
        (f"{adjective} {noun}", category)
        for category, (nouns, _) in CATEGORIES.items()
        for noun in nouns
        for adjective in ADJECTIVES
    )
    products, prices = [], set()
    for pid, (name, category) in enumerate(rng.sample(product_names, N_PRODUCTS), start=1):
        low, high = CATEGORIES[category][1]
        price = round(rng.uniform(low, high), 2)
        while price in prices:  # unique prices: "the most expensive" has one answer
            price = round(rng.uniform(low, high), 2)
        prices.add(price)
        products.append((pid, name, category, price))

    # Skewed popularity, so some customers never order and some products sell far more than others.
    customer_weights = [rng.random() ** 2 for _ in customers]
    product_weights = [rng.random() ** 3 for _ in products]
    statuses, status_weights = zip(*STATUSES, strict=True)
    orders, items = [], []
    for oid in range(1, N_ORDERS + 1):
        customer = rng.choices(customers, weights=customer_weights)[0]
        year = rng.randint(max(customer[4], ORDER_YEARS[0]), ORDER_YEARS[1])
        orders.append((oid, customer[0], year, rng.choices(statuses, weights=status_weights)[0]))
        chosen: set[int] = set()
        n_items = rng.randint(1, 4)
        while len(chosen) < n_items:
            chosen.add(rng.choices(products, weights=product_weights)[0][0])
        items.extend((oid, pid, rng.randint(1, 5)) for pid in sorted(chosen))
    return {"customers": customers, "products": products, "orders": orders, "order_items": items}


def build_database(path: str | Path, seed: int = 0) -> Path:
    """Write the shop database to `path` (replacing any file there) and return the path."""
    path = Path(path)
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.executescript(SCHEMA_SQL)
        for table, rows in shop_rows(seed).items():
            marks = ", ".join("?" * len(rows[0]))
            conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        conn.commit()
        conn.execute("VACUUM")
    finally:
        conn.close()
    return path
