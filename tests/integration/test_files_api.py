"""The file endpoints as a client sees them: API.md §2–§4, §6, §9.1–§9.5 and §15.1.

Every test works below its own `ns` directory on the shared session server, and asserts the
status, headers and bytes a client receives plus the state left on disk.
"""
import json
import os
import re
import secrets
import socket
import time
import unicodedata
import urllib.parse

import pytest

from conftest import INTERNAL_SECRET, KEYS, POSITIONAL_KEY, SECURITY_HEADERS, shared


@pytest.fixture(scope="module")
def server(backend_server):
    """This module's checks hold on every backend: they run on localfs and on S3."""
    return backend_server

AUTH_FAILED = b'{"code":"AUTHENTICATION_FAILED","message":"authentication failed"}'
DENIED = {"code": "PERMISSION_DENIED", "message": "permission denied"}
MTIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
INFO_FIELDS = {"name", "path", "type", "size", "mode", "owner", "group", "mtime"}



def url(path: str) -> str:
    """The request target of /v1/files for a canonical path (each segment percent-encoded)."""
    return "/v1/files" + urllib.parse.quote(path, safe="/")


def error(status, headers, body, expected_status, code, message=None):
    assert status == expected_status, (status, body)
    assert headers["content-type"] == "application/json"
    obj = json.loads(body)
    assert obj["code"] == code, obj
    assert isinstance(obj["message"], str) and obj["message"]
    if message is not None:
        assert obj["message"] == message
    return obj


def assert_empty(headers, body):
    assert body == b""
    assert headers.get("content-length") == "0"


def assert_security_headers(headers):
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name
    assert headers.get("x-request-id")
    assert "strict-transport-security" not in headers
    assert "www-authenticate" not in headers


def head(server, path, user="alice"):
    status, headers, body = server.request("HEAD", url(path), user=user)
    assert body == b""
    return status, headers


def listing(server, path, user="alice"):
    status, headers, body = server.request("GET", url(path), user=user)
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def all_allow(server, method, target, user="alice"):
    """(status, body, sorted Allow methods) — one Allow header per method, or a list in one."""
    conn = server.connect()
    try:
        headers = {"Authorization": f"Bearer {KEYS[user]}"} if user else {}
        conn.request(method, target, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        allowed = []
        for value in resp.msg.get_all("Allow") or []:
            allowed += [m.strip() for m in value.split(",") if m.strip()]
        return resp.status, body, sorted(allowed), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def raw_exchange(server, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.settimeout(1.0)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def upload_chunked(server, method, path, pieces, user="alice"):
    conn = server.connect()
    try:
        conn.request(method, url(path), body=iter(pieces), encode_chunked=True,
                     headers={"Authorization": f"Bearer {KEYS[user]}",
                              "Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def owner_of(server) -> str | None:
    """The instance a new entry of this server belongs to: none on S3 (API.md §3)."""
    return None if server.bucket else "node-test"


def read_disk(server, path) -> bytes:
    return server.stored(path)


# ---------------------------------------------------------------------------------------------
# §9.3 POST


def test_post_file_201_empty_body_and_bytes_on_disk(server, ns):
    content = b"hello, callfs\n"
    status, headers, body = server.request("POST", url(f"{ns}/a.txt"), content)
    assert status == 201
    assert_empty(headers, body)
    assert_security_headers(headers)
    assert read_disk(server, f"{ns}/a.txt") == content
    status, headers, body = server.request("GET", url(f"{ns}/a.txt"))
    assert status == 200 and body == content
    assert headers["x-callfs-owner"] == "alice"
    assert not server.temporaries()


def test_post_creates_missing_ancestors_owned_by_creator(server, ns):
    status, headers, body = server.request("POST", url(f"{ns}/a/b/c/f.bin"), b"x", user="bob")
    assert status == 201, body
    for directory in (ns, f"{ns}/a", f"{ns}/a/b", f"{ns}/a/b/c"):
        status, headers = head(server, directory)
        assert status == 200
        assert headers["x-callfs-type"] == "directory"
        assert headers["x-callfs-owner"] == "bob"
        assert headers["x-callfs-mode"] == "0755"
        assert headers["x-callfs-size"] == "0"
        assert server.stored_dir(directory)
    status, headers = head(server, f"{ns}/a/b/c/f.bin")
    assert headers["x-callfs-owner"] == "bob" and headers["x-callfs-mode"] == "0644"


def test_post_directory_with_trailing_slash(server, ns):
    status, headers, body = server.request("POST", url(f"{ns}/d") + "/", b"this body is ignored")
    assert status == 201
    assert_empty(headers, body)
    status, headers = head(server, f"{ns}/d")
    assert status == 200
    assert headers["x-callfs-type"] == "directory"
    assert headers["x-callfs-size"] == "0"
    assert headers["x-callfs-mode"] == "0755"
    assert headers["x-callfs-owner"] == "alice"
    assert server.stored_dir(f"{ns}/d")
    assert listing(server, f"{ns}/d") == []


def test_post_existing_directory_is_idempotent_200(server, ns):
    assert server.request("POST", url(f"{ns}/d") + "/")[0] == 201
    status, headers, body = server.request("POST", url(f"{ns}/d") + "/")
    assert status == 200
    assert_empty(headers, body)
    # an implicitly created ancestor too
    assert server.request("POST", url(f"{ns}/x/y") + "/")[0] == 201
    status, headers, body = server.request("POST", url(f"{ns}/x") + "/")
    assert status == 200
    assert_empty(headers, body)


def test_post_onto_existing_file_409_and_content_kept(server, ns):
    assert server.request("POST", url(f"{ns}/f"), b"first")[0] == 201
    status, headers, body = server.request("POST", url(f"{ns}/f"), b"second")
    error(status, headers, body, 409, "FILE_ALREADY_EXISTS")
    assert_security_headers(headers)
    assert read_disk(server, f"{ns}/f") == b"first"
    assert server.request("GET", url(f"{ns}/f"))[2] == b"first"


def test_post_file_onto_directory_409(server, ns):
    assert server.request("POST", url(f"{ns}/d") + "/")[0] == 201
    status, headers, body = server.request("POST", url(f"{ns}/d"), b"data")
    assert status == 409
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["code"] in {"FILE_ALREADY_EXISTS", "NOT_A_DIRECTORY"}
    assert server.stored_dir(f"{ns}/d")
    assert head(server, f"{ns}/d")[1]["x-callfs-type"] == "directory"


def test_post_directory_onto_file_409(server, ns):
    assert server.request("POST", url(f"{ns}/f"), b"data")[0] == 201
    status, headers, body = server.request("POST", url(f"{ns}/f") + "/")
    assert status == 409
    assert json.loads(body)["code"] in {"FILE_ALREADY_EXISTS", "NOT_A_DIRECTORY"}
    assert read_disk(server, f"{ns}/f") == b"data"


def test_post_below_a_file_409_not_a_directory(server, ns):
    assert server.request("POST", url(f"{ns}/f"), b"data")[0] == 201
    for target in (f"{ns}/f/child", f"{ns}/f/deeper/child"):
        status, headers, body = server.request("POST", url(target), b"x")
        error(status, headers, body, 409, "NOT_A_DIRECTORY")
        status, headers, body = server.request("POST", url(target) + "/")
        error(status, headers, body, 409, "NOT_A_DIRECTORY")
    assert server.stored(f"{ns}/f") is not None
    assert read_disk(server, f"{ns}/f") == b"data"


def test_post_by_non_owner_onto_file_403_before_409(server, ns):
    assert server.request("POST", url(f"{ns}/f"), b"alice's")[0] == 201
    # the 403 row comes before the 409 rows (file exists / directory onto file / below a file)
    for target in (url(f"{ns}/f"), url(f"{ns}/f") + "/", url(f"{ns}/f/child")):
        status, headers, body = server.request("POST", target, b"bob's", user="bob")
        assert status == 403, (target, body)
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == DENIED
        assert_security_headers(headers)
    assert read_disk(server, f"{ns}/f") == b"alice's"


def test_post_empty_body_is_zero_byte_file(server, ns):
    status, headers, body = server.request("POST", url(f"{ns}/empty"), b"")
    assert status == 201
    status, headers, body = server.request("GET", url(f"{ns}/empty"))
    assert status == 200 and body == b""
    assert headers["content-length"] == "0"
    assert headers["x-callfs-size"] == "0"
    assert server.stored(f"{ns}/empty") == b""


def test_post_without_length_or_chunking_is_empty_file(server, ns):
    request = (f"POST {url(ns + '/nobody')} HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: Bearer {KEYS['alice']}\r\nConnection: close\r\n\r\n").encode()
    answer = raw_exchange(server, request)
    assert answer.startswith(b"HTTP/1.1 201 "), answer
    status, headers, body = server.request("GET", url(f"{ns}/nobody"))
    assert status == 200 and body == b"" and headers["x-callfs-size"] == "0"


def test_post_chunked_upload(server, ns):
    pieces = [secrets.token_bytes(n) for n in (1, 7, 65536, 1000, 300000, 3)]
    status, headers, body = upload_chunked(server, "POST", f"{ns}/chunked.bin", pieces)
    assert status == 201, body
    assert_empty(headers, body)
    content = b"".join(pieces)
    status, headers, body = server.request("GET", url(f"{ns}/chunked.bin"))
    assert status == 200 and body == content
    assert headers["content-length"] == str(len(content))
    assert headers["x-callfs-size"] == str(len(content))
    assert read_disk(server, f"{ns}/chunked.bin") == content
    assert not server.temporaries()


def test_chunked_upload_with_no_chunks_is_zero_byte_file(server, ns):
    status, headers, body = upload_chunked(server, "POST", f"{ns}/z", [])
    assert status == 201, body
    assert server.request("GET", url(f"{ns}/z"))[2] == b""


def test_binary_round_trip_with_content_length(server, ns):
    content = bytes(range(256)) * 4096 + secrets.token_bytes(1 << 20) + b"\r\n\r\n\x00"
    status, headers, body = server.request("POST", url(f"{ns}/blob.bin"), content,
                                           headers={"Content-Type": "text/plain"})
    assert status == 201
    status, headers, body = server.request("GET", url(f"{ns}/blob.bin"))
    assert status == 200
    assert body == content
    assert headers["content-length"] == str(len(content))
    assert read_disk(server, f"{ns}/blob.bin") == content
    assert not server.temporaries()


def test_post_body_is_never_parsed(server, ns):
    content = b'{"type":"directory"}'
    status, _, _ = server.request("POST", url(f"{ns}/j"), content,
                                  headers={"Content-Type": "application/json"})
    assert status == 201
    status, headers, body = server.request("GET", url(f"{ns}/j"))
    assert headers["x-callfs-type"] == "file" and body == content


# ---------------------------------------------------------------------------------------------
# §9.4 PUT


def test_put_new_file_201_with_ancestors(server, ns):
    status, headers, body = server.request("PUT", url(f"{ns}/p/q/new.txt"), b"new", user="bob")
    assert status == 201
    assert_empty(headers, body)
    assert_security_headers(headers)
    for directory in (ns, f"{ns}/p", f"{ns}/p/q"):
        _, headers = head(server, directory)
        assert headers["x-callfs-type"] == "directory"
        assert headers["x-callfs-owner"] == "bob" and headers["x-callfs-mode"] == "0755"
    _, headers = head(server, f"{ns}/p/q/new.txt")
    assert headers["x-callfs-owner"] == "bob" and headers["x-callfs-size"] == "3"
    assert read_disk(server, f"{ns}/p/q/new.txt") == b"new"


def test_put_overwrite_updates_size_and_mtime_keeps_owner(server, ns):
    assert server.request("PUT", url(f"{ns}/f"), b"original content")[0] == 201
    _, before = head(server, f"{ns}/f")
    time.sleep(1.1)  # mtime has whole seconds
    status, headers, body = server.request("PUT", url(f"{ns}/f"), b"new", user=INTERNAL_SECRET)
    assert status == 200
    assert_empty(headers, body)
    status, after, body = server.request("GET", url(f"{ns}/f"))
    assert body == b"new"
    assert after["x-callfs-size"] == "3" and after["content-length"] == "3"
    assert after["x-callfs-owner"] == "alice"
    assert after["x-callfs-mode"] == "0644"
    assert MTIME.match(after["x-callfs-mtime"])
    assert after["x-callfs-mtime"] > before["x-callfs-mtime"]
    assert read_disk(server, f"{ns}/f") == b"new"
    # the listing agrees with the headers
    [entry] = listing(server, ns)
    assert entry["size"] == 3 and entry["mtime"] == after["x-callfs-mtime"]
    assert not server.temporaries()


def test_put_overwrite_by_owner_with_chunked_body(server, ns):
    assert server.request("PUT", url(f"{ns}/f"), b"x" * 100000)[0] == 201
    status, headers, body = upload_chunked(server, "PUT", f"{ns}/f", [b"ab", b"cd"])
    assert status == 200, body
    assert_empty(headers, body)
    assert server.request("GET", url(f"{ns}/f"))[2] == b"abcd"
    assert read_disk(server, f"{ns}/f") == b"abcd"


def test_put_zero_bytes_truncates(server, ns):
    assert server.request("PUT", url(f"{ns}/f"), b"something")[0] == 201
    assert server.request("PUT", url(f"{ns}/f"), b"")[0] == 200
    status, headers, body = server.request("GET", url(f"{ns}/f"))
    assert body == b"" and headers["x-callfs-size"] == "0" and headers["content-length"] == "0"
    assert server.stored(f"{ns}/f") == b""


def test_put_by_non_owner_403_content_kept(server, ns):
    assert server.request("PUT", url(f"{ns}/f"), b"alice's")[0] == 201
    for target in (url(f"{ns}/f"), url(f"{ns}/f/below")):
        status, headers, body = server.request("PUT", target, b"bob's", user="bob")
        assert status == 403, (target, body)
        assert json.loads(body) == DENIED
    assert read_disk(server, f"{ns}/f") == b"alice's"
    assert head(server, f"{ns}/f")[1]["x-callfs-owner"] == "alice"


def test_put_onto_directory_400(server, ns):
    assert server.request("POST", url(f"{ns}/d") + "/")[0] == 201
    status, headers, body = server.request("PUT", url(f"{ns}/d"), b"data")
    error(status, headers, body, 400, "IS_A_DIRECTORY")
    assert server.stored_dir(f"{ns}/d")
    assert head(server, f"{ns}/d")[1]["x-callfs-type"] == "directory"


def test_put_with_trailing_slash_400_before_permission(server, ns):
    status, headers, body = server.request("PUT", url(f"{ns}/new") + "/", b"data")
    error(status, headers, body, 400, "IS_A_DIRECTORY")
    assert head(server, f"{ns}/new")[0] == 404
    assert not server.stored_anything(f"{ns}/new")
    # trailing slash is checked before the permission check
    assert server.request("PUT", url(f"{ns}/f"), b"alice's")[0] == 201
    status, headers, body = server.request("PUT", url(f"{ns}/f") + "/", b"bob's", user="bob")
    error(status, headers, body, 400, "IS_A_DIRECTORY")
    assert read_disk(server, f"{ns}/f") == b"alice's"


def test_put_below_a_file_409(server, ns):
    assert server.request("PUT", url(f"{ns}/f"), b"data")[0] == 201
    status, headers, body = server.request("PUT", url(f"{ns}/f/child"), b"x")
    error(status, headers, body, 409, "NOT_A_DIRECTORY")
    assert read_disk(server, f"{ns}/f") == b"data"


def test_put_and_post_invalid_path_400(server, ns):
    for method in ("PUT", "POST"):
        status, headers, body = server.request(method, f"/v1/files{ns}/a%00b", b"x")
        error(status, headers, body, 400, "INVALID_PATH")
    assert head(server, ns)[0] == 404


# ---------------------------------------------------------------------------------------------
# §9.5 DELETE


def test_delete_file_204(server, ns):
    assert server.request("POST", url(f"{ns}/f"), b"data")[0] == 201
    status, headers, body = server.request("DELETE", url(f"{ns}/f"))
    assert status == 204 and body == b""
    assert_security_headers(headers)
    assert not server.stored_anything(f"{ns}/f")
    status, headers, body = server.request("GET", url(f"{ns}/f"))
    error(status, headers, body, 404, "FILE_NOT_FOUND")
    assert listing(server, ns) == []


def test_delete_empty_directory_204(server, ns):
    assert server.request("POST", url(f"{ns}/d") + "/")[0] == 201
    status, headers, body = server.request("DELETE", url(f"{ns}/d"))
    assert status == 204 and body == b""
    assert not server.stored_anything(f"{ns}/d")
    assert head(server, f"{ns}/d")[0] == 404


def test_delete_non_empty_directory_409_children_stay(server, ns):
    assert server.request("POST", url(f"{ns}/d/sub/f"), b"child")[0] == 201
    for target in (f"{ns}/d", f"{ns}/d/sub", ns):
        status, headers, body = server.request("DELETE", url(target))
        error(status, headers, body, 409, "DIRECTORY_NOT_EMPTY")
    assert read_disk(server, f"{ns}/d/sub/f") == b"child"
    assert server.request("GET", url(f"{ns}/d/sub/f"))[2] == b"child"
    assert [e["name"] for e in listing(server, f"{ns}/d")] == ["sub"]


def test_delete_missing_404_even_for_non_owner(server, ns):
    status, headers, body = server.request("DELETE", url(f"{ns}/missing"))
    error(status, headers, body, 404, "FILE_NOT_FOUND")
    assert_security_headers(headers)
    assert server.request("POST", url(f"{ns}/d") + "/")[0] == 201
    status, headers, body = server.request("DELETE", url(f"{ns}/d/missing"), user="bob")
    error(status, headers, body, 404, "FILE_NOT_FOUND")


def test_delete_by_non_owner_403_and_kept(server, ns):
    assert server.request("POST", url(f"{ns}/d/f"), b"alice's")[0] == 201
    for target in (f"{ns}/d/f", f"{ns}/d"):
        status, headers, body = server.request("DELETE", url(target), user="bob")
        assert status == 403, (target, body)
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == DENIED
    assert read_disk(server, f"{ns}/d/f") == b"alice's"
    assert head(server, f"{ns}/d/f")[0] == 200


@pytest.mark.parametrize("user", ["alice", "bob", INTERNAL_SECRET, POSITIONAL_KEY])
def test_delete_root_403_for_everyone(server, user):
    for target in ("/v1/files", "/v1/files/", "/v1/files/.", "/v1/files//"):
        status, headers, body = server.request("DELETE", target, user=user)
        error(status, headers, body, 403, "PERMISSION_DENIED")
    status, headers, body = server.request("GET", "/v1/files/")
    assert status == 200 and headers["x-callfs-type"] == "directory"


def test_delete_then_recreate(server, ns):
    assert server.request("POST", url(f"{ns}/f"), b"one")[0] == 201
    assert server.request("DELETE", url(f"{ns}/f"))[0] == 204
    assert server.request("POST", url(f"{ns}/f") + "/")[0] == 201
    assert head(server, f"{ns}/f")[1]["x-callfs-type"] == "directory"
    assert server.request("DELETE", url(f"{ns}/f"))[0] == 204
    assert server.request("PUT", url(f"{ns}/f"), b"two")[0] == 201
    assert read_disk(server, f"{ns}/f") == b"two"


# ---------------------------------------------------------------------------------------------
# §9.1 GET and §9.2 HEAD


@pytest.mark.parametrize("name", ["page.html", "data.json", "pic.png", "noext"])
def test_get_file_headers(server, ns, name):
    content = b"<html>{}</html>"
    assert server.request("POST", url(f"{ns}/{name}"), content,
                          headers={"Content-Type": "text/html"})[0] == 201
    status, headers, body = server.request("GET", url(f"{ns}/{name}"))
    assert status == 200 and body == content
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-length"] == str(len(content))
    assert headers["x-callfs-type"] == "file"
    assert headers["x-callfs-size"] == str(len(content))
    assert headers["x-callfs-mode"] == "0644"
    assert headers["x-callfs-owner"] == "alice"
    assert MTIME.match(headers["x-callfs-mtime"])
    assert "x-callfs-instance-id" not in headers
    assert "date" in headers
    assert_security_headers(headers)


def test_head_file_headers(server, ns):
    content = b"0123456789"
    assert server.request("POST", url(f"{ns}/f.txt"), content)[0] == 201
    _, get_headers, _ = server.request("GET", url(f"{ns}/f.txt"))
    status, headers = head(server, f"{ns}/f.txt")
    assert status == 200
    assert headers["content-type"] == "application/octet-stream"
    assert headers["x-callfs-type"] == "file"
    assert headers["x-callfs-size"] == "10"
    assert headers["x-callfs-mode"] == "0644"
    assert headers["x-callfs-owner"] == "alice"
    assert headers["x-callfs-mtime"] == get_headers["x-callfs-mtime"]
    assert headers.get("x-callfs-instance-id") == owner_of(server)  # none on S3 (§3)
    if "content-length" in headers:
        assert headers["content-length"] == "10"
    assert_security_headers(headers)


def test_head_directory_headers(server, ns):
    assert server.request("POST", url(f"{ns}/d") + "/")[0] == 201
    status, headers = head(server, f"{ns}/d")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["x-callfs-type"] == "directory"
    assert headers["x-callfs-size"] == "0"
    assert headers["x-callfs-mode"] == "0755"
    assert headers["x-callfs-owner"] == "alice"
    assert MTIME.match(headers["x-callfs-mtime"])
    assert headers.get("x-callfs-instance-id") == owner_of(server)  # none on S3 (§3)


def test_head_and_get_missing_404(server, ns):
    status, headers = head(server, f"{ns}/nope")
    assert status == 404
    status, headers, body = server.request("GET", url(f"{ns}/nope"))
    error(status, headers, body, 404, "FILE_NOT_FOUND")
    assert_security_headers(headers)


def test_get_is_open_to_other_users(server, ns):
    assert server.request("POST", url(f"{ns}/f"), b"shared")[0] == 201
    status, headers, body = server.request("GET", url(f"{ns}/f"), user="bob")
    assert status == 200 and body == b"shared" and headers["x-callfs-owner"] == "alice"
    assert head(server, f"{ns}/f", user="bob")[0] == 200


def test_get_directory_lists_children_as_array(server, ns):
    for name in ("b.txt", "A.txt", "a.txt"):
        assert server.request("POST", url(f"{ns}/{name}"), name.encode())[0] == 201
    for name in ("zdir", "Bdir"):
        assert server.request("POST", url(f"{ns}/{name}") + "/")[0] == 201
    assert server.request("POST", url(f"{ns}/zdir/inner"), b"not listed")[0] == 201
    status, headers, body = server.request("GET", url(ns))
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["x-callfs-type"] == "directory"
    assert headers["x-callfs-size"] == "0"
    assert headers["x-callfs-mode"] == "0755"
    assert headers["x-callfs-owner"] == "alice"
    assert MTIME.match(headers["x-callfs-mtime"])
    assert "x-callfs-instance-id" not in headers
    items = json.loads(body)
    assert [i["name"] for i in items] == ["Bdir", "zdir", "A.txt", "a.txt", "b.txt"]
    for item in items:
        assert set(item) == INFO_FIELDS
        assert item["path"] == f"{ns}/{item['name']}"
        assert item["owner"] == "alice"
        assert MTIME.match(item["mtime"])
        if item["type"] == "directory":
            assert item["size"] == 0 and item["mode"] == "0755"
        else:
            assert item["type"] == "file" and item["mode"] == "0644" and item["size"] == 5


def test_get_empty_directory_is_empty_array(server, ns):
    assert server.request("POST", url(ns) + "/")[0] == 201
    status, headers, body = server.request("GET", url(ns))
    assert status == 200 and json.loads(body) == []


@pytest.mark.parametrize("target", ["/v1/files", "/v1/files/"])
def test_root_addressed_without_and_with_slash(server, ns, target):
    assert server.request("POST", url(f"{ns}/f"), b"x")[0] == 201
    status, headers, body = server.request("GET", target)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["x-callfs-type"] == "directory"
    assert headers["x-callfs-owner"] == "root"
    entries = {e["path"]: e for e in json.loads(body)}
    assert entries[ns]["type"] == "directory" and entries[ns]["owner"] == "alice"
    assert entries[ns]["name"] == ns[1:]
    status, headers, body = server.request("HEAD", target)
    assert status == 200 and body == b""
    assert headers["x-callfs-type"] == "directory"
    assert headers["x-callfs-owner"] == "root"
    assert "x-callfs-instance-id" not in headers  # the root has no owning instance (§6, §16)


def test_root_is_a_directory_for_writes(server):
    status, headers, body = server.request("POST", "/v1/files/")
    assert status == 200
    assert_empty(headers, body)
    for target in ("/v1/files", "/v1/files/"):
        status, headers, body = server.request("PUT", target, b"x")
        error(status, headers, body, 400, "IS_A_DIRECTORY")


# ---------------------------------------------------------------------------------------------
# §5.3 names as stored and listed

NAMES = [
    "h\u00e9llo w\u00f6rld \u2713.txt",
    "with space",
    "a+b.txt",
    "100%.txt",
    ".hidden",
    "archive.tar.gz",
    "name...",
    "user@host",
    "hash#tag",
    "full\uff0fwidth",
    "x",
    "\u65e5\u672c\u8a9e",
    "emoji \U0001F600",
]


def test_names_stored_and_listed_exactly(server, ns):
    for i, name in enumerate(NAMES):
        status, _, body = server.request("POST", url(f"{ns}/{name}"), f"#{i}".encode())
        assert status == 201, (name, body)
    for i, name in enumerate(NAMES):
        status, headers, body = server.request("GET", url(f"{ns}/{name}"))
        assert status == 200 and body == f"#{i}".encode(), name
        assert read_disk(server, f"{ns}/{name}") == f"#{i}".encode()
    items = listing(server, ns)
    assert sorted(i["name"] for i in items) == sorted(NAMES)
    assert [i["name"] for i in items] == sorted(NAMES, key=lambda n: n.encode())
    for item in items:
        assert item["path"] == f"{ns}/{item['name']}"
    assert sorted(server.stored_names(ns)) == sorted(NAMES)


def test_plus_is_literal_and_encoded_forms_decode_once(server, ns):
    # a literal `+` is not a space; %2B is the same name; %25 is `%`
    assert server.request("POST", f"/v1/files{ns}/a+b", b"plus")[0] == 201
    status, headers, body = server.request("POST", f"/v1/files{ns}/a%2Bb", b"again")
    error(status, headers, body, 409, "FILE_ALREADY_EXISTS")
    assert server.request("GET", f"/v1/files{ns}/a%2bb")[2] == b"plus"
    assert server.request("GET", f"/v1/files{ns}/a%20b")[0] == 404
    assert server.request("POST", f"/v1/files{ns}/p%25q", b"pct")[0] == 201
    assert server.request("POST", f"/v1/files{ns}/s%20t", b"space")[0] == 201
    assert sorted(e["name"] for e in listing(server, ns)) == ["a+b", "p%q", "s t"]
    assert read_disk(server, f"{ns}/p%q") == b"pct"
    assert read_disk(server, f"{ns}/s t") == b"space"


def test_names_are_case_sensitive_and_not_normalized(server, ns):
    nfc = unicodedata.normalize("NFC", "caf\u00e9")
    nfd = unicodedata.normalize("NFD", "caf\u00e9")
    assert nfc != nfd
    for name, content in (("File", b"1"), ("file", b"2"), (nfc, b"3"), (nfd, b"4")):
        assert server.request("POST", url(f"{ns}/{name}"), content)[0] == 201, name
    for name, content in (("File", b"1"), ("file", b"2"), (nfc, b"3"), (nfd, b"4")):
        assert server.request("GET", url(f"{ns}/{name}"))[2] == content
    assert sorted(e["name"] for e in listing(server, ns)) == sorted(["File", "file", nfc, nfd])


# ---------------------------------------------------------------------------------------------
# §4 authentication


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE"])
@pytest.mark.parametrize("authorization", [None, "", "Bearer ", "Bearer wrong-key",
                                           "bearer " + KEYS["alice"], "BEARER " + KEYS["alice"],
                                           "Bearer" + KEYS["alice"], "Basic " + KEYS["alice"],
                                           "Bearer " + KEYS["alice"] + "x"])
def test_unauthenticated_401(server, ns, method, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    if authorization is None:
        status, got, body = server.request(method, url(f"{ns}/f"), b"x", headers, user=None)
    else:
        status, got, body = server.request(method, url(f"{ns}/f"), b"x", headers)
    assert status == 401
    assert got["content-type"] == "application/json"
    if method != "HEAD":
        assert body == AUTH_FAILED
    assert_security_headers(got)
    assert not server.stored_anything(ns)


def test_authentication_before_path_checks(server):
    for target in ("/v1/files/../x", "/v1/files/a%00b", "/v1/files/a%2Fb", "/v1/directories/.."):
        status, headers, body = server.request("GET", target, user=None)
        assert status == 401 and body == AUTH_FAILED, target


def test_authentication_before_routing(server):
    for method in ("GET", "POST", "DELETE", "OPTIONS", "PATCH", "HEAD"):
        for target in ("/v1/anything", "/v1/", "/v1/files/x", "/v1/links/generate"):
            status, headers, body = server.request(method, target, user=None)
            assert status == 401, (method, target)
            if method != "HEAD":
                assert body == AUTH_FAILED
            assert_security_headers(headers)


def test_bare_key_accepted(server, ns):
    status, _, _ = server.request("POST", url(f"{ns}/f"), b"bare",
                                  headers={"Authorization": KEYS["bob"]})
    assert status == 201
    assert head(server, f"{ns}/f")[1]["x-callfs-owner"] == "bob"


@pytest.mark.parametrize("authorization", ["Bearer  {key}  ", "Bearer \t{key}", "Bearer {key}\t",
                                           " {key} ", "\t{key}"])
def test_whitespace_around_key_is_trimmed(server, ns, authorization):
    value = authorization.format(key=KEYS["alice"])
    status, headers, body = server.request("GET", "/v1/files/", headers={"Authorization": value})
    assert status == 200, repr(value)


def test_positional_key_identity(server, ns):
    status, _, _ = server.request("POST", url(f"{ns}/f"), b"x", user=POSITIONAL_KEY)
    assert status == 201
    _, headers = head(server, f"{ns}/f")
    assert headers["x-callfs-owner"] == "api-user-0"
    _, headers = head(server, ns)
    assert headers["x-callfs-owner"] == "api-user-0"
    assert listing(server, ns)[0]["owner"] == "api-user-0"


def test_internal_secret_identity_and_admin(server, ns):
    shared(server, ns)
    assert server.request("POST", url(f"{ns}/f"), b"proxy", user=INTERNAL_SECRET)[0] == 201
    assert head(server, f"{ns}/f")[1]["x-callfs-owner"] == "internal-proxy"
    assert server.request("POST", url(f"{ns}/g"), b"alice's")[0] == 201
    # an administrator deletes what alice owns
    assert server.request("DELETE", url(f"{ns}/g"), user=INTERNAL_SECRET)[0] == 204
    assert not server.stored_anything(f"{ns}/g")


# ---------------------------------------------------------------------------------------------
# §3 headers and X-Request-ID


@pytest.mark.parametrize("method,target,user,expected", [
    ("GET", "/health", None, 200),
    ("GET", "/v1/files/", "alice", 200),
    ("GET", "/v1/files/no-such-file-anywhere", "alice", 404),
    ("GET", "/v1/files/", None, 401),
    ("GET", "/nowhere", None, 404),
    ("POST", "/health", None, 405),
    ("GET", "/v1/files/..", "alice", 400),
])
def test_security_headers_on_every_response(server, method, target, user, expected):
    status, headers, body = server.request(method, target, user=user)
    assert status == expected
    assert_security_headers(headers)
    assert HEX16.match(headers["x-request-id"])


@pytest.mark.parametrize("request_id", ["abc", "A-Z_a.z:0-9", "x" * 128, "1",
                                        "550e8400-e29b-41d4-a716-446655440000"])
def test_valid_request_id_is_echoed(server, request_id):
    for target, user in (("/health", None), ("/v1/files/", "alice"), ("/v1/files/", None),
                         ("/v1/files/nonexistent-xyz", "alice")):
        status, headers, _ = server.request("GET", target, headers={"X-Request-ID": request_id},
                                            user=user)
        assert headers["x-request-id"] == request_id, (target, status)


@pytest.mark.parametrize("request_id", ["x" * 129, "has space", "semi;colon", "slash/id",
                                        "quote\"", "caf\u00e9".encode().decode("latin-1"),
                                        "a,b", "plus+"])
def test_invalid_request_id_is_replaced(server, request_id):
    for target, user in (("/health", None), ("/v1/files/", "alice"), ("/v1/files/", None)):
        status, headers, _ = server.request("GET", target, headers={"X-Request-ID": request_id},
                                            user=user)
        assert HEX16.match(headers["x-request-id"]), (target, headers["x-request-id"])


def test_fresh_request_id_per_request(server):
    seen = {server.request("GET", "/health", user=None)[1]["x-request-id"] for _ in range(5)}
    assert len(seen) == 5
    assert all(HEX16.match(r) for r in seen)


def test_empty_request_id_is_replaced(server):
    _, headers, _ = server.request("GET", "/health", headers={"X-Request-ID": ""}, user=None)
    assert HEX16.match(headers["x-request-id"])


# ---------------------------------------------------------------------------------------------
# §2 routing and §15.1 health


def test_health(server):
    status, headers, body = server.request("GET", "/health", user=None)
    assert status == 200
    assert body == b'{"status":"ok"}'
    assert headers["content-type"] == "application/json"
    assert_security_headers(headers)
    # a key is not needed and does not hurt
    assert server.request("GET", "/health")[2] == b'{"status":"ok"}'


@pytest.mark.parametrize("method", ["HEAD", "POST", "PUT", "DELETE"])
def test_health_other_methods_405(server, method):
    status, body, allowed, headers = all_allow(server, method, "/health", user=None)
    assert status == 405
    assert body == b""
    assert allowed == ["GET"]
    assert_security_headers(headers)


@pytest.mark.parametrize("target", ["/", "/nope", "/v2/files/x", "/healthz", "/health/",
                                    "/files/x", "/download"])
def test_unknown_route_404_text(server, target):
    status, headers, body = server.request("GET", target, user=None)
    assert status == 404
    assert body == b"404 page not found\n"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert_security_headers(headers)


def test_unknown_v1_route_with_key_404_text(server):
    for target in ("/v1/anything", "/v1/file/x", "/v1/links"):
        status, headers, body = server.request("GET", target)
        assert status == 404, target
        assert body == b"404 page not found\n"
        assert headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("method,target,expected", [
    ("OPTIONS", "/v1/files/x", ["DELETE", "GET", "HEAD", "PATCH", "POST", "PUT"]),
    ("POST", "/v1/directories/x", ["GET"]),
    ("HEAD", "/v1/directories/x", ["GET"]),
    ("DELETE", "/v1/directories/", ["GET"]),
])
def test_wrong_method_on_known_route_405(server, method, target, expected):
    status, body, allowed, headers = all_allow(server, method, target)
    assert status == 405
    assert body == b""
    assert allowed == expected
    assert_security_headers(headers)
