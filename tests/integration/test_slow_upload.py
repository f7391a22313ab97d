"""A slow upload never holds other writers: its body is staged with no lock held, and the
path's lock is taken only to publish. Fast writers and readers of the same path go on while it
trickles in; when it completes, it wins or loses by the rules of publishing (the last publish
wins; If-Match and If-None-Match are decided against the entry as it is then).
"""
import socket
import threading
import time
import uuid

import pytest

from conftest import KEYS, SERVICES_UP

ALICE = KEYS["alice"]
SLOW = b"SLOWBODY"   # sent one byte at a time
TRICKLE = 0.4         # seconds between the slow client's bytes (about 3 s in all)
FAST_LIMIT = 1.0      # seconds: every fast answer must come well within this


@pytest.fixture(params=["sqlite", "postgres"])
def site(request, launcher):
    if request.param == "sqlite":
        return launcher()
    if not SERVICES_UP:
        pytest.skip("PostgreSQL and Redis on loopback are needed (ci/services.sh starts them)")
    dsn = request.getfixturevalue("database")
    return launcher(metadata_store={"type": "postgres", "dsn": dsn},
                    dlm={"type": "redis", "redis_addr": "127.0.0.1:6379"})


class SlowUpload(threading.Thread):
    """A PUT whose body arrives one byte every TRICKLE seconds, framed by Content-Length or
    chunked; `status` is its answer."""

    def __init__(self, port: int, path: str, chunked: bool, headers: dict | None = None):
        super().__init__(daemon=True)
        self.port, self.path, self.chunked = port, path, chunked
        self.headers = headers or {}
        self.status = None
        self.sent_all = threading.Event()

    def run(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            lines = [f"PUT /v1/files{self.path} HTTP/1.1", "Host: t",
                     f"Authorization: Bearer {ALICE}"]
            lines += [f"{k}: {v}" for k, v in self.headers.items()]
            lines.append("Transfer-Encoding: chunked" if self.chunked
                         else f"Content-Length: {len(SLOW)}")
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            for i in range(len(SLOW)):
                time.sleep(TRICKLE)
                byte = SLOW[i:i + 1]
                sock.sendall(b"1\r\n" + byte + b"\r\n" if self.chunked else byte)
            if self.chunked:
                sock.sendall(b"0\r\n\r\n")
            self.sent_all.set()
            reply = sock.makefile("rb").readline()
            self.status = int(reply.split()[1])


def timed(server, method: str, path: str, body=None, headers=None):
    started = time.monotonic()
    status, got, data = server.request(method, "/v1/files" + path, body=body, headers=headers,
                                       timeout=10)
    return status, got, data, time.monotonic() - started


def hammer(server, path: str, slow: SlowUpload) -> list[bytes]:
    """50 PUTs and 50 GETs of `path` while the slow upload trickles in; each answered fast.
    Returns the bodies written, in order."""
    written = []
    for i in range(50):
        body = b"fast-%02d" % i
        status, _, _, took = timed(server, "PUT", path, body)
        assert status in (200, 201) and took < FAST_LIMIT, (i, status, took)
        written.append(body)
        status, _, data, took = timed(server, "GET", path)
        assert (status, data) == (200, body) and took < FAST_LIMIT, (i, status, took)
        time.sleep(0.02)
    assert not slow.sent_all.is_set(), "the slow upload ended before the fast ones: too fast"
    return written


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_fast_writers_go_on_while_a_slow_upload_trickles_and_the_last_publish_wins(site,
                                                                                    chunked):
    path = f"/slow-{uuid.uuid4().hex[:8]}/f"
    assert site.request("PUT", "/v1/files" + path, body=b"original")[0] == 201
    slow = SlowUpload(site.port, path, chunked)
    slow.start()
    time.sleep(TRICKLE / 2)
    hammer(site, path, slow)
    slow.join(30)
    assert slow.status == 200  # it published last: its content is the file's
    status, headers, data, _ = timed(site, "GET", path)
    assert (status, data, headers["x-callfs-size"]) == (200, SLOW, str(len(SLOW)))
    assert not site.temporaries()


def test_if_match_is_decided_when_the_slow_upload_publishes(site):
    path = f"/slow-{uuid.uuid4().hex[:8]}/f"
    status, headers, _ = site.request("PUT", "/v1/files" + path, body=b"original")
    etag = site.request("HEAD", "/v1/files" + path)[1]["etag"]
    slow = SlowUpload(site.port, path, False, {"If-Match": etag})
    slow.start()
    time.sleep(TRICKLE / 2)
    written = hammer(site, path, slow)
    slow.join(30)
    assert slow.status == 412  # the version it named was replaced meanwhile
    assert site.request("GET", "/v1/files" + path)[2] == written[-1]
    assert not site.temporaries()


def test_if_none_match_is_decided_when_the_slow_upload_publishes(site):
    path = f"/slow-{uuid.uuid4().hex[:8]}/f"
    slow = SlowUpload(site.port, path, True, {"If-None-Match": "*"})
    slow.start()
    time.sleep(TRICKLE / 2)
    written = hammer(site, path, slow)  # the first fast PUT creates the file
    slow.join(30)
    assert slow.status == 412
    assert site.request("GET", "/v1/files" + path)[2] == written[-1]
    assert not site.temporaries()


def test_a_slow_create_loses_to_a_fast_one_with_409(site):
    """POST never overwrites: a slow POST whose name was taken while it streamed is refused
    when it publishes, and the fast file stays."""
    path = f"/slow-{uuid.uuid4().hex[:8]}/f"
    with socket.create_connection(("127.0.0.1", site.port), timeout=30) as sock:
        sock.sendall((f"POST /v1/files{path} HTTP/1.1\r\nHost: t\r\n"
                      f"Authorization: Bearer {ALICE}\r\nContent-Length: {len(SLOW)}\r\n\r\n"
                      ).encode() + SLOW[:2])
        time.sleep(TRICKLE)
        status, _, _, took = timed(site, "POST", path, b"fast")
        assert status == 201 and took < FAST_LIMIT
        sock.sendall(SLOW[2:])
        assert sock.makefile("rb").readline().split()[1] == b"409"
    assert site.request("GET", "/v1/files" + path)[2] == b"fast"
    assert not site.temporaries()
