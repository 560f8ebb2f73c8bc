"""The benchmarks' real server: an index copied aside, `visnet serve` started and stopped as a
subprocess on 127.0.0.1, its metrics and memory read, and demo-set images to send it.

Shared by `api.py`, `soak.py` and `kill_trials.py`; nothing here is timed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "service"))
from service_helpers import free_port  # noqa: E402

__all__ = [
    "API_KEY",
    "HOST",
    "catalog_root",
    "copy_index",
    "free_port",
    "metric_values",
    "metrics_text",
    "rss_mb",
    "set_images",
    "start_server",
    "stop_server",
]

HOST = "127.0.0.1"  # never anything else: these tools only load a server they started themselves
API_KEY = "benchmark-key"


def copy_index(source: Path, target: Path) -> Path:
    """A copy of an index folder (its lock file left behind), so the given one never changes."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.lock"))
    return target


def catalog_root(index: Path) -> Path | None:
    """The catalog folder the index was built from (``build.json``), if it is still there."""
    build = index / "build.json"
    root = json.loads(build.read_text()).get("catalog_root") if build.is_file() else None
    return Path(root) if root and Path(root).is_dir() else None


def set_images(root: Path, kind: str, count: int) -> list[bytes]:
    """``count`` images of a Street2Shop-layout set, spread over its categories in a fixed
    order: ``street`` photos of its test pairs, or ``catalog`` (shop) images."""
    pattern = "test_pairs_*.json" if kind == "street" else "retrieval_*.json"
    ids: list[str] = []
    for listing in sorted((root / "meta" / "json").glob(pattern)):
        ids += [str(entry["photo"]) for entry in json.loads(listing.read_text())]
    unique = list(dict.fromkeys(ids))
    paths = (root / "photos" / f"{photo}.jpg" for photo in unique[:: max(1, len(unique) // count)])
    out = [path.read_bytes() for path in paths if path.is_file()][:count]
    if not out:
        raise FileNotFoundError(f"no {kind} images under {root}")
    return out


def start_server(
    index: Path,
    model: str,
    port: int,
    log: Path,
    detector: str | None = None,
    settings: dict[str, str] | None = None,
    api_key: str | None = None,
    timeout: float = 300.0,
) -> subprocess.Popen:
    """``visnet serve`` on ``index``, ready (``/readyz``) when this returns; its output in ``log``
    (appended). ``settings``: more ``VISNET_*`` variables, by setting name."""
    env = dict(os.environ)
    env.update({f"VISNET_{name.upper()}": value for name, value in (settings or {}).items()})
    if api_key is not None:
        env["VISNET_API_KEY"] = api_key
    command = [str(Path(sys.executable).parent / "visnet"), "serve", "--index", str(index)]
    command += ["--model", model, "--host", HOST, "--port", str(port)]
    if detector:
        command += ["--detector", detector]
    with log.open("ab") as sink:
        server = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"server did not become ready in {timeout:.0f} s")


def stop_server(server: subprocess.Popen) -> None:
    """A graceful stop (SIGINT), a kill after 30 s."""
    server.send_signal(signal.SIGINT)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def metric_values(port: int, name: str) -> dict[str, float]:
    """The samples of one metric on ``/metrics``: {label text (``kind="temp_files"``): value}."""
    out = {}
    for line in metrics_text(port).splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            out[key[len(name) :].strip("{}")] = float(value)
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of a process, MB (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"process {pid} has no VmRSS")
