"""The web page's shopper events in Debian's Chromium: the result lists it shows and the result
clicked reach `POST /v1/events` and the log, under an opaque session id; a page that cannot send
them works as before."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from service_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    build_tiny_catalog,
    running_server,
    service_settings,
)

from visnet.feedback import EventLog
from visnet.service import create_app

WAIT_MS = 20_000

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")


@dataclass
class Site:
    url: str
    root: Path
    index: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root, index = build_tiny_catalog(tmp_path_factory.mktemp("events"))
    app = create_app(service_settings(index=index, model="colour-histogram"))
    with running_server(app) as url:
        yield Site(url, root, index)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _page(browser: Any) -> Any:
    page = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
    page.set_default_timeout(WAIT_MS)
    return page


def _posted(page: Any) -> list[dict]:
    """Every batch the page posts to /v1/events from now on, parsed."""
    batches: list[dict] = []

    def seen(request: Any) -> None:
        if request.method == "POST" and request.url.endswith("/v1/events"):
            batches.append(json.loads(request.post_data))

    page.on("request", seen)
    return batches


def _search(page: Any, site: Site, photo: str = "1.jpg") -> None:
    page.goto(site.url + "/")
    page.wait_for_selector("#category option:nth-child(2)", state="attached")
    page.set_input_files("#file", str(site.root / "photos" / photo))
    page.wait_for_selector("#results .card")


def _until(found: Callable[[], Any], page: Any, what: str) -> Any:
    """Wait (the page's timers running) until `found()` is truthy; return it."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        page.wait_for_timeout(200)
    raise AssertionError(f"the page never sent {what}")


def _events(batches: list[dict], **match: Any) -> list[dict]:
    return [
        e
        for b in list(batches)
        for e in b["events"]
        if all(e.get(k) == v for k, v in match.items())
    ]


def test_the_page_posts_impressions_and_a_click_on_a_result(browser: Any, site: Site) -> None:
    page = _page(browser)
    batches = _posted(page)
    _search(page, site)
    query_id = page.get_attribute("#results .grid", "data-query-id")
    cards = page.locator("#results .card")
    shown = [cards.nth(i).get_attribute("data-product-id") for i in range(cards.count())]
    second = shown[1]
    cards.nth(1).click()
    page.wait_for_selector("#similar .card")

    (click,) = _until(lambda: _events(batches, type="click"), page, "a click")
    assert click == {"type": "click", "query_id": query_id, "product": second, "position": 2}
    (search,) = _until(lambda: _events(batches, query_kind="search"), page, "the search list")
    assert search["query_id"] == query_id and search["model"] and search["index"]
    assert search["shown"] == [{"product": p, "position": i} for i, p in enumerate(shown, 1)]
    assert re.fullmatch(r"[0-9a-f]{32}", search["query_image"])
    (similar,) = _until(lambda: _events(batches, query_kind="similar"), page, "more like this")
    assert similar["anchor"] == second
    assert similar["query_id"] == page.get_attribute("#similar", "data-query-id")
    similar_cards = page.locator("#similar .card")
    assert len(similar["shown"]) == similar_cards.count()

    # one opaque session for the tab, and nothing else about the shopper
    session = page.evaluate("sessionStorage.getItem('visnet.session')")
    assert re.fullmatch(r"[0-9a-f]{32}", session)
    assert all(set(b) == {"session", "events"} and b["session"] == session for b in batches)

    # a click in "more like this" names its own list
    third = similar_cards.nth(2).get_attribute("data-product-id")
    similar_cards.nth(2).click()
    page.wait_for_selector(f"#product[data-product-id='{third}']")
    again = _until(lambda: _events(batches, type="click", position=3), page, "the second click")
    assert again == [{**again[0], "query_id": similar["query_id"], "product": third}]

    with EventLog(site.index / "events.sqlite", create=False) as log:
        lists = {s.query_id: s for s in log.shown_lists()}
    assert lists[query_id].clicked == {2} and lists[query_id].session == session
    assert lists[similar["query_id"]].clicked == {3}
    assert page.locator("#banner").is_hidden()
    page.context.close()


def test_a_hidden_page_sends_what_waits_at_once(browser: Any, site: Site) -> None:
    page = _page(browser)
    _search(page, site, "5.jpg")
    query_id = page.get_attribute("#results .grid", "data-query-id")
    page.goto("about:blank")  # before the 3 s timer: the page hides, a beacon carries it
    path = site.index / "events.sqlite"

    def logged() -> bool:
        with EventLog(path, create=False) as log:
            return any(s.query_id == query_id for s in log.shown_lists())

    _until(logged, page, "the impression on page hide")
    page.context.close()


@pytest.mark.parametrize("failure", ["abort", "500", "no-script"])
def test_the_page_works_when_events_cannot_be_sent(browser: Any, site: Site, failure: str) -> None:
    page = _page(browser)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    if failure == "abort":
        page.route("**/v1/events", lambda route: route.abort())
    elif failure == "500":
        page.route("**/v1/events", lambda route: route.fulfill(status=500, body="{}"))
    else:
        page.route("**/static/events.js", lambda route: route.fulfill(status=404, body=""))
    _search(page, site)
    page.locator("#results .card").nth(1).click()
    page.wait_for_selector("#similar .card")
    page.wait_for_timeout(3500)  # past the impressions' timer
    page.locator("#similar .card").first.click()
    page.wait_for_selector("#similar .card")
    assert page.locator("#banner").is_hidden()
    assert errors == []
    page.context.close()


def test_events_refused_for_a_while_are_sent_after_retry_after(browser: Any, site: Site) -> None:
    page = _page(browser)
    refusals: list[str] = []

    def once(route: Any) -> None:
        if refusals:
            route.continue_()
            return
        refusals.append(route.request.post_data)
        body = json.dumps({"error": "rate_limited", "message": "wait"})
        route.fulfill(status=429, headers={"Retry-After": "1"}, body=body)

    page.route("**/v1/events", once)
    _search(page, site, "3.jpg")
    query_id = page.get_attribute("#results .grid", "data-query-id")
    page.locator("#results .card").first.click()  # the click goes at once, and is refused
    page.wait_for_selector("#similar .card")
    assert '"type":"click"' in _until(lambda: refusals, page, "the first batch")[0]
    path = site.index / "events.sqlite"

    def logged() -> bool:
        with EventLog(path, create=False) as log:
            return any(s.query_id == query_id and s.clicked == {1} for s in log.shown_lists())

    _until(logged, page, "the refused batch again")
    assert page.locator("#banner").is_hidden()
    page.context.close()


def _bulk_impressions(page: Any, count: int, products: list[str], prefix: str) -> list[str]:
    """Queue `count` result lists on the page (as it would after many searches, its sends
    refused meanwhile); their query ids."""
    ids = [f"{prefix}-{n:04d}" for n in range(count)]
    page.evaluate(
        """([ids, products]) => ids.forEach((queryId) => shopperEvents.shown(
            {kind: "search", queryId, model: "test-model", products}))""",
        [ids, products],
    )
    return ids


def test_the_page_splits_what_waits_into_bodies_a_beacon_takes(browser: Any, site: Site) -> None:
    """`batches` (through the page): every body at most 60,000 UTF-8 bytes and 50 events, the
    events in their order, none lost, each body the JSON the service reads."""
    page = _page(browser)
    page.goto(site.url + "/")
    found = page.evaluate(
        """() => {
          const events = [];
          for (let n = 0; n < 180; n++) {
            const shown = [];
            for (let p = 1; p <= 1 + (n * 37) % 100; p++) {
              shown.push({product: "é".repeat(n % 3) + "p".repeat(60) + p, position: p});
            }
            events.push({type: "impression", query_id: "q-" + n, query_kind: "search",
                         model: "m", shown});
          }
          const out = shopperEvents.batches(events, "session-0001");
          return {
            events,
            sizes: out.map((b) => new TextEncoder().encode(b.body).length),
            claimed: out.map((b) => b.size),
            bodies: out.map((b) => JSON.parse(b.body)),
          };
        }"""
    )
    bodies = found["bodies"]
    assert len(bodies) > 1
    assert found["sizes"] == found["claimed"] and max(found["sizes"]) <= 60_000
    assert all(b["session"] == "session-0001" and 1 <= len(b["events"]) <= 50 for b in bodies)
    assert [e for b in bodies for e in b["events"]] == found["events"]
    # full: each body but the last would be over a limit with the next event
    sizes, count = found["sizes"], 0
    for size, body in zip(sizes[:-1], bodies[:-1], strict=True):
        count += len(body["events"])
        following = json.dumps(found["events"][count], separators=(",", ":"), ensure_ascii=False)
        assert len(body["events"]) == 50 or size + 1 + len(following.encode()) > 60_000
    page.context.close()


def test_a_hidden_page_loses_none_of_a_backlog_over_the_beacon_limit(
    browser: Any, site: Site
) -> None:
    """Beacons hold 64 KiB in flight together: a backlog of 200 lists (about 90 kB) goes as
    beacons under that, and the rest from the tab's next page."""
    page = _page(browser)
    _search(page, site, "2.jpg")
    cards = page.locator("#results .card")
    products = [cards.nth(i).get_attribute("data-product-id") for i in range(cards.count())]
    ids = _bulk_impressions(page, 200, products, "backlog")  # all the page keeps
    shown = [{"product": p, "position": i} for i, p in enumerate(products, 1)]
    one = {"type": "impression", "query_id": ids[0], "query_kind": "search", "shown": shown}
    assert len(ids) * len(json.dumps(one, separators=(",", ":"))) > 80 * 1024
    page.goto(site.url + "/")  # hidden before the 3 s timer: beacons, then the next page
    path = site.index / "events.sqlite"

    def logged() -> bool:
        with EventLog(path, create=False) as log:
            return {s.query_id for s in log.shown_lists()} >= set(ids)

    _until(logged, page, "every list of the backlog")
    assert page.evaluate("sessionStorage.getItem('visnet.pending')") is None
    page.context.close()
