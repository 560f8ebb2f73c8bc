"""Kill -9 trials: a real `visnet serve` killed during mixed writes and deletes, restarted, checked.

Each trial starts `visnet serve` on a copy of the index, checks it (below), lets ``--writers``
clients create, replace and delete products (``POST`` / ``DELETE /v1/products`` with the key;
each client owns its product ids, so each id's history is one sequence) for a random 1 to 4 s,
and kills the server with SIGKILL while writes are in flight. After each kill:

- **store** (on a copy of the killed index, opened as a restart opens it): every vector id a
  product owns is in the vector store, and the store holds no other;
- **history** (the restarted server, through the API): every acknowledged write is there as
  acknowledged (its title and number of views, each view's image served, a live "more like
  this" answered from its vectors), every acknowledged delete is gone (404); a request still in
  flight at the kill may have landed or not, either is right;
- **litter** (the index folder, once the restart has removed what the kill left, which
  ``/metrics`` counts and the table shows): no upload folder of a product the database does not
  hold, no uploaded file no product names, no temporary file, no stray snapshot folder.

    python benchmarks/kill_trials.py --trials 50     # the campaign (about 15 minutes here)
    python benchmarks/kill_trials.py --trials 5      # a quick check

Defaults: a copy of ``data/demo-index``, ``models/visnet-default.pt``, no detector (writes never
run it), 4 writers, each write 1 or 2 catalog images of the demo set.

Runs (the 2-core development machine; other work beside them):
- 2026-12-02 17:07, ``--trials 5``, beside other engineers' test and browser runs (load average
  6.8): 209 acknowledged writes, 113 deletes, 20 requests in flight at the kills; 0 lost, 0
  undone, 0 store mismatches, 0 litter left (each restart removed an orphan upload folder, and
  a temporary file twice); restarts 10-13 s.
- 2026-12-02 17:25-17:52, ``--trials 50``, beside other engineers' tests and benchmarks (load
  average 5-9): 1,553 acknowledged writes, 894 deletes, 200 requests in flight at the kills; 0
  lost, 0 undone, 0 store mismatches; 42 items of litter removed by the restarts, none left
  (README, speed table).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from _server import (
    API_KEY,
    HOST,
    catalog_root,
    copy_index,
    free_port,
    metric_values,
    set_images,
    start_server,
    stop_server,
)

from visnet.index.catalog_index import CatalogIndex
from visnet.index.refs import UPLOAD_PREFIX, UPLOADS
from visnet.io import is_temp_name

ABSENT = None  # a product's state when deleted (or never written)
State = tuple[str, int] | None  # (title, views) when present


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--index", type=Path, default=Path("data/demo-index"))
    p.add_argument("--model", default="models/visnet-default.pt", help="the index's model")
    p.add_argument("--detector", help="a detector checkpoint for the server (writes never use it)")
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--writers", type=int, default=4, help="concurrent write clients")
    p.add_argument("--ids", type=int, default=30, help="product ids each writer creates")
    p.add_argument("--deletes", type=float, default=0.35, help="share of writes that delete")
    p.add_argument("--min-s", type=float, default=1.0, help="shortest write phase before a kill")
    p.add_argument("--max-s", type=float, default=4.0, help="longest write phase before a kill")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed)")
    p.add_argument("--json", type=Path, help="also write the per-trial results here")
    return p.parse_args()


# ---- the history ---------------------------------------------------------------------------


@dataclass
class History:
    """Per product id: its acknowledged state, and a write in flight when the server died."""

    acked: dict[str, State] = field(default_factory=dict)
    in_flight: dict[str, State] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def possible(self, product_id: str) -> list[State]:
        states = [self.acked.get(product_id, ABSENT)]
        if product_id in self.in_flight:
            states.append(self.in_flight[product_id])
        return states

    def settle(self, product_id: str, found: State) -> None:
        """After a restart: what was found is now the acknowledged state (if it was possible)."""
        if product_id in self.in_flight and found == self.in_flight[product_id]:
            self.acked[product_id] = found
        self.in_flight.pop(product_id, None)


@dataclass
class Writer:
    """One client: creates, replaces and deletes its own ids (and some demo products)."""

    number: int
    own: list[str]
    history: History
    images: list[bytes]
    categories: list[str]
    delete_share: float
    counts: dict[str, int] = field(default_factory=lambda: {"writes": 0, "deletes": 0})
    errors: list[str] = field(default_factory=list)

    def run(self, port: int, stop: threading.Event, rng: random.Random, trial: int) -> None:
        with httpx.Client(
            base_url=f"http://{HOST}:{port}", headers={"X-API-Key": API_KEY}, timeout=60
        ) as client:
            seq = 0
            while not stop.is_set():
                seq += 1
                if not self._step(client, rng, f"t{trial}-w{self.number}-{seq}"):
                    return

    def _step(self, client: httpx.Client, rng: random.Random, title: str) -> bool:
        """One write; False once the server is gone."""
        present = [pid for pid in self.own if self.history.acked.get(pid) is not None]
        if present and rng.random() < self.delete_share:
            pid, state, kind = rng.choice(present), ABSENT, "deletes"
            send = lambda: client.delete(f"/v1/products/{pid}")  # noqa: E731
        else:
            pid, kind = rng.choice(self.own), "writes"
            views = rng.choice((1, 2))
            state = (title, views)
            data = {"id": pid, "category": rng.choice(self.categories), "title": title}
            files = [("images", (f"{v}.jpg", rng.choice(self.images))) for v in range(views)]
            send = lambda: client.post("/v1/products", data=data, files=files)  # noqa: E731
        with self.history.lock:
            self.history.in_flight[pid] = state
        try:
            answer = send()
        except httpx.ConnectError:  # never sent: the server was already gone
            with self.history.lock:
                self.history.in_flight.pop(pid)
            return False
        except httpx.TransportError:  # sent, unanswered: it may have landed
            return False
        with self.history.lock:
            self.history.in_flight.pop(pid)
            if answer.is_success:
                self.history.acked[pid] = state
                self.counts[kind] += 1
            else:
                self.errors.append(f"{answer.request.method} {pid}: {answer.status_code}")
        return True


# ---- the checks ------------------------------------------------------------------------------


def check_store(index: Path, scratch: Path, fingerprint: str) -> dict[str, int]:
    """Open a copy of the killed index as a restart would: vectors of products missing from the
    store, and vectors in the store that no product owns."""
    shutil.rmtree(scratch, ignore_errors=True)
    copy_index(index, scratch)
    opened = CatalogIndex.open(scratch, model_fingerprint=fingerprint)
    try:
        owned = np.array([row[0] for row in opened.products.vector_table()], dtype=np.int64)
        missing = 0
        try:
            opened.store.get(owned)
        except KeyError:  # count them one by one
            for vector_id in owned:
                try:
                    opened.store.get(vector_id[None])
                except KeyError:
                    missing += 1
        return {"vectors_missing": missing, "vectors_extra": opened.store.count() - len(owned)}
    finally:
        opened.close()
        shutil.rmtree(scratch, ignore_errors=True)


def check_history(client: httpx.Client, history: History) -> dict[str, int]:
    """Each id the trials touched, as the restarted server answers it, against its history."""
    out = {"lost": 0, "resurrected": 0, "landed": 0, "broken": 0}
    for pid in sorted(set(history.acked) | set(history.in_flight)):
        answer = client.get(f"/v1/products/{pid}")
        if answer.status_code == 404:
            found: State = ABSENT
        else:
            product = answer.json()
            found = (product["title"], len(product["images"]))
            views_ok = all(client.get(url).status_code == 200 for url in product["images"])
            similar = client.get(f"/v1/products/{pid}/similar?k=3&same_category=false")
            out["broken"] += not views_ok or similar.status_code != 200
        possible = history.possible(pid)
        if found not in possible:  # gone, an older version, or back after its delete
            out["resurrected" if found is not ABSENT and ABSENT in possible else "lost"] += 1
        elif found != possible[0]:
            out["landed"] += 1
        history.settle(pid, found)
    return out


def litter(index: Path) -> dict[str, int]:
    """What a restart should have left nowhere in the index folder (it is serving: the product
    database is read in a read-only connection)."""
    uri = f"file:{index / 'products.sqlite'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        rows = db.execute("SELECT id, images FROM products").fetchall()
    ids = {pid for pid, _ in rows}
    refs = {
        ref[len(UPLOAD_PREFIX) :]
        for _, images in rows
        for ref in json.loads(images)
        if ref.startswith(UPLOAD_PREFIX)
    }
    uploads = index / UPLOADS
    folders = [p for p in uploads.iterdir() if p.is_dir()] if uploads.is_dir() else []
    files = [p for p in uploads.rglob("*") if p.is_file()] if uploads.is_dir() else []
    current = json.loads((index / "vectors" / "CURRENT").read_text())["snapshot"]
    return {
        "orphan_folders": sum(p.name not in ids for p in folders),
        "unreferenced": sum(
            p.relative_to(index).as_posix() not in refs and not is_temp_name(p.name) for p in files
        ),
        "temp_files": sum(is_temp_name(p.name) for p in index.rglob("*") if p.is_file()),
        "stray_snapshots": sum(
            p.is_dir() and p.name != current and p.name.startswith(("snap-", "tmp-"))
            for p in (index / "vectors").iterdir()
        ),
    }


def removed_at_startup(port: int) -> dict[str, int]:
    found = metric_values(port, "visnet_startup_litter_removed")
    return {key.split('"')[1]: int(value) for key, value in found.items()}


# ---- the campaign ----------------------------------------------------------------------------


def first_look(port: int, writers: int, per_writer: int) -> tuple[list[str], list[list[str]]]:
    """The catalog's categories and, per writer, demo products it may delete."""
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as client:
        categories = [c["name"] for c in client.get("/v1/categories").json()["categories"]]
        page = client.get("/v1/products", params={"limit": 100}).json()["products"]
    demo = [product["id"] for product in page][: writers * per_writer]
    return categories, [demo[w::writers] for w in range(writers)]


def restart_and_check(args, index: Path, port: int, log: Path, history: History) -> tuple:
    start = time.monotonic()
    server = start_server(index, args.model, port, log, args.detector, api_key=API_KEY, timeout=600)
    row: dict = {"restart_s": round(time.monotonic() - start, 1)}
    row["removed"] = removed_at_startup(port)
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=60) as client:
        row |= check_history(client, history)
    row["litter"] = litter(index)
    return server, row


def write_until_killed(
    args, server, port: int, writers: list[Writer], trial: int, rng: random.Random
) -> dict:
    stop = threading.Event()

    def done() -> dict[str, int]:
        return {kind: sum(w.counts[kind] for w in writers) for kind in ("writes", "deletes")}

    before = done()
    threads = [
        threading.Thread(
            target=w.run, args=(port, stop, random.Random(rng.random()), trial), daemon=True
        )
        for w in writers
    ]
    for thread in threads:
        thread.start()
    seconds = rng.uniform(args.min_s, args.max_s)
    time.sleep(seconds)
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    stop.set()
    for thread in threads:
        thread.join(120)
    return {
        "write_s": round(seconds, 1),
        **{kind: count - before[kind] for kind, count in done().items()},
        "in_flight": len(writers[0].history.in_flight),
    }


FAILURES = ("lost", "resurrected", "broken", "vectors_missing", "vectors_extra")


def print_row(n: int, row: dict) -> None:
    left = sum(row["litter"].values())
    removed = row["removed"]
    print(
        f"{n:>5}  {row.get('write_s', 0):>5}  {row.get('writes', 0):>6}  {row.get('deletes', 0):>7}"
        f"  {row.get('in_flight', 0):>9}  {row['landed']:>6}  {row['lost']:>4}"
        f"  {row['resurrected']:>11}  {row['broken']:>6}"
        f"  {row.get('vectors_missing', 0):>4}/{row.get('vectors_extra', 0):<4}"
        f"  {removed.get('orphan_folders', 0):>3}/{removed.get('stale_images', 0)}"
        f"/{removed.get('temp_files', 0):<3}  {left:>6}  {row['restart_s']:>9}",
        flush=True,
    )


def main() -> None:
    args = parse_args()
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="visnet-kill-trials-"))
    work.mkdir(parents=True, exist_ok=True)
    index, log = copy_index(args.index, work / "index"), work / "server.log"
    fingerprint = json.loads((index / "manifest.json").read_text())["model_fingerprint"]
    root = catalog_root(index)
    if root is None:
        raise SystemExit(f"{args.index}'s catalog folder (build.json) is not here: no images")
    images = set_images(root, "catalog", 40)
    port, history = free_port(), History()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  load average {os.getloadavg()[0]:.1f}; {work}")
    server, row = restart_and_check(args, index, port, log, history)
    categories, demo = first_look(port, args.writers, 10)
    writers = [
        Writer(
            n,
            [f"kt-{n}-{i:03d}" for i in range(args.ids)] + demo[n],
            history,
            images,
            categories,
            args.deletes,
        )
        for n in range(args.writers)
    ]
    history.acked |= {pid: present_state(port, pid) for ids in demo for pid in ids}
    print(  # removed o/s/t: orphan folders, stale images, temporary files the restart removed
        "trial  write s  writes  deletes  in flight  landed  lost  resurrected  broken"
        "  vectors missing/extra  removed o/s/t  litter  restart s"
    )
    rows = []
    for trial in range(1, args.trials + 1):
        row = write_until_killed(args, server, port, writers, trial, rng)
        row |= check_store(index, work / "check", fingerprint)
        server, after = restart_and_check(args, index, port, log, history)
        row |= after
        rows.append(row)
        print_row(trial, row)
    stop_server(server)
    totals = {name: sum(r[name] for r in rows) for name in ("writes", "deletes", "in_flight")}
    totals |= {name: sum(r[name] for r in rows) for name in FAILURES}
    totals["litter_left"] = sum(sum(r["litter"].values()) for r in rows)
    totals["removed_at_restart"] = sum(sum(r["removed"].values()) for r in rows)
    totals["write_errors"] = [e for w in writers for e in w.errors]
    print(json.dumps(totals, indent=2))
    if args.json:
        result = {"args": vars(args), "rows": rows, "totals": totals}
        args.json.write_text(json.dumps(result, indent=1, default=str))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def present_state(port: int, product_id: str) -> State:
    answer = httpx.get(f"http://{HOST}:{port}/v1/products/{product_id}", timeout=30)
    product = answer.json()
    return (product["title"], len(product["images"]))


if __name__ == "__main__":
    main()
