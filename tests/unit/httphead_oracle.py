"""Plain-Python specification of callfs._native.httphead: the request head's parser callbacks
and the hot path's answer. The native module must behave exactly like this (test_httphead.py).
"""
import email.utils
import random
import time

from callfs._native.pathnorm import normalize_url_path

MAX_URL = 64 * 1024
MAX_HEAD = 1024 * 1024
MAX_FIELDS = 1000
VERSIONS = ("1.1", "1.0")
HOST_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=%:[]")


def request_line_ok(data: bytes) -> bool:
    line, newline, _ = data.lstrip(b"\r\n").partition(b"\n")
    return not newline or line.count(b" ") == 2


def valid_host(value: bytes) -> bool:
    return all(byte in HOST_BYTES for byte in value)
NOT_HOT = frozenset((b"if-match", b"if-none-match", b"if-modified-since",
                     b"if-unmodified-since", b"if-range", b"range",
                     b"content-length", b"transfer-encoding", b"expect", b"upgrade"))


def origin_form(url: bytes) -> bytes:
    """RFC 9112 §3.2.2: an absolute-form target is served as its path and query."""
    scheme, sep, rest = url.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return url
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=-1)
    if cut < 0:
        return b"/"
    return rest[cut:] if rest[cut:cut + 1] == b"/" else b"/" + rest[cut:]


class Reject(Exception):
    def __init__(self, status):
        super().__init__(status)
        self.status = status


def date_line() -> bytes:
    return b"Date: " + email.utils.formatdate(int(time.time()), usegmt=True).encode() + b"\r\n"


ID_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:")


def client_request_id(value) -> bool:
    """API.md §3: a client's X-Request-ID is kept when it is 1-128 bytes of A-Z a-z 0-9 - _ . :"""
    return value is not None and 1 <= len(value) <= 128 and all(b in ID_BYTES for b in value)


def random_id() -> bytes:
    return b"%016x" % random.getrandbits(64)


class HotFile:
    __slots__ = ("get_head", "head_head", "body")

    def __init__(self, get_head: bytes, head_head: bytes, body):
        self.get_head = get_head
        self.head_head = head_head
        self.body = body


class HotPath:
    """`view` answers ready(principal, path) with a HotFile or None (the native ReadView or
    its oracle, tests/unit/readview_oracle.py)."""

    def __init__(self, *, keys, identify, view, security, hsts):
        self.keys = keys
        self.identify = identify
        self.view = view
        self.security = security
        self.hsts = hsts
        self.answered = 0

    def answer(self, method: bytes, url: bytes, headers: dict, tls: bool):
        if (not url.startswith(b"/v1/files/") or b"?" in url or b"#" in url
                or url.startswith(b"/v1/files/ws/")):
            return None
        authorization = headers.get(b"authorization")
        identity = self.keys.get(authorization) or self.identify(authorization)
        if identity is None:
            return None
        try:
            path, trailing = normalize_url_path(url[9:])
        except ValueError:
            return None
        if trailing:
            return None
        hot = self.view.ready(identity, path)
        if hot is None:
            return None
        if method == b"HEAD":
            parts = [b"HTTP/1.1 200 OK\r\n", date_line(), hot.head_head]
        elif hot.body is not None:
            parts = [b"HTTP/1.1 200 OK\r\n", date_line(), hot.get_head]
        else:
            return None
        parts.append(self.security)
        if tls:
            parts.append(self.hsts)
        given = headers.get(b"x-request-id")
        kept = given is not None and client_request_id(given)
        parts.append(b"X-Request-ID: " + (given if kept else random_id()) + b"\r\n\r\n")
        if method != b"HEAD":
            parts.append(hot.body)
        self.answered += 1
        return b"".join(parts)


class HeadState:
    """The base of a connection: its subclass provides loop, parser, transport, state,
    pipeline, hot, tls, `_outside` and the methods named in the native docstring."""

    def data_received(self, data: bytes) -> None:
        if self._outside:
            self.received_outside_http(data)
            return
        self._last_read = self.loop.time()
        if self._at_start and not request_line_ok(data):
            self._parse_failed(400)
            return
        was_in_head = self._in_head
        try:
            self.parser.feed_data(data)
        except Exception as exc:
            self.feed_failed(exc, data)
            return
        if self._in_head:
            self._head_fed = self._head_fed + len(data) if was_in_head else len(data)
            if self._head_fed > MAX_HEAD:
                self._parse_failed(431)

    def on_message_begin(self):
        self._at_start = False
        self._in_head = True
        self._head_start = self._last_read
        self._idle_since = 0.0
        self._url = b""
        self._headers = {}
        self._fields = 0
        self._head_size = 0
        self._plain = True

    def on_url(self, url: bytes):
        self._url += url
        if len(self._url) > MAX_URL:
            raise Reject(414)
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes):
        self._fields += 1
        self._head_size += len(name) + len(value) + 4
        if self._fields > MAX_FIELDS or self._head_size > MAX_HEAD:
            raise Reject(431)
        name = name.lower()
        if name in NOT_HOT:
            self._plain = False
        seen = self._headers.get(name)
        self._headers[name] = value if seen is None else seen + b", " + value

    def on_headers_complete(self):
        self._in_head = False
        if self._url[:1] not in (b"/", b""):
            self._url = origin_form(self._url)
        if self._plain and self.hot is not None and not self.pipeline:
            method = self.parser.get_method()
            host = self._headers.get(b"host")
            if (method in (b"GET", b"HEAD") and self.parser.should_keep_alive()
                    and host is not None and valid_host(host)
                    and (b"connection" not in self._headers
                         or self.parser.get_http_version() in VERSIONS)
                    and not self.state.draining):
                data = self.hot.answer(method, self._url, self._headers, self.tls)
                if data is not None:
                    self.transport.write(data)
                    self._answered = True
                    self._idle_since = self._last_read
                    return
        self._idle_since = 0.0
        self.head_complete()

    def on_message_complete(self):
        self._at_start = True
        if self._answered:
            self._answered = False
            return
        self.message_complete()
