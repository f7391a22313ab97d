"""The HTTP/1.1 connection: an asyncio Protocol on uvloop with httptools' parser.

`data_received` only feeds the parser. Its callbacks for each message's head run in C (the
base class, callfs/_native/httphead.pyx), which answers a plain read of a cached file itself
(the hot path) and hands every other message here as a Request, queued. One runner task per
connection answers the queue in order (pipelining), so responses leave in the order requests
arrived; bodies go out through sending.BodySender. Whether the socket is read is the
connection's ReadGate's (flow.py) alone: every pause has a named reason, held by one pending
piece of work and given back when that work ends (a body's whole, a splice done, the queue
drained); `stray_pauses` names any reason nothing holds, which the sweep reports and repairs.
Writing waits on `pause_writing`/`resume_writing`.

Deadlines are fields that a server-wide sweeper checks once a second: the request head must
arrive within read_timeout (slowloris), a body may not pause longer than read_timeout, a
stalled client may not block a write longer than write_timeout, and an idle keep-alive
connection lives 120 s.

A handler may answer 101 with a WebSocket session (`Response.upgrade`): the connection then
leaves HTTP. Every byte that arrives goes to the session instead of the parser, the session
writes through `write`/`drain` (which wait on `pause_writing`) and pauses reading with
`pause_body` while its handler lags. The keep-alive timer does not run for it; the stalled
writer deadline does, and an upload that hears nothing from its client for the idle time is
dropped. A graceful stop lets a transfer finish within the drain deadline.
"""
import asyncio
import logging
import re
from collections import deque

import httptools

from callfs._native.httphead import HeadState, monotonic_ns, random_id, valid_host
from callfs._native.httphead import Reject as _Reject
from callfs._native.stream import SpliceSink
from callfs.domain.errors import BadRequest, ClientGone
from callfs.http import flow
from callfs.http.request import Body, Request
from callfs.http.response import TEXT as _TEXT
from callfs.http.response import Response, date_header, status_line
from callfs.http.router import HSTS, SECURITY_HEADERS
from callfs.http.sending import BodySender
from callfs.observability.metrics import ROUTES

log = logging.getLogger("callfs.http")

MAX_PIPELINE = 32
DISCARD_LIMIT = 1024 * 1024
LINGER = 2.0
SPLICE_MIN = 64 * 1024  # bodies above this wait in the socket for the handler

STRAY_PAUSE = "connection paused with nothing pending"  # the log event (a lost wake-up)
VERSIONS = ("1.1", "1.0")  # the request versions served; others are answered 505

_TOKEN_REQUEST = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ ")  # a method token, then SP
# llhttp's words for the messages it refuses that a strict server answers other than 400.
_PARSER_STATUS = {"Invalid HTTP version": 505, "Request has invalid `Transfer-Encoding`": 501,
                  "Invalid `Transfer-Encoding` header value": 501}

_CLOSE = b"Connection: close\r\n"
_ROUTE_BYTES = {route: route.encode() for route in ROUTES}
_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Rejection:
    """A request the parser refused: answered in turn with a plain-text error, then close."""

    __slots__ = ("status",)

    def __init__(self, status: int):
        self.status = status


def peer_text(peer) -> bytes:
    """The peer as the access log writes it: `ip:port`, `[ipv6]:port`, or `-`."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return (f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}").encode()
    return b"-"


def _rejection_bytes(status: int, tls: bool) -> bytes:
    """A refusal written before any handler runs; it carries the headers of every response
    (API.md §3) like the router's answers, with a fresh request id (the head was not read
    whole, or not trusted)."""
    text = status_line(status)[9:-2] + b"\n"
    return b"".join((status_line(status), date_header(), _TEXT,
                     b"Content-Length: %d\r\n" % len(text), SECURITY_HEADERS,
                     b"X-Request-ID: ", random_id(), b"\r\n", HSTS if tls else b"",
                     _CLOSE, b"\r\n", text))


class HttpProtocol(HeadState, BodySender, asyncio.Protocol):
    def __init__(self, state):
        self.state = state
        self.app = state.app
        self.hot = state.hot
        self.loop = state.loop
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.pipeline: deque = deque()
        self.runner: asyncio.Task | None = None
        self.closed = False
        self.tls = state.tls
        self.peer = None
        self.metrics = state.metrics  # callfs/observability/metrics.py's Metrics
        self.access = state.access    # the access log's LogSink, or None when it is off
        self._peer_text = b"-"
        self._started_ns = 0
        self._sock_fd = -1
        self._dup_fd = -1
        self.gate = flow.ReadGate()
        self._outside = False   # bytes no longer go to the parser (refused, upgraded)
        self._at_start = True   # the next byte begins a message: its request line is checked
        self._splicing = None   # the body moving by splice, while it does
        # message being parsed
        self._current: Request | None = None
        self._url = b""
        self._headers: dict = {}
        self._fields = 0
        self._head_size = 0
        self._in_head = False
        self._head_fed = 0
        self._upgrade = False
        self._upgrade_tail = b""  # bytes that followed an upgrade request's head
        self._session = None      # the WebSocket session, once the connection left HTTP
        self._plain = True      # no header keeps the message off the hot path
        self._answered = False  # the hot path answered the message being parsed
        # deadlines (loop time; 0 = not running)
        now = self.loop.time()
        self._head_start = 0.0
        self._idle_since = now
        self._last_read = now
        self._stall_since = 0.0
        self._drain_waiter: asyncio.Future | None = None
        self._read_waiter: asyncio.Future | None = None
        self._writing_paused = False

    # -- connection lifecycle ------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.gate.attach(transport)
        sock = transport.get_extra_info("socket")
        self._sock_fd = sock.fileno() if sock is not None and not self.tls else -1
        self.peer = transport.get_extra_info("peername")
        self._peer_text = peer_text(self.peer)
        self.state.connections.add(self)
        self.metrics.connections(1)

    def connection_lost(self, exc):
        self.closed = True
        self.state.connections.discard(self)
        self.metrics.connections(-1)
        gone = ClientGone()
        if self._current is not None:
            self._current.body.fail(gone)
        for index, item in enumerate(self.pipeline):
            if isinstance(item, Request):
                item.body.fail(gone)
                if index or self.runner is None:  # the runner accounts for the one it answers
                    self._account(item, 0, 0, aborted=True)
        if self._session is not None:
            self._session.lost()
        for waiter in (self._drain_waiter, self._read_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(gone)
        self._release_dup()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    # -- reading ------------------------------------------------------------------------------

    # `data_received` and the head's parser callbacks are HeadState's (in C): a plain GET/HEAD
    # the hot path can answer never leaves them. The rest of each message comes here.

    def received_outside_http(self, data: bytes) -> None:
        """Bytes after the connection left HTTP: a WebSocket session's, or nothing to parse
        (the parser refused the message; the connection closes after the error)."""
        if self._session is not None:
            self._last_read = self.loop.time()
            self._session.feed(data)

    def feed_failed(self, exc: Exception, data: bytes) -> None:
        if isinstance(exc, httptools.HttpParserUpgrade):
            self._upgrade = True
            self._upgrade_tail = data[exc.args[0]:] if exc.args else b""
            self._outside = True
            self.gate.pause(flow.UPGRADE)
        elif isinstance(exc, _Reject):
            self._parse_failed(exc.status)
        elif isinstance(exc, httptools.HttpParserError):
            ctx = exc.__context__
            if isinstance(ctx, _Reject):
                self._parse_failed(ctx.status)
            elif isinstance(exc, httptools.HttpParserInvalidMethodError):
                # A well-formed token the parser does not know is a method not implemented.
                self._parse_failed(501 if _TOKEN_REQUEST.match(data) else 400)
            else:
                self._parse_failed(_PARSER_STATUS.get(str(exc), 400))
        else:
            raise exc

    def head_complete(self) -> None:
        """A message's head for the general route: queue its Request for the runner."""
        headers = self._headers
        parser = self.parser
        version = parser.get_http_version()
        if version not in VERSIONS:
            raise _Reject(505)  # HTTP/2.0 and HTTP/0.9 request lines parse: not served here
        host = headers.get(b"host")
        if (host is None and version == "1.1") or (host is not None and not valid_host(host)):
            raise _Reject(400)  # RFC 9112 §3.2: exactly one valid Host in HTTP/1.1
        if b"#" in self._url:
            raise _Reject(400)  # a request target carries no fragment
        length = headers.get(b"content-length")
        coding = headers.get(b"transfer-encoding")
        if coding is not None:
            if length is not None or version == "1.0":
                raise _Reject(400)  # smuggling: never trust both; 1.0 framing is faulty then
            if coding.strip().lower() != b"chunked":
                raise _Reject(501)  # RFC 9112 §6.1: a transfer coding not understood
        expect = headers.get(b"expect")
        if expect is not None and expect.strip().lower() != b"100-continue":
            raise _Reject(417)  # RFC 9110 §10.1.1: an expectation this server cannot meet
        expected = None
        if length is not None:
            if not length.isdigit():
                raise _Reject(400)
            expected = int(length)
        elif coding is None:
            expected = 0
        body = Body(self, expected)
        request = Request(parser.get_method(), self._url, headers, self._fields,
                          parser.should_keep_alive(), body, self.tls, self.peer)
        request.started_ns = self._started_ns
        self.metrics.in_flight(1)
        if expected == 0:
            body.complete = True
        elif expected is not None and expected > SPLICE_MIN and self._sock_fd >= 0:
            # Leave a large body in the socket until the handler asks: then it can move by
            # splice instead of through Python (only what came with the head is read now).
            self.gate.pause(flow.BODY)
        self._current = request
        self.pipeline.append(request)
        if len(self.pipeline) > MAX_PIPELINE:
            self.gate.pause(flow.PIPELINE)
        if self.runner is None:
            self.runner = self.loop.create_task(self._run())

    def on_body(self, data: bytes):
        self._current.body.feed(data)

    def message_complete(self) -> None:
        request = self._current
        if request is not None:
            request.body.finish()
            self._current = None
        # The body is whole: nothing of it waits in the socket any more, whether or not its
        # handler ever reads it (an early answer reads none).
        self.gate.resume(flow.BODY)

    def _parse_failed(self, status: int) -> None:
        self._outside = True
        self.gate.pause(flow.REFUSED)
        current = self._current
        if current is not None and current.body is not None and not self._in_head:
            # A body that breaks the framing (bad chunk size): its handler fails with 400.
            current.body.fail(BadRequest("malformed request body"))
            current.keep_alive = False
            self._current = None
            self.gate.resume(flow.BODY)
            return
        self._in_head = False
        self.pipeline.append(_Rejection(status))
        if self.runner is None:
            self.runner = self.loop.create_task(self._run())

    def _resume(self, reason: int) -> None:
        if self.gate.resume(reason):
            self._last_read = self.loop.time()

    # Body flow control, called by Body: only the body being parsed is read from the socket.
    def pause_body(self, body: Body) -> None:
        current = self._current
        if current is not None and current.body is body:
            self.gate.pause(flow.BODY)

    def resume_body(self, body: Body) -> None:
        current = self._current
        if current is not None and current.body is body:
            self._resume(flow.BODY)

    # The same for a WebSocket session's buffer.
    def pause_session(self) -> None:
        self.gate.pause(flow.SESSION)

    def resume_session(self) -> None:
        self._resume(flow.SESSION)

    def stray_pauses(self) -> int:
        """The reasons reading is paused for that no pending work holds: always 0 (a lost
        wake-up otherwise, which would leave the next request unread in the socket)."""
        held = self.gate.reasons
        if not held or self.closed:
            return 0
        stray = 0
        current = self._current
        if held & flow.BODY and (current is None or current.body.ended):
            stray |= flow.BODY
        if held & flow.PIPELINE and len(self.pipeline) <= MAX_PIPELINE:
            stray |= flow.PIPELINE
        if held & flow.SPLICE and self._splicing is None:
            stray |= flow.SPLICE
        if held & (flow.REFUSED | flow.UPGRADE) and self.runner is None:
            stray |= held & (flow.REFUSED | flow.UPGRADE)
        if held & flow.SESSION and self._session is None:
            stray |= flow.SESSION
        return stray

    def body_wanted(self) -> None:
        """The handler starts reading the body: honour `Expect: 100-continue` now."""
        request = self.pipeline[0] if self.pipeline else None
        if (request is not None and request.expect_continue and not request.body.complete
                and request.body.received == 0 and not self.closed):
            self.transport.write(_CONTINUE)

    async def splice_body(self, body: Body, fd: int, remaining: int) -> int | None:
        """Move the rest of the body being parsed (`remaining` bytes of a Content-Length body)
        from the socket into `fd` by splice; returns the bytes moved, or None when this
        connection cannot (TLS, a pipelined body, a broken message): read it instead.

        The transport stops reading, so the socket is ours until the body ends; then a fresh
        parser takes over at the next message, exactly where this body ended."""
        current = self._current
        if (self._sock_fd < 0 or self.closed or current is None or current.body is not body
                or self._outside or remaining <= 0):
            return None
        self.gate.pause(flow.SPLICE)
        self.gate.resume(flow.BODY)  # the handler reads it now (the gate stays shut)
        self._splicing = body
        sink = SpliceSink()
        moved = 0
        try:
            while remaining > 0:
                if self.closed:
                    raise ClientGone()
                try:
                    step = sink.step(self._sock_fd, fd, remaining)
                except ConnectionError:
                    raise ClientGone() from None
                if step > 0:
                    moved += step
                    remaining -= step
                    body.received += step
                    body.spliced = True
                    self._last_read = self.loop.time()
                elif step == 0:
                    raise ClientGone()  # the peer closed before the body ended
                else:
                    await self._wait_readable()
        except BaseException as exc:
            # The socket is somewhere inside a message the parser never saw: it cannot go on.
            body.fail(exc if isinstance(exc, Exception) else ClientGone())
            self.abort()
            raise
        finally:
            sink.close()
            self._splicing = None
        self.parser = httptools.HttpRequestParser(self)
        self._current = None
        self._at_start = True  # the spliced body ended exactly where the next message begins
        body.finish()
        self._resume(flow.SPLICE)
        return moved

    # -- writing ------------------------------------------------------------------------------

    def pause_writing(self):
        self._writing_paused = True
        self._stall_since = self.loop.time()

    def resume_writing(self):
        self._writing_paused = False
        self._stall_since = 0.0
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def write(self, data) -> None:
        if not self.closed:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport asks to pause writing; ClientGone once the peer is gone."""
        await self._drain()

    async def _drain(self) -> None:
        if self.closed:
            raise ClientGone()
        if self._writing_paused:
            self._drain_waiter = self.loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    # -- the runner ---------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self.pipeline and not self.closed:
                item = self.pipeline[0]
                if isinstance(item, _Rejection):
                    self.refused(item.status)
                    self.close()
                    return
                try:
                    response = await self.app(item)
                except ClientGone:
                    self._account(item, 0, 0, aborted=True)
                    self.abort()
                    return
                if response is None or self.closed:
                    self._account(item, 0, 0, aborted=True)
                    self.abort()
                    return
                try:
                    keep = await self._respond(item, response)
                except BaseException:
                    self._account(item, response.status, 0, aborted=True)
                    raise
                self.pipeline.popleft()
                if len(self.pipeline) <= MAX_PIPELINE:
                    self._resume(flow.PIPELINE)
                if not keep:
                    return
            if not self.pipeline and self._current is None and not self._in_head:
                self._idle_since = self.loop.time()
        except ClientGone:
            self.abort()
        except Exception:
            log.exception("connection failed")
            self.abort()
        finally:
            self.runner = None

    def _keep_alive(self, request: Request, response: Response) -> bool:
        if not request.keep_alive or response.close or self.state.draining or self._upgrade:
            return False
        body = request.body
        if body.complete:
            return True
        if request.expect_continue and not body.started:
            return False  # the client may or may not send the body now: no way to frame it
        return body.expected is not None and body.expected - body.received <= DISCARD_LIMIT

    async def _respond(self, request: Request, response: Response) -> bool:
        keep = self._keep_alive(request, response)
        head_only = request.method == b"HEAD"
        status = response.status
        parts = [status_line(status), date_header(), response.headers]
        no_body = status < 200 or status in (204, 304)
        chunked = False
        if response.file is not None:
            length = response.length
        elif response.stream is not None:
            length = response.length
            chunked = length is None and not head_only
        else:
            length = len(response.body) if response.length is None else response.length
        if not no_body:
            if chunked:
                parts.append(_CHUNKED)
            elif length is not None:
                parts.append(b"Content-Length: %d\r\n" % length)
        if response.upgrade is not None:
            if not self._upgrade:
                # The parser did not see an upgrade (no `Connection: upgrade`): it would read
                # the frames that follow as HTTP.
                self._account(request, 400, 0)
                self.transport.write(_rejection_bytes(400, self.tls))
                self.close()
                return False
            parts.append(b"\r\n")
            self._account(request, status, 0)
            self.transport.write(b"".join(parts))
            await self._serve_upgrade(response.upgrade)
            return False
        if not keep:
            parts.append(_CLOSE)
        parts.append(b"\r\n")
        # Counted and logged before the last byte leaves, so a client that reads its answer
        # and then scrapes /metrics (through any worker) always finds it counted.
        try:
            if head_only or no_body:
                self._account(request, status, 0)
                self.transport.write(b"".join(parts))
            elif response.file is not None:
                self.transport.write(b"".join(parts))
                transfer = await self._send_handle(response.file, response.offset, length,
                                                   request.request_id)
                self._account(request, status, length, transfer)
            elif response.stream is not None:
                self.transport.write(b"".join(parts))
                sent = await self._send_stream(response.stream, chunked)
                self._account(request, status, sent, b"copy")
            else:
                parts.append(response.body)
                self._account(request, status, len(response.body))
                self.transport.write(b"".join(parts))
        finally:
            if response.file is not None:
                response.file.close()
        if response.on_sent is not None:
            response.on_sent()
        if not request.body.complete:
            request.body.start_discarding()
            if keep:
                await self._await_discard(request.body)
            elif not self.closed:
                self._linger()
            return keep and not self.closed
        if not keep:
            self.close()
        return keep

    async def _serve_upgrade(self, session) -> None:
        """The 101 went out: the connection belongs to the session until it ends, then closes.
        Reading was paused since the upgrade request's head; it resumes into the session."""
        self._session = session
        self._idle_since = 0.0
        self._last_read = self.loop.time()
        tail, self._upgrade_tail = self._upgrade_tail, b""
        session.attach(self)
        if tail:
            session.feed(tail)
        self._resume(flow.UPGRADE)
        try:
            await session.serve()
        finally:
            self.close()

    async def _await_discard(self, body: Body) -> None:
        """Keep the connection only once the unread body has arrived (and been dropped)."""
        try:
            while not body.complete:
                await body.read()
        except Exception:
            raise ClientGone() from None

    def _linger(self) -> None:
        """Half-close, keep reading (and dropping) for a moment, then close: closing with unread
        data would reset the connection and the client could lose the response."""
        try:
            self.transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            self.close()
            return
        self._outside = True  # whatever arrives is dropped; reading goes on, for every reason
        self.gate.resume(self.gate.reasons)
        self.loop.call_later(LINGER, self.close)

    # -- accounting: the metrics and the access line of each answer ----------------------------

    def _account(self, request: Request, status: int, sent: int, transfer: bytes | None = None,
                 *, aborted: bool = False) -> None:
        """Once per request: `status` 0 (and `aborted`) when no response went out."""
        if request.finished:
            return
        request.finished = True
        body = request.body
        received = body.received
        if transfer is None and received:
            transfer = b"splice" if body.spliced else b"copy"
        elapsed = monotonic_ns() - request.started_ns
        metrics = self.metrics
        metrics.in_flight(-1)
        route = request.route
        if status:
            metrics.request(request.method, route, status, elapsed, received, sent)
        if aborted:
            metrics.aborted(request.method, route, received if not status else 0,
                            sent if not status else 0)
        if self.access is not None:
            principal = request.principal
            self.access.access(request.method, _ROUTE_BYTES.get(route, b"unmatched"),
                               request.target, status or 499, received, sent, elapsed,
                               None if principal is None else principal.user,
                               request.request_id.encode() or b"-", self._peer_text,
                               transfer, aborted)

    def refused(self, status: int) -> None:
        """A refusal written before any handler ran (the head was not read whole, or not
        trusted): counted under `unmatched`, logged, then written."""
        elapsed = monotonic_ns() - self._started_ns if self._started_ns else 0
        data = _rejection_bytes(status, self.tls)
        self.metrics.request(b"OTHER", "unmatched", status, elapsed, 0, 0)
        if self.access is not None:
            rid = data[data.index(b"X-Request-ID: ") + 14:].split(b"\r\n", 1)[0]
            self.access.access(b"-", b"unmatched", self._url[:256] or b"-", status, 0, 0,
                               elapsed, None, rid, self._peer_text, None)
        self.transport.write(data)

    # -- deadlines ----------------------------------------------------------------------------

    def check_deadlines(self, now: float) -> None:
        state = self.state
        stray = self.stray_pauses()
        if stray:
            log.error(STRAY_PAUSE,
                      extra={"reasons": flow.describe(stray), "peer": str(self.peer)})
            self._resume(stray)
        if self._session is not None:
            if (self._stall_since and state.write_timeout
                    and now - self._stall_since > state.write_timeout):
                self.abort()
            elif (self._session.awaiting_client and not self.gate.reasons
                    and now - self._last_read > state.idle_timeout):
                self.abort()
            return
        if self._in_head:
            if state.read_timeout and now - self._head_start > state.read_timeout:
                self.refused(408)
                self.close()
            return
        if self._idle_since:
            if now - self._idle_since > state.idle_timeout:
                self.close()
            return
        if self._stall_since and state.write_timeout and now - self._stall_since > state.write_timeout:
            self.abort()
            return
        current = self._current
        reading = not self.gate.reasons & ~flow.SPLICE
        if (current is not None and reading and state.read_timeout
                and now - self._last_read > state.read_timeout):
            current.body.fail(ClientGone())
            self.abort()

    def shutdown(self) -> None:
        """Graceful stop: idle connections close now, busy ones after their response (a
        WebSocket transfer when it ends)."""
        if self._session is not None:
            return
        if self._idle_since or (not self.pipeline and self._current is None and not self._in_head):
            self.close()

