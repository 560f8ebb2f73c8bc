"""Shared by the memory benchmarks: a process's resident memory, split into anonymous memory
(its own heap) and file-backed pages (memory-mapped files, which the page cache holds)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
from pathlib import Path


def memory(trim: bool = True) -> dict[str, int]:
    """This process's anonymous and file-backed resident bytes, and its peak resident bytes;
    memory the C heap holds free is handed back first (`trim`), so that it is not counted."""
    if trim:
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):  # glibc only
            ctypes.CDLL("libc.so.6").malloc_trim(0)
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "RssFile", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


class PeakAnon:
    """The highest anonymous resident memory seen while the `with` block runs, sampled every
    `interval` seconds (the kernel keeps a peak only for all resident memory, mapped files
    included)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, memory(trim=False)["RssAnon"])
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakAnon:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, memory(trim=False)["RssAnon"])
