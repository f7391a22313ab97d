"""A keep-alive HTTP/1.1 client on one raw socket, for tests that mix uploads and reads.

It writes a request's bytes while it reads the answer (an early answer — a 409 before the body
was read — never deadlocks it), parses responses framed by Content-Length, by chunked coding or
by the end of the connection, and reports when the server closes. Every exchange has a deadline:
an answer that does not arrive in time raises `Stall`, which says how far the exchange got.
"""
import errno
import selectors
import socket
import time


class Stall(Exception):
    """No complete answer before the deadline."""

    def __init__(self, message: str, sent: int, total: int, received: bytes):
        super().__init__(message)
        self.sent = sent
        self.total = total
        self.received = received


class Dropped(Exception):
    """The server closed the connection before its answer was complete."""

    def __init__(self, message: str, sent: int, total: int, received: bytes):
        super().__init__(message)
        self.sent = sent
        self.total = total
        self.received = received


class Response:
    def __init__(self, status: int, headers: dict, body: bytes, closes: bool):
        self.status = status
        self.headers = headers
        self.body = body
        self.closes = closes


def encode_chunked(body: bytes, pieces: list[int]) -> bytes:
    """`body` in chunks of the sizes in `pieces` (the rest in a last chunk), then the end."""
    out = []
    offset = 0
    for size in pieces:
        if offset >= len(body):
            break
        piece = body[offset:offset + size]
        out.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
        offset += len(piece)
    if offset < len(body):
        out.append(b"%x\r\n" % (len(body) - offset) + body[offset:] + b"\r\n")
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def request_head(method: str, target: str, key: str | None, headers: dict | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Parser:
    """Incremental parser of one response; `feed` returns a Response once it is complete."""

    def __init__(self, head_only: bool):
        self.head_only = head_only
        self.buffer = bytearray()
        self.received = 0
        self.status = None
        self.headers = None
        self.body = bytearray()
        self.mode = None          # "length", "chunked", "eof"
        self.remaining = 0
        self.chunk_state = "size"  # "size", "data", "crlf", "trailer"

    def feed(self, data: bytes):
        self.received += len(data)
        self.buffer += data
        return self._advance()

    def at_eof(self):
        """The connection ended: a response read to the end is complete, anything else is not."""
        if self.mode == "eof":
            self.body += self.buffer
            self.buffer.clear()
            return self._done(True)
        return None

    def _done(self, closes: bool) -> Response:
        connection = self.headers.get("connection", "").lower()
        return Response(self.status, self.headers, bytes(self.body),
                        closes or "close" in connection)

    def _advance(self):
        while True:
            if self.status is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return None
                head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
                del self.buffer[:end + 4]
                status = int(head[0].split(" ", 2)[1])
                if 100 <= status < 200:
                    continue          # an interim answer; the final one follows
                self.status = status
                self.headers = {}
                for line in head[1:]:
                    name, _, value = line.partition(":")
                    self.headers[name.strip().lower()] = value.strip()
                if self.head_only or status in (204, 304):
                    self.mode = "length"
                    self.remaining = 0
                elif "chunked" in self.headers.get("transfer-encoding", "").lower():
                    self.mode = "chunked"
                elif "content-length" in self.headers:
                    self.mode = "length"
                    self.remaining = int(self.headers["content-length"])
                else:
                    self.mode = "eof"
            if self.mode == "eof":
                self.body += self.buffer
                self.buffer.clear()
                return None
            if self.mode == "length":
                take = min(self.remaining, len(self.buffer))
                self.body += self.buffer[:take]
                del self.buffer[:take]
                self.remaining -= take
                return self._done(False) if self.remaining == 0 else None
            # chunked
            if self.chunk_state == "size":
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    return None
                size = int(bytes(self.buffer[:end]).split(b";")[0].strip(), 16)
                del self.buffer[:end + 2]
                if size == 0:
                    self.chunk_state = "trailer"
                else:
                    self.remaining = size
                    self.chunk_state = "data"
            elif self.chunk_state == "data":
                take = min(self.remaining, len(self.buffer))
                self.body += self.buffer[:take]
                del self.buffer[:take]
                self.remaining -= take
                if self.remaining:
                    return None
                self.chunk_state = "crlf"
            elif self.chunk_state == "crlf":
                if len(self.buffer) < 2:
                    return None
                del self.buffer[:2]
                self.chunk_state = "size"
            else:  # trailer fields, up to an empty line
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    return None
                line = bytes(self.buffer[:end])
                del self.buffer[:end + 2]
                if not line:
                    return self._done(False)


class MixConnection:
    """One keep-alive connection; `exchange` sends a request and returns its answer."""

    def __init__(self, port: int):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setblocking(False)
        self.local_port = self.sock.getsockname()[1]
        self.closed = False

    def exchange(self, segments: list[bytes], head_only: bool, timeout: float) -> Response:
        """Write `segments` in order (each with as few sends as the socket allows) while reading
        the answer. Returns once the answer is complete and everything was written — or once the
        answer is complete and says the connection closes (the unsent rest is dropped then)."""
        if self.closed:
            raise ConnectionError("the connection is closed")
        deadline = time.monotonic() + timeout
        total = sum(len(s) for s in segments)
        pending = [memoryview(s) for s in segments if s]
        sent = 0
        parser = _Parser(head_only)
        response = None
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        writable = True
        try:
            while True:
                if response is not None and (not pending or response.closes):
                    if response.closes:
                        self.close()
                    return response
                if writable and not pending:
                    selector.modify(self.sock, selectors.EVENT_READ)
                    writable = False
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Stall(f"no complete answer within {timeout:g} s", sent, total,
                                bytes(parser.buffer[:200]) if parser.status is None
                                else f"status {parser.status}, partial body".encode())
                for _key, events in selector.select(left):
                    if events & selectors.EVENT_READ:
                        try:
                            data = self.sock.recv(1 << 20)
                        except (BlockingIOError, InterruptedError):
                            data = None
                        except ConnectionResetError:
                            data = b""
                        if data == b"":
                            response = response or parser.at_eof()
                            self.close()
                            if response is not None:
                                return response
                            raise Dropped("the server closed the connection without a complete "
                                          "answer", sent, total, bytes(parser.buffer[:200]))
                        if data and response is None:
                            response = parser.feed(data)
                    if events & selectors.EVENT_WRITE and pending:
                        try:
                            n = self.sock.send(pending[0])
                        except (BlockingIOError, InterruptedError):
                            n = 0
                        except OSError as exc:
                            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                                raise
                            # The server stopped reading and closed: its answer, if any, is
                            # still to be read.
                            pending = []
                            n = 0
                        sent += n
                        if pending and n == len(pending[0]):
                            pending.pop(0)
                        elif n:
                            pending[0] = pending[0][n:]
        finally:
            selector.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


def server_receive_queue(server_port: int, client_port: int) -> int | None:
    """Bytes waiting unread in the server's socket of the connection from `client_port`
    (from /proc/net/tcp), or None when the connection is not found."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                lines = fh.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if (int(local.rsplit(":", 1)[1], 16) == server_port
                    and int(remote.rsplit(":", 1)[1], 16) == client_port):
                return int(queues.split(":")[1], 16)
    return None
