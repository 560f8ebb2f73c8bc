"""Screenshot the web page on a real index into docs/: the pictures in the README.

Serves INDEX with MODEL (and DETECTOR) on a free localhost port and drives Debian's Chromium
through three views, each at a desktop and a phone width, saved side by side in one picture:

- `landing.png`: the page as a new user first sees it (sample photos, category tiles);
- `search.png`: a street photo searched, every detected box drawn, the results;
- `product.png`: the first result's product page with its look-alikes.

    .venv/bin/python scripts/docs_screenshot.py --data data/demo --index data/demo-index \\
        --model models/visnet-default.pt --detector models/detector-default.pt

The photo is the test split's first pair unless --photo names one (a path or a photo id). The
index should have sample photos (`visnet samples --data data/demo --out INDEX/samples`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from visnet.data.street2shop import read_set
from visnet.service import create_app, load_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "service"))
from service_helpers import CHROMIUM, CHROMIUM_ARGS, running_server  # noqa: E402

# (name, viewport width, viewport height): a laptop and a phone (iPhone 12-15: 390 x 844)
WIDTHS = (("desktop", 1280, 860), ("phone", 390, 844))
GAP = 24  # pixels between the desktop and the phone picture


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/demo"))
    p.add_argument("--index", type=Path, default=Path("data/demo-index"))
    p.add_argument("--model", default="models/visnet-default.pt")
    p.add_argument("--detector", default=None)
    p.add_argument("--photo", default=None, help="a photo file or a street photo id")
    p.add_argument("--out", type=Path, default=Path("docs"), help="folder for the pictures")
    return p.parse_args()


def pick_photo(data_dir: Path, photo: str | None) -> Path:
    if photo is not None and Path(photo).is_file():
        return Path(photo)
    if photo is not None and not photo.isdigit():
        raise SystemExit(f"--photo {photo!r} is neither a file nor a photo id")
    data = read_set(data_dir)
    if photo is None and not data.pairs.get("test"):
        raise SystemExit(f"{data_dir} has no test pairs; give --photo")
    photo_id = int(photo) if photo is not None else data.pairs["test"][0].photo
    path = data.photo_path(photo_id)
    if path is None:
        raise SystemExit(f"street photo {photo_id} is missing from {data_dir}")
    return path


def images_loaded(page: Any, scope: str) -> None:
    """Wait until every image of `scope` in the first screenful has loaded (lazy ones outside it,
    below or in a strip scrolled sideways, never load in a screenshot)."""
    page.wait_for_function(
        f"() => [...document.querySelectorAll('{scope} img')]"
        ".filter(i => { const r = i.getBoundingClientRect();"
        " return r.width && r.top < innerHeight && r.left < innerWidth; })"
        ".every(i => i.complete)"
    )


def landing(page: Any, url: str, photo: Path) -> None:
    page.goto(url + "/")
    page.wait_for_selector("#tiles li")
    images_loaded(page, "#main")


def search(page: Any, url: str, photo: Path) -> None:
    landing(page, url, photo)
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#results .card")
    page.evaluate("document.querySelector('#query').scrollIntoView()")  # the photo and results
    images_loaded(page, "#results")


def product(page: Any, url: str, photo: Path) -> None:
    search(page, url, photo)
    page.locator("#results .card").first.click()
    page.wait_for_selector("#similar .card")
    images_loaded(page, "#view-product")


VIEWS: dict[str, Callable[[Any, str, Path], None]] = {
    "landing": landing,
    "search": search,
    "product": product,
}


def side_by_side(paths: list[Path], out: Path) -> None:
    """The pictures in a row on white, tops aligned."""
    shots = [Image.open(p).convert("RGB") for p in paths]
    width = sum(s.width for s in shots) + GAP * (len(shots) - 1)
    sheet = Image.new("RGB", (width, max(s.height for s in shots)), "white")
    x = 0
    for shot in shots:
        sheet.paste(shot, (x, 0))
        x += shot.width + GAP
    sheet.save(out, optimize=True)


def main() -> None:
    from playwright.sync_api import sync_playwright

    args = parse_args()
    photo = pick_photo(args.data, args.photo)
    settings = load_settings(
        index=args.index, model=args.model, detector=args.detector, compute_threads=1
    )
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        running_server(create_app(settings)) as url,
        sync_playwright() as playwright,
        tempfile.TemporaryDirectory() as tmp,
    ):
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        for name, show in VIEWS.items():
            shots = []
            for device, width, height in WIDTHS:
                page = browser.new_page(
                    viewport={"width": width, "height": height},
                    device_scale_factor=1,
                    is_mobile=device == "phone",
                )
                page.set_default_timeout(60_000)
                show(page, url, photo)
                shots.append(Path(tmp) / f"{name}-{device}.png")
                page.screenshot(path=str(shots[-1]), full_page=False)
                page.close()
            side_by_side(shots, args.out / f"{name}.png")
            print(f"wrote {args.out / name}.png")
        browser.close()
    print(f"(query photo: {photo})")


if __name__ == "__main__":
    main()
