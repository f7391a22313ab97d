"""Single-use links (API.md §10) against the real server, on SQLite and on PostgreSQL: every
row of the generation and download tables in order, exactly one winner among concurrent
redemptions (one worker and two), tokens refused without a database query, expiry, links
that survive a restart, the sweep, ranges, the Content-Disposition encoding, the read
permission of the generating user, and logs that never carry a token or the secret.

Both endpoints are rate-limited per client address (API.md §11: generation 1 at a time at
100/s, downloads 5 at a time at 10/s), so each request here comes from a loopback address of
its own (127.0.0.0/8 is all loopback) unless a test is about the limit.
"""
import asyncio
import base64
import calendar
import hashlib
import hmac
import itertools
import json
import os
import re
import socket
import sqlite3
import sys
import threading
import time
from urllib.parse import quote

import asyncpg
import pytest

from conftest import SERVICES_UP, launch
from rawhttp import request_bytes
from relay import ThreadedRelay

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "unit"))
import token_oracle  # noqa: E402

SECRET = "link-secret-0123456789"  # conftest.write_config's auth.single_use_link_secret
ALICE = "alice-key-0123456789abcdef"
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{22}==\.[A-Za-z0-9_-]{43}=\Z")
NANOS_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z\Z")
EXPIRES = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z\Z")
# API.md §10.3: the bytes a file name keeps as they are in Content-Disposition.
DISPOSITION_SAFE = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~$&+:=@")
ISSUED: list[str] = []  # every token a test saw: none may appear in a server's log

_sources = itertools.count(os.getpid() % 1000 * 4096)


def fresh_ip() -> str:
    """A loopback address no earlier request of this run came from (a rate-limit bucket of its
    own)."""
    n = next(_sources)
    return f"127.{(n >> 16) % 250 + 1}.{(n >> 8) & 255}.{n & 255}"


# -- servers on both stores -------------------------------------------------------------------

class Site:
    """A server and a way to read its metadata store directly."""

    def __init__(self, kind: str, server, dsn: str | None):
        self.kind, self.server, self.dsn = kind, server, dsn

    def query(self, sql: str, *args) -> list[tuple]:
        if self.kind == "sqlite":
            conn = sqlite3.connect(os.path.join(self.server.workdir, "metadata.sqlite3"))
            try:
                rows = conn.execute(sql.replace("$1", "?").replace("$2", "?"), args).fetchall()
                conn.commit()
                return rows
            finally:
                conn.close()

        async def fetch():
            conn = await asyncpg.connect(self.dsn)
            try:
                return [tuple(row) for row in await conn.fetch(sql, *args)]
            finally:
                await conn.close()
        return asyncio.run(fetch())


def store_sections(kind: str, dsn: str | None) -> dict:
    return {"metadata_store": {"type": "postgres", "dsn": dsn}} if kind == "postgres" else {}


def needs_postgres(kind: str) -> None:
    if kind == "postgres" and not SERVICES_UP:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (run ci/services.sh)")


def assert_no_secrets(server) -> None:
    log = server.log()
    assert SECRET not in log
    assert hashlib.sha256(SECRET.encode()).hexdigest() not in log
    assert base64.b64encode(hashlib.sha256(SECRET.encode()).digest()).decode() not in log
    for token in ISSUED:
        assert token not in log and token.split(".")[0] not in log, "a token reached the log"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def site(request, tmp_path_factory):
    needs_postgres(request.param)
    dsn = request.getfixturevalue("module_database") if request.param == "postgres" else None
    srv = launch(tmp_path_factory.mktemp(f"links-{request.param}"),
                 **store_sections(request.param, dsn))
    yield Site(request.param, srv, dsn)
    code = srv.stop()
    assert code == 0, srv.log()
    assert_no_secrets(srv)


@pytest.fixture(params=["sqlite", "postgres"])
def store_kind(request):
    needs_postgres(request.param)
    return request.param


@pytest.fixture
def dsn_for(request):
    """The DSN of a fresh PostgreSQL database for a postgres test, None for SQLite."""
    def get(kind: str):
        return request.getfixturevalue("database") if kind == "postgres" else None
    return get


# -- requests ---------------------------------------------------------------------------------

def call(srv, method: str, path: str, body: bytes | None = None, headers=None,
         key: str | None = ALICE, ip: str | None = None):
    """(status, lower-cased headers, body) from a fresh connection of its own address."""
    return srv.request(method, path, body=body, headers=headers, user=key,
                       source=ip or fresh_ip())


def generate(srv, path, expiry=60, *, key=ALICE, raw: bytes | None = None, ip=None):
    """(status, parsed body) of POST /v1/links/generate."""
    body = raw if raw is not None else json.dumps({"path": path, "expiry_seconds": expiry}).encode()
    status, _, data = call(srv, "POST", "/v1/links/generate", body,
                           {"Content-Type": "application/json"}, key=key, ip=ip)
    parsed = json.loads(data) if data else None
    if status == 201:
        ISSUED.append(parsed["token"])
    return status, parsed


def link(srv, path, expiry=60, **kwargs) -> str:
    status, body = generate(srv, path, expiry, **kwargs)
    assert status == 201, body
    return body["token"]


def download(srv, token: str, headers=None, ip=None):
    return call(srv, "GET", "/download/" + token, headers=headers, key=None, ip=ip)


def put(srv, path: str, data: bytes, headers=None, key=ALICE):
    status, _, body = call(srv, "PUT", "/v1/files" + quote(path), data, headers, key=key)
    assert status in (200, 201), body
    return status


def code(body) -> str:
    return (json.loads(body) if isinstance(body, bytes) else body)["code"]


def pipelined(srv, requests: list[bytes], ip: str) -> list[tuple[int, bytes]]:
    """Send every request at once on one connection; (status, body) of each answer."""
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30, source_address=(ip, 0))
    reader = sock.makefile("rb")
    try:
        sock.sendall(b"".join(requests))
        answers = []
        for _ in requests:
            status = int(reader.readline().split(b" ", 2)[1])
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answers.append((status, reader.read(length)))
        return answers
    finally:
        reader.close()
        sock.close()


RATE_LIMITED = b'{"code":"RATE_LIMIT_EXCEEDED","message":"Rate limit exceeded"}'


# -- POST /v1/links/generate: the rows of API.md §10.1, in order ------------------------------

def test_generate_needs_a_key(site):
    srv = site.server
    for key in (None, "wrong-key-0123456789abcdef", f"bearer {ALICE}"):
        status, body = generate(srv, "/anything", key=key)
        assert status == 401 and body == {"code": "AUTHENTICATION_FAILED",
                                          "message": "authentication failed"}
    # Authentication runs before the method check, as everywhere under /v1/.
    assert call(srv, "GET", "/v1/links/generate", key=None)[0] == 401
    status, headers, _ = call(srv, "GET", "/v1/links/generate")
    assert status == 405 and headers["allow"] == "POST"


def test_generate_rate_limit_runs_after_authentication(site):
    srv = site.server
    put(srv, "/rl/f", b"x")
    ip = fresh_ip()
    good = json.dumps({"path": "/rl/f", "expiry_seconds": 60}).encode()
    answers = pipelined(srv, [
        request_bytes("POST", "/v1/links/generate", "wrong-key-0123456789abcdef", good),
        request_bytes("POST", "/v1/links/generate", ALICE, b"not json"),
        request_bytes("POST", "/v1/links/generate", ALICE, good),
        request_bytes("POST", "/v1/links/generate", ALICE, b"not json"),
    ], ip)
    # A refused key spends nothing; the bucket holds one request (spent by the bad body);
    # over it, 429 comes before the body is looked at.
    assert [status for status, _ in answers] == [401, 400, 429, 429]
    assert answers[2][1] == answers[3][1] == RATE_LIMITED
    time.sleep(0.05)  # 100 per second: the bucket is full again
    assert generate(srv, "/rl/f", ip=ip)[0] == 201


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"{", b'{"path": "/a", "expiry_seconds": 60', b"[]", b'"text"', b"42",
    b'{"path": 5, "expiry_seconds": 60}', b'{"path": ["/a"], "expiry_seconds": 60}',
    b'{"path": "/a", "expiry_seconds": "60"}', b'{"path": "/a", "expiry_seconds": 3600.0}',
    b'{"path": "/a", "expiry_seconds": 1e3}', b'{"path": "/a", "expiry_seconds": true}',
    b'{"path": "/a", "expiry_seconds": false}', b'{"path": "/a", "expiry_seconds": [60]}',
    b'{"path": "/a", "expiry_seconds": 9223372036854775808}',
    b'{"path": "/a", "expiry_seconds": NaN}', b'{"path": "/a", "PATH": 7}',
], ids=lambda raw: raw.decode()[:40] or "empty")
def test_generate_refuses_bad_json_first(site, raw):
    # Type errors come before everything else: /a does not exist, yet the answer is 400.
    status, body = generate(site.server, None, raw=raw)
    assert status == 400 and body["code"] == "BAD_REQUEST", body


def test_generate_refuses_a_body_over_4096_bytes(site):
    srv = site.server
    put(srv, "/big/f", b"x")
    small = json.dumps({"path": "/big/f", "expiry_seconds": 60, "pad": ""})
    exact = small.replace('"pad": ""', '"pad": "' + "p" * (4096 - len(small)) + '"')
    assert len(exact) == 4096
    assert generate(srv, None, raw=exact.encode())[0] == 201
    over = exact.replace('"pad": "', '"pad": "p')
    status, body = generate(srv, None, raw=over.encode())
    assert status == 400 and body["code"] == "BAD_REQUEST"
    # Chunked, so no Content-Length announces it: counted as it arrives.
    ip = fresh_ip()
    chunked = (b"POST /v1/links/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
               + ALICE.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n" % len(over) + over.encode() + b"\r\n0\r\n\r\n")
    assert pipelined(srv, [chunked], ip)[0][0] == 400


@pytest.mark.parametrize("raw", [b"{}", b"null", b'{"path": ""}', b'{"path": null}',
                                 b'{"expiry_seconds": 60}', b'{"path": "", "expiry_seconds": 60}'])
def test_generate_needs_a_path(site, raw):
    status, body = generate(site.server, None, raw=raw)
    assert status == 400 and body["code"] == "BAD_REQUEST", body


@pytest.mark.parametrize("path", ["..", "/../x", "a/../..", "/a\\b", "/a\x00b", "/a\x01b",
                                  "/bidi\u202e", "/" + "s" * 256, "/a%2Fb/../../.."])
def test_generate_refuses_invalid_paths(site, path):
    status, body = generate(site.server, path, 0)  # the range is checked later still
    assert status == 400 and body["code"] == "INVALID_PATH", (path, body)


@pytest.mark.parametrize("expiry", [60, 0, None, -1, 86401])
def test_generate_missing_path_is_404_before_the_expiry_range(site, expiry):
    status, body = generate(site.server, "/no/such/file", expiry)
    assert status == 404 and body["code"] == "FILE_NOT_FOUND"


@pytest.mark.parametrize("raw", [b'{"path": "/range/f"}', b'{"path": "/range/f", "expiry_seconds": null}',
                                 b'{"path": "/range/f", "expiry_seconds": 0}',
                                 b'{"path": "/range/f", "expiry_seconds": -5}',
                                 b'{"path": "/range/f", "expiry_seconds": 86401}'])
def test_generate_expiry_out_of_range(site, raw):
    put(site.server, "/range/f", b"x")
    status, body = generate(site.server, None, raw=raw)
    assert status == 400 and body["code"] == "BAD_REQUEST", body


def test_generate_success(site):
    srv = site.server
    put(srv, "/ok/dir/file.txt", b"content")
    before = time.time()
    status, body = generate(srv, "ok//dir/./file.txt", 86400)  # leading '/' optional, §5.1
    after = time.time()
    assert status == 201
    assert set(body) == {"url", "token", "expires"}
    token = body["token"]
    assert TOKEN_SHAPE.match(token)
    assert body["url"] == f"http://127.0.0.1:{srv.port}/download/{token}"
    # Signed over the canonical path with SHA-256 of the configured secret (API.md §10.2).
    assert token_oracle.LinkSigner(SECRET).verify(token, "/ok/dir/file.txt")
    assert EXPIRES.match(body["expires"]) and "." in body["expires"]
    stamp = calendar.timegm(time.strptime(body["expires"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert before + 86400 - 1 <= stamp <= after + 86400
    # Bounds of the range, and a directory (the download will fail, the link is made).
    assert generate(srv, "/ok/dir/file.txt", 1)[0] == 201
    assert generate(srv, "/ok/dir", 60)[0] == 201
    # Only the first JSON value is read; unknown fields are ignored; names match in any case.
    assert generate(srv, None, raw=b' {"path": "/ok/dir/file.txt", "expiry_seconds": 5,'
                                   b' "extra": {"x": [1]}} trailing {garbage')[0] == 201
    assert generate(srv, None, raw=b'{"Path": "/ok/dir/file.txt", "EXPIRY_SECONDS": 5}')[0] == 201
    assert generate(srv, None, raw=b'{"path": "/ok/dir/file.txt", "expiry_seconds": 5,'
                                   b' "expiry_seconds": null}')[0] == 201
    rows = site.query("SELECT file_path, status, hmac_signature, expires_at, used_at, used_by_ip,"
                      " created_at FROM single_use_links WHERE token = $1", token)
    assert len(rows) == 1
    path, state, signature, expires_at, used_at, used_by, created = rows[0]
    assert (path, state, signature, used_at, used_by) == (
        "/ok/dir/file.txt", "active", token.split(".")[1], None, None)
    if site.kind == "sqlite":  # Appendix A: RFC 3339 UTC text with nanoseconds
        assert NANOS_STAMP.match(expires_at) and NANOS_STAMP.match(created)
        assert expires_at[:19] == body["expires"][:19]
    else:
        assert abs(expires_at.timestamp() - stamp) < 1


def test_generating_needs_read_permission(site):
    """API.md §7 (unix model): read permission on the file; a path the caller may not search
    is 404; the 403 comes right after the 404 row, before the expiry range."""
    srv = site.server
    put(srv, "/perm/private.txt", b"secret", {"X-CallFS-Mode": "0600"})
    put(srv, "/perm/shared.txt", b"shared", {"X-CallFS-Mode": "0644"})
    status, body = generate(srv, "/perm/private.txt", key="bob-key-0123456789abcdef")
    assert status == 403 and body["code"] == "PERMISSION_DENIED"
    status, body = generate(srv, "/perm/private.txt", 0, key="bob-key-0123456789abcdef")
    assert status == 403, body
    assert generate(srv, "/perm/shared.txt", key="bob-key-0123456789abcdef")[0] == 201
    assert generate(srv, "/perm/private.txt")[0] == 201  # the owner may
    assert generate(srv, "/perm/private.txt", key="internal-secret-0123456789")[0] == 201
    # A directory bob may not search: its entries are hidden, existing or not.
    status, _, _ = call(srv, "POST", "/v1/files/perm/closed/", headers={"X-CallFS-Mode": "0700"})
    assert status == 201
    put(srv, "/perm/closed/inner.txt", b"x")
    for path in ("/perm/closed/inner.txt", "/perm/closed/missing.txt"):
        status, body = generate(srv, path, key="bob-key-0123456789abcdef")
        assert status == 404 and body["code"] == "FILE_NOT_FOUND", path
    # A link made by one who may read serves anyone: it carries no identity.
    token = link(srv, "/perm/private.txt")
    assert download(srv, token)[2] == b"secret"


# -- GET /download/{token}: the rows of API.md §10.3, in order --------------------------------

def test_download_rate_limit_runs_first(site):
    srv = site.server
    ip = fresh_ip()
    answers = pipelined(srv, [request_bytes("GET", "/download/malformed", None)] * 8, ip)
    # Five at once, then 429 (10 per second refill: a few milliseconds add nothing).
    assert [status for status, _ in answers[:5]] == [404] * 5
    assert all(answer == (429, RATE_LIMITED) for answer in answers[6:])
    time.sleep(0.25)
    assert download(srv, "malformed", ip=ip)[0] == 404


def test_download_unknown_and_malformed_tokens(site):
    srv = site.server
    signer = token_oracle.LinkSigner(SECRET)
    never_issued = signer.token_for(os.urandom(16), "/whatever")
    good = link(srv, _file(srv, "/unk/f", b"abc"))
    for token in (never_issued, "x", "A" * 69, good[:-1], good + "A", good.replace(".", "_"),
                  good[:24] + "." + good[24:-1], good.swapcase()):
        status, headers, body = download(srv, token)
        assert status == 404 and code(body) == "LINK_NOT_FOUND", token
        assert headers["content-type"] == "application/json"
    # None of that touched the real link.
    assert download(srv, good)[0] == 200


def test_download_expired_then_used(site):
    srv = site.server
    path = _file(srv, "/exp/f", b"abc")
    expired = link(srv, path, 1)
    used_then_expired = link(srv, path, 1)
    assert download(srv, used_then_expired)[0] == 200
    time.sleep(1.3)
    for token in (expired, used_then_expired):  # expiry is checked before use (§10.4)
        status, _, body = download(srv, token)
        assert status == 410 and code(body) == "LINK_EXPIRED"
    fresh = link(srv, path)
    assert download(srv, fresh)[0] == 200
    status, _, body = download(srv, fresh)
    assert status == 410 and code(body) == "LINK_USED"


def test_download_success_serves_current_bytes_with_link_headers(site):
    srv = site.server
    path = _file(srv, "/succ/report 2026.txt", b"first")
    token = link(srv, path)
    put(srv, path, b"the content at download time")
    status, headers, body = download(srv, token)
    assert status == 200 and body == b"the content at download time"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-disposition"] == "attachment; filename*=UTF-8''report%202026.txt"
    assert headers["content-length"] == str(len(body))
    assert not [name for name in headers if name.startswith("x-callfs-")]
    assert headers["x-content-type-options"] == "nosniff" and "x-request-id" in headers
    # The store records the use (Appendix A).
    rows = site.query("SELECT status, used_at, used_by_ip FROM single_use_links"
                      " WHERE token = $1", token)
    assert rows[0][0] == "used" and rows[0][1] is not None
    used_by = str(rows[0][2])
    assert used_by.startswith("127.") or used_by.startswith("::ffff:127.")
    if site.kind == "sqlite":
        assert NANOS_STAMP.match(rows[0][1])


def test_download_percent_encoded_token(site):
    srv = site.server
    token = link(srv, _file(srv, "/pct/f", b"abc"))
    assert download(srv, token.replace("=", "%3D"))[2] == b"abc"
    status, headers, body = download(srv, token[:10] + "%zz" + token[13:])
    assert status == 400


def test_download_methods_and_shapes(site):
    srv = site.server
    token = link(srv, _file(srv, "/meth/f", b"abc"))
    for method in ("HEAD", "POST", "PUT", "DELETE"):
        status, headers, _ = call(srv, method, "/download/" + token, key=None)
        assert status == 405 and headers["allow"] == "GET", method
    for target in ("/download/", "/download/a/b", "/download"):
        status, headers, body = call(srv, "GET", target, key=None)
        assert (status, body) == (404, b"404 page not found\n"), target
    assert download(srv, token)[2] == b"abc"  # none of that used the link


def test_download_of_a_deleted_or_renamed_file_uses_the_link(site):
    srv = site.server
    path = _file(srv, "/del/f", b"abc")
    deleted, renamed = link(srv, path), link(srv, path)
    assert call(srv, "DELETE", "/v1/files/del/f")[0] == 204
    status, _, body = download(srv, deleted)
    assert status == 404 and code(body) == "FILE_NOT_FOUND"
    assert download(srv, deleted)[0] == 410  # consumed all the same (§10.4)
    put(srv, "/del/g", b"other")
    token = link(srv, "/del/g")
    status, _, _ = call(srv, "PATCH", "/v1/files/del/g", json.dumps({"name": "h"}).encode(),
                        {"Content-Type": "application/json"})
    assert status == 200
    assert download(srv, token)[0] == 404
    assert download(srv, renamed)[0] == 404


def test_download_of_a_directory_is_500_masked(site):
    srv = site.server
    assert call(srv, "POST", "/v1/files/dirlink/")[0] == 201
    token = link(srv, "/dirlink")
    status, _, body = download(srv, token)
    assert status == 500
    assert json.loads(body) == {"code": "INTERNAL_ERROR", "message": "an internal error occurred"}
    assert download(srv, token)[0] == 410


def test_download_range(site):
    srv = site.server
    data = bytes(range(256)) * 40
    path = _file(srv, "/rng/f.bin", data)
    token = link(srv, path)
    status, headers, body = download(srv, token, {"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200]
    assert headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert headers["content-length"] == "100"
    assert download(srv, token, {"Range": "bytes=0-"})[0] == 410  # single use, ranges too
    token = link(srv, path)
    status, headers, _ = download(srv, token, {"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(data)}"
    token = link(srv, path)
    assert download(srv, token, {"Range": "bytes=-10"})[2] == data[-10:]
    token = link(srv, path)  # conditional headers cannot turn a download into a 304
    status, _, body = download(srv, token, {"If-None-Match": "*",
                                            "If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"})
    assert status == 200 and body == data


@pytest.mark.parametrize("name", ["a b.txt", "naïve ü.txt", "100%.txt", 'say "hi".txt',
                                  "$&+:=@-_.~", "x;y,z'(*)!#", "中文.pdf", "tab\there", "+plus"])
def test_content_disposition_encoding(site, name):
    srv = site.server
    path = _file(srv, f"/cd/{name}", b"abc")
    status, headers, _ = download(srv, link(srv, path))
    assert status == 200
    expected = "".join(chr(b) if b in DISPOSITION_SAFE else f"%{b:02X}" for b in name.encode())
    assert headers["content-disposition"] == "attachment; filename*=UTF-8''" + expected


def test_forged_token_in_the_store_is_410_and_not_consumed(site):
    """Signature checked against the stored path before the link is used (§10.3)."""
    srv = site.server
    path = _file(srv, "/forged/f", b"abc")
    other = token_oracle.LinkSigner("another-secret").token_for(os.urandom(16), path)
    ISSUED.append(other)
    far = "2099-01-01T00:00:00.000000000Z"
    if site.kind == "sqlite":
        site.query("INSERT INTO single_use_links (token, file_path, status, expires_at,"
                   " hmac_signature, created_at, updated_at) VALUES ($1, $2, 'active', ?, 'x', ?, ?)",
                   other, path, far, far, far)
    else:
        site.query("INSERT INTO single_use_links (token, file_path, status, expires_at,"
                   " hmac_signature) VALUES ($1, $2, 'active', '2099-01-01Z', 'x')", other, path)
    status, _, body = download(srv, other)
    assert status == 410 and json.loads(body)["code"] == "LINK_NOT_FOUND"
    assert site.query("SELECT status FROM single_use_links WHERE token = $1", other) == [("active",)]
    # A genuine token for another path in the same row would not verify either.
    genuine = link(srv, path)
    site.query("UPDATE single_use_links SET file_path = '/forged/g' WHERE token = $1", genuine)
    assert download(srv, genuine)[0] == 410


def _file(srv, path: str, data: bytes) -> str:
    put(srv, path, data)
    return path


# -- one winner -------------------------------------------------------------------------------

def race(srv, token: str, count: int = 50) -> list[int]:
    """`count` redemptions of `token` at once, each on its own connection from its own
    address: every connection is open and the request written but for its last byte before
    any is finished."""
    request = request_bytes("GET", "/download/" + token, None)
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=60,
                                      source_address=(fresh_ip(), 0)) for _ in range(count)]
    for sock in socks:
        sock.sendall(request[:-1])
    barrier = threading.Barrier(count)
    statuses = [None] * count

    def one(index, sock):
        barrier.wait()
        sock.sendall(request[-1:])
        reader = sock.makefile("rb")
        statuses[index] = int(reader.readline().split(b" ", 2)[1])
        while reader.readline() not in (b"\r\n", b""):
            pass
        reader.close()
        sock.close()

    threads = [threading.Thread(target=one, args=(i, s)) for i, s in enumerate(socks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return statuses


def test_fifty_concurrent_redemptions_one_winner(site):
    srv = site.server
    path = _file(srv, "/race/f", b"x" * 100_000)
    for _ in range(3):
        statuses = race(srv, link(srv, path))
        assert sorted(statuses) == [200] + [410] * 49, statuses


def test_one_winner_with_two_workers(tmp_path, store_kind, dsn_for):
    srv = launch(tmp_path / "w2", workers=2, **store_sections(store_kind, dsn_for(store_kind)))
    try:
        path = _file(srv, "/race/f", b"y" * 100_000)
        for _ in range(3):
            statuses = race(srv, link(srv, path))
            assert sorted(statuses) == [200] + [410] * 49, statuses
    finally:
        assert srv.stop() == 0
        assert_no_secrets(srv)


# -- without the database, across restarts, the sweep ----------------------------------------

@pytest.mark.skipif(not SERVICES_UP, reason="PostgreSQL is not reachable (run ci/services.sh)")
def test_malformed_tokens_are_refused_without_the_database(tmp_path, database):
    """A token of the wrong shape never reaches the store: with PostgreSQL behind a relay that
    is then taken away, malformed tokens still answer 404 at once, while a well-formed one
    (which must be looked up) and a generation answer 500."""
    relay = ThreadedRelay(5432)
    relay.start()
    srv = launch(tmp_path / "nodb", **store_sections(
        "postgres", database.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}")))
    try:
        token = link(srv, _file(srv, "/nodb/f", b"abc"))
        relay.stop()
        started = time.monotonic()
        for malformed in ("x", token[:-1], token.replace(".", "-"), "A" * 69, token + "="):
            status, _, body = download(srv, malformed)
            assert status == 404 and code(body) == "LINK_NOT_FOUND"
        assert time.monotonic() - started < 2
        status, _, body = download(srv, token)
        assert status == 500 and code(body) == "INTERNAL_ERROR"
        status, body = generate(srv, "/nodb/f")
        assert status in (500, 503), body  # the stat of the path fails first
        relay.start()
        deadline = time.monotonic() + 20
        while download(srv, token)[0] == 500 and time.monotonic() < deadline:
            time.sleep(0.2)
        # The failed attempt did not use the link: the store never answered.
        assert download(srv, link(srv, "/nodb/f"))[2] == b"abc"
    finally:
        srv.stop()
        relay.close()
        assert_no_secrets(srv)


def test_links_survive_a_restart(tmp_path, store_kind, dsn_for):
    sections = store_sections(store_kind, dsn_for(store_kind))
    first = launch(tmp_path / "r", **sections)
    try:
        token = link(first, _file(first, "/keep/f", b"kept"))
    finally:
        assert first.stop() == 0
    second = launch(tmp_path / "r", **sections)
    try:
        assert download(second, token)[2] == b"kept"
        assert download(second, token)[0] == 410
    finally:
        assert second.stop() == 0
        assert_no_secrets(second)


def test_a_new_link_secret_invalidates_outstanding_links(tmp_path):
    first = launch(tmp_path / "s")
    try:
        token = link(first, _file(first, "/sec/f", b"abc"))
    finally:
        first.stop()
    other = launch(tmp_path / "s", auth={"single_use_link_secret": "a-different-secret-42"})
    try:
        assert download(other, token)[0] == 410
    finally:
        other.stop()
    again = launch(tmp_path / "s")
    try:
        assert download(again, token)[2] == b"abc"  # the refusal did not use it
    finally:
        again.stop()


SWEEP_HOOK = """\
import callfs.core.links as links
links.SWEEP_INTERVAL = 0.4
"""


def test_sweep_removes_expired_and_old_used_links(tmp_path, store_kind, dsn_for):
    """The server's own sweeper (its interval shortened for the test): expired active links
    and links used more than 24 hours ago go; live and recently used links stay."""
    from callfs.core import links as core_links
    assert core_links.SWEEP_INTERVAL == 300 and core_links.USED_RETENTION_NS == 24 * 3600 * 10**9
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SWEEP_HOOK)
    from conftest import PACKAGE_HOME
    dsn = dsn_for(store_kind)
    srv = launch(tmp_path / "sw", env={"PYTHONPATH": f"{hook}{os.pathsep}{PACKAGE_HOME}"},
                 **store_sections(store_kind, dsn))
    site = Site(store_kind, srv, dsn)
    try:
        path = _file(srv, "/sw/f", b"abc")
        expired, live = link(srv, path, 1), link(srv, path, 3600)
        old_used, recently_used = link(srv, path), link(srv, path)
        assert download(srv, old_used)[0] == 200 and download(srv, recently_used)[0] == 200
        long_ago = time.time() - 25 * 3600
        if store_kind == "sqlite":
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime(long_ago))
            site.query("UPDATE single_use_links SET used_at = ? WHERE token = ?", stamp, old_used)
        else:
            site.query("UPDATE single_use_links SET used_at = to_timestamp($2) WHERE token = $1",
                       old_used, long_ago)
        deadline = time.monotonic() + 15
        remaining = None
        while time.monotonic() < deadline:
            remaining = {row[0] for row in site.query("SELECT token FROM single_use_links")}
            if expired not in remaining and old_used not in remaining:
                break
            time.sleep(0.2)
        assert expired not in remaining and old_used not in remaining
        assert live in remaining and recently_used in remaining
        # A purged token is unknown: 404, not 410.
        assert download(srv, expired)[0] == 404 and download(srv, old_used)[0] == 404
        assert download(srv, recently_used)[0] == 410 and download(srv, live)[0] == 200
    finally:
        assert srv.stop() == 0
        assert_no_secrets(srv)
