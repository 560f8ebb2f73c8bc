"""The Milvus store beyond the shared protocol tests (`test_index.py`): its identity, reopening,
the store's selection by settings, category names, and a failed build's collection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from visnet.index import CatalogIndex, IndexMismatchError, Product, StoreError, l2_normalise
from visnet.index.build import write_index
from visnet.index.milvus import MilvusSettings, MilvusStore
from visnet.index.stores import StoreChoice


def lite(tmp_path: Path) -> StoreChoice:
    return StoreChoice(store="milvus", milvus_uri=str(tmp_path / "lite.db"))


def new_index(path: Path, choice: StoreChoice | None = None) -> CatalogIndex:
    return CatalogIndex.create(
        path, model_fingerprint="m1", model_name="tiny", embedding_dim=8, store=choice
    )


def views(seed: int, n: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 8))


def test_an_index_reopens_from_its_manifest_and_keeps_no_token(tmp_path: Path) -> None:
    choice = StoreChoice(store="milvus", milvus_uri=str(tmp_path / "lite.db"), milvus_token="s3")
    index = new_index(tmp_path / "ix", choice)
    index.upsert(Product("a", "tops"), views(0))
    index.upsert(Product("b", "shoes"), views(1))
    saved = index.manifest["store"]
    index.close()
    assert saved["engine"] == "milvus" and saved["index_type"] == "FLAT"
    assert saved["uri"] == str((tmp_path / "lite.db").resolve()) and "s3" not in str(saved)
    assert not (tmp_path / "ix" / "vectors").exists()
    # no VISNET_STORE set: the manifest says where the vectors are
    reopened = CatalogIndex.open(tmp_path / "ix", model_fingerprint="m1", store=StoreChoice())
    assert reopened.store.count() == 4
    assert reopened.search(views(1)[0], 1)[0].product_id == "b"
    assert [h.product_id for h in reopened.search(views(0)[1], 5, category="shoes")] == ["b"]
    reopened.close()


def test_the_environment_chooses_the_store_of_a_new_index(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VISNET_STORE", "milvus")
    monkeypatch.delenv("VISNET_MILVUS_URI", raising=False)
    with pytest.raises(ValueError, match="VISNET_MILVUS_URI"):
        new_index(tmp_path / "none")
    monkeypatch.setenv("VISNET_MILVUS_URI", str(tmp_path / "lite.db"))
    monkeypatch.setenv("VISNET_MILVUS_SEARCH_PARAMS", '{"ef": 64}')
    index = new_index(tmp_path / "ix")
    assert index.manifest["store"]["engine"] == "milvus"
    assert index.manifest["store"]["search_params"] == {"ef": 64}
    index.close()
    monkeypatch.setenv("VISNET_STORE", "embedded")  # asked for explicitly: a mismatch
    with pytest.raises(IndexMismatchError, match="milvus store; VISNET_STORE asks for embedded"):
        CatalogIndex.open(tmp_path / "ix", model_fingerprint="m1")
    monkeypatch.delenv("VISNET_STORE")
    plain = new_index(tmp_path / "plain")
    assert "engine" not in plain.manifest["store"] and (tmp_path / "plain" / "vectors").is_dir()
    plain.close()


def test_a_collection_of_another_model_pca_or_dimension_is_refused(tmp_path: Path) -> None:
    settings = MilvusSettings(str(tmp_path / "lite.db"))
    made = MilvusStore.create(8, settings, "c", {"model_fingerprint": "m1"})
    made.close()
    with pytest.raises(IndexMismatchError, match="model fingerprint m1; the index expects m2"):
        MilvusStore.open(8, settings, "c", {"model_fingerprint": "m2"})
    with pytest.raises(IndexMismatchError, match="pca fingerprint none; the index expects beef"):
        MilvusStore.open(8, settings, "c", {"model_fingerprint": "m1", "pca_fingerprint": "beef"})
    with pytest.raises(IndexMismatchError, match="dim 8; the index expects 16"):
        MilvusStore.open(16, settings, "c", {"model_fingerprint": "m1"})
    with pytest.raises(StoreError, match="no collection 'other'"):
        MilvusStore.open(8, settings, "other", {})
    with pytest.raises(StoreError, match="already has a collection 'c'"):
        MilvusStore.create(8, settings, "c", {})
    store = MilvusStore.open(8, settings, "c", {"model_fingerprint": "m1"})
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.count()


def test_settings_are_checked_at_the_edge() -> None:
    with pytest.raises(ValueError, match="neither a server"):
        MilvusSettings("milvus.sqlite")
    with pytest.raises(ValueError, match="not one of FLAT, HNSW"):
        MilvusSettings("x.db", index_type="SCANN-ish")
    cluster = MilvusSettings("http://milvus:19530", search_params={"ef": 128})
    assert (cluster.kind, cluster.keyed, cluster.search) == ("HNSW", True, {"ef": 128})
    assert cluster.build == {"M": 32, "efConstruction": 200}
    assert (MilvusSettings("x.db").kind, MilvusSettings("x.db").keyed) == ("FLAT", False)


def test_category_names_with_quotes_and_backslashes_filter_exactly(tmp_path: Path) -> None:
    store = MilvusStore.create(8, MilvusSettings(str(tmp_path / "lite.db")), "c", {})
    names = ['a"b', "back\\slash", "it's", 'x\\"y', "ünï & co", 'a" or category != "']
    x = l2_normalise(views(3, 4 * len(names))).astype(np.float32)
    store.upsert(np.arange(len(x)), x, [names[i % len(names)] for i in range(len(x))])
    for number, name in enumerate(names):
        ids, _ = store.search(x[:1], 10, category=name)
        assert sorted(ids[0][ids[0] >= 0] % len(names)) == [number] * 4, name
    store.drop()


def test_a_failed_build_drops_its_collection(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VISNET_STORE", "milvus")
    monkeypatch.setenv("VISNET_MILVUS_URI", str(tmp_path / "lite.db"))

    def products():
        yield Product("a", "tops"), views(0)
        raise OSError("the catalog disk went away")

    model = {"model": "tiny", "fingerprint": "m1", "dim": 8}
    with pytest.raises(OSError, match="went away"):
        write_index(tmp_path / "ix", products(), model, None, precompute_k=0)
    name = json.loads((tmp_path / "ix" / "manifest.json").read_text())["store"]["collection"]
    probe = MilvusStore.create(8, MilvusSettings(str(tmp_path / "lite.db")), name, {})
    probe.drop()  # creating it again succeeds: the failed build's collection was dropped


def test_a_rebuild_keeps_a_milvus_index_in_milvus(tmp_path: Path, monkeypatch) -> None:
    """`visnet index rebuild` of a Milvus index writes a new collection on the same Milvus
    (no VISNET_STORE needed); with VISNET_STORE set it moves the index to that store."""
    from visnet.data.synthetic import make_synthetic_set
    from visnet.embed.registry import create_embedder
    from visnet.index.build import build_index
    from visnet.index.rebuild import rebuild_index

    for name in ("VISNET_STORE", "VISNET_MILVUS_URI"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "set"
    make_synthetic_set(root, seed=2)
    monkeypatch.setenv("VISNET_STORE", "milvus")
    monkeypatch.setenv("VISNET_MILVUS_URI", str(tmp_path / "lite.db"))
    build_index(root, create_embedder("colour-histogram"), tmp_path / "ix", dim=0, precompute_k=0)
    monkeypatch.delenv("VISNET_STORE")
    rebuild_index(tmp_path / "ix", create_embedder("texture"), precompute_k=0)
    old = json.loads((tmp_path / "ix.before-rebuild" / "manifest.json").read_text())["store"]
    new = json.loads((tmp_path / "ix" / "manifest.json").read_text())["store"]
    assert new["engine"] == "milvus" and new["collection"] != old["collection"]
    monkeypatch.setenv("VISNET_STORE", "embedded")
    rebuild_index(tmp_path / "ix", create_embedder("colour-histogram"), tmp_path / "moved", 0, 0)
    moved = json.loads((tmp_path / "moved" / "manifest.json").read_text())["store"]
    assert moved.get("engine", "embedded") == "embedded"
