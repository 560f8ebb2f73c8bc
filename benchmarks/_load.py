"""Load on the benchmarks' real server over raw keep-alive HTTP/1.1 on loopback: requests built
once as bytes, a closed loop (N connections, each sending its next request when the last is
answered: `api.py`) and an open loop (requests at a set rate whatever the answers: `soak.py`),
and latency percentiles.

A request is ``(endpoint, bytes)``: the endpoint names it in the results. Status 0 is a
connection error, or in the open loop a request still unanswered ``REQUEST_TIMEOUT`` s after the
last one was due. Nothing is added per request beyond what the exchange needs (no timer, no
task in the closed loop): the generator shares the machine with the server it measures.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
from _server import HOST

REQUEST_TIMEOUT = 120.0  # s the open loop waits for its last answers (then: status 0)
Request = tuple[str, bytes]


class Answer(NamedTuple):
    """One request's outcome: its endpoint, when it was due (s from the run's start; the send
    time in a closed loop), seconds from then to its answer, and the status (0: none)."""

    endpoint: str
    due: float
    latency: float
    status: int


# ---- requests --------------------------------------------------------------------------------


def install_uvloop() -> None:
    """The faster event loop for the load generator, when installed."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass


def get_request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def form_request(
    path: str,
    fields: dict[str, str],
    files: Iterable[tuple[str, bytes]],
    headers: dict[str, str] | None = None,
) -> bytes:
    """A multipart POST: text ``fields`` and ``files`` as ``(field name, JPEG bytes)``."""
    boundary = "visnetbench"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    for n, (name, data) in enumerate(files):
        parts.append(
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{n}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
    )
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return (head + "\r\n").encode() + body


def search_request(photo: bytes) -> bytes:
    return form_request("/v1/search", {}, [("image", photo)])


def product_request(
    product_id: str, category: str, title: str, images: list[bytes], api_key: str
) -> bytes:
    """``POST /v1/products``: create or replace a product from its images."""
    fields = {"id": product_id, "category": category, "title": title}
    files = [("images", image) for image in images]
    return form_request("/v1/products", fields, files, {"X-API-Key": api_key})


# ---- one exchange ----------------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, whether the server keeps the connection open)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return status, body, headers.get("connection", "").lower() != "close"


class _Connections:
    """Idle keep-alive connections to the server, opened when none is idle."""

    def __init__(self, port: int) -> None:
        self.port, self.idle = port, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]()

    async def exchange(self, request: bytes) -> int:
        """Send one request and read its answer; its status, or 0 on a failure. A kept-alive
        connection the server closed meanwhile (its keep-alive timeout) is replaced by a new
        one, as HTTP clients do: the request never reached the server on it."""
        if self.idle:
            reused = self.idle.pop()
            try:
                return await self._on(reused, request)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:  # the answer was cut off: a real failure
                    return 0
            except (ConnectionResetError, BrokenPipeError):
                pass
            except (OSError, ValueError):
                return 0
        try:
            conn = await asyncio.open_connection(HOST, self.port)
            return await self._on(conn, request)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            return 0

    async def _on(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes
    ) -> int:
        try:
            conn[1].write(request)
            status, _, keep = await read_response(conn[0])
        except BaseException:
            conn[1].close()
            raise
        if keep:
            self.idle.append(conn)
        else:
            conn[1].close()
        return status

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


# ---- the two loops ---------------------------------------------------------------------------


async def closed_loop(
    port: int, pick: Callable[[], Request], total: int, concurrency: int, seconds: float
) -> tuple[list[Answer], float]:
    """``concurrency`` connections, each sending ``pick()``'s next request when its last is
    answered, until ``total`` requests or ``seconds``: (answers, seconds taken)."""
    budget, answers = [total], list[Answer]()
    start = time.perf_counter()
    deadline = start + seconds

    async def worker() -> None:
        connections = _Connections(port)
        try:
            while budget[0] > 0 and time.perf_counter() < deadline:
                budget[0] -= 1
                endpoint, request = pick()
                sent = time.perf_counter()
                status = await connections.exchange(request)
                now = time.perf_counter()
                answers.append(Answer(endpoint, sent - start, now - sent, status))
        finally:
            connections.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers, time.perf_counter() - start


async def open_loop(
    port: int,
    pick: Callable[[], Request],
    rate: float,
    seconds: float,
    rng: random.Random,
    max_connections: int = 512,
) -> list[Answer]:
    """Requests due at Poisson arrivals of ``rate`` a second for ``seconds``, each sent when due
    whatever the others' fate (up to ``max_connections`` at once). Latency counts from when a
    request was due, so a server (or generator) that falls behind shows it in full."""
    loop = asyncio.get_running_loop()
    connections, slots = _Connections(port), asyncio.Semaphore(max_connections)
    answers: list[Answer] = []
    start = loop.time()

    async def send(due: float, endpoint: str, request: bytes) -> None:
        status = 0
        try:
            async with slots:
                status = await connections.exchange(request)
        finally:  # cancelled (unanswered in time): status 0
            answers.append(Answer(endpoint, due, loop.time() - start - due, status))

    tasks, due = [], rng.expovariate(rate)
    while due < seconds:
        wait = start + due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(send(due, *pick())))
        due += rng.expovariate(rate)
    if tasks:
        _, late = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    connections.close()
    return answers


# ---- results ---------------------------------------------------------------------------------


def percentiles(latencies: Iterable[float]) -> dict[str, float]:
    """p50, p90 and p99 in milliseconds (NaN when there is none)."""
    ms = np.asarray(list(latencies), dtype=float) * 1000
    if not len(ms):
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan")}
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50_ms": round(p50, 2), "p90_ms": round(p90, 2), "p99_ms": round(p99, 2)}


def by_endpoint(answers: Iterable[Answer]) -> dict[str, dict[str, float]]:
    """Per endpoint: requests, errors (no answer, or a status of 400 or more), and the latency
    percentiles of the others (a quick refusal must not pass for a fast answer)."""
    groups: dict[str, list[Answer]] = {}
    for answer in answers:
        groups.setdefault(answer.endpoint, []).append(answer)
    return {
        name: {
            "requests": len(group),
            "errors": sum(not 200 <= a.status < 400 for a in group),
            **percentiles(a.latency for a in group if 200 <= a.status < 400),
        }
        for name, group in sorted(groups.items())
    }
