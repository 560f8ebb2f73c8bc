"""The HTTP/1.1 protocol the service runs under uvicorn: its httptools protocol plus two limits.

uvicorn (0.55, httptools) bounds an idle kept-alive connection (``timeout_keep_alive``) but not
the request head (request line + headers): a client could take forever to send it, and the
parser buffered a head of any size. Issue #15 measured an 8,000,000-byte header accepted, and
300 connections that never finished their headers all still open after 45 s. hypercorn and
granian, which have such limits, are not installed, so this subclass adds them:

- **header timeout**: the head must be complete within ``header_timeout`` seconds of the
  connection opening, or, on a kept-alive connection, of the next request's first byte (the wait
  for that byte is uvicorn's keep-alive timeout, so an idle keep-alive is not cut shorter). Past
  it a connection that sent part of a head is answered 408 and closed; one that sent nothing
  (an idle or speculative connection: there is nothing to answer) is just closed.
- **header size**: a head over ``max_header_bytes`` is answered 431 and closed: counted as it
  arrives while the head is unfinished (so an endless header is refused within a read or two
  past the cap, never buffered whole), and as parsed (request line + header fields) when it
  ends in the read that brought it.

Answers sent here use the service's error shape (``errors.error_body``), as do the parser's 400s
(uvicorn's own are plain text), and close the connection: the rest of what the client sends is
never read. Where a response to an earlier (pipelined) request is still being written, a second
response would interleave with it, so the connection is only closed (after that response, for
a timeout).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from visnet.service.errors import error_body

__all__ = ["LimitedHttpToolsProtocol", "limited_protocol"]

# the request line beyond its method and target: " HTTP/1.1\r\n"; each header field's ": \r\n"
_LINE_OVERHEAD, _FIELD_OVERHEAD = 11, 4


class _HeadTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout and a header size cap (module doc).

    ``limited_protocol`` makes a subclass with the two limits set, for ``uvicorn.run(http=...)``.
    """

    header_timeout: float = 10.0
    max_header_bytes: int = 16 * 1024

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # one timer a connection, not one a request: it fires at the earliest deadline it was
        # armed for and re-arms itself while a later deadline stands (keep-alive requests only
        # move `_head_deadline`, which costs a float, not a timer handle)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_deadline: float | None = None
        self._in_head = True  # from the connection's start, or a request's end, to headers' end
        self._head_seen = False  # a byte of the coming head has arrived
        self._head_bytes = 0  # bytes of the reads that began inside the coming head

    # ---- the connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
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
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse_large_head(exc.__context__.size)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("invalid HTTP request")
            return
        # still inside the head this read began in: every byte of it was the head's
        if began_in_head and self._in_head and self._head_bytes > self.max_header_bytes:
            self._refuse_large_head(self._head_bytes)

    def send_400_response(self, msg: str) -> None:
        """An unparseable request: 400 `bad_request` in the service's shape, then close."""
        self._answer_and_close(400, "bad_request", msg)

    # ---- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_seen = True
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._in_head = False
        size = len(self.parser.get_method()) + 1 + len(self.url) + _LINE_OVERHEAD + 2
        size += sum(len(name) + len(value) + _FIELD_OVERHEAD for name, value in self.headers)
        if size > self.max_header_bytes:
            raise _HeadTooLarge(size)  # the parser stops; data_received answers 431
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # the next head may follow; its timer starts with its first byte (till then the
        # keep-alive timeout, armed when the response is complete, bounds the wait)
        self._in_head, self._head_seen, self._head_bytes = True, False, 0

    # ---- the limits

    def _arm_head_timer(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.time() + self.header_timeout
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timer_fired)

    def _cancel_head_timer(self) -> None:
        self._head_deadline = None  # the timer, if any, finds no deadline and stops

    def _head_timer_fired(self) -> None:
        self._head_timer = None
        deadline = self._head_deadline
        if deadline is None:
            return
        left = deadline - self.loop.time()
        if left > 0:  # armed again for a later head since this timer was set
            self._head_timer = self.loop.call_later(left, self._head_timer_fired)
            return
        self._head_timed_out()

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        if self._response_in_progress():
            self.cycle.keep_alive = False  # close once that response is sent
        elif self._head_seen:
            self.logger.debug("request head not complete in %s s: 408", self.header_timeout)
            message = f"the request line and headers did not arrive within {self.header_timeout} s"
            self._answer_and_close(408, "request_timeout", message)
        else:
            self.transport.close()

    def _refuse_large_head(self, size: int) -> None:
        self.logger.warning("request head over %d bytes: 431", self.max_header_bytes)
        message = (
            f"the request line and headers are over {self.max_header_bytes:,} bytes "
            f"({size:,} or more sent)"
        )
        self._answer_and_close(431, "headers_too_large", message)

    def _response_in_progress(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _answer_and_close(self, status: int, code: str, message: str) -> None:
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        if self._response_in_progress():  # another answer would interleave with that one
            self.transport.close()
            return
        body = error_body(code, message)
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(content))
        self.transport.close()


def limited_protocol(header_timeout: float, max_header_bytes: int) -> type[HttpToolsProtocol]:
    """A ``LimitedHttpToolsProtocol`` with these limits: uvicorn builds one per connection."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {"header_timeout": header_timeout, "max_header_bytes": max_header_bytes},
    )
