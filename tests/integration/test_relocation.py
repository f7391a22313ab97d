"""Files moving and copying between local disk and S3 (API.md §9.6 `backend`), on a node
that has both, with the disk and the bucket inspected directly: the bytes end on exactly one
backend, the metadata says which, and a failure at any step leaves the old state."""
import hashlib
import json
import os
import signal
import threading
import time

import pytest

from conftest import SERVICES_UP, launch, s3_sections
from s3store import MotoServer

MIB = 1024 * 1024


def url(path: str) -> str:
    return "/v1/files" + path


def on_disk(srv, path: str) -> bytes | None:
    return srv.on_disk(path)


def in_bucket(srv, path: str) -> bytes | None:
    return srv.in_bucket(path)


def patch(srv, path: str, body: dict, user: str = "alice"):
    status, _, data = srv.request("PATCH", url(path), json.dumps(body).encode(), user=user)
    return status, (json.loads(data) if data else None)


def info(srv, path: str) -> dict:
    status, headers, _ = srv.request("HEAD", url(path))
    assert status == 200, (path, status)
    return headers


@pytest.fixture(scope="module", params=["sqlite+local", "postgres+redis"])
def node(request, tmp_path_factory, moto):
    """New files on local disk; S3 configured beside it. On SQLite with local locks, and on
    PostgreSQL with Redis."""
    sections = s3_sections(moto)
    sections["backend"]["default_backend"] = "localfs"
    if request.param == "postgres+redis":
        if not SERVICES_UP:
            pytest.skip("PostgreSQL and Redis on loopback are needed (ci/services.sh)")
        sections["metadata_store"] = {"type": "postgres",
                                      "dsn": request.getfixturevalue("module_database")}
        sections["dlm"] = {"type": "redis", "redis_addr": "127.0.0.1:6379"}
    srv = launch(tmp_path_factory.mktemp("relocation"), workers=2, **sections)
    srv.bucket = sections["backend"]["s3_bucket_name"]
    srv.moto = moto
    yield srv
    srv.stop()


@pytest.fixture
def ns(request):
    return "/" + request.node.name.replace("[", "-").replace("]", "")[:60]


def test_a_file_moves_to_s3_in_place_and_back(node, ns):
    path = f"{ns}/f.txt"
    assert node.request("PUT", url(path), b"on disk first")[0] == 201
    before = info(node, path)
    assert "x-callfs-instance-id" in before  # a local file has an owner
    assert patch(node, path, {"destination": path, "backend": "s3"}) == (200, {"path": path})
    assert on_disk(node, path) is None
    assert in_bucket(node, path) == b"on disk first"
    after = info(node, path)
    assert "x-callfs-instance-id" not in after  # an S3 file has none (API.md §3)
    assert after["last-modified"] == before["last-modified"]  # mtime is kept
    assert after["etag"] != before["etag"]
    assert node.request("GET", url(path))[2] == b"on disk first"
    # And back: the bucket no longer holds it.
    assert patch(node, path, {"name": "f.txt", "backend": "localfs"})[0] == 200
    assert in_bucket(node, path) is None
    assert on_disk(node, path) == b"on disk first"
    assert node.request("GET", url(path))[2] == b"on disk first"
    # Asking for the backend it is on is no relocation: the same path is refused as such.
    assert patch(node, path, {"destination": path, "backend": "localfs"}) == (400, {
        "code": "BAD_REQUEST", "message": "destination is the same as the source"})


def test_a_move_to_another_name_and_backend(node, ns):
    assert node.request("PUT", url(f"{ns}/a"), b"alpha")[0] == 201
    assert patch(node, f"{ns}/a", {"destination": f"{ns}/new/deep/b", "backend": "s3",
                                   "create_parents": True}) == (200, {"path": f"{ns}/new/deep/b"})
    assert node.request("GET", url(f"{ns}/a"))[0] == 404
    assert on_disk(node, f"{ns}/a") is None
    assert in_bucket(node, f"{ns}/new/deep/b") == b"alpha"
    status, _, body = node.request("GET", f"/v1/directories{ns}/new/deep")
    assert status == 200 and json.loads(body)["items"][0]["name"] == "b"


def test_mode_owner_and_attributes_travel_with_it(node, ns):
    assert node.request("PUT", url(f"{ns}/m"), b"m", headers={"X-CallFS-Mode": "0640"})[0] == 201
    status, body = patch(node, f"{ns}/m", {"destination": f"{ns}/m", "backend": "s3",
                                           "mode": "0600"})
    assert status == 200
    status, _, data = node.request("GET", f"/v1/directories{ns}")
    entry = json.loads(data)["items"][0]
    assert (entry["mode"], entry["owner"]) == ("0600", "alice")


def test_replacing_a_destination_on_either_backend(node, ns):
    # Destination already on the target backend: its object is replaced.
    assert node.request("PUT", url(f"{ns}/src1"), b"new one")[0] == 201
    assert node.request("PUT", url(f"{ns}/dst1"), b"old")[0] == 201
    assert patch(node, f"{ns}/dst1", {"destination": f"{ns}/dst1", "backend": "s3"})[0] == 200
    assert patch(node, f"{ns}/src1", {"destination": f"{ns}/dst1", "backend": "s3"}) == (409, {
        "code": "FILE_ALREADY_EXISTS", "message": "file already exists"})
    assert patch(node, f"{ns}/src1", {"destination": f"{ns}/dst1", "backend": "s3",
                                      "overwrite": True})[0] == 200
    assert in_bucket(node, f"{ns}/dst1") == b"new one"
    assert on_disk(node, f"{ns}/src1") is None and on_disk(node, f"{ns}/dst1") is None
    # Destination on the source's backend: its bytes go from the disk.
    assert node.request("PUT", url(f"{ns}/src2"), b"second")[0] == 201
    assert node.request("PUT", url(f"{ns}/dst2"), b"old")[0] == 201
    assert patch(node, f"{ns}/src2", {"destination": f"{ns}/dst2", "backend": "s3",
                                      "overwrite": True})[0] == 200
    assert on_disk(node, f"{ns}/dst2") is None and on_disk(node, f"{ns}/src2") is None
    assert in_bucket(node, f"{ns}/dst2") == b"second"
    assert node.request("GET", url(f"{ns}/dst2"))[2] == b"second"


def test_a_plain_move_over_a_file_on_the_other_backend_takes_its_bytes(node, ns):
    assert node.request("PUT", url(f"{ns}/s3file"), b"from s3")[0] == 201
    assert patch(node, f"{ns}/s3file", {"destination": f"{ns}/s3file", "backend": "s3"})[0] == 200
    assert node.request("PUT", url(f"{ns}/local"), b"local")[0] == 201
    # No backend asked: the source's (S3) stays, and the replaced local bytes go.
    assert patch(node, f"{ns}/s3file", {"destination": f"{ns}/local", "overwrite": True})[0] == 200
    assert on_disk(node, f"{ns}/local") is None
    assert in_bucket(node, f"{ns}/local") == b"from s3"
    assert in_bucket(node, f"{ns}/s3file") is None
    assert node.request("GET", url(f"{ns}/local"))[2] == b"from s3"


def test_copies_go_to_the_source_backend_or_the_one_asked_for(node, ns):
    assert node.request("PUT", url(f"{ns}/orig"), b"original")[0] == 201
    assert patch(node, f"{ns}/orig", {"destination": f"{ns}/on-s3", "copy": True,
                                      "backend": "s3"})[0] == 201
    assert in_bucket(node, f"{ns}/on-s3") == b"original" and on_disk(node, f"{ns}/on-s3") is None
    assert on_disk(node, f"{ns}/orig") == b"original"  # the source is untouched
    # A copy of an S3 file stays on S3 by default (the source's backend, §9.6)...
    assert patch(node, f"{ns}/on-s3", {"destination": f"{ns}/again", "copy": True})[0] == 201
    assert in_bucket(node, f"{ns}/again") == b"original"
    # ... and comes back to the disk when asked, over an existing S3 file.
    assert patch(node, f"{ns}/orig", {"destination": f"{ns}/again", "copy": True,
                                      "backend": "localfs", "overwrite": True})[0] == 200
    assert in_bucket(node, f"{ns}/again") is None
    assert on_disk(node, f"{ns}/again") == b"original"
    assert node.request("GET", url(f"{ns}/again"))[2] == b"original"


def test_a_directory_never_changes_backend(node, ns):
    assert node.request("PUT", url(f"{ns}/d/f"), b"x")[0] == 201
    assert patch(node, f"{ns}/d", {"destination": f"{ns}/e", "backend": "s3"}) == (400, {
        "code": "BAD_REQUEST",
        "message": "a directory cannot move to another backend or instance; move the files in it"})
    assert patch(node, f"{ns}/d", {"destination": f"{ns}/e", "backend": "s3",
                                   "copy": True})[0] == 400
    assert on_disk(node, f"{ns}/d/f") == b"x"


def test_only_who_may_move_it_moves_its_bytes(node, ns):
    assert node.request("PUT", url(f"{ns}/mine"), b"alice's")[0] == 201
    assert patch(node, f"{ns}/mine", {"destination": f"{ns}/mine", "backend": "s3"},
                 user="bob")[0] == 403
    assert on_disk(node, f"{ns}/mine") == b"alice's" and in_bucket(node, f"{ns}/mine") is None


def test_large_files_move_both_ways_intact(node, ns):
    size = 48 * MIB + 123
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    assert node.request("PUT", url(f"{ns}/big"), data)[0] == 201
    assert patch(node, f"{ns}/big", {"destination": f"{ns}/big", "backend": "s3"})[0] == 200
    assert hashlib.sha256(in_bucket(node, f"{ns}/big")).hexdigest() == digest
    assert hashlib.sha256(node.request("GET", url(f"{ns}/big"))[2]).hexdigest() == digest
    assert patch(node, f"{ns}/big", {"destination": f"{ns}/big2", "backend": "localfs"})[0] == 200
    assert hashlib.sha256(on_disk(node, f"{ns}/big2")).hexdigest() == digest
    assert in_bucket(node, f"{ns}/big") is None
    uploads = node.moto.client().list_multipart_uploads(Bucket=node.bucket).get("Uploads", [])
    assert uploads == []


def test_a_write_while_the_bytes_move_wins_and_one_backend_holds_the_file(node, ns):
    size = 64 * MIB
    path = f"{ns}/busy"
    assert node.request("PUT", url(path), b"a" * size)[0] == 201
    answers = []
    mover = threading.Thread(target=lambda: answers.append(
        patch(node, path, {"destination": path, "backend": "s3"})))
    mover.start()
    assert node.request("PUT", url(path), b"written meanwhile")[0] == 200
    mover.join(60)
    # The move went first, or it saw the newer version and moved nothing (a retryable 503).
    assert answers and (answers[0][0] == 200 or answers[0] == (503, {
        "code": "LOCK_TIMEOUT", "message": "another writer changed the file; try again"})), \
        answers
    assert node.request("GET", url(path))[2] == b"written meanwhile"
    disk, bucket = on_disk(node, path), in_bucket(node, path)
    assert (disk is None) != (bucket is None), (disk and len(disk), bucket and len(bucket))
    assert (disk or bucket) == b"written meanwhile"


def test_a_store_away_fails_the_move_and_keeps_the_file(tmp_path):
    moto = MotoServer(port=None)
    try:
        sections = s3_sections(moto)
        sections["backend"]["default_backend"] = "localfs"
        srv = launch(tmp_path / "node", **sections)
        try:
            assert srv.request("PUT", url("/f"), b"stays on disk")[0] == 201
            moto.stop()
            status, _, body = srv.request("PATCH", url("/f"),
                                          b'{"destination": "/f", "backend": "s3"}')
            assert status in (500, 503), (status, body)
            assert b"<" not in body  # no S3 XML reaches a client
            assert on_disk(srv, "/f") == b"stays on disk"
            assert srv.request("GET", url("/f"))[2] == b"stays on disk"
        finally:
            srv.stop()
    finally:
        moto.stop()


def test_a_process_killed_while_the_bytes_move_leaves_the_file_where_it_was(tmp_path, moto):
    sections = s3_sections(moto)
    sections["backend"]["default_backend"] = "localfs"
    bucket = sections["backend"]["s3_bucket_name"]
    srv = launch(tmp_path / "node", **sections)
    srv.bucket, srv.moto = bucket, moto
    size = 160 * MIB
    data = os.urandom(MIB) * (size // MIB)
    assert srv.request("PUT", url("/f"), data)[0] == 201
    def move():
        try:
            srv.request("PATCH", url("/f"), b'{"destination": "/f", "backend": "s3"}', timeout=30)
        except OSError:
            pass  # the server is killed under it

    mover = threading.Thread(target=move, daemon=True)
    mover.start()
    client = moto.client()
    deadline = time.monotonic() + 20
    while not client.list_multipart_uploads(Bucket=bucket).get("Uploads") \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads"), "no parts were sent"
    srv.stop(signal.SIGKILL)
    mover.join(30)
    srv = launch(tmp_path / "node", **sections)
    srv.bucket, srv.moto = bucket, moto
    try:
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        assert in_bucket(srv, "/f") is None
        assert on_disk(srv, "/f") == data
        assert srv.request("GET", url("/f"))[2] == data
        assert "x-callfs-instance-id" in info(srv, "/f")  # still a local file
        # And the move, asked again, goes through.
        assert srv.request("PATCH", url("/f"), b'{"destination": "/f", "backend": "s3"}')[0] == 200
        assert in_bucket(srv, "/f") == data and on_disk(srv, "/f") is None
    finally:
        srv.stop()
