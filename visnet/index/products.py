"""The product store (SQLite, WAL journal): products, their view vectors' ids, recommendations."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Product", "ProductStore", "UnknownProductError"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    id TEXT PRIMARY KEY, category TEXT NOT NULL, title TEXT NOT NULL,
    images TEXT NOT NULL, attributes TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL);
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
    PRIMARY KEY (product_id, rank));
"""
_COLUMNS = "id, category, title, images, attributes, created, updated"


class UnknownProductError(KeyError):
    """A product id that the catalog does not hold."""

    def __init__(self, product_id: str) -> None:
        super().__init__(product_id)
        self.product_id = product_id

    def __str__(self) -> str:
        return f"unknown product id {self.product_id!r}: no such product in the catalog"


@dataclass(frozen=True)
class Product:
    """A catalog product; ``created`` and ``updated`` are ISO-8601 UTC, set by the store."""

    id: str
    category: str
    title: str = ""
    images: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)
    created: str | None = None
    updated: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"product id must be a non-empty string; got {self.id!r}")
        if not isinstance(self.category, str) or not self.category:
            raise ValueError(
                f"product {self.id!r} needs a non-empty category; got {self.category!r}"
            )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _row_to_product(row: tuple) -> Product:
    pid, category, title, images, attributes, created, updated = row
    return Product(
        pid, category, title, tuple(json.loads(images)), json.loads(attributes), created, updated
    )


class ProductStore:
    """Products in one SQLite file (``":memory:"`` for a throwaway one); safe across threads.

    Tables: ``products`` (one row a product), ``vectors`` (vector id -> product id and view number),
    ``pending_vectors`` (vector ids the vector store may hold but no product owns: reserved for a
    write in progress, or released by an update or delete; the catalog index deletes them from the
    vector store and clears them, also after a crash), ``counters`` (the next vector id) and
    ``recommendations`` (precomputed similar products).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not only kill
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

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
            f"INSERT INTO products ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO "
            "UPDATE SET category = excluded.category, title = excluded.title, "
            "images = excluded.images, attributes = excluded.attributes, "
            "updated = excluded.updated",
            (
                stamped.id,
                stamped.category,
                stamped.title,
                json.dumps(list(stamped.images)),
                json.dumps(stamped.attributes),
                stamped.created,
                stamped.updated,
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

    def put_recommendations(self, lists: dict[str, list[tuple[str, float]]]) -> None:
        """Replace the stored similar-product lists of the given products."""
        with self._tx() as cur:
            for pid, items in lists.items():
                cur.execute("DELETE FROM recommendations WHERE product_id = ?", (pid,))
                cur.executemany(
                    "INSERT INTO recommendations VALUES (?, ?, ?, ?)",
                    [(pid, rank, other, float(score)) for rank, (other, score) in enumerate(items)],
                )

    def recommendations(self, product_id: str) -> list[tuple[str, float]]:
        """The stored list of ``(product id, score)``, skipping products deleted since."""
        rows = self._query(
            "SELECT r.other_id, r.score FROM recommendations r "
            "JOIN products p ON p.id = r.other_id WHERE r.product_id = ? ORDER BY r.rank",
            (product_id,),
        )
        return [(r[0], float(r[1])) for r in rows]

    def recommended_rows(self, product_id: str) -> list[tuple[str, str, str, int, float]]:
        """The stored list as ``(id, category, title, image count, score)``, deleted ones skipped.

        One indexed query that parses no JSON: the fast path of a "more like this" request.
        """
        rows = self._query(
            "SELECT p.id, p.category, p.title, json_array_length(p.images), r.score "
            "FROM recommendations r JOIN products p ON p.id = r.other_id "
            "WHERE r.product_id = ? ORDER BY r.rank",
            (product_id,),
        )
        return [(r[0], r[1], r[2], int(r[3]), float(r[4])) for r in rows]

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
