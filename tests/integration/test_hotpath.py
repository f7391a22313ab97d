"""The hot path and the metadata cache behind it, as a client sees them.

The hot path answers a plain GET/HEAD of a cached file inside the parser callback; these tests
prove that it answers exactly as the general route does, that it is really used, that no
worker ever serves content or metadata older than a write already acknowledged (the cache is
kept exact across processes), and that uploads moved by splice leave the connection usable.
"""
import hashlib
import re
import threading
import time

import pytest

from conftest import KEYS, random_bytes
from rawhttp import RawConnection

VARYING = {"date", "x-request-id"}


def hot_count(srv) -> float:
    status, _, body = srv.request("GET", "/metrics")
    assert status == 200
    match = re.search(rb"^callfs_hot_path_responses_total (\S+)$", body, re.M)
    assert match, body[:500]
    return float(match.group(1))


def stable(headers: dict) -> dict:
    return {k: v for k, v in headers.items() if k not in VARYING}


def test_hot_path_answers_exactly_like_the_general_route(launcher):
    srv = launcher(workers=1)
    # small: joined behind its head; medium: beside it (one writev); large: by sendfile.
    files = (("small", random_bytes(1000)), ("medium", random_bytes(64 * 1024)),
             ("large", random_bytes(300 * 1024)), ("empty", b""))
    for name, data in files:
        assert srv.request("PUT", f"/v1/files/hp/{name}", body=data)[0] == 201
    for name, data in files:
        for method in ("GET", "HEAD"):
            srv.request(method, f"/v1/files/hp/{name}")  # fills the cache
            before = hot_count(srv)
            hot = srv.request(method, f"/v1/files/hp/{name}")
            used_hot = hot_count(srv) - before
            # A client X-Request-ID keeps a request off the hot path: the general route.
            general = srv.request(method, f"/v1/files/hp/{name}",
                                  headers={"X-Request-ID": "general-route"})
            assert general[1]["x-request-id"] == "general-route"
            assert hot[0] == general[0] == 200
            assert stable(hot[1]) == stable(general[1]), (name, method)
            assert hot[2] == general[2] == (data if method == "GET" else b"")
            assert re.fullmatch(r"[0-9a-f]{16}", hot[1]["x-request-id"])
            # Small files and every HEAD go the hot way; a large GET is sent by sendfile.
            expect_hot = method == "HEAD" or name != "large"
            assert used_hot == (1 if expect_hot else 0), (name, method)


def test_hot_path_declines_what_it_cannot_answer(launcher):
    srv = launcher(workers=1)
    assert srv.request("PUT", "/v1/files/hp/f", body=b"content")[0] == 201
    srv.request("GET", "/v1/files/hp/f")
    before = hot_count(srv)
    cases = [
        ("GET", "/v1/files/hp/f?manifest=false", {}, 200),
        ("GET", "/v1/files/hp/f", {"Range": "bytes=0-1"}, 206),
        ("GET", "/v1/files/hp/f", {"If-None-Match": "*"}, 304),
        ("GET", "/v1/files/hp/", {}, 200),
        ("GET", "/v1/files/hp", {}, 200),
        ("GET", "/v1/files/hp/missing", {}, 404),
        ("GET", "/v1/files/hp/%zz", {}, 400),
        ("GET", "/v1/files/hp/../../x", {}, 400),
    ]
    for method, target, headers, expected in cases:
        assert srv.request(method, target, headers=headers)[0] == expected, target
    status, _, _ = srv.request("GET", "/v1/files/hp/f", user=None,
                               headers={"Authorization": "Bearer wrong-key-0123456789"})
    assert status == 401
    # /metrics itself is not a file read: the count is unchanged.
    assert hot_count(srv) == before


def _writer(srv, path, versions, done, stop):
    conn = srv.connect()
    auth = {"Authorization": f"Bearer {KEYS['alice']}"}
    try:
        for number in range(1, 10_000):
            if stop.is_set():
                return
            body = b"version %08d " % number + hashlib.sha256(b"%d" % number).digest() * (number % 7)
            versions[number] = body  # before the PUT: a read may see it before the ack
            conn.request("PUT", f"/v1/files{path}", body=body, headers=auth)
            resp = conn.getresponse()
            resp.read()
            assert resp.status in (200, 201)
            done.append((time.monotonic(), number))  # acknowledged at this moment
    finally:
        conn.close()


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "no-fsync"])
def test_no_worker_serves_a_read_older_than_an_acknowledged_write(launcher, fsync):
    """One writer overwrites a file as fast as it can while readers on fresh connections
    (spread over both workers by the kernel) read it. Every read returns a whole version whose
    headers describe it, and never one older than the newest write acknowledged before the read
    began (the cache is invalidated by every write, in every process, before it is acked).
    Without fsync, metadata commits take the store's loop-thread path: the same must hold."""
    srv = launcher(workers=2, backend={"localfs_fsync": fsync})
    path = "/hp/race"
    assert srv.request("PUT", f"/v1/files{path}", body=b"version 00000000 ")[0] in (200, 201)
    versions = {0: b"version 00000000 "}
    done = [(time.monotonic(), 0)]
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(srv, path, versions, done, stop))
    writer.start()
    failures = []
    reads = 0
    seen_etags = {}
    deadline = time.monotonic() + 6
    try:
        while time.monotonic() < deadline and writer.is_alive():
            started = time.monotonic()
            acked = max(number for stamp, number in list(done) if stamp <= started)
            method = "GET" if reads % 4 else "HEAD"
            status, headers, body = srv.request(method, f"/v1/files{path}")
            reads += 1
            if status != 200:
                failures.append(("status", status))
                continue
            if method == "HEAD":
                if headers["content-length"] != headers["x-callfs-size"]:
                    failures.append(("head", headers["content-length"], headers["x-callfs-size"]))
                continue
            number = int(body[8:16])
            if versions.get(number) != body:
                failures.append(("torn", number))
            if number < acked:
                failures.append(("stale", number, acked))
            if int(headers["content-length"]) != len(body) or int(headers["x-callfs-size"]) != len(body):
                failures.append(("size", number, headers["content-length"],
                                 headers["x-callfs-size"], len(body)))
            if seen_etags.setdefault(headers["etag"], number) != number:
                failures.append(("etag", headers["etag"], number))
    finally:
        stop.set()
        writer.join(30)
    assert reads > 100 and len(done) > 20, (reads, len(done))
    assert not failures, failures[:10]
    assert not srv.temporaries()


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "no-fsync"])
def test_delete_is_seen_by_every_worker_at_once(launcher, fsync):
    srv = launcher(workers=2, backend={"localfs_fsync": fsync})
    for round_ in range(15):
        path = f"/hp/gone-{round_}"
        assert srv.request("PUT", f"/v1/files{path}", body=b"x" * round_)[0] == 201
        for _ in range(6):  # warm both workers' caches
            assert srv.request("GET", f"/v1/files{path}")[0] == 200
        assert srv.request("DELETE", f"/v1/files{path}")[0] == 204
        for _ in range(6):
            assert srv.request("GET", f"/v1/files{path}")[0] == 404
            assert srv.request("HEAD", f"/v1/files{path}")[0] == 404


def test_spliced_upload_then_pipelined_request_on_one_connection(launcher):
    """A Content-Length body moves by splice; the request after it, already sent, must be
    parsed from exactly where the body ended."""
    srv = launcher(workers=1)
    data = random_bytes(5 * 1024 * 1024 + 3)
    auth = f"Authorization: Bearer {KEYS['alice']}\r\n".encode()
    with RawConnection(srv.port, timeout=30) as conn:
        conn.send(b"PUT /v1/files/hp/big HTTP/1.1\r\nHost: x\r\n" + auth
                  + b"Content-Length: %d\r\n\r\n" % len(data) + data
                  + b"GET /v1/files/hp/big HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
                  + b"PUT /v1/files/hp/small HTTP/1.1\r\nHost: x\r\n" + auth
                  + b"Content-Length: 5\r\n\r\nhello"
                  + b"GET /v1/files/hp/small HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
        assert conn.read_response()[0] == 201
        status, headers, body = conn.read_response()
        assert status == 200 and body == data
        assert conn.read_response()[0] == 201
        assert conn.read_response()[2] == b"hello"
    with open(srv.disk("/hp/big"), "rb") as fh:
        assert fh.read() == data
    assert not srv.temporaries()


def test_spliced_upload_with_expect_continue(launcher):
    srv = launcher(workers=1)
    data = random_bytes(2 * 1024 * 1024)
    auth = f"Authorization: Bearer {KEYS['alice']}\r\n".encode()
    with RawConnection(srv.port, timeout=30) as conn:
        conn.send(b"PUT /v1/files/hp/cont HTTP/1.1\r\nHost: x\r\n" + auth
                  + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(data))
        assert conn.read_response()[0] == 100
        conn.send(data)
        assert conn.read_response()[0] == 201
        conn.send(b"GET /v1/files/hp/cont HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
        assert conn.read_response()[2] == data
