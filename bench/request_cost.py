"""What one small GET/HEAD costs the server in user space, without the kernel or a client.

    python bench/request_cost.py [REQUESTS]

The bytes wrk sends for one request are fed to a connection's `data_received` again and again,
and the response goes to a transport that discards it: what is left is the parser, CallFS's
head callbacks and hot path (authentication, path, cache, the answer), and the join of the
response. The same is measured for the ceiling's handler (../shared/bench/pyceiling.py, its
answer prebuilt). Best of five rounds, microseconds per request. The CallFS side is the real
connection class on a real engine (SQLite behind the generation cache, a local backend).
"""
import os
import sys
import tempfile
import time
import types

import uvloop

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_REPO, "tests", "unit"))
sys.path.insert(0, os.path.join(_REPO, "..", "shared", "bench"))

import test_httphead  # noqa: E402  (builds the site the hot path's tests use)
from callfs.http.hotpath import hot_path  # noqa: E402
from callfs.http.protocol import HttpProtocol  # noqa: E402
from callfs.http.router import HSTS, SECURITY_HEADERS  # noqa: E402


class Discard:
    def write(self, data):
        pass

    def writelines(self, parts):
        pass

    def get_extra_info(self, name):
        return None

    def get_write_buffer_size(self):
        return 0


def request(method: bytes, target: bytes) -> bytes:
    return (method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
            b"Authorization: Bearer " + test_httphead.KEY.encode() + b"\r\n\r\n")


def cost(feed, data: bytes, count: int) -> float:
    for _ in range(1000):
        feed(data)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(count):
            feed(data)
        best = min(best, (time.perf_counter() - started) / count)
    return best * 1e6


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    loop = uvloop.new_event_loop()
    engine, auth, close = test_httphead.make_site(tempfile.mkdtemp(prefix="callfs-cost-"))
    hot = hot_path(auth=auth, engine=engine, security=SECURITY_HEADERS, hsts=HSTS)
    state = types.SimpleNamespace(app=None, hot=hot, loop=loop, tls=False, connections=set(),
                                  draining=False)
    conn = HttpProtocol(state)
    conn.connection_made(Discard())

    import pyceiling
    body = os.urandom(4096)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 4096\r\n\r\n")
    ceiling = pyceiling.Handler({b"small": (head, body, -1, 4096)}, "bytes")
    ceiling.connection_made(Discard())

    print(f"{'':10} {'ceiling':>9} {'CallFS':>9}   (µs per request, best of 5 x {count:,})")
    for method in (b"GET", b"HEAD"):
        before = hot.answered
        ours = cost(conn.data_received, request(method, b"/v1/files/d/small"), count)
        assert hot.answered - before == 1000 + 5 * count, "the hot path did not answer"
        theirs = cost(ceiling.data_received, request(method, b"/small"), count)
        print(f"{method.decode() + ' 4 KiB':10} {theirs:9.2f} {ours:9.2f}")
    close()
    loop.close()


if __name__ == "__main__":
    main()
