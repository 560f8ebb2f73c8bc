"""The model's slots (`visnet.service.slots`): searches before writes, first come first served,
a bound on the waiting, against a naive record of who ran when."""

from __future__ import annotations

import threading
import time

import pytest

from visnet.service.slots import SEARCH, WRITE, ModelBusyError, ModelSlots


def _queue_behind(slots: ModelSlots, jobs: list[tuple[str, int]]) -> list[str]:
    """Hold the only slot, queue ``jobs`` (name, priority) one after another, release: the
    order they ran in."""
    ran: list[str] = []
    release = threading.Event()

    def job(name: str, priority: int) -> None:
        with slots.hold(priority):
            ran.append(name)

    def holder() -> None:
        with slots.hold(SEARCH):
            release.wait()

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    while slots._free:  # the holder has it
        time.sleep(0.001)
    for name, priority in jobs:
        threads.append(threading.Thread(target=job, args=(name, priority)))
        threads[-1].start()
        while slots.waiting() < len(threads) - 1:  # queued in this order
            time.sleep(0.001)
    release.set()
    for thread in threads:
        thread.join(5)
    return ran


def test_waiting_searches_go_before_waiting_writes_in_arrival_order() -> None:
    jobs = [("w1", WRITE), ("s1", SEARCH), ("w2", WRITE), ("s2", SEARCH), ("s3", SEARCH)]
    assert _queue_behind(ModelSlots(1, queue=10), jobs) == ["s1", "s2", "s3", "w1", "w2"]


def test_a_caller_past_the_queue_bound_is_refused_at_once() -> None:
    slots = ModelSlots(1, queue=2, retry_after=3)
    release = threading.Event()
    started = threading.Barrier(3)

    def hold() -> None:
        with slots.hold(SEARCH):
            release.wait()

    def wait() -> None:
        started.wait()
        with slots.hold(SEARCH):
            pass

    first = threading.Thread(target=hold)
    first.start()
    while slots._free:
        time.sleep(0.001)
    waiters = [threading.Thread(target=wait) for _ in range(2)]
    for thread in waiters:
        thread.start()
    started.wait()
    while slots.waiting() < 2:
        time.sleep(0.001)
    with (
        pytest.raises(ModelBusyError, match="2 requests are already waiting") as refused,
        slots.hold(WRITE),
    ):
        pass
    assert refused.value.retry_after == 3
    release.set()
    for thread in [first, *waiters]:
        thread.join(5)
    assert slots.waiting() == 0 and slots._free == 1  # every slot came back


def test_no_more_than_workers_calls_run_at_once() -> None:
    slots, running, most = ModelSlots(2, queue=100), [0], [0]
    lock = threading.Lock()

    def job() -> None:
        with slots.hold(SEARCH):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.002)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=job) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert most[0] == 2
