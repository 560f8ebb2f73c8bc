"""The HTTP/1.1 protocol the service runs under uvicorn: its httptools protocol plus four limits.

uvicorn (0.55, httptools) bounds an idle kept-alive connection (``timeout_keep_alive``) but not
the request head (request line + headers), nor the body, nor how many connections are open: a
client could take forever to send a head or a body, the parser buffered a head of any size, and
every connection was kept. Issue #15 measured an 8,000,000-byte header accepted, and 300
connections that never finished their headers all still open after 45 s. hypercorn and granian,
which have such limits, are not installed, so this subclass adds them:

- **header timeout**: the head must be complete within ``header_timeout`` seconds of the
  connection opening, or, on a kept-alive connection, of the next request's first byte (the wait
  for that byte is uvicorn's keep-alive timeout, so an idle keep-alive is not cut shorter). Past
  it a connection that sent part of a head is answered 408 and closed; one that sent nothing
  (an idle or speculative connection: there is nothing to answer) is just closed.
- **header size**: a head over ``max_header_bytes`` is answered 431 and closed: counted as it
  arrives while the head is unfinished (so an endless header is refused within a read or two
  past the cap, never buffered whole), and as parsed (request line + header fields) when it
  ends in the read that brought it.
- **body timeout**: the body must be complete within ``body_timeout`` seconds of the head's end,
  whether the client stalls or trickles it; else 408 and close. Time the server itself stops
  reading (the app not yet reading, a pipelined request waiting its turn, a 100-continue not yet
  sent) does not count: the deadline is checked again a second later. The app's request ends as
  if the client had gone (its receive gets ``http.disconnect``), and its metrics record the 408.
- **connection cap**: at most ``max_connections`` open connections. A connection over the cap
  closes the one that has waited longest for a request head (idle kept-alive, or stalled in its
  head: those cost the server a socket and nothing else), so stalled heads cannot lock normal
  clients out; a head of its own that ends while every other connection has a request in
  progress is answered 503 with ``Retry-After`` and closed.

Answers sent here use the service's error shape (``errors.error_body``), as do the parser's 400s
(uvicorn's own are plain text), and close the connection: the rest of what the client sends is
never read. Where a response to an earlier (pipelined) request is still being written, a second
response would interleave with it, so the connection is only closed (after that response, for
a timeout). Each answer or close is counted in ``Metrics.refusals`` by reason and status.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any, Literal
from weakref import WeakKeyDictionary

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from visnet.service.errors import error_body
from visnet.service.metrics import ANSWERED, Metrics

__all__ = ["LimitedHttpToolsProtocol", "limited_protocol", "raise_file_limit"]

log = logging.getLogger(__name__)

# the request line beyond its method and target: " HTTP/1.1\r\n"; each header field's ": \r\n"
_LINE_OVERHEAD, _FIELD_OVERHEAD = 11, 4
_RECHECK = 1.0  # s: a body deadline that passed while the server was not reading is checked again
RETRY_AFTER = 1  # s a client refused at the connection cap is asked to wait
# per server: its connections waiting for a request head, oldest first (a dict as ordered set)
_WAITING: WeakKeyDictionary[ServerState, dict[LimitedHttpToolsProtocol, None]] = WeakKeyDictionary()


class _Refusal(Exception):
    """Raised from a parser callback to stop the parser; ``data_received`` sends the answer."""

    def __init__(self, status: int, code: str, message: str, reason: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.reason = status, code, message, reason


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body timeouts, a header size cap and a cap
    on open connections (module doc).

    ``limited_protocol`` makes a subclass with the limits set, for ``uvicorn.run(http=...)``.
    """

    header_timeout: float = 10.0
    max_header_bytes: int = 16 * 1024
    body_timeout: float = 60.0
    max_connections: int = 1000
    metrics: Metrics | None = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._waiting = _WAITING.setdefault(server_state, {})
        # one timer a connection, not one a request: it fires at the earliest deadline it was
        # armed for and re-arms itself while a later deadline stands (keep-alive requests only
        # move `_deadline`, which costs a float, not a timer handle)
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._phase: Literal["head", "body"] = "head"
        self._in_head = True  # from the connection's start, or a request's end, to headers' end
        self._head_seen = False  # a byte of the coming head has arrived
        self._head_bytes = 0  # bytes of the reads that began inside the coming head
        self._over_cap = False  # opened over the cap with no connection to close for it

    # ---- the connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.metrics is not None:
            self.metrics.connections.inc()
        self._arm_head_timer()
        self._note_waiting()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting.pop(self, None)
        if self.metrics is not None:
            self.metrics.connections.dec()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the head counted and timed; refusals leave in the service's shape."""
        self._unset_keepalive_if_required()
        began_in_head = self._in_head
        if began_in_head:
            self._head_seen = True
            self._head_bytes += len(data)
            self._arm_head_timer()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            refusal = exc.__context__
            if isinstance(refusal, _Refusal):
                self._refuse(refusal)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("invalid HTTP request")
            return
        # still inside the head this read began in: every byte of it was the head's
        if began_in_head and self._in_head and self._head_bytes > self.max_header_bytes:
            self._refuse(self._large_head(self._head_bytes))

    def send_400_response(self, msg: str) -> None:
        """An unparseable request: 400 `bad_request` in the service's shape, then close."""
        self._refuse(_Refusal(400, "bad_request", msg, "bad_request"))

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._note_waiting()

    # ---- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_seen = True
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._deadline = None
        self._in_head = False
        self._waiting.pop(self, None)
        size = len(self.parser.get_method()) + 1 + len(self.url) + _LINE_OVERHEAD + 2
        size += sum(len(name) + len(value) + _FIELD_OVERHEAD for name, value in self.headers)
        if size > self.max_header_bytes:
            raise self._large_head(size)  # the parser stops; data_received answers 431
        if self._over_cap:
            self._over_cap = len(self.connections) > self.max_connections
            if self._over_cap:
                raise _Refusal(503, "too_many_connections", self._full(), "max_connections")
        super().on_headers_complete()
        self._set_deadline("body", self.body_timeout)  # on_message_complete lifts it

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._deadline = None
        # the next head may follow; its timer starts with its first byte (till then the
        # keep-alive timeout, armed when the response is complete, bounds the wait)
        self._in_head, self._head_seen, self._head_bytes = True, False, 0
        self._note_waiting()

    # ---- the timeouts

    def _arm_head_timer(self) -> None:
        if self._deadline is None:
            self._set_deadline("head", self.header_timeout)

    def _set_deadline(self, phase: Literal["head", "body"], seconds: float) -> None:
        self._phase = phase
        self._deadline = deadline = self.loop.time() + seconds
        if self._timer is not None and self._timer.when() > deadline:
            self._timer.cancel()  # it would fire too late for this deadline
            self._timer = None
        if self._timer is None:
            self._timer = self.loop.call_later(seconds, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        left = deadline - self.loop.time()
        if left > 0:  # armed again for a later deadline since this timer was set
            self._timer = self.loop.call_later(left, self._timer_fired)
            return
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._phase == "head":
            self._head_timed_out()
        else:
            self._body_timed_out()

    def _head_timed_out(self) -> None:
        if self._busy():
            self.cycle.keep_alive = False  # close once that response is sent
        elif self._head_seen:
            self.logger.debug("request head not complete in %s s: 408", self.header_timeout)
            message = f"the request line and headers did not arrive within {self.header_timeout} s"
            self._answer_and_close(_Refusal(408, "request_timeout", message, "header_timeout"))
        else:
            self._count("header_timeout", "closed")
            self.transport.close()

    def _body_timed_out(self) -> None:
        cycle = self.cycle
        if cycle is None:  # no request of ours (an upgrade took the connection)
            return
        if self.flow.read_paused or self.pipeline or cycle.waiting_for_100_continue:
            self._set_deadline("body", _RECHECK)  # the server is not reading: not the client's
            return
        if cycle.response_started:  # answered without the body: close, never read the rest
            self._count("body_timeout", "closed")
            if cycle.response_complete:
                self.transport.close()
            else:
                cycle.keep_alive = False
            return
        self.logger.debug("request body not complete in %s s: 408", self.body_timeout)
        cycle.scope[ANSWERED] = 408  # type: ignore[literal-required]
        message = f"the request body did not arrive within {self.body_timeout} s of its headers"
        self._answer_and_close(_Refusal(408, "request_timeout", message, "body_timeout"))
        cycle.disconnected = True  # the app's request ends as if the client had gone
        cycle.message_event.set()

    # ---- the connection cap

    def _note_waiting(self) -> None:
        """Keep the server's queue of connections waiting for a head (oldest first) current."""
        if self._in_head and not self._busy() and not self.transport.is_closing():
            self._waiting.setdefault(self, None)
        else:
            self._waiting.pop(self, None)

    def _make_room(self) -> None:
        """Over the cap: close the connection that has waited longest for a head, else let
        this one's head be answered 503 (unless room is made meanwhile)."""
        while self._waiting:
            victim = next(iter(self._waiting))
            if victim is self:
                break
            del self._waiting[victim]
            if not victim.transport.is_closing():
                victim._evict()
                return
        self._over_cap = True

    def _evict(self) -> None:
        if self._head_seen:
            self._answer_and_close(
                _Refusal(503, "too_many_connections", self._full(), "max_connections")
            )
        else:
            self._count("max_connections", "closed")
            self.transport.close()

    def _full(self) -> str:
        return (
            f"the server has its maximum of {self.max_connections:,} connections open; "
            f"retry in {RETRY_AFTER} s"
        )

    # ---- answers

    def _large_head(self, size: int) -> _Refusal:
        message = (
            f"the request line and headers are over {self.max_header_bytes:,} bytes "
            f"({size:,} or more sent)"
        )
        return _Refusal(431, "headers_too_large", message, "headers_too_large")

    def _busy(self) -> bool:
        """A request of this connection has not had its whole response yet."""
        return self.cycle is not None and not self.cycle.response_complete

    def _refuse(self, refusal: _Refusal) -> None:
        """Answer a refusal met while parsing, unless another response is being written."""
        if refusal.status == 431:
            self.logger.warning("request head over %d bytes: 431", self.max_header_bytes)
        if self._busy():  # another answer would interleave with that one
            self._count(refusal.reason, "closed")
            self.transport.close()
            return
        self._answer_and_close(refusal)

    def _answer_and_close(self, refusal: _Refusal) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self._count(refusal.reason, str(refusal.status))
        body = error_body(refusal.code, refusal.message)
        content = [STATUS_LINE[refusal.status]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        if refusal.status == 503:
            content.append(f"retry-after: {RETRY_AFTER}\r\n".encode())
        content += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(content))
        self.transport.close()

    def _count(self, reason: str, status: str) -> None:
        if self.metrics is not None:
            self.metrics.refusals.labels(reason, status).inc()


def limited_protocol(
    header_timeout: float,
    max_header_bytes: int,
    body_timeout: float = LimitedHttpToolsProtocol.body_timeout,
    max_connections: int = LimitedHttpToolsProtocol.max_connections,
    metrics: Metrics | None = None,
) -> type[HttpToolsProtocol]:
    """A ``LimitedHttpToolsProtocol`` with these limits, counting its refusals in ``metrics``:
    uvicorn builds one per connection."""
    limits = {
        "header_timeout": header_timeout,
        "max_header_bytes": max_header_bytes,
        "body_timeout": body_timeout,
        "max_connections": max_connections,
        "metrics": metrics,
    }
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), limits)


# descriptors the process needs besides its connections: the index, the model, SQLite, logs
FILES_BESIDE_CONNECTIONS = 256


def raise_file_limit(max_connections: int) -> None:
    """Raise the process's open-file limit to hold ``max_connections`` sockets and the files
    the service opens beside them, as far as the hard limit allows (warned when it does not):
    else a connection over the limit fails to accept, and a write fails to open its files."""
    need = max_connections + FILES_BESIDE_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < need:
        log.warning(
            "the open-file limit (%d) is under the %d that max_connections=%d needs; lower "
            "VISNET_MAX_CONNECTIONS or raise the hard limit (ulimit -Hn)",
            target,
            need,
            max_connections,
        )
