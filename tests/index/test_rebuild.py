"""Rebuilding an index for another model from its own images: nothing lost, the old one kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from visnet.cli import app
from visnet.data.street2shop import read_set
from visnet.data.synthetic import make_synthetic_set
from visnet.embed.registry import create_embedder, embedder_fingerprint
from visnet.images import load_image
from visnet.index.build import build_index
from visnet.index.catalog_index import CatalogIndex
from visnet.index.products import Product
from visnet.index.protocol import IndexMismatchError
from visnet.index.rebuild import rebuild_index
from visnet.index.refs import product_image
from visnet.service import files

OLD, NEW = "colour-histogram", "texture"
UPLOADED = "up-1"


def _fingerprint(name: str) -> str:
    return embedder_fingerprint(create_embedder(name))


def _records(index_dir: Path, model: str) -> dict[str, tuple]:
    index = CatalogIndex.open(index_dir, model_fingerprint=_fingerprint(model))
    try:
        products = index.products.list_products()
    finally:
        index.close()
    return {p.id: (p.category, p.title, p.images, p.attributes) for p in products}


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path]:
    """The synthetic set and its colour-histogram index (PCA to 8-D), plus one product uploaded
    the way the service stores one (its image saved under the index folder, a ref to it)."""
    root, index_dir = tmp_path / "set", tmp_path / "index"
    make_synthetic_set(root, seed=2)
    build_index(root, create_embedder(OLD), index_dir, dim=8, precompute_k=5)
    data = read_set(root)
    photo = data.photo_path(data.shop[0].photo)
    assert photo is not None
    image = load_image(photo).rotate(90)  # a view the catalog does not hold
    index = CatalogIndex.open(index_dir, model_fingerprint=_fingerprint(OLD))
    try:
        refs = files.save_uploads(index_dir, UPLOADED, [image])
        product = Product(UPLOADED, data.shop[0].category, "Uploaded", refs, {"source": "api"})
        index.upsert(product, create_embedder(OLD).embed([image]))
    finally:
        index.close()
    return root, index_dir


def test_rebuild_keeps_every_product_and_the_old_index(built: tuple[Path, Path]) -> None:
    root, index_dir = built
    before = _records(index_dir, OLD)
    summary = rebuild_index(index_dir, create_embedder(NEW))

    previous = index_dir.with_name("index.before-rebuild")
    assert summary["previous"] == str(previous.resolve())
    assert summary["index"] == str(index_dir.resolve())
    assert summary["products"] == len(before) and summary["skipped_products"] == []
    assert summary["dim"] == 8 and summary["precompute_k"] == 5  # as the old build had them
    assert _records(index_dir, NEW) == before  # every record, the uploaded one too
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["model_name"] == NEW and manifest["pca"]["dim"] == 8
    build = json.loads((index_dir / "build.json").read_text())
    assert build["catalog_root"] == str(root.resolve()) and build["model"] == NEW
    assert not index_dir.with_name("index.partial").exists()

    upload = product_image(before[UPLOADED][2][0], root, index_dir)
    assert upload is not None and upload.is_relative_to(index_dir.resolve())
    texture = create_embedder(NEW)
    index = CatalogIndex.open(index_dir, model_fingerprint=_fingerprint(NEW))
    try:
        query = texture.embed([load_image(upload)])[0]
        assert index.search(query, k=1)[0].product_id == UPLOADED  # its own view scores 1
        for product_id, (category, *_) in before.items():
            others = sum(1 for c, *_ in before.values() if c == category) - 1
            stored = index.recommendation_rows(product_id)
            assert stored is not None
            rows, own = stored  # results, listings collapsed into them, its own other listings
            assert len(rows) + sum(len(row[-1]) for row in rows) + len(own) >= min(5, others)
    finally:
        index.close()
    with pytest.raises(IndexMismatchError, match="visnet index rebuild"):
        CatalogIndex.open(index_dir, model_fingerprint=_fingerprint(OLD))
    assert _records(previous, OLD) == before  # the old index, whole and still openable


def test_the_model_mismatch_names_the_rebuild_command(built: tuple[Path, Path]) -> None:
    _, index_dir = built
    with pytest.raises(IndexMismatchError) as refused:
        CatalogIndex.open(index_dir, model_fingerprint="other", model="runs/new model.pt")
    message = str(refused.value)
    assert f"'{OLD}' (fingerprint {_fingerprint(OLD)}); got fingerprint other" in message
    assert message.endswith(
        f"rebuild it for this model with: visnet index rebuild --index {index_dir} "
        "--model 'runs/new model.pt'"
    )


def test_unreadable_products_are_skipped_and_reported(built: tuple[Path, Path]) -> None:
    root, index_dir = built
    before = _records(index_dir, OLD)
    gone, half = sorted(p for p in before if p != UPLOADED)[:2]
    for ref in before[gone][2]:
        (root / ref).unlink()  # no readable image left
    (root / before[half][2][0]).write_bytes(b"not an image")  # one of its two left
    out = index_dir.with_name("new")
    summary = rebuild_index(index_dir, create_embedder(NEW), out=out, dim=0)

    assert summary["skipped_products"] == [gone] and summary["skipped"] == 3
    assert summary["previous"] is None and summary["dim"] == create_embedder(NEW).dim
    after = _records(out, NEW)
    assert after == {p: record for p, record in before.items() if p != gone}
    assert _records(index_dir, OLD) == before  # given --out, the old index stays where it was
    with pytest.raises(FileExistsError, match="pass a new folder"):
        rebuild_index(index_dir, create_embedder(NEW), out=out)


def test_a_catalog_that_moved_needs_its_root(built: tuple[Path, Path], tmp_path: Path) -> None:
    root, index_dir = built
    moved = tmp_path / "moved"
    root.rename(moved)
    build_file = index_dir / "build.json"
    recorded = json.loads(build_file.read_text())
    del recorded["precompute_k"]  # as builds before `visnet index rebuild` wrote it
    build_file.write_text(json.dumps(recorded))
    with pytest.raises(FileNotFoundError, match="--catalog-root"):
        rebuild_index(index_dir, create_embedder(NEW))
    assert not index_dir.with_name("index.before-rebuild").exists()
    summary = rebuild_index(index_dir, create_embedder(NEW), catalog_root=moved)
    assert summary["skipped_products"] == [] and summary["catalog_root"] == str(moved.resolve())
    assert summary["precompute_k"] == 20  # the build default


def test_the_command_says_where_the_old_index_is(built: tuple[Path, Path]) -> None:
    _, index_dir = built
    outcome = CliRunner().invoke(
        app, ["index", "rebuild", "--index", str(index_dir), "--model", NEW]
    )
    assert outcome.exit_code == 0, outcome.output
    assert f"the old index is kept in {index_dir}.before-rebuild" in outcome.output
    again = CliRunner().invoke(app, ["index", "rebuild", "--index", str(index_dir), "--model", OLD])
    assert again.exit_code == 2 and "earlier rebuild" in again.output


def test_serve_refuses_another_models_index_in_one_line(built: tuple[Path, Path]) -> None:
    _, index_dir = built
    result = CliRunner().invoke(app, ["serve", "--index", str(index_dir), "--model", NEW])
    assert result.exit_code != 0
    assert "rebuild it for this model with: visnet index rebuild" in result.output
    assert "Traceback" not in result.output and "Uvicorn running" not in result.output


def test_what_the_folder_keeps_beside_the_index_comes_along(built: tuple[Path, Path]) -> None:
    """The shoppers' event log (with rows still in its write-ahead log), search crops and sample
    photos move to the rebuilt index; the old index's own state does not."""
    import sqlite3

    _, index_dir = built
    log = sqlite3.connect(index_dir / "events.sqlite")
    log.execute("PRAGMA journal_mode=WAL")
    log.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT)")
    log.executemany("INSERT INTO events (kind) VALUES (?)", [("click",), ("impression",)])
    log.commit()  # left open: the rows sit in events.sqlite-wal
    (index_dir / "queries").mkdir()
    (index_dir / "queries" / "abc.jpg").write_bytes(b"crop")
    (index_dir / "samples").mkdir(exist_ok=True)
    (index_dir / "samples" / "one.jpg").write_bytes(b"photo")
    (index_dir / "service-state.json").write_text("{}")
    try:
        rebuild_index(index_dir, create_embedder(NEW))
    finally:
        log.close()
    copied = sqlite3.connect(index_dir / "events.sqlite")
    assert copied.execute("SELECT kind FROM events ORDER BY id").fetchall() == [
        ("click",),
        ("impression",),
    ]
    copied.close()
    assert (index_dir / "queries" / "abc.jpg").read_bytes() == b"crop"
    assert (index_dir / "samples" / "one.jpg").read_bytes() == b"photo"
    assert not (index_dir / "service-state.json").exists()


def test_if_stale_rebuilds_only_an_index_of_another_model(built: tuple[Path, Path]) -> None:
    _, index_dir = built
    runner = CliRunner()
    command = ["index", "rebuild", "--index", str(index_dir), "--if-stale", "--dim", "0"]
    same = runner.invoke(app, [*command, "--model", OLD])
    assert same.exit_code == 0 and "nothing to rebuild" in same.output
    assert not index_dir.with_name("index.before-rebuild").exists()
    other = runner.invoke(app, [*command, "--model", NEW])
    assert other.exit_code == 0, other.output
    assert json.loads((index_dir / "manifest.json").read_text())["model_fingerprint"] == (
        _fingerprint(NEW)
    )
    assert index_dir.with_name("index.before-rebuild").is_dir()  # the old one kept
    again = runner.invoke(app, [*command, "--model", NEW])
    assert "nothing to rebuild" in again.output
