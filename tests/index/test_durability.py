"""Crash safety: kill -9 mid-ingest, torn log tails, interrupted writes and snapshots."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from visnet.index import CatalogIndex, EmbeddedStore, Product, StoreSettings, l2_normalise
from visnet.index.compressed import CompressedParams
from visnet.index.partitions import ExactPartition
from visnet.index.stores import StoreChoice
from visnet.index.wal import WriteAheadLog

CHILD = """
import sys
import numpy as np
from visnet.index import CatalogIndex, Product, StoreSettings
from visnet.index.compressed import CompressedParams
path, kind = sys.argv[1], sys.argv[2]
settings = StoreSettings(kind=kind, compressed=CompressedParams(min_train=16))
index = CatalogIndex.open_or_create(path, model_fingerprint="m", model_name="tiny",
                                    embedding_dim=16, settings=settings)
for i in range(100_000):
    views = np.random.default_rng(i).standard_normal((2, 16))
    index.upsert(Product(f"p{i:05d}", "ab"[i % 2]), views)
    print(f"p{i:05d}", flush=True)  # acknowledged
    if i % 7 == 6:
        index.snapshot()
"""


def views_of(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal((2, 16))


def ingest_then_kill(path: Path, kind: str, after: int, delay: float) -> list[str]:
    """Run the ingesting child, SIGKILL it ``delay`` s after its ``after``-th ack; its acks."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), kind], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    acked = []
    deadline = time.monotonic() + 30
    while len(acked) < after and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acked.append(line.strip())
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    rest = proc.stdout.read()  # acks printed before the kill are in the pipe
    proc.wait()
    acked += [line for line in rest.splitlines() if line]
    assert len(acked) >= after, "the child did not ingest; see its stderr"
    return acked


@pytest.mark.parametrize(
    ("kind", "after", "delay"), [("exact", 12, 0.0), ("hnsw", 30, 0.003), ("compressed", 30, 0.003)]
)
def test_kill_9_mid_ingest_loses_no_acknowledged_product(tmp_path, kind, after, delay) -> None:
    path = tmp_path / "ix"
    acked = ingest_then_kill(path, kind, after, delay)
    index = CatalogIndex.open(path, model_fingerprint="m")
    assert index.manifest["store"]["kind"] == kind
    n = len(acked)
    assert acked == [f"p{i:05d}" for i in range(n)]
    held = [p.id for p in index.products.list_products()]
    # The one write in flight at the kill is either fully there (committed, not yet printed) or
    # absent; nothing else may differ.
    assert held in (acked, [*acked, f"p{n:05d}"])
    assert index.store.count() == index.products.vector_count() == 2 * len(held)
    assert index.products.pending_vector_ids().size == 0
    for i, pid in enumerate(held):
        assert index.search(views_of(i)[1], 1, category="ab"[i % 2])[0].product_id == pid
    index.close()


def fill_store(store: EmbeddedStore, rng: np.random.Generator, rounds: int) -> None:
    """Random upserts (new ids, updates, category moves) and deletes."""
    for _ in range(rounds):
        ids = rng.choice(400, 20, replace=False)
        cats = [str(c) for c in rng.choice(["a", "b", "c"], 20)]
        store.upsert(ids, l2_normalise(rng.standard_normal((20, 16))), cats)
        store.delete(rng.choice(400, 5, replace=False))


def state(store: EmbeddedStore, queries: np.ndarray) -> tuple:
    ids = np.sort(np.concatenate([p.items()[0] for p in store._parts.values()]))
    return ids, store.get(ids), store.counts(), store.search(queries, 10)[0]


def tiny_settings(kind: str) -> StoreSettings:
    """One kind; the compressed kind trains its IVF from 32 vectors, so tiny data reaches it."""
    return StoreSettings(kind=kind, compressed=CompressedParams(min_train=32))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["exact", "hnsw", "compressed"])
def test_snapshot_plus_log_replay_equals_the_live_state(tmp_path, kind: str) -> None:
    rng = np.random.default_rng(0)
    store = EmbeddedStore(16, tmp_path / "s", tiny_settings(kind))
    fill_store(store, rng, 10)
    store.snapshot()
    fill_store(store, rng, 10)  # these live only in the log
    queries = l2_normalise(rng.standard_normal((30, 16)))
    live = state(store, queries)
    store.close()
    reopened = EmbeddedStore(16, tmp_path / "s", tiny_settings(kind))
    again = state(reopened, queries)
    np.testing.assert_array_equal(again[0], live[0])
    np.testing.assert_array_equal(again[1], live[1])
    assert again[2] == live[2]
    # hnswlib reseeds its level generator on load, so graphs may differ a little after replay.
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(again[3], live[3], strict=True)])
    assert overlap == 1.0 if kind == "exact" else overlap >= 0.95
    assert set(reopened.kinds().values()) == {kind}
    reopened.close()


def test_a_torn_log_tail_is_ignored_and_cut_off(tmp_path, caplog) -> None:
    rng = np.random.default_rng(1)
    store = EmbeddedStore(16, tmp_path / "s")
    for i in range(5):
        store.upsert(np.array([i]), l2_normalise(rng.standard_normal((1, 16))), ["a"])
    store.close()
    wal = tmp_path / "s" / "wal.log"
    size = wal.stat().st_size
    os.truncate(wal, size - 7)  # the last record was cut mid-write
    with caplog.at_level("WARNING"):
        store = EmbeddedStore(16, tmp_path / "s")
    assert store.count() == 4 and "torn or corrupt tail" in caplog.text
    store.upsert(np.array([9]), l2_normalise(rng.standard_normal((1, 16))), ["a"])
    store.close()
    with open(wal, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x12\x34")  # a header with no body
    assert len(WriteAheadLog(wal).records) == 5  # the record after the cut is readable
    store = EmbeddedStore(16, tmp_path / "s")
    assert store.count() == 5 and sorted(store.get(np.array([9, 0])).shape) == [2, 16]
    store.close()


@pytest.mark.parametrize(
    ("where", "current"),
    [("partition", "snap-00000000000000000006"), ("truncate", "snap-00000000000000000012")],
)
def test_a_crash_inside_a_snapshot_leaves_a_loadable_image(
    tmp_path, monkeypatch, where: str, current: str
) -> None:
    rng = np.random.default_rng(2)
    store = EmbeddedStore(16, tmp_path / "s")
    fill_store(store, rng, 3)
    store.snapshot()
    fill_store(store, rng, 3)
    expected = store.counts()

    def crash(*args: object) -> None:
        raise OSError("disk unplugged")

    if where == "partition":  # while writing the new image, before CURRENT names it
        monkeypatch.setattr(ExactPartition, "save", crash)
    else:  # after CURRENT names it, before the log is cut: replay must skip what it holds
        monkeypatch.setattr(WriteAheadLog, "truncate", crash)
    with pytest.raises(OSError):
        store.snapshot()
    store.close()
    monkeypatch.undo()
    (tmp_path / "s" / "snap-00000000000000000999").mkdir()  # a stray the next open removes
    reopened = EmbeddedStore(16, tmp_path / "s")
    assert reopened.counts() == expected
    assert [p.name for p in (tmp_path / "s").iterdir() if p.is_dir()] == [current]
    reopened.close()


@pytest.mark.parametrize("engine", ["embedded", "milvus"])
def test_an_interrupted_catalog_write_is_repaired_on_open(tmp_path, monkeypatch, engine) -> None:
    """Both stores: the product database's pending ids repair the vector store on open."""
    store = StoreChoice(store=engine, milvus_uri=str(tmp_path / "lite.db"))  # type: ignore[arg-type]
    index = CatalogIndex.create(tmp_path / "ix", model_fingerprint="m", model_name="t",
                                embedding_dim=16, store=store)  # fmt: skip
    index.upsert(Product("a", "x"), views_of(0))

    def crash(*args: object) -> None:
        raise OSError("killed")

    monkeypatch.setattr(index.products, "upsert_many", crash)  # vectors stored, not committed
    with pytest.raises(OSError):
        index.upsert(Product("b", "x"), views_of(1))
    monkeypatch.undo()
    monkeypatch.setattr(index.store, "delete", crash)  # committed, old vectors not yet deleted
    with pytest.raises(OSError):
        index.upsert(Product("a", "x"), views_of(2))
    monkeypatch.undo()
    assert index.store.count() == 6  # a's old and new views, b's orphans
    index.close()
    reopened = CatalogIndex.open(tmp_path / "ix", model_fingerprint="m")
    assert reopened.count() == 1 and reopened.store.count() == 2
    assert reopened.products.pending_vector_ids().size == 0
    assert reopened.search(views_of(2)[0], 1)[0].product_id == "a"
    reopened.close()
