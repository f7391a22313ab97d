"""The WebSocket transfer endpoint as a client sees it: API.md §12 (and its limits in §2).

A real server over a real socket; the client is wsproto over a plain socket (wsclient.py).
Every test asserts the close frame, the bytes, and the state left in the namespace and on disk.
"""
import hashlib
import json
import os
import socket
import time

import pytest

from callfs.backends.s3 import PARTS_IN_FLIGHT

from conftest import KEYS, RssWatch, random_bytes
from wsclient import HandshakeRefused, WSClient, download, read_http_response, upload


@pytest.fixture(scope="module")
def server(backend_server):
    """This module's checks hold on every backend: they run on localfs and on S3."""
    return backend_server

MIB = 1024 * 1024


def put(server, path: str, data: bytes, user: str = "alice") -> None:
    status, _, body = server.request("PUT", f"/v1/files{path}", data, user=user)
    assert status in (200, 201), body


def content(server, path: str):
    status, _, body = server.request("GET", f"/v1/files{path}")
    return body if status == 200 else status


def temporaries(server, ns: str) -> list[str]:
    return server.staged(ns)


def wait_for(predicate, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# -- download --------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 65537])
def test_download(server, ns, size):
    data = random_bytes(size)
    put(server, f"{ns}/f.bin", data)
    messages, code, reason = download(server.port, f"{ns}/f.bin")
    assert (code, reason) == (1000, "download complete")
    assert all(isinstance(m, bytes) and 0 < len(m) <= 65536 for m in messages)
    assert b"".join(messages) == data
    assert [len(m) for m in messages] == {0: [], 1: [1], 65537: [65536, 1]}[size]


def test_download_50_mib_streams_with_flat_memory(server, ns):
    block = random_bytes(MIB)
    expected = hashlib.sha256()
    conn = server.connect(timeout=60)
    blocks = (i.to_bytes(4, "big") + block[4:] for i in range(50))

    def body():
        for chunk in blocks:
            expected.update(chunk)
            yield chunk

    conn.request("PUT", f"/v1/files{ns}/big.bin", body=body(), encode_chunked=True,
                 headers={"Authorization": f"Bearer {KEYS['alice']}"})
    assert conn.getresponse().status == 201
    conn.close()

    received, size, largest = hashlib.sha256(), 0, 0
    with RssWatch(server) as watch, \
            WSClient(server.port, f"/v1/files/ws{ns}/big.bin", timeout=60) as ws:
        time.sleep(0.3)  # a slow reader: the server must wait, not buffer
        while (message := ws.receive()) is not None:
            received.update(message)
            size += len(message)
            largest = max(largest, len(message))
    assert (ws.close_code, ws.close_reason) == (1000, "download complete")
    assert size == 50 * MIB and largest == 65536
    assert received.digest() == expected.digest()
    print(f"\n50 MiB WebSocket download: RSS +{watch.growth_mib:.1f} MiB")
    assert watch.growth_mib < 20, watch.growth_mib


def test_download_missing_file_is_read_access_denied(server, ns):
    assert download(server.port, f"{ns}/nothing")[1:] == (1008, "read access denied")


def test_download_of_a_directory_cannot_open_it(server, ns):
    status, _, _ = server.request("POST", f"/v1/files{ns}/dir/")
    assert status == 201
    assert download(server.port, f"{ns}/dir")[1:] == (1011, "failed to open file")


def test_another_users_file_downloads(server, ns):
    """The owner model lets every user read (API.md §7)."""
    put(server, f"{ns}/alice.txt", b"shared")
    messages, code, _ = download(server.port, f"{ns}/alice.txt", user="bob")
    assert (messages, code) == ([b"shared"], 1000)


def test_client_close_during_download_is_answered(server, ns):
    put(server, f"{ns}/f.bin", random_bytes(8 * MIB))
    with WSClient(server.port, f"/v1/files/ws{ns}/f.bin") as ws:
        assert len(ws.receive()) == 65536
        ws.send_close(1000)
        while ws.receive() is not None:
            pass  # messages already on the way, then the server's close
        assert ws.close_code == 1000
        assert ws.at_eof()


# -- upload ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 65537])
def test_upload_creates_file_and_ancestors(server, ns, size):
    data = random_bytes(size)
    messages, code, reason = upload(server.port, f"{ns}/a/b/f.bin", [data] if size else [])
    assert (messages, code, reason) == ([f"ok:{size}"], 1000, "upload complete")
    assert content(server, f"{ns}/a/b/f.bin") == data
    status, headers, _ = server.request("HEAD", f"/v1/files{ns}/a/b/f.bin")
    assert headers["x-callfs-owner"] == "alice" and headers["x-callfs-size"] == str(size)
    status, headers, _ = server.request("HEAD", f"/v1/files{ns}/a")
    assert headers["x-callfs-type"] == "directory" and headers["x-callfs-owner"] == "alice"
    assert temporaries(server, ns) == []


def test_upload_50_mib_with_flat_memory(server, ns):
    block = random_bytes(MIB)
    expected = hashlib.sha256()
    with RssWatch(server) as watch, \
            WSClient(server.port, f"/v1/files/ws{ns}/big.bin?mode=upload", timeout=60) as ws:
        for index in range(50):
            chunk = index.to_bytes(4, "big") + block[4:]
            expected.update(chunk)
            ws.send(chunk)
        ws.send_close(1000)
        messages = ws.receive_all()
    assert (messages, ws.close_code, ws.close_reason) == (
        [f"ok:{50 * MIB}"], 1000, "upload complete")
    print(f"\n50 MiB WebSocket upload: RSS +{watch.growth_mib:.1f} MiB")
    # Bounded, never the file's size: on S3 a part being filled and the parts in flight
    # (5 MiB each here) are held besides what local disk needs.
    limit = 20 + (PARTS_IN_FLIGHT + 1) * 5 if server.bucket else 20
    assert watch.growth_mib < limit, watch.growth_mib
    assert hashlib.sha256(server.stored(f"{ns}/big.bin")).digest() == expected.digest()
    assert temporaries(server, ns) == []


def test_text_messages_are_stored_as_utf8(server, ns):
    messages, code, _ = upload(server.port, f"{ns}/t.txt", ["grüße ", b"\x00\xff", " 🚀"])
    assert (messages, code) == ([f"ok:{len('grüße '.encode()) + 2 + 5}"], 1000)
    assert content(server, f"{ns}/t.txt") == "grüße ".encode() + b"\x00\xff" + " 🚀".encode()


def test_many_small_messages_keep_their_order(server, ns):
    pieces = [bytes([i % 251]) * (i % 3) for i in range(6000)]
    messages, code, _ = upload(server.port, f"{ns}/small.bin", pieces)
    data = b"".join(pieces)
    assert (messages, code) == ([f"ok:{len(data)}"], 1000)
    assert content(server, f"{ns}/small.bin") == data


def test_fragmented_message_and_ping(server, ns):
    with WSClient(server.port, f"/v1/files/ws{ns}/frag.bin?mode=upload") as ws:
        ws.send_frame(b"one,", fin=False)
        ws.ping(b"are you there")
        ws.send_frame(b"two,", fin=False)
        ws.send_frame(b"three", fin=True)
        ws.send_close(1000)
        assert ws.receive_all() == ["ok:13"]
    assert content(server, f"{ns}/frag.bin") == b"one,two,three"


def test_upload_overwrites_existing_file(server, ns):
    put(server, f"{ns}/f.txt", b"old content, longer than the new one")
    status, before, _ = server.request("HEAD", f"/v1/files{ns}/f.txt")
    time.sleep(1.1)  # mtime has whole seconds
    messages, code, reason = upload(server.port, f"{ns}/f.txt", [b"new"])
    assert (messages, code, reason) == (["ok:3"], 1000, "upload complete")
    status, after, _ = server.request("HEAD", f"/v1/files{ns}/f.txt")
    assert after["x-callfs-size"] == "3" and after["x-callfs-owner"] == "alice"
    assert after["x-callfs-mtime"] > before["x-callfs-mtime"]
    assert content(server, f"{ns}/f.txt") == b"new"


def test_message_over_one_mib_closes_1009_and_stores_nothing(server, ns):
    put(server, f"{ns}/kept.txt", b"old")
    for name in ("new.bin", "kept.txt"):
        messages, code, _ = upload(server.port, f"{ns}/{name}", [b"a" * 10, b"x" * (MIB + 1)])
        assert (messages, code) == ([], 1009), name
    assert content(server, f"{ns}/new.bin") == 404
    assert content(server, f"{ns}/kept.txt") == b"old"
    assert wait_for(lambda: temporaries(server, ns) == [])


def test_message_of_exactly_one_mib_is_accepted(server, ns):
    data = random_bytes(MIB)
    assert upload(server.port, f"{ns}/m.bin", [data])[:2] == ([f"ok:{MIB}"], 1000)
    assert content(server, f"{ns}/m.bin") == data


def test_upload_over_100_mib_closes_1009_and_stores_nothing(server, ns):
    block = b"z" * MIB
    started = time.monotonic()
    with WSClient(server.port, f"/v1/files/ws{ns}/huge.bin?mode=upload", timeout=60) as ws:
        for _ in range(100):
            if not ws.send_quietly(block):
                break
        ws.send_quietly(b"!")  # one byte over 100 MiB
        messages = ws.receive_all()
        assert (messages, ws.close_code, ws.close_reason) == ([], 1009, "upload too large")
    assert time.monotonic() - started < 60
    assert content(server, f"{ns}/huge.bin") == 404
    assert wait_for(lambda: temporaries(server, ns) == [])


def test_dropped_connection_stores_nothing(server, ns):
    put(server, f"{ns}/f.bin", b"old content")
    for name in ("f.bin", "new.bin"):
        ws = WSClient(server.port, f"/v1/files/ws{ns}/{name}?mode=upload")
        for _ in range(7):  # more than one S3 part: staged in the store too
            ws.send(random_bytes(MIB))
        assert wait_for(lambda: temporaries(server, ns))  # the engine is staging the bytes
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        ws.close()  # no close frame
    assert wait_for(lambda: temporaries(server, ns) == [])
    assert content(server, f"{ns}/f.bin") == b"old content"
    assert content(server, f"{ns}/new.bin") == 404


def test_abnormal_close_code_stores_nothing(server, ns):
    with WSClient(server.port, f"/v1/files/ws{ns}/x.bin?mode=upload") as ws:
        ws.send(b"partial")
        ws.send_close(4000, "changed my mind")
        assert ws.receive_all() == []
        assert ws.close_code == 1000
    assert content(server, f"{ns}/x.bin") == 404


def test_upload_onto_another_users_file_is_write_access_denied(server, ns):
    put(server, f"{ns}/alice.txt", b"alice's")
    messages, code, reason = upload(server.port, f"{ns}/alice.txt", [b"bob's"], user="bob")
    assert (messages, code, reason) == ([], 1008, "write access denied")
    assert content(server, f"{ns}/alice.txt") == b"alice's"


def test_upload_below_another_users_file_is_write_access_denied(server, ns):
    put(server, f"{ns}/alice.txt", b"alice's")
    assert upload(server.port, f"{ns}/alice.txt/x", [b"y"], user="bob")[1:] == (
        1008, "write access denied")


def test_upload_onto_a_directory_closes_1003(server, ns):
    assert server.request("POST", f"/v1/files{ns}/dir/")[0] == 201
    assert upload(server.port, f"{ns}/dir", [b"y"])[1:] == (1003, "target path is not a file")
    status, headers, _ = server.request("HEAD", f"/v1/files{ns}/dir")
    assert headers["x-callfs-type"] == "directory"


def test_upload_below_a_file_fails_to_create(server, ns):
    put(server, f"{ns}/file", b"x")
    assert upload(server.port, f"{ns}/file/child", [b"y"])[1:] == (1011, "file create failed")


def test_file_is_stored_before_the_close_frame(server, ns):
    data = random_bytes(3 * MIB)
    with WSClient(server.port, f"/v1/files/ws{ns}/now.bin?mode=upload") as ws:
        for start in range(0, len(data), MIB):
            ws.send(data[start:start + MIB])
        ws.send_close(1000)
        assert ws.receive() == f"ok:{len(data)}"
        assert ws.receive() is None and ws.close_code == 1000
        assert content(server, f"{ns}/now.bin") == data  # before the TCP connection is gone


# -- the handshake ---------------------------------------------------------------------------

def raw_get(server, target: str, headers: dict) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, head, body, _ = read_http_response(sock)
        return status, head, body


WS_HEADERS = {"Upgrade": "websocket", "Connection": "Upgrade",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
ALICE = {"Authorization": f"Bearer {KEYS['alice']}"}


def refused(server, target: str, **kwargs) -> HandshakeRefused:
    with pytest.raises(HandshakeRefused) as info:
        WSClient(server.port, target, **kwargs)
    return info.value


@pytest.mark.parametrize("user", [None, "wrong-key"])
def test_unauthenticated_handshake_is_401_json(server, ns, user):
    # Authentication is checked before the path, the mode and the handshake.
    exc = refused(server, "/v1/files/ws/../x/?mode=bogus", user=user)
    assert exc.status == 401
    assert exc.headers["content-type"] == "application/json"
    assert json.loads(exc.body)["code"] == "AUTHENTICATION_FAILED"


@pytest.mark.parametrize("target, code", [
    ("/v1/files/ws/..", "INVALID_PATH"),
    ("/v1/files/ws/a/%01b?mode=bogus", "INVALID_PATH"),
    ("/v1/files/ws/a/dir/", "IS_A_DIRECTORY"),
    ("/v1/files/ws/a/dir/?mode=bogus", "IS_A_DIRECTORY"),
    ("/v1/files/ws/", "IS_A_DIRECTORY"),
    ("/v1/files/ws/a/..", "IS_A_DIRECTORY"),
    ("/v1/files/ws/a/f?mode=sideways", "BAD_REQUEST"),
])
def test_path_and_mode_errors_are_400_json(server, target, code):
    exc = refused(server, target)
    assert exc.status == 400
    assert exc.headers["content-type"] == "application/json"
    assert json.loads(exc.body)["code"] == code
    # The same answer before the handshake is looked at.
    status, headers, body = raw_get(server, target, ALICE)
    assert status == 400 and json.loads(body)["code"] == code


@pytest.mark.parametrize("mode", ["%20UpLoad%20", "UPLOAD"])
def test_mode_is_trimmed_and_case_insensitive(server, ns, mode):
    with WSClient(server.port, f"/v1/files/ws{ns}/m.txt?mode={mode}") as ws:
        ws.send(b"hi")
        ws.send_close()
        assert ws.receive_all() == ["ok:2"]


def test_absent_or_empty_mode_downloads(server, ns):
    put(server, f"{ns}/d.txt", b"data")
    for query in ("", "?mode=", "?mode=%20"):
        with WSClient(server.port, f"/v1/files/ws{ns}/d.txt{query}") as ws:
            assert ws.receive_all() == [b"data"], query


@pytest.mark.parametrize("drop", [None, "Upgrade", "Connection", "Sec-WebSocket-Key",
                                  "Sec-WebSocket-Version", "bad-version"])
def test_not_a_websocket_handshake_is_400_text(server, ns, drop):
    headers = dict(ALICE, **WS_HEADERS)
    if drop is None:
        headers = dict(ALICE)
    elif drop == "bad-version":
        headers["Sec-WebSocket-Version"] = "8"
    else:
        del headers[drop]
    headers["Origin"] = "http://elsewhere.example"  # the handshake is judged first
    status, head, body = raw_get(server, f"/v1/files/ws{ns}/f", headers)
    assert (status, body) == (400, b"Bad Request\n")
    assert head["content-type"].startswith("text/plain")


@pytest.mark.parametrize("origin", ["http://elsewhere.example", "http://127.0.0.1:1",
                                    "http://127.0.0.1", "null", "127.0.0.1:{port}"])
def test_foreign_origin_is_403_text(server, ns, origin):
    exc = refused(server, f"/v1/files/ws{ns}/f",
                  headers={"Origin": origin.format(port=server.port)})
    assert (exc.status, exc.body) == (403, b"Forbidden\n")
    assert exc.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("origin", ["http://127.0.0.1:{port}", "https://127.0.0.1:{port}/app/x",
                                    "HTTP://127.0.0.1:{port}"])
def test_same_origin_passes(server, ns, origin):
    put(server, f"{ns}/o.txt", b"origin ok")
    with WSClient(server.port, f"/v1/files/ws{ns}/o.txt",
                  headers={"Origin": origin.format(port=server.port)}) as ws:
        assert ws.receive_all() == [b"origin ok"]


def test_101_carries_the_common_headers(server, ns):
    put(server, f"{ns}/h.txt", b"h")
    with WSClient(server.port, f"/v1/files/ws{ns}/h.txt",
                  headers={"X-Request-ID": "ws-trace-1"}) as ws:
        assert ws.headers["upgrade"].lower() == "websocket"
        assert ws.headers["x-request-id"] == "ws-trace-1"
        assert ws.headers["x-frame-options"] == "DENY"
        assert "connection" in ws.headers and "sec-websocket-extensions" not in ws.headers
        assert ws.receive_all() == [b"h"]


# -- connection deadlines and shutdown (own servers) ------------------------------------------

def test_upload_may_pause_longer_than_the_http_read_timeout(launcher):
    srv = launcher(server={"read_timeout": "1s"})
    with WSClient(srv.port, "/v1/files/ws/slow.txt?mode=upload") as ws:
        ws.send(b"first ")
        time.sleep(2.5)
        ws.send(b"second")
        ws.send_close()
        assert ws.receive_all() == ["ok:12"]
    assert content(srv, "/slow.txt") == b"first second"


def test_sigterm_lets_a_transfer_finish(launcher):
    srv = launcher()
    with WSClient(srv.port, "/v1/files/ws/drain.txt?mode=upload") as ws:
        ws.send(b"before ")
        srv.proc.send_signal(15)
        time.sleep(0.5)
        assert srv.proc.poll() is None  # still draining: the transfer is in flight
        ws.send(b"after")
        ws.send_close()
        assert ws.receive_all() == ["ok:12"]
    assert srv.stop() == 0
    with open(srv.disk("/drain.txt"), "rb") as fh:
        assert fh.read() == b"before after"
