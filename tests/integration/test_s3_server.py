"""A node with `default_backend: s3` against moto's S3 server, the bucket inspected directly:
the contract's keys and no instance owner, large transfers with bounded memory, an upload
the client abandons or the process dies in (no parts left, the old object intact), encryption
reaching the wire, several workers, a bucket that is missing at start, and a store that goes
away and comes back."""
import hashlib
import os
import signal
import socket
import threading
import time
import uuid

import pytest

from conftest import RssWatch, launch, read_hashed, s3_sections
from s3store import MotoServer

MIB = 1024 * 1024


def url(path: str) -> str:
    return "/v1/files" + path


def keys(moto, bucket: str) -> list[str]:
    pages = moto.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", [])
                  if not o["Key"].startswith(".callfs-uploads/"))


def uploads(moto, bucket: str) -> list[str]:
    return [u["Key"] for u in
            moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def intents(moto, bucket: str) -> list[str]:
    listed = moto.client().list_objects_v2(Bucket=bucket, Prefix=".callfs-uploads/")
    return [o["Key"] for o in listed.get("Contents", [])]


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def pattern(size: int) -> bytes:
    block = hashlib.sha256(b"callfs").digest() * (MIB // 32)
    return (block * (size // len(block) + 1))[:size]


class Stream:
    """A request body of `size` bytes made as it is sent (no whole copy in the test)."""

    def __init__(self, size: int):
        self.size = size

    def __iter__(self):
        block = pattern(MIB)
        sent = 0
        while sent < self.size:
            piece = block[:min(MIB, self.size - sent)]
            sent += len(piece)
            yield piece


@pytest.fixture
def s3_node(tmp_path, moto):
    sections = s3_sections(moto)
    srv = launch(tmp_path / "node", workers=2, **sections)
    srv.bucket = sections["backend"]["s3_bucket_name"]
    srv.moto = moto
    yield srv
    srv.stop()


def test_files_and_directories_live_at_the_contracts_keys(s3_node, moto):
    srv = s3_node
    assert srv.request("POST", url("/docs/"))[0] == 201
    assert srv.request("PUT", url("/docs/a.txt"), b"alpha")[0] == 201
    assert srv.request("PUT", url("/docs/deep/er/b.txt"), b"")[0] == 201
    assert keys(moto, srv.bucket) == ["docs/", "docs/a.txt", "docs/deep/er/b.txt"]
    status, headers, _ = srv.request("HEAD", url("/docs/a.txt"))
    assert status == 200 and "x-callfs-instance-id" not in headers  # no owner (API.md §3)
    status, _, body = srv.request("GET", url("/docs/deep/er/b.txt"))
    assert (status, body) == (200, b"")
    status, _, body = srv.request("GET", url("/docs/a.txt"), headers={"Range": "bytes=1-3"})
    assert (status, body) == (206, b"lph")
    # Renames move the object; copies are made on the server; deletes remove the object.
    assert srv.request("PATCH", url("/docs/a.txt"), b'{"name": "c.txt"}')[0] == 200
    assert srv.request("PATCH", url("/docs/c.txt"),
                       b'{"destination": "/docs/d.txt", "copy": true}')[0] == 201
    assert srv.request("DELETE", url("/docs/deep/er/b.txt"))[0] == 204
    assert keys(moto, srv.bucket) == ["docs/", "docs/c.txt", "docs/d.txt"]
    assert srv.request("GET", url("/docs/d.txt"))[2] == b"alpha"


def test_a_directory_moves_with_every_object_below_it(s3_node, moto):
    srv = s3_node
    for name in ("x", "sub/y", "sub/z"):
        assert srv.request("PUT", url(f"/tree/{name}"), name.encode())[0] == 201
    assert srv.request("PATCH", url("/tree"),
                       b'{"destination": "/moved/tree", "create_parents": true}')[0] == 200
    assert [k for k in keys(moto, srv.bucket) if k.startswith(("tree", "moved"))] == \
        ["moved/tree/sub/y", "moved/tree/sub/z", "moved/tree/x"]
    assert srv.request("GET", url("/moved/tree/sub/z"))[2] == b"sub/z"
    status, _, body = srv.request("GET", "/v1/directories/moved/tree?recursive=true")
    assert status == 200 and b'"count":4' in body.replace(b" ", b"")


@pytest.mark.parametrize("size", [96 * MIB, 1024 * MIB + 7], ids=["96MiB", "1GiB"])
def test_large_transfers_stream_both_ways_in_bounded_memory(s3_node, moto, size):
    srv = s3_node
    conn = srv.connect(timeout=120)
    with RssWatch(srv) as up:
        conn.request("PUT", url("/big.bin"), body=Stream(size),
                     headers={"Authorization": "Bearer alice-key-0123456789abcdef",
                              "Content-Length": str(size)})
        response = conn.getresponse()
        response.read()
    assert response.status == 201
    with RssWatch(srv) as down:
        conn.request("GET", url("/big.bin"),
                     headers={"Authorization": "Bearer alice-key-0123456789abcdef"})
        got, digest = read_hashed(conn.getresponse())
    conn.close()
    assert got == size
    expected = hashlib.sha256()
    for piece in Stream(size):
        expected.update(piece)
    assert digest == expected.digest()
    print(f"\n{size // MIB} MiB through S3: RSS up +{up.growth_mib:.1f} MiB, "
          f"down +{down.growth_mib:.1f} MiB")
    assert up.growth_mib < 50 and down.growth_mib < 20, (up.growth_mib, down.growth_mib)
    assert uploads(moto, srv.bucket) == [] and intents(moto, srv.bucket) == []
    # From the store's socket to the client's by splice (the store is plain HTTP).
    downloads = [line for line in srv.log().splitlines()
                 if '"method":"GET"' in line and "/big.bin" in line and '"status":200' in line]
    assert downloads and '"transfer":"splice"' in downloads[-1], downloads
    status, _, body = srv.request("GET", url("/big.bin"), headers={
        "Range": f"bytes={size - 5}-"})
    assert (status, body) == (206, expected_tail(size, 5))
    assert srv.request("DELETE", url("/big.bin"))[0] == 204
    assert "big.bin" not in keys(moto, srv.bucket)


def expected_tail(size: int, count: int) -> bytes:
    block = pattern(MIB)
    return bytes(block[(size - count + i) % MIB] for i in range(count))


def test_an_upload_the_client_abandons_leaves_no_parts_and_the_old_object(s3_node, moto):
    srv = s3_node
    assert srv.request("PUT", url("/f.bin"), b"old")[0] == 201
    sock = socket.create_connection(("127.0.0.1", srv.port))
    size = 40 * MIB
    sock.sendall((f"PUT {url('/f.bin')} HTTP/1.1\r\nHost: x\r\n"
                  "Authorization: Bearer alice-key-0123456789abcdef\r\n"
                  f"Content-Length: {size}\r\n\r\n").encode())
    for piece in Stream(20 * MIB):
        sock.sendall(piece)
    assert wait_for(lambda: uploads(moto, srv.bucket))  # parts go while the body arrives
    sock.close()
    assert wait_for(lambda: not uploads(moto, srv.bucket)), uploads(moto, srv.bucket)
    assert wait_for(lambda: not intents(moto, srv.bucket))
    assert srv.request("GET", url("/f.bin"))[2] == b"old"
    assert moto.client().get_object(Bucket=srv.bucket, Key="f.bin")["Body"].read() == b"old"


def test_a_process_killed_mid_upload_leaves_parts_that_recovery_aborts(tmp_path, moto):
    sections = s3_sections(moto)
    bucket = sections["backend"]["s3_bucket_name"]
    srv = launch(tmp_path / "node", **sections)
    assert srv.request("PUT", url("/f.bin"), b"old")[0] == 201
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall((f"PUT {url('/f.bin')} HTTP/1.1\r\nHost: x\r\n"
                  "Authorization: Bearer alice-key-0123456789abcdef\r\n"
                  f"Content-Length: {64 * MIB}\r\n\r\n").encode())
    for piece in Stream(20 * MIB):
        sock.sendall(piece)
    assert wait_for(lambda: uploads(moto, bucket))
    srv.stop(signal.SIGKILL)
    sock.close()
    assert uploads(moto, bucket) and intents(moto, bucket)  # what the dead process left
    srv = launch(tmp_path / "node", **sections)
    try:
        assert uploads(moto, bucket) == [] and intents(moto, bucket) == []  # at start-up
        assert srv.request("GET", url("/f.bin"))[2] == b"old"
    finally:
        srv.stop()
    assert "recover" in srv.log()


@pytest.mark.parametrize("sse,kms", [("aws:kms", "key-0123"), ("AES256", "")])
def test_encryption_from_the_configuration_reaches_the_wire(tmp_path, moto, sse, kms):
    sections = s3_sections(moto)
    sections["backend"].update(s3_server_side_encryption=sse, s3_kms_key_id=kms)
    bucket = sections["backend"]["s3_bucket_name"]
    srv = launch(tmp_path / "node", **sections)
    try:
        assert srv.request("PUT", url("/small"), b"s")[0] == 201
        assert srv.request("PUT", url("/large"), body=b"".join(Stream(6 * MIB)))[0] == 201
        assert srv.request("PATCH", url("/small"),
                           b'{"destination": "/copy", "copy": true}')[0] == 201
    finally:
        srv.stop()
    for key in ("small", "large", "copy"):
        head = moto.client().head_object(Bucket=bucket, Key=key)
        assert head.get("ServerSideEncryption") == sse, key
        assert head.get("SSEKMSKeyId", "") == kms, key


def test_a_missing_bucket_stops_the_server_at_start(tmp_path, moto):
    sections = s3_sections(moto, bucket="callfs-missing-" + uuid.uuid4().hex[:8])
    with pytest.raises(RuntimeError) as failed:
        launch(tmp_path / "node", **sections)
    assert "exited with 1" in str(failed.value) and "does not exist" in str(failed.value)


def test_default_backend_s3_without_a_bucket_is_refused(tmp_path):
    with pytest.raises(RuntimeError) as failed:
        launch(tmp_path / "node", backend={"default_backend": "s3"})
    assert "s3_bucket_name" in str(failed.value)


@pytest.mark.parametrize("endpoint", ["minio:9000", "ftp://store:21", "http://"])
def test_an_endpoint_that_is_not_a_url_is_refused(tmp_path, endpoint):
    with pytest.raises(RuntimeError) as failed:
        launch(tmp_path / "node", backend={"default_backend": "s3", "s3_bucket_name": "b",
                                           "s3_endpoint": endpoint})
    assert "backend.s3_endpoint" in str(failed.value) and "is not a URL" in str(failed.value)


def test_an_outage_answers_503_quickly_and_heals(tmp_path):
    store = MotoServer()
    try:
        sections = s3_sections(store)
        bucket = sections["backend"]["s3_bucket_name"]
        srv = launch(tmp_path / "node", **sections)
        try:
            assert srv.request("PUT", url("/f"), b"before")[0] == 201
            port = store.port
            store.stop()
            for method, body in (("GET", None), ("PUT", b"during"), ("HEAD", None)):
                started = time.monotonic()
                status, _, answer = srv.request(method, url("/f"), body)
                assert status == 503, (method, status, answer)
                assert time.monotonic() - started < 15
                assert b"<" not in answer  # no S3 XML reaches a client
            assert srv.request("GET", "/health")[0] == 200
            store = MotoServer(port=port)  # the store comes back (empty: moto keeps no data)
            store.client().create_bucket(Bucket=bucket)
            assert srv.request("PUT", url("/f"), b"after")[0] in (200, 201)
            assert srv.request("GET", url("/f"))[2] == b"after"
        finally:
            srv.stop()
    finally:
        store.stop()


def test_an_object_lost_behind_the_servers_back_is_missing_not_a_hang(s3_node, moto):
    srv = s3_node
    assert srv.request("PUT", url("/gone"), b"bytes")[0] == 201
    moto.client().delete_object(Bucket=srv.bucket, Key="gone")
    status, _, body = srv.request("GET", url("/gone"))
    assert status == 404 and b"FILE_NOT_FOUND" in body


def test_many_clients_on_two_workers_see_whole_versions(s3_node):
    srv = s3_node
    versions = {bytes([65 + i]) * (1000 + i) for i in range(8)}
    errors = []

    def writer(data: bytes):
        for _ in range(5):
            status = srv.request("PUT", url("/shared"), data)[0]
            if status not in (200, 201, 503):
                errors.append(("put", status))

    def reader():
        for _ in range(20):
            try:
                status, _, body = srv.request("GET", url("/shared"))
            except Exception as exc:  # a cut answer is a failure too
                errors.append(("cut", repr(exc)))
                continue
            if status == 200 and body not in versions:
                errors.append(("torn", len(body)))
            elif status not in (200, 404, 503):
                errors.append(("get", status))

    threads = [threading.Thread(target=writer, args=(v,)) for v in versions]
    threads += [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert srv.request("GET", url("/shared"))[2] in versions
