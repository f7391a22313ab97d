"""What one small GET/HEAD costs the server in user space, without the kernel or a client.

    python bench/request_cost.py [REQUESTS]
    python bench/request_cost.py --feed off|on REQUESTS   (for bench/instructions.py)

The bytes wrk sends for one request are fed to a connection's `data_received` again and again,
and the response goes to a transport that discards it: what is left is the parser, CallFS's
head callbacks and hot path (authentication, path, cache, the answer), and the join of the
response. The same is measured for the ceiling's handler (../shared/bench/pyceiling.py, its
answer prebuilt). Best of five rounds, microseconds per request. The CallFS side is the real
connection class on a real engine (SQLite behind the generation cache, a local backend),
counting in the shared metrics table as a worker does. It is measured twice: with the access
log off, and on, its buffer emptied every 1,000 requests as the writer thread would (the write
to the file, which the kernel does from the buffer itself, is left out).
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
from callfs._native.logsink import LogSink  # noqa: E402
from callfs.http.hotpath import hot_path  # noqa: E402
from callfs.http.protocol import HttpProtocol  # noqa: E402
from callfs.http.router import HSTS, SECURITY_HEADERS  # noqa: E402
from callfs.observability import metrics as measures  # noqa: E402

BATCH = 1000  # requests between two emptyings of the access log's buffer
ACCESS_LINE = b'"logger":"callfs.access"'


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


def cost(feed, data: bytes, rounds: int, sink: LogSink | None = None) -> float:
    """µs per request, best of five: `rounds` batches of BATCH requests each."""
    for _ in range(BATCH):
        feed(data)
    best = float("inf")
    for _ in range(5):
        if sink is not None:
            sink.discard()
        started = time.perf_counter()
        for _ in range(rounds):
            for _ in range(BATCH):
                feed(data)
            if sink is not None:
                sink.discard()
        best = min(best, (time.perf_counter() - started) / (rounds * BATCH))
    return best * 1e6


def connection(loop, auth, engine, metrics, sink: LogSink | None):
    """A connection of a worker whose hot path counts in `metrics` and logs to `sink`."""
    hot = hot_path(auth=auth, engine=engine, security=SECURITY_HEADERS, hsts=HSTS,
                   tally=metrics.tally, cells=metrics.hot_cells(),
                   read_cells=metrics.read_cells(), log=sink)
    state = types.SimpleNamespace(app=None, hot=hot, loop=loop, tls=False, connections=set(),
                                  draining=False, metrics=metrics, access=sink)
    conn = HttpProtocol(state)
    conn.connection_made(Discard())
    return hot, conn


def site():
    """The event loop, a connection with the access log off and one with it on, the log's
    sink, and what closes the site."""
    loop = uvloop.new_event_loop()
    engine, auth, close = test_httphead.make_site(tempfile.mkdtemp(prefix="callfs-cost-"))
    metrics = measures.Metrics(measures.table(2))
    metrics.claim(1)
    sink = LogSink(instance="bench")
    return (loop, connection(loop, auth, engine, metrics, None),
            connection(loop, auth, engine, metrics, sink), sink, close)


def feed(mode: str, requests: int) -> None:
    """Answer `requests` GETs on the connection with the access log `mode` (off or on),
    emptying the log's buffer every BATCH requests; nothing is timed (a tool counting
    instructions runs this)."""
    loop, quiet, logged, sink, close = site()
    hot, conn = logged if mode == "on" else quiet
    data = request(b"GET", b"/v1/files/d/small")
    before = hot.answered
    for done in range(requests):
        conn.data_received(data)
        if done % BATCH == BATCH - 1:
            sink.discard()
    assert hot.answered - before == requests, "the hot path did not answer"
    assert (sink.pending > 0) == (mode == "on" and requests % BATCH > 0)
    close()
    loop.close()


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--feed" and sys.argv[2] in ("off", "on"):
        feed(sys.argv[2], int(sys.argv[3]))
        return
    rounds = max(1, (int(sys.argv[1]) if len(sys.argv) > 1 else 200_000) // BATCH)
    loop, quiet, logged, sink, close = site()

    import pyceiling
    body = os.urandom(4096)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 4096\r\n\r\n")
    ceiling = pyceiling.Handler({b"small": (head, body, -1, 4096)}, "bytes")
    ceiling.connection_made(Discard())

    print(f"{'':10} {'ceiling':>9} {'CallFS':>9} {'log on':>9}   "
          f"(µs per request, best of 5 x {rounds * BATCH:,})")
    for method in (b"GET", b"HEAD"):
        data = request(method, b"/v1/files/d/small")
        ours = []
        for (hot, conn), log in ((quiet, None), (logged, sink)):
            before = hot.answered
            ours.append(cost(conn.data_received, data, rounds, log))
            assert hot.answered - before == BATCH * (1 + 5 * rounds), \
                "the hot path did not answer"
        # The log-on rounds did log: one more request leaves one access line.
        sink.discard()
        logged[1].data_received(data)
        lines, dropped = sink.take()
        assert lines.count(ACCESS_LINE) == 1 and not dropped, lines
        theirs = cost(ceiling.data_received, request(method, b"/small"), rounds)
        print(f"{method.decode() + ' 4 KiB':10} {theirs:9.2f} {ours[0]:9.2f} {ours[1]:9.2f}")
    close()
    loop.close()


if __name__ == "__main__":
    main()
