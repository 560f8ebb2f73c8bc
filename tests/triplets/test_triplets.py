"""Catalog and wild triplets: rank windows, categories, the mix, seeds, and the file format."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from visnet.cli import app
from visnet.data.street2shop import read_set
from visnet.data.synthetic import make_synthetic_set
from visnet.images import load_image
from visnet.training.datasets import read_triplets
from visnet.triplets import (
    CatalogTripletSettings,
    WildTripletSettings,
    generate_catalog_triplets,
    generate_wild_triplets,
    rank_windows,
)
from visnet.triplets.catalog import catalog_views
from visnet.triplets.scorers import fuse_ranks, get_scorer, similarity_ranks

SCORERS = "colour=1,texture=0.5"
PER_PRODUCT = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("set")
    make_synthetic_set(
        root, seed=0, categories=3, products_per_category=30, street_per_product=1, size=32
    )
    return root


def _settings(**overrides: Any) -> CatalogTripletSettings:
    values: dict[str, Any] = {
        "scorers": SCORERS,
        "per_product": PER_PRODUCT,
        "progress": False,
        "split": "all",
    }
    return CatalogTripletSettings(**(values | overrides))


@pytest.fixture(scope="module")
def catalog(data: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return generate_catalog_triplets(data, _settings())


# ------------------------------------------------------------------------------------ windows


def test_rank_windows_paper_and_scaled() -> None:
    paper = rank_windows(5000, (1, 200), (500, 1000))
    assert paper is not None and not paper.scaled
    assert (paper.positive, paper.negative) == ((1, 200), (500, 1000))
    small = rank_windows(58, (1, 200), (500, 1000))
    assert small is not None and small.scaled
    assert (small.positive, small.negative) == ((1, 11), (29, 58))
    assert rank_windows(0, (1, 200), (500, 1000)) is None
    one = rank_windows(1, (1, 200), (500, 1000))
    assert one is not None and one.positive == (1, 1) and one.negative is None


def test_rank_windows_are_ordered_and_non_empty_for_every_size() -> None:
    for n in range(1, 2500):
        w = rank_windows(n, (1, 200), (500, 1000))
        assert w is not None and 1 <= w.positive[0] <= w.positive[1] <= n
        if n >= 2:
            assert w.negative is not None
            assert w.positive[1] < w.negative[0] <= w.negative[1] <= n


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="positive end < negative start"):
        _settings(positive_window=(1, 600))
    with pytest.raises(ValueError, match="in_class_fraction"):
        _settings(in_class_fraction=1.5)
    with pytest.raises(ValueError, match="unknown scorer"):
        _settings(scorers="colour=1,sift=1")


# ------------------------------------------------------------------------------------ catalog


def test_catalog_triplets_respect_categories_and_windows(
    data: Path, catalog: tuple[list[dict[str, Any]], dict[str, Any]]
) -> None:
    lines, summary = catalog
    windows = summary["windows"]
    assert set(summary["scaled_categories"]) == {"circle", "square", "triangle"}
    assert len(lines) == summary["triplets"] == 90 * PER_PRODUCT
    products = read_set(data).products()
    for line in lines:
        assert line["kind"] == "catalog" and line["status"] == "pending"
        category = products[line["query_product"]]
        assert line["category"] == category == products[line["positive_product"]]
        assert line["positive_product"] != line["query_product"]
        assert line["negative_product"] not in (line["query_product"], line["positive_product"])
        lo, hi = windows[category]["positive"]
        assert lo <= line["positive_rank"] <= hi
        if line["negative_kind"] == "in-class":
            lo, hi = windows[category]["negative"]
            assert lo <= line["negative_rank"] <= hi
            assert products[line["negative_product"]] == category == line["negative_category"]
        else:
            assert line["negative_kind"] == "out-of-class" and line["negative_rank"] is None
            assert products[line["negative_product"]] == line["negative_category"] != category


def test_catalog_mix_and_seed(
    data: Path, catalog: tuple[list[dict[str, Any]], dict[str, Any]]
) -> None:
    lines, summary = catalog
    kinds = Counter(line["negative_kind"] for line in lines)
    assert kinds["in-class"] / len(lines) == pytest.approx(0.3, abs=0.01)
    assert summary["in_class_share"] == pytest.approx(0.3, abs=0.01)
    again, _ = generate_catalog_triplets(data, _settings())
    assert again == lines
    other, _ = generate_catalog_triplets(data, _settings(seed=1))
    assert other != lines
    mostly_in, _ = generate_catalog_triplets(data, _settings(in_class_fraction=0.8))
    share = Counter(line["negative_kind"] for line in mostly_in)["in-class"] / len(mostly_in)
    assert share == pytest.approx(0.8, abs=0.01)


def test_catalog_ranks_match_a_naive_recomputation(
    data: Path, catalog: tuple[list[dict[str, Any]], dict[str, Any]]
) -> None:
    """Recompute the fused rank of a few positives and in-class negatives from scratch."""
    lines, _ = catalog
    views = catalog_views(data)
    path_of = {v.path.resolve(): v for v in views}
    vectors = {
        spec: get_scorer(spec).embed([load_image(v.path) for v in views])
        for spec in ("colour", "texture")
    }
    for line in lines[:: len(lines) // 12]:
        query = path_of[(data / line["query"]["image"]).resolve()]
        rows = [i for i, v in enumerate(views) if v.category == query.category]
        q = rows[[views[i].path for i in rows].index(query.path)]
        ranks = {s: similarity_ranks(vectors[s][[q]], vectors[s][rows]) for s in vectors}
        cost = fuse_ranks(ranks, {"colour": 1.0, "texture": 0.5})[0]
        ranked = [rows[j] for j in np.argsort(cost, kind="stable")]
        candidates = [views[i] for i in ranked if views[i].product != query.product]
        positive = candidates[line["positive_rank"] - 1]
        assert (data / line["positive"]["image"]).resolve() == positive.path.resolve()
        if line["negative_rank"] is not None:
            negative = candidates[line["negative_rank"] - 1]
            assert (data / line["negative"]["image"]).resolve() == negative.path.resolve()


def test_catalog_cli_writes_a_file_the_trainer_reads(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "catalog.jsonl"
    args = ["triplets", "catalog", "--data", str(data), "--out", str(out)]
    options = ["--scorers", "colour=1", "--per-product", "2", "--split", "all"]
    result = CliRunner().invoke(app, [*args, *options])
    assert result.exit_code == 0, result.output
    assert '"scaled_categories"' in result.output
    lines = [json.loads(t) for t in out.read_text().splitlines()]
    assert len(lines) == 180
    triplets = read_triplets(out, root=data)
    assert len(triplets) == 180 and all(t.query.path.is_file() for t in triplets)
    bad = CliRunner().invoke(app, [*args, "--scorers", "sift=1"])
    assert bad.exit_code == 2 and "unknown scorer 'sift'" in bad.output


# --------------------------------------------------------------------------------------- wild


def test_wild_triplets_structure(data: Path) -> None:
    settings = WildTripletSettings(negatives=3, split="train", seed=0, progress=False)
    lines, summary = generate_wild_triplets(data, settings)
    dataset = read_set(data)
    products = dataset.products()
    views_of: dict[int, set[str]] = defaultdict(set)
    for shop in dataset.shop:
        views_of[shop.product].add(f"photos/{shop.photo}.jpg")
    pairs = dataset.pairs["train"]
    assert summary["pairs"] == len(pairs)
    assert len(lines) == sum(len(views_of[p.product]) * 3 for p in pairs)
    by_pair: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        assert line["kind"] == "wild" and line["status"] == "pending"
        assert line["positive_product"] == line["query_product"] != line["negative_product"]
        assert products[line["negative_product"]] == products[line["query_product"]]
        by_pair[line["street_photo"]].append(line)
    for pair in pairs:
        group = by_pair[pair.photo]
        query = {"image": f"photos/{pair.photo}.jpg", "bbox": pair.bbox.to_json()}
        assert all(g["query"] == query for g in group)
        assert {g["positive"]["image"] for g in group} == views_of[pair.product]
        for positive in views_of[pair.product]:
            negatives = [
                g["negative"]["image"] for g in group if g["positive"]["image"] == positive
            ]
            assert len(negatives) == len(set(negatives)) == 3
    again, _ = generate_wild_triplets(data, settings)
    assert again == lines


def test_wild_cli(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "wild.jsonl"
    args = ["triplets", "wild", "--data", str(data), "--out", str(out), "--negatives", "2"]
    result = CliRunner().invoke(app, [*args, "--split", "test"])
    assert result.exit_code == 0, result.output
    triplets = read_triplets(out, root=data)
    assert triplets and all(t.kind == "wild" and t.query.bbox is not None for t in triplets)
    bad = CliRunner().invoke(app, [*args, "--split", "val"])
    assert bad.exit_code == 2 and "unknown split" in bad.output


def test_train_split_keeps_test_products_out(data: Path) -> None:
    lines, _ = generate_catalog_triplets(data, _settings(split="train"))
    test_products = {p.product for p in read_set(data).pairs["test"]}
    used = {line[key] for line in lines for key in ("query_product", "positive_product")}
    used |= {line["negative_product"] for line in lines}
    assert lines and not used & test_products
