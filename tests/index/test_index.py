"""The vector stores (embedded, and Milvus Lite) and the catalog index against naive exact
references: the store protocol's tests run on every store kind."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from visnet.index import (
    CatalogIndex,
    EmbeddedStore,
    IndexMismatchError,
    Product,
    StoreError,
    StoreSettings,
    UnknownProductError,
    VectorStore,
    catalog_index,
    fit_pca,
    l2_normalise,
)
from visnet.index.compressed import CompressedParams
from visnet.index.milvus import MilvusSettings, MilvusStore
from visnet.index.products import ProductFilter
from visnet.index.stores import StoreChoice

KINDS = ["exact", "hnsw", "compressed"]
# The store protocol's tests also run on Milvus Lite (a local file, in this process): its
# default (FLAT, exact, category filtered by expression) and a cluster's schema (HNSW, the
# category as partition key); the catalog's tests on the default
MILVUS = ["milvus", "milvus-hnsw"]
STORES = [*KINDS, *MILVUS]
EXACT = {"exact", "milvus"}
CATALOG_KINDS = [*KINDS, "milvus"]
# Tiny data must reach the compressed kind's IVF: train it from 32 vectors
TINY_COMPRESSED = CompressedParams(min_train=32)


def clustered(n: int, dim: int, rng: np.random.Generator, clusters: int = 50) -> np.ndarray:
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim))
    return l2_normalise(x)


def naive_topk(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = vectors @ query
    return ids[np.argsort(-scores, kind="stable")[:k]]


def settings(kind: str, **kw: object) -> StoreSettings:
    kw.setdefault("compressed", TINY_COMPRESSED)
    return StoreSettings(kind=kind, **kw)  # type: ignore[arg-type]


def store(kind: str, dim: int = 16, **kw: object) -> EmbeddedStore:
    return EmbeddedStore(dim, settings=settings(kind, **kw))


@pytest.fixture(scope="module")
def lite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One Milvus Lite database for the module; each store gets its own collection."""
    return str(tmp_path_factory.mktemp("milvus") / "lite.db")


def milvus_settings(uri: str, kind: str) -> MilvusSettings:
    if kind == "milvus-hnsw":
        return MilvusSettings(uri, index_type="HNSW", partition_key=True)
    return MilvusSettings(uri)


@pytest.fixture
def make_store(lite_uri: str) -> Iterator[Callable[..., VectorStore]]:
    """``make_store(kind, dim=16, **settings)``: an empty store of that kind (dropped after)."""
    made: list[MilvusStore] = []

    def make(kind: str, dim: int = 16, **kw: object) -> VectorStore:
        if kind not in MILVUS:
            return store(kind, dim, **kw)
        name = f"t_{uuid.uuid4().hex[:12]}"
        made.append(MilvusStore.create(dim, milvus_settings(lite_uri, kind), name, {}))
        return made[-1]

    yield make
    for milvus in made:
        milvus.drop()


# ---- the store -------------------------------------------------------------------------------


def test_hnsw_recall_at_10_matches_exact_at_default_settings() -> None:
    rng = np.random.default_rng(0)
    x, ids = clustered(5000, 64, rng), np.arange(5000, dtype=np.int64) * 3
    s = store("hnsw", 64)
    s.upsert(ids, x, ["all"] * len(ids))
    queries = l2_normalise(x[rng.choice(5000, 200)] + 0.3 * rng.standard_normal((200, 64)))
    found, scores = s.search(queries, 10)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    exact = x @ queries.T
    hits = 0
    for q in range(len(queries)):
        tenth = np.sort(exact[:, q])[-10]  # ties allowed: any id scoring at least the 10th counts
        hits += int(np.sum(exact[found[q] // 3, q] >= tenth - 1e-6))
    assert hits / (10 * len(queries)) >= 0.95


def test_auto_kind_switches_to_hnsw_past_the_threshold() -> None:
    rng = np.random.default_rng(1)
    s = store("auto", exact_threshold=100)
    s.upsert(np.arange(80), clustered(80, 16, rng), ["a"] * 80)
    assert s.kinds() == {"a": "exact"}
    x = clustered(60, 16, rng)
    s.upsert(np.arange(80, 140), x, ["a"] * 60)
    assert s.kinds() == {"a": "hnsw"} and s.count() == 140
    assert s.search(x[5], 1)[0][0, 0] == 85


@pytest.mark.parametrize("kind", STORES)
def test_upsert_and_delete_are_visible_at_once(kind: str, make_store) -> None:
    rng = np.random.default_rng(2)
    s = make_store(kind)
    x = clustered(50, 16, rng)
    s.upsert(np.arange(50), x, ["a"] * 50)
    new = clustered(1, 16, rng)
    s.upsert(np.array([1000]), new, ["a"])
    assert s.search(new, 1)[0][0, 0] == 1000 and s.count() == 51
    s.delete(np.array([1000, 424242]))  # unknown ids are ignored
    assert 1000 not in s.search(new, 10)[0] and s.count() == 50
    with pytest.raises(KeyError, match="1000"):
        s.get(np.array([1000]))


@pytest.mark.parametrize("kind", STORES)
def test_update_replaces_the_vector_and_can_move_category(kind: str, make_store) -> None:
    rng = np.random.default_rng(3)
    s = make_store(kind)
    x = clustered(40, 16, rng)
    s.upsert(np.arange(40), x, ["a"] * 40)
    moved = clustered(1, 16, rng)
    s.upsert(np.array([7]), moved, ["b"])
    assert s.count() == 40
    atol = 1e-3 if kind == "compressed" else 1e-6  # compressed keeps float16 copies
    np.testing.assert_allclose(s.get(np.array([7])), moved, atol=atol)
    assert 7 not in s.search(x[7], 40, category="a")[0]
    ids, scores = s.search(moved, 1, category="b")
    assert ids[0, 0] == 7 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kind", STORES)
def test_category_filter_and_global_search_match_naive(kind: str, make_store) -> None:
    rng = np.random.default_rng(4)
    x, ids = clustered(600, 16, rng), np.arange(600, dtype=np.int64) + 10
    cats = np.array(["tops", "shoes", "bags"])[rng.integers(0, 3, 600)]
    s = make_store(kind)
    s.upsert(ids, x, cats.tolist())
    queries = clustered(20, 16, rng)
    for category in ["tops", "shoes", None]:
        rows = np.ones(600, bool) if category is None else cats == category
        found = s.search(queries, 10, category)[0]
        for q, query in enumerate(queries):
            expected = naive_topk(x[rows], ids[rows], query, 10)
            overlap = len(set(found[q]) & set(expected)) / 10
            assert overlap == 1.0 if kind in EXACT else overlap >= 0.9
            assert set(found[q]) <= set(ids[rows])


@pytest.mark.parametrize("kind", STORES)
def test_a_filter_most_products_fail_still_gives_k_results_all_in_it(kind: str, make_store) -> None:
    # 3,000 products, 1% of them in the filtered category, and queries near the other 99%: a
    # post-filtered global search would come back short; every result must be in the filter
    rng = np.random.default_rng(7)
    x, ids = clustered(3000, 16, rng), np.arange(3000, dtype=np.int64)
    cats = np.where(rng.random(3000) < 0.01, "rare", "common")
    rare = ids[cats == "rare"]
    assert 10 < len(rare) < 60
    s = make_store(kind)
    s.upsert(ids, x, cats.tolist())
    queries = x[cats == "common"][:20]
    found, _scores = s.search(queries, 10, "rare")
    for q, query in enumerate(queries):
        assert len(found[q]) == 10 and set(found[q].tolist()) <= set(rare.tolist())
        expected = naive_topk(x[cats == "rare"], rare, query, 10)
        assert len(set(found[q].tolist()) & set(expected)) >= 9


@pytest.mark.parametrize("kind", ["auto", *MILVUS])
def test_empty_store_and_unknown_category_give_padding(kind: str, make_store) -> None:
    s = make_store(kind)
    ids, scores = s.search(np.ones((2, 16), np.float32) / 4, 5)
    assert ids.shape == (2, 5) and (ids == -1).all() and np.isneginf(scores).all()
    s.upsert(np.array([1]), l2_normalise(np.ones((1, 16))), ["a"])
    ids, _ = s.search(np.ones(16) / 4, 3)
    assert ids.tolist() == [[1, -1, -1]]
    assert (s.search(np.ones(16) / 4, 3, category="nope")[0] == -1).all()


@pytest.mark.parametrize("kind", ["exact", *MILVUS])
def test_bad_input_is_refused_with_the_shape(kind: str, make_store) -> None:
    s = make_store(kind)
    assert isinstance(s, VectorStore)
    with pytest.raises(ValueError, match=r"\(2, 16\)"):
        s.upsert(np.arange(2), np.ones((2, 8), np.float32), ["a", "a"])
    with pytest.raises(ValueError, match="unit-norm"):
        s.upsert(np.arange(1), np.ones((1, 16), np.float32), ["a"])
    with pytest.raises(ValueError, match=r"\(m, 16\)"):
        s.search(np.ones((1, 3)), 1)
    if isinstance(s, EmbeddedStore):
        with pytest.raises(StoreError, match="in-memory"):
            s.snapshot()


@pytest.mark.parametrize("kind", ["hnsw", *MILVUS])
def test_searches_run_safely_beside_writes(kind: str, make_store) -> None:
    rng = np.random.default_rng(5)
    s = make_store(kind)
    s.upsert(np.arange(200), clustered(200, 16, rng), ["a"] * 200)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(200):
                assert (s.search(clustered(4, 16, rng), 5)[0] >= 0).all()
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(50):
        s.upsert(np.arange(200 + 4 * i, 204 + 4 * i), clustered(4, 16, rng), ["a"] * 4)
        s.delete(np.array([i]))
    for t in threads:
        t.join()
    assert not errors and s.count() == 350


def test_an_unlogged_bulk_load_lives_in_its_snapshots(tmp_path) -> None:
    """`log_writes=False` (the index build's staging store): nothing in the log, every write in
    the snapshots; reopened with the defaults, writes are logged again."""
    rng = np.random.default_rng(3)
    x = clustered(30, 8, rng)
    bulk = EmbeddedStore(8, tmp_path / "v", StoreSettings(log_writes=False))
    bulk.upsert(np.arange(10), x[:10], ["a"] * 10)
    bulk.snapshot()
    bulk.upsert(np.arange(10, 20), x[10:20], ["b"] * 10)
    bulk.delete(np.array([0]))
    bulk.snapshot()  # a second snapshot of a new state, not skipped as already written
    bulk.close()
    assert (tmp_path / "v" / "wal.log").stat().st_size == 0
    reopened = EmbeddedStore(8, tmp_path / "v")
    assert reopened.count() == 19 and reopened.counts() == {"a": 9, "b": 10}
    reopened.upsert(np.arange(20, 30), x[20:], ["a"] * 10)
    reopened.close()
    assert (tmp_path / "v" / "wal.log").stat().st_size > 0
    again = EmbeddedStore(8, tmp_path / "v")
    assert again.count() == 29
    again.close()


# ---- PCA -------------------------------------------------------------------------------------


def test_pca_reduces_normalises_and_clamps(tmp_path, caplog) -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((300, 32)) @ rng.standard_normal((32, 32))
    pca = fit_pca(x, dim=8)
    out = pca.apply(x)
    assert out.shape == (300, 8) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    pca.save(tmp_path)
    assert type(pca).load(tmp_path).fingerprint == pca.fingerprint == fit_pca(x, dim=8).fingerprint
    with caplog.at_level("WARNING"):
        assert fit_pca(x, dim=64).out_dim == 32 and fit_pca(x[:5], dim=8).out_dim == 4
    assert "using 32 dims" in caplog.text and "using 4 dims" in caplog.text


def test_pca_is_scikit_learns(tmp_path) -> None:
    """The index's PCA applies what scikit-learn fitted: its transform, rows re-normalised."""
    from sklearn.decomposition import PCA as SklearnPCA

    rng = np.random.default_rng(7)
    x = (rng.standard_normal((200, 24)) @ rng.standard_normal((24, 24))).astype(np.float32)
    pca = fit_pca(x, dim=6)
    reference = SklearnPCA(n_components=6, svd_solver="full").fit(x.astype(np.float64))
    expected = reference.transform(x.astype(np.float64))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.abs(pca.apply(x) - expected).max() < 1e-4
    assert np.array_equal(type(pca).load(pca.save(tmp_path).parent).components, pca.components)


# ---- the catalog index -----------------------------------------------------------------------


def catalog(path, dim: int = 16, pca=None, kind: str = "exact", **kw: object) -> CatalogIndex:
    """A new catalog index; kind ``milvus``: its vectors in Milvus Lite beside ``path``."""
    milvus = kind == "milvus"
    choice = StoreChoice(store="milvus", milvus_uri=str(path.parent / "lite.db"))
    return CatalogIndex.create(
        path, model_fingerprint="m1", model_name="tiny", embedding_dim=dim, pca=pca,
        settings=settings("exact" if milvus else kind),
        store=choice if milvus else StoreChoice(store="embedded"), **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def fill(index: CatalogIndex, rng: np.random.Generator, n: int = 30, views: int = 3) -> dict:
    embeddings = {}
    for i in range(n):
        embeddings[f"p{i:02d}"] = clustered(views, 16, rng, clusters=5)
        index.upsert(Product(f"p{i:02d}", ["a", "b"][i % 2]), embeddings[f"p{i:02d}"])
    return embeddings


def naive_similar(embeddings: dict, pid: str, k: int, allowed: set[str]) -> list[str]:
    best = {o: float(np.max(embeddings[pid] @ e.T)) for o, e in embeddings.items() if o in allowed}
    best.pop(pid, None)
    return [o for o, _ in sorted(best.items(), key=lambda t: (-t[1], t[0]))[:k]]


@pytest.mark.parametrize("kind", CATALOG_KINDS)
def test_similar_excludes_itself_and_collapses_views(tmp_path, kind: str) -> None:
    rng = np.random.default_rng(7)
    index = catalog(tmp_path / "ix", kind=kind)
    emb = fill(index, rng)
    same = {p for i, p in enumerate(sorted(emb)) if i % 2 == 0}
    for pid in ["p00", "p04"]:
        hits = [h.product_id for h in index.similar(pid, 5)]
        assert pid not in hits and len(set(hits)) == len(hits) == 5
        assert hits == naive_similar(emb, pid, 5, same)
        every = [h.product_id for h in index.similar(pid, 5, same_category=False)]
        assert every == naive_similar(emb, pid, 5, set(emb))
    found = index.search(emb["p03"][1], 4)
    assert found[0].product_id == "p03" and len({h.product_id for h in found}) == 4
    assert index.precompute_similar(k=5) == 30
    assert [h.product_id for h in index.recommendations("p00")] == naive_similar(
        emb, "p00", 5, same
    )
    index.close()


@pytest.mark.parametrize("kind", CATALOG_KINDS)
def test_precompute_goes_in_batches_and_resumes_after_an_interruption(
    tmp_path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    rng = np.random.default_rng(13)
    index = catalog(tmp_path / "ix", kind=kind)
    emb = fill(index, rng)
    stored: list[str] = []
    put = index.products.put_recommendations

    def dies_at_the_fourth_batch(lists: dict) -> None:
        if len(stored) == 12:
            raise OSError("killed")
        stored.extend(lists)
        put(lists)

    monkeypatch.setattr(index.products, "put_recommendations", dies_at_the_fourth_batch)
    with pytest.raises(OSError, match="killed"):
        index.precompute_similar(k=5, batch=4)
    monkeypatch.setattr(
        index.products, "put_recommendations", lambda lists: (stored.extend(lists), put(lists))
    )
    assert index.precompute_similar(k=5, batch=4) == 30
    assert sorted(stored) == sorted(emb)  # the second run did only what the first had not
    for i, pid in enumerate(sorted(emb)):
        same = {p for j, p in enumerate(sorted(emb)) if j % 2 == i % 2}
        found = [h.product_id for h in index.recommendations(pid)]
        if kind == "compressed":  # float16 copies: a near tie may swap, the scores may not
            best = {o: float(np.max(emb[pid] @ emb[o].T)) for o in same}
            ranked = [best[o] for o in naive_similar(emb, pid, 5, same)]
            np.testing.assert_allclose([best[o] for o in found], ranked, atol=2e-3)
        else:
            assert found == naive_similar(emb, pid, 5, same)
    stored.clear()
    index.precompute_similar(k=5, batch=4)  # a finished run leaves nothing to resume
    assert sorted(stored) == sorted(emb)
    # batches computed on two threads (the default) store what one thread stores
    threaded = {pid: index.recommendation_rows(pid) for pid in emb}
    index.precompute_similar(k=5, batch=4, resume=False, workers=1)
    assert {pid: index.recommendation_rows(pid) for pid in emb} == threaded
    index.close()


def test_a_short_list_asks_again_alone_and_matches_the_naive_one(tmp_path, monkeypatch) -> None:
    """A product whose first rows are eaten by one many-view neighbour asks the store again;
    its batch mates are not asked twice, and every list is the naive one."""
    from visnet.index.look_alikes import top_products

    rng = np.random.default_rng(21)
    index = catalog(tmp_path / "ix", duplicate_threshold=None)  # `crowd` is not p00's listing
    emb = fill(index, rng, n=20, views=1)
    base = emb["p00"][0]
    crowd = base + 0.01 * rng.standard_normal((20, 16))  # 20 views of one product next to p00
    emb["crowd"] = crowd / np.linalg.norm(crowd, axis=1, keepdims=True)
    index.upsert(Product("crowd", "a"), emb["crowd"])
    asked: list[int] = []
    search = index.store.search
    monkeypatch.setattr(
        index.store, "search", lambda q, k, c=None: (asked.append(len(q)), search(q, k, c))[1]
    )
    far = min(emb, key=lambda pid: float(emb[pid][0] @ base))  # its rows are not the crowd's
    found = top_products(index, [emb["p00"], emb[far]], 5, None, ["p00", far], fetch=10)
    assert asked == [2, 1]  # both rows, then p00's alone (its 10 rows were nearly all `crowd`)
    for pid, (hits, _) in zip(["p00", far], found, strict=True):
        assert [h.product_id for h in hits] == naive_similar(emb, pid, 5, set(emb))
    index.close()


@pytest.mark.parametrize("kind", ["exact", "milvus"])
def test_catalog_writes_are_visible_in_the_next_query(tmp_path, kind: str) -> None:
    rng = np.random.default_rng(8)
    index = catalog(tmp_path / "ix", kind=kind)
    emb = fill(index, rng, n=10)
    new = clustered(2, 16, rng)
    index.upsert(Product("p03", "a", title="changed"), new)  # update: new views, new category
    assert index.search(new[0], 1, category="a")[0].product_id == "p03"
    assert all(h.product_id != "p03" for h in index.search(emb["p03"][0], 10, category="b"))
    assert index.get("p03").title == "changed" and index.store.count() == 29
    index.upsert(Product("p03", "b"), None)  # metadata only: the views move with it
    assert index.search(new[0], 1, category="b")[0].product_id == "p03"
    index.delete("p03")
    assert all(h.product_id != "p03" for h in index.search(new[0], 10))
    with pytest.raises(UnknownProductError, match="'p03'"):
        index.similar("p03")
    assert index.count() == 9 and index.store.count() == 27
    index.close()


@pytest.mark.parametrize("kind", ["exact", "milvus"])
def test_empty_catalog_gives_empty_results(tmp_path, kind: str) -> None:
    index = catalog(tmp_path / "ix", kind=kind)
    assert index.search(np.ones(16), 5) == [] and index.search(np.ones(16), 5, "a") == []
    assert index.precompute_similar() == 0
    index.upsert(Product("only", "a"), np.ones((2, 16)))
    assert index.similar("only") == [] and index.recommendations("only") == []
    index.close()


def test_opening_with_another_model_or_pca_is_refused(tmp_path) -> None:
    rng = np.random.default_rng(9)
    pca = fit_pca(rng.standard_normal((100, 24)), dim=16)
    index = catalog(tmp_path / "ix", dim=24, pca=pca)
    index.upsert(Product("x", "a"), rng.standard_normal((2, 24)))
    index.close()
    with pytest.raises(IndexMismatchError, match="'tiny' \\(fingerprint m1\\); got fingerprint m2"):
        CatalogIndex.open(tmp_path / "ix", model_fingerprint="m2")
    with pytest.raises(IndexMismatchError, match=f"PCA fingerprint {pca.fingerprint}; got"):
        CatalogIndex.open(tmp_path / "ix", model_fingerprint="m1", pca_fingerprint="beef")
    reopened = CatalogIndex.open(
        tmp_path / "ix", model_fingerprint="m1", pca_fingerprint=pca.fingerprint
    )
    assert reopened.count() == 1 and reopened.manifest["vector_dim"] == 16
    with pytest.raises(StoreError, match="open elsewhere"):
        CatalogIndex.open(tmp_path / "ix", model_fingerprint="m1")
    with pytest.raises(ValueError, match=r"\(n, 24\)"):
        reopened.search(np.ones(16))
    reopened.close()


def test_hnsw_still_returns_k_after_most_vectors_are_deleted_and_reuses_slots() -> None:
    rng = np.random.default_rng(10)
    s = store("hnsw")
    x = clustered(1000, 16, rng)
    s.upsert(np.arange(1000), x, ["a"] * 1000)
    s.delete(np.arange(12, 1000))
    ids, _ = s.search(x[:3], 12)
    assert sorted(ids[0].tolist()) == list(range(12)) and s.count() == 12
    s.upsert(np.arange(2000, 3000), clustered(1000, 16, rng), ["a"] * 1000)
    assert s._parts["a"].index.get_max_elements() == 1024 and s.count() == 1012  # no growth


# ---- attribute filters -------------------------------------------------------------------------


def shop_catalog(path, kind: str, rng: np.random.Generator, n: int = 2000):
    """n products of 2 views in two categories with a price, a brand (3.5% "Rare") and a
    stock flag (1 in 10 unknown); near-duplicates are not collapsed, so ranks are plain."""
    index = catalog(path, kind=kind, duplicate_threshold=None)
    views = clustered(2 * n, 16, rng).reshape(n, 2, 16)
    prices = np.round(rng.uniform(1, 500, n), 2)
    brands = np.where(rng.random(n) < 0.035, "Rare", rng.choice(["Acme", "Bolt", "Cosy"], n))
    stock = rng.choice([True, False, None], n, p=[0.6, 0.3, 0.1])
    products = [
        Product(f"p{i:04d}", "ab"[i % 2], price=float(prices[i]), brand=str(brands[i]),
                in_stock=stock[i])
        for i in range(n)
    ]  # fmt: skip
    index.upsert_many(zip(products, views, strict=True))
    return index, products, views


def naive_filtered(products, views, query, k, keep) -> list[str]:
    best = {p.id: float(np.max(v @ query)) for p, v in zip(products, views, strict=True) if keep(p)}
    return [pid for pid, _ in sorted(best.items(), key=lambda t: (-t[1], t[0]))[:k]]


FILTERS = {
    # about 1% pass: the exact search over the vectors that pass
    "narrow": (
        ProductFilter(max_price=400.0, brands=("rare",), in_stock=True),
        lambda p: p.brand == "Rare" and p.in_stock is True and p.price <= 400,
    ),
    # most pass: the store's own search, kept to what passes
    "wide": (
        ProductFilter(min_price=20.0, in_stock=True),
        lambda p: p.in_stock is True and p.price >= 20,
    ),
}


@pytest.mark.parametrize("kind", CATALOG_KINDS)
@pytest.mark.parametrize("name", sorted(FILTERS))
def test_an_attribute_filter_gives_k_results_that_pass_it_as_a_naive_search_does(
    tmp_path, kind: str, name: str
) -> None:
    where, keep = FILTERS[name]
    rng = np.random.default_rng(11)
    index, products, views = shop_catalog(tmp_path / "ix", kind, rng)
    passing = [p for p in products if keep(p)]
    share = len(passing) / len(products)
    assert len(passing) > 10 and (share < 0.02 if name == "narrow" else share > 0.4)
    failing = [i for i, p in enumerate(products) if not keep(p)][:12]  # queries near failers
    for i in failing:
        pid, category = products[i].id, products[i].category
        for found, expected in (
            (
                index.search(views[i, 0], 10, filters=where),
                naive_filtered(products, views, views[i, 0], 10, keep),
            ),
            (
                index.similar(pid, 10, filters=where),
                naive_filtered(
                    products, views, views[i].T, 10,
                    lambda p: keep(p) and p.category == category and p.id != pid,  # noqa: B023
                ),
            ),
        ):  # fmt: skip
            ids = [h.product_id for h in found]
            assert len(ids) == len(expected) >= 5 and {p.id for p in passing} >= set(ids)
            if kind in EXACT or name == "narrow":  # a narrow filter is searched exactly
                assert ids == expected
            else:
                assert len(set(ids) & set(expected)) >= 9
    index.close()


def test_a_filter_wider_than_the_exact_limit_widens_the_search_until_k_pass(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past FILTER_EXACT_LIMIT vectors the store's search widens (4x a round) instead."""
    monkeypatch.setattr(catalog_index, "FILTER_EXACT_LIMIT", 4)
    where, keep = FILTERS["narrow"]
    rng = np.random.default_rng(12)
    index, products, views = shop_catalog(tmp_path / "ix", "exact", rng)
    for query in views[:5, 1]:
        found = [h.product_id for h in index.search(query, 10, filters=where)]
        assert found == naive_filtered(products, views, query, 10, keep)
    assert index.search(views[0, 0], 5, filters=ProductFilter(brands=("nobody",))) == []
    index.close()


def test_an_index_whose_products_fail_to_open_lets_its_vector_store_go(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An existing index: its store is closed (its lock freed, so the folder opens once the
    product file is mended); a new one: its store discarded (a new Milvus collection dropped)."""
    index = catalog(tmp_path / "ix")
    index.upsert(Product("x", "a"), np.ones((1, 16)))
    index.close()
    products = tmp_path / "ix" / "products.sqlite"
    products.rename(tmp_path / "kept.sqlite")
    products.write_bytes(b"not a SQLite file " * 300)
    with pytest.raises(sqlite3.DatabaseError):
        CatalogIndex.open(tmp_path / "ix", model_fingerprint="m1")
    products.unlink()
    (tmp_path / "kept.sqlite").rename(products)
    reopened = CatalogIndex.open(tmp_path / "ix", model_fingerprint="m1")
    assert reopened.count() == 1
    reopened.close()

    released: list[str] = []

    class NewCollection:
        def drop(self) -> None:
            released.append("drop")

        def close(self) -> None:
            released.append("close")

    def broken(path: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(catalog_index, "open_store", lambda *args: NewCollection())
    monkeypatch.setattr(catalog_index, "ProductStore", broken)
    with pytest.raises(sqlite3.OperationalError):
        catalog(tmp_path / "new")
    assert released == ["drop"]
