"""Real photographs searched on a real index, as a picture: what a shopper's photo finds.

Serves INDEX with MODEL (and DETECTOR) on a free localhost port, sends each real photograph that
scikit-image and scikit-learn ship (none of them is used to make the demo set: see
`visnet.data.sources.REAL_PHOTO_QUERIES`) to `POST /v1/search`, and draws one row per photo: the
photo with every detected box (the first, most confident, in red, the others in blue, with the
category each filtered by, if any), then the top results of the first box.

    .venv/bin/python scripts/real_photos.py --index data/demo-index \\
        --model models/visnet-default.pt --detector models/detector-default.pt

Writes docs/real-photos.png and prints each photo's boxes and top titles.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

from visnet.data.sources import real_photo_queries
from visnet.service import create_app, load_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "service"))
from service_helpers import running_server  # noqa: E402

THUMB = 150
LABEL = 34


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--index", type=Path, default=Path("data/demo-index"))
    p.add_argument("--model", default="models/visnet-default.pt")
    p.add_argument("--detector", default="models/detector-default.pt", help='"": none')
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("docs/real-photos.png"))
    return p.parse_args()


def _thumb(image: Image.Image, boxes: Sequence[list[float] | None] = ()) -> Image.Image:
    image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    for i, box in reversed(list(enumerate(boxes))):  # the first drawn last, on top
        if box is not None:
            colour = (230, 30, 30) if i == 0 else (40, 90, 230)
            draw.rectangle(box, outline=colour, width=max(3, image.width // 100))
    image.thumbnail((THUMB, THUMB))
    tile = Image.new("RGB", (THUMB, THUMB + LABEL), "white")
    tile.paste(image, ((THUMB - image.width) // 2, (THUMB - image.height) // 2))
    return tile


def _caption(tile: Image.Image, lines: list[str]) -> Image.Image:
    draw = ImageDraw.Draw(tile)
    for i, line in enumerate(lines[:2]):
        draw.text((3, THUMB + 2 + 15 * i), line[:24], fill=(20, 20, 20))
    return tile


def search(client: httpx.Client, url: str, photo: Path, top: int) -> dict:
    with photo.open("rb") as f:
        response = client.post(
            f"{url}/v1/search", files={"image": (photo.name, f)}, data={"k": str(top)}
        )
    response.raise_for_status()
    return response.json()


def main() -> None:
    args = parse_args()
    photos = real_photo_queries()
    if not photos:
        raise SystemExit("no real photographs found: install scikit-image and scikit-learn")
    settings = load_settings(
        index=args.index, model=args.model, detector=args.detector or None, compute_threads=1
    )
    rows = []
    with (
        running_server(create_app(settings), timeout=300) as url,
        httpx.Client(timeout=120) as client,
    ):
        for photo in photos:
            answer = search(client, url, photo, args.top)
            first = answer["queries"][0]
            labels = [q.get("label") or "whole photo" for q in answer["queries"]]
            query = _caption(
                _thumb(Image.open(photo), [q["box"] for q in answer["queries"]]),
                [photo.name, f"{len(labels)} box(es): {', '.join(labels)}"],
            )
            tiles = [query]
            titles = []
            for hit in first["results"][: args.top]:
                data = client.get(url + hit["image_url"]).content if hit["image_url"] else None
                image = Image.open(io.BytesIO(data)) if data else Image.new("RGB", (THUMB, THUMB))
                tiles.append(_caption(_thumb(image), [hit["title"], f"{hit['score']:.2f}"]))
                titles.append(hit["title"])
            rows.append(tiles)
            boxes = [
                f"{q.get('label') or 'whole photo'} {q.get('score') or 0:.2f}"
                + (f" (filtered: {q['category']})" if q.get("category") else "")
                for q in answer["queries"]
            ]
            print(f"{photo.name}: boxes {'; '.join(boxes)}; first box finds " + " | ".join(titles))
    width = (args.top + 1) * (THUMB + 6)
    sheet = Image.new("RGB", (width, len(rows) * (THUMB + LABEL + 6)), (235, 235, 235))
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (c * (THUMB + 6), r * (THUMB + LABEL + 6)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
