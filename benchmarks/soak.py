"""Capacity and soak of the real server under the issue #15 mix, and what writes do to searches.

The mix: 95% ``GET /v1/products/{id}/similar`` (random demo products), 3% ``POST /v1/search``
(street photos of the demo set's test pairs), 2% writes (``POST /v1/products`` with the key,
replacing one of 100 soak products in turn, one catalog image each: the catalog's size holds
after the first 100). Requests arrive at Poisson times of a set rate (an open loop: latency
counts from when a request was due, so a server falling behind shows in full).

1. **capacity**: steps of ``--step-s`` at rising rates, doubling from ``--start-rate`` while
   every endpoint's p99 stays under ``--p99-limit`` (1 s) with no error, then ``--bisect``
   halvings between the last rate that passed and the first that failed. Capacity: the highest
   rate that passed (``--capacity R`` skips the search).
2. **soak**: ``--soak-min`` minutes at ``--load`` (80%) of capacity: errors, p50 / p99 per
   endpoint per minute, the server's RSS every ``--rss-every`` s and its growth after
   ``--warmup-s``. ``OUT/soak.json``, and ``OUT/soak.png`` (latency, rate and errors, RSS over
   time).
3. **writes against searches** (``--compare``, issue #15 item 6): ``/search`` latency with the
   writes and with them replaced by ``/similar`` (the same arrivals, the same searches), at the
   soak rate and at ``--overload`` (4) times capacity (open loops), and at 16 connections
   sending back to back (a closed loop: the issue's measurement), ``--step-s`` each.
   Percentiles are of the answered requests; refusals and failures are counted apart.

    python benchmarks/soak.py --out runs/soak --compare           # the campaign (about 20 min)
    python benchmarks/soak.py --out runs/soak-quick --step-s 10 --soak-min 1 --warmup-s 10
    python benchmarks/soak.py --out runs/compare --capacity 60 --soak-min 0 --compare

The server: ``visnet serve`` on a copy of ``--index`` (default ``data/demo-index``), with
``models/visnet-default.pt`` and ``models/detector-default.pt`` and the production defaults, on
the same machine as this load generator.

Runs (the 2-core development machine; other work beside them):
- 2026-12-02 17:12, the quick check above (with ``--start-rate 4 --step-s 15 --bisect 1
  --compare --modes open,closed``), beside other engineers' test and browser runs (load average
  7.1): capacity 24 requests/s, the 1-minute soak at 19.2/s with 0 errors and RSS +0.4%.
- 2026-12-02 16:35-17:06, ``--capacity 25 --load 1 --soak-min 0 --compare --step-s 45``
  (and ``--modes overload``), the engine as it is and with the proposed model slots, one after
  the other, load average 2-6 from other work: README, "writes against searches".
- 2026-12-02 18:04-18:18, the defaults (capacity steps, then a 10-minute soak at 80%), beside
  one other engineer's benchmark (load average 1.0-2.3): capacity 80 requests/s, 0 errors in
  38,513 soak requests, RSS +8.2% as written products joined (README, speed table;
  `docs/soak.png`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _load import (
    Answer,
    Request,
    by_endpoint,
    closed_loop,
    get_request,
    install_uvloop,
    open_loop,
    percentiles,
    product_request,
    search_request,
)
from _server import (
    API_KEY,
    catalog_root,
    copy_index,
    free_port,
    rss_mb,
    set_images,
    start_server,
    stop_server,
)

SIMILAR, SEARCH, WRITE = "similar", "search", "write"
WINDOW = 60.0  # s: the soak table's rows
PLOT_WINDOW = 10.0  # s: the plot's points


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--index", type=Path, default=Path("data/demo-index"))
    p.add_argument("--model", default="models/visnet-default.pt", help="the index's model")
    p.add_argument("--detector", default="models/detector-default.pt", help="'none': no detector")
    p.add_argument("--out", type=Path, required=True, help="folder for soak.json and soak.png")
    p.add_argument("--start-rate", type=float, default=20.0, help="first step, requests/s")
    p.add_argument("--max-rate", type=float, default=5000.0, help="stop doubling here")
    p.add_argument("--bisect", type=int, default=3, help="halvings after the first failure")
    p.add_argument("--step-s", type=float, default=30.0, help="seconds a step")
    p.add_argument(
        "--p99-limit", type=float, default=1.0, help="s every endpoint's p99 stays under"
    )
    p.add_argument("--capacity", type=float, help="skip the search: capacity in requests/s")
    p.add_argument("--load", type=float, default=0.8, help="soak rate as a share of capacity")
    p.add_argument("--soak-min", type=float, default=10.0, help="soak minutes (0: no soak)")
    p.add_argument("--warmup-s", type=float, default=60.0, help="soak seconds before RSS counts")
    p.add_argument("--rss-every", type=float, default=5.0, help="s between RSS samples")
    p.add_argument("--compare", action="store_true", help="writes against searches (item 6)")
    p.add_argument("--connections", type=int, default=16, help="closed loop of --compare")
    p.add_argument(
        "--overload", type=float, default=4.0, help="--compare's overload: this times capacity"
    )
    p.add_argument(
        "--modes",
        type=lambda v: v.split(","),
        default=["open", "overload", "closed"],
        help="--compare's loads: open,overload,closed",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting (VISNET_NAME), e.g. model_workers=2; repeatable",
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


# ---- the mix ---------------------------------------------------------------------------------


class Mix:
    """Picks the next request: 2% writes, 3% searches, the rest /similar, in a seeded order.

    The kinds come from their own random sequence, so two mixes of one seed send their
    searches at the same places; ``fresh(writes=False)`` sends /similar where writes were.
    """

    WRITES, SEARCHES = 0.02, 0.03

    def __init__(
        self, similar: list[bytes], searches: list[bytes], writes: list[bytes], seed: int
    ) -> None:
        self.similar, self.searches, self.write_list, self.seed = similar, searches, writes, seed
        self.writes = itertools.cycle(writes)
        self.kinds, self.picks = random.Random(seed), random.Random(seed + 1)

    def fresh(self, writes: bool = True) -> Mix:
        """The mix from its start again, with or without its writes."""
        return Mix(self.similar, self.searches, self.write_list if writes else [], self.seed)

    def __call__(self) -> Request:
        draw = self.kinds.random()
        if draw < self.WRITES and self.write_list:
            return WRITE, next(self.writes)
        if self.WRITES <= draw < self.WRITES + self.SEARCHES:
            return SEARCH, self.picks.choice(self.searches)
        return SIMILAR, self.picks.choice(self.similar)


def build_mix(index: Path, port: int, seed: int) -> Mix:
    import httpx

    root = catalog_root(index)
    if root is None:
        raise SystemExit(f"{index}'s catalog folder (build.json) is not here: no photos")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        ids, params = [], {"limit": "100"}
        while len(ids) < 2000:
            page = client.get("/v1/products", params=params).json()
            ids += [product["id"] for product in page["products"]]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
        categories = [c["name"] for c in client.get("/v1/categories").json()["categories"]]
    similar = [get_request(f"/v1/products/{pid}/similar") for pid in ids]
    searches = [search_request(photo) for photo in set_images(root, "street", 16)]
    images = set_images(root, "catalog", 100)
    writes = [
        product_request(f"soak-{n:03d}", categories[n % len(categories)], "soak", [image], API_KEY)
        for n, image in enumerate(images)
    ]
    return Mix(similar, searches, writes, seed)


# ---- capacity --------------------------------------------------------------------------------


def passes(summary: dict[str, dict[str, float]], limit_s: float) -> bool:
    return all(s["errors"] == 0 and s["p99_ms"] < limit_s * 1000 for s in summary.values())


def step(port: int, mix: Callable[[], Request], rate: float, seconds: float, seed: int) -> dict:
    answers = asyncio.run(open_loop(port, mix, rate, seconds, random.Random(seed)))
    return {"rate": round(rate, 1), "answered_per_s": round(len(answers) / seconds, 1)} | {
        "endpoints": by_endpoint(answers)
    }


def print_step(found: dict, ok: bool | None = None) -> None:
    cells = "  ".join(
        f"{name} {s['p50_ms']:>7.1f} / {s['p99_ms']:>7.1f} ms ({int(s['errors'])} err)"
        for name, s in found["endpoints"].items()
    )
    verdict = "" if ok is None else ("pass" if ok else "FAIL")
    print(f"{found['rate']:>8.1f}  {found['answered_per_s']:>8.1f}  {cells}  {verdict}", flush=True)


def find_capacity(port: int, mix: Mix, args: argparse.Namespace) -> tuple[float, list[dict]]:
    print("    rate  answered  per endpoint: p50 / p99 (errors)")
    steps, passed, failed, rate = [], None, None, args.start_rate
    while rate <= args.max_rate:
        found = step(port, mix, rate, args.step_s, args.seed + len(steps))
        ok = passes(found["endpoints"], args.p99_limit)
        steps.append(found | {"pass": ok})
        print_step(found, ok)
        if not ok:
            failed = rate
            break
        passed, rate = rate, rate * 2
    for _ in range(args.bisect if failed is not None and passed is not None else 0):
        assert passed is not None and failed is not None
        rate = (passed + failed) / 2
        found = step(port, mix, rate, args.step_s, args.seed + len(steps))
        ok = passes(found["endpoints"], args.p99_limit)
        steps.append(found | {"pass": ok})
        print_step(found, ok)
        passed, failed = (rate, failed) if ok else (passed, rate)
    if passed is None:
        raise SystemExit(f"even {args.start_rate} requests/s broke the limits: lower --start-rate")
    return passed, steps


# ---- the soak --------------------------------------------------------------------------------


async def soak_run(
    port: int, pid: int, mix: Mix, rate: float, seconds: float, args: argparse.Namespace
) -> tuple[list[Answer], list[tuple[float, float]]]:
    """The open loop for ``seconds`` beside a sampler of the server's RSS: (answers, samples)."""
    loop, rss = asyncio.get_running_loop(), []
    start = loop.time()

    async def sample() -> None:
        while True:
            rss.append((loop.time() - start, rss_mb(pid)))
            await asyncio.sleep(args.rss_every)

    sampler = asyncio.create_task(sample())
    answers = await open_loop(port, mix, rate, seconds, random.Random(args.seed))
    sampler.cancel()
    rss.append((loop.time() - start, rss_mb(pid)))
    return answers, rss


def windows(answers: list[Answer], width: float) -> list[dict]:
    """Per window of ``width`` s (by due time): requests/s, errors, per-endpoint percentiles."""
    count = int(max((a.due for a in answers), default=0) // width) + 1
    rows = []
    for n in range(count):
        inside = [a for a in answers if n * width <= a.due < (n + 1) * width]
        rows.append(
            {
                "start_s": n * width,
                "per_s": round(len(inside) / width, 1),
                "errors": sum(not 200 <= a.status < 400 for a in inside),
                "endpoints": {
                    name: percentiles(
                        a.latency for a in inside if a.endpoint == name and 200 <= a.status < 400
                    )
                    for name in (SIMILAR, SEARCH, WRITE)
                },
            }
        )
    return rows


def rss_growth(rss: list[tuple[float, float]], warmup: float) -> dict[str, float]:
    after = [mb for t, mb in rss if t >= warmup]
    if not after:
        return {}
    base = after[0]
    return {
        "after_warmup_mb": round(base, 1),
        "max_mb": round(max(after), 1),
        "last_mb": round(after[-1], 1),
        "growth_pct": round(100 * (max(after) - base) / base, 2),
    }


def soak(port: int, pid: int, mix: Mix, rate: float, args: argparse.Namespace) -> dict:
    seconds = args.soak_min * 60
    answers, rss = asyncio.run(soak_run(port, pid, mix, rate, seconds, args))
    result = {
        "rate": round(rate, 1),
        "seconds": seconds,
        "endpoints": by_endpoint(answers),
        "errors": sum(not 200 <= a.status < 400 for a in answers),
        "minutes": windows(answers, WINDOW),
        "plot_windows": windows(answers, PLOT_WINDOW),
        "rss": [(round(t, 1), round(mb, 1)) for t, mb in rss],
        "rss_growth": rss_growth(rss, args.warmup_s),
    }
    print(f"soak at {rate:.1f} requests/s for {seconds / 60:g} min:")
    print(
        "  minute  per s  errors  "
        + "  ".join(f"{n} p50 / p99 ms" for n in (SIMILAR, SEARCH, WRITE))
    )
    for row in result["minutes"]:
        cells = "  ".join(
            f"{row['endpoints'][n]['p50_ms']:>7.1f} / {row['endpoints'][n]['p99_ms']:>7.1f}"
            for n in (SIMILAR, SEARCH, WRITE)
        )
        print(f"  {row['start_s'] / 60:>6.0f}  {row['per_s']:>5.1f}  {row['errors']:>6}  {cells}")
    print(f"  whole soak: {json.dumps(result['endpoints'])}")
    print(f"  errors {result['errors']}; RSS {json.dumps(result['rss_growth'])}")
    return result


def plot(result: dict, capacity: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["plot_windows"]
    t = (np.array([row["start_s"] for row in rows]) + PLOT_WINDOW / 2) / 60
    fig, (lat, load, mem) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for name, colour in ((SIMILAR, "tab:blue"), (SEARCH, "tab:orange"), (WRITE, "tab:green")):
        for key, style in (("p50_ms", ":"), ("p99_ms", "-")):
            values = [row["endpoints"][name][key] for row in rows]
            lat.plot(t, values, style, color=colour, label=f"{name} {key[:3]}")
    lat.axhline(1000, color="grey", lw=0.8)
    lat.set(yscale="log", ylabel="latency, ms")
    lat.legend(fontsize=7, ncol=3)
    load.plot(t, [row["per_s"] for row in rows], label="requests/s")
    load.plot(
        t, [row["errors"] for row in rows], color="red", label=f"errors per {PLOT_WINDOW:g} s"
    )
    load.set(ylabel="requests")
    load.legend(fontsize=7)
    rss = np.array(result["rss"]) if result["rss"] else np.zeros((0, 2))
    mem.plot(rss[:, 0] / 60, rss[:, 1])
    mem.set(ylabel="server RSS, MB", xlabel="minutes")
    share = result["rate"] / capacity
    fig.suptitle(
        f"soak at {result['rate']:.0f} requests/s ({share:.0%} of a capacity of {capacity:.0f}), "
        + time.strftime("%Y-%m-%d")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- writes against searches -----------------------------------------------------------------


def compare(port: int, mix: Mix, rate: float, args: argparse.Namespace) -> dict:
    """/search latency with and without the writes, open loop at ``rate`` and closed loop: the
    same arrivals, the same searches at the same places, /similar where the writes were."""
    over = args.overload * rate / args.load
    modes = {
        "open": (f"open loop {rate:.0f}/s", lambda m: step(port, m, rate, args.step_s, args.seed)),
        "overload": (
            f"open loop {over:.0f}/s",
            lambda m: step(port, m, over, args.step_s, args.seed),
        ),
        "closed": (f"closed loop {args.connections} conns", lambda m: closed(port, m, args)),
    }
    out: dict = {}
    print(f"/search with and without writes ({args.step_s:g} s each):")
    for name, run in (modes[mode] for mode in args.modes):
        for label, writes in (("with writes", True), ("without", False)):
            found = run(mix.fresh(writes))
            out[f"{name}, {label}"] = found
            search = found["endpoints"].get(SEARCH, {})
            print(
                f"  {name:>24}  {label:>11}: /search p50 {search.get('p50_ms', float('nan')):>7.1f}"
                f" p99 {search.get('p99_ms', float('nan')):>7.1f} ms ({search.get('requests', 0)}"
                f" searches, {search.get('errors', 0)} refused or failed;"
                f" {found['answered_per_s']} answered/s)",
                flush=True,
            )
    return out


def closed(port: int, mix: Callable[[], Request], args: argparse.Namespace) -> dict:
    answers, took = asyncio.run(closed_loop(port, mix, 10**9, args.connections, args.step_s))
    return {"answered_per_s": round(len(answers) / took, 1), "endpoints": by_endpoint(answers)}


# ---- main ------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    install_uvloop()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="visnet-soak-"))
    started = time.strftime("%Y-%m-%d %H:%M")
    print(f"{started}  load average {os.getloadavg()[0]:.1f}")
    index, port = copy_index(args.index, work / "index"), free_port()
    detector = None if args.detector == "none" else args.detector
    settings = dict(item.split("=", 1) for item in args.set)
    server = start_server(
        index, args.model, port, args.out / "server.log", detector, settings, API_KEY
    )
    result: dict = {"started": started, "args": {k: str(v) for k, v in vars(args).items()}}
    try:
        mix = build_mix(index, port, args.seed)
        step(port, mix, args.start_rate / 2, min(10.0, args.step_s), args.seed)  # warm-up
        if args.capacity is None:
            result["capacity"], result["steps"] = find_capacity(port, mix, args)
        else:
            result["capacity"] = args.capacity
        rate = args.load * result["capacity"]
        print(f"capacity {result['capacity']:.1f} requests/s; soak at {rate:.1f}")
        if args.soak_min > 0:
            result["soak"] = soak(port, server.pid, mix, rate, args)
            plot(result["soak"], result["capacity"], args.out / "soak.png")
        if args.compare:
            result["compare"] = compare(port, mix, rate, args)
    finally:
        stop_server(server)
        shutil.rmtree(work, ignore_errors=True)
    result["load_average_after"] = os.getloadavg()
    (args.out / "soak.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out / 'soak.json'}" + (" and soak.png" if args.soak_min > 0 else ""))


if __name__ == "__main__":
    main()
