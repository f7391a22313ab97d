"""A small blocking WebSocket client for the tests: wsproto over a plain socket."""
import base64
import os
import socket

from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.frame_protocol import FrameProtocol
from wsproto.utilities import generate_accept_token

from conftest import KEYS


class HandshakeRefused(Exception):
    def __init__(self, status: int, headers: dict, body: bytes):
        super().__init__(status)
        self.status = status
        self.headers = headers
        self.body = body


def read_http_response(sock: socket.socket) -> tuple[int, dict, bytes, bytes]:
    """(status, lower-cased headers, body, bytes after the head) of one HTTP response."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError(f"closed during the response head: {data!r}")
        data += more
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode("latin-1")
    if status == 101:
        return status, headers, b"", rest
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        more = sock.recv(65536)
        if not more:
            break
        rest += more
    return status, headers, rest[:length], b""


class WSClient:
    """Messages arrive as bytes (binary) or str (text); `close_code`/`close_reason` hold the
    server's close frame once `receive` returned None."""

    def __init__(self, port: int, target: str, *, user: str | None = "alice",
                 headers: dict | None = None, timeout: float = 30):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16))
        lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key.decode()}",
                 "Sec-WebSocket-Version: 13"]
        if user is not None:
            lines.append(f"Authorization: Bearer {KEYS.get(user, user)}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, head, body, rest = read_http_response(self.sock)
        if status != 101:
            self.sock.close()
            raise HandshakeRefused(status, head, body)
        assert head["sec-websocket-accept"].encode() == generate_accept_token(key)
        self.headers = head
        self.reader = Connection(ConnectionType.CLIENT)
        # Frames leave through wsproto's frame protocol so that we can keep reading after our
        # own close frame (the server answers an upload with a message after it).
        self.writer = FrameProtocol(client=True, extensions=[])
        self.pending: list = []
        self.close_code = None
        self.close_reason = None
        self._partial = {BytesMessage: bytearray(), TextMessage: []}
        if rest:
            self._feed(rest)

    def _feed(self, data: bytes) -> None:
        self.reader.receive_data(data)
        for event in self.reader.events():
            if isinstance(event, BytesMessage):
                self._partial[BytesMessage] += event.data
                if event.message_finished:
                    self.pending.append(bytes(self._partial[BytesMessage]))
                    self._partial[BytesMessage] = bytearray()
            elif isinstance(event, TextMessage):
                self._partial[TextMessage].append(event.data)
                if event.message_finished:
                    self.pending.append("".join(self._partial[TextMessage]))
                    self._partial[TextMessage] = []
            elif isinstance(event, Ping):
                self.sock.sendall(self.writer.pong(event.payload))
            elif isinstance(event, CloseConnection):
                self.close_code, self.close_reason = event.code, event.reason
                return

    def send(self, data) -> None:
        self.sock.sendall(self.writer.send_data(data, True))

    def send_frame(self, data, fin: bool) -> None:
        self.sock.sendall(self.writer.send_data(data, fin))

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        self.sock.sendall(self.writer.close(code, reason or None))

    def ping(self, payload: bytes) -> None:
        self.sock.sendall(self.writer.ping(payload))

    def receive(self):
        """The next message, or None once the server's close frame (or EOF) arrived."""
        while not self.pending:
            if self.close_code is not None:
                return None
            try:
                data = self.sock.recv(256 * 1024)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self._feed(data)
        return self.pending.pop(0)

    def receive_all(self) -> list:
        messages = []
        while (message := self.receive()) is not None:
            messages.append(message)
        return messages

    def send_quietly(self, data) -> bool:
        """Send, tolerating a server that already closed; False when it had."""
        try:
            self.send(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def at_eof(self) -> bool:
        """The server closed the TCP connection after its close frame."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def upload(port: int, path: str, messages, *, user: str = "alice") -> tuple[list, int, str]:
    """Send `messages`, then a close frame: (messages received, close code, reason)."""
    with WSClient(port, f"/v1/files/ws{path}?mode=upload", user=user) as ws:
        for message in messages:
            if not ws.send_quietly(message):
                break
        try:
            ws.send_close(1000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = ws.receive_all()
        return received, ws.close_code, ws.close_reason


def download(port: int, path: str, *, user: str = "alice") -> tuple[list, int, str]:
    with WSClient(port, f"/v1/files/ws{path}?mode=download", user=user) as ws:
        received = ws.receive_all()
        return received, ws.close_code, ws.close_reason
