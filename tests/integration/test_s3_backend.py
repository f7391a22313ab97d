"""The S3 backend against a real S3-compatible server (moto's, over HTTP on loopback), the bucket
inspected directly with a client of its own: objects at the keys the contract gives, streamed
reads and ranged reads, one PUT for a small body and a multipart upload for a large one whose
parts go while the body arrives, aborts that leave no parts and the old object intact,
server-side copies, moves, encryption and ACL on the wire, uploads a dead run left behind, and
an unreachable store answering quickly."""
import asyncio
import os
import secrets
import socket
import time

import pytest

from callfs.backends.base import Capability
from callfs.backends.localfs import LocalFSBackend
from callfs.backends.s3 import MIN_PART, S3Backend, S3Settings
from callfs.domain import errors
from s3store import ACCESS_KEY, REGION, SECRET_KEY, MotoServer

PART = MIN_PART


@pytest.fixture(scope="module")
def moto():
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def bucket(moto):
    name = "callfs-" + secrets.token_hex(6)
    moto.client().create_bucket(Bucket=name)
    return name


def settings(moto, bucket, **overrides) -> S3Settings:
    values = dict(bucket=bucket, region=REGION, endpoint=moto.endpoint, access_key=ACCESS_KEY,
                  secret_key=SECRET_KEY, part_size=PART)
    values.update(overrides)
    return S3Settings(**values)


def run(coroutine):
    return asyncio.run(coroutine)


async def opened(moto, bucket, **overrides) -> S3Backend:
    backend = S3Backend(settings(moto, bucket, **overrides), instance_id="i-test")
    await backend.open()
    return backend


class Body:
    """A request body: `pieces` in turn, then the end; `expected` its announced length."""

    def __init__(self, pieces, expected=None):
        self.pieces = list(pieces)
        self.expected = expected

    async def read(self) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


async def stage(backend, path: str, body) -> object:
    """What the engine's write path does with a body: stage it, seal it."""
    upload = backend.begin_write(path)
    if body.expected is not None:
        await upload.fill(body)
    while True:
        chunk = await body.read()
        if not chunk:
            break
        await upload.write(chunk)
    await upload.seal()
    return upload


async def write(backend, path: str, data: bytes, piece: int = 256 * 1024) -> None:
    upload = await stage(backend, path, Body([data[i:i + piece]
                                              for i in range(0, len(data), piece)]))
    await upload.commit(1, new=True)
    await upload.finish()


async def read(backend, path: str, offset: int = 0, length: int | None = None) -> bytes:
    handle = await backend.open_read(path)
    try:
        count = handle.size - offset if length is None else length
        return b"".join([piece async for piece in handle.chunks(offset, count)])
    finally:
        handle.close()


def stored(moto, bucket, key: str) -> bytes:
    return moto.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def uploads(moto, bucket) -> list:
    return moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def test_capabilities_say_what_it_cannot_do():
    capabilities = S3Backend.capabilities
    assert Capability.SERVER_COPY in capabilities and Capability.RANGED_READ in capabilities
    assert not capabilities & (Capability.LOCAL | Capability.DESCRIPTOR | Capability.STAMPED)


def test_a_small_body_is_one_put_at_the_key_the_contract_gives(moto, bucket):
    async def scenario():
        backend = await opened(moto, bucket)
        await write(backend, "/docs/a.txt", b"hello")
        assert await read(backend, "/docs/a.txt") == b"hello"
        assert await backend.version("/docs/a.txt") == (5, None)
        handle = await backend.open_read("/docs/a.txt")
        assert handle.fd == -1 and handle.size == 5 and handle.mtime_ns is None
        await backend.close()
    run(scenario())
    assert stored(moto, bucket, "docs/a.txt") == b"hello"
    assert uploads(moto, bucket) == []


def test_an_empty_body_is_an_empty_object(moto, bucket):
    async def scenario():
        backend = await opened(moto, bucket)
        await write(backend, "/empty", b"")
        assert await read(backend, "/empty") == b""
    run(scenario())
    assert stored(moto, bucket, "empty") == b""


def test_a_prefix_keeps_a_namespace_apart(moto, bucket):
    run(write(run_opened(moto, bucket, prefix="tenant/"), "/x", b"1"))
    assert stored(moto, bucket, "tenant/x") == b"1"


def run_opened(moto, bucket, **overrides) -> S3Backend:
    return run(opened(moto, bucket, **overrides))


@pytest.mark.parametrize("offset,length", [(0, 1), (5, 10), (PART - 3, 7), (3 * PART, 17)])
def test_ranged_reads_fetch_only_the_range(moto, bucket, offset, length):
    data = os.urandom(3 * PART + 100)

    async def scenario():
        backend = await opened(moto, bucket)
        await write(backend, "/big", data, piece=1024 * 1024)
        assert await read(backend, "/big", offset, length) == data[offset:offset + length]
    run(scenario())


def test_a_large_body_goes_as_parts_while_it_arrives(moto, bucket):
    data = os.urandom(2 * PART + 12345)
    seen = {}

    async def scenario():
        backend = await opened(moto, bucket)
        upload = backend.begin_write("/large")
        for start in range(0, len(data), 1024 * 1024):
            await upload.write(data[start:start + 1024 * 1024])
        # Two parts are full: they are on their way (or stored) before the body ends.
        seen["parts"] = len(upload._parts)
        seen["uploads"] = len(uploads(moto, bucket))
        await upload.seal()
        await upload.commit(1, new=True)
        await upload.finish()
        assert await read(backend, "/large") == data
    run(scenario())
    assert seen == {"parts": 2, "uploads": 1}
    assert stored(moto, bucket, "large") == data
    assert uploads(moto, bucket) == []
    intents = moto.client().list_objects_v2(Bucket=bucket, Prefix=".callfs-uploads/")
    assert intents.get("KeyCount", 0) == 0


def test_an_aborted_upload_leaves_no_parts_and_the_old_object(moto, bucket):
    async def scenario():
        backend = await opened(moto, bucket)
        await write(backend, "/f", b"old bytes")
        upload = backend.begin_write("/f")
        await upload.write(os.urandom(2 * PART + 1))
        await upload.abort()
        await upload.abort()  # a second abort does nothing
    run(scenario())
    assert stored(moto, bucket, "f") == b"old bytes"
    assert uploads(moto, bucket) == []
    assert moto.client().list_objects_v2(Bucket=bucket, Prefix=".callfs-uploads/").get(
        "KeyCount", 0) == 0


def test_a_lapsed_lock_publishes_nothing(moto, bucket):
    class Lapsed(Exception):
        pass

    def lapsed():
        raise Lapsed()

    async def scenario():
        backend = await opened(moto, bucket)
        await write(backend, "/f", b"old")
        upload = await stage(backend, "/f", Body([os.urandom(PART + 1)]))
        with pytest.raises(Lapsed):
            await upload.commit(1, lapsed)
        await upload.abort()
    run(scenario())
    assert stored(moto, bucket, "f") == b"old" and uploads(moto, bucket) == []


def test_undo_of_a_new_file_removes_its_object_unless_a_newer_one_took_the_key(moto, bucket):
    async def scenario():
        backend = await opened(moto, bucket)
        mine = await stage(backend, "/new", Body([b"mine"]))
        await mine.commit(1, new=True)
        await mine.undo()
        assert await backend.version("/new") is None
        lapsed = await stage(backend, "/new", Body([b"lapsed"]))
        await lapsed.commit(1, new=True)
        await write(backend, "/new", b"newer")
        await lapsed.undo()
        assert await read(backend, "/new") == b"newer"
    run(scenario())


def test_missing_objects_are_not_found(moto, bucket):
    async def scenario():
        backend = await opened(moto, bucket)
        with pytest.raises(errors.NotFound):
            await backend.open_read("/nothing")
        assert await backend.version("/nothing") is None
        assert not await backend.remove("/nothing", False)
    run(scenario())


def test_a_read_never_mixes_in_a_newer_version(moto, bucket):
    async def scenario():
        backend = await opened(moto, bucket)
        await write(backend, "/f", b"first")
        handle = await backend.open_read("/f")
        await write(backend, "/f", b"other")
        # The opening GET is the version opened, whole, whatever was written since ...
        assert b"".join([p async for p in handle.chunks(0, handle.size)]) == b"first"
        # ... and any further read of it fails rather than mix in the newer one.
        with pytest.raises(errors.CallFSError):
            async for _ in handle.chunks(1, 2):
                pass
        head = await backend.open_read("/f", content=False)
        assert head.etag != handle.etag  # a HEAD sees the newer version
    run(scenario())


def test_directories_are_empty_objects_ending_in_a_slash(moto, bucket):
    async def scenario():
        backend = await opened(moto, bucket)
        await backend.make_directory("/a")
        await backend.make_directory("/a/b")
        assert stored(moto, bucket, "a/b/") == b""
        assert await backend.remove("/a/b", True)
        assert not await backend.remove("/a/b", True)
    run(scenario())
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["a/"]


def test_deletion_removes_the_object_once_the_metadata_commits(moto, bucket):
    async def scenario():
        backend = await opened(moto, bucket)
        await write(backend, "/f", b"bytes")
        removal = backend.begin_remove("/f")
        removal.publish()
        assert await backend.version("/f") == (5, None)  # until the commit, the bytes stay
        await removal.undo()
        assert await backend.version("/f") == (5, None)
        removal = backend.begin_remove("/f")
        removal.publish()
        await removal.finish()
        assert await backend.version("/f") is None
    run(scenario())


@pytest.mark.parametrize("size", [0, 11, 2 * PART + 7])
def test_a_copy_within_the_bucket_is_made_on_the_server(moto, bucket, size):
    data = os.urandom(size)

    async def scenario():
        backend = await opened(moto, bucket)
        await write(backend, "/src", data, piece=1024 * 1024)
        handle = await backend.open_read("/src")
        body = backend.copy_source(handle)
        upload = await stage(backend, "/dst", body)
        assert body.taken and upload.size == size
        await upload.commit(1, new=True)
        await upload.finish()
        assert await read(backend, "/dst") == data
    run(scenario())
    assert uploads(moto, bucket) == []


def test_copies_between_local_disk_and_s3_stream_both_ways(moto, bucket, tmp_path):
    data = os.urandom(PART + 999)

    async def scenario():
        s3 = await opened(moto, bucket)
        local = LocalFSBackend(str(tmp_path / "root"), durable=False)
        await local.open()
        await write(s3, "/from-s3", data, piece=1024 * 1024)
        handle = await s3.open_read("/from-s3")
        upload = await stage(local, "/on-disk", s3.copy_source(handle))
        await upload.commit(1, new=True)
        await upload.finish()
        assert (tmp_path / "root" / "on-disk").read_bytes() == data
        handle = await local.open_read("/on-disk")
        try:
            upload = await stage(s3, "/back", local.copy_source(handle))
        finally:
            handle.close()
        await upload.commit(1, new=True)
        await upload.finish()
        assert await read(s3, "/back") == data
    run(scenario())


def test_a_move_copies_every_object_then_drops_the_old_keys(moto, bucket):
    async def scenario():
        backend = await opened(moto, bucket)
        await backend.make_directory("/d")
        await write(backend, "/d/f", b"f")
        await write(backend, "/d/sub/g", b"g")
        await write(backend, "/dx", b"not below /d")
        move = backend.begin_move("/d", "/e", 1, False)
        await move.prepare()
        move.publish()
        await move.undo()  # the commit failed: the copies go, the old keys stay
        assert sorted(all_keys(moto, bucket)) == ["d/", "d/f", "d/sub/g", "dx"]
        move = backend.begin_move("/d", "/e", 1, False)
        await move.prepare()
        move.publish()
        await move.finish()
        assert await read(backend, "/e/sub/g") == b"g"
    run(scenario())
    assert sorted(all_keys(moto, bucket)) == ["dx", "e/", "e/f", "e/sub/g"]


def all_keys(moto, bucket) -> list[str]:
    return [o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.mark.parametrize("sse,kms,acl", [("AES256", "", "private"),
                                         ("aws:kms", "my-key-id", "public-read"),
                                         ("", "", "")])
def test_encryption_and_acl_reach_the_wire(moto, bucket, sse, kms, acl):
    async def scenario():
        backend = await opened(moto, bucket, server_side_encryption=sse, kms_key_id=kms,
                               acl=acl)
        await write(backend, "/small", b"x")
        await write(backend, "/large", os.urandom(PART + 1), piece=1024 * 1024)
        handle = await backend.open_read("/small")
        upload = await stage(backend, "/copied", backend.copy_source(handle))
        await upload.commit(1, new=True)
    run(scenario())
    client = moto.client()
    for key in ("small", "large", "copied"):
        head = client.head_object(Bucket=bucket, Key=key)
        assert head.get("ServerSideEncryption", "") == sse, key
        assert head.get("SSEKMSKeyId", "") == kms, key
        if acl:  # (moto cannot answer GetObjectAcl for an object stored without one)
            grants = client.get_object_acl(Bucket=bucket, Key=key)["Grants"]
            public = any(g["Grantee"].get("URI", "").endswith("AllUsers") for g in grants)
            assert public == (acl == "public-read"), key


def test_uploads_of_a_dead_run_are_aborted_and_live_ones_kept(moto, bucket):
    async def scenario():
        dead = S3Backend(settings(moto, bucket), instance_id="i-test", run_id="run-1")
        upload = dead.begin_write("/f")
        await upload.write(os.urandom(PART + 1))  # one part sent, then the process "dies"
        await upload.seal()
        other = S3Backend(settings(moto, bucket), instance_id="i-other", run_id="run-9")
        theirs = other.begin_write("/g")
        await theirs.write(os.urandom(PART))
        await theirs.seal()
        assert len(uploads(moto, bucket)) == 2
        restarted = S3Backend(settings(moto, bucket), instance_id="i-test", run_id="run-2")
        found = await restarted.leftovers()
        assert [item.key for item in found] == ["f"]
        assert not found[0].written_for("f")
        await restarted.remove_temporary(found[0].tmp)
        left = uploads(moto, bucket)
        assert [u["Key"] for u in left] == ["g"]  # another instance's live write stays
        await theirs.abort()
    run(scenario())
    assert uploads(moto, bucket) == []
    assert all_keys(moto, bucket) == []


def test_an_unreachable_store_answers_quickly_with_a_clear_error(bucket):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    backend = S3Backend(S3Settings(bucket=bucket, endpoint=f"http://127.0.0.1:{port}",
                                   access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                                   connect_timeout=1.0, attempts=2))
    started = time.monotonic()
    with pytest.raises(errors.ServiceUnavailable) as caught:
        run(backend.open())
    assert time.monotonic() - started < 10
    assert "unreachable" in str(caught.value) and caught.value.status == 503


def test_a_missing_bucket_is_refused_at_open(moto):
    with pytest.raises(errors.InternalError, match="does not exist"):
        run_opened(moto, "no-such-bucket-" + secrets.token_hex(4))
