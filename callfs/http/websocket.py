"""WebSocket sessions (RFC 6455) on a connection that left HTTP (API.md §12).

wsproto validates the handshake and does all the framing: its Connection parses what arrives,
its FrameProtocol frames what leaves. This module adds what the contract asks on top: the Origin
rule, message and upload limits, flow control both ways, and the closing handshake.

A session is handed to the connection inside the 101 response (`Response.upgrade`); the
connection then feeds it every byte that arrives (`feed`), tells it when the peer is gone
(`lost`), and awaits `serve`, which runs the transfer and ends with the connection closed.
"""
import asyncio
import logging
from collections import deque
from urllib.parse import urlsplit

import h11
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.frame_protocol import FrameProtocol
from wsproto.handshake import H11Handshake
from wsproto.utilities import ProtocolError, generate_accept_token

from callfs.domain.errors import ClientGone
from callfs.http.response import Response, header_lines, text_response

log = logging.getLogger("callfs.http")

NORMAL = 1000
UNSUPPORTED_DATA = 1003
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011

MAX_MESSAGE = 1024 * 1024          # API.md §2: per message
MAX_UPLOAD = 100 * 1024 * 1024     # API.md §2: per upload
HIGH_WATER = 512 * 1024            # received data held for the handler before reading pauses
LOW_WATER = 128 * 1024
MAX_PIECES = 1024                  # ... or this many pieces of it (a flood of tiny messages)
READ_SIZE = 64 * 1024              # small pieces are handed to the handler joined up to this
CLOSE_WAIT = 2.0                   # after our close frame, how long the client may take to answer
_FINISHING = (1000, 1001, 1005)    # a client close that ends an upload normally (1005: no code)


class Closed(Exception):
    """End the session with this close frame."""

    def __init__(self, code: int, reason: str = ""):
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def accept(request, run, *, upload: bool) -> Response:
    """The handshake of API.md §12 after the route's own checks: 400 when the request is not a
    WebSocket handshake, 403 for a foreign Origin, else 101 carrying the session that will
    `await run(session)`. `upload` sessions keep what the client sends; others drop it."""
    handshake = H11Handshake(ConnectionType.SERVER)
    try:
        handshake.initiate_upgrade_connection(list(request.headers.items()), request.target)
        next(handshake.events())
    except (ProtocolError, h11.ProtocolError, StopIteration):
        return text_response(400, "Bad Request\n")
    origin = request.headers.get(b"origin")
    if origin is not None and not same_origin(origin, request.headers.get(b"host", b"")):
        return text_response(403, "Forbidden\n")
    token = generate_accept_token(request.headers[b"sec-websocket-key"])
    headers = header_lines([("Upgrade", "websocket"), ("Connection", "Upgrade"),
                            ("Sec-WebSocket-Accept", token.decode("ascii"))])
    return Response(101, headers, upgrade=WebSocket(run, upload=upload))


def same_origin(origin: bytes, host: bytes) -> bool:
    """The Origin's host[:port], scheme, user info and path stripped, equals the Host header
    (ASCII case-insensitive; ports compared as written)."""
    try:
        netloc = urlsplit(origin.decode("latin-1").strip()).netloc
    except ValueError:
        return False
    netloc = netloc.rpartition("@")[2]
    return bool(netloc) and netloc.lower() == host.decode("latin-1").strip().lower()


class WebSocket:
    """One accepted WebSocket. The handler reads message data with `read` (an upload body: the
    chunks in order, b"" after the client's close frame) and sends with `send_bytes`,
    `send_text` and `close`. What the client sends waits in a bounded buffer: above HIGH_WATER
    the connection stops reading until the handler drains it."""

    expected = None  # as an upload body (backends.base.Body): its length is known at its end

    def __init__(self, run, *, upload: bool):
        self._run = run
        self._reader = Connection(ConnectionType.SERVER)
        # Frames that leave go through wsproto's frame protocol directly: the contract sends a
        # message after the client's close frame (`ok:<bytes>`), which Connection.send refuses.
        self._writer = FrameProtocol(client=False, extensions=[])
        self._conn = None
        self._keep = upload
        self._chunks: deque = deque()
        self._buffered = 0
        self._message = 0
        self.received = 0
        self.remote_close: tuple[int, str] | None = None
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._close_waiter: asyncio.Future | None = None
        self._closing = False

    # -- connection side --------------------------------------------------------------------

    def attach(self, conn) -> None:
        self._conn = conn

    @property
    def awaiting_client(self) -> bool:
        """The transfer waits on the client (an upload before its close frame): the
        connection's inactivity deadline applies."""
        return self._keep and self.remote_close is None and self._error is None

    def feed(self, data: bytes) -> None:
        if self.remote_close is not None:
            return  # nothing after the client's close frame counts
        self._reader.receive_data(data)
        for event in self._reader.events():
            if isinstance(event, (BytesMessage, TextMessage)):
                self._on_data(event)
            elif isinstance(event, Ping):
                if not self._closing:
                    self._conn.write(self._writer.pong(event.payload))
            elif isinstance(event, CloseConnection):
                self._on_close(event)
                break
        self._wake()

    def lost(self) -> None:
        self._fail(ClientGone())
        self._wake()

    def _on_data(self, event) -> None:
        data = event.data
        if isinstance(data, str):
            data = data.encode("utf-8")
        if self._keep and self._error is None:
            self._message += len(data)
            self.received += len(data)
            if self._message > MAX_MESSAGE:
                self._fail(Closed(MESSAGE_TOO_BIG, "message too big"))
            elif self.received > MAX_UPLOAD:
                self._fail(Closed(MESSAGE_TOO_BIG, "upload too large"))
            elif data:
                self._chunks.append(data)
                self._buffered += len(data)
                if self._buffered > HIGH_WATER or len(self._chunks) > MAX_PIECES:
                    self._conn.pause_session()
        if event.message_finished:
            self._message = 0

    def _on_close(self, event: CloseConnection) -> None:
        if self._reader.state is not ConnectionState.REMOTE_CLOSING:
            # wsproto reports a frame it could not accept (unmasked, bad UTF-8) as a close.
            self._fail(Closed(event.code, event.reason or ""))
            return
        self.remote_close = (event.code, event.reason or "")
        if self._keep and event.code not in _FINISHING:
            self._fail(Closed(NORMAL, "upload aborted"))
        waiter = self._close_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        """Stop keeping data: the handler's next read raises `exc` (an abandoned upload stores
        nothing); reading goes on so that the client's close frame can still arrive."""
        if self._error is None or isinstance(exc, ClientGone):
            self._error = exc
        self._keep = False
        self._chunks.clear()
        self._buffered = 0
        if isinstance(exc, ClientGone):
            waiter = self._close_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif self._conn is not None:
            self._conn.resume_session()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def serve(self) -> None:
        """Run the transfer; a `Closed` it raises becomes the close frame."""
        try:
            await self._run(self)
        except Closed as exc:
            await self.close(exc.code, exc.reason)
        except ClientGone:
            raise
        except Exception:
            log.exception("websocket transfer failed")
            await self.close(INTERNAL_ERROR, "internal error")
        if not self._closing:
            await self.close(NORMAL)

    # -- handler side -----------------------------------------------------------------------

    async def read(self) -> bytes:
        """The next chunk of message data, or b"" once the client closed normally. Raises
        `Closed` (a limit, a protocol error, an aborted upload) or ClientGone."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.remote_close is not None:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        chunk = chunks.popleft()
        if chunks and len(chunk) < READ_SIZE:
            pieces, size = [chunk], len(chunk)
            while chunks and size + len(chunks[0]) <= READ_SIZE:
                pieces.append(chunks.popleft())
                size += len(pieces[-1])
            chunk = b"".join(pieces)
        self._buffered -= len(chunk)
        if self._buffered < LOW_WATER and len(chunks) < MAX_PIECES // 4:
            self._conn.resume_session()
        return chunk

    async def send_bytes(self, data) -> None:
        await self._send(self._writer.send_data(data, True))

    async def send_text(self, text: str) -> None:
        await self._send(self._writer.send_data(text, True))

    async def _send(self, frame) -> None:
        if isinstance(self._error, ClientGone) or self._closing:
            raise ClientGone()
        self._conn.write(frame)
        await self._conn.drain()

    async def close(self, code: int, reason: str = "") -> None:
        """Send the close frame once, give the client CLOSE_WAIT seconds to answer with its
        own (dropping what it still sends), then close the connection."""
        if self._closing:
            return
        self._closing = True
        conn = self._conn
        if conn.closed or isinstance(self._error, ClientGone):
            return
        conn.write(self._writer.close(code, reason or None))
        if self.remote_close is None:
            self._keep = False
            self._chunks.clear()
            self._buffered = 0
            conn.resume_session()
            self._close_waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._close_waiter, CLOSE_WAIT)
            except TimeoutError:
                pass
        conn.close()
