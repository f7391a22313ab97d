"""The HTTP core against hostile and unlucky input, over raw sockets (API.md §2)."""
import json
import socket
import time

import pytest
from conftest import KEYS
from rawhttp import RawConnection, request_bytes

ALICE = KEYS["alice"]


def put(server, path: str, body: bytes):
    status, _, _ = server.request("PUT", "/v1/files" + path, body=body)
    assert status in (200, 201)


def test_pipelined_requests_are_answered_in_order(server, ns):
    put(server, f"{ns}/one", b"first")
    put(server, f"{ns}/two", b"second!")
    batch = (request_bytes("GET", f"/v1/files{ns}/one", ALICE)
             + request_bytes("GET", "/health", None)
             + request_bytes("PUT", f"/v1/files{ns}/three", ALICE, b"third")
             + request_bytes("GET", f"/v1/files{ns}/three", ALICE)
             + request_bytes("GET", f"/v1/files{ns}/missing", ALICE)
             + request_bytes("GET", f"/v1/files{ns}/two", ALICE))
    with RawConnection(server.port) as conn:
        conn.send(batch)
        results = [conn.read_response() for _ in range(6)]
    assert [r[0] for r in results] == [200, 200, 201, 200, 404, 200]
    assert results[0][2] == b"first"
    assert results[3][2] == b"third"
    assert results[5][2] == b"second!"


def test_keep_alive_serves_many_requests_on_one_connection(server, ns):
    put(server, f"{ns}/f", b"x" * 100)
    with RawConnection(server.port) as conn:
        for _ in range(50):
            conn.send(request_bytes("GET", f"/v1/files{ns}/f", ALICE))
            status, headers, body = conn.read_response()
            assert status == 200 and body == b"x" * 100
            assert "date" in headers


def test_http10_without_keep_alive_closes(server):
    with RawConnection(server.port) as conn:
        conn.send(b"GET /health HTTP/1.0\r\n\r\n")
        status, _, body = conn.read_response()
        assert status == 200 and body == b'{"status":"ok"}'
        assert conn.closed_by_peer()


@pytest.mark.parametrize("garbage", [
    b"GARBAGE\r\n\r\n",
    b"GET\r\n\r\n",
    b"\x00\x01\x02\x03\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\n bad-fold: y\r\n\r\n",
    b"GET /health HTTP/1.1\r\nBad Header Name: y\r\n\r\n",
])
def test_malformed_requests_get_400_and_close(server, garbage):
    with RawConnection(server.port) as conn:
        conn.send(garbage)
        status, _, _ = conn.read_response()
        assert status == 400
        assert conn.closed_by_peer()


def test_content_length_with_transfer_encoding_is_refused(server, ns):
    raw = (f"POST /v1/files{ns}/smuggle HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n"
           "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").encode()
    with RawConnection(server.port) as conn:
        conn.send(raw)
        status, _, _ = conn.read_response()
        assert status == 400
        assert conn.closed_by_peer()
    assert server.request("GET", f"/v1/files{ns}/smuggle")[0] == 404


def test_header_limits(server):
    # 64 KiB of header data in 100 fields must be accepted (API.md §2).
    fields = "".join(f"X-Filler-{i}: {'v' * 640}\r\n" for i in range(100))
    with RawConnection(server.port) as conn:
        conn.send(f"GET /health HTTP/1.1\r\nHost: x\r\n{fields}\r\n".encode())
        assert conn.read_response()[0] == 200
    # More than 1000 fields → 431 and close.
    many = "".join(f"X-F{i}: v\r\n" for i in range(1100))
    with RawConnection(server.port) as conn:
        conn.send(f"GET /health HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())
        assert conn.read_response()[0] == 431
        assert conn.closed_by_peer()
    # More than 1 MiB of header data → 431 and close.
    with RawConnection(server.port) as conn:
        conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1100 * 1024) + b"\r\n\r\n")
        assert conn.read_response()[0] == 431
        assert conn.closed_by_peer()


def test_request_line_limits(server):
    with RawConnection(server.port) as conn:
        conn.send(f"GET /v1/files/{'a' * 8000} HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {ALICE}\r\n\r\n".encode())
        assert conn.read_response()[0] in (400, 404)  # accepted by HTTP; path rules decide
    with RawConnection(server.port) as conn:
        conn.send(f"GET /v1/files/{'a' * 70000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert conn.read_response()[0] == 414
        assert conn.closed_by_peer()


def _assert_intact(server, path: str, content: bytes):
    status, _, body = server.request("GET", path)
    assert status == 200 and body == content
    assert server.temporaries() == []


def test_bad_chunk_size_leaves_old_content(server, ns):
    put(server, f"{ns}/f", b"old content")
    raw = (f"PUT /v1/files{ns}/f HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n"
           "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZZ\r\nbroken\r\n0\r\n\r\n").encode()
    with RawConnection(server.port) as conn:
        conn.send(raw)
        status, _, _ = conn.read_response()
        assert status == 400
        assert conn.closed_by_peer()
    _assert_intact(server, f"/v1/files{ns}/f", b"old content")


def test_body_shorter_than_content_length_leaves_old_content(server, ns):
    put(server, f"{ns}/f", b"old content")
    with RawConnection(server.port) as conn:
        conn.send(request_bytes("PUT", f"/v1/files{ns}/f", ALICE, b"partial",
                                {"Content-Length": "100000"}))
        time.sleep(0.3)
    time.sleep(0.5)
    _assert_intact(server, f"/v1/files{ns}/f", b"old content")


def test_connection_dropped_mid_upload_leaves_old_content_and_no_new_file(server, ns):
    put(server, f"{ns}/f", b"old content")
    for target in (f"{ns}/f", f"{ns}/new"):
        with RawConnection(server.port) as conn:
            conn.send((f"PUT /v1/files{target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n").encode())
            for _ in range(64):
                conn.send(b"10000\r\n" + b"z" * 0x10000 + b"\r\n")
            time.sleep(0.2)
    time.sleep(0.5)
    _assert_intact(server, f"/v1/files{ns}/f", b"old content")
    assert server.request("GET", f"/v1/files{ns}/new")[0] == 404


def test_expect_continue(server, ns):
    body = b"y" * 5000
    with RawConnection(server.port) as conn:
        conn.send(request_bytes("PUT", f"/v1/files{ns}/f", None, b"",
                                {"Authorization": f"Bearer {ALICE}", "Expect": "100-continue",
                                 "Content-Length": str(len(body))}))
        assert conn.read_response()[0] == 100
        conn.send(body)
        assert conn.read_response()[0] == 201
    _assert_intact(server, f"/v1/files{ns}/f", body)


def test_expect_continue_failure_answers_at_once(server, ns):
    with RawConnection(server.port) as conn:
        conn.send(request_bytes("PUT", f"/v1/files{ns}/f", None, b"",
                                {"Authorization": "Bearer wrong-key-0123456789",
                                 "Expect": "100-continue", "Content-Length": "5000000"}))
        status, _, body = conn.read_response()
        assert status == 401
        assert b"AUTHENTICATION_FAILED" in body
        assert conn.closed_by_peer()


def test_early_error_discards_a_small_body_and_keeps_the_connection(server, ns):
    body = b"q" * 200_000
    with RawConnection(server.port) as conn:
        conn.send(request_bytes("PUT", f"/v1/files{ns}/f", "wrong-key-0123456789", body))
        assert conn.read_response()[0] == 401
        conn.send(request_bytes("GET", "/health", None))
        status, _, data = conn.read_response()
        assert status == 200 and data == b'{"status":"ok"}'


def test_announced_body_over_10_gib_is_refused_before_reading(server, ns):
    with RawConnection(server.port) as conn:
        conn.send(request_bytes("PUT", f"/v1/files{ns}/huge", ALICE, b"",
                                {"Content-Length": str(10 * 1024 ** 3 + 1)}))
        status, _, body = conn.read_response()
        assert status == 413 and b"PAYLOAD_TOO_LARGE" in body
    assert server.request("GET", f"/v1/files{ns}/huge")[0] == 404


def test_invalid_content_length_is_refused(server, ns):
    with RawConnection(server.port) as conn:
        conn.send(request_bytes("PUT", f"/v1/files{ns}/f", ALICE, b"",
                                {"Content-Length": "12abc"}))
        assert conn.read_response()[0] == 400
        assert conn.closed_by_peer()


@pytest.fixture(scope="module")
def impatient(tmp_path_factory):
    from conftest import launch
    srv = launch(tmp_path_factory.mktemp("impatient"),
                 server={"read_timeout": "1s", "write_timeout": "1s"})
    yield srv
    assert srv.stop() == 0


def test_slow_request_head_is_cut_off(impatient):
    with RawConnection(impatient.port) as conn:
        conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):
            time.sleep(0.5)
            try:
                conn.send(b"X-Slow: 1\r\n")
            except OSError:
                break
        assert conn.closed_by_peer(timeout=5)


def test_stalled_upload_is_cut_off_and_nothing_is_stored(impatient, ns):
    path = f"/v1/files{ns}/stalled"
    with RawConnection(impatient.port) as conn:
        conn.send(request_bytes("PUT", path, ALICE, b"", {"Content-Length": "1000"}) + b"abc")
        started = time.monotonic()
        assert conn.closed_by_peer(timeout=6)
        assert time.monotonic() - started < 5
    assert impatient.request("GET", path)[0] == 404
    assert impatient.temporaries() == []


def test_slow_reader_is_cut_off(impatient, ns):
    size = 64 * 1024 * 1024
    path = f"/v1/files{ns}/big"
    status, _, _ = impatient.request("PUT", path, body=b"r" * size)
    assert status == 201
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", impatient.port))
    sock.sendall(request_bytes("GET", path, ALICE))
    time.sleep(4)  # read nothing: the server's writes stall past write_timeout
    received, closed = 0, False
    sock.settimeout(2)
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            data = sock.recv(1 << 20)
            if not data:
                closed = True
                break
            received += len(data)
    except ConnectionResetError:
        closed = True
    except socket.timeout:
        pass
    finally:
        sock.close()
    assert closed and received < size
    assert impatient.request("GET", "/health", user=None)[0] == 200


def test_a_large_body_that_arrives_after_the_head_is_read(server, ns):
    """A body above the splice threshold waits in the socket until its handler asks; a
    handler that reads it as chunks (here PATCH's JSON) gets it even when none of it came
    with the head."""
    assert server.request("PUT", f"/v1/files{ns}/f", body=b"x")[0] == 201
    body = json.dumps({"name": "g", "padding": "x" * 200_000}).encode()
    with RawConnection(server.port) as conn:
        conn.send(f"PATCH /v1/files{ns}/f HTTP/1.1\r\nHost: t\r\n"
                  f"Authorization: Bearer {ALICE}\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode())
        time.sleep(0.3)  # the head is parsed and the handler waits before any body byte
        conn.send(body)
        status, _, data = conn.read_response()
    assert (status, json.loads(data)) == (200, {"path": f"{ns}/g"})


# -- strict HTTP: codings, versions, request-target forms (RFC 9112) ----------------------------

@pytest.mark.parametrize("coding", [b"xchunked", b"gzip, chunked", b"chunked, gzip", b"identity",
                                    b"gzip"], ids=["xchunked", "gzip-chunked", "chunked-gzip",
                                                   "identity", "gzip"])
def test_an_unknown_transfer_coding_is_501_and_closes(server, ns, coding):
    raw = (f"PUT /v1/files{ns}/coded HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n"
           ).encode() + b"Transfer-Encoding: " + coding + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    with RawConnection(server.port) as conn:
        conn.send(raw)
        assert conn.read_response()[0] == 501
        assert conn.closed_by_peer()
    assert server.request("GET", f"/v1/files{ns}/coded")[0] == 404


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"HTTP/9.9",
                                     b"HTTP/3.0"])
@pytest.mark.parametrize("connection", [b"", b"Connection: keep-alive\r\n"])
def test_a_version_other_than_1_0_or_1_1_is_505_and_closes(server, ns, version, connection):
    put(server, f"{ns}/v", b"versioned")
    raw = (b"GET /v1/files" + ns.encode() + b"/v " + version + b"\r\nHost: x\r\n"
           + b"Authorization: Bearer " + ALICE.encode() + b"\r\n" + connection + b"\r\n")
    for _ in range(2):  # the second time the file is cached: the hot path must refuse it too
        with RawConnection(server.port) as conn:
            conn.send(raw)
            status, _, body = conn.read_response()
            assert status == 505 and b"versioned" not in body
            assert conn.closed_by_peer()


@pytest.mark.parametrize("scheme", ["http", "HTTPS"])
def test_an_absolute_form_target_is_served_as_its_origin_form(server, ns, scheme):
    base = f"{scheme}://127.0.0.1:{server.port}"
    with RawConnection(server.port) as conn:
        conn.send(request_bytes("PUT", f"{base}/v1/files{ns}/abs", ALICE, b"absolute"))
        assert conn.read_response()[0] == 201
        for _ in range(2):  # general route, then (cached) the hot path
            conn.send(request_bytes("GET", f"{base}/v1/files{ns}/abs", ALICE))
            status, _, body = conn.read_response()
            assert (status, body) == (200, b"absolute")
        conn.send(request_bytes("HEAD", f"{base}/v1/files{ns}/abs", ALICE))
        status, headers, _ = conn.read_response(head_only=True)
        assert status == 200 and headers["content-length"] == "8"
        conn.send(request_bytes("GET", f"{base}/v1/directories{ns}?recursive=false", ALICE))
        status, _, body = conn.read_response()
        assert status == 200 and b"abs" in body
        conn.send(request_bytes("GET", f"{base}?x", None))
        assert conn.read_response()[0] == 404  # "/" with a query: no such route
        conn.send(request_bytes("DELETE", f"{base}/v1/files{ns}/abs", ALICE))
        assert conn.read_response()[0] == 204
    assert server.request("GET", f"/v1/files{ns}/abs")[0] == 404


# -- early answers never leave the next request unread ------------------------------------------

@pytest.mark.parametrize("size", [1_000, 64 * 1024 + 1, 100_000, 300_000, 1_000_000])
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_an_early_answer_leaves_the_connection_reading(server, ns, size, method):
    """A body answered before it is read (POST onto a file: 409; a wrong key: 401) may have
    arrived whole with its head, or still be in the socket: the next request is answered."""
    put(server, f"{ns}/taken", b"old")
    key = ALICE if method == "POST" else "wrong-key-0123456789"
    expected = 409 if method == "POST" else 401
    with RawConnection(server.port, timeout=5) as conn:
        for _ in range(3):
            conn.send(request_bytes(method, f"/v1/files{ns}/taken", key, b"b" * size))
            assert conn.read_response()[0] == expected
            conn.send(request_bytes("GET", f"/v1/files{ns}/taken", ALICE))
            status, _, body = conn.read_response()
            assert (status, body) == (200, b"old")


@pytest.mark.parametrize("head, status", [
    (b"GET /health HTTP/1.1\r\n\r\n", 400),                       # no Host in HTTP/1.1
    (b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # two Host lines
    (b"GET /health HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nHost: user@a\r\n\r\n", 400),
    (b"GET /health#top HTTP/1.1\r\nHost: a\r\n\r\n", 400),        # a fragment in the target
    (b"FOO /health HTTP/1.1\r\nHost: a\r\n\r\n", 501),            # a method not implemented
    (b"G@T /health HTTP/1.1\r\nHost: a\r\n\r\n", 400),            # not a method at all
], ids=["no-host", "two-hosts", "host-space", "host-userinfo", "fragment", "unknown-method",
        "bad-method"])
def test_strict_request_heads(server, head, status):
    with RawConnection(server.port) as conn:
        conn.send(head)
        assert conn.read_response()[0] == status
        assert conn.closed_by_peer()


def test_hosts_that_are_valid(server):
    with RawConnection(server.port) as conn:
        for host in (b"", b"127.0.0.1:8443", b"[::1]:80", b"files.example.com"):
            conn.send(b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            assert conn.read_response()[0] == 200, host
    with RawConnection(server.port) as conn:
        conn.send(b"GET /health HTTP/1.0\r\n\r\n")  # HTTP/1.0 needs no Host
        assert conn.read_response()[0] == 200


def test_a_cached_file_without_a_host_is_refused_like_any_request(server, ns):
    put(server, f"{ns}/cached", b"hot")
    assert server.request("GET", f"/v1/files{ns}/cached")[2] == b"hot"  # now the hot path's
    with RawConnection(server.port) as conn:
        conn.send(f"GET /v1/files{ns}/cached HTTP/1.1\r\nAuthorization: Bearer {ALICE}\r\n"
                  "\r\n".encode())
        status, _, body = conn.read_response()
        assert status == 400 and body != b"hot"


def test_an_expectation_other_than_100_continue_is_417(server, ns):
    with RawConnection(server.port) as conn:
        conn.send(request_bytes("PUT", f"/v1/files{ns}/e", ALICE, b"ab", {"Expect": "fancy"}))
        assert conn.read_response()[0] == 417
        assert conn.closed_by_peer()
    assert server.request("GET", f"/v1/files{ns}/e")[0] == 404


def test_transfer_encoding_in_http_1_0_is_faulty_framing(server, ns):
    raw = (f"PUT /v1/files{ns}/old HTTP/1.0\r\nHost: a\r\nAuthorization: Bearer {ALICE}\r\n"
           "Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n").encode()
    with RawConnection(server.port) as conn:
        conn.send(raw)
        assert conn.read_response()[0] == 400
        assert conn.closed_by_peer()
    assert server.request("GET", f"/v1/files{ns}/old")[0] == 404


@pytest.mark.parametrize("line", [b"GET  /health HTTP/1.1", b"GET /health  HTTP/1.1",
                                  b"GET /health HTTP/1.1 "], ids=["before", "after", "trailing"])
def test_a_request_line_with_extra_spaces_is_400(server, line):
    with RawConnection(server.port) as conn:
        conn.send(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
        assert conn.read_response()[0] == 200
        conn.send(line + b"\r\nHost: a\r\n\r\n")
        assert conn.read_response()[0] == 400
        assert conn.closed_by_peer()


def test_empty_lines_before_a_request_are_ignored(server):
    with RawConnection(server.port) as conn:
        conn.send(b"\r\n\r\nGET /health HTTP/1.1\r\nHost: a\r\n\r\n")
        assert conn.read_response()[0] == 200
