"""`POST /v1/events` against a real server: page-like impressions and clicks reach the report
with the hand-computed click-through and become review-queue triplets; bad events are named and
lose no good one; oversized batches, the rate limit, and what /openapi.json says."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_helpers import build_tiny_catalog, running_server, service_settings
from typer.testing import CliRunner

from visnet.cli import app as cli
from visnet.feedback import EventLog, query_crop_path
from visnet.feedback import queries as crop_files
from visnet.service import create_app
from visnet.service.schemas import ErrorOut, EventsOut, EventsRefusedOut
from visnet.triplets import ReviewQueue

MAX_EVENT_BYTES = 8 * 1024
SESSION_A, SESSION_B = "session-a-0001", "session-b-0002"


@dataclass
class Live:
    client: httpx.Client
    root: Path
    index: Path
    app: Any

    @property
    def events(self) -> Path:
        return self.index / "events.sqlite"


@contextmanager
def _serve(index: Path, root: Path, **changes: Any) -> Iterator[Live]:
    settings = service_settings(
        index=index, model="colour-histogram", max_event_bytes=MAX_EVENT_BYTES, **changes
    )
    app = create_app(settings)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield Live(client, root, index, app)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    root, index = build_tiny_catalog(tmp_path)
    with _serve(index, root, events_burst=1000) as server:
        yield server


# ---- what the page sends -----------------------------------------------------------------------


def _search(live: Live, photo: str, k: int = 5) -> tuple[dict, dict]:
    """The answer to a search of a catalog photo, and its one result list."""
    data = (live.root / "photos" / photo).read_bytes()
    answer = live.client.post("/v1/search", files={"image": (photo, data)}, data={"k": str(k)})
    assert answer.status_code == 200, answer.text
    return answer.json(), answer.json()["queries"][0]


def _written(live: Live, crop: str, timeout: float = 10.0) -> bool:
    """Whether the search crop `crop` is on disk within `timeout` s (a background thread
    writes it after the answer)."""
    path = query_crop_path(live.index, crop)
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _similar(live: Live, product: str, k: int = 5) -> dict:
    """A "more like this" answer over every category (a tiny category holds fewer than k)."""
    params = {"k": k, "same_category": "false"}
    answer = live.client.get(f"/v1/products/{product}/similar", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _ids(results: list[dict]) -> list[str]:
    return [r["product_id"] for r in results]


def search_impression(answer: dict, query: dict) -> dict:
    """An impression as events.js sends it for a search's result list."""
    return {
        "type": "impression",
        "query_id": query["query_id"],
        "query_kind": "search",
        "model": answer["model"],
        "index": answer["index"],
        "query_image": query["query_image"],
        "shown": [{"product": p, "position": i} for i, p in enumerate(_ids(query["results"]), 1)],
    }


def similar_impression(answer: dict) -> dict:
    """An impression as events.js sends it for a "more like this" list."""
    return {
        "type": "impression",
        "query_id": answer["query_id"],
        "query_kind": "similar",
        "model": answer["model"],
        "index": answer["index"],
        "anchor": answer["product_id"],
        "shown": [{"product": p, "position": i} for i, p in enumerate(_ids(answer["results"]), 1)],
    }


def click(listed: dict, position: int) -> dict:
    """A click on the result at `position` (1 is the first) of a list (an answer or a query)."""
    product = listed["results"][position - 1]["product_id"]
    return {
        "type": "click",
        "query_id": listed["query_id"],
        "product": product,
        "position": position,
    }


def _post(live: Live, session: str, events: list[dict]) -> httpx.Response:
    return live.client.post("/v1/events", json={"session": session, "events": events})


def _accepted(response: httpx.Response) -> EventsOut:
    assert response.status_code == 200, response.text
    return EventsOut.model_validate_json(response.content, strict=True)


# ---- end to end: page -> log -> report -> review queue ---------------------------------------


def test_page_events_give_the_hand_computed_report_and_review_triplets(
    live: Live, tmp_path: Path
) -> None:
    found_1, l1 = _search(live, "1.jpg")
    l2 = _similar(live, "1")
    l3 = _similar(live, "2")
    found_4, l4 = _search(live, "5.jpg")
    assert found_1["model"] == l2["model"] == live.app.state.engine.model_token
    assert l1["query_image"] and l1["query_image"] != l4["query_image"]
    assert len({l1["query_id"], l2["query_id"], l3["query_id"], l4["query_id"]}) == 4
    assert _written(live, l1["query_image"]) and _written(live, l4["query_image"])

    cart = {"type": "cart", "product": _ids(l1["results"])[2], "query_id": l1["query_id"]}
    buy = {"type": "purchase", "product": _ids(l2["results"])[3], "query_id": l2["query_id"]}
    wrong = {**click(l2, 5), "product": _ids(l2["results"])[1]}  # a product l2 shows elsewhere
    first = search_impression(found_1, l1)
    batches = [  # as the page batches them: a timer's worth, then each click at once
        (SESSION_A, [first, first, click(l1, 3)]),  # the list resent: counted once
        (SESSION_A, [cart, similar_impression(l2)]),
        (SESSION_A, [click(l2, 1)]),
        (SESSION_A, [click(l2, 4), buy, wrong]),
        (SESSION_B, [similar_impression(l3), search_impression(found_4, l4)]),
        (SESSION_B, [click(l4, 2)]),
    ]
    for session, events in batches:
        result = _accepted(_post(live, session, events))
        assert (result.accepted, result.rejected) == (len(events), [])

    out = tmp_path / "report.json"
    report = CliRunner().invoke(
        cli, ["feedback", "report", "--events", str(live.events), "--json", str(out)]
    )
    assert report.exit_code == 0, report.output
    figures = json.loads(out.read_text())
    assert figures["counts"] == {
        "impression": 5,
        "click": 5,
        "cart": 1,
        "purchase": 1,
        "duplicate_impressions": 1,
        "unmatched_clicks": 1,
    }
    groups = {g["kind"]: g for g in figures["groups"]}
    assert {g["model"] for g in figures["groups"]} == {found_1["model"]}
    search, similar = groups["search"], groups["similar"]
    # search: two lists, both clicked (l1 at 3, l4 at 2): 2 of 10 slots
    assert search["lists"] == {"hits": 2, "trials": 2, "ctr": 1.0, "ci95": [0.3424, 1.0]}
    assert search["slots"] == {"hits": 2, "trials": 10, "ctr": 0.2, "ci95": [0.0567, 0.5098]}
    assert {p: (r["hits"], r["trials"]) for p, r in search["positions"].items()} == {
        "1": (0, 2),
        "2": (1, 2),
        "3": (1, 2),
        "4": (0, 2),
        "5": (0, 2),
    }
    assert search["positions"]["2"]["ci95"] == [0.0945, 0.9055]
    assert search["actions"] == {"cart": 1, "purchase": 0}
    # more like this: l2 clicked at 1 and 4 (its click naming the wrong product is unmatched),
    # l3 not at all
    assert similar["lists"] == {"hits": 1, "trials": 2, "ctr": 0.5, "ci95": [0.0945, 0.9055]}
    assert similar["slots"] == {"hits": 2, "trials": 10, "ctr": 0.2, "ci95": [0.0567, 0.5098]}
    clicked = {p: r["hits"] for p, r in similar["positions"].items() if r["hits"]}
    assert clicked == {"1": 1, "4": 1}
    assert similar["actions"] == {"cart": 0, "purchase": 1}
    assert "| search | 2 | 100.0 [34.2, 100.0] | 20.0 [5.7, 51.0] | 1 | 0 |" in report.output

    queue = tmp_path / "review.sqlite"
    made = CliRunner().invoke(
        cli,
        ["triplets", "feedback", "--events", str(live.events), "--index", str(live.index)]
        + ["--queue", str(queue)],
    )
    assert made.exit_code == 0, made.output
    summary = json.loads(made.stdout)
    # skip-above: l1's click at 3 over 1 and 2; l2's at 1 has nothing above, at 4 over 2 and 3
    # (1 was clicked); l4's at 2 over 1
    assert (summary["triplets"], summary["added"], summary["clicks"]) == (5, 5, 4)
    assert summary["clicks_without_skips"] == 1 and summary["missing_query_image"] == 0
    with ReviewQueue(queue, create=False) as q:
        assert q.counts()["pending"] == 5
        lines = [item.line for item in q.items()]
    pairs = {(t["query_kind"], t["positive_product"], t["negative_product"]) for t in lines}
    s1, s2, s4 = _ids(l1["results"]), _ids(l2["results"]), _ids(l4["results"])
    assert pairs == {
        ("search", s1[2], s1[0]),
        ("search", s1[2], s1[1]),
        ("similar", s2[3], s2[1]),
        ("similar", s2[3], s2[2]),
        ("search", s4[1], s4[0]),
    }
    assert all(t["kind"] == "feedback" and t["model"] == found_1["model"] for t in lines)
    crops = {t["query_image"] for t in lines if t["query_kind"] == "search"}
    assert crops == {l1["query_image"], l4["query_image"]}


def test_search_crops_are_written_off_the_request_and_dropped_when_the_writer_lags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that stalls (here: each write waits for the test) delays no search: the answer
    names its crop at once and a background thread writes it; with the writer's queue full, a
    search answers without a crop, counted in /metrics."""
    root, index = build_tiny_catalog(tmp_path)
    entered, release = threading.Event(), threading.Event()
    atomic_path = crop_files.atomic_path

    @contextmanager
    def stalled(path: Path) -> Iterator[Path]:
        entered.set()
        release.wait(30)
        with atomic_path(path) as tmp:
            yield tmp

    monkeypatch.setattr(crop_files, "atomic_path", stalled)
    with _serve(index, root, query_crop_queue=1) as live:
        live.client.timeout = httpx.Timeout(5.0)  # a search that waits for the disk fails
        try:
            first = _search(live, "1.jpg")[1]["query_image"]
            assert entered.wait(5)  # the writer holds the first crop
            queued = _search(live, "2.jpg")[1]["query_image"]
            dropped = _search(live, "3.jpg")[1]["query_image"]
            assert first and queued and dropped is None
            assert not query_crop_path(live.index, first).exists()
        finally:
            release.set()
        assert _written(live, first) and _written(live, queued)
        metrics = live.client.get("/metrics").text
        assert 'visnet_query_crops_total{outcome="dropped"} 1.0' in metrics
        assert 'visnet_query_crops_total{outcome="written"} 2.0' in metrics


# ---- bad events -------------------------------------------------------------------------------


def test_bad_events_are_named_and_the_good_ones_of_their_batch_are_all_logged(
    live: Live,
) -> None:
    listed = _similar(live, "1")
    good = [similar_impression(listed), click(listed, 2), {"type": "cart", "product": "3"}]
    bad = [
        {**click(listed, 1), "product": "no-such-product"},  # unknown product
        {**click(listed, 1), "position": "first"},  # wrong type
        {**click(listed, 1), "position": 0},  # out of range
        {"type": "like", "product": "1"},  # unknown event type
        {"type": "click", "query_id": listed["query_id"]},  # missing fields
        {**similar_impression(listed), "email": "a@b.example"},  # nothing personal: refused
        "not an event",
    ]
    events = [bad[0], good[0], *bad[1:4], good[1], *bad[4:], good[2]]
    result = _accepted(_post(live, SESSION_A, events))
    assert result.accepted == 3
    codes = {p.index: p.code for p in result.rejected}
    assert codes == {
        0: "unknown_product",
        2: "invalid_event",
        3: "position_out_of_range",
        4: "unknown_event_type",
        6: "invalid_event",
        7: "invalid_event",
        8: "invalid_event",
    }
    assert "no-such-product" in result.rejected[0].message
    with EventLog(live.events, create=False) as log:
        counts = log.counts()
        lists = list(log.shown_lists())
    assert (counts["impression"], counts["click"], counts["cart"]) == (1, 1, 1)
    assert lists[0].clicked == {2} and lists[0].anchor == "1"

    none = _post(live, SESSION_A, bad)
    assert none.status_code == 422
    refused = EventsRefusedOut.model_validate_json(none.content, strict=True)
    assert refused.error == "no_events_accepted" and len(refused.rejected) == len(bad)
    with EventLog(live.events, create=False) as log:
        assert log.counts()["click"] == 1  # nothing of it was logged


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            {"session": SESSION_A, "events": [{"type": "cart", "product": "1"}] * 101},
            413,
            "too_many_events",
        ),
        (
            {"session": SESSION_A, "events": [{"type": "cart", "product": "1" * 60}] * 100},
            413,
            "upload_too_large",
        ),  # over max_event_bytes
        ({"session": "me", "events": [{"type": "cart", "product": "1"}]}, 422, "invalid_batch"),
        ({"session": SESSION_A, "events": []}, 422, "invalid_batch"),
        ({"events": [{"type": "cart", "product": "1"}]}, 422, "invalid_batch"),
        (b"{not json", 400, "bad_request"),
    ],
)
def test_oversized_and_malformed_batches_are_refused_whole(
    live: Live, body: Any, status: int, code: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = live.client.post("/v1/events", content=content)
    assert (answer.status_code, answer.json()["error"]) == (status, code), answer.text
    model = EventsRefusedOut if status == 422 else ErrorOut
    model.model_validate_json(answer.content, strict=True)
    with EventLog(live.events, create=False) as log:
        assert log.counts()["cart"] == 0


def test_a_beacon_sent_as_text_plain_is_read_as_json(live: Live) -> None:
    body = json.dumps({"session": SESSION_A, "events": [{"type": "cart", "product": "1"}]})
    headers = {"Content-Type": "text/plain;charset=UTF-8"}
    answer = live.client.post("/v1/events", content=body, headers=headers)
    assert _accepted(answer).accepted == 1


# ---- rate limit ------------------------------------------------------------------------------


def test_a_client_past_its_share_gets_429_with_retry_after(tmp_path: Path) -> None:
    root, index = build_tiny_catalog(tmp_path)
    with _serve(index, root, events_burst=3, events_rate=1.0) as live:
        batch = [{"type": "cart", "product": "1"}]
        for _ in range(3):
            assert _accepted(_post(live, SESSION_A, batch)).accepted == 1
        refused = _post(live, SESSION_B, batch)  # another session, the same address
        assert refused.status_code == 429
        assert ErrorOut.model_validate_json(refused.content).error == "rate_limited"
        wait = int(refused.headers["Retry-After"])
        assert 1 <= wait <= 2
        # checked before the body is read: a body that is not even JSON is refused the same
        assert live.client.post("/v1/events", content=b"{").status_code == 429
        time.sleep(wait + 0.1)
        assert _accepted(_post(live, SESSION_A, batch)).accepted == 1
        with EventLog(live.events, create=False) as log:
            assert log.counts()["cart"] == 4
        metrics = live.client.get("/metrics").text
        assert 'visnet_http_requests_total{method="POST",route="/v1/events",status="429"}' in (
            metrics
        )
        assert 'visnet_events_total{outcome="accepted"} 4.0' in metrics


def test_past_all_clients_share_batches_get_503_events_busy(tmp_path: Path) -> None:
    """A server-wide bucket beside the per-address one: many addresses (or a proxy's raised
    share) cannot write faster than the service takes."""
    root, index = build_tiny_catalog(tmp_path)
    changes = {"events_burst": 1000, "events_total_burst": 2, "events_total_rate": 0.5}
    with _serve(index, root, **changes) as live:
        batch = [{"type": "cart", "product": "1"}]
        for _ in range(2):
            assert _accepted(_post(live, SESSION_A, batch)).accepted == 1
        refused = _post(live, SESSION_B, batch)
        assert refused.status_code == 503, refused.text
        assert ErrorOut.model_validate_json(refused.content).error == "events_busy"
        assert 1 <= int(refused.headers["Retry-After"]) <= 2
        assert live.client.post("/v1/events", content=b"{").status_code == 503  # body unread
        with EventLog(live.events, create=False) as log:
            assert log.counts()["cart"] == 2


def test_a_log_past_its_size_cap_answers_507_and_searches_go_on(tmp_path: Path) -> None:
    root, index = build_tiny_catalog(tmp_path)
    cap = 160 * 1024
    with _serve(index, root, events_max_bytes=cap, events_burst=1000) as live:
        listed = _similar(live, "1", k=8)
        batch = [{**similar_impression(listed), "query_id": f"query-{n:04d}"} for n in range(20)]
        answers = [_post(live, SESSION_A, batch) for _ in range(30)]
        statuses = [a.status_code for a in answers]
        full = statuses.index(507)
        assert full > 0 and set(statuses[:full]) == {200} and set(statuses[full:]) == {507}
        refused = answers[full]
        assert ErrorOut.model_validate_json(refused.content, strict=True).error == "events_full"
        assert "Retry-After" not in refused.headers  # full until archived: no point resending
        wal = live.events.with_name(live.events.name + "-wal")
        on_disk = live.events.stat().st_size + wal.stat().st_size
        assert on_disk < cap + 64 * 1024  # over the cap by at most about a batch
        assert _search(live, "1.jpg")[1]["results"]


def test_a_locked_log_answers_503_within_its_lock_timeout_and_holds_no_search_thread(
    tmp_path: Path,
) -> None:
    """Another replica holds the log's write lock: each batch waits `events_lock_timeout`, not
    30 s, on a writer thread of its own (2 at once, 32 waiting, the rest refused at once), and
    searches, on the shared pool, are answered meanwhile."""
    root, index = build_tiny_catalog(tmp_path)
    with _serve(index, root, events_burst=1000, events_lock_timeout=0.5) as live:
        other = sqlite3.connect(live.events, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with ThreadPoolExecutor(60) as pool:
                batch = [{"type": "cart", "product": "1"}]
                posts = [pool.submit(_post, live, SESSION_A, batch) for _ in range(60)]
                time.sleep(0.5)  # every post has arrived: 2 written, the others wait
                start = time.monotonic()
                assert _search(live, "1.jpg")[1]["results"]
                assert time.monotonic() - start < 3.0
                answers = [post.result() for post in posts]
        finally:
            other.rollback()
            other.close()
        codes = [(a.status_code, a.json()["error"]) for a in answers]
        assert set(codes) <= {(503, "events_unavailable"), (503, "events_busy")}
        # the queue was full for some of them (exactly how many depends on when the 1 s waits end)
        assert codes.count((503, "events_busy")) >= 1
        assert all(int(a.headers["Retry-After"]) >= 1 for a in answers)
        assert _accepted(_post(live, SESSION_A, batch)).accepted == 1  # lock gone: logged


# ---- the schema -------------------------------------------------------------------------------


def test_openapi_documents_the_batch_and_every_answer(live: Live) -> None:
    spec = live.client.get("/openapi.json").json()
    operation = spec["paths"]["/v1/events"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/EventBatch"}
    schemas = spec["components"]["schemas"]
    batch = schemas["EventBatch"]
    assert batch["properties"]["events"]["maxItems"] == 100
    kinds = batch["properties"]["events"]["items"]["discriminator"]["mapping"]
    assert set(kinds) == {"impression", "click", "cart", "purchase"}
    for ref in kinds.values():  # every event model is there, where its reference points
        assert ref.rsplit("/", 1)[1] in schemas
    assert schemas["Shown"]["properties"]["position"]["maximum"] == 100
    answers = operation["responses"]
    assert {"200", "400", "413", "422", "429", "503", "507"} <= set(answers)
    assert answers["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/EventsOut")
    assert answers["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/EventsRefusedOut"
    )
    assert "Retry-After" in answers["429"]["headers"]
    assert "Retry-After" in answers["503"]["headers"]
    assert "events_full" in answers["507"]["description"]
    assert "security" not in operation  # the page posts it: no key
    search = schemas["SearchOut"]["properties"]
    assert {"model", "index"} <= set(search)
    assert {"query_id", "query_image"} <= set(schemas["QueryOut"]["properties"])
    assert {"query_id", "model", "index"} <= set(schemas["SimilarOut"]["properties"])


# ---- where the log lives ---------------------------------------------------------------------


def test_the_log_can_live_elsewhere_and_a_log_that_cannot_open_refuses_only_events(
    tmp_path: Path,
) -> None:
    root, index = build_tiny_catalog(tmp_path)
    shared = tmp_path / "shared" / "events.sqlite"
    shared.parent.mkdir()
    batch = [{"type": "cart", "product": "1"}]
    with _serve(index, root, events_file=shared) as live:
        assert _accepted(_post(live, SESSION_A, batch)).accepted == 1
    with EventLog(shared, create=False) as log:
        assert log.counts()["cart"] == 1
    assert not (index / "events.sqlite").exists()
    with _serve(index, root, events_file=tmp_path / "no-such-folder" / "events.sqlite") as live:
        refused = _post(live, SESSION_A, batch)
        assert (refused.status_code, refused.json()["error"]) == (503, "events_unavailable")
        assert _search(live, "1.jpg")[1]["results"]  # searches are still served


def test_a_log_that_cannot_take_a_batch_answers_503_with_retry_after(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log locked past its timeout (replicas sharing it) or on a full disk is a 503 the page
    retries, not a 500."""

    def locked(*_: Any) -> int:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(live.app.state.engine.events, "record", locked)
    refused = _post(live, SESSION_A, [{"type": "cart", "product": "1"}])
    assert (refused.status_code, refused.json()["error"]) == (503, "events_unavailable")
    assert int(refused.headers["Retry-After"]) >= 1
    ErrorOut.model_validate_json(refused.content, strict=True)
