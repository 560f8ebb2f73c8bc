"""Service test helpers: a real server in a thread (or a `visnet serve` process waited for), a
tiny catalog, a review queue, and how to start Debian's Chromium for the page (headless, no
network, never `playwright install`).

Tests import it by name (pyproject's pytest `pythonpath` puts tests/service/ on the path);
benchmarks/ and scripts/ put tests/service/ on `sys.path` first."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from visnet.service.settings import ENV_PREFIX, ServiceSettings, load_settings

__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "build_tiny_catalog",
    "free_port",
    "running_server",
    "seed_review_queue",
    "service_settings",
    "triplet_lines",
    "wait_ready",
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(
    app: FastAPI, port: int | None = None, timeout: float = 30.0, **options: Any
) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 in a background thread; yields the base URL.

    The lifespan runs as in production (model and index load before the first request).
    ``options`` are more ``uvicorn.Config`` arguments (``visnet.service.app.server_options``
    gives production's); the host is always 127.0.0.1.
    """
    import uvicorn

    port = port or free_port()
    options = {"log_level": "warning", "workers": 1, **options, "host": "127.0.0.1", "port": port}
    config = uvicorn.Config(app, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the test server on port {port} did not start; see the log")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


def wait_ready(
    port: int, server: subprocess.Popen, seconds: float = 90.0, log: Path | None = None
) -> httpx.Response:
    """The first answer of a `visnet serve` process's `/readyz` on ``port``; fails with the
    process's output (from ``log``, or its pipe once it has exited) if it exits or never
    answers. A server still running at the deadline is killed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and server.poll() is None:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
        except httpx.TransportError:
            time.sleep(0.1)
    if server.poll() is None:
        server.kill()
    if log is not None:
        output = log.read_text(errors="replace")[-4000:]
    else:
        output = server.communicate(timeout=10)[0] or b""
        output = output.decode(errors="replace")[-4000:] if isinstance(output, bytes) else output
    raise AssertionError(f"the server never answered /readyz (exit {server.poll()}):\n{output}")


def build_tiny_catalog(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """The synthetic set under ``folder/set`` and its colour-histogram index under
    ``folder/index`` (full dimension, recommendations precomputed). Takes well under a second."""
    from visnet.data.synthetic import make_synthetic_set
    from visnet.embed.registry import create_embedder
    from visnet.index.build import build_index

    root, index = folder / "set", folder / "index"
    make_synthetic_set(root, seed=seed)
    build_index(root, create_embedder("colour-histogram"), index, dim=0)
    return root, index


def triplet_lines(root: Path, count: int = 3) -> list[dict[str, Any]]:
    """Wild triplets from a Street2Shop-layout set: street crop, its product, another product."""
    from visnet.data.street2shop import read_set

    data = read_set(root)
    views: dict[str, list[str]] = {}
    for shop in data.shop:
        path = data.photo_path(shop.photo)
        if path is not None:
            views.setdefault(str(shop.product), []).append(path.relative_to(root).as_posix())
    lines = []
    for pair in data.pairs["train"][:count]:
        street = data.photo_path(pair.photo)
        others = [p for p in views if p != str(pair.product)]
        if street is None or not others:
            continue
        lines.append(
            {
                "query": {
                    "image": street.relative_to(root).as_posix(),
                    "bbox": pair.bbox.to_json(),
                },
                "positive": {"image": views[str(pair.product)][0]},
                "negative": {"image": views[others[0]][0]},
                "kind": "wild",
                "category": pair.category,
                "query_product": str(pair.product),
                "positive_product": str(pair.product),
                "negative_product": others[0],
            }
        )
    return lines


def seed_review_queue(root: Path, path: Path, count: int = 3) -> Path:
    """A review queue file with ``count`` pending wild triplets over the set at ``root``."""
    from visnet.triplets.review import ReviewQueue

    with ReviewQueue(path) as queue:
        queue.add(triplet_lines(root, count), root=root)
    return path


def service_settings(**values: Any) -> ServiceSettings:
    """Settings from these values and the defaults only: the ``VISNET_*`` variables of the shell
    that runs the tests do not leak in."""
    import pytest

    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.upper().startswith(ENV_PREFIX)]:
            patch.delenv(name)
        return load_settings(**values)
