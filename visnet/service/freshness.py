"""Are the precomputed recommendation lists fresh? Marked stale on writes, refreshed in the back.

The index stores one "similar products" list per product, computed at build time. A new or
replaced product makes every list possibly stale (it may belong in them), so the service marks
the lists stale before each upsert, persisted in ``INDEX/service-state.json`` (a restart
remembers), answers ``/similar`` live while they are stale, and recomputes all lists
``refresh_after_s`` seconds after the last write. A write during a refresh keeps them stale.
Deletes need no mark: stored lists skip deleted products, and a list left shorter than the
asked ``k`` is answered live.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime

from visnet.index.catalog_index import CatalogIndex
from visnet.io import write_json_atomic

__all__ = ["STATE_FILE", "Recommendations"]

log = logging.getLogger(__name__)

STATE_FILE = "service-state.json"


class Recommendations:
    """Freshness of the stored lists, and the background thread that recomputes them."""

    def __init__(self, index: CatalogIndex, k: int, refresh_after_s: float) -> None:
        self.index, self.k, self.refresh_after_s = index, k, refresh_after_s
        self.path = index.path / STATE_FILE
        self.generation = 0  # bumped by every write; a refresh only counts if none came meanwhile
        self._due: float | None = None
        self._stop = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.fresh = not self._stale_on_disk()
        if not self.fresh:
            self._due = time.monotonic() + refresh_after_s

    def _stale_on_disk(self) -> bool:
        if not self.path.is_file():
            return False  # a freshly built index: its lists were computed after its last write
        return bool(json.loads(self.path.read_text()).get("recommendations_stale_since"))

    def _persist(self, stale: bool) -> None:
        since = datetime.now(UTC).isoformat(timespec="seconds") if stale else None
        write_json_atomic(self.path, {"recommendations_stale_since": since})

    def note_write(self) -> None:
        """Call before a write that leaves the lists valid (a delete): only bumps the generation."""
        with self._cond:
            self.generation += 1

    def mark_stale(self) -> None:
        """Call before a catalog upsert: live answers from now until the next refresh."""
        with self._cond:
            self.generation += 1
            if self.fresh:
                self._persist(stale=True)
            self.fresh = False
            self._due = time.monotonic() + self.refresh_after_s
            self._cond.notify_all()

    def start(self) -> None:
        if self.refresh_after_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="visnet-refresh", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the thread; False when a refresh is still running after ``timeout``."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (self._due is None or time.monotonic() < self._due):
                    wait = None if self._due is None else self._due - time.monotonic()
                    self._cond.wait(wait)
                if self._stop:
                    return
                self._due, generation = None, self.generation
            self.refresh(generation)

    def refresh(self, generation: int | None = None) -> bool:
        """Recompute every list now; True when they are fresh afterwards."""
        generation = self.generation if generation is None else generation
        start = time.perf_counter()
        try:
            count = self.index.precompute_similar(k=self.k)
        except Exception:  # a write racing the refresh: stay stale and try again later
            log.exception("recommendation refresh failed; lists stay stale")
            with self._cond:
                self._due = time.monotonic() + self.refresh_after_s
            return False
        with self._cond:
            if generation != self.generation:
                return False  # written meanwhile; the write scheduled another refresh
            self.fresh = True
            self._persist(stale=False)
        log.info("refreshed %d recommendation lists in %.1fs", count, time.perf_counter() - start)
        return True
