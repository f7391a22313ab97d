"""Three instances sharing PostgreSQL and Redis, each with its own local root: a file on one
instance's disk is read through every other (API.md §13.2), as the owner serves it, with the
reader's permissions decided against the shared metadata; a large file goes socket to socket
in bounded memory; an owner that is down or silent answers 502/504 quickly and heals; a
forwarded request is never forwarded again."""
import hashlib
import json
import os
import socket
import threading
import time

import pytest

from conftest import (INTERNAL_SECRET, KEYS, SERVICES_UP, RssWatch, free_port, launch,
                      read_hashed)

pytestmark = pytest.mark.skipif(not SERVICES_UP, reason="PostgreSQL and Redis on loopback are "
                                "needed (ci/services.sh)")

MIB = 1024 * 1024
NAMES = ("node-a", "node-b", "node-c")


def url(path: str) -> str:
    return "/v1/files" + path


def eventually(probe, timeout: float = 3.0):
    """`probe()` once it is truthy (a log line the writer has yet to write), or its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


class Cluster:
    def __init__(self, base, dsn: str, peers: dict[str, str] | None = None):
        self.base = base
        self.dsn = dsn
        self.ports = {name: free_port() for name in NAMES}
        self.peers = peers or {name: f"http://127.0.0.1:{port}"
                               for name, port in self.ports.items()}
        self.nodes = {}
        for name in NAMES:
            self.start(name)

    def start(self, name: str):
        self.nodes[name] = launch(
            self.base / name, port=self.ports[name],
            metadata_store={"type": "postgres", "dsn": self.dsn},
            dlm={"type": "redis", "redis_addr": "127.0.0.1:6379"},
            instance_discovery={"instance_id": name, "peer_endpoints": self.peers})
        return self.nodes[name]

    def __getitem__(self, name: str):
        return self.nodes[name]

    def stop(self):
        for node in self.nodes.values():
            if node.proc.poll() is None:
                node.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, module_database):
    group = Cluster(tmp_path_factory.mktemp("cluster"), module_database)
    yield group
    group.stop()


@pytest.fixture
def ns(request):
    return "/" + request.node.name[:60]


def test_every_instance_reads_every_other_instances_files(cluster, ns):
    for owner in NAMES:
        body = f"written on {owner}".encode() * 100
        assert cluster[owner].request("PUT", url(f"{ns}/{owner}.txt"), body)[0] == 201
        for reader in NAMES:
            status, headers, got = cluster[reader].request("GET", url(f"{ns}/{owner}.txt"))
            assert (status, got) == (200, body), (owner, reader, status)
            assert headers["content-length"] == str(len(body))
            status, headers, _ = cluster[reader].request("HEAD", url(f"{ns}/{owner}.txt"))
            assert status == 200 and headers["x-callfs-instance-id"] == owner
            assert headers["x-callfs-size"] == str(len(body))
            status, _, got = cluster[reader].request(
                "GET", url(f"{ns}/{owner}.txt"), headers={"Range": "bytes=3-12"})
            assert (status, got) == (206, body[3:13])
        # Only the owner's disk holds the bytes.
        for name in NAMES:
            assert os.path.exists(cluster[name].disk(f"{ns}/{owner}.txt")) == (name == owner)


def test_the_reader_decides_permissions_and_the_owner_logs_the_forward(cluster, ns):
    assert cluster["node-a"].request("PUT", url(f"{ns}/private"), b"alice only",
                                     headers={"X-CallFS-Mode": "0600"})[0] == 201
    assert cluster["node-b"].request("GET", url(f"{ns}/private"), user="bob")[0] == 403
    assert cluster["node-b"].request("GET", url(f"{ns}/private"), user=None)[0] == 401
    status, _, body = cluster["node-b"].request(
        "GET", url(f"{ns}/private"), headers={"X-Request-ID": "follow-me-0001"})
    assert (status, body) == (200, b"alice only")
    # The owner served it as internal-proxy, under the same request ID (once its log's
    # writer has written the line).
    lines = eventually(lambda: [json.loads(line) for line in cluster["node-a"].log().splitlines()
                                if '"follow-me-0001"' in line and '"callfs.access"' in line])
    assert lines and lines[-1]["user"] == "internal-proxy" and lines[-1]["status"] == 200
    assert len(lines) == 1  # bob's request was refused by node-b, never forwarded


def test_a_large_file_goes_through_in_bounded_memory_socket_to_socket(cluster, ns):
    size = 200 * MIB + 17
    block = os.urandom(MIB)
    expected = hashlib.sha256()
    conn = cluster["node-a"].connect(timeout=120)

    def stream():
        sent = 0
        while sent < size:
            piece = block[:min(MIB, size - sent)]
            expected.update(piece)
            sent += len(piece)
            yield piece

    conn.request("PUT", url(f"{ns}/big"), body=stream(),
                 headers={"Authorization": f"Bearer {KEYS['alice']}",
                          "Content-Length": str(size)})
    assert conn.getresponse().status == 201
    conn.close()
    reader = cluster["node-c"]
    conn = reader.connect(timeout=120)
    with RssWatch(reader) as watch:
        conn.request("GET", url(f"{ns}/big"), headers={"Authorization": f"Bearer {KEYS['alice']}"})
        got, digest = read_hashed(conn.getresponse())
    conn.close()
    assert got == size and digest == expected.digest()
    print(f"\n200 MiB through a non-owner: RSS +{watch.growth_mib:.1f} MiB")
    assert watch.growth_mib < 20, watch.growth_mib
    lines = eventually(lambda: [line for line in reader.log().splitlines()
                                if '"callfs.access"' in line and f"{ns}/big" in line
                                and '"GET"' in line])
    assert lines and '"transfer":"splice"' in lines[-1], lines[-1:]


def test_an_owner_that_is_down_answers_502_quickly_and_service_resumes(cluster, ns):
    assert cluster["node-b"].request("PUT", url(f"{ns}/f"), b"on b")[0] == 201
    cluster["node-b"].stop()
    try:
        started = time.monotonic()
        status, _, body = cluster["node-a"].request("GET", url(f"{ns}/f"))
        assert (status, json.loads(body)["code"]) == (502, "PEER_UNAVAILABLE")
        assert cluster["node-a"].request("HEAD", url(f"{ns}/f"))[0] == 502
        assert time.monotonic() - started < 10
        # Everything else goes on.
        assert cluster["node-a"].request("PUT", url(f"{ns}/g"), b"on a")[0] == 201
        assert cluster["node-c"].request("GET", url(f"{ns}/g"))[2] == b"on a"
    finally:
        cluster.start("node-b")
    assert cluster["node-a"].request("GET", url(f"{ns}/f"))[2] == b"on b"


def test_a_silent_owner_answers_504_within_the_open_timeout(tmp_path, module_database):
    """node-b's address leads to a listener that accepts and never answers."""
    silent = socket.create_server(("127.0.0.1", 0))
    held = []

    def accept_and_say_nothing():
        try:
            while True:
                held.append(silent.accept())
        except OSError:
            pass  # the listener closed at the end of the test

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()
    peers = {"node-a": "", "node-b": f"http://127.0.0.1:{silent.getsockname()[1]}",
             "node-c": ""}
    group = Cluster.__new__(Cluster)
    group.base, group.dsn, group.nodes = tmp_path, module_database, {}
    group.ports = {name: free_port() for name in NAMES}
    group.peers = {name: (address or f"http://127.0.0.1:{group.ports[name]}")
                   for name, address in peers.items()}
    try:
        owner = group.start("node-b")  # a real node-b writes the file, then goes
        assert owner.request("PUT", url("/silent/f"), b"x")[0] == 201
        owner.stop()
        reader = group.start("node-a")
        started = time.monotonic()
        status, _, body = reader.request("GET", url("/silent/f"), timeout=60)
        elapsed = time.monotonic() - started
        assert (status, json.loads(body)["code"]) == (504, "PEER_UNAVAILABLE")
        assert 8 < elapsed < 20, elapsed  # server.file_op_timeout (10 s), then the answer
    finally:
        group.stop()
        silent.close()


def test_a_forwarded_request_is_never_forwarded_again(cluster, ns):
    assert cluster["node-b"].request("PUT", url(f"{ns}/f"), b"on b")[0] == 201
    # As if node-a had forwarded a request for a file that node-c believes node-b holds:
    status, _, body = cluster["node-c"].request(
        "GET", url(f"{ns}/f"), user=INTERNAL_SECRET,
        headers={"X-CallFS-Forwarded-By": "node-a"})
    assert (status, json.loads(body)["code"]) == (502, "PEER_UNAVAILABLE")
    assert eventually(lambda: "not forwarded again" in cluster["node-c"].log())
    # The mark means nothing from anyone but a peer: a user's request is forwarded.
    status, _, body = cluster["node-c"].request(
        "GET", url(f"{ns}/f"), headers={"X-CallFS-Forwarded-By": "node-a"})
    assert (status, body) == (200, b"on b")


def test_a_delete_through_any_instance_removes_the_owners_file(cluster, ns):
    assert cluster["node-a"].request("PUT", url(f"{ns}/gone"), b"bytes")[0] == 201
    assert cluster["node-a"].request("PUT", url(f"{ns}/kept"), b"bytes",
                                     headers={"X-CallFS-Mode": "0644"})[0] == 201
    assert cluster["node-b"].request("DELETE", url(f"{ns}/kept"), user="bob")[0] == 403
    assert cluster["node-b"].request("DELETE", url(f"{ns}/gone"))[0] == 204
    assert not os.path.exists(cluster["node-a"].disk(f"{ns}/gone"))  # the owner's bytes went
    for name in NAMES:
        assert cluster[name].request("GET", url(f"{ns}/gone"))[0] == 404
    assert cluster["node-c"].request("DELETE", url(f"{ns}/gone"))[0] == 404
    assert os.path.exists(cluster["node-a"].disk(f"{ns}/kept"))
