"""The review queue: idempotent adds, decisions that survive SIGKILL, CSV merge, training reads."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from visnet.cli import app
from visnet.training.datasets import read_triplets
from visnet.triplets import ReviewQueue, review_session, write_triplets
from visnet.triplets.review import describe, render_triplet


def _lines(count: int) -> list[dict[str, Any]]:
    return [
        {
            "query": {"image": f"q{i}.png", "bbox": {"left": 1, "top": 1, "width": 8, "height": 8}},
            "positive": {"image": f"p{i}.png"},
            "negative": {"image": f"n{i}.png"},
            "kind": "wild" if i % 2 else "catalog",
            "status": "pending",
            "category": "hats",
            "positive_rank": 3,
            "negative_rank": None,
            "negative_kind": "out-of-class",
        }
        for i in range(count)
    ]


@pytest.fixture
def triplet_file(tmp_path: Path) -> Path:
    path = tmp_path / "proposed.jsonl"
    write_triplets(_lines(12), path)
    return path


def test_add_is_idempotent_and_decisions_are_recorded(triplet_file: Path, tmp_path: Path) -> None:
    with ReviewQueue(tmp_path / "q.sqlite") as queue:
        assert queue.add(triplet_file) == {"added": 12, "already_queued": 0}
        assert queue.add(triplet_file) == {"added": 0, "already_queued": 12}
        first = queue.next_pending()
        assert first is not None and first.id == 1 and first.line["category"] == "hats"
        decided = queue.decide(first.id, "approved", "ann")
        assert (decided.status, decided.reviewer) == ("approved", "ann")
        assert decided.decided_at is not None
        assert queue.next_pending().id == 2  # type: ignore[union-attr]
        assert queue.next_pending(after=5).id == 6  # type: ignore[union-attr]
        assert queue.counts() == {"pending": 11, "approved": 1, "rejected": 0, "total": 12}
        with pytest.raises(ValueError, match="status must be one of"):
            queue.decide(2, "maybe", "ann")
        with pytest.raises(KeyError):
            queue.decide(99, "approved", "ann")
        journal = queue.db.execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"


_CHILD = """
import sys, time
from visnet.triplets.review import ReviewQueue
queue = ReviewQueue(sys.argv[1])
while (item := queue.next_pending()) is not None:
    status = "approved" if item.id % 3 else "rejected"
    queue.decide(item.id, status, sys.argv[2])
    print(item.id, status, flush=True)
    time.sleep(0.05)
"""


def _reviewer_process(queue: Path, name: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", _CHILD, str(queue), name]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def test_decisions_survive_sigkill_and_review_resumes(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with ReviewQueue(path) as queue:
        queue.add(_lines(60))
    child = _reviewer_process(path, "first")
    seen = [child.stdout.readline().split() for _ in range(5)]  # type: ignore[union-attr]
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    with ReviewQueue(path) as queue:
        for tid, status in seen:
            item = queue.get(int(tid))
            assert (item.status, item.reviewer) == (status, "first")
        counts = queue.counts()
        assert counts["pending"] > 0 and counts["approved"] + counts["rejected"] >= 5
    restarted = _reviewer_process(path, "second")
    out, _ = restarted.communicate(timeout=60)
    with ReviewQueue(path) as queue:
        assert queue.counts()["pending"] == 0
        assert all(queue.get(int(tid)).reviewer == "first" for tid, _ in seen)
        assert len(out.splitlines()) == 60 - (counts["approved"] + counts["rejected"])
        logged = queue.db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        assert logged == 60
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_csv_round_trip_and_later_decision_wins(triplet_file: Path, tmp_path: Path) -> None:
    a, b = ReviewQueue(tmp_path / "a.sqlite"), ReviewQueue(tmp_path / "b.sqlite")
    a.add(triplet_file)
    b.add(triplet_file)
    for tid, status in [(1, "approved"), (2, "rejected"), (3, "approved")]:
        a.decide(tid, status, "ann")
    b.decide(2, "approved", "bob")  # later than ann's decision on 2
    b.decide(5, "rejected", "bob")
    assert a.export_csv(tmp_path / "a.csv") == 3
    with (tmp_path / "a.csv").open() as f:
        assert next(csv.reader(f)) == ["id", "key", "status", "reviewer", "decided_at"]
    assert b.import_csv(tmp_path / "a.csv") == {"applied": 2, "kept_newer": 1, "unknown": 0}
    merged = {t.id: (t.status, t.reviewer) for t in b.items(("approved", "rejected"))}
    assert merged == {
        1: ("approved", "ann"),
        2: ("approved", "bob"),
        3: ("approved", "ann"),
        5: ("rejected", "bob"),
    }
    b.export_csv(tmp_path / "b.csv")
    assert a.import_csv(tmp_path / "b.csv")["applied"] == 2  # bob's 2 and 5
    assert {t.id: t.status for t in a.items(("approved", "rejected"))} == {
        i: s for i, (s, _) in merged.items()
    }
    assert a.import_csv(tmp_path / "b.csv") == {"applied": 0, "kept_newer": 4, "unknown": 0}
    (tmp_path / "bad.csv").write_text("id,key,status,reviewer,decided_at\n1,,maybe,x,2020-01-01\n")
    with pytest.raises(ValueError, match="line 2: status must be one of"):
        a.import_csv(tmp_path / "bad.csv")
    a.close()
    b.close()


def test_read_triplets_on_a_queue(triplet_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with ReviewQueue(path) as queue:
        queue.add(triplet_file, root=tmp_path)
        queue.decide(1, "approved", "ann")
        queue.decide(2, "rejected", "ann")
        queue.decide(4, "approved", "ann")
        assert queue.export_jsonl(tmp_path / "approved.jsonl") == 2
    approved = read_triplets(path, root=tmp_path)
    assert [t.positive.path.name for t in approved] == ["p0.png", "p3.png"]
    assert approved[0].query.bbox is not None and approved[1].kind == "wild"
    everything = read_triplets(path, root=tmp_path, include_pending=True)
    assert len(everything) == 11 and "p1.png" not in {t.positive.path.name for t in everything}
    assert len(read_triplets(tmp_path / "approved.jsonl", root=tmp_path)) == 2
    with pytest.raises(FileNotFoundError):
        read_triplets(tmp_path / "missing.sqlite")


def test_session_keys_and_view(triplet_file: Path, tmp_path: Path) -> None:
    for name in ("q0.png", "p0.png", "n0.png"):
        Image.new("RGB", (20, 30), (200, 10, 10)).save(tmp_path / name)
    with ReviewQueue(tmp_path / "q.sqlite") as queue:
        queue.add(triplet_file)
        shown: list[int] = []
        keys = iter(["a", "x", "r", "s", "a", "q"])
        done = review_session(queue, "ann", lambda: next(keys), lambda t: shown.append(t.id))
        assert done == {"approved": 2, "rejected": 1, "skipped": 1}
        assert shown == [1, 2, 2, 3, 4, 5]  # an unknown key shows the same triplet again
        assert [queue.get(i).status for i in (1, 2, 3, 4, 5)] == [
            "approved", "rejected", "pending", "approved", "pending",
        ]  # fmt: skip
        item = queue.get(1)
        rows = dict(describe(item))
        assert rows["kind"] == "catalog" and "fused rank 3" in rows["positive"]
        picture = render_triplet(item, tmp_path, out_dir=tmp_path)
        assert Image.open(picture).size[1] == 176


def test_review_cli(triplet_file: Path, tmp_path: Path) -> None:
    queue = str(tmp_path / "q.sqlite")
    runner = CliRunner()
    args = ["review", "--queue", queue, "--add", str(triplet_file), "--reviewer", "ann"]
    result = runner.invoke(app, [*args, "--no-render"], input="a\nr\nq\n")
    assert result.exit_code == 0, result.output
    assert "[a]pprove" in result.output and "positive" in result.output
    stats = runner.invoke(app, ["review", "--queue", queue, "--stats"])
    assert json.loads(stats.output.splitlines()[-1])["approved"] == 1
    out = tmp_path / "d.csv"
    exported = runner.invoke(app, ["review", "--queue", queue, "--export-csv", str(out)])
    assert exported.exit_code == 0 and "wrote 2 decisions" in exported.output
    runner.invoke(app, ["review", "--queue", queue], input="")  # end of input: quits cleanly
    missing = runner.invoke(app, ["review", "--queue", queue, "--import-csv", "nope.csv"])
    assert missing.exit_code == 2
