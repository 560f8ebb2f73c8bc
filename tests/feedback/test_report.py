"""A scripted shopping session replayed as the page posts it; the report's figures by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from visnet.cli import app
from visnet.feedback import EventLog
from visnet.feedback.report import feedback_report, wilson_interval

CATALOG = {f"p{i}" for i in range(1, 10)}


def shown(query: str, products: list[str], model: str = "model-a", **extra: Any) -> dict:
    items = [{"product": p, "position": i} for i, p in enumerate(products, 1)]
    kind = "similar" if "anchor" in extra else "search"
    base = {"type": "impression", "query_id": query, "query_kind": kind, "model": model}
    return {**base, "shown": items, **extra}


def click(query: str, product: str, position: int) -> dict:
    return {"type": "click", "query_id": query, "product": product, "position": position}


# (session, events) as the page would post them, one batch each
SCRIPT: list[tuple[str, list[dict]]] = [
    ("shopper-01", [shown("list-0001", ["p1", "p2", "p3", "p4"]), click("list-0001", "p2", 2)]),
    ("shopper-01", [shown("list-0002", ["p1", "p3", "p5"], anchor="p9")]),  # similar, no click
    (
        "shopper-01",
        [
            {"type": "cart", "product": "p2", "query_id": "list-0001"},  # from list-0001
            {"type": "purchase", "product": "p7"},  # from nowhere we know
            click("list-9999", "p1", 1),  # unmatched: a list never shown
        ],
    ),
    (
        "shopper-02",
        [
            shown("list-0003", ["p2", "p1", "p3", "p4"]),
            click("list-0003", "p2", 1),
            click("list-0003", "p3", 3),
            click("list-0003", "p3", 3),  # a double click counts once
            click("list-0001", "p2", 2),  # unmatched: another session's list
        ],
    ),
    ("shopper-02", [shown("list-0003", ["p2", "p1", "p3", "p4"])]),  # resent: ignored
    ("shopper-03", [shown("list-0004", ["p5", "p6", "p7", "p8"]), click("list-0004", "p6", 2)]),
    ("shopper-03", [click("list-0004", "p7", 2)]),  # unmatched: p7 was at position 3
    ("shopper-04", [shown("list-0005", ["p1", "p2", "p3", "p4"])]),  # search, nothing clicked
    (
        "shopper-05",
        [shown("list-0006", ["p3", "p4"], model="model-b"), click("list-0006", "p3", 1)],
    ),
]


@pytest.fixture
def events(tmp_path: Path) -> Path:
    path = tmp_path / "index" / "events.sqlite"
    path.parent.mkdir()
    with EventLog(path) as log:
        for session, batch in SCRIPT:
            body = json.loads(json.dumps({"session": session, "events": batch}))
            result = log.record_batch(body, known_products=lambda ids: ids & CATALOG)
            assert result.rejected == []
    return path


def test_wilson_interval_against_hand_computed_values() -> None:
    # p = 2/4, z^2 = 3.8415: centre (0.5 + 0.4802) / 1.9604 = 0.5,
    # half 1.96 * sqrt(0.0625 + 0.0600) / 1.9604 = 0.3500
    assert wilson_interval(2, 4) == pytest.approx((0.1500, 0.8500), abs=5e-5)
    # p = 1/4: centre 0.7302 / 1.9604 = 0.3725, half 1.96 * 0.32695 / 1.9604 = 0.3269
    assert wilson_interval(1, 4) == pytest.approx((0.0456, 0.6994), abs=5e-5)
    # p = 0/3: centre 0.6402 / 2.2805 = 0.2808 = half: the interval starts at exactly 0
    low, high = wilson_interval(0, 3)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.5615, abs=5e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_the_report_equals_the_figures_counted_by_hand(events: Path) -> None:
    report = feedback_report(events)
    assert report.counts == {
        "impression": 7,
        "click": 9,
        "cart": 1,
        "purchase": 1,
        "duplicate_impressions": 1,
        "unmatched_clicks": 3,
    }
    groups = {(g.model, g.kind): g for g in report.groups}
    assert list(groups) == [("model-a", "search"), ("model-a", "similar"), ("model-b", "search")]
    search = groups[("model-a", "search")]
    # four lists (0001, 0003, 0004, 0005), three with a click
    assert (search.lists.hits, search.lists.trials, search.lists.rate) == (3, 4, 0.75)
    by_position = {p: (r.hits, r.trials) for p, r in search.positions.items()}
    assert by_position == {1: (1, 4), 2: (2, 4), 3: (1, 4), 4: (0, 4)}
    assert (search.slots.hits, search.slots.trials) == (4, 16)
    assert search.positions[2].rate == 0.5
    assert search.positions[2].interval == pytest.approx((0.1500, 0.8500), abs=5e-5)
    assert search.positions[1].interval == pytest.approx((0.0456, 0.6994), abs=5e-5)
    assert search.actions == {"cart": 1, "purchase": 0}
    similar = groups[("model-a", "similar")]
    assert (similar.lists.hits, similar.lists.trials) == (0, 1)
    assert {p: (r.hits, r.trials) for p, r in similar.positions.items()} == {
        1: (0, 1),
        2: (0, 1),
        3: (0, 1),
    }
    other = groups[("model-b", "search")]
    assert {p: (r.hits, r.trials) for p, r in other.positions.items()} == {1: (1, 1), 2: (0, 1)}
    figures = report.as_json()["groups"][0]["positions"]["2"]
    assert figures == {"hits": 2, "trials": 4, "ctr": 0.5, "ci95": [0.15, 0.85]}
    assert (other.slots.hits, other.slots.trials, other.lists.rate) == (1, 2, 1.0)


def test_the_command_prints_the_tables_and_draws_the_plot(events: Path, tmp_path: Path) -> None:
    plot, figures = tmp_path / "out" / "ctr.png", tmp_path / "ctr.json"
    args = [
        "feedback",
        "report",
        "--events",
        str(events),
        "--out",
        str(plot),
        "--json",
        str(figures),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| model-a | search | 4 | 75.0 [30.1, 95.4] |" in result.output
    assert "| model-a | search | 2 | 4 | 2 | 50.0 [15.0, 85.0] |" in result.output
    assert "3 matching no list" in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(figures.read_text())["counts"]["unmatched_clicks"] == 3
    missing = CliRunner().invoke(app, ["feedback", "report", "--events", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "not found" in missing.output
