"""The per-client token bucket, on a clock the test moves by hand."""

from __future__ import annotations

import pytest

from visnet.feedback import RateLimiter
from visnet.feedback.limits import address_key


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_client_gets_its_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)  # one token comes back in 1 / 2 s
    assert limiter.acquire("b") == 0.0  # another client has its own bucket
    clock.now += 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == pytest.approx(0.5)
    clock.now += 60
    assert [limiter.acquire("a") for _ in range(4)][-1] == pytest.approx(0.5)  # capped at burst
    assert limiter.acquire("c", cost=3) == 0.0
    assert limiter.acquire("c", cost=2) == pytest.approx(1.0)


def test_buckets_are_bounded_and_bad_settings_refused() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=1, max_clients=2, clock=clock)
    for client in ("a", "b", "c"):
        limiter.acquire(client)
    assert len(limiter) == 2
    assert limiter.acquire("a") == 0.0  # "a" was dropped first: it comes back full
    assert limiter.acquire("c") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="cost"):
        limiter.acquire("a", cost=2)
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate=0, burst=1)


def test_an_ipv6_client_has_one_bucket_for_its_whole_64() -> None:
    """A client that owns a /64 (every IPv6 subscriber) must not get a fresh bucket from each
    of its addresses: they share the /64's key; IPv4 and mapped IPv4 keep their address."""
    assert (
        address_key("2001:db8:1:2::1")
        == address_key("2001:db8:1:2:ffff::9")
        == ("2001:db8:1:2::/64")
    )
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("203.0.113.7") == address_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_key("testclient") == "testclient"
