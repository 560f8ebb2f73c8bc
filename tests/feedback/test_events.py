"""The event log: per-event checks that keep good events, durable batches, the click join."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from visnet.feedback import (
    MAX_EVENTS,
    BatchError,
    EventBatch,
    EventLog,
    EventLogFullError,
    fingerprint_token,
    new_query_id,
    parse_batch,
)

SESSION = "session-0001"


def impression(query: str, products: list[str], **extra: Any) -> dict[str, Any]:
    shown = [{"product": p, "position": i} for i, p in enumerate(products, 1)]
    body = {"type": "impression", "query_id": query, "query_kind": "search", "model": "m1"}
    return {**body, "shown": shown, **extra}


def click(query: str, product: str, position: int) -> dict[str, Any]:
    return {"type": "click", "query_id": query, "product": product, "position": position}


def test_bad_events_are_named_and_the_good_ones_kept(tmp_path: Path) -> None:
    events = [
        impression("query-0001", ["a", "b"]),  # 0: good
        {"type": "hover", "query_id": "query-0001"},  # 1: unknown type
        click("query-0001", "b", 101),  # 2: position out of range
        click("query-0001", "a", 0),  # 3: position out of range
        click("query-0001", "zz", 1),  # 4: unknown product
        {"type": "cart", "product": "a", "email": "x@example.com"},  # 5: no personal fields
        impression("query-0002", ["a", "a"]),  # 6: a product twice
        impression("query-0003", ["a"], query_kind="similar"),  # 7: similar without anchor
        click("query-0001", "b", 2),  # 8: good
        "not an event",  # 9
        {"type": "purchase", "product": "b"},  # 10: good
    ]
    known = {"a", "b"}
    with EventLog(tmp_path / "events.sqlite") as log:
        result = log.record_batch(
            {"session": SESSION, "events": events}, known_products=lambda ids: ids & known
        )
        assert result.accepted == 3
        codes = {p.index: p.code for p in result.rejected}
        assert codes == {
            1: "unknown_event_type",
            2: "position_out_of_range",
            3: "position_out_of_range",
            4: "unknown_product",
            5: "invalid_event",
            6: "invalid_event",
            7: "invalid_event",
            9: "invalid_event",
        }
        messages = {p.index: p.message for p in result.rejected}
        assert "'zz'" in messages[4] and "email" in messages[5] and "anchor" in messages[7]
        assert log.counts()["impression"] == 1 and log.counts()["click"] == 1
        assert log.counts()["purchase"] == 1


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"session": SESSION, "events": [{"type": "cart", "product": "a"}] * (MAX_EVENTS + 1)},
         "too_many_events"),
        ({"session": "short", "events": [{"type": "cart", "product": "a"}]}, "invalid_batch"),
        ({"session": "has space 1234", "events": [{"type": "cart", "product": "a"}]},
         "invalid_batch"),
        ({"session": SESSION, "events": []}, "invalid_batch"),
        ({"session": SESSION, "events": [], "ip": "1.2.3.4"}, "invalid_batch"),
        ([], "invalid_batch"),
    ],
)  # fmt: skip
def test_a_malformed_batch_is_refused_whole(body: Any, code: str) -> None:
    with pytest.raises(BatchError) as caught:
        parse_batch(body)
    assert caught.value.code == code


def test_the_openapi_model_describes_the_same_batch() -> None:
    body = {
        "session": SESSION,
        "events": [impression("query-0001", ["a"]), click("query-0001", "a", 1)],
    }
    batch = EventBatch.model_validate(body)
    minted = new_query_id()
    assert minted != new_query_id()
    assert EventBatch.model_validate({"session": SESSION, "events": [click(minted, "a", 1)]})
    assert [e.type for e in batch.events] == ["impression", "click"]
    schema = EventBatch.model_json_schema()
    assert schema["properties"]["events"]["maxItems"] == MAX_EVENTS


def test_batches_survive_reopening_and_the_log_is_wal(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    with EventLog(path) as log:
        log.record_batch({"session": SESSION, "events": [impression("query-0001", ["a", "b"])]})
    with EventLog(path, create=False) as log:
        (shown,) = log.shown_lists()
        assert shown.shown == ((1, "a"), (2, "b")) and shown.clicked == frozenset()
        assert log.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(FileNotFoundError):
        EventLog(tmp_path / "missing.sqlite", create=False)
    sqlite3.connect(tmp_path / "other.sqlite").execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ValueError, match="not a VisNet event log"):
        EventLog(tmp_path / "other.sqlite", create=False)


def test_the_join_counts_first_lists_and_matching_clicks_only(tmp_path: Path) -> None:
    with EventLog(tmp_path / "events.sqlite") as log:
        # the click arrives before its impression: it still counts once both are logged
        log.record_batch({"session": SESSION, "events": [click("query-0001", "b", 2)]})
        log.record_batch({"session": SESSION, "events": [impression("query-0001", ["a", "b"])]})
        log.record_batch(
            {
                "session": SESSION,
                "events": [
                    impression("query-0001", ["b", "a"]),  # resent with another order: ignored
                    click("query-0001", "a", 2),  # matches only the ignored duplicate
                    click("query-9999", "a", 1),  # a list never shown
                ],
            }
        )
        log.record_batch({"session": "session-0002", "events": [click("query-0001", "a", 1)]})
        (shown,) = log.shown_lists()
        assert shown.shown == ((1, "a"), (2, "b")) and shown.clicked == frozenset({2})
        counts = log.counts()
        assert counts["duplicate_impressions"] == 1
        assert counts["click"] == 4 and counts["unmatched_clicks"] == 3


def test_concurrent_batches_all_land(tmp_path: Path) -> None:
    with EventLog(tmp_path / "events.sqlite") as log:

        def post(worker: int) -> None:
            for n in range(10):
                query = f"query-{worker}-{n:04d}"
                log.record_batch({"session": SESSION, "events": [impression(query, ["a"])]})

        threads = [threading.Thread(target=post, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert log.counts()["impression"] == 40
        assert len(list(log.shown_lists())) == 40


def test_a_batch_that_fails_midway_leaves_nothing(tmp_path: Path) -> None:
    good = parse_batch({"session": SESSION, "events": [impression("query-0001", ["a"])]})
    with EventLog(tmp_path / "events.sqlite") as log:
        with pytest.raises(AttributeError):
            log.record(SESSION, [*good.events, object()])  # type: ignore[list-item]
        assert log.counts()["impression"] == 0 and list(log.shown_lists()) == []
        assert log.record(SESSION, good.events) == 1


def test_fingerprints_become_tokens_an_impression_takes() -> None:
    assert fingerprint_token("3fa2c0d9e1b24a77") == "3fa2c0d9e1b24a77"  # a weights hash as is
    spelled = "visnet.features.colour.ColourHistogram:colour-histogram:512:{'bins': 8}"
    token = fingerprint_token(spelled, "colour histogram")
    assert token.startswith("colour-histogram:") and token == fingerprint_token(
        spelled, "colour histogram"
    )
    assert token != fingerprint_token(spelled + " ", "colour histogram")
    body = impression(new_query_id(), ["p1"], model=token)
    assert parse_batch({"session": SESSION, "events": [body]}).problems == []


def _tracked_connections(monkeypatch: pytest.MonkeyPatch) -> list[sqlite3.Connection]:
    """Every connection `sqlite3.connect` opens from now on."""
    opened: list[sqlite3.Connection] = []
    connect = sqlite3.connect

    def tracking(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(connect(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(sqlite3, "connect", tracking)
    return opened


def _is_closed(db: sqlite3.Connection) -> bool:
    try:
        db.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


def test_a_log_that_fails_to_open_closes_its_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite3.connect(tmp_path / "other.sqlite").execute("CREATE TABLE t (x)").connection.close()
    (tmp_path / "garbage.sqlite").write_bytes(b"not a database at all, " * 100)
    opened = _tracked_connections(monkeypatch)
    with pytest.raises(ValueError, match="not a VisNet event log"):
        EventLog(tmp_path / "other.sqlite", create=False)
    with pytest.raises(sqlite3.DatabaseError):
        EventLog(tmp_path / "garbage.sqlite")
    assert len(opened) == 2 and all(_is_closed(db) for db in opened)


def test_a_log_past_its_cap_refuses_batches_and_counts_its_wal(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    batch = {"session": SESSION, "events": [impression(f"query-{n:04d}", ["a"]) for n in range(50)]}
    with EventLog(path) as log:
        empty = log.size_bytes()
        pages = log.db.execute("PRAGMA page_count").fetchone()[0]
        page_size = log.db.execute("PRAGMA page_size").fetchone()[0]
        wal = path.with_name(path.name + "-wal")
        assert empty == pages * page_size + wal.stat().st_size > path.stat().st_size
    cap = empty + 64 * 1024
    with EventLog(path, max_bytes=cap) as log:
        taken = 0
        with pytest.raises(EventLogFullError, match="events_max_bytes"):
            for _ in range(100):
                taken += log.record_batch(batch).accepted
        assert 0 < taken < 100 * 50
        assert log.counts()["impression"] == taken  # the refused batch left nothing
        # refused before it was written: over the cap by less than one batch
        assert cap <= log.size_bytes() < cap + 64 * 1024


def test_a_write_waits_only_its_timeout_for_another_writers_lock(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    EventLog(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writing, holding the lock
    try:
        with EventLog(path, create=False, timeout=0.3) as log:
            start = time.monotonic()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                log.record_batch({"session": SESSION, "events": [impression("query-0001", ["a"])]})
            assert 0.25 < time.monotonic() - start < 3.0
    finally:
        other.rollback()
        other.close()
