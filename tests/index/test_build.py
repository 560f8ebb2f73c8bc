"""Building an index from a catalog: complete or absent, never half-written."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from visnet.data.street2shop import read_set, write_set
from visnet.data.synthetic import make_synthetic_set
from visnet.embed.job import run_embed_job
from visnet.embed.registry import create_embedder
from visnet.index.build import build_index
from visnet.index.catalog_index import CatalogIndex


def test_build_ingests_every_product_and_precomputes(tmp_path: Path) -> None:
    root = tmp_path / "set"
    make_synthetic_set(root, seed=2)
    embedder = create_embedder("colour-histogram")
    summary = build_index(root, embedder, tmp_path / "index", dim=8)
    data = read_set(root)
    assert summary["products"] == len(data.products())
    assert summary["vectors"] == len(data.shop)
    assert summary["dim"] == 8
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    index = CatalogIndex.open(tmp_path / "index", model_fingerprint=manifest["model_fingerprint"])
    try:
        product = str(data.shop[0].product)
        hits = index.similar(product, k=3)
        assert hits and product not in {h.product_id for h in hits}
        assert index.recommendations(product)
    finally:
        index.close()
    assert not (tmp_path / "index.partial").exists()


def test_an_empty_catalog_leaves_no_index(tmp_path: Path) -> None:
    root = tmp_path / "set"
    make_synthetic_set(root, seed=2)
    for photo in (root / "photos").iterdir():
        photo.write_bytes(b"")  # every image unreadable
    data = read_set(root)
    write_set(data)
    with pytest.raises(ValueError, match="no readable images"):
        build_index(root, create_embedder("colour-histogram"), tmp_path / "index", dim=0)
    assert not (tmp_path / "index").exists()


def test_each_vector_is_written_once_and_bad_images_are_counted(tmp_path: Path) -> None:
    """In memory: no shards, no write-ahead log records; only the snapshot holds the vectors."""
    root = tmp_path / "set"
    make_synthetic_set(root, seed=3)
    data = read_set(root)
    data.photo_path(data.shop[0].photo).write_bytes(b"not an image")
    summary = build_index(root, create_embedder("colour-histogram"), tmp_path / "index", dim=0)
    assert summary["skipped"] == 1 and summary["vectors"] == len(data.shop) - 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "set"]  # no shard folder
    vectors = tmp_path / "index" / "vectors"
    assert (vectors / "wal.log").stat().st_size == 0 and list(vectors.glob("snap-*"))


def test_an_embeddings_folder_keeps_resumable_shards(tmp_path: Path) -> None:
    root = tmp_path / "set"
    make_synthetic_set(root, seed=2)
    embedder = create_embedder("colour-histogram")
    shards = tmp_path / "shards"
    first = build_index(root, embedder, tmp_path / "a", dim=8, embeddings=shards)
    stamp = (shards / "shard-00000.npy").stat().st_mtime_ns
    again = build_index(root, embedder, tmp_path / "b", dim=8, embeddings=shards)
    assert (shards / "shard-00000.npy").stat().st_mtime_ns == stamp  # read back, not redone
    assert first == again  # the same catalog root, the same counts
    in_memory = build_index(root, embedder, tmp_path / "c", dim=8)
    assert in_memory == first
    assert len({_pca_fingerprint(tmp_path / name) for name in "abc"}) == 1


def _pca_fingerprint(index: Path) -> str:
    return json.loads((index / "manifest.json").read_text())["pca"]["fingerprint"]


def test_a_plain_catalog_keeps_its_titles_and_attributes(tmp_path: Path) -> None:
    """CSV and folder catalogs carry their titles (and a CSV its extra columns) into the index,
    as a JSONL one does: the service shows them on results and product pages."""
    from PIL import Image

    (tmp_path / "images" / "hats").mkdir(parents=True)
    for name, colour in [("red-cap", "red"), ("blue_hat", "blue")]:
        Image.new("RGB", (32, 32), colour).save(tmp_path / "images" / "hats" / f"{name}.jpg")
    csv = tmp_path / "products.csv"
    csv.write_text(
        "id,category,image,title,colour\n"
        "cap-1,hats,images/hats/red-cap.jpg,A red cap,red\n"
        "hat-2,hats,images/hats/blue_hat.jpg,A blue hat,blue\n"
        "bad-3,hats,broken.jpg,Never indexed,none\n"
    )
    (tmp_path / "broken.jpg").write_bytes(b"no JPEG")
    embedder = create_embedder("colour-histogram")
    summary = build_index(csv, embedder, tmp_path / "from-csv", dim=0)
    assert summary["catalog_root"] == str(tmp_path.resolve())  # the folder refs are relative to
    assert summary["skipped"] == 1
    assert [item["image"] for item in summary["skipped_images"]] == [
        str((tmp_path / "broken.jpg").resolve())
    ]
    assert "not a recognised image" in summary["skipped_images"][0]["error"]
    build_index(tmp_path / "images", embedder, tmp_path / "from-folder", dim=0)
    manifest = json.loads((tmp_path / "from-csv" / "manifest.json").read_text())
    found = {}
    for name in ["from-csv", "from-folder"]:
        index = CatalogIndex.open(tmp_path / name, model_fingerprint=manifest["model_fingerprint"])
        try:
            for product in index.products.list_products():
                found[product.id] = (product.title, product.attributes)
        finally:
            index.close()
    assert found == {
        "cap-1": ("A red cap", {"colour": "red"}),
        "hat-2": ("A blue hat", {"colour": "blue"}),
        "hats.red-cap": ("red cap", {}),
        "hats.blue_hat": ("blue hat", {}),
    }


def test_a_catalogs_price_brand_and_stock_are_kept_as_product_fields(tmp_path: Path) -> None:
    """CSV columns (and JSONL keys, top level or in "attributes") price, brand and in_stock
    become the product's typed fields, empty ones unknown; a bad value names its line."""
    from PIL import Image

    from visnet.data.catalog import CatalogError, read_catalog

    for name, colour in [("a", "red"), ("b", "blue"), ("c", "green")]:
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{name}.jpg")
    csv = tmp_path / "products.csv"
    csv.write_text(
        "id,category,image,title,price,brand,in_stock,colour\n"
        "A,hats,a.jpg,Hat A,12.50,Acme,yes,red\n"
        "B,hats,b.jpg,Hat B,,,,blue\n"
        "C,hats,c.jpg,Hat C, 7 ,Bolt,0,green\n"
    )
    build_index(csv, create_embedder("colour-histogram"), tmp_path / "index", dim=0)
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    index = CatalogIndex.open(tmp_path / "index", model_fingerprint=manifest["model_fingerprint"])
    try:
        found = {p.id: (p.price, p.brand, p.in_stock, p.attributes) for p in index.page()}
    finally:
        index.close()
    assert found == {
        "A": (12.5, "Acme", True, {"colour": "red"}),
        "B": (None, None, None, {"colour": "blue"}),
        "C": (7.0, "Bolt", False, {"colour": "green"}),
    }
    jsonl = tmp_path / "products.jsonl"
    jsonl.write_text(
        '{"id": "A", "category": "hats", "image": "a.jpg", "title": "A", "price": 3, '
        '"attributes": {"brand": "Acme", "in_stock": true}}\n'
    )
    [item] = read_catalog(jsonl)
    assert (item.price, item.brand, item.in_stock) == (3.0, "Acme", True)
    for column, value, problem in [
        ("price", "$12", "'price' must be a number >= 0"),
        ("price", "-1", "'price' must be a number >= 0"),
        ("price", "nan", "'price' must be a number >= 0"),
        ("in_stock", "maybe", "'in_stock' must be true or false"),
    ]:
        csv.write_text(f"id,category,image,title,{column}\nA,hats,a.jpg,A,{value}\n")
        with pytest.raises(CatalogError, match=f"line 2: {problem}"):
            read_catalog(csv)


def test_a_large_catalog_streams_through_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past STREAM_VIEWS views the build embeds into OUT.embeddings and ingests from the
    memory-mapped shards: the same products and vectors as the in-memory build."""
    from visnet.index import build

    root = tmp_path / "set"
    make_synthetic_set(root, seed=3)
    embedder = create_embedder("colour-histogram")
    in_memory = build_index(root, embedder, tmp_path / "memory", dim=0, precompute_k=0)
    monkeypatch.setattr(build, "STREAM_VIEWS", 5)
    streamed = build_index(root, embedder, tmp_path / "streamed", dim=0, precompute_k=0)
    assert (tmp_path / "streamed.embeddings" / "manifest.json").is_file()
    assert streamed == {**in_memory, "catalog_root": streamed["catalog_root"]}
    a, b = (_open(tmp_path / name) for name in ("memory", "streamed"))
    try:
        ids = [p.id for p in a.products.list_products()]
        assert ids == [p.id for p in b.products.list_products()]
        for product_id in ids:
            assert replace(a.get(product_id), created="", updated="") == replace(
                b.get(product_id), created="", updated=""
            )
            views = [i.store.get(i.products.vector_ids(product_id)) for i in (a, b)]
            np.testing.assert_allclose(views[0], views[1], atol=1e-6)
    finally:
        a.close()
        b.close()

    # past MAX_SAMPLES vectors the build gathers only fit_pca's sample: the same PCA as
    # fit_pca over every vector in photo-id order (what the evaluation fits)
    from visnet.embed.job import read_shards
    from visnet.index import pca

    monkeypatch.setattr(pca, "MAX_SAMPLES", 10)
    sampled = build_index(root, embedder, tmp_path / "pca", dim=8, embeddings=tmp_path / "e")
    vectors, rows, _ = read_shards(tmp_path / "e")
    order = np.argsort([row.vector_id for row in rows], kind="stable")
    assert sampled["vectors"] == len(order) > 10
    assert _pca_fingerprint(tmp_path / "pca") == pca.fit_pca(vectors[order], dim=8).fingerprint
    monkeypatch.setattr(pca, "MAX_SAMPLES", 100_000)
    assert _pca_fingerprint(tmp_path / "pca") != pca.fit_pca(vectors[order], dim=8).fingerprint


def _open(index: Path) -> CatalogIndex:
    manifest = json.loads((index / "manifest.json").read_text())
    return CatalogIndex.open(index, model_fingerprint=manifest["model_fingerprint"])


def test_shard_vectors_gather_rows_across_shards(tmp_path: Path) -> None:
    from visnet.embed.job import open_shards, read_shards

    root = tmp_path / "set"
    make_synthetic_set(root, seed=4)
    run_embed_job(root, create_embedder("colour-histogram"), tmp_path / "e", shard_size=7)
    mapped, rows, manifest = open_shards(tmp_path / "e")
    whole, same_rows, _ = read_shards(tmp_path / "e")
    assert manifest["shards"] > 2 and len(mapped) == len(rows) == len(whole) and rows == same_rows
    picks = np.array([len(rows) - 1, 0, 8, 7, 6, 13, 8])  # across shards, unordered, repeated
    np.testing.assert_array_equal(mapped[picks], whole[picks])
    with pytest.raises(IndexError):
        mapped[[len(rows)]]


def test_cli_index_build_takes_an_embeddings_folder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from visnet.cli import app

    root = tmp_path / "set"
    make_synthetic_set(root, seed=2)
    args = ["index", "build", "--catalog", str(root), "--model", "colour-histogram", "--dim", "0"]
    out = tmp_path / "index"
    result = CliRunner().invoke(
        app, [*args, "--out", str(out), "--embeddings", str(tmp_path / "e")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "e" / "manifest.json").is_file()
    assert json.loads((out / "build.json").read_text())["vectors"] == len(read_set(root).shop)
