"""A store that misbehaves, over a real socket: a fault-injecting proxy (s3faults.py) between
CallFS and moto's S3 server throttles, fails, cuts answers part-way and goes away. Throttling
and transient errors are retried with backoff; what persists answers a clear 5xx quickly, with
no S3 XML; a download the store cuts is cut for the client too, never a complete-looking 200;
an upload that fails keeps the old object and leaves no parts; everything heals."""
import asyncio
import hashlib
import http.client
import json
import os
import secrets
import time

import pytest

from callfs.backends.s3 import MIN_PART, S3Backend, S3Settings
from callfs.domain import errors
from conftest import KEYS, launch, s3_sections
from s3faults import INTERNAL, FaultyProxy
from s3store import ACCESS_KEY, REGION, SECRET_KEY

MIB = 1024 * 1024
AUTH = {"Authorization": f"Bearer {KEYS['alice']}"}


def url(path: str) -> str:
    return "/v1/files" + path


@pytest.fixture
def proxy(moto):
    faulty = FaultyProxy(moto.endpoint)
    yield faulty
    faulty.stop()


@pytest.fixture
def node(tmp_path, moto, proxy):
    """One worker whose S3 calls go through the proxy; the bucket is read directly."""
    sections = s3_sections(moto)
    sections["backend"]["s3_endpoint"] = proxy.endpoint
    srv = launch(tmp_path / "node", **sections)
    srv.bucket = sections["backend"]["s3_bucket_name"]
    srv.moto = moto
    yield srv
    srv.stop()


def stored(node, key: str) -> bytes:
    return node.moto.client().get_object(Bucket=node.bucket, Key=key)["Body"].read()


def uploads(node) -> list:
    return node.moto.client().list_multipart_uploads(Bucket=node.bucket).get("Uploads", [])


def test_throttled_requests_are_retried_and_succeed(node, proxy):
    put = proxy.throttle(2, method="PUT")
    assert node.request("PUT", url("/small"), b"through the throttle")[0] == 201
    assert put.hits == 2
    get = proxy.throttle(2, method="GET")
    status, _, body = node.request("GET", url("/small"))
    assert (status, body) == (200, b"through the throttle")
    assert get.hits == 2
    errors_ = proxy.answer(500, INTERNAL, 2, method="HEAD")
    assert node.request("HEAD", url("/small"))[0] == 200
    assert errors_.hits == 2


def test_throttled_parts_of_a_multipart_upload_are_sent_again(node, proxy):
    data = os.urandom(17 * MIB)
    parts = proxy.throttle(3, method="PUT", contains="partNumber=")
    assert node.request("PUT", url("/big"), data)[0] == 201
    assert parts.hits == 3
    assert hashlib.sha256(stored(node, "big")).digest() == hashlib.sha256(data).digest()
    assert uploads(node) == []


def test_throttling_that_persists_answers_503_quickly_and_heals(node, proxy):
    assert node.request("PUT", url("/f"), b"old")[0] == 201
    proxy.throttle(1000)
    started = time.monotonic()
    status, headers, body = node.request("PUT", url("/f"), b"new")
    elapsed = time.monotonic() - started
    assert status == 503, (status, body)
    assert json.loads(body)["code"] == "SERVICE_UNAVAILABLE"
    assert b"SlowDown" not in body and b"<" not in body  # no S3 XML reaches a client
    assert elapsed < 15, elapsed  # bounded: a few retries with backoff, then the answer
    status, _, body = node.request("GET", url("/f"))
    assert status == 503 and b"<" not in body
    proxy.heal()
    assert node.request("GET", url("/f"))[2] == b"old"  # the old object was never touched
    assert node.request("PUT", url("/f"), b"new")[0] == 200
    assert stored(node, "f") == b"new"
    assert "SlowDown" in node.log()  # the store's answer is in the log, for the operator


def test_a_download_the_store_cuts_is_cut_for_the_client(node, proxy):
    size = 24 * MIB
    data = os.urandom(size)
    assert node.request("PUT", url("/cut"), data)[0] == 201
    proxy.cut(after=5 * MIB, times=1000, method="GET")
    conn = node.connect(timeout=30)
    try:
        conn.request("GET", url("/cut"), headers=AUTH)
        response = conn.getresponse()
        assert response.status == 200
        assert int(response.getheader("Content-Length")) == size
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            response.read()  # fewer bytes than announced, then the connection closes
    finally:
        conn.close()
    proxy.heal()
    status, _, body = node.request("GET", url("/cut"))
    assert status == 200 and body == data
    status, _, body = node.request("GET", url("/cut"), headers={"Range": "bytes=100-199"})
    assert (status, body) == (206, data[100:200])


def test_a_store_gone_mid_upload_keeps_the_old_object_and_heals(node, proxy, moto):
    assert node.request("PUT", url("/up"), b"old")[0] == 201
    proxy.drop(times=1000, method="PUT", contains="partNumber=2")
    status, _, body = node.request("PUT", url("/up"), os.urandom(12 * MIB))
    assert status in (500, 503), (status, body)
    assert b"<" not in body
    proxy.heal()
    assert node.request("GET", url("/up"))[2] == b"old"
    assert stored(node, "up") == b"old"
    deadline = time.monotonic() + 10
    while uploads(node) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uploads(node) == []  # the failed upload was aborted


# -- the backend alone: an abort the store refused is owed, and recovery pays it ----------

def test_an_abort_the_store_refuses_is_made_by_the_next_recovery_pass(moto):
    bucket = "callfs-" + secrets.token_hex(6)
    moto.client().create_bucket(Bucket=bucket)
    proxy = FaultyProxy(moto.endpoint)
    settings = S3Settings(bucket=bucket, region=REGION, endpoint=proxy.endpoint,
                          access_key=ACCESS_KEY, secret_key=SECRET_KEY, part_size=MIN_PART,
                          connect_timeout=1.0, attempts=2)

    async def scenario():
        backend = S3Backend(settings, instance_id="i-test")
        await backend.open()
        upload = backend.begin_write("/owed")
        await upload.write(os.urandom(MIN_PART + 1))  # the first part goes
        await upload.write(b"x")
        deadline = time.monotonic() + 10
        while not moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        proxy.answer(500, INTERNAL, 1000, method="DELETE")
        await upload.abort()  # never raises: the store refused, the abort is owed
        assert moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads")
        proxy.heal()
        found = await backend.leftovers()
        assert [item.key for item in found] == ["owed"]
        for item in found:
            await backend.remove_temporary(item.tmp)
        assert moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        assert await backend.leftovers() == []
        await backend.close()

    try:
        asyncio.run(scenario())
    finally:
        proxy.stop()
