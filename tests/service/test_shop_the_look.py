"""Shop the look, end to end: a photo of two catalog products, sent to `POST /v1/search` on a real
server running the committed embedding model and detector, gives each product its own result
list, with that product first and, where the service filters by a detected category, the right
category.

The catalog is 12 products in 5 categories cut from the installed clip art (as the demo builder
cuts them), indexed by `visnet index build --catalog DIR`; the photo is one fixed composition
(a red fedora and a hiking boot, left and right, each about 42% of the short side, on a real
wood-floor photo), so the test is deterministic.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from service_helpers import running_server, service_settings
from typer.testing import CliRunner

from visnet.cli import app as cli
from visnet.data.compose import _fit, make_cutout, plain_view, render_source
from visnet.data.sources import (
    OPENCLIPART_DIR,
    TUXPAINT_DIR,
    background_photos,
    missing_packages,
)
from visnet.detect.crops import box_iou
from visnet.service import create_app

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "visnet-default.pt"
DETECTOR = REPO / "models" / "detector-default.pt"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(missing_packages()), reason=f"Debian packages missing: {missing_packages()}"
    ),
    pytest.mark.skipif(
        not (MODEL.is_file() and DETECTOR.is_file()),
        reason="the committed models/visnet-default.pt or models/detector-default.pt is missing",
    ),
]

# <category>/<name> in the catalog folder (id <category>.<name>) -> installed source image. Each
# pasted product has a look-alike in its own category (sombrero, high heel), and `food`, a label
# the detector trained on 2026-11-24 gave many non-food objects (at label scores up to 0.92), is
# a real category here, as in the demo catalog: a wrong label trusted as a filter hides the
# product, and the test sees it.
CATALOG = {
    "hats/red-fedora": OPENCLIPART_DIR / "people/clothing/hats/red_fedora.png",
    "hats/sombrero": OPENCLIPART_DIR / "people/clothing/hats/sombrero_dave_pena_01.png",
    "hats/baseball-cap": OPENCLIPART_DIR / "people/clothing/hats/baseball_cap_ganson.png",
    "shoes/hiking-boot": OPENCLIPART_DIR / "people/clothing/hiking_boot_jarno_vasama_.png",
    "shoes/tennis-shoe": OPENCLIPART_DIR / "people/clothing/tennis_shoe_jarno_vasama_.png",
    "shoes/red-high-heel": TUXPAINT_DIR / "clothes/red_highheel.svg",
    "bags/red-handbag": TUXPAINT_DIR / "clothes/red_handbag.svg",
    "bags/green-luggage": OPENCLIPART_DIR / "containers/valigie_bags_architetto__01.png",
    "kitchen/kettle": TUXPAINT_DIR / "household/kettle.png",
    "kitchen/mug": OPENCLIPART_DIR / "food/beverages/mug.png",
    "food/apple": OPENCLIPART_DIR / "food/fruit/apple.png",
    "food/bread": OPENCLIPART_DIR / "food/breads_and_carbs/bread.png",
}
LEFT, RIGHT = "hats/red-fedora", "shoes/hiking-boot"  # as files; ids are hats.red-fedora, ...
BACKGROUND = "Wood.jpg"  # mate-backgrounds: a light wooden floor
PHOTO_SIZE = (640, 480)
FRACTION = 0.42  # each product's longer side, as a share of the photo's short side
CENTRES = (0.27, 0.73)  # the products' centres, as shares of the photo's width
K = 5


@dataclass
class Pasted:
    product: str
    box: tuple[int, int, int, int]  # xyxy of its visible pixels


@dataclass
class Look:
    photo: bytes
    pasted: list[Pasted]
    body: dict[str, Any]


def _cutouts() -> dict[str, Image.Image]:
    return {pid: make_cutout(render_source(path)).rgba for pid, path in CATALOG.items()}


def _write_catalog(folder: Path, cutouts: dict[str, Image.Image]) -> Path:
    """A folder of category sub-folders, one white-background product shot each."""
    for pid, cut in cutouts.items():
        path = folder / f"{pid}.jpg"  # the product's id is <category>.<name>
        path.parent.mkdir(parents=True, exist_ok=True)
        plain_view(cut).save(path, quality=95)
    return folder


def _background(size: tuple[int, int]) -> Image.Image:
    found = [path for path, _ in background_photos() if path.name == BACKGROUND]
    if not found:
        pytest.skip(f"the background photo {BACKGROUND} is not installed")
    image = Image.open(found[0]).convert("RGB")
    width, height = size
    crop_w = min(image.width, image.height * width // height)
    crop_h = crop_w * height // width
    left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
    image = image.crop((left, top, left + crop_w, top + crop_h))
    return image.resize(size, Image.Resampling.BILINEAR)


def _compose(cutouts: dict[str, Image.Image]) -> tuple[bytes, list[Pasted]]:
    """The street photo: LEFT and RIGHT pasted large, apart and whole; JPEG bytes and boxes."""
    scene = _background(PHOTO_SIZE)
    width, height = PHOTO_SIZE
    pasted = []
    for product, centre in zip((LEFT, RIGHT), CENTRES, strict=True):
        obj = _fit(cutouts[product], int(min(PHOTO_SIZE) * FRACTION))
        x, y = int(width * centre - obj.width / 2), (height - obj.height) // 2
        scene.paste(obj, (x, y), obj)
        left, top, right, bottom = obj.getchannel("A").getbbox() or (0, 0, obj.width, obj.height)
        pasted.append(Pasted(product, (x + left, y + top, x + right, y + bottom)))
    a, b = (p.box for p in pasted)
    assert a[2] < b[0], "the composition must keep the two products apart"
    out = io.BytesIO()
    scene.save(out, format="JPEG", quality=90)
    return out.getvalue(), pasted


@pytest.fixture(scope="module")
def look(tmp_path_factory: pytest.TempPathFactory) -> Look:
    """Build the catalog and its index, serve it with the detector, search the photo once."""
    folder = tmp_path_factory.mktemp("shop-the-look")
    cutouts = _cutouts()
    catalog = _write_catalog(folder / "catalog", cutouts)
    index = folder / "index"
    built = CliRunner().invoke(
        cli,
        ["index", "build", "--catalog", str(catalog), "--model", str(MODEL), "--out", str(index)],
    )
    assert built.exit_code == 0, built.output
    photo, pasted = _compose(cutouts)
    settings = service_settings(index=index, model=str(MODEL), detector=DETECTOR)
    with (
        running_server(create_app(settings), timeout=120) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        response = client.post(
            "/v1/search",
            files={"image": ("look.jpg", photo, "image/jpeg")},
            data={"k": str(K)},
        )
    assert response.status_code == 200, response.text
    return Look(photo, pasted, response.json())


def _describe(look: Look) -> str:
    """What the service answered, for failure messages: each query's box, detector output and
    results, and the pasted boxes they should match."""
    lines = [f"pasted: {[(p.product, p.box) for p in look.pasted]}"]
    for i, query in enumerate(look.body["queries"]):
        box = [round(v) for v in query["box"]] if query["box"] else None
        ious = [round(box_iou(query["box"], p.box), 2) for p in look.pasted] if box else None
        lines.append(
            f"query {i}: box {box} iou {ious} label {query['label']} score {query['score']} "
            f"label_score {query['label_score']} category {query['category']} results "
            f"{[(r['product_id'], round(r['score'], 3)) for r in query['results']]}"
        )
    return "\n".join(lines)


def _matched(look: Look) -> dict[str, int]:
    """Pasted product -> the index of the query whose box overlaps its box best (IoU >= 0.5)."""
    found = {}
    for pasted in look.pasted:
        overlaps = [
            (box_iou(query["box"], pasted.box), i)
            for i, query in enumerate(look.body["queries"])
            if query["box"] is not None
        ]
        best = max(overlaps, default=(0.0, -1))
        if best[0] >= 0.5:
            found[pasted.product] = best[1]
    return found


def test_two_products_give_two_result_lists(look: Look) -> None:
    queries = look.body["queries"]
    assert len(queries) >= 2, _describe(look)
    matched = _matched(look)
    assert set(matched) == {LEFT, RIGHT}, (
        f"no detected box overlaps {sorted({LEFT, RIGHT} - set(matched))} by IoU >= 0.5\n"
        + _describe(look)
    )
    assert matched[LEFT] != matched[RIGHT], _describe(look)


def test_each_list_has_its_own_product_first(look: Look) -> None:
    matched = _matched(look)
    lists = {}
    for product, i in matched.items():
        results = look.body["queries"][i]["results"]
        assert results, _describe(look)
        assert results[0]["product_id"] == product.replace("/", "."), _describe(look)
        lists[product] = [r["product_id"] for r in results]
    assert set(lists) == {LEFT, RIGHT}, _describe(look)
    assert lists[LEFT] != lists[RIGHT], _describe(look)


def test_each_list_searches_its_own_category(look: Look) -> None:
    """`category` is the filter the service used: the detected label when the detector was sure
    enough of it, else null (all categories). A filter used must be the product's category."""
    matched = _matched(look)
    assert set(matched) == {LEFT, RIGHT}, _describe(look)
    for product, i in matched.items():
        query = look.body["queries"][i]
        assert query["results"][0]["category"] == product.split("/")[0], _describe(look)
        if query["category"] is not None:
            assert query["category"] == product.split("/")[0], _describe(look)
            assert all(r["category"] == query["category"] for r in query["results"])
