"""Screenshot the search page on a real index into docs/ (the picture at the top of the README).

Serves INDEX with MODEL (and DETECTOR) on a free localhost port, uploads a street photo of the
test split in Debian's Chromium, and saves the page once the results are in:

    .venv/bin/python scripts/docs_screenshot.py --data data/demo --index data/demo-index \\
        --model models/visnet-default.pt --detector models/detector-default.pt

The photo is the test split's first pair unless --photo names one (a path or a photo id).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from visnet.data.street2shop import read_set
from visnet.service import create_app, load_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "service"))
from service_helpers import CHROMIUM, CHROMIUM_ARGS, running_server  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/demo"))
    p.add_argument("--index", type=Path, default=Path("data/demo-index"))
    p.add_argument("--model", default="models/visnet-default.pt")
    p.add_argument("--detector", default=None)
    p.add_argument("--photo", default=None, help="a photo file or a street photo id")
    p.add_argument("--out", type=Path, default=Path("docs/search-page.png"))
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=900)
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


def main() -> None:
    from playwright.sync_api import sync_playwright

    args = parse_args()
    photo = pick_photo(args.data, args.photo)
    settings = load_settings(
        index=args.index, model=args.model, detector=args.detector, compute_threads=1
    )
    with running_server(create_app(settings)) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.set_default_timeout(60_000)
        page.goto(url + "/")
        page.wait_for_selector("#category option:nth-child(2)", state="attached")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#results .card")
        page.wait_for_function(
            "() => [...document.querySelectorAll('#results img')].every(i => i.complete)"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=False)
        browser.close()
    print(f"wrote {args.out} (query: {photo})")


if __name__ == "__main__":
    main()
