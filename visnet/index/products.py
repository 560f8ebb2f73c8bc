"""The product store (SQLite, WAL journal): products, filters, vector ids, recommendations."""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PRODUCT_ID_PATTERN",
    "Facets",
    "Product",
    "ProductFilter",
    "ProductStore",
    "UnknownProductError",
]

# what a product id may be where one comes in from outside (the API, shopper events): the one
# home of the rule; a file-name-safe token, no leading dot (never "." or ".."): it names a folder
PRODUCT_ID_PATTERN = r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,63}$"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    id TEXT PRIMARY KEY, category TEXT NOT NULL, title TEXT NOT NULL,
    images TEXT NOT NULL, attributes TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL,
    price REAL, brand TEXT COLLATE NOCASE, in_stock INTEGER);
DROP INDEX IF EXISTS products_category;
CREATE INDEX IF NOT EXISTS products_category_id ON products (category, id);
CREATE TABLE IF NOT EXISTS vectors (
    vector_id INTEGER PRIMARY KEY,
    product_id TEXT NOT NULL REFERENCES products (id) ON DELETE CASCADE, view INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS vectors_product ON vectors (product_id);
CREATE TABLE IF NOT EXISTS pending_vectors (vector_id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS recommendations (
    product_id TEXT NOT NULL, rank INTEGER NOT NULL, other_id TEXT NOT NULL, score REAL NOT NULL,
    duplicates TEXT NOT NULL DEFAULT '[]', PRIMARY KEY (product_id, rank)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
MMAP_BYTES = 2**31 - 2**16  # SQLite's default ceiling (SQLITE_MAX_MMAP_SIZE)
# columns added since the first release: ALTER TABLE adds them to an older file when it opens
_ADDED = {
    "products": (("price", "REAL"), ("brand", "TEXT COLLATE NOCASE"), ("in_stock", "INTEGER")),
    "recommendations": (("duplicates", "TEXT NOT NULL DEFAULT '[]'"),),
}
_INDEXES = """
CREATE INDEX IF NOT EXISTS products_price ON products (price);
CREATE INDEX IF NOT EXISTS products_brand ON products (brand);
"""
# a product's stored look-alikes: ([(id, score, its collapsed listings)], [(own listing, score)])
Recommended = tuple[list[tuple[str, float, Sequence[str]]], list[tuple[str, float]]]
_COLUMNS = "id, category, title, images, attributes, created, updated, price, brand, in_stock"


class UnknownProductError(KeyError):
    """A product id that the catalog does not hold."""

    def __init__(self, product_id: str) -> None:
        super().__init__(product_id)
        self.product_id = product_id

    def __str__(self) -> str:
        return f"unknown product id {self.product_id!r}: no such product in the catalog"


@dataclass(frozen=True)
class Product:
    """A catalog product; ``created`` and ``updated`` are ISO-8601 UTC, set by the store.

    ``price`` (in the catalog's currency, at least 0), ``brand`` and ``in_stock`` are what a
    shop filters on (`ProductFilter`); None: not known.
    """

    id: str
    category: str
    title: str = ""
    images: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)
    created: str | None = None
    updated: str | None = None
    price: float | None = None
    brand: str | None = None
    in_stock: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"product id must be a non-empty string; got {self.id!r}")
        if not isinstance(self.category, str) or not self.category:
            raise ValueError(
                f"product {self.id!r} needs a non-empty category; got {self.category!r}"
            )
        if self.price is not None and not (
            isinstance(self.price, int | float) and 0 <= self.price < math.inf
        ):
            raise ValueError(
                f"product {self.id!r}: price must be a number >= 0; got {self.price!r}"
            )
        if self.brand is not None and (not isinstance(self.brand, str) or not self.brand.strip()):
            raise ValueError(f"product {self.id!r}: brand must be a non-empty string or None")


@dataclass(frozen=True)
class Facets:
    """What products can be filtered on: brand -> product count, the number with a price and
    its range (None when none has one), the number whose stock is known."""

    brands: dict[str, int]
    priced: int
    price_min: float | None
    price_max: float | None
    stocked: int


@dataclass(frozen=True)
class ProductFilter:
    """What a shop filters products on besides the category; a field left None (or no brands)
    does not filter. A product whose value is unknown fails a filter on it."""

    min_price: float | None = None
    max_price: float | None = None
    brands: tuple[str, ...] = ()  # any of these, compared without case
    in_stock: bool | None = None  # True: in stock only; False: out of stock only

    def __post_init__(self) -> None:
        low, high = self.min_price, self.max_price
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_price {low} is above max_price {high}")

    def __bool__(self) -> bool:
        """Whether it filters anything."""
        return self != ProductFilter()

    def where(self, table: str = "p") -> tuple[str, list[Any]]:
        """The SQL condition on ``table`` (the products table's alias) and its parameters."""
        terms, params = ["1"], list[Any]()
        if self.min_price is not None:
            terms.append(f"{table}.price >= ?")
            params.append(self.min_price)
        if self.max_price is not None:
            terms.append(f"{table}.price <= ?")
            params.append(self.max_price)
        if self.brands:
            terms.append(f"{table}.brand IN ({','.join('?' * len(self.brands))})")
            params.extend(self.brands)
        if self.in_stock is not None:
            terms.append(f"{table}.in_stock = ?")
            params.append(int(self.in_stock))
        return " AND ".join(terms), params


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _row_to_product(row: tuple) -> Product:
    pid, category, title, images, attributes, created, updated, price, brand, stock = row
    return Product(
        pid,
        category,
        title,
        tuple(json.loads(images)),
        json.loads(attributes),
        created,
        updated,
        price,
        brand,
        None if stock is None else bool(stock),
    )


class ProductStore:
    """Products in one SQLite file (``":memory:"`` for a throwaway one); safe across threads.

    Tables: ``products`` (one row a product; price, brand and stock in their own indexed columns,
    for filters), ``vectors`` (vector id -> product id and view number), ``pending_vectors``
    (vector ids the vector store may hold but no product owns: reserved for a write in progress,
    or released by an update or delete; the catalog index deletes them from the vector store and
    clears them, also after a crash), ``counters`` (the next vector id), ``recommendations``
    (precomputed similar products, each with the listings collapsed into it) and ``meta`` (what
    the index keeps about itself, such as the collapse threshold of those lists). A file made
    before a column existed gains it when opened.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        try:
            self._prepare()
        except BaseException:  # no SQLite file, a full disk: nothing is left open
            self._db.close()
            raise

    def _prepare(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not only kill
        self._db.execute("PRAGMA foreign_keys=ON")
        # reads through a memory map, not a read() call a page: a stored list joins 20 random
        # product rows (/similar at 10M products: 1,420 -> 1,746 requests/s, docs/SCALE.md)
        self._db.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        self._db.executescript(_SCHEMA)
        for table, columns in _ADDED.items():
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for name, declaration in columns:
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
        self._db.executescript(_INDEXES)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    # ---- products --------------------------------------------------------------------------

    def upsert(self, product: Product, vector_ids: np.ndarray | None = None) -> np.ndarray:
        """Insert or replace a product; with ``vector_ids`` (one per view) replace its vectors.

        Returns the vector ids this replaced; they move to ``pending_vectors`` in the same
        transaction, and the new ids leave it.
        """
        return self.upsert_many([(product, vector_ids)])

    def upsert_many(self, items: Iterable[tuple[Product, np.ndarray | None]]) -> np.ndarray:
        """``upsert`` for many products in one transaction; returns all replaced vector ids."""
        replaced = [np.empty(0, dtype=np.int64)]
        with self._tx() as cur:
            for product, vector_ids in items:
                self._put(cur, product)
                if vector_ids is not None:
                    ids = np.asarray(vector_ids, dtype=np.int64)
                    replaced.append(self._replace_vectors(cur, product.id, ids))
        return np.concatenate(replaced)

    def _put(self, cur: sqlite3.Cursor, product: Product) -> None:
        row = cur.execute("SELECT created FROM products WHERE id = ?", (product.id,)).fetchone()
        now = _now()
        stamped = replace(product, created=row[0] if row else now, updated=now)
        cur.execute(
            f"INSERT INTO products ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET category = excluded.category, "
            "title = excluded.title, images = excluded.images, attributes = excluded.attributes, "
            "updated = excluded.updated, price = excluded.price, brand = excluded.brand, "
            "in_stock = excluded.in_stock",
            (
                stamped.id,
                stamped.category,
                stamped.title,
                json.dumps(list(stamped.images)),
                json.dumps(stamped.attributes),
                stamped.created,
                stamped.updated,
                stamped.price,
                stamped.brand,
                None if stamped.in_stock is None else int(stamped.in_stock),
            ),
        )

    def _replace_vectors(self, cur: sqlite3.Cursor, product_id: str, ids: np.ndarray) -> np.ndarray:
        old = [
            r[0]
            for r in cur.execute(
                "SELECT vector_id FROM vectors WHERE product_id = ? ORDER BY view", (product_id,)
            )
        ]
        cur.execute("DELETE FROM vectors WHERE product_id = ?", (product_id,))
        cur.executemany("INSERT OR IGNORE INTO pending_vectors VALUES (?)", [(i,) for i in old])
        rows = [(int(v), product_id, view) for view, v in enumerate(ids)]
        cur.executemany("INSERT INTO vectors VALUES (?, ?, ?)", rows)
        cur.executemany("DELETE FROM pending_vectors WHERE vector_id = ?", [(r[0],) for r in rows])
        return np.asarray(old, dtype=np.int64)

    def get(self, product_id: str) -> Product:
        """The product; ``UnknownProductError`` if there is none."""
        rows = self._query(f"SELECT {_COLUMNS} FROM products WHERE id = ?", (product_id,))
        if not rows:
            raise UnknownProductError(product_id)
        return _row_to_product(rows[0])

    def __contains__(self, product_id: object) -> bool:
        return bool(self._query("SELECT 1 FROM products WHERE id = ?", (product_id,)))

    def delete(self, product_id: str) -> np.ndarray:
        """Remove a product; its vector ids move to ``pending_vectors`` and are returned."""
        with self._tx() as cur:
            if not cur.execute("SELECT 1 FROM products WHERE id = ?", (product_id,)).fetchone():
                raise UnknownProductError(product_id)
            old = self._replace_vectors(cur, product_id, np.empty(0, dtype=np.int64))
            cur.execute("DELETE FROM recommendations WHERE product_id = ?", (product_id,))
            cur.execute("DELETE FROM products WHERE id = ?", (product_id,))
        return old

    def image_refs(self, prefix: str) -> set[str]:
        """Every product's image refs that start with ``prefix``, in one scan (rows whose JSON
        cannot hold the prefix are skipped without parsing)."""
        needle = json.dumps(prefix)[1:-1]  # the prefix as the stored JSON text spells it
        rows = self._query(
            "SELECT j.value FROM products p, json_each(p.images) j "
            "WHERE instr(p.images, ?) > 0 AND substr(j.value, 1, ?) = ?",
            (needle, len(prefix), prefix),
        )
        return {r[0] for r in rows}

    def list_products(
        self, category: str | None = None, limit: int = -1, offset: int = 0
    ) -> list[Product]:
        """Products ordered by id, optionally of one category, paged by ``limit``/``offset``."""
        where, params = ("WHERE category = ?", [category]) if category else ("", [])
        sql = f"SELECT {_COLUMNS} FROM products {where} ORDER BY id LIMIT ? OFFSET ?"
        return [_row_to_product(r) for r in self._query(sql, [*params, limit, offset])]

    def page(self, category: str | None = None, after: str = "", limit: int = 50) -> list[Product]:
        """Up to ``limit`` products with ids after ``after``, ordered by id, optionally of one
        category: a keyset page, one seek in the id index (or the ``(category, id)`` index) and
        ``limit`` rows read however deep the page, where OFFSET would read every row before it."""
        if category is None:
            where, params = "WHERE id > ?", [after]
        else:
            where, params = "WHERE category = ? AND id > ?", [category, after]
        sql = f"SELECT {_COLUMNS} FROM products {where} ORDER BY id LIMIT ?"
        return [_row_to_product(r) for r in self._query(sql, [*params, limit])]

    def count(self, category: str | None = None) -> int:
        """Number of products, optionally of one category."""
        if category is None:
            return int(self._query("SELECT COUNT(*) FROM products")[0][0])
        return int(
            self._query("SELECT COUNT(*) FROM products WHERE category = ?", (category,))[0][0]
        )

    def categories(self) -> list[str]:
        """The categories that hold at least one product, sorted."""
        return [r[0] for r in self._query("SELECT DISTINCT category FROM products ORDER BY 1")]

    def brands(self) -> dict[str, int]:
        """Brand -> number of products, for every brand a product has, sorted; spellings that
        differ only in the case of ASCII letters are one brand, named by one of them."""
        rows = self._query(
            "SELECT MIN(brand), COUNT(*) FROM products WHERE brand IS NOT NULL "
            "GROUP BY brand ORDER BY brand"
        )
        return {r[0]: int(r[1]) for r in rows}

    def facets(self) -> Facets:
        """What the catalog's products can be filtered on: their brands, and how many have a
        price (with its range) and a known stock flag."""
        priced, low, high, stocked = self._query(
            "SELECT COUNT(price), MIN(price), MAX(price), COUNT(in_stock) FROM products"
        )[0]
        return Facets(self.brands(), int(priced), low, high, int(stocked))

    # ---- filters ---------------------------------------------------------------------------

    def matching(self, product_ids: Iterable[str], where: ProductFilter) -> set[str]:
        """The ones of ``product_ids`` that pass the filter."""
        ids = sorted(set(product_ids))
        if not ids:
            return set()
        condition, params = where.where()
        marks = ",".join("?" * len(ids))
        sql = f"SELECT p.id FROM products p WHERE p.id IN ({marks}) AND {condition}"
        return {r[0] for r in self._query(sql, [*ids, *params])}

    def filtered_vector_ids(
        self, where: ProductFilter, category: str | None, limit: int
    ) -> np.ndarray | None:
        """The vector ids of the products that pass the filter (and are in ``category``, if
        given), or None when there are more than ``limit``: reading past it is cut short."""
        condition, params = where.where()
        if category is not None:
            condition, params = f"{condition} AND p.category = ?", [*params, category]
        rows = self._query(
            "SELECT v.vector_id FROM vectors v JOIN products p ON p.id = v.product_id "
            f"WHERE {condition} LIMIT ?",
            [*params, limit + 1],
        )
        if len(rows) > limit:
            return None
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    # ---- vector ids ------------------------------------------------------------------------

    def reserve_vector_ids(self, n: int) -> np.ndarray:
        """``n`` fresh vector ids (never reused), recorded as pending until a product owns them."""
        with self._tx() as cur:
            row = cur.execute("SELECT value FROM counters WHERE name = 'vector_id'").fetchone()
            start = row[0] if row else 0
            cur.execute("INSERT OR REPLACE INTO counters VALUES ('vector_id', ?)", (start + n,))
            cur.executemany(
                "INSERT INTO pending_vectors VALUES (?)", [(i,) for i in range(start, start + n)]
            )
        return np.arange(start, start + n, dtype=np.int64)

    def vector_ids(self, product_id: str) -> np.ndarray:
        """The product's vector ids in view order; ``UnknownProductError`` if there is none."""
        rows = self._query(
            "SELECT vector_id FROM vectors WHERE product_id = ? ORDER BY view", (product_id,)
        )
        if not rows and product_id not in self:
            raise UnknownProductError(product_id)
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    def views_of(self, product_ids: Iterable[str]) -> dict[str, list[int]]:
        """Product id -> its vector ids in view order, for the ids given that some product has."""
        ids = sorted(set(product_ids))
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._query(
            f"SELECT product_id, vector_id FROM vectors WHERE product_id IN ({marks}) "
            "ORDER BY product_id, view",
            ids,
        )
        found: dict[str, list[int]] = {}
        for pid, vid in rows:
            found.setdefault(pid, []).append(vid)
        return found

    def owners(self, vector_ids: Iterable[int]) -> dict[int, str]:
        """``vector id -> product id`` for the ids some product owns."""
        ids = sorted({int(i) for i in vector_ids if i >= 0})
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        sql = f"SELECT vector_id, product_id FROM vectors WHERE vector_id IN ({marks})"
        return {r[0]: r[1] for r in self._query(sql, ids)}

    def vector_table(self) -> list[tuple[int, str, str]]:
        """Every ``(vector id, product id, category)``, ordered by product and view."""
        return self._query(
            "SELECT v.vector_id, v.product_id, p.category FROM vectors v "
            "JOIN products p ON p.id = v.product_id ORDER BY v.product_id, v.view"
        )

    def vector_count(self) -> int:
        """Number of vectors that products own."""
        return int(self._query("SELECT COUNT(*) FROM vectors")[0][0])

    def pending_vector_ids(self) -> np.ndarray:
        """Vector ids no product owns that the vector store may still hold."""
        rows = self._query("SELECT vector_id FROM pending_vectors ORDER BY 1")
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    def clear_pending(self, vector_ids: np.ndarray) -> None:
        """Forget pending ids once the vector store no longer holds them."""
        with self._tx() as cur:
            cur.executemany(
                "DELETE FROM pending_vectors WHERE vector_id = ?", [(int(i),) for i in vector_ids]
            )

    # ---- recommendations -------------------------------------------------------------------

    def put_recommendations(self, lists: dict[str, Recommended]) -> None:
        """Replace the stored similar-product lists of the given products.

        A list's results are stored at ranks 0, 1, ... with the products collapsed into each
        (its near-duplicate listings); the product's own other listings, left out of its list,
        at the negative ranks before them, in their order.
        """
        with self._tx() as cur:
            for pid, (items, own) in lists.items():
                cur.execute("DELETE FROM recommendations WHERE product_id = ?", (pid,))
                rows = [
                    (pid, rank, other, float(score), json.dumps(list(duplicates)))
                    for rank, (other, score, duplicates) in enumerate(items)
                ]
                rows += [
                    (pid, n - len(own), other, float(score), "[]")
                    for n, (other, score) in enumerate(own)
                ]
                cur.executemany("INSERT INTO recommendations VALUES (?, ?, ?, ?, ?)", rows)

    def recommendations(self, product_id: str) -> list[tuple[str, float]]:
        """The stored list of ``(product id, score)``, skipping products deleted since."""
        rows = self._query(
            "SELECT r.other_id, r.score FROM recommendations r "
            "JOIN products p ON p.id = r.other_id WHERE r.product_id = ? AND r.rank >= 0 "
            "ORDER BY r.rank",
            (product_id,),
        )
        return [(r[0], float(r[1])) for r in rows]

    def recommended_rows(self, product_id: str) -> tuple[list[tuple], list[str]] | None:
        """The stored list as rows ``(id, category, title, image count, score, price, brand,
        in stock, duplicates)`` and the product's own other listings; products deleted since
        are skipped. None when a deletion changed what the list would be (a deleted result
        had listings collapsed into it, or a collapsed listing was deleted): ask live.

        One indexed query: the fast path of a "more like this" request.
        """
        rows = self._query(
            "SELECT r.rank, r.other_id, p.category, p.title, json_array_length(p.images), "
            "r.score, p.price, p.brand, p.in_stock, r.duplicates, r.duplicates != '[]' AND "
            "EXISTS (SELECT 1 FROM json_each(r.duplicates) j WHERE NOT EXISTS "
            "(SELECT 1 FROM products q WHERE q.id = j.value)) "
            "FROM recommendations r LEFT JOIN products p ON p.id = r.other_id "
            "WHERE r.product_id = ? ORDER BY r.rank",
            (product_id,),
        )
        found, own = [], []
        for rank, other, category, title, views, score, price, brand, stock, dups, gone in rows:
            if gone or (category is None and dups != "[]"):
                return None
            if category is None:
                continue
            if rank < 0:
                own.append(other)
                continue
            stocked = None if stock is None else bool(stock)
            duplicates = () if dups == "[]" else tuple(json.loads(dups))
            found.append((other, category, title, views, score, price, brand, stocked, duplicates))
        return found, own

    def has_recommendations(self) -> bool:
        """Whether any product has a stored list."""
        return bool(self._query("SELECT 1 FROM recommendations LIMIT 1"))

    def get_meta(self, name: str) -> str | None:
        """A value the index keeps about itself (``set_meta``), or None."""
        rows = self._query("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def set_meta(self, name: str, value: str) -> None:
        with self._tx() as cur:
            cur.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
