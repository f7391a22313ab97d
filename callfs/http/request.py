"""A parsed request and its body stream.

The body is a bounded buffer between the parser and the handler: when it holds more than
HIGH_WATER bytes the connection stops reading, and resumes once the handler drains it below
LOW_WATER. Memory per upload stays bounded whatever the body's size.
"""
import asyncio
import os
from collections import deque


HIGH_WATER = 512 * 1024
LOW_WATER = 128 * 1024


class Body:
    __slots__ = ("_conn", "_chunks", "_buffered", "_waiter", "complete", "_error", "received",
                 "expected", "_started", "discarding", "spliced")

    def __init__(self, conn, expected: int | None):
        self._conn = conn
        self._chunks: deque = deque()
        self._buffered = 0
        self._waiter: asyncio.Future | None = None
        self.complete = False
        self._error: BaseException | None = None
        self.received = 0
        self.expected = expected  # Content-Length, or None for chunked
        self._started = False
        self.discarding = False
        self.spliced = False  # some of it moved by splice, socket to file

    # -- parser side ------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.discarding:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            self._conn.pause_body(self)
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self.complete and self._error is None:
            self._error = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- handler side -----------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started

    @property
    def ended(self) -> bool:
        """No more of this body will arrive: it is whole, or it failed."""
        return self.complete or self._error is not None

    async def read(self) -> bytes:
        """The next chunk, or b"" once the body is complete. Raises ClientGone (or the parser's
        error) when the body cannot be completed."""
        if not self._started:
            self._started = True
            self._conn.body_wanted()
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            # Nothing buffered: read from the socket now (a large body waits there, paused,
            # until its handler asks, in case it would rather splice it).
            self._conn.resume_body(self)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered < LOW_WATER:
            self._conn.resume_body(self)
        return chunk

    async def transfer_to(self, fd: int) -> int:
        """Write the rest of the body into the file `fd`; returns the bytes written. What the
        parser already delivered is written first; the rest of a Content-Length body on a
        plain socket moves by splice, never through Python objects."""
        written = 0
        if not self._started:
            self._started = True
            self._conn.body_wanted()
        while self._chunks:
            chunk = self._chunks.popleft()
            self._buffered -= len(chunk)
            written += _write_all(fd, chunk)
        if self._error is not None:
            raise self._error
        if not self.complete and self.expected is not None and not self.discarding:
            spliced = await self._conn.splice_body(self, fd, self.expected - self.received)
            if spliced is not None:
                return written + spliced
        self._conn.resume_body(self)
        while True:
            chunk = await self.read()
            if not chunk:
                return written
            written += _write_all(fd, chunk)

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def start_discarding(self) -> None:
        """The response went out without the body: drop what arrives from now on."""
        self.discarding = True
        self._chunks.clear()
        self._buffered = 0
        self._conn.resume_body(self)


async def read_limited(body, limit: int) -> bytes | None:
    """The whole of a small body (a JSON request), or None once it proves longer than
    `limit` bytes: announced so, or sent so (reading stops there)."""
    if body.expected is not None and body.expected > limit:
        return None
    chunks, size = [], 0
    while chunk := await body.read():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return len(data)


class Request:
    __slots__ = ("method", "target", "path", "query", "headers", "header_count", "keep_alive",
                 "body", "expect_continue", "tls", "peer", "request_id", "principal", "route",
                 "started_ns", "finished")

    def __init__(self, method: bytes, target: bytes, headers: dict, header_count: int,
                 keep_alive: bool, body: Body, tls: bool, peer):
        self.method = method
        self.target = target
        cut = target.find(b"?")
        if cut >= 0:
            self.path, self.query = target[:cut], target[cut + 1:]
        else:
            self.path, self.query = target, b""
        self.headers = headers
        self.header_count = header_count
        self.keep_alive = keep_alive
        self.body = body
        self.expect_continue = headers.get(b"expect", b"").lower() == b"100-continue"
        self.tls = tls
        self.peer = peer
        self.request_id = ""
        self.principal = None
        self.route = "unmatched"  # the route template that matched (metrics, the access log)
        self.started_ns = 0       # monotonic_ns() when its first byte arrived
        self.finished = False     # counted and logged

    def header(self, name: bytes) -> bytes | None:
        return self.headers.get(name)

    def query_params(self) -> dict[str, str]:
        """First value of each query parameter, percent-decoded (invalid escapes kept)."""
        from urllib.parse import parse_qsl
        params: dict[str, str] = {}
        if self.query:
            for key, value in parse_qsl(self.query.decode("latin-1"), keep_blank_values=True):
                params.setdefault(key, value)
        return params

