"""The service on the Milvus store (``VISNET_STORE=milvus``, Milvus Lite in the server's own
process): search, similar and ingestion end to end, and a kill -9 during API writes that leaves
the product database and Milvus consistent after the restart."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from service_helpers import (
    build_tiny_catalog,
    free_port,
    running_server,
    service_settings,
    wait_ready,
)

from visnet.embed.registry import create_embedder
from visnet.index import CatalogIndex
from visnet.service import create_app

KEY = "milvus-test-key"


def _noise(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _milvus_env(monkeypatch: pytest.MonkeyPatch, folder: Path) -> dict[str, str]:
    env = {"VISNET_STORE": "milvus", "VISNET_MILVUS_URI": str(folder / "milvus.db")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _fingerprint(index: Path) -> str:
    import json

    return json.loads((index / "manifest.json").read_text())["model_fingerprint"]


def test_serve_on_milvus_answers_and_finds_an_ingested_product_in_the_next_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _milvus_env(monkeypatch, tmp_path)
    root, index = build_tiny_catalog(tmp_path)  # built into Milvus Lite: VISNET_STORE=milvus
    settings = service_settings(index=index, model="colour-histogram", api_key=KEY)
    with (
        running_server(create_app(settings)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        photo = (root / "photos" / "1.jpg").read_bytes()
        found = client.post("/v1/search", files={"image": ("q.jpg", photo)}, data={"k": "3"})
        assert found.json()["queries"][0]["results"][0]["product_id"] == "1"
        similar = client.get("/v1/products/1/similar", params={"k": 3})
        assert similar.status_code == 200 and len(similar.json()["results"]) == 3
        views = [("images", ("v.png", _noise(5)))]
        fields = {"id": "fresh-1", "category": "circle", "title": "fresh"}
        put = client.post("/v1/products", data=fields, files=views, headers={"X-API-Key": KEY})
        assert put.status_code == 201, put.text
        next_query = client.post("/v1/search", files={"image": ("q.png", _noise(5))})
        assert next_query.json()["queries"][0]["results"][0]["product_id"] == "fresh-1"
        gone = client.delete("/v1/products/fresh-1", headers={"X-API-Key": KEY})
        assert gone.status_code == 200
        after = client.post("/v1/search", files={"image": ("q.png", _noise(5))}, data={"k": "20"})
        assert "fresh-1" not in [r["product_id"] for r in after.json()["queries"][0]["results"]]
    manifest_store = CatalogIndex.open(index, model_fingerprint=_fingerprint(index))
    try:
        assert manifest_store.manifest["store"]["engine"] == "milvus"
        assert manifest_store.store.count() == manifest_store.products.vector_count()
    finally:
        manifest_store.close()


# ---- kill -9 during API writes -------------------------------------------------------------


def _serve(index: Path, port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "visnet.cli", "serve", "--index", str(index)]
    command += ["--model", "colour-histogram", "--port", str(port)]
    full = {**os.environ, **env, "VISNET_API_KEY": KEY}
    with log.open("ab") as sink:
        server = subprocess.Popen(command, env=full, stdout=sink, stderr=subprocess.STDOUT)
    ready = wait_ready(port, server, 60, log)
    assert ready.status_code == 200, log.read_text()[-2000:]
    return server


class Writer(threading.Thread):
    """Replaces its own three products over and over; records what the server acknowledged."""

    def __init__(self, number: int, url: str) -> None:
        super().__init__(daemon=True)
        self.number, self.url = number, url
        self.acked: dict[str, tuple[str, int]] = {}  # product -> (title, views) acknowledged
        self.in_flight: dict[str, tuple[str, int]] = {}

    def seed(self, seq: int, view: int) -> int:
        """The noise picture of this writer's write ``seq``, view ``view``."""
        return 100_000 * self.number + 7 * seq + view

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers={"X-API-Key": KEY}) as client:
            for seq in range(10_000):
                pid, title, views = f"w{self.number}-{seq % 3}", f"t{seq}", 1 + seq % 2
                files = [("images", (f"{v}.png", _noise(self.seed(seq, v)))) for v in range(views)]
                data = {"id": pid, "category": "circle", "title": title}
                self.in_flight[pid] = (title, views)
                try:
                    answer = client.post("/v1/products", data=data, files=files)
                except httpx.TransportError:
                    return  # killed: this one may have landed or not
                del self.in_flight[pid]
                assert answer.is_success, answer.text
                self.acked[pid] = (title, views)


def test_a_kill_during_api_writes_leaves_products_and_milvus_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _milvus_env(monkeypatch, tmp_path)
    _, index = build_tiny_catalog(tmp_path)
    port = free_port()
    server = _serve(index, port, env, tmp_path / "serve.log")
    writers = [Writer(n, f"http://127.0.0.1:{port}") for n in range(2)]
    for writer in writers:
        writer.start()
    deadline = time.monotonic() + 20
    while sum(len(w.acked) for w in writers) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.15)  # into the next writes
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    for writer in writers:
        writer.join(30)
    assert sum(len(w.acked) for w in writers) >= 5, (tmp_path / "serve.log").read_text()[-2000:]

    restarted = CatalogIndex.open(index, model_fingerprint=_fingerprint(index))  # as a restart
    try:
        assert restarted.products.pending_vector_ids().size == 0
        owned = np.array([row[0] for row in restarted.products.vector_table()], np.int64)
        restarted.store.get(owned)  # every vector a product owns is in Milvus ...
        assert restarted.store.count() == len(owned)  # ... and Milvus holds no other
        embedder = create_embedder("colour-histogram")
        for writer in writers:
            for pid, (title, views) in writer.acked.items():
                held = restarted.get(pid)
                possible = {(title, views), writer.in_flight.get(pid)}
                assert (held.title, len(held.images)) in possible, pid
                picture = _noise(writer.seed(int(held.title[1:]), 0))  # its first view's
                query = embedder.embed([Image.open(io.BytesIO(picture))])[0]
                assert restarted.search(query, 1)[0].product_id == pid
    finally:
        restarted.close()
