"""A file whose bytes on disk are not what its metadata records (issue 15, item 7).

Bytes replaced by a directory, truncated, extended or deleted behind the server's back (a disk
replaced, an operator's mistake): GET, HEAD and Range requests answer a logged 500 with the
request id, never a 2xx whose headers the body cannot honour, and the connection stays usable.
PUT over an entry whose bytes are a directory says that storage is inconsistent, not that the
namespace holds a directory.
"""
import json
import os
import shutil
import time
import urllib.parse
import uuid

import pytest

from conftest import KEYS
from callfs.http.hotpath import SMALL_FILE

CONTENT = bytes(range(256)) * 4  # 1 KiB: small enough for the hot path's cached bodies
INCONSISTENT = "the file's stored bytes do not match its metadata"
AUTH = {"Authorization": f"Bearer {KEYS['alice']}"}


def url(path: str) -> str:
    return "/v1/files" + urllib.parse.quote(path, safe="/")


def put(server, path: str, body: bytes = CONTENT) -> None:
    status, _, data = server.request("PUT", url(path), body=body)
    assert status in (200, 201), (status, data)


def recorded_stamp(server, path: str) -> int:
    """The bytes' mtime as written: the stamp the metadata records for them."""
    return os.stat(server.disk(path)).st_mtime_ns


def as_directory(disk: str, stamp: int) -> None:
    os.unlink(disk)
    os.mkdir(disk)
    with open(os.path.join(disk, "inside"), "wb") as fh:
        fh.write(b"not the file")


def truncated(disk: str, stamp: int) -> None:
    os.truncate(disk, len(CONTENT) // 2)
    os.utime(disk, ns=(stamp, stamp))  # as a restore that keeps times would leave it


def extended(disk: str, stamp: int) -> None:
    with open(disk, "ab") as fh:
        fh.write(b"more bytes than recorded")
    os.utime(disk, ns=(stamp, stamp))


def older(disk: str, stamp: int) -> None:
    with open(disk, "wb") as fh:
        fh.write(b"an older version, restored from a backup")
    os.utime(disk, ns=(stamp - 10**9, stamp - 10**9))


def deleted(disk: str, stamp: int) -> None:
    os.unlink(disk)


DAMAGE = {"directory": as_directory, "truncated": truncated, "extended": extended,
          "older": older, "deleted": deleted}


def damaged(server, ns: str, how: str) -> str:
    path = f"{ns}/f.bin"
    put(server, path)
    # Served once while whole, so the metadata cache (and the hot path) know the entry.
    assert server.request("GET", url(path))[2] == CONTENT
    DAMAGE[how](server.disk(path), recorded_stamp(server, path))
    return path


def error_records(server, request_id: str) -> list[dict]:
    return server.wait_records(lambda record: record.get("request_id") == request_id
                               and record.get("level") == "error")


def assert_logged_500(server, status, headers, body, request_id, method="GET", missing=False):
    """The answer to a read of damaged bytes: 500 with the masked message — or, for bytes that
    are gone altogether, 404 FILE_NOT_FOUND (API.md §9.1) — and an error record of it."""
    expected = (404, {"code": "FILE_NOT_FOUND", "message": "file not found"}) if missing else \
        (500, {"code": "INTERNAL_ERROR", "message": INCONSISTENT})
    assert status == expected[0], (status, headers, body)
    assert headers.get("x-request-id") == request_id
    if method != "HEAD":
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == expected[1]
        assert b"Traceback" not in body and server.root.encode() not in body
    records = error_records(server, request_id)
    assert records, f"no error logged for {request_id}"
    assert "exception" not in records[0]  # an expected finding, not a crash


def ask(conn, method: str, path: str, extra=None):
    request_id = f"inconsistent-{uuid.uuid4().hex}"
    headers = dict(AUTH, **{"X-Request-ID": request_id}, **(extra or {}))
    conn.request(method, url(path), headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, request_id


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_reads_of_bytes_that_are_not_the_recorded_file_answer_a_logged_500(server, ns, how):
    path = damaged(server, ns, how)
    put(server, f"{ns}/good.bin", b"whole")
    conn = server.connect(timeout=20)
    try:
        # Twice each: the second request of a kind may meet the entry in the metadata cache.
        for method, extra in [("GET", None), ("HEAD", None), ("GET", {"Range": "bytes=0-9"}),
                              ("GET", {"Range": "bytes=-5"}), ("HEAD", None), ("GET", None)]:
            status, headers, body, request_id = ask(conn, method, path, extra)
            assert_logged_500(server, status, headers, body, request_id, method,
                              missing=how == "deleted")
            if headers.get("connection", "").lower() == "close":
                conn.close()
        # The same connection (or a new one, had the server closed it cleanly) goes on.
        status, _, body, _ = ask(conn, "GET", f"{ns}/good.bin")
        assert (status, body) == (200, b"whole")
    finally:
        conn.close()
    # The entry is still listed as the metadata has it; nothing on disk was changed.
    status, _, body = server.request("GET", url(ns))
    assert status == 200
    assert {item["name"]: item["size"] for item in json.loads(body)}["f.bin"] == len(CONTENT)
    if how == "directory":
        assert os.listdir(server.disk(path)) == ["inside"]
    elif how == "deleted":
        assert not os.path.exists(server.disk(path))
    shutil.rmtree(server.disk(ns), ignore_errors=True)


def test_newer_bytes_with_no_write_in_flight_answer_500(server, ns):
    """Bytes newer than their record belong to a write between publishing and recording while
    one is in flight (the path is busy from before it publishes); with none (an operator's
    edit), the read answers 500 without waiting for a record."""
    path = f"{ns}/edited.bin"
    put(server, path)
    with open(server.disk(path), "ab") as fh:
        fh.write(b"appended by hand")
    started = time.monotonic()
    conn = server.connect(timeout=30)
    try:
        status, headers, body, request_id = ask(conn, "GET", path)
        assert_logged_500(server, status, headers, body, request_id)
    finally:
        conn.close()
    assert time.monotonic() - started < 15


def test_the_recorded_file_is_served_again_once_its_bytes_are_put_back(server, ns):
    path = f"{ns}/f.bin"
    put(server, path)
    disk = server.disk(path)
    stamp = recorded_stamp(server, path)
    os.rename(disk, disk + ".saved")
    assert server.request("GET", url(path))[0] == 404  # gone (API.md §9.1), and logged
    os.rename(disk + ".saved", disk)
    os.truncate(disk, 3)
    assert server.request("GET", url(path))[0] == 500  # not the recorded size
    with open(disk, "wb") as fh:
        fh.write(CONTENT)
    os.utime(disk, ns=(stamp, stamp))
    status, headers, body = server.request("GET", url(path))
    assert (status, body) == (200, CONTENT)
    assert server.request("HEAD", url(path))[0] == 200


def test_put_over_a_directory_where_the_file_should_be_says_storage_is_inconsistent(server, ns):
    path = damaged(server, ns, "directory")
    status, headers, body = server.request("PUT", url(path), body=b"new content",
                                           headers={"X-Request-ID": "put-over-directory-1"})
    assert status == 500, (status, body)
    assert headers["x-request-id"] == "put-over-directory-1"
    assert json.loads(body) == {"code": "INTERNAL_ERROR", "message": INCONSISTENT}
    assert b"directory exists" not in body
    assert error_records(server, "put-over-directory-1")
    # Nothing was overwritten or left behind: the directory and its content stay, the metadata
    # still records the old file, no staged file remains.
    assert os.listdir(server.disk(path)) == ["inside"]
    assert not [name for name in os.listdir(server.disk(ns)) if name.startswith(".callfs-tmp-")]
    status, headers, _ = server.request("GET", url(ns))
    assert status == 200
    shutil.rmtree(server.disk(ns), ignore_errors=True)


def test_put_over_missing_bytes_stores_the_new_content(server, ns):
    """A PUT replaces the content whatever the disk held: missing bytes are simply written."""
    path = damaged(server, ns, "deleted")
    status, _, _ = server.request("PUT", url(path), body=b"fresh")
    assert status == 200
    assert server.request("GET", url(path))[2] == b"fresh"
    status, headers, _ = server.request("HEAD", url(path))
    assert (status, headers["x-callfs-size"]) == (200, "5")


def plain_reads_after_damage(server, ns, how, size, methods):
    """Plain requests (no header that sends them down the general route) of a file whose
    entry the metadata cache holds and the hot path has prepared, damaged afterwards: a list
    of (method, status, headers, body) and the content."""
    path = f"{ns}/f.bin"
    content = (CONTENT * (size // len(CONTENT) + 1))[:size]
    put(server, path, content)
    conn = server.connect(timeout=20)
    answers = []
    try:
        for method in ("GET", "HEAD", "GET", "HEAD"):
            conn.request(method, url(path), headers=AUTH)
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, content if method == "GET" else b"")
        DAMAGE[how](server.disk(path), recorded_stamp(server, path))
        for method in methods:
            conn.request(method, url(path), headers=AUTH)
            resp = conn.getresponse()
            data = resp.read()
            answers.append((method, resp.status, {k.lower(): v for k, v in resp.getheaders()},
                            data))
    finally:
        conn.close()
        shutil.rmtree(server.disk(ns), ignore_errors=True)
    return answers, content


SIZES = [len(CONTENT), 300 * 1024]  # a body the hot path keeps in memory, and one too large
HOT_DAMAGE = ["directory", "truncated", "deleted"]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("how", HOT_DAMAGE)
def test_plain_gets_never_send_bytes_other_than_the_recorded_ones(server, ns, how, size):
    answers, content = plain_reads_after_damage(server, ns, how, size, ["GET"] * 3)
    for method, status, headers, body in answers:
        if status == 200:
            # Only the recorded content, kept in memory by the hot path, may still be served.
            assert body == content and int(headers["content-length"]) == size
            continue
        assert_logged_500(server, status, headers, body, headers["x-request-id"], method,
                          missing=how == "deleted")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("how", HOT_DAMAGE)
def test_plain_heads_of_damaged_bytes_answer_500(server, ns, how, size):
    """A HEAD promises what a GET would send: 200 only while the hot path keeps the recorded
    content in memory (a small file); a large file's bytes are asked of the disk each time."""
    answers, _ = plain_reads_after_damage(server, ns, how, size, ["HEAD", "GET", "HEAD"])
    for method, status, headers, body in answers:
        if status == 200 and size <= SMALL_FILE:
            assert int(headers["content-length"]) == size
            continue
        assert_logged_500(server, status, headers, body, headers["x-request-id"], method,
                          missing=how == "deleted")
