"""A fault-injecting HTTP proxy on loopback between CallFS and moto's S3 server: it passes
requests through, or answers some as a throttled or failing store does, or cuts a response
part-way, so tests can watch what the server does with a store that misbehaves over a real
socket.

Each client connection carries one request (the proxy asks moto to close after it, and so
does its answer), which keeps the relaying simple and every rule exact per request.
"""
import socket
import threading

SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")
INTERNAL = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code>"
            b"<Message>We encountered an internal error. Please try again.</Message></Error>")


class Rule:
    """The next `times` requests for which `match(method, target)` holds get `action`:
    ("answer", status, body), ("cut", bytes of the response body to pass first) or ("drop",)
    (the connection closes with no answer)."""

    def __init__(self, match, action, times: int):
        self.match = match
        self.action = action
        self.left = times
        self.hits = 0


class FaultyProxy:
    def __init__(self, upstream: str, port: int = 0):
        host, upstream_port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(upstream_port))
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[str, str]] = []  # (method, target) of each request seen
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._running = True
        threading.Thread(target=self._accept, daemon=True).start()

    # -- what the tests set ---------------------------------------------------------------

    def answer(self, status: int, body: bytes, times: int, method: str | None = None,
               contains: str = "") -> Rule:
        return self._add(Rule(_matcher(method, contains), ("answer", status, body), times))

    def throttle(self, times: int, method: str | None = None, contains: str = "") -> Rule:
        return self.answer(503, SLOW_DOWN, times, method, contains)

    def cut(self, after: int, times: int, method: str | None = None, contains: str = "") -> Rule:
        return self._add(Rule(_matcher(method, contains), ("cut", after), times))

    def drop(self, times: int, method: str | None = None, contains: str = "") -> Rule:
        """Close the connection once the request is read, with no answer (a store gone)."""
        return self._add(Rule(_matcher(method, contains), ("drop",), times))

    def heal(self) -> None:
        with self._lock:
            self._rules.clear()

    def stop(self) -> None:
        self._running = False
        self.listener.close()
        with self._lock:
            for conn in list(self._open):
                _close(conn)

    # -- relaying -------------------------------------------------------------------------

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def _accept(self) -> None:
        while self._running:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self._open.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            head, rest = _read_head(client)
            if head is None:
                return
            method, target = head.split(b" ", 2)[:2]
            method, target = method.decode(), target.decode()
            self.requests.append((method, target))
            if b"\r\nexpect: 100-continue" in head.lower():
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # the body follows
            body = _read_body(client, head, rest)
            action = self._action(method, target)
            if action is not None and action[0] == "answer":
                _, status, text = action
                client.sendall(b"HTTP/1.1 %d Error\r\nContent-Type: application/xml\r\n"
                               b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                               % (status, len(text)) + text)
                return
            if action is not None and action[0] == "drop":
                return
            upstream = socket.create_connection(self.upstream, timeout=30)
            with self._lock:
                self._open.add(upstream)
            upstream.sendall(_closing(head) + body)
            limit = None if action is None else action[1]
            self._relay(upstream, client, limit)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(client)
                if upstream is not None:
                    self._open.discard(upstream)
            _close(client)
            if upstream is not None:
                _close(upstream)

    def _action(self, method: str, target: str):
        with self._lock:
            for rule in self._rules:
                if rule.left > 0 and rule.match(method, target):
                    rule.left -= 1
                    rule.hits += 1
                    return rule.action
        return None

    @staticmethod
    def _relay(upstream: socket.socket, client: socket.socket, limit: int | None) -> None:
        """The answer back to the client; with `limit`, only its head and that many bytes of
        its body, then both connections close (a store gone mid-transfer)."""
        sent_body = None  # bytes of the body passed, once the head is through
        pending = b""
        while True:
            data = upstream.recv(1 << 20)
            if not data:
                return
            if limit is None:
                client.sendall(data)
                continue
            if sent_body is None:
                pending += data
                end = pending.find(b"\r\n\r\n")
                if end < 0:
                    continue
                client.sendall(pending[:end + 4])
                data, sent_body = pending[end + 4:], 0
            room = limit - sent_body
            client.sendall(data[:room])
            sent_body += min(room, len(data))
            if sent_body >= limit:
                return


def _matcher(method: str | None, contains: str):
    return lambda m, target: (method is None or m == method) and contains in target


def _read_head(conn: socket.socket) -> tuple[bytes | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    end = data.index(b"\r\n\r\n") + 4
    return data[:end], data[end:]


def _read_body(conn: socket.socket, head: bytes, rest: bytes) -> bytes:
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = bytearray(rest)
    while len(body) < length:
        chunk = conn.recv(min(1 << 20, length - len(body)))
        if not chunk:
            break
        body += chunk
    return bytes(body)


def _closing(head: bytes) -> bytes:
    """The request head asking the upstream to close after its answer."""
    lines = [line for line in head[:-4].split(b"\r\n")
             if not line.lower().startswith((b"connection:", b"expect:"))]
    return b"\r\n".join(lines + [b"Connection: close"]) + b"\r\n\r\n"


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()
