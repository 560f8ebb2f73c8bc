"""Feedback triplets: skip-above from logged lists, into the review queue, read by the trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from visnet.cli import app
from visnet.feedback import EventLog, store_query_crop
from visnet.feedback.triplets import (
    FeedbackTripletSettings,
    IndexImages,
    feedback_triplets,
    queue_feedback_triplets,
)
from visnet.index.products import Product, ProductStore
from visnet.training.datasets import read_triplets
from visnet.triplets import ReviewQueue


@pytest.fixture
def index(tmp_path: Path) -> Path:
    """A tiny index folder: products p1..p7 (p7's image is missing), build.json's catalog root."""
    catalog, index = tmp_path / "catalog", tmp_path / "index"
    (catalog / "photos").mkdir(parents=True)
    index.mkdir()
    store = ProductStore(index / "products.sqlite")
    for n in range(1, 8):
        if n < 7:
            Image.new("RGB", (8, 8), (30 * n, 0, 0)).save(catalog / "photos" / f"p{n}.png")
        store.upsert(Product(f"p{n}", "hats" if n < 4 else "bags", images=(f"photos/p{n}.png",)))
    store.close()
    (index / "build.json").write_text(json.dumps({"catalog_root": str(catalog)}))
    return index


def shown(query: str, products: list[str], **extra: str) -> dict:
    items = [{"product": p, "position": i} for i, p in enumerate(products, 1)]
    kind = "similar" if "anchor" in extra else "search"
    body = {"type": "impression", "query_id": query, "query_kind": kind, "model": "model-a"}
    return {**body, "shown": items, **extra}


def click(query: str, product: str, position: int) -> dict:
    return {"type": "click", "query_id": query, "product": product, "position": position}


@pytest.fixture
def events(index: Path) -> tuple[Path, str]:
    crop = store_query_crop(index, Image.new("RGB", (20, 10), (0, 0, 200)))
    script = [
        ("shopper-01", [shown("list-0001", ["p1", "p2", "p3", "p4"], query_image=crop)]),
        ("shopper-01", [click("list-0001", "p3", 3)]),
        ("shopper-02", [shown("list-0002", ["p1", "p3"], query_image=crop)]),
        ("shopper-02", [click("list-0002", "p3", 2)]),  # the same triplet as list-0001's first
        ("shopper-03", [shown("list-0003", ["p1", "p2", "p6"], anchor="p5")]),
        ("shopper-03", [click("list-0003", "p6", 3), click("list-0003", "p1", 1)]),
        ("shopper-04", [shown("list-0004", ["p1", "p2"]), click("list-0004", "p2", 2)]),
        ("shopper-05", [shown("list-0005", ["p1", "p2"], query_image="f" * 32)]),
        ("shopper-05", [click("list-0005", "p2", 2)]),  # its crop was never kept
        ("shopper-06", [shown("list-0006", ["p1", "p7"], query_image=crop)]),
        ("shopper-06", [click("list-0006", "p7", 2)]),  # p7 has no image
        ("shopper-07", [shown("list-0007", ["p4", "p5"], query_image=crop)]),  # no click
    ]
    path = index / "events.sqlite"
    with EventLog(path) as log:
        for session, batch in script:
            assert log.record_batch({"session": session, "events": batch}).rejected == []
    return path, crop


def test_skip_above_gives_the_hand_listed_triplets(index: Path, events: tuple[Path, str]) -> None:
    path, crop = events
    catalog = index.parent / "catalog"
    images = IndexImages(index)
    with EventLog(path, create=False) as log:
        lines, summary = feedback_triplets(log, images, catalog, FeedbackTripletSettings())
    images.close()
    found = {
        (line["query"]["image"], line["positive_product"], line["negative_product"]): line
        for line in lines
    }
    crop_file = str(index / "queries" / f"{crop}.jpg")  # outside the root: absolute
    assert set(found) == {
        (crop_file, "p3", "p1"),
        (crop_file, "p3", "p2"),
        ("photos/p5.png", "p6", "p2"),  # p1, above it, was clicked too: no negative
    }
    first = found[(crop_file, "p3", "p1")]
    assert first["lists"] == 2 and first["kind"] == "feedback" and first["status"] == "pending"
    assert (first["positive_position"], first["negative_position"]) == (3, 1)
    assert first["positive"] == {"image": "photos/p3.png"} and first["category"] == "hats"
    assert first["query_image"] == crop and first["model"] == "model-a"
    assert found[("photos/p5.png", "p6", "p2")]["query_product"] == "p5"
    assert summary["lists"] == 7 and summary["clicked_lists"] == 6 and summary["clicks"] == 7
    assert summary["clicks_without_skips"] == 1  # list-0003's click at the top
    assert summary["missing_query_image"] == 2  # list-0004 kept no crop, list-0005's is gone
    assert summary["missing_product_image"] == 1  # p7


def test_negatives_caps_the_skipped_results_best_ranked_first(
    index: Path, events: tuple[Path, str]
) -> None:
    images = IndexImages(index)
    with EventLog(events[0], create=False) as log:
        lines, _ = feedback_triplets(log, images, index.parent, FeedbackTripletSettings(1))
    images.close()
    assert sorted((t["positive_product"], t["negative_product"]) for t in lines) == [
        ("p3", "p1"),
        ("p6", "p2"),
    ]
    with pytest.raises(ValueError, match="negatives"):
        FeedbackTripletSettings(negatives=0)


def test_the_command_queues_them_for_review_and_training_reads_the_approved(
    index: Path, events: tuple[Path, str], tmp_path: Path
) -> None:
    queue = tmp_path / "review.sqlite"
    args = ["triplets", "feedback", "--events", str(events[0]), "--index", str(index)]
    result = CliRunner().invoke(app, [*args, "--queue", str(queue)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["added"], summary["already_queued"], summary["triplets"]) == (3, 0, 3)
    assert summary["root"] == str(index.parent / "catalog")
    again = queue_feedback_triplets(events[0], index, queue)
    assert (again["added"], again["already_queued"]) == (0, 3)
    with ReviewQueue(queue, create=False) as q:
        assert q.counts() == {"pending": 3, "approved": 0, "rejected": 0, "total": 3}
        items = list(q.items())
        q.decide(items[0].id, "approved", "ann")
        q.decide(items[1].id, "rejected", "ann")
        approved = items[0].line
    (triplet,) = read_triplets(queue, index.parent / "catalog")  # what `visnet train` reads
    assert triplet.kind == "feedback"
    assert (
        triplet.positive.path
        == (index.parent / "catalog" / approved["positive"]["image"]).resolve()
    )
    assert triplet.query.path.is_file() and triplet.negative.path.is_file()
    missing = CliRunner().invoke(app, [*args[:4], "--index", str(tmp_path), "--queue", str(queue)])
    assert missing.exit_code == 2 and "not an index folder" in missing.output


def test_an_index_built_from_a_catalog_file_finds_its_images_beside_the_file(index: Path) -> None:
    """Indexes built from a CSV or JSONL file before 2026-12 recorded the file as the catalog
    root; its refs are relative to the file's folder, as the service reads them."""
    catalog = Path(json.loads((index / "build.json").read_text())["catalog_root"])
    (catalog / "catalog.csv").write_text("id,category,image,title\n")
    (index / "build.json").write_text(json.dumps({"catalog_root": str(catalog / "catalog.csv")}))
    images = IndexImages(index)
    try:
        assert images.catalog_root == catalog
        assert images.product("p1") == ((catalog / "photos" / "p1.png").resolve(), "hats")
    finally:
        images.close()
