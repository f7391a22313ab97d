"""A raw HTTP/1.1 client on a plain socket: it sends exactly the bytes a test writes and parses
responses one after another, so pipelining and malformed input can be exercised."""
import socket


class RawConnection:
    def __init__(self, port: int, timeout: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_response(self, head_only: bool = False):
        """(status, headers dict lower-cased, body); raises ConnectionError at EOF."""
        line = self.reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        parts = line.split(b" ", 2)
        status = int(parts[1])
        headers = {}
        while True:
            line = self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode()] = value.strip().decode("latin-1")
        if head_only or status in (100, 204, 304):
            return status, headers, b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.reader.readline().strip(), 16)
                if size == 0:
                    self.reader.readline()
                    break
                body += self.reader.read(size)
                self.reader.readline()
            return status, headers, body
        length = int(headers.get("content-length", "0"))
        return status, headers, self.reader.read(length)

    def closed_by_peer(self, timeout: float = 5) -> bool:
        """True when the server closes the connection (EOF or reset) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def request_bytes(method: str, target: str, key: str | None, body: bytes = b"",
                  headers: dict | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT"):
        if not any(n.lower() in ("content-length", "transfer-encoding") for n in (headers or {})):
            lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body
