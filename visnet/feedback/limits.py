"""A rate limit per client: one token bucket per key (a client id or address), in memory."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["RateLimiter", "address_key"]

IPV6_PREFIX = 64  # one subscriber's share of IPv6 addresses: a /64 is routinely one host's


def address_key(host: str) -> str:
    """The rate-limit key of a client address: an IPv4 address itself (an IPv4-mapped IPv6 one
    too), an IPv6 address its /64, so one client cannot take a fresh bucket from every address of
    its network; anything else (a test client's name) as it is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(getattr(address, "ipv4_mapped", None) or address)


class RateLimiter:
    """Token buckets: each client holds at most `burst` tokens and gains `rate` a second.

    `acquire(client, cost)` takes `cost` tokens and answers 0.0, or takes none and answers the
    seconds until it could (for a ``Retry-After`` header). At most `max_clients` buckets are
    kept, the least recently used dropped first: a dropped client comes back with a full bucket,
    so the bound trades a little leniency for memory a flood of addresses cannot grow.
    Thread-safe; `clock` (monotonic seconds) is there for tests.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ValueError(
                f"need rate > 0, burst >= 1 and max_clients >= 1; got {rate}, {burst}, "
                f"{max_clients}"
            )
        self.rate, self.burst, self.max_clients, self.clock = rate, burst, max_clients, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self._lock = threading.Lock()

    def acquire(self, client: str, cost: float = 1.0) -> float:
        """Take `cost` tokens from `client`'s bucket: 0.0 if taken, else seconds to wait."""
        if not 0 < cost <= self.burst:
            raise ValueError(f"cost must be in (0, burst={self.burst}]; got {cost}")
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            wait = 0.0 if tokens >= cost else (cost - tokens) / self.rate
            self._buckets[client] = (tokens - cost if wait == 0.0 else tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait

    def __len__(self) -> int:
        return len(self._buckets)
