"""The box a detector gives each labelled product of a split's street photos, as a file.

Search cuts a shopper's query at a detected box (`shoppers_box`, `QUERY_MARGIN`), not at the
labelled one, and the two differ by a few pixels to a loose fit. The embedding trainer reads this
file (`visnet train --street-boxes FILE`) and learns from the detected crops as well as the
labelled ones, so a query cut by the detector reads as the product it shows.

One JSON object a line: `photo`, `product` (the pair's ids), `box` (left, top, width, height in
pixels, as the data set's boxes) and `iou` with the labelled box. `visnet detect boxes` writes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from visnet.data.street2shop import Box
from visnet.detect.crops import box_iou, shoppers_box
from visnet.io import JsonLinesError, read_jsonl, write_jsonl_atomic

# A detected box covering less of the product than this is another object (`shoppers_box` falls
# back to the best box when nothing covers the product): it teaches nothing about the product.
MIN_IOU = 0.5


@dataclass(frozen=True)
class StreetBox:
    """The detected box of one labelled product in one street photo."""

    photo: int
    product: int
    box: Box
    iou: float


def detect_street_boxes(detector: Any, data: Any, split: str = "train") -> Iterator[StreetBox]:
    """The shopper's box of every pair of `split` (each photo detected once). Photos that are
    missing or unreadable are skipped with a warning; a photo where nothing is detected gives
    no row."""
    by_photo: dict[int, list[Any]] = {}
    for pair in data.pairs.get(split, []):
        by_photo.setdefault(pair.photo, []).append(pair)
    if not by_photo:
        raise ValueError(f"the data set has no street photos in split {split!r}")
    photos = tqdm(sorted(by_photo), desc=f"detect {split}", unit="photo")
    for photo, image in data.readable_photos(photos):
        found = detector.detect([image])[0]
        for pair in by_photo[photo]:
            wanted = pair.bbox.as_xyxy()
            clicked = shoppers_box(found, wanted)
            if clicked:
                x0, y0, x1, y1 = clicked[0][0]
                box = Box(x0, y0, x1 - x0, y1 - y0)
                yield StreetBox(photo, pair.product, box, box_iou(clicked[0][0], wanted))


def write_street_boxes(path: Path | str, boxes: Iterable[StreetBox]) -> int:
    """Write `boxes` to `path` (replaced only once every row is written); the row count."""
    rows = (
        {
            "photo": b.photo,
            "product": b.product,
            "box": {k: round(v, 1) for k, v in b.box.to_json().items()},
            "iou": round(b.iou, 4),
        }
        for b in boxes
    )
    return write_jsonl_atomic(path, rows)


def read_street_boxes(path: Path | str) -> list[StreetBox]:
    """The rows of a street-box file; a malformed row raises `JsonLinesError` naming its line."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no street-box file at {path} (write one: visnet detect boxes)")
    rows = []
    for line, item in read_jsonl(path):
        try:
            raw = item["box"]
            box = Box(*(float(raw[k]) for k in ("left", "top", "width", "height")))
            if box.width <= 0 or box.height <= 0:
                raise ValueError(f"empty box {raw}")
            rows.append(
                StreetBox(int(item["photo"]), int(item["product"]), box, float(item["iou"]))
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise JsonLinesError(path, line, f"not a street box ({exc!r})") from exc
    return rows
