"""Near-duplicate listings: one picture under several ids shows once; colour variants stay apart."""

from __future__ import annotations

import numpy as np
import pytest

from visnet.index import CatalogIndex, Product, StoreSettings, l2_normalise
from visnet.index.compressed import CompressedParams
from visnet.index.duplicates import DUPLICATE_THRESHOLD, collapse, pairwise_similarity

DIM = 16
COPIES = ("shop-a", "shop-b", "shop-c")  # three ids listing one picture


def catalog(path, kind: str = "exact", threshold: float | None = DUPLICATE_THRESHOLD):
    return CatalogIndex.create(
        path, model_fingerprint="m1", model_name="tiny", embedding_dim=DIM,
        settings=StoreSettings(kind=kind, compressed=CompressedParams(min_train=32)),  # type: ignore[arg-type]
        duplicate_threshold=threshold,
    )  # fmt: skip


def near(vector: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly ``cosine`` from the unit ``vector``."""
    other = rng.standard_normal(len(vector))
    other -= (other @ vector) * vector
    other /= np.linalg.norm(other)
    return cosine * vector + np.sqrt(1 - cosine**2) * other


@pytest.fixture
def shop(tmp_path):
    """A catalog where three ids list one picture (two views, identical), two colour variants of
    it sit at cosine 0.9 and 0.93 view for view, and 20 other products."""
    rng = np.random.default_rng(0)
    picture = l2_normalise(rng.standard_normal((2, DIM)))
    index = catalog(tmp_path / "ix")
    for pid in COPIES:
        index.upsert(Product(pid, "hats"), picture)
    for pid, cosine in (("lime", 0.9), ("azure", 0.93)):
        index.upsert(Product(pid, "hats"), np.stack([near(v, cosine, rng) for v in picture]))
    for i, vector in enumerate(l2_normalise(rng.standard_normal((20, DIM)))):
        index.upsert(Product(f"p{i:02d}", "hats"), vector[None])
    yield index, picture, rng
    index.close()


def test_one_picture_under_three_ids_shows_once_with_the_others_listed(shop) -> None:
    index, picture, _ = shop
    hits = index.search(picture[0], k=5)
    ids = [h.product_id for h in hits]
    assert ids[0] == "shop-a" and hits[0].duplicates == ("shop-b", "shop-c")
    assert not {"shop-b", "shop-c"} & set(ids) and len(ids) == 5  # k results all the same
    assert {"lime", "azure"} <= set(ids)  # colour variants are other products
    variant = index.look_alikes("lime", k=5)
    assert [h.product_id for h in variant.hits][:2] == ["shop-a", "azure"]
    assert variant.hits[0].duplicates == ("shop-b", "shop-c") and variant.duplicates == ()
    own = index.look_alikes("shop-b", k=4)  # a listing's look-alikes leave its copies out
    assert own.duplicates == ("shop-a", "shop-c")
    assert [h.product_id for h in own.hits][:2] == ["azure", "lime"]
    assert not set(own.duplicates) & {h.product_id for h in own.hits}


def test_a_live_upsert_is_collapsed_by_the_next_query(shop) -> None:
    index, picture, rng = shop
    index.upsert(Product("shop-d", "hats"), np.stack([near(picture[1], 0.99, rng)]))  # one view
    assert index.search(picture[1], k=3)[0].duplicates == ("shop-b", "shop-c", "shop-d")
    index.delete("shop-a")
    top = index.search(picture[1], k=3)[0]
    assert (top.product_id, top.duplicates) == ("shop-b", ("shop-c", "shop-d"))


def test_precomputed_lists_equal_live_ones_and_go_stale_when_a_listing_is_deleted(shop) -> None:
    index, _, _ = shop
    assert index.recommendations_current()  # none stored yet
    index.precompute_similar(k=4)
    assert index.recommendations_current()
    for pid in ("lime", "shop-b", "p03"):
        live = index.look_alikes(pid, k=4)
        rows, own = index.recommendation_rows(pid)
        assert [(r[0], r[4], r[8]) for r in rows] == [
            (h.product_id, pytest.approx(h.score), h.duplicates) for h in live.hits
        ]
        assert tuple(own) == live.duplicates
    plain = next(
        f"p{i:02d}"
        for i in range(20)
        if all("shop-c" not in h.duplicates for h in index.look_alikes(f"p{i:02d}", k=4).hits)
    )
    index.delete("shop-c")  # listed under shop-a in lime's list: that stored list is stale
    assert index.recommendation_rows("lime") is None
    assert index.recommendation_rows(plain) is not None
    assert index.recommendation_rows("shop-b")[1] == ["shop-a"]  # its own deleted copy: left out
    index.duplicate_threshold = 0.95  # another threshold: lists made with the old one are not
    assert not index.recommendations_current()


def test_a_part_done_precomputation_serves_its_lists(shop, monkeypatch) -> None:
    index, _, _ = shop
    put = index.products.put_recommendations
    calls = []

    def dies_after_one_batch(lists: dict) -> None:
        if calls:
            raise OSError("killed")
        calls.append(len(lists))
        put(lists)

    monkeypatch.setattr(index.products, "put_recommendations", dies_after_one_batch)
    with pytest.raises(OSError, match="killed"):
        index.precompute_similar(k=4, batch=8, workers=1)
    assert calls == [8] and index.recommendations_current()  # its own threshold: served
    index.duplicate_threshold = 0.95
    assert not index.recommendations_current()  # made with another threshold: not served
    index.duplicate_threshold = 0.97
    monkeypatch.setattr(index.products, "put_recommendations", put)
    index.precompute_similar(k=4)  # finished
    index.duplicate_threshold = 0.95
    monkeypatch.setattr(index.products, "put_recommendations", dies_after_one_batch)
    with pytest.raises(OSError, match="killed"):
        index.precompute_similar(k=4, batch=8, workers=1)
    assert not index.recommendations_current()  # a mix of two thresholds until it finishes


def test_no_threshold_shows_every_listing(tmp_path) -> None:
    rng = np.random.default_rng(1)
    index = catalog(tmp_path / "ix", threshold=None)
    picture = l2_normalise(rng.standard_normal((1, DIM)))
    for pid in COPIES:
        index.upsert(Product(pid, "hats"), picture)
    assert [(h.product_id, h.duplicates) for h in index.search(picture[0], k=3)] == [
        ("shop-a", ()), ("shop-b", ()), ("shop-c", ()),
    ]  # fmt: skip
    index.close()


@pytest.mark.parametrize("kind", ["exact", "hnsw", "compressed"])
def test_k_groups_come_back_when_most_candidates_are_copies(tmp_path, kind: str) -> None:
    """Ten copies of each of 12 pictures: the first fetch is mostly copies; k=8 still gives 8
    results, each with its 9 other listings."""
    rng = np.random.default_rng(2)
    index = catalog(tmp_path / "ix", kind=kind)
    pictures = l2_normalise(rng.standard_normal((12, DIM)))
    for p, vector in enumerate(pictures):
        index.upsert_many((Product(f"x{p:02d}-{c}", "a"), vector[None]) for c in range(10))
    hits = index.search(pictures[0], k=8)
    assert len(hits) == 8 and all(len(h.duplicates) == 9 for h in hits)
    assert hits[0].product_id == "x00-0" and hits[0].duplicates[0] == "x00-1"
    index.close()


@pytest.mark.parametrize("views", [(1, 3, 2, 4), (1, 1, 1, 1), (2,), (1,)])
def test_pairwise_similarity_is_the_best_cosine_over_pairs_of_views(views) -> None:
    """Against a naive double loop, with several views a product, one view each (the path
    without reductions), and a single product on either side."""
    rng = np.random.default_rng(3)
    products = [l2_normalise(rng.standard_normal((n, 8))) for n in views]
    others = [l2_normalise(rng.standard_normal((n, 8))) for n in (2, 1, 1)]
    for left, right in ((products, others), (others, products), (products, products[:1])):
        found = pairwise_similarity(left, right)
        assert found.shape == (len(left), len(right))
        for i, a in enumerate(left):
            for j, b in enumerate(right):
                naive = max(float(u @ v) for u in a for v in b)
                assert found[i, j] == pytest.approx(naive, abs=1e-6)
    assert pairwise_similarity(products, []).shape == (len(products), 0)


def test_collapse_joins_the_best_ranked_alike_result_and_stops_new_ones_at_k() -> None:
    base = np.eye(4, dtype=np.float32)
    views = {"a": base[:1], "a2": base[:1], "b": base[1:2], "c": base[2:3], "c2": base[2:3]}
    ranked = [("a", 0.9), ("b", 0.8), ("a2", 0.7), ("c", 0.6), ("c2", 0.5)]
    groups, own = collapse(ranked, views, 0.97, k=2)
    assert [(g.product_id, g.duplicates) for g in groups] == [("a", ["a2"]), ("b", [])] and not own
    groups, own = collapse(ranked, views, 0.97, k=3, seed=base[1:2])  # b's look-alikes
    assert [(g.product_id, g.duplicates) for g in groups] == [("a", ["a2"]), ("c", ["c2"])]
    assert own == ["b"]
