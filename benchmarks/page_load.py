"""How fast the search page opens: real Chromium against a real server on a real index.

    .venv/bin/python benchmarks/page_load.py --index data/demo-index \\
        --model models/visnet-default.pt [--detector models/detector-default.pt] [--loads 5]

Serves INDEX on a free localhost port (the model loads before the first request), then opens
`/` in headless Chromium LOADS times, each in a fresh browser context (nothing cached), and
reports per load: the browser's load event, and the time until the page shows what a new user
sees first (the sample strip, when the index has samples, and the category tiles). Prints a
table with the median; every request the page makes is to the server itself (the content
policy allows nothing else), and the count of requests elsewhere is printed to show it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from visnet.service import create_app, load_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "service"))
from service_helpers import CHROMIUM, CHROMIUM_ARGS, running_server  # noqa: E402

READY = "a.tile[data-category]"  # a category tile: the catalog has been listed and drawn


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--index", type=Path, default=Path("data/demo-index"))
    p.add_argument("--model", default="models/visnet-default.pt")
    p.add_argument("--detector", default="", help='a detector checkpoint ("": none)')
    p.add_argument("--loads", type=int, default=5)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    settings = load_settings(index=args.index, model=args.model, detector=args.detector or None)
    rows = []
    with (
        running_server(create_app(settings), timeout=300) as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        for _ in range(args.loads):
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            page = context.new_page()
            outside: list[str] = []

            def note(request, elsewhere=outside):  # type: ignore[no-untyped-def]
                if not request.url.startswith(url):
                    elsewhere.append(request.url)

            page.on("request", note)
            start = time.perf_counter()
            page.goto(url + "/", wait_until="load")
            loaded = time.perf_counter() - start
            page.wait_for_selector(READY, state="visible")
            if (args.index / "samples" / "samples.json").is_file():
                page.wait_for_selector("#samples .sample img", state="visible")
            shown = time.perf_counter() - start
            samples = page.locator("#samples .sample").count()
            rows.append((loaded, shown, samples, len(outside)))
            context.close()
        browser.close()
    print("| load | load event (ms) | first content shown (ms) | samples | requests elsewhere |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for i, (loaded, shown, samples, outside) in enumerate(rows, 1):
        print(f"| {i} | {1000 * loaded:.0f} | {1000 * shown:.0f} | {samples} | {outside} |")
    median_load = 1000 * statistics.median(r[0] for r in rows)
    median_shown = 1000 * statistics.median(r[1] for r in rows)
    print(f"| median | {median_load:.0f} | {median_shown:.0f} | | |")


if __name__ == "__main__":
    main()
