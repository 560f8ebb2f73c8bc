"""The retrieval protocol, its cache, recommendation quality, reports, eval and report commands."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from visnet.cli import app
from visnet.data.catalog import CatalogError
from visnet.data.street2shop import DataFormatError, read_set
from visnet.data.synthetic import make_synthetic_set
from visnet.eval.metrics import dedupe_products
from visnet.eval.protocol import evaluate
from visnet.eval.recommend import read_variants, recommendation_quality
from visnet.eval.report import (
    DetectorSpec,
    ReportConfig,
    load_report_config,
    render_report,
    run_report,
)
from visnet.features.colour import ColourHistogram
from visnet.images import load_image

KEYS = {"model", "data", "crops", "dim", "queries", "skipped", "overall", "per_category"}
KEYS |= {"recommendation", "nearest_category", "seconds"}
RECALLS = ["recall@1", "recall@5", "recall@10", "recall@20"]


class CountingEmbedder(ColourHistogram):
    """A colour histogram that counts the images it is asked to embed."""

    calls: int = 0

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.calls += len(images)
        return super().embed(images)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "set"
    make_synthetic_set(root, seed=0, products_per_category=4)
    return root


@pytest.fixture
def data(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny set, so a test may break it."""
    return Path(shutil.copytree(pristine, tmp_path / "set"))


def test_result_has_the_documented_keys(data: Path) -> None:
    result = evaluate(data, "colour-histogram", progress=False)
    assert set(result) >= KEYS
    assert list(result["overall"]) == RECALLS
    assert result["queries"] == len(read_set(data).pairs["test"]) > 0
    assert result["skipped"]["count"] == 0
    for row in result["per_category"].values():
        assert set(row) >= set(RECALLS) | {"queries", "skipped", "products"}
        assert row["products"] == 4
    assert result["overall"]["recall@20"] == 1.0  # four products a category: all within 20
    assert result["overall"]["recall@1"] >= 0.5
    json.dumps(result)  # JSON-able as it stands


def test_matches_a_brute_force_reference(data: Path) -> None:
    """Embed crops by hand, search each category by full sort, dedupe, count hits at 1; and
    search the whole catalog for the nearest image, count the queries it names the category of."""
    dataset, embedder = read_set(data), ColourHistogram()
    everything = embedder.embed([load_image(dataset.photo_path(s.photo)) for s in dataset.shop])
    hits = named = 0
    for pair in dataset.pairs["test"]:
        left, top, right, bottom = pair.bbox.as_xyxy()
        crop = load_image(dataset.photo_path(pair.photo)).crop(
            (round(left), round(top), round(right), round(bottom))
        )
        query = embedder.embed([crop])[0]
        shop = dataset.shop_in(pair.category)
        vectors = embedder.embed([load_image(dataset.photo_path(s.photo)) for s in shop])
        scores = vectors @ query
        ranked = dedupe_products(shop[i].product for i in np.argsort(-scores, kind="stable"))
        hits += ranked[0] == pair.product
        named += dataset.shop[int(np.argmax(everything @ query))].category == pair.category
    result = evaluate(data, embedder, progress=False, use_cache=False)
    queries = len(dataset.pairs["test"])
    assert result["overall"]["recall@1"] == pytest.approx(hits / queries, abs=1e-4)
    assert result["nearest_category"] == pytest.approx(named / queries, abs=1e-4)
    assert 0.0 < result["nearest_category"] <= 1.0


def test_missing_and_unreadable_images_are_skipped_and_counted(data: Path) -> None:
    dataset = read_set(data)
    street = [p.photo for p in dataset.pairs["test"]]
    dataset.photo_path(street[0]).unlink()
    dataset.photo_path(street[1]).write_bytes(b"not an image")
    dataset.photo_path(dataset.shop[0].photo).unlink()
    result = evaluate(data, "colour-histogram", progress=False)
    skipped = result["skipped"]
    assert skipped["count"] == 2
    assert skipped["reasons"] == {"missing image file": 1, "unreadable image (not_an_image)": 1}
    assert skipped["catalog_images"] == 1
    assert result["queries"] == len(street) - 2
    assert sum(row["skipped"] for row in result["per_category"].values()) == 2


def test_a_set_without_any_image_still_reports(data: Path) -> None:
    shutil.rmtree(data / "photos")
    (data / "photos").mkdir()
    result = evaluate(data, "phash", progress=False)
    assert result["queries"] == 0 and result["overall"]["recall@1"] is None
    assert result["skipped"]["count"] == len(read_set(data).pairs["test"])
    assert result["skipped"]["catalog_images"] == len(read_set(data).shop)


def test_a_malformed_file_is_named(data: Path) -> None:
    bad = next((data / "meta" / "json").glob("test_pairs_*.json"))
    bad.write_text('[{"photo": 1, "product": ', encoding="utf-8")
    with pytest.raises(DataFormatError, match=bad.name):
        evaluate(data, "colour-histogram", progress=False)
    outcome = CliRunner().invoke(app, ["eval", "--data", str(data), "--model", "phash"])
    assert outcome.exit_code == 2
    assert bad.name in outcome.output


def test_second_run_reads_the_cache(data: Path) -> None:
    first = CountingEmbedder()
    evaluate(data, first, progress=False)
    assert first.calls > 0
    assert list((data / ".cache" / "embeddings").glob("*.npy"))
    again = CountingEmbedder()
    result = evaluate(data, again, progress=False, ks=(1, 3))
    assert again.calls == 0
    assert list(result["overall"]) == ["recall@1", "recall@3"]
    uncached = CountingEmbedder()
    evaluate(data, uncached, progress=False, use_cache=False)
    assert uncached.calls == first.calls


def test_another_crop_mode_reuses_the_catalog(data: Path) -> None:
    evaluate(data, CountingEmbedder(), progress=False)
    whole = CountingEmbedder()
    result = evaluate(data, whole, crops="none", progress=False)
    assert whole.calls == len(read_set(data).pairs["test"])  # queries only
    assert result["crops"] == "none"


def test_dim_reduces_with_pca(data: Path) -> None:
    result = evaluate(data, "colour-histogram", dim=4, progress=False)
    assert result["dim"] == 4 and result["embedder_dim"] == ColourHistogram().dim
    with pytest.raises(ValueError, match="dim 500"):
        evaluate(data, "colour-histogram", dim=500, progress=False)


def test_bad_options_raise(data: Path) -> None:
    with pytest.raises(ValueError, match="crops"):
        evaluate(data, "phash", crops="boxes", progress=False)
    with pytest.raises(ValueError, match="unknown model"):
        evaluate(data, "sift", progress=False)


def test_untrained_network_evaluates(data: Path) -> None:
    pytest.importorskip("visnet.model.embedder")
    result = evaluate(data, "untrained", progress=False)
    assert result["model"] == "untrained" and result["queries"] > 0


# ------------------------------------------------------------------------------ recommendation


def _catalog_vectors() -> tuple[np.ndarray, list[int], list[str]]:
    """Products 1-2 (a variant pair) and 3 in 'hats', 4 in 'bags'; two views each but product 4."""
    rows = {
        1: [[1.0, 0.0, 0.0], [0.9, 0.1, 0.0]],
        2: [[0.8, 0.2, 0.0], [0.8, 0.3, 0.0]],
        3: [[0.0, 1.0, 0.0], [0.1, 0.9, 0.0]],
        4: [[0.0, 0.0, 1.0]],
    }
    vectors = [v for product in rows for v in rows[product]]
    products = [product for product in rows for _ in rows[product]]
    categories = ["bags" if p == 4 else "hats" for p in products]
    normalised = np.asarray(vectors) / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normalised.astype(np.float32), products, categories


def test_recommendation_quality_hand_worked() -> None:
    vectors, products, categories = _catalog_vectors()
    result = recommendation_quality(vectors, products, categories, {1: "1", 2: "1", 3: "3"}, k=2)
    # top-2 neighbours: 1 -> {2, 3}, 2 -> {1, 3}, 3 -> {2, 1}: all hats; 4 -> {3, 2}: no bag.
    assert result["same_category@2"] == pytest.approx((1 + 1 + 1 + 0) / 4)
    assert result["other_view_queries"] == 3  # product 4 has one view
    assert result["other_view_recall@1"] == 1.0
    # 1 and 2 have a variant; their only unrelated hat (3) ranks below it.
    assert result["variant_queries"] == 2 and result["variant_auc"] == 1.0


def test_read_variants(tmp_path: Path) -> None:
    path = tmp_path / "catalog.jsonl"
    lines = [
        {"id": "5", "category": "hats", "attributes": {}},
        {"id": 6, "category": "hats", "attributes": {"variant_of": "5"}},
        {"id": "7", "category": "hats"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    assert read_variants(path) == {5: "5", 6: "5", 7: "7"}
    assert read_variants(tmp_path / "absent.jsonl") is None
    path.write_text('{"id": 1}\n{broken\n', encoding="utf-8")
    with pytest.raises(CatalogError, match="line 2"):
        read_variants(path)


def test_variants_from_the_catalog_reach_the_result(data: Path) -> None:
    products = sorted(read_set(data).products())
    lines = [{"id": p, "attributes": {"variant_of": products[0]}} for p in products[:2]]
    (data / "catalog.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n", encoding="utf-8")
    result = evaluate(data, "colour-histogram", progress=False)
    assert result["recommendation"]["variant_queries"] >= 1
    assert 0.0 <= result["recommendation"]["variant_auc"] <= 1.0


# ------------------------------------------------------------------------------- outputs and CLI


def test_eval_command_writes_json_markdown_and_plot(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "colour.json"
    args = ["eval", "--data", str(data), "--model", "colour-histogram", "--out", str(out)]
    outcome = CliRunner().invoke(app, [*args, "--dim", "8", "--no-cache"])
    assert outcome.exit_code == 0, outcome.output
    assert "recall@1" in outcome.output
    assert json.loads(out.read_text())["dim"] == 8
    assert out.with_suffix(".md").read_text().startswith("**colour-histogram**")
    assert out.with_suffix(".png").stat().st_size > 0
    assert not (data / ".cache").exists()


def test_report_runs_rows_and_skips_missing_models(data: Path, tmp_path: Path) -> None:
    import torch

    from visnet.detect import Detector, DetectorConfig

    torch.manual_seed(0)
    tiny = DetectorConfig(
        categories=tuple(read_set(data).categories),
        arch="mobilenet_v3_large_320_fpn",
        min_size=64,
        max_size=64,
        proposals=8,
        box_head_dim=32,
    )
    detector = Detector(tiny).save(tmp_path / "tiny.pt")
    config = tmp_path / "report.toml"
    config.write_text(
        '[report]\nks = [1, 5, 10, 20]\n\n[[run]]\nlabel = "Colour"\nmodel = "colour-histogram"\n\n'
        '[[run]]\nlabel = "Hash, whole photo"\nmodel = "phash"\ncrops = "none"\n\n'
        '[[run]]\nlabel = "Trained"\nmodel = "checkpoint:nowhere/model.pt"\n\n'
        f'[[detectors]]\nlabel = "Tiny detector"\ndetector = "{detector.as_posix()}"\n\n'
        '[[detectors]]\nlabel = "Gone"\ndetector = "nowhere/detector.pt"\n',
        encoding="utf-8",
    )
    out = tmp_path / "docs" / "RESULTS.md"
    outcome = CliRunner().invoke(
        app, ["report", "--data", str(data), "--config", str(config), "--out", str(out)]
    )
    assert outcome.exit_code == 0, outcome.output
    text = out.read_text()
    assert "| Colour |" in text and "| Hash, whole photo |" in text
    assert "nowhere/model.pt" in text and "overall recall@1" in text and "| *chance* |" in text
    assert "visnet eval --data" in text and "![recall per method](results_recall.png)" in text
    assert (out.parent / "results_recall.png").stat().st_size > 0
    photos = len({pair.photo for pair in read_set(data).pairs["test"]})
    heading = f"## Detection (test split, {photos} photos)"
    assert "| Tiny detector |" in text and "`nowhere/detector.pt`" in text
    assert text.index("## Overall recall@k") < text.index(heading) < text.index("## Rows not run")
    assert f"visnet detect eval --data {data} --model {detector} --split test" in text
    stored = json.loads(out.with_suffix(".json").read_text())["detectors"]
    assert [entry["label"] for entry in stored] == ["Tiny detector"]
    assert stored[0]["metrics"]["photos"] == photos and "box_recall@0.5" in stored[0]["metrics"]
    summary = run_report(data, config, out, progress=False)  # cached now
    assert len(summary["rows"]) == 2 and len(summary["skipped_rows"]) == 2
    assert len(summary["detectors"]) == 1


def test_report_config_errors_name_the_file(data: Path, tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[[run]]\nlabel = 3\n", encoding="utf-8")
    outcome = CliRunner().invoke(app, ["report", "--data", str(data), "--config", str(config)])
    assert outcome.exit_code == 2 and "broken.toml" in outcome.output


def test_the_shipped_config_loads() -> None:
    config = load_report_config(Path(__file__).parents[2] / "configs" / "report.toml")
    assert [run.model for run in config.runs][:4] == [
        "colour-histogram",
        "texture",
        "phash",
        "untrained",
    ]
    assert [spec.detector for spec in config.detectors] == [
        "models/detector-previous.pt",
        "models/detector-default.pt",
    ]


def test_report_config_reads_detectors(tmp_path: Path) -> None:
    config = tmp_path / "report.toml"
    config.write_text('[[run]]\nmodel = "phash"\n', encoding="utf-8")
    assert load_report_config(config).detectors == []
    config.write_text(
        '[[run]]\nmodel = "phash"\n\n[[detectors]]\nlabel = "Old"\ndetector = "models/a.pt"\n\n'
        '[[detectors]]\ndetector = "models/b.pt"\n',
        encoding="utf-8",
    )
    assert load_report_config(config).detectors == [
        DetectorSpec("Old", "models/a.pt"),
        DetectorSpec("models/b.pt", "models/b.pt"),  # the label defaults to the checkpoint
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[[detectors]]\nlabel = "No file"\n', "detectors 1 needs a string 'detector'"),
        ('[[detectors]]\ndetector = "a.pt"\n\n[[detectors]]\ndetector = 3\n', "detectors 2 "),
        ('[[detectors]]\ndetector = " "\n', "detectors 1: 'detector' is empty"),
        ('[detectors]\ndetector = "a.pt"\n', "must be [[detectors]] tables"),
    ],
)
def test_a_malformed_detector_entry_is_named(tmp_path: Path, text: str, error: str) -> None:
    config = tmp_path / "broken.toml"
    config.write_text(text + '\n[[run]]\nmodel = "phash"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="broken.toml") as raised:
        load_report_config(config)
    assert error in str(raised.value)


def test_detection_table_puts_each_metric_in_its_column() -> None:
    metrics = {
        "box_recall@0.5": 0.875,
        "top1_box_recall@0.5": 0.5,
        "product_ap@0.5": 0.4321,
        "category_accuracy": 0.9,
        "all_products_ap@0.5": 1 / 3,
        "all_products_recall@0.5": 0.75,
        "all_products_photos": 0.25,
        "all_products": 12,
        "boxes": 8,
        "photos": 8,
        "ms_per_photo_median": 41.6,
        "arch": "efficientnet_lite0_fpn",
        "min_size": 320,
        "skipped": 0,
    }
    entries = [
        {"label": "New", "detector": "models/new.pt", "metrics": metrics, "cores": 2},
        {"label": "Old", "detector": "models/old.pt", "metrics": {**metrics, "photos": 8}},
    ]
    entries[1]["metrics"].update({"box_recall@0.5": 0.125, "category_accuracy": None})
    config = ReportConfig(runs=[], split="test")
    command = "visnet report --data data/demo"
    text = render_report([], [], config, "data/demo", command, [], entries)
    assert "## Detection (test split, 8 photos)" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == [
        "detector",
        "any box recall@0.5 (%)",
        "top-1 box recall@0.5 (%)",
        "product AP@0.5 (%)",
        "category accuracy, best box (%)",
        "all products AP@0.5 (%)",
        "all products found (%)",
        "photos with every product found (%)",
        "ms/photo (median)",
    ]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[1:]]
    assert rows == [
        ["New", "87.5", "50.0", "43.2", "90.0", "33.3", "75.0", "25.0", "42"],
        ["Old", "12.5", "50.0", "43.2", "–", "33.3", "75.0", "25.0", "42"],
    ]
    assert "at least half in view" in text and "street_objects.json" in text
    assert "decoding excluded, 2 cores." in text and "12 products in all" in text
    assert "New: `models/new.pt`, efficientnet_lite0_fpn at 320 px" in text
    assert "visnet detect eval --data data/demo --model models/old.pt --split test" in text


def test_detector_crops_run_the_protocol_with_a_detector(tmp_path: Path) -> None:
    import torch

    from visnet.data.street2shop import read_set
    from visnet.detect import Detector, DetectorConfig
    from visnet.eval.protocol import evaluate

    root = tmp_path / "set"
    make_synthetic_set(root, seed=0)
    torch.manual_seed(0)
    categories = tuple(read_set(root).categories)
    config = DetectorConfig(
        categories=categories, arch="mobilenet_v3_large_320_fpn", min_size=128, max_size=128
    )
    path = Detector(config).configure(score_threshold=0.0).save(tmp_path / "d.pt")
    result = evaluate(root, "colour-histogram", crops="detector", detector=path, progress=False)
    assert result["crops"] == "detector" and result["detector_boxes"] == 3
    assert result["queries"] == len(read_set(root).pairs["test"])
    single = evaluate(
        root, "colour-histogram", crops="detector", detector=path, detector_boxes=1, progress=False
    )
    assert single["detector_boxes"] == 1 and single["queries"] == result["queries"]
    shopper = evaluate(
        root, "colour-histogram", crops="detector", detector=path, detector_boxes=0, progress=False
    )
    assert shopper["detector_boxes"] == 0 and shopper["queries"] == result["queries"]
    with pytest.raises(ValueError, match="detector_boxes"):
        evaluate(root, "colour-histogram", crops="detector", detector=path, detector_boxes=-1)
    # a detector that finds nothing searches every whole photo, exactly as crops="none" does
    blind = Detector(config).configure(score_threshold=1.0).save(tmp_path / "blind.pt")
    nothing = evaluate(root, "colour-histogram", crops="detector", detector=blind, progress=False)
    whole = evaluate(root, "colour-histogram", crops="none", progress=False)
    assert nothing["overall"] == whole["overall"] and nothing["queries"] == whole["queries"]
    with pytest.raises(ValueError, match="needs --detector"):
        evaluate(root, "colour-histogram", crops="detector", progress=False)


def test_eval_and_serving_return_the_same_top_products_for_the_same_crop(
    pristine: Path, tmp_path: Path
) -> None:
    """Same crop, same PCA, same vectors: the protocol's ranking of each test pair is what the
    index the service opens returns for the crop the service cuts from the same detection."""
    from visnet.detect import Detections, shop_the_look
    from visnet.embed.registry import embedder_fingerprint
    from visnet.eval.cache import EmbeddingCache
    from visnet.eval.protocol import embed_queries, embed_shop, rank_queries, reduce_dims
    from visnet.index.build import build_index
    from visnet.index.catalog_index import CatalogIndex

    embedder, dim, depth = ColourHistogram(), 8, 4
    build_index(pristine, embedder, tmp_path / "index", dim=dim, precompute_k=0)
    data = read_set(pristine)
    pairs = data.pairs["test"]
    # a detector that finds each true box: eval grows it as the service grows a detection
    boxes = {p.photo: [(p.bbox.as_xyxy(), 0.0)] for p in pairs}
    assert len(boxes) == len(pairs)
    cache = EmbeddingCache(None)
    shop = embed_shop(data, embedder, cache, {}, progress=False)
    crops = embed_queries(data, embedder, "test", "detector", cache, {}, False, boxes)
    assert crops.ids == list(range(len(pairs)))
    shop_vectors, query_vectors, pca = reduce_dims(shop.vectors, crops.vectors, dim)
    rows, bonus = [[i] for i in range(len(pairs))], np.zeros(len(pairs), np.float32)
    rankings = rank_queries(data, shop.ids, shop_vectors, pairs, query_vectors, depth, rows, bonus)
    assert pca is not None
    index = CatalogIndex.open(  # refused unless the index holds this very PCA
        tmp_path / "index",
        model_fingerprint=embedder_fingerprint(embedder),
        pca_fingerprint=pca.fingerprint,
    )
    try:
        for pair, ranking in zip(pairs, rankings, strict=True):
            image = load_image(data.photo_path(pair.photo))
            box = np.array([pair.bbox.as_xyxy()], np.float32)
            found = Detections(box, [pair.category], np.ones(1, np.float32))
            [(obj, crop)] = shop_the_look(image, found)  # what the service's engine searches
            hits = index.search(embedder.embed([crop])[0], k=depth, category=obj.label)
            assert [int(hit.product_id) for hit in hits] == ranking
    finally:
        index.close()


def test_a_query_of_several_crops_ranks_by_its_best_crop_plus_that_crops_bonus() -> None:
    from visnet.eval.protocol import _search

    rng = np.random.default_rng(0)
    database, vectors = rng.normal(size=(40, 8)), rng.normal(size=(7, 8))
    queries = [[0], [1, 2, 3], [4, 5], [6]]
    bonus = rng.uniform(-0.5, 0.0, size=7)
    found = _search(database, vectors, queries, bonus, top=10, chunk=3)
    for query, rows in enumerate(queries):
        naive = [max(vectors[r] @ database[i] + bonus[r] for r in rows) for i in range(40)]
        assert found[query].tolist() == np.argsort(naive)[::-1][:10].tolist()
