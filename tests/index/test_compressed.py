"""The compressed partition (IVF codes + float16 rows) against a naive exact search."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from visnet.index import EmbeddedStore, StoreSettings, l2_normalise
from visnet.index.compressed import CompressedParams, CompressedPartition

DIM = 16


CENTRES = np.random.default_rng(99).standard_normal((40, DIM))


def clustered(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around 40 fixed centres (queries come from the same clusters as the data)."""
    rows = CENTRES[rng.integers(0, len(CENTRES), n)]
    return l2_normalise(rows + 0.5 * rng.standard_normal((n, DIM)))


def recall_with_ties(
    x: np.ndarray, ids: np.ndarray, queries: np.ndarray, found: np.ndarray
) -> float:
    """Share of found ids scoring at least the exact k-th best (ties allowed, as faiss does)."""
    exact = queries @ x.T
    tenth = np.sort(exact, axis=1)[:, -found.shape[1]]
    position = {int(i): p for p, i in enumerate(ids)}
    hits = [
        exact[q, position[int(i)]] >= tenth[q] - 1e-4 for q in range(len(queries)) for i in found[q]
    ]
    return float(np.mean(hits))


def partition(x: np.ndarray, ids: np.ndarray, **kw: int) -> CompressedPartition:
    """A partition built at once from ``x`` under the sorted ``ids`` (as a promotion builds it)."""
    params = CompressedParams(**{"min_train": 64, "nprobe": 4, **kw})
    return CompressedPartition.build(
        ids, lambda chunk: x[np.searchsorted(ids, chunk)], DIM, params, None
    )


def test_probing_a_few_lists_and_re_ranking_matches_exact_search() -> None:
    rng = np.random.default_rng(0)
    x, ids = clustered(4000, rng), np.arange(4000, dtype=np.int64) * 5 + 3
    part = partition(x, ids)
    assert part.index is not None and part.index.ntotal == 4000
    assert faiss.extract_index_ivf(part.index).nlist >= 64  # 4 lists probed: the IVF, not a scan
    queries = l2_normalise(x[rng.choice(4000, 100)] + 0.2 * rng.standard_normal((100, DIM)))
    found, scores = part.search(queries, 10)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert recall_with_ties(x, ids, queries, found) >= 0.95
    exact = np.take_along_axis(queries @ x.T, (found - 3) // 5, axis=1)
    assert np.abs(scores - exact).max() < 2e-3  # each found id's score, from its float16 copy


def test_below_the_training_minimum_search_is_exact() -> None:
    rng = np.random.default_rng(1)
    x, ids = clustered(50, rng), np.arange(50, dtype=np.int64)
    part = CompressedPartition(DIM, CompressedParams(min_train=64))
    part.upsert(ids, x)
    assert part.index is None
    queries = clustered(10, rng)
    found = part.search(queries, 5)[0]
    expected = np.argsort(-(queries @ x.T), axis=1, kind="stable")[:, :5]
    assert recall_with_ties(x, ids, queries, found) == 1.0
    assert (found[:, 0] == expected[:, 0]).all()
    part.upsert(np.arange(50, 70), clustered(20, rng))  # crosses the minimum: trains
    assert part.index is not None and part.index.ntotal == 70 and part.trained_at == 70


def test_training_is_seeded() -> None:
    rng = np.random.default_rng(2)
    x, ids = clustered(2000, rng), np.arange(2000, dtype=np.int64)
    queries = clustered(30, rng)
    a, b = partition(x, ids), partition(x, ids)
    np.testing.assert_array_equal(a.search(queries, 10)[0], b.search(queries, 10)[0])
    other = partition(x, ids, seed=7)
    assert not np.array_equal(
        faiss_centroids(a), faiss_centroids(other)
    )  # the seed, not luck, fixed them


def faiss_centroids(part: CompressedPartition) -> np.ndarray:
    assert part.index is not None
    quantizer = faiss.extract_index_ivf(part.index).quantizer
    return faiss.rev_swig_ptr(faiss.downcast_index(quantizer).get_xb(), quantizer.ntotal * DIM)


def test_deletes_and_updates_leave_the_ivf_and_the_next_query() -> None:
    rng = np.random.default_rng(3)
    x, ids = clustered(1000, rng), np.arange(1000, dtype=np.int64)
    part = partition(x, ids)
    part.delete(np.arange(0, 1000, 2))
    assert part.count() == 500 and part.index is not None and part.index.ntotal == 500
    found = part.search(x[:20], 10)[0]
    assert not np.isin(found, np.arange(0, 1000, 2)).any()
    moved = clustered(1, rng)
    part.upsert(np.array([1]), moved)
    assert part.search(moved, 1)[0][0, 0] == 1 and part.count() == 500
    assert part.index.ntotal == 500 and part.rows.n == 1001  # rows are appended, never rewritten
    np.testing.assert_allclose(part.get(np.array([1])), moved, atol=1e-3)


def test_a_partition_with_few_live_vectors_left_still_gives_k() -> None:
    rng = np.random.default_rng(4)
    x, ids = clustered(2000, rng), np.arange(2000, dtype=np.int64)
    part = partition(x, ids, nprobe=1)
    part.delete(np.arange(12, 2000))
    found = part.search(x[:3], 12)[0]
    assert all(sorted(row.tolist()) == list(range(12)) for row in found)
    assert part.search(x[:1], 20)[0][0, 12:].tolist() == [-1] * 8


def test_the_store_promotes_exact_to_hnsw_to_compressed_by_size() -> None:
    rng = np.random.default_rng(5)
    settings = StoreSettings(
        exact_threshold=100, compressed_threshold=300, compressed=CompressedParams(min_train=64)
    )
    store = EmbeddedStore(DIM, settings=settings)
    x = clustered(500, rng)
    kinds = []
    for start in (0, 80, 160, 240, 320):
        store.upsert(np.arange(start, start + 80), x[start : start + 80], ["a"] * 80)
        kinds.append(store.kinds()["a"])
    assert kinds == ["exact", "hnsw", "hnsw", "compressed", "compressed"]
    assert store.search(x[:400], 1)[0][:, 0].tolist() == list(range(400))


def test_a_growing_partition_is_retrained_and_dead_rows_are_dropped(tmp_path) -> None:
    rng = np.random.default_rng(6)
    settings = StoreSettings(kind="compressed", compressed=CompressedParams(min_train=64))
    store = EmbeddedStore(DIM, tmp_path / "s", settings)
    x = clustered(3000, rng)
    store.upsert(np.arange(100), x[:100], ["a"] * 100)
    first = store._parts["a"]
    assert isinstance(first, CompressedPartition) and first.trained_at == 100
    store.upsert(np.arange(100, 3000), x[100:], ["a"] * 2900)  # 30x: outgrew its lists
    grown = store._parts["a"]
    assert isinstance(grown, CompressedPartition) and grown.trained_at == 3000
    for _ in range(3):  # rewrite every vector: the row file becomes mostly dead rows
        store.upsert(np.arange(3000), x, ["a"] * 3000)
    compacted = store._parts["a"]
    assert isinstance(compacted, CompressedPartition) and compacted.rows.n < 2 * 3000 + 64
    assert store.search(x[:50], 1)[0][:, 0].tolist() == list(range(50))
    store.snapshot()
    assert list((tmp_path / "s" / "rows").iterdir()) == compacted.files()  # old files removed
    store.close()


def test_a_snapshot_shares_the_row_file_and_reopening_cuts_back_to_it(tmp_path) -> None:
    rng = np.random.default_rng(7)
    settings = StoreSettings(kind="compressed", compressed=CompressedParams(min_train=64))
    x = clustered(600, rng)
    store = EmbeddedStore(DIM, tmp_path / "s", settings)
    store.upsert(np.arange(300), x[:300], ["a"] * 300)
    store.snapshot()
    store.upsert(np.arange(300, 600), x[300:], ["a"] * 300)  # rows past the snapshot; logged
    store.delete(np.arange(10))
    expected = store.search(x[:40], 5)
    store.close()
    reopened = EmbeddedStore(DIM, tmp_path / "s", settings)
    part = reopened._parts["a"]
    assert isinstance(part, CompressedPartition) and part.rows.n == 600 and reopened.count() == 590
    found = reopened.search(x[:40], 5)
    np.testing.assert_array_equal(found[0], expected[0])
    np.testing.assert_allclose(found[1], expected[1], atol=1e-6)
    reopened.close()


@pytest.mark.parametrize("codec", ["RaBitQ", "SQ8"])
def test_other_codecs_are_a_setting(codec: str) -> None:
    rng = np.random.default_rng(8)
    x, ids = clustered(2000, rng), np.arange(2000, dtype=np.int64)
    part = partition(x, ids, codec=codec)  # type: ignore[arg-type]
    queries = clustered(30, rng)
    assert recall_with_ties(x, ids, queries, part.search(queries, 10)[0]) >= 0.95


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="nprobe must be at least 1; got 0"):
        CompressedParams(nprobe=0)
    with pytest.raises(ValueError, match="one of auto, exact, hnsw, compressed; got 'ivf'"):
        StoreSettings(kind="ivf")  # type: ignore[arg-type]
