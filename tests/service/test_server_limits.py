"""Connection limits against the real server (uvicorn with `visnet.service.protocol`), issue #15:
a head that stalls is closed after the header timeout, 300 of them do not keep a client waiting
(under the default connection cap, and under a cap below 300), a head over the cap gets 431, a
body that stalls or trickles gets 408 after the body timeout, a server whose connections are all
busy answers 503, an idle kept-alive connection is timed by the keep-alive timeout, not the
header timeout, and what the limits refuse is counted in /metrics."""

from __future__ import annotations

import io
import resource
import selectors
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import build_tiny_catalog, free_port, running_server, service_settings

from visnet.service import create_app
from visnet.service.app import server_options
from visnet.service.schemas import ErrorOut

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
KEEP_ALIVE = 2  # s; twice HEADER_TIMEOUT, so a close at ~2 s is the keep-alive timeout's
MAX_HEADER_BYTES = 4096
STALLED = 300
CAP = 100  # the crowded server's connection cap, under STALLED
SLACK = 3.0  # s a close may come after its deadline on a busy 2-core machine
PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
GET = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
# a search whose 1,000-byte body is still to come
UPLOAD_HEAD = (
    b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n"
    b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
)
BODY_START = b'--b\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n\r\n'


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Copies of a tiny index: one process may open an index once, and there are 3 servers."""
    folder = tmp_path_factory.mktemp("limits")
    _, index = build_tiny_catalog(folder)
    for copy in ("index-2", "index-3"):
        shutil.copytree(index, folder / copy)
    return index, folder / "index-2", folder / "index-3"


@contextmanager
def _serve(index: Path, **limits: object) -> Iterator[tuple[str, int]]:
    """The real server, run with production's uvicorn options (``server_options``)."""
    settings = service_settings(
        index=index, model="colour-histogram", port=free_port(), log_level="error", **limits
    )
    app = create_app(settings)
    with running_server(app, **server_options(settings, app.state.metrics)) as url:
        yield url, settings.port


@pytest.fixture(scope="module")
def strict(indexes: tuple[Path, Path, Path]) -> Iterator[tuple[str, int]]:
    """A server with 1 s header and body timeouts, a 2 s keep-alive and a 4 KiB head:
    (URL, port)."""
    with _serve(
        indexes[0],
        header_timeout=HEADER_TIMEOUT,
        body_timeout=BODY_TIMEOUT,
        keep_alive_timeout=KEEP_ALIVE,
        max_header_bytes=MAX_HEADER_BYTES,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def patient(indexes: tuple[Path, Path, Path]) -> Iterator[tuple[str, int]]:
    """A server with the default limits (10 s header timeout, 1,000 connections): stalled heads
    stay while tested."""
    with _serve(indexes[1]) as server:
        yield server


@pytest.fixture(scope="module")
def crowded(indexes: tuple[Path, Path, Path]) -> Iterator[tuple[str, int]]:
    """A server with the default timeouts and a cap of CAP connections."""
    with _serve(indexes[2], max_connections=CAP) as server:
        yield server


@pytest.fixture(scope="module", autouse=True)
def _enough_files() -> None:
    """Both ends of every connection live in this process: 2 x 300 sockets and some."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * STALLED
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"the open-file limit ({hard}) is under {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response read off a raw socket (status, headers, body by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed mid-response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {name.lower(): value for name, value in headers.items()}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        assert chunk, "the connection closed mid-body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _until_closed(opened: dict[socket.socket, float], deadline: float) -> dict:
    """Read every socket until the server closes it: {socket: (bytes read, s from its opening)}
    for those closed before ``deadline`` (monotonic)."""
    selector = selectors.DefaultSelector()
    received = dict.fromkeys(opened, b"")
    for sock in opened:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    closed = {}
    while len(closed) < len(opened) and (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(timeout=left):
            sock = key.fileobj
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if chunk:
                received[sock] += chunk
            else:
                closed[sock] = (received[sock], time.monotonic() - opened[sock])
                selector.unregister(sock)
    selector.close()
    return closed


def _error(response: bytes, status: int, code: str) -> None:
    """``response`` is exactly one ``status`` answer in the service's error shape, then a close."""
    head, body = response.split(b"\r\n\r\n", 1)
    assert head.split(b"\r\n")[0].split(b" ")[1] == str(status).encode(), response
    assert b"connection: close" in head.lower(), response
    assert ErrorOut.model_validate_json(body).error == code


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except ConnectionError:
        return False


def _noise_png(size: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


# ---- the header timeout ----------------------------------------------------------------------


def test_stalled_heads_are_closed_after_the_header_timeout(strict: tuple[str, int]) -> None:
    """300 connections: half send part of a head (408 in the error shape, then closed), half
    send nothing (closed without a word); each between the timeout and the timeout + slack."""
    _, port = strict
    opened: dict[socket.socket, float] = {}
    try:
        for n in range(STALLED):
            sock = _connect(port)
            if n % 2 == 0:
                sock.sendall(PARTIAL_HEAD)
            opened[sock] = time.monotonic()  # the server's clock starts later, when it accepts
        closed = _until_closed(opened, time.monotonic() + HEADER_TIMEOUT + SLACK)
        assert len(closed) == STALLED, f"{STALLED - len(closed)} stalled connections still open"
        for n, sock in enumerate(opened):
            received, after = closed[sock]
            assert HEADER_TIMEOUT * 0.9 <= after <= HEADER_TIMEOUT + SLACK, after
            if n % 2 == 0:
                _error(received, 408, "request_timeout")
            else:
                assert received == b""
    finally:
        for sock in opened:
            sock.close()


@pytest.mark.parametrize("server", ["patient", "crowded"])
def test_a_client_is_served_within_a_second_while_300_heads_stall(
    server: str, request: pytest.FixtureRequest
) -> None:
    """Under the default cap (1,000) all 300 stay open beside the client; under a cap of 100
    each connection over it closes the oldest stalled head (503 `too_many_connections`, or a
    plain close if its bytes had not been read yet), so the newest ones and the client remain."""
    url, port = request.getfixturevalue(server)
    stalled = []
    try:
        for _ in range(STALLED):
            stalled.append(_connect(port))
            stalled[-1].sendall(PARTIAL_HEAD)
        # the listening socket accepts in order: this client's connection comes after all 300
        start = time.monotonic()
        answer = httpx.get(f"{url}/healthz", timeout=10)
        took = time.monotonic() - start
        assert answer.status_code == 200 and answer.json() == {"status": "ok"}
        assert took < 1.0, f"/healthz took {took:.2f} s beside {STALLED} stalled heads"
        if server == "patient":
            assert all(_still_open(sock) for sock in stalled)  # they were all there all along
            return
        # the client's connection closed one more: CAP - 1 of the newest stalled heads remain
        evicted = STALLED - CAP + 1
        assert all(_still_open(sock) for sock in stalled[evicted:])
        opened = dict.fromkeys(stalled[:evicted], time.monotonic())
        closed = _until_closed(opened, time.monotonic() + SLACK)
        assert len(closed) == evicted
        answered = [received for received, _ in closed.values() if received]
        assert answered, "no evicted head was answered"
        for received in answered:
            _error(received, 503, "too_many_connections")
            assert b"retry-after: 1\r\n" in received.lower()
    finally:
        for sock in stalled:
            sock.close()


def test_a_client_gets_503_while_every_connection_has_a_request(
    crowded: tuple[str, int],
) -> None:
    """CAP connections with a request in progress (bodies still to come) cannot be closed for
    a newcomer: its request is answered 503 with Retry-After; once one of them goes, it is
    served."""
    url, port = crowded
    busy = []
    # the app asks for the body (and so sends "100 Continue") once it has the request
    expecting = UPLOAD_HEAD.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
    try:
        for _ in range(CAP):
            busy.append(_connect(port))
            busy[-1].sendall(expecting)
        for sock in busy:  # every request in progress
            assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        with _connect(port) as sock:
            sock.sendall(GET)
            status, headers, body = _response(sock)
        assert status == 503 and headers["retry-after"] == "1"
        assert ErrorOut.model_validate_json(body).error == "too_many_connections"
        busy.pop().close()
        deadline = time.monotonic() + SLACK
        while (answer := httpx.get(f"{url}/healthz", timeout=10)).status_code == 503:
            assert time.monotonic() < deadline, "a freed connection was never reused"
            time.sleep(0.05)
        assert answer.status_code == 200
    finally:
        for sock in busy:
            sock.close()


def test_kept_alive_requests_are_not_cut_off_by_the_header_timer(strict: tuple[str, int]) -> None:
    """Between requests only the keep-alive timeout runs; the next head's first byte starts the
    header timer again (a stalled second head gets its 408)."""
    _, port = strict
    with _connect(port) as sock:
        for pause in (0.0, 0.0, HEADER_TIMEOUT * 1.5):  # the last wait outlasts a header timeout
            time.sleep(pause)
            sock.sendall(GET)
            status, headers, body = _response(sock)
            assert status == 200 and body == b'{"status":"ok"}'
            assert "close" not in headers.get("connection", "")
        sock.sendall(PARTIAL_HEAD)
        start = time.monotonic()
        received, after = _until_closed({sock: start}, start + HEADER_TIMEOUT + SLACK)[sock]
        assert HEADER_TIMEOUT * 0.9 <= after <= HEADER_TIMEOUT + SLACK
        _error(received, 408, "request_timeout")


def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout(
    strict: tuple[str, int],
) -> None:
    _, port = strict
    with _connect(port) as sock:
        sock.sendall(GET)
        assert _response(sock)[0] == 200
        start = time.monotonic()
        received, after = _until_closed({sock: start}, start + KEEP_ALIVE + SLACK)[sock]
    assert received == b""
    assert KEEP_ALIVE * 0.9 <= after <= KEEP_ALIVE + SLACK  # not the 1 s header timeout


# ---- the body timeout ------------------------------------------------------------------------


def _trickle(sock: socket.socket, interval: float, deadline: float) -> tuple[bytes, float]:
    """Send a byte every ``interval`` s until the server closes: (what it answered, s taken)."""
    start, received = time.monotonic(), b""
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline:
            with suppress(BrokenPipeError, ConnectionResetError):  # closed: read the answer
                sock.send(b"x")
            if selector.select(timeout=interval):
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    break
                received += chunk
        return received, time.monotonic() - start
    finally:
        selector.close()


@pytest.mark.parametrize("pace", ["stalled", "trickled"])
def test_a_slow_body_gets_408_after_the_body_timeout(strict: tuple[str, int], pace: str) -> None:
    """The head is complete, the body never is: stalled after a few bytes, or a byte every
    0.2 s (the deadline is the whole body's, so a trickle does not extend it)."""
    url, port = strict
    with _connect(port) as sock:
        sock.sendall(UPLOAD_HEAD + BODY_START)
        start = time.monotonic()
        if pace == "stalled":
            received, after = _until_closed({sock: start}, start + BODY_TIMEOUT + SLACK)[sock]
        else:
            received, after = _trickle(sock, 0.2, start + BODY_TIMEOUT + SLACK)
    assert BODY_TIMEOUT * 0.9 <= after <= BODY_TIMEOUT + SLACK, after
    _error(received, 408, "request_timeout")
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_a_body_sent_in_parts_within_the_timeout_is_served(strict: tuple[str, int]) -> None:
    _, port = strict
    image = _noise_png(32)
    body = BODY_START + image + b"\r\n--b--\r\n"
    head = UPLOAD_HEAD.replace(b"Content-Length: 1000", f"Content-Length: {len(body)}".encode())
    with _connect(port) as sock:
        sock.sendall(head + body[:100])
        time.sleep(BODY_TIMEOUT / 2)
        sock.sendall(body[100:])
        status, _, answer = _response(sock)
    assert status == 200, answer


# ---- the header size -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        PARTIAL_HEAD + b"a" * 8000 + b"\r\n\r\n",  # one long header, complete
        PARTIAL_HEAD + b"a" * 8000,  # one long header, never finished
        GET[:-2] + b"X-Many: header\r\n" * 300 + b"\r\n",  # many small ones
        b"GET /healthz?" + b"q" * 8000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # a long URL
    ],
    ids=["long-header", "unfinished-header", "many-headers", "long-url"],
)
def test_a_head_over_the_cap_gets_431(strict: tuple[str, int], head: bytes) -> None:
    url, port = strict
    with _connect(port) as sock:
        sock.sendall(head)
        start = time.monotonic()
        received, _ = _until_closed({sock: start}, start + SLACK)[sock]
    _error(received, 431, "headers_too_large")
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_an_8_mb_header_is_refused_without_being_read(strict: tuple[str, int]) -> None:
    """Issue #15's 8,000,000-byte header: the server answers 431 and closes after the first
    read past the cap; the client may see the 431 or only the reset of its unfinished send."""
    url, port = strict
    with _connect(port) as sock:
        with suppress(BrokenPipeError, ConnectionResetError):  # the server closed first
            sock.sendall(PARTIAL_HEAD + b"a" * 8_000_000)
        start = time.monotonic()
        received, _ = _until_closed({sock: start}, start + SLACK)[sock]
    if received:
        assert received.startswith(b"HTTP/1.1 431 "), received[:100]
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_heads_and_bodies_under_the_cap_are_served(strict: tuple[str, int]) -> None:
    """The cap is the head's: a 3 KB header passes, and so does an upload many times the cap
    sent in the same write as its head."""
    url, _ = strict
    with httpx.Client(base_url=url, timeout=30) as client:
        answer = client.get("/healthz", headers={"X-Padding": "p" * 3000})
        assert answer.status_code == 200
        image = _noise_png(96)
        assert len(image) > 4 * MAX_HEADER_BYTES
        found = client.post("/v1/search", files={"image": ("q.png", image)})
        assert found.status_code == 200, found.text


# ---- the metrics -----------------------------------------------------------------------------


def _counts(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every counter sample on /metrics: {(name, sorted labels): value}."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def test_refusals_are_counted_in_the_metrics(strict: tuple[str, int]) -> None:
    """A stalled head (408), one sending nothing (closed), a head over the cap (431) and a
    stalled body (408, also a request of its route with the status the client got)."""
    url, port = strict
    before = _counts(url)
    socks = [_connect(port) for _ in range(4)]
    try:
        socks[0].sendall(PARTIAL_HEAD)
        socks[2].sendall(PARTIAL_HEAD + b"a" * 8000)
        socks[3].sendall(UPLOAD_HEAD + BODY_START)
        opened = dict.fromkeys(socks, time.monotonic())
        closed = _until_closed(opened, time.monotonic() + max(HEADER_TIMEOUT, BODY_TIMEOUT) + SLACK)
        assert len(closed) == len(socks)
    finally:
        for sock in socks:
            sock.close()
    after = _counts(url)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    refusals = "visnet_http_refusals_total"
    assert grew(refusals, reason="header_timeout", status="408") == 1
    assert grew(refusals, reason="header_timeout", status="closed") == 1
    assert grew(refusals, reason="headers_too_large", status="431") == 1
    assert grew(refusals, reason="body_timeout", status="408") == 1
    requests = "visnet_http_requests_total"
    assert grew(requests, route="/v1/search", method="POST", status="408") == 1
    assert grew(requests, route="/v1/search", method="POST", status="400") == 0


# ---- the settings ----------------------------------------------------------------------------


def test_the_limits_have_safe_defaults_and_reach_uvicorn(
    indexes: tuple[Path, Path, Path],
) -> None:
    settings = service_settings(index=indexes[0], model="colour-histogram")
    assert (settings.header_timeout, settings.max_header_bytes) == (10.0, 16 * 1024)
    assert (settings.body_timeout, settings.max_connections) == (60.0, 1000)
    assert settings.keep_alive_timeout == 30
    metrics = create_app(settings).state.metrics
    options = server_options(settings, metrics)
    assert options["http"].header_timeout == 10.0
    assert options["http"].max_header_bytes == 16 * 1024
    assert options["http"].body_timeout == 60.0
    assert options["http"].max_connections == 1000
    assert options["http"].metrics is metrics
    assert options["timeout_keep_alive"] == 30
    # uvicorn's own protocol, without the limits, only to measure what they cost
    plain = service_settings(index=indexes[0], model="colour-histogram", http_protocol="httptools")
    assert server_options(plain)["http"] == "httptools"
    for bad in (
        {"header_timeout": 0},
        {"max_header_bytes": 100},
        {"keep_alive_timeout": 0},
        {"body_timeout": 0},
        {"max_connections": 0},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            service_settings(index=indexes[0], model="colour-histogram", **bad)
