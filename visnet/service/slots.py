"""The model's slots: at most ``workers`` model calls (detect, embed) at once; waiting searches
go before waiting writes, first come first served within each; past ``queue`` waiting callers a
new one is refused (``ModelBusyError``: 503 with Retry-After), so a wait has a ceiling."""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SEARCH", "WRITE", "ModelBusyError", "ModelSlots"]

SEARCH, WRITE = 0, 1  # priorities: the lower goes first


class ModelBusyError(RuntimeError):
    """Every model slot is taken and ``queue`` callers already wait for one."""

    def __init__(self, queue: int, retry_after: int) -> None:
        super().__init__(
            f"the model is busy: {queue} requests are already waiting for it; "
            f"retry in {retry_after} s"
        )
        self.retry_after = retry_after


class ModelSlots:
    """``hold(priority)``: a model slot for the block. A freed slot passes straight to the
    first waiter (lowest priority, then earliest), so no newcomer overtakes it."""

    def __init__(self, workers: int, queue: int, retry_after: int = 1) -> None:
        self.queue, self.retry_after = queue, retry_after
        self._lock = threading.Lock()
        self._free = workers
        self._waiting: list[tuple[int, int, threading.Event]] = []
        self._order = itertools.count()

    def waiting(self) -> int:
        return len(self._waiting)

    @contextmanager
    def hold(self, priority: int) -> Iterator[None]:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                turn = None
            elif len(self._waiting) >= self.queue:
                raise ModelBusyError(self.queue, self.retry_after)
            else:
                turn = threading.Event()
                heapq.heappush(self._waiting, (priority, next(self._order), turn))
        if turn is not None:
            turn.wait()  # set by the caller that handed its slot over
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._lock:
            if self._waiting:
                heapq.heappop(self._waiting)[2].set()
            else:
                self._free += 1
