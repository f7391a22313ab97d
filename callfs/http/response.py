"""Responses: a status, extra header lines, and a body from bytes, a file region or a stream."""
import orjson

from callfs._native.httphead import date_line as date_header  # noqa: F401 (one Date cache)

REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 204: "No Content",
    206: "Partial Content", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    409: "Conflict", 410: "Gone", 411: "Length Required", 412: "Precondition Failed",
    413: "Payload Too Large", 414: "URI Too Long", 416: "Range Not Satisfiable",
    417: "Expectation Failed", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}
STATUS_LINES = {code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in REASONS.items()}


def status_line(code: int) -> bytes:
    line = STATUS_LINES.get(code)
    return line if line is not None else f"HTTP/1.1 {code} Status\r\n".encode()


class Response:
    """`headers` is a bytes block of complete `Name: value\\r\\n` lines. Exactly one body source
    is used: `file` (a ReadHandle: fd, offset, count; closed after sending), `stream` (an async
    iterator of bytes, sent chunked unless `length` is known), or `body`. A 101 carries the
    WebSocket session the connection switches to (`upgrade`)."""

    __slots__ = ("status", "headers", "body", "file", "offset", "length", "stream", "close",
                 "on_sent", "upgrade")

    def __init__(self, status: int, headers: bytes = b"", body: bytes = b"", *, file=None,
                 offset: int = 0, length: int | None = None, stream=None, close: bool = False,
                 upgrade=None):
        self.status = status
        self.headers = headers
        self.body = body
        self.file = file
        self.offset = offset
        self.length = length
        self.stream = stream
        self.close = close
        self.on_sent = None
        self.upgrade = upgrade


def header_lines(pairs) -> bytes:
    return b"".join(f"{name}: {value}\r\n".encode("latin-1", "replace") for name, value in pairs)


JSON = b"Content-Type: application/json\r\n"
TEXT = b"Content-Type: text/plain; charset=utf-8\r\n"
OCTETS = b"Content-Type: application/octet-stream\r\n"


def json_response(status: int, value, headers: bytes = b"") -> Response:
    return Response(status, JSON + headers, orjson.dumps(value))


def text_response(status: int, text: str, headers: bytes = b"") -> Response:
    return Response(status, TEXT + headers, text.encode())
