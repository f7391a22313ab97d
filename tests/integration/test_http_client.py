"""The internal HTTP client (callfs/http/client.py) against real servers over loopback: a
CallFS server (keep-alive reuse, streamed bodies both ways, HEAD, ranges, a slow reader held
to a bounded buffer), and scripted raw-socket peers for what a good server never does: accept
and never answer, drop an idle connection, die mid-body, answer garbage, send 100 Continue
first or a chunked body with trailers."""
import asyncio
import hashlib
import os
import socket
import threading
import time

import pytest
import uvloop

from callfs.http.client import BUFFER_HIGH, HttpClient, PeerError, PeerTimeout
from conftest import KEYS, launch

MIB = 1024 * 1024
AUTH = [("Authorization", f"Bearer {KEYS['alice']}")]


def run(coroutine):
    return uvloop.run(coroutine)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    srv = launch(tmp_path_factory.mktemp("client"))
    yield srv
    srv.stop()


class Peer:
    """A scripted peer on loopback: `script(conn, request_head)` answers each request of a
    connection (returning False to stop serving it)."""

    def __init__(self, script):
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.heads: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buffered = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffered:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffered += data
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                self.heads.append(head)
                if self.script(conn, head) is False:
                    return
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self):
        self.listener.close()


# -- against CallFS ----------------------------------------------------------------------

def test_requests_reuse_one_kept_alive_connection(node):
    async def scenario():
        client = HttpClient()
        for i in range(5):
            response = await client.request("PUT", "127.0.0.1", node.port, f"/v1/files/k/{i}",
                                            headers=AUTH, body=b"x" * i)
            assert response.status == 201
            await response.read()
        response = await client.request("GET", "127.0.0.1", node.port, "/v1/files/k/4",
                                        headers=AUTH)
        assert (response.status, await response.read()) == (200, b"xxxx")
        response = await client.request("HEAD", "127.0.0.1", node.port, "/v1/files/k/3",
                                        headers=AUTH)
        assert response.status == 200 and response.header("content-length") == "3"
        assert await response.read() == b""  # a HEAD's answer has no body
        response = await client.request("GET", "127.0.0.1", node.port, "/v1/files/k/missing",
                                        headers=AUTH)
        assert response.status == 404 and b"FILE_NOT_FOUND" in await response.read()
        assert client.opened == 1
        await client.close()

    run(scenario())


def test_bodies_stream_both_ways_and_a_slow_reader_holds_a_bounded_buffer(node):
    size = 64 * MIB + 5
    block = os.urandom(MIB)

    async def produce():
        sent = 0
        while sent < size:
            piece = block[:min(MIB, size - sent)]
            sent += len(piece)
            yield piece

    expected = hashlib.sha256()
    for _ in range(size // MIB):
        expected.update(block)
    expected.update(block[:size % MIB])

    async def scenario():
        client = HttpClient()
        # Chunked (no length announced), then with a length.
        for name, length in (("chunked", None), ("sized", size)):
            response = await client.request("PUT", "127.0.0.1", node.port,
                                            f"/v1/files/big/{name}", headers=AUTH,
                                            body=produce(), length=length)
            assert response.status == 201, await response.read()
            await response.read()
        response = await client.request("GET", "127.0.0.1", node.port, "/v1/files/big/chunked",
                                        headers=AUTH)
        assert response.status == 200
        digest, got, most = hashlib.sha256(), 0, 0
        conn = response._conn
        async for piece in response.chunks():
            digest.update(piece)
            got += len(piece)
            most = max(most, conn._buffered)
            if got < 8 * MIB:
                await asyncio.sleep(0.01)  # a slow reader at first: the socket must wait
        assert got == size and digest.digest() == expected.digest()
        assert most <= BUFFER_HIGH + 512 * 1024, most
        response = await client.request("GET", "127.0.0.1", node.port, "/v1/files/big/sized",
                                        headers=AUTH + [("Range", "bytes=10-19")])
        assert (response.status, await response.read()) == (206, block[10:20])
        assert client.opened == 1
        await client.close()

    run(scenario())


def test_a_response_closed_early_closes_its_connection(node):
    async def scenario():
        client = HttpClient()
        response = await client.request("PUT", "127.0.0.1", node.port, "/v1/files/early",
                                        headers=AUTH, body=os.urandom(8 * MIB))
        await response.read()
        response = await client.request("GET", "127.0.0.1", node.port, "/v1/files/early",
                                        headers=AUTH)
        response.close()  # not read: the connection cannot serve another request
        response = await client.request("GET", "127.0.0.1", node.port, "/v1/files/early",
                                        headers=AUTH)
        assert len(await response.read()) == 8 * MIB
        assert client.opened == 2
        await client.close()

    run(scenario())


# -- against scripted peers --------------------------------------------------------------

def test_a_peer_that_never_answers_times_out():
    peer = Peer(lambda conn, head: time.sleep(30))

    async def scenario():
        client = HttpClient(read_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(PeerTimeout) as caught:
            await client.request("GET", "127.0.0.1", peer.port, "/")
        assert time.monotonic() - started < 3
        assert not caught.value.partial
        await client.close()

    try:
        run(scenario())
    finally:
        peer.stop()


def test_an_unreachable_peer_fails_quickly():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario():
        client = HttpClient(connect_timeout=1)
        with pytest.raises(PeerError, match="unreachable"):
            await client.request("GET", "127.0.0.1", port, "/")

    run(scenario())


def test_an_idle_connection_the_peer_dropped_is_replaced():
    def answer_once(conn, head):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return False  # then close, without saying so

    peer = Peer(answer_once)

    async def scenario():
        client = HttpClient()
        for _ in range(3):
            response = await client.request("GET", "127.0.0.1", peer.port, "/")
            assert await response.read() == b"ok"
            await asyncio.sleep(0.05)  # the close has reached us: a new connection
        assert peer.accepted == 3
        for _ in range(20):  # the close may not have reached us: sent again, afresh
            response = await client.request("GET", "127.0.0.1", peer.port, "/")
            assert await response.read() == b"ok"
        await client.close()

    try:
        run(scenario())
    finally:
        peer.stop()


def test_a_peer_dying_mid_body_is_a_partial_answer():
    def die(conn, head):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 300)
        return False

    peer = Peer(die)

    async def scenario():
        client = HttpClient()
        response = await client.request("GET", "127.0.0.1", peer.port, "/")
        with pytest.raises(PeerError) as caught:
            await response.read()
        assert caught.value.partial
        await client.close()

    try:
        run(scenario())
    finally:
        peer.stop()


def test_garbage_is_refused():
    peer = Peer(lambda conn, head: conn.sendall(b"SMTP ready\r\n\r\n") or False)

    async def scenario():
        client = HttpClient()
        with pytest.raises(PeerError, match="could not be parsed"):
            await client.request("GET", "127.0.0.1", peer.port, "/")

    try:
        run(scenario())
    finally:
        peer.stop()


def test_interim_answers_chunked_bodies_and_trailers():
    def answer(conn, head):
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
                     b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")

    peer = Peer(answer)

    async def scenario():
        client = HttpClient()
        for _ in range(2):
            response = await client.request("POST", "127.0.0.1", peer.port, "/x",
                                            headers=[("Expect", "100-continue")], body=b"abc")
            assert response.status == 200 and response.header("x-a") == "1"
            assert await response.read() == b"hello world"
        assert client.opened == 1
        await client.close()

    try:
        run(scenario())
    finally:
        peer.stop()
    assert peer.heads[0].startswith(b"POST /x HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nContent-Length: 3" in peer.heads[0]


def test_header_values_cannot_smuggle_lines():
    async def scenario():
        client = HttpClient()
        with pytest.raises(ValueError):
            await client.request("GET", "127.0.0.1", 1, "/",
                                 headers=[("X-A", "1\r\nX-Injected: yes")])

    run(scenario())


def test_a_body_left_in_its_socket_is_read_there_and_the_connection_serves_again(node):
    import select
    data = os.urandom(5 * MIB + 3)

    async def scenario():
        client = HttpClient()
        response = await client.request("PUT", "127.0.0.1", node.port, "/v1/files/sock/f",
                                        headers=AUTH, body=data)
        await response.read()
        response = await client.request("GET", "127.0.0.1", node.port, "/v1/files/sock/f",
                                        headers=AUTH)
        body = response.detach()
        assert body is not None and len(body.buffered) + body.remaining == len(data)
        got = bytearray(body.buffered)
        while len(got) < len(data):
            select.select([body.fd], [], [], 5)
            try:
                got += os.read(body.fd, min(1 << 20, len(data) - len(got)))
            except BlockingIOError:
                continue
        body.done(True)
        assert bytes(got) == data
        response = await client.request("GET", "127.0.0.1", node.port, "/v1/files/sock/f",
                                        headers=AUTH + [("Range", "bytes=0-3")])
        assert await response.read() == data[:4]
        assert client.opened == 1  # the same connection, after the body read from its socket
        # A body not read whole closes its connection.
        response = await client.request("GET", "127.0.0.1", node.port, "/v1/files/sock/f",
                                        headers=AUTH)
        body = response.detach()
        body.done(False)
        response = await client.request("HEAD", "127.0.0.1", node.port, "/v1/files/sock/f",
                                        headers=AUTH)
        assert response.detach() is None  # a HEAD's answer has no body to hand over
        await response.read()
        assert client.opened == 2
        await client.close()

    run(scenario())


def test_a_chunked_body_is_not_handed_over():
    def answer(conn, head):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n0\r\n\r\n")

    peer = Peer(answer)

    async def scenario():
        client = HttpClient()
        response = await client.request("GET", "127.0.0.1", peer.port, "/")
        assert response.detach() is None
        assert await response.read() == b"hello"
        await client.close()

    try:
        run(scenario())
    finally:
        peer.stop()


def test_read_some_hands_out_no_more_than_asked():
    def answer(conn, head):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world")

    peer = Peer(answer)

    async def scenario():
        client = HttpClient()
        response = await client.request("GET", "127.0.0.1", peer.port, "/")
        got = []
        while True:
            piece = await response.read_some(3)
            if not piece:
                break
            assert len(piece) <= 3
            got.append(piece)
        assert b"".join(got) == b"hello world"
        response = await client.request("GET", "127.0.0.1", peer.port, "/")
        assert await response.read() == b"hello world"
        assert client.opened == 1  # read to its end piece by piece, it went back to the pool
        await client.close()

    try:
        run(scenario())
    finally:
        peer.stop()
