"""PATCH /v1/files/{path}: rename, move and copy (API.md §9.6), as a client sees them.

Every row of the §9.6 table, files and whole subtrees, `overwrite` and `create_parents`,
conditional moves, copies (empty files, deep subtrees, unicode names), and the state left on
disk: bytes at the new place, nothing at the old one, no temporaries or intents.
"""
import json
import os
import time

from urllib.parse import quote

import pytest

from conftest import SERVICES_UP, launch, random_bytes, s3_sections, shared


@pytest.fixture(scope="module", params=["sqlite+local", "postgres+redis", "s3"])
def server(request, tmp_path_factory):
    """Every test of this page on both metadata stores and on both backends: a server on
    SQLite with local locks, one on PostgreSQL with Redis locks, and one whose new entries
    go to S3."""
    if request.param == "postgres+redis" and not SERVICES_UP:
        pytest.skip("PostgreSQL and Redis on loopback are needed (ci/services.sh)")
    sections = {}
    if request.param == "postgres+redis":
        sections = {"metadata_store": {"type": "postgres",
                                       "dsn": request.getfixturevalue("module_database")},
                    "dlm": {"type": "redis", "redis_addr": "127.0.0.1:6379"}}
    moto = request.getfixturevalue("moto") if request.param == "s3" else None
    if moto is not None:
        sections = s3_sections(moto)
    srv = launch(tmp_path_factory.mktemp("patch"), **sections)
    srv.backend = "s3" if moto is not None else "localfs"
    srv.bucket = sections["backend"]["s3_bucket_name"] if moto is not None else None
    srv.moto = moto
    yield srv
    assert srv.stop() == 0, srv.log()

NOT_SAME = {"code": "BAD_REQUEST", "message": "destination is the same as the source"}


def url(path):
    return "/v1/files" + quote(path)


def patch(server, path, fields, user="alice", raw=None, headers=None, query=""):
    body = raw if raw is not None else json.dumps(fields).encode()
    status, _, data = server.request("PATCH", url(path) + query, body=body,
                                     user=user, headers=headers)
    return status, json.loads(data) if data else None


def put(server, path, data, user="alice"):
    status = server.request("PUT", url(path), body=data, user=user)[0]
    assert status in (200, 201), (path, status)


def content(server, path):
    status, headers, data = server.request("GET", url(path))
    return data if status == 200 else status


def clean(server):
    names = [n for _, _, files in os.walk(server.root) for n in files
             if n.startswith(".callfs-tmp-") or n.startswith(".callfs-move-")]
    assert names == []
    if server.bucket:
        client = server.moto.client()
        assert client.list_multipart_uploads(Bucket=server.bucket).get("Uploads", []) == []


# -- rename and move ---------------------------------------------------------------------------

def test_rename_a_file_keeps_owner_mode_and_mtime(server, ns):
    data = random_bytes(70_000)
    put(server, f"{ns}/old.bin", data)
    before = server.request("HEAD", f"/v1/files{ns}/old.bin")[1]
    assert patch(server, f"{ns}/old.bin", {"name": "new.bin"}) == (200, {"path": f"{ns}/new.bin"})
    assert content(server, f"{ns}/new.bin") == data
    assert content(server, f"{ns}/old.bin") == 404
    after = server.request("HEAD", f"/v1/files{ns}/new.bin")[1]
    for header in ("x-callfs-owner", "x-callfs-mode", "x-callfs-mtime", "x-callfs-size"):
        assert after[header] == before[header]
    assert not server.stored_anything(f"{ns}/old.bin")
    assert server.stored(f"{ns}/new.bin") == data
    clean(server)


def test_move_a_directory_subtree_in_one_step(server, ns):
    files = {f"{ns}/src/a.txt": b"a", f"{ns}/src/d/b.txt": b"bb",
             f"{ns}/src/d/e/c.txt": b"ccc", f"{ns}/src/d/e/f/empty": b""}
    for path, data in files.items():
        put(server, path, data)
    assert server.request("POST", f"/v1/files{ns}/src/emptydir/")[0] == 201
    assert patch(server, f"{ns}/src", {"destination": f"{ns}/dst"}) == (200, {"path": f"{ns}/dst"})
    for path, data in files.items():
        moved = path.replace(f"{ns}/src", f"{ns}/dst")
        assert content(server, moved) == data
        assert content(server, path) == 404
    listing = json.loads(server.request("GET", f"/v1/directories{ns}/dst?recursive=true")[2])
    assert sorted(item["path"] for item in listing["items"]) == sorted(
        [f"{ns}/dst/a.txt", f"{ns}/dst/d", f"{ns}/dst/d/b.txt", f"{ns}/dst/d/e",
         f"{ns}/dst/d/e/c.txt", f"{ns}/dst/d/e/f", f"{ns}/dst/d/e/f/empty", f"{ns}/dst/emptydir"])
    assert server.request("GET", f"/v1/directories{ns}/src")[0] == 404
    # A moved subtree is fully usable: write, delete and list inside it.
    put(server, f"{ns}/dst/d/new.txt", b"new")
    assert server.request("DELETE", f"/v1/files{ns}/dst/a.txt")[0] == 204
    assert not server.stored_anything(f"{ns}/src")
    clean(server)


def test_destination_without_leading_slash_and_dot_segments(server, ns):
    put(server, f"{ns}/f", b"x")
    dest = f"{ns}/sub/../g".lstrip("/")
    assert server.request("POST", f"/v1/files{ns}/sub/")[0] == 201
    assert patch(server, f"{ns}/f", {"destination": dest}) == (200, {"path": f"{ns}/g"})
    assert content(server, f"{ns}/g") == b"x"


def test_unicode_names(server, ns):
    put(server, f"{ns}/é", b"accent")
    assert patch(server, f"{ns}/é", {"name": "日本語 ✓"}) == (200, {"path": f"{ns}/日本語 ✓"})
    assert content(server, f"{ns}/日本語 ✓") == b"accent"
    assert patch(server, f"{ns}/日本語 ✓", {"name": "tab\there"})[0] == 200  # §5.1: TAB is allowed
    assert content(server, f"{ns}/tab\there") == b"accent"


def test_create_parents_owned_by_the_sources_owner(server, ns):
    shared(server, ns)
    put(server, f"{ns}/f", b"x")
    assert server.request("PUT", f"/v1/files{ns}/bobs/x", body=b"b", user="bob")[0] == 201
    status, body = patch(server, f"{ns}/f", {"destination": f"{ns}/p/q/r/f"})
    assert (status, body["message"]) == (400, f'destination parent "{ns}/p/q/r" does not exist')
    assert patch(server, f"{ns}/f", {"destination": f"{ns}/p/q/r/f", "create_parents": True})[0] == 200
    for directory in (f"{ns}/p", f"{ns}/p/q", f"{ns}/p/q/r"):
        headers = server.request("HEAD", f"/v1/files{directory}")[1]
        assert headers["x-callfs-owner"] == "alice" and headers["x-callfs-type"] == "directory"


def test_overwrite_replaces_a_file(server, ns):
    put(server, f"{ns}/a", b"source")
    put(server, f"{ns}/b", b"old destination")
    assert patch(server, f"{ns}/a", {"destination": f"{ns}/b"})[0] == 409
    assert patch(server, f"{ns}/a", {"destination": f"{ns}/b", "overwrite": True})[0] == 200
    assert content(server, f"{ns}/b") == b"source" and content(server, f"{ns}/a") == 404
    put(server, f"{ns}/c", b"third")
    assert patch(server, f"{ns}/c", {"destination": f"{ns}/b"}, query="?overwrite=true")[0] == 200
    assert content(server, f"{ns}/b") == b"third"
    clean(server)


def test_overwrite_replaces_an_empty_directory_only(server, ns):
    put(server, f"{ns}/src/x", b"x")
    assert server.request("POST", f"/v1/files{ns}/empty/")[0] == 201
    put(server, f"{ns}/full/y", b"y")
    put(server, f"{ns}/file", b"f")
    status, body = patch(server, f"{ns}/src", {"destination": f"{ns}/full", "overwrite": True})
    assert (status, body["code"]) == (409, "DIRECTORY_NOT_EMPTY")
    status, body = patch(server, f"{ns}/src", {"destination": f"{ns}/file", "overwrite": True})
    assert status == 409
    assert patch(server, f"{ns}/src", {"destination": f"{ns}/empty", "overwrite": True})[0] == 200
    assert content(server, f"{ns}/empty/x") == b"x"
    assert content(server, f"{ns}/full/y") == b"y" and content(server, f"{ns}/file") == b"f"
    clean(server)


# -- the §9.6 table, row by row ------------------------------------------------------------------

def test_no_key_401(server, ns):
    assert server.request("PATCH", f"/v1/files{ns}/x", body=b"{}", user=None)[0] == 401
    assert server.request("PATCH", f"/v1/files{ns}/x", body=b"{}", user="nobody-key-123456")[0] == 401


def test_invalid_url_path_400(server):
    assert server.request("PATCH", "/v1/files/a%00b", body=b'{"name":"x"}')[0] == 400


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"text"', b"{", b"null",
                                 b'{"name": 5}', b'{"destination": ["a"]}',
                                 b'{"name": "x", "overwrite": "yes"}',
                                 b'{"name": "' + b"x" * (1024 * 1024 + 10) + b'"}'],
                         ids=lambda raw: f"body{len(raw)}-{sum(raw) % 997}")
def test_bad_body_400(server, ns, raw):
    put(server, f"{ns}/f", b"x")
    assert patch(server, f"{ns}/f", None, raw=raw) == (400, {"code": "BAD_REQUEST",
                                                            "message": "invalid JSON body"})


@pytest.mark.parametrize("fields", [{}, {"name": "", "destination": ""},
                                    {"name": "a", "destination": "/b"}, {"other": 1}])
def test_exactly_one_of_name_or_destination(server, ns, fields):
    put(server, f"{ns}/f", b"x")
    assert patch(server, f"{ns}/f", fields) == (400, {
        "code": "BAD_REQUEST",
        "message": 'exactly one of "name" or "destination" must be provided'})


@pytest.mark.parametrize("name", ["a/b", ".", "..", "/x", "x/"])
def test_name_single_segment(server, ns, name):
    put(server, f"{ns}/f", b"x")
    assert patch(server, f"{ns}/f", {"name": name})[1]["message"] == \
        "name must be a single path segment"


@pytest.mark.parametrize("name", ["a\x00b", "a\\b", "x\x01", "a\u202eb"],
                         ids=["nul", "backslash", "control", "bidi"])
def test_name_forbidden_characters(server, ns, name):
    put(server, f"{ns}/f", b"x")
    assert patch(server, f"{ns}/f", {"name": name}) == (400, {
        "code": "BAD_REQUEST", "message": "name contains invalid characters"})


@pytest.mark.parametrize("dest", ["/../x", "/a/../../x", "/a\\b", "/a\x00b", "/" + "x" * 300],
                         ids=["climb", "climb2", "backslash", "nul", "long"])
def test_destination_invalid(server, ns, dest):
    put(server, f"{ns}/f", b"x")
    assert patch(server, f"{ns}/f", {"destination": dest}) == (400, {
        "code": "BAD_REQUEST", "message": "destination is not a valid path"})


def test_source_missing_404(server, ns):
    assert patch(server, f"{ns}/nothing", {"name": "x"})[1]["code"] == "FILE_NOT_FOUND"


def test_may_not_delete_source_403(server, ns):
    put(server, f"{ns}/f", b"x")
    status, body = patch(server, f"{ns}/f", {"name": "g"}, user="bob")
    assert (status, body["code"]) == (403, "PERMISSION_DENIED")
    assert content(server, f"{ns}/f") == b"x"
    assert patch(server, "/", {"destination": "/elsewhere"}, user="bob")[0] == 403


def test_may_not_write_destination_403(server, ns):
    shared(server, ns)
    put(server, f"{ns}/mine", b"alice's")
    put(server, f"{ns}/theirs", b"bob's", user="bob")
    status, body = patch(server, f"{ns}/mine", {"destination": f"{ns}/theirs", "overwrite": True})
    assert (status, body["code"]) == (403, "PERMISSION_DENIED")
    status, body = patch(server, f"{ns}/mine", {"destination": f"{ns}/theirs/below"})
    assert (status, body["code"]) == (403, "PERMISSION_DENIED")
    assert content(server, f"{ns}/theirs") == b"bob's"


def test_root_is_not_moved(server, ns):
    put(server, f"{ns}/f", b"x")
    assert patch(server, f"{ns}/f", {"destination": "/"}) == (400, {
        "code": "BAD_REQUEST", "message": "cannot rename or move the root directory"})


def test_same_path_400(server, ns):
    put(server, f"{ns}/f", b"x")
    assert patch(server, f"{ns}/f", {"name": "f"}) == (400, NOT_SAME)
    assert patch(server, f"{ns}/f", {"destination": f"{ns}//f/."}) == (400, NOT_SAME)


def test_into_itself_400(server, ns):
    put(server, f"{ns}/d/f", b"x")
    assert patch(server, f"{ns}/d", {"destination": f"{ns}/d/sub"}) == (400, {
        "code": "BAD_REQUEST", "message": "cannot move a path into itself"})
    put(server, f"{ns}/d2/f", b"y")  # a sibling with a common prefix is not inside
    assert patch(server, f"{ns}/d", {"destination": f"{ns}/d2x"})[0] == 200


def test_unknown_backend_and_instance_400(server, ns):
    put(server, f"{ns}/f", b"x")
    assert patch(server, f"{ns}/f", {"name": "g", "backend": "tape"}) == (400, {
        "code": "BAD_REQUEST", "message": 'unknown backend "tape"'})
    assert patch(server, f"{ns}/f", {"name": "g", "instance": "mars-1"}) == (400, {
        "code": "BAD_REQUEST", "message": 'unknown instance "mars-1"'})
    # This node's own backend and instance are no relocation.
    assert patch(server, f"{ns}/f", {"name": "g", "backend": server.backend,
                                     "instance": "node-test"})[0] == 200


def test_destination_parent_is_a_file_409(server, ns):
    put(server, f"{ns}/f", b"x")
    put(server, f"{ns}/file", b"y")
    status, body = patch(server, f"{ns}/f", {"destination": f"{ns}/file/g"})
    assert (status, body["code"]) == (409, "NOT_A_DIRECTORY")


def test_destination_exists_409(server, ns):
    put(server, f"{ns}/a", b"a")
    put(server, f"{ns}/b", b"b")
    assert patch(server, f"{ns}/a", {"destination": f"{ns}/b"}) == (409, {
        "code": "FILE_ALREADY_EXISTS", "message": "file already exists"})
    assert content(server, f"{ns}/a") == b"a" and content(server, f"{ns}/b") == b"b"


# -- conditional moves -------------------------------------------------------------------------

def test_if_match_applies_to_the_source(server, ns):
    put(server, f"{ns}/f", b"v1")
    etag = server.request("HEAD", f"/v1/files{ns}/f")[1]["etag"]
    put(server, f"{ns}/f", b"v2")
    status, body = patch(server, f"{ns}/f", {"name": "g"}, headers={"If-Match": etag})
    assert (status, body["code"]) == (412, "PRECONDITION_FAILED")
    current = server.request("HEAD", f"/v1/files{ns}/f")[1]["etag"]
    assert patch(server, f"{ns}/f", {"name": "g"}, headers={"If-Match": current})[0] == 200
    last_modified = server.request("HEAD", f"/v1/files{ns}/g")[1]["last-modified"]
    old = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert patch(server, f"{ns}/g", {"name": "h"},
                 headers={"If-Unmodified-Since": old})[0] == 412
    assert patch(server, f"{ns}/g", {"name": "h"},
                 headers={"If-Unmodified-Since": last_modified})[0] == 200


# -- copy --------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 65_537, 3 * 1024 * 1024 + 5])
def test_copy_a_file(server, ns, size):
    shared(server, ns)
    data = random_bytes(size)
    put(server, f"{ns}/src", data, user="bob")
    status, body = patch(server, f"{ns}/src", {"destination": f"{ns}/copy", "copy": True})
    assert (status, body) == (201, {"path": f"{ns}/copy"})
    assert content(server, f"{ns}/copy") == data and content(server, f"{ns}/src") == data
    headers = server.request("HEAD", f"/v1/files{ns}/copy")[1]
    assert headers["x-callfs-owner"] == "alice"  # a new inode owned by the caller
    assert server.stored(f"{ns}/copy") == data
    clean(server)


def test_copy_overwrite_answers_200(server, ns):
    put(server, f"{ns}/a", b"new content")
    put(server, f"{ns}/b", b"old")
    assert patch(server, f"{ns}/a", {"destination": f"{ns}/b", "copy": True})[0] == 409
    assert patch(server, f"{ns}/a", {"destination": f"{ns}/b", "copy": True,
                                     "overwrite": True}) == (200, {"path": f"{ns}/b"})
    assert content(server, f"{ns}/b") == b"new content" and content(server, f"{ns}/a") == b"new content"


def test_copy_a_deep_subtree(server, ns):
    files = {}
    path = f"{ns}/tree"
    for depth in range(12):
        path += f"/level{depth}"
        files[f"{path}/file-é{depth}"] = random_bytes(depth * 1000)
    for target, data in files.items():
        put(server, target, data)
    status, body = patch(server, f"{ns}/tree", {"destination": f"{ns}/copy", "copy": True})
    assert (status, body) == (201, {"path": f"{ns}/copy"})
    for target, data in files.items():
        assert content(server, target.replace(f"{ns}/tree", f"{ns}/copy")) == data
        assert content(server, target) == data
    listing = json.loads(server.request("GET", f"/v1/directories{ns}/copy?recursive=true")[2])
    assert listing["count"] == 24
    clean(server)


def test_copy_needs_read_only_on_the_source(server, ns):
    shared(server, ns)
    put(server, f"{ns}/alices", b"readable")
    assert patch(server, f"{ns}/alices", {"destination": f"{ns}/bobs", "copy": True},
                 user="bob")[0] == 201
    headers = server.request("HEAD", f"/v1/files{ns}/bobs")[1]
    assert headers["x-callfs-owner"] == "bob"


def test_copy_a_file_into_itself_or_onto_itself(server, ns):
    put(server, f"{ns}/d/f", b"x")
    assert patch(server, f"{ns}/d", {"destination": f"{ns}/d/in", "copy": True})[0] == 400
    assert patch(server, f"{ns}/d/f", {"name": "f", "copy": True}) == (400, NOT_SAME)


def test_check_order_into_itself_before_unknown_backend(server, ns):
    put(server, f"{ns}/d/f", b"x")
    assert patch(server, f"{ns}/d", {"destination": f"{ns}/d/in", "backend": "tape"})[1][
        "message"] == "cannot move a path into itself"
    # Asking for another backend is a relocation, so the same path is not refused as such.
    assert patch(server, f"{ns}/d/f", {"name": "f", "backend": "tape"})[1][
        "message"] == 'unknown backend "tape"'


def test_overwrite_of_someone_elses_empty_directory_403(server, ns):
    shared(server, ns)
    put(server, f"{ns}/mine/f", b"x")
    assert server.request("POST", url(f"{ns}/bobs") + "/", user="bob")[0] == 201
    for copy in (False, True):
        status, body = patch(server, f"{ns}/mine", {"destination": f"{ns}/bobs",
                                                    "overwrite": True, "copy": copy})
        assert (status, body["code"]) == (403, "PERMISSION_DENIED")
    headers = server.request("HEAD", url(f"{ns}/bobs"))[1]
    assert headers["x-callfs-owner"] == "bob"


def test_directory_copy_whose_locks_share_a_stripe(server, ns):
    """The copy takes every lock it needs at once, so two of its own keys that land in the
    same stripe of the local lock manager never make it wait for itself."""
    from callfs.locks.base import dir_key, file_key
    from callfs.locks.local import LocalLockManager

    stripe = LocalLockManager.stripe(dir_key(f"{ns}/copy"))
    name = next(f"f{i}" for i in range(1_000_000)
                if LocalLockManager.stripe(file_key(f"{ns}/copy/f{i}")) == stripe)
    put(server, f"{ns}/src/{name}", b"same stripe")
    started = time.monotonic()
    assert patch(server, f"{ns}/src", {"destination": f"{ns}/copy", "copy": True})[0] == 201
    assert time.monotonic() - started < 5
    assert content(server, f"{ns}/copy/{name}") == b"same stripe"


@pytest.mark.skipif(not os.environ.get("CALLFS_REFLINK_DIR"),
                    reason="no reflink-capable filesystem here (ci/reflink.sh)")
def test_copy_on_a_reflink_filesystem_shares_the_blocks(launcher, server):
    """On XFS with reflinks a copy takes no new space: the kernel shares the source's blocks."""
    import tempfile
    root = tempfile.mkdtemp(dir=os.environ["CALLFS_REFLINK_DIR"])
    srv = launcher(backend={"localfs_root_path": root})
    data = random_bytes(64 * 1024 * 1024)
    put(srv, "/big", data)
    os.sync()
    before = os.statvfs(root)
    assert patch(srv, "/big", {"destination": "/copy", "copy": True}) == (201, {"path": "/copy"})
    os.sync()
    after = os.statvfs(root)
    used = (before.f_bfree - after.f_bfree) * after.f_frsize
    assert used < 8 * 1024 * 1024, used
    assert content(srv, "/copy") == data
    assert srv.stop() == 0


def test_a_directory_copy_that_fails_part_way_removes_what_it_created(server, ns):
    for name in ("a", "b", "c"):
        put(server, f"{ns}/src/{name}", name.encode() * 1000)
    server.lose_bytes(f"{ns}/src/c")  # its bytes lost behind the server's back
    status, body = patch(server, f"{ns}/src", {"destination": f"{ns}/copy", "copy": True})
    assert status == 404, body  # the metadata records bytes that are gone (API.md §9.1)
    assert server.request("GET", url(f"{ns}/copy"))[0] == 404
    assert not server.stored_anything(f"{ns}/copy")
    clean(server)
