"""The SQLite product store: round trips, errors, vector-id bookkeeping, recommendations."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

import visnet
from visnet.feedback import event_schema
from visnet.index import Product, ProductStore, UnknownProductError
from visnet.index.products import PRODUCT_ID_PATTERN, ProductFilter
from visnet.service import schemas


@pytest.fixture
def products(tmp_path):
    store = ProductStore(tmp_path / "products.sqlite")
    yield store
    store.close()


def test_round_trip_keeps_every_field_and_survives_reopening(tmp_path) -> None:
    store = ProductStore(tmp_path / "p.sqlite")
    original = Product("sku-1", "dresses", "Red dress", ("a.jpg", "b.jpg"), {"colour": "red"})
    store.upsert(original)
    got = store.get("sku-1")
    assert (got.id, got.category, got.title, got.images, got.attributes) == (
        "sku-1", "dresses", "Red dress", ("a.jpg", "b.jpg"), {"colour": "red"},
    )  # fmt: skip
    assert got.created is not None and got.created == got.updated
    store.close()
    reopened = ProductStore(tmp_path / "p.sqlite")
    assert reopened.get("sku-1") == got
    mode = sqlite3.connect(tmp_path / "p.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    reopened.close()


def test_update_keeps_created_and_moves_updated(products: ProductStore) -> None:
    products.upsert(Product("x", "bags", "old"))
    first = products.get("x")
    products.upsert(Product("x", "shoes", "new"))
    second = products.get("x")
    assert second.title == "new" and second.category == "shoes"
    assert second.created == first.created and second.updated > first.updated
    assert products.count() == 1


def test_unknown_ids_raise_a_key_error_naming_the_id(products: ProductStore) -> None:
    for call in (products.get, products.delete, products.vector_ids):
        with pytest.raises(UnknownProductError, match="'ghost'") as info:
            call("ghost")
        assert isinstance(info.value, KeyError) and info.value.product_id == "ghost"
    with pytest.raises(ValueError, match="category"):
        Product("y", "")


def test_list_count_and_categories(products: ProductStore) -> None:
    for i in range(7):
        products.upsert(Product(f"p{i}", "tops" if i < 4 else "shoes"))
    assert [p.id for p in products.list_products()] == [f"p{i}" for i in range(7)]
    assert [p.id for p in products.list_products("shoes")] == ["p4", "p5", "p6"]
    assert [p.id for p in products.list_products(limit=2, offset=3)] == ["p3", "p4"]
    assert products.count() == 7 and products.count("tops") == 4
    assert products.categories() == ["shoes", "tops"] and "p3" in products
    products.delete("p3")
    assert products.count("tops") == 3 and "p3" not in products


def test_keyset_pages_cover_each_product_once_in_id_order(products: ProductStore) -> None:
    ids = ["a", "B", "a-1", "a.1", "a_1", "Z9", "z", "0", "a1", "A"]
    for i, pid in enumerate(ids):
        products.upsert(Product(pid, "tops" if i % 3 else "shoes"))
    for category in (None, "tops", "shoes", "hats"):
        for limit in (1, 3, 100):
            seen, after = [], ""
            while page := products.page(category, after, limit):
                assert len(page) <= limit
                seen += page
                after = page[-1].id
            want = products.list_products(category) if category != "hats" else []
            assert seen == want, (category, limit)
    assert [p.id for p in products.list_products()] == sorted(ids)  # byte order, as SQLite's
    assert products.page(None, "a", 2) == products.list_products()[5:7]


def test_keyset_pages_seek_an_index_and_never_sort(products: ProductStore) -> None:
    for category, params in ((None, ["", 5]), ("tops", ["tops", "", 5])):
        where = "id > ?" if category is None else "category = ? AND id > ?"
        sql = f"EXPLAIN QUERY PLAN SELECT * FROM products WHERE {where} ORDER BY id LIMIT ?"
        plan = " ".join(row[-1] for row in products._query(sql, params))
        assert "USING" in plan and "INDEX" in plan and "TEMP B-TREE" not in plan, plan


def test_an_old_category_index_is_replaced_on_open(tmp_path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE products (id TEXT PRIMARY KEY, category TEXT NOT NULL, "
            "title TEXT NOT NULL, images TEXT NOT NULL, attributes TEXT NOT NULL, "
            "created TEXT NOT NULL, updated TEXT NOT NULL)"
        )
        db.execute("CREATE INDEX products_category ON products (category)")
    store = ProductStore(path)
    try:
        names = {r[0] for r in store._query("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "products_category_id" in names and "products_category" not in names
    finally:
        store.close()


def test_vector_ids_are_fresh_and_pending_until_owned(products: ProductStore) -> None:
    first = products.reserve_vector_ids(3)
    assert first.tolist() == [0, 1, 2] and products.pending_vector_ids().tolist() == [0, 1, 2]
    products.upsert(Product("a", "tops"), first)
    assert products.pending_vector_ids().tolist() == []
    assert products.vector_ids("a").tolist() == [0, 1, 2]
    second = products.reserve_vector_ids(2)
    replaced = products.upsert(Product("a", "tops"), second)
    assert replaced.tolist() == [0, 1, 2] and products.pending_vector_ids().tolist() == [0, 1, 2]
    assert products.owners([3, 4, 0, -1]) == {3: "a", 4: "a"}
    products.clear_pending(replaced)
    assert products.delete("a").tolist() == [3, 4]
    assert products.pending_vector_ids().tolist() == [3, 4] and products.vector_count() == 0
    assert products.reserve_vector_ids(1).tolist() == [5]  # never reused


def test_recommendations_skip_products_deleted_since(products: ProductStore) -> None:
    for pid in "abc":
        products.upsert(Product(pid, "tops"))
    products.put_recommendations({"a": ([("b", 0.9, ()), ("c", 0.5, ())], [])})
    assert products.recommendations("a") == [("b", pytest.approx(0.9)), ("c", 0.5)]
    products.delete("b")
    assert products.recommendations("a") == [("c", 0.5)]
    assert products.vector_table() == [] and np.asarray(products.vector_ids("a")).size == 0


def test_recommended_rows_carry_what_a_result_needs_in_one_read(products: ProductStore) -> None:
    products.upsert(Product("a", "tops", "A"))
    products.upsert(Product("a2", "tops", "A again"))  # a's picture listed again
    products.upsert(Product("b", "tops", "Bee", images=("b0.jpg", "b1.jpg"), price=12.5))
    products.upsert(Product("b2", "tops", "Bee too"))
    products.upsert(Product("c", "bags", "Sea", brand="Acme", in_stock=False))
    products.put_recommendations({"a": ([("b", 0.9, ("b2",)), ("c", 0.5, ())], [("a2", 1.0)])})
    assert products.recommended_rows("a") == (
        [
            ("b", "tops", "Bee", 2, pytest.approx(0.9), 12.5, None, None, ("b2",)),
            ("c", "bags", "Sea", 0, 0.5, None, "Acme", False, ()),
        ],
        ["a2"],
    )
    assert products.recommendations("a") == [("b", pytest.approx(0.9)), ("c", 0.5)]
    products.upsert(Product("b", "tops", "Bee, renamed"))  # a change shows at once
    products.delete("c")
    products.delete("a2")
    assert products.recommended_rows("a") == (
        [("b", "tops", "Bee, renamed", 0, pytest.approx(0.9), None, None, None, ("b2",))],
        [],
    )
    assert products.recommended_rows("nobody") == ([], [])
    products.delete("b2")  # a listing collapsed into b is gone: the list is no longer right
    assert products.recommended_rows("a") is None
    products.put_recommendations({"a": ([("b", 0.9, ("b3",))], [])})
    products.delete("b")  # b had listings collapsed into it: one of them would take its place
    assert products.recommended_rows("a") is None


def test_filters_select_what_a_naive_check_does(products: ProductStore) -> None:
    rng = np.random.default_rng(0)
    brands = [None, "Acme", "acme", "Bolt", "Émile"]
    for i in range(200):
        price = None if i % 9 == 0 else float(rng.integers(0, 100))
        stock = [True, False, None][i % 3]
        product = Product(
            f"p{i:03d}", "ab"[i % 2], price=price, brand=brands[i % 5], in_stock=stock
        )
        products.upsert(product, products.reserve_vector_ids(2))
    every = products.list_products()

    def naive(where: ProductFilter, p: Product) -> bool:
        low, high, wanted = where.min_price, where.max_price, {b.lower() for b in where.brands}
        return (
            (low is None or (p.price is not None and p.price >= low))
            and (high is None or (p.price is not None and p.price <= high))
            and (not wanted or (p.brand or "").lower() in wanted)
            and (where.in_stock is None or p.in_stock is where.in_stock)
        )

    for where in (
        ProductFilter(min_price=20, max_price=30),
        ProductFilter(max_price=50.5, in_stock=False),
        ProductFilter(brands=("ACME", "Émile")),
        ProductFilter(min_price=40, brands=("bolt",), in_stock=True),
    ):
        expected = {p.id for p in every if naive(where, p)}
        assert expected and products.matching([p.id for p in every], where) == expected
        ids = products.filtered_vector_ids(where, None, limit=1000)
        assert {products.owners(ids.tolist())[v] for v in ids.tolist()} == expected
        assert len(ids) == 2 * len(expected)
        in_b = products.filtered_vector_ids(where, "b", limit=1000)
        assert {products.owners(in_b.tolist())[v] for v in in_b.tolist()} == {
            p for p in expected if int(p[1:]) % 2
        }
        assert products.filtered_vector_ids(where, None, limit=len(ids) - 1) is None
    assert not ProductFilter() and ProductFilter(in_stock=False)
    assert products.brands() == {"Acme": 80, "Bolt": 40, "Émile": 40}
    facets, prices = products.facets(), [p.price for p in every if p.price is not None]
    assert facets.brands == products.brands() and facets.priced == len(prices)
    assert (facets.price_min, facets.price_max) == (min(prices), max(prices))
    assert facets.stocked == sum(p.in_stock is not None for p in every)
    with pytest.raises(ValueError, match="above max_price"):
        ProductFilter(min_price=3, max_price=2)
    with pytest.raises(ValueError, match="price"):
        Product("x", "a", price=-1.0)


def test_an_older_file_gains_the_new_columns_and_keeps_its_rows(tmp_path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE products (id TEXT PRIMARY KEY, category TEXT NOT NULL, "
            "title TEXT NOT NULL, images TEXT NOT NULL, attributes TEXT NOT NULL, "
            "created TEXT NOT NULL, updated TEXT NOT NULL);"
            "CREATE TABLE recommendations (product_id TEXT NOT NULL, rank INTEGER NOT NULL, "
            "other_id TEXT NOT NULL, score REAL NOT NULL, PRIMARY KEY (product_id, rank));"
            "INSERT INTO products VALUES ('a', 'tops', 'A', '[]', '{}', 't', 't');"
            "INSERT INTO products VALUES ('b', 'tops', 'B', '[]', '{}', 't', 't');"
            "INSERT INTO recommendations VALUES ('a', 0, 'b', 0.5);"
        )
    store = ProductStore(path)
    try:
        assert store.get("a").price is None and store.get("a").in_stock is None
        assert store.recommended_rows("a") == (
            [("b", "tops", "B", 0, 0.5, None, None, None, ())],
            [],
        )
        assert store.get_meta("duplicate_threshold") is None
        # the old table keeps its rowid (new files key it alone): lists still go in and out
        store.put_recommendations({"b": ([("a", 0.25, ["c"])], [])})
        assert store.recommendations("b") == [("a", 0.25)]
        store.upsert(Product("a", "tops", "A", price=3.0, brand="Acme", in_stock=True))
        got = store.get("a")
        assert (got.price, got.brand, got.in_stock) == (3.0, "Acme", True)
    finally:
        store.close()


def test_image_refs_finds_every_ref_with_a_prefix(products: ProductStore) -> None:
    products.upsert(Product("a", "c", images=("index:uploads/a/1.jpg", "photos/1.jpg")))
    products.upsert(Product("b", "c", images=("index:uploads/b/2.jpg", "index:uploads/a/3.jpg")))
    products.upsert(Product("c", "c", images=("photos/index:uploads/x.jpg",)))  # not a prefix
    assert products.image_refs("index:uploads/") == {
        "index:uploads/a/1.jpg", "index:uploads/b/2.jpg", "index:uploads/a/3.jpg",
    }  # fmt: skip
    assert products.image_refs("nothing/") == set()


def test_the_product_id_rule_has_one_home_that_the_api_and_the_events_use() -> None:
    """One pattern, in `visnet.index.products`: the API's paths and the shopper events' product
    fields take and refuse the same ids, and no module spells the rule again."""
    assert schemas.PRODUCT_ID_PATTERN is PRODUCT_ID_PATTERN
    event_rule = TypeAdapter(event_schema.ProductId)
    for product_id in ["1", "sku_9-a.b", "A" * 64, ".hidden", "..", "a/b", "A" * 65, ""]:
        valid = re.fullmatch(PRODUCT_ID_PATTERN, product_id) is not None
        try:
            event_rule.validate_python(product_id)
            taken = True
        except ValidationError:
            taken = False
        assert taken == valid, product_id
    package = Path(visnet.__file__).parent
    spelled = [p for p in package.rglob("*.py") if PRODUCT_ID_PATTERN in p.read_text("utf-8")]
    assert spelled == [package / "index" / "products.py"]
