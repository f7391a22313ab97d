"""The internal HTTP/1.1 client: what CallFS itself sends to other HTTP servers (a peer
instance of the cluster, an S3-compatible store), on the event loop, never in a thread.

- **Connections** are pooled per peer (host, port, TLS) and kept alive between requests; a
  connection goes back to its pool only once its response was read to the end and both sides
  allow keep-alive. A request that finds its reused connection closed by the peer before any
  byte of an answer came is sent once more on a new connection, when its body can be sent
  again (bytes or none): an idle connection the peer dropped is no failure.
- **Bodies stream both ways with flow control.** A request body given as an async iterable is
  written as it is produced, chunked when its length is not announced, each write waiting
  while the socket's buffer is full. A response body is read as the caller takes it: when
  more than `BUFFER_HIGH` bytes wait, the socket is not read until the caller catches up, so
  a slow consumer holds its download to a bounded amount of memory.
- **Time is bounded**: `connect_timeout` to connect (and finish TLS), `read_timeout` for each
  wait on the peer (the answer's head, then every piece of its body), so a peer that accepts
  and never answers fails the request instead of hanging it.
- **Failures** are `PeerError` (an OSError): unreachable, timed out (`PeerTimeout`), or cut
  off mid-answer (`PeerError.partial`: some of the answer had come, so the caller must not
  take it as whole).

Responses are parsed with httptools' response parser. A HEAD's answer has no body whatever
its Content-Length says; 1xx answers before the final one are skipped.
"""
import asyncio
import collections
import os
import ssl as ssl_module

import httptools

BUFFER_HIGH = 4 * 1024 * 1024  # response bytes held for the caller before the socket waits
BUFFER_LOW = 1024 * 1024
IDLE_PER_PEER = 32  # idle keep-alive connections kept for each peer


class PeerError(OSError):
    """A request that got no whole answer. `partial`: part of the answer came first."""

    partial = False


class PeerTimeout(PeerError, TimeoutError):
    pass


class _HeadOnly(Exception):
    """Raised from the parser's head callback to end a message that has no body (HEAD)."""


class Response:
    """A response whose head has come: `status`, `headers` (in order, names lower-case),
    and a body to read with `read()` or `chunks()`. Closing it before the body ends closes
    its connection; a body read to the end gives the connection back to its pool."""

    __slots__ = ("status", "headers", "_conn", "_closed")

    def __init__(self, conn: "_Connection", status: int, headers: list[tuple[str, str]]):
        self.status = status
        self.headers = headers
        self._conn = conn
        self._closed = False

    def header(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return default

    async def chunks(self):
        """The body, a piece at a time as it arrives (never more than the peer sent)."""
        try:
            while True:
                piece = await self._conn.next_piece()
                if not piece:
                    break
                yield piece
        finally:
            self.close()

    async def read_some(self, limit: int) -> bytes:
        """What of the body has come, up to `limit` bytes, waiting only when nothing has;
        b"" at its end (the response is then closed)."""
        try:
            data = await self._conn.take(limit)
        except BaseException:
            self.close()
            raise
        if not data:
            self.close()
        return data

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; PeerError when it is longer than `limit` bytes."""
        parts = []
        size = 0
        async for piece in self.chunks():
            size += len(piece)
            if limit is not None and size > limit:
                self.close()
                raise PeerError(f"the answer is longer than {limit} bytes")
            parts.append(piece)
        return b"".join(parts)

    def detach(self) -> "SocketBody | None":
        """The rest of the body, to be moved from the socket by the caller itself (splice),
        or None where it cannot be (TLS, no Content-Length, a body already whole)."""
        if self._closed:
            return None
        return self._conn.detach(self)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._conn.finish_response()


class SocketBody:
    """A response body left in its socket: `buffered` (what had come already) goes first,
    then `remaining` bytes are read from the non-blocking descriptor `fd` by the caller, which
    must not read beyond them; `done(True)` once it has (the connection may serve again), or
    `done(False)` when it did not get them all (the connection closes). `fd` is a duplicate
    the caller may also watch for readiness; `done` closes it."""

    __slots__ = ("fd", "buffered", "remaining", "timeout", "_response", "_conn")

    def __init__(self, response: Response, conn: "_Connection", fd: int, buffered: bytes,
                 remaining: int):
        self._response = response
        self._conn = conn
        self.fd = fd
        self.buffered = buffered
        self.remaining = remaining
        self.timeout = conn.read_timeout  # the longest wait for the peer's next bytes

    def done(self, whole: bool) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if whole:
            self._conn.reattach()
        self._response.close()


class _Connection(asyncio.Protocol):
    """One connection to a peer; one request at a time."""

    def __init__(self, client: "HttpClient", peer: tuple, read_timeout: float):
        self.client = client
        self.peer = peer
        self.read_timeout = read_timeout
        self.transport = None
        self.closed = False
        self.reused = False
        self._lost: Exception | None = None
        self._writable: asyncio.Future | None = None
        self._loop = asyncio.get_running_loop()
        self._begin(False)

    # -- per response state --------------------------------------------------------------

    def _begin(self, head_only: bool) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self._headers: list[tuple[str, str]] = []
        self._head: asyncio.Future = self._loop.create_future()
        self._pieces: collections.deque = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future | None = None
        self._complete = False
        self._keep_alive = False
        self._reading_paused = False
        self._received = 0  # body bytes parsed
        self._detached = False  # the caller reads the rest of the body from the socket

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _HeadOnly):
                self._fail(PeerError(f"the answer could not be parsed: {exc}"))
                return
            self._end_message(keep_alive=self._parser.should_keep_alive())
        except httptools.HttpParserError as exc:
            self._fail(PeerError(f"the answer could not be parsed: {exc}"))
            return
        if self._buffered > BUFFER_HIGH and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self):
        return False  # close our side too

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.client._forget(self)
        if not self._complete:
            error = PeerError(f"the connection to {self.peer[0]}:{self.peer[1]} closed"
                              + (f": {exc}" if exc else ""))
            error.partial = self._head.done()
            self._fail(error)
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(PeerError("the connection closed while sending"))

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # -- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if name:
            self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))
        elif self._headers:  # a value continued in a second call
            key, previous = self._headers[-1]
            self._headers[-1] = (key, previous + value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._headers = []  # an interim answer (100 Continue): the real one follows
            return
        if not self._head.done():
            self._head.set_result((status, self._headers))
        if self._head_only:
            raise _HeadOnly()

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)
        self._buffered += len(body)
        self._received += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:
            return
        self._end_message(keep_alive=self._parser.should_keep_alive())

    # -- the caller's side ----------------------------------------------------------------

    def _end_message(self, keep_alive: bool) -> None:
        self._complete = True
        self._keep_alive = keep_alive
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        self._lost = error
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # (marked retrieved: the caller may be gone)
        self._wake()
        if self.transport is not None:
            self.transport.close()

    async def send(self, head: bytes, body, chunked: bool) -> None:
        self.transport.write(head)
        if body is None:
            return
        if isinstance(body, (bytes, bytearray, memoryview)):
            if body:
                self.transport.write(body)
            return
        async for piece in body:
            if self._head.done():
                return  # the peer answered before the body ended: it wants no more
            if not piece:
                continue
            if chunked:
                self.transport.write(b"%x\r\n" % len(piece))
                self.transport.write(piece)
                self.transport.write(b"\r\n")
            else:
                self.transport.write(piece)
            await self.drain()
        if chunked and not self._head.done():
            self.transport.write(b"0\r\n\r\n")

    async def drain(self) -> None:
        if self.closed:
            raise self._lost or PeerError("the connection closed while sending")
        writable = self._writable
        if writable is not None and not writable.done():
            await self._timed(writable)

    async def head(self) -> tuple[int, list]:
        return await self._timed(self._head)

    async def next_piece(self) -> bytes:
        while not self._pieces:
            if self._complete:
                return b""
            if self._lost is not None:
                raise self._lost
            self._waiter = self._loop.create_future()
            await self._timed(self._waiter)
        piece = self._pieces.popleft()
        self._consumed(len(piece))
        return piece

    async def take(self, limit: int) -> bytes:
        """Every piece buffered, joined, up to `limit` bytes (one piece may be split)."""
        first = await self.next_piece()
        if not first or len(first) >= limit or not self._pieces:
            if len(first) > limit:
                self._pieces.appendleft(first[limit:])
                self._buffered += len(first) - limit
                first = first[:limit]
            return first
        parts = [first]
        size = len(first)
        pieces = self._pieces
        while pieces and size + len(pieces[0]) <= limit:
            piece = pieces.popleft()
            size += len(piece)
            parts.append(piece)
        self._consumed(size - len(first))
        return b"".join(parts)

    def _consumed(self, count: int) -> None:
        """`count` buffered bytes were taken: the socket is read again once few are left."""
        self._buffered -= count
        if self._reading_paused and self._buffered <= BUFFER_LOW:
            self._reading_paused = False
            self.transport.resume_reading()

    async def _timed(self, future):
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.read_timeout)
        except TimeoutError:
            error = PeerTimeout(f"{self.peer[0]}:{self.peer[1]} sent nothing for "
                                f"{self.read_timeout:g} s")
            error.partial = self._head.done()
            self._fail(error)
            raise error from None

    def detach(self, response: Response) -> SocketBody | None:
        if (self.peer[2] or self._head_only or self._complete or self.closed
                or self._lost is not None or self._detached):
            return None
        length = None
        for name, value in self._headers:
            if name == "transfer-encoding":
                return None
            if name == "content-length":
                length = int(value)
        sock = self.transport.get_extra_info("socket")
        if length is None or sock is None:
            return None
        self.transport.pause_reading()  # the socket is the caller's until the body ends
        self._reading_paused = True
        self._detached = True
        buffered = b"".join(self._pieces)
        self._pieces.clear()
        self._buffered = 0
        # A descriptor of the caller's own: if the connection closes meanwhile, its number is
        # not freed for another socket while the caller still reads from it.
        return SocketBody(response, self, os.dup(sock.fileno()), buffered,
                          length - self._received)

    def reattach(self) -> None:
        """The caller read the body to its end: the answer is whole, and the connection may
        take the next request."""
        if self.closed:
            return
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()
        self._reading_paused = False
        self.transport.resume_reading()

    def finish_response(self) -> None:
        """The caller is done with the response: back to the pool when it was read whole and
        may be kept, closed otherwise."""
        if self._complete and self._keep_alive and not self._pieces and not self.closed:
            self.client._give_back(self)
        else:
            self.close()

    def reset(self, head_only: bool) -> None:
        self._begin(head_only)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.client._forget(self)
            if self.transport is not None:
                self.transport.close()


class HttpClient:
    """Pooled keep-alive connections to peers; see the module's docstring."""

    def __init__(self, *, connect_timeout: float = 3.0, read_timeout: float = 30.0,
                 ssl_context: ssl_module.SSLContext | None = None, user_agent: str = "callfs"):
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.ssl_context = ssl_context
        self.user_agent = user_agent
        self.opened = 0  # connections made so far (the tests count reuse by it)
        self._idle: dict[tuple, collections.deque] = {}
        self._all: set[_Connection] = set()

    async def request(self, method: str, host: str, port: int, target: str, *,
                      headers: list[tuple[str, str]] | None = None, body=None,
                      length: int | None = None, tls: bool = False,
                      server_hostname: str | None = None) -> Response:
        """Send one request and return its response once the head has come. `body`: bytes,
        an async iterable of bytes (its `length` announced when known, else chunked), or
        None. `target` is the request target (path and query), already percent-encoded."""
        peer = (host, port, tls, server_hostname or host)
        replayable = body is None or isinstance(body, (bytes, bytearray, memoryview))
        if replayable and body is not None:
            length = len(body)
        head_only = method == "HEAD"
        chunked = length is None and body is not None
        request_head = self._head(method, host, port, tls, target, headers or [], length,
                                  chunked)
        while True:
            conn = await self._connection(peer)
            conn.reset(head_only)
            try:
                await conn.send(request_head, body, chunked)
                status, response_headers = await conn.head()
            except PeerError as exc:
                conn.close()
                if conn.reused and replayable and not exc.partial \
                        and not isinstance(exc, PeerTimeout):
                    continue  # an idle connection the peer had dropped: once more, afresh
                raise
            except BaseException:
                conn.close()
                raise
            return Response(conn, status, response_headers)

    def _head(self, method: str, host: str, port: int, tls: bool, target: str,
              headers: list[tuple[str, str]], length: int | None, chunked: bool) -> bytes:
        default_port = 443 if tls else 80
        lines = [f"{method} {target} HTTP/1.1",
                 f"Host: {host}" if port == default_port else f"Host: {host}:{port}"]
        names = set()
        for name, value in headers:
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} holds a line break")
            names.add(name.lower())
            lines.append(f"{name}: {value}")
        if "user-agent" not in names:
            lines.append(f"User-Agent: {self.user_agent}")
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        elif length is not None and (length or method not in ("GET", "HEAD", "DELETE")):
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _connection(self, peer: tuple) -> _Connection:
        idle = self._idle.get(peer)
        while idle:
            conn = idle.pop()
            if not conn.closed and not conn.transport.is_closing():
                conn.reused = True
                return conn
        host, port, tls, server_hostname = peer
        loop = asyncio.get_running_loop()
        context = None
        if tls:
            context = self.ssl_context or ssl_module.create_default_context()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(
                lambda: _Connection(self, peer, self.read_timeout), host, port, ssl=context,
                server_hostname=server_hostname if tls else None), self.connect_timeout)
        except TimeoutError:
            raise PeerTimeout(f"{host}:{port} did not accept a connection within "
                              f"{self.connect_timeout:g} s") from None
        except ssl_module.SSLError as exc:
            raise PeerError(f"TLS with {host}:{port} failed: {exc}") from None
        except OSError as exc:
            raise PeerError(f"{host}:{port} is unreachable: {exc.strerror or exc}") from None
        self.opened += 1
        self._all.add(conn)
        return conn

    def _give_back(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.peer, collections.deque())
        if len(idle) >= IDLE_PER_PEER:
            conn.close()
            return
        idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.peer)
        if idle is not None:
            try:
                idle.remove(conn)
            except ValueError:
                pass

    def close_connections(self) -> None:
        """Close every connection, idle or busy (a busy one's request fails)."""
        for conn in list(self._all):
            conn.close()
        self._idle.clear()

    async def close(self) -> None:
        self.close_connections()
        await asyncio.sleep(0)  # the transports' close callbacks run
