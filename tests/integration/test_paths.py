"""From request target to canonical path, as a client sees it: API.md §5.

Request targets are sent exactly as written here (http.client does not normalise them), so
every dot segment, doubled slash and escape reaches the server untouched.
"""
import json
import os
import socket
import urllib.parse

import pytest

from conftest import KEYS

AUTH = {"Authorization": f"Bearer {KEYS['alice']}"}


def q(path: str) -> str:
    return urllib.parse.quote(path, safe="/")


def invalid(status, headers, body, method="GET"):
    assert status == 400, (status, body)
    if method != "HEAD":
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["code"] == "INVALID_PATH"


def exists(server, path) -> bool:
    return server.request("HEAD", "/v1/files" + q(path))[0] == 200


def raw_exchange(server, data: bytes, quiet: float = 2.0):
    """(bytes received, closed by the server) after sending raw bytes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        sock.settimeout(quiet)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                return b"".join(chunks), False
            except ConnectionResetError:
                return b"".join(chunks), True
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)


# ---------------------------------------------------------------------------------------------
# §5.1 examples, each acting on its canonical path


def test_dot_dot_resolves_in_place(server, ns):
    assert server.request("POST", f"/v1/files{ns}/secret.txt", b"secret")[0] == 201
    status, headers, body = server.request("GET", f"/v1/files{ns}/dir/../secret.txt")
    assert status == 200 and body == b"secret"
    assert headers["x-callfs-type"] == "file"
    assert not exists(server, f"{ns}/dir")


def test_dot_segment_dropped(server, ns):
    assert server.request("POST", f"/v1/files{ns}/./a.txt", b"A")[0] == 201
    assert server.request("GET", f"/v1/files{ns}/a.txt")[2] == b"A"
    assert server.request("GET", f"/v1/files/.{ns}/././a.txt")[2] == b"A"
    with open(server.disk(f"{ns}/a.txt"), "rb") as fh:
        assert fh.read() == b"A"


def test_double_slashes_collapse(server, ns):
    status, _, _ = server.request("POST", f"/v1/files/{ns}/a//b///c", b"abc")
    assert status == 201
    status, headers, body = server.request("GET", f"/v1/files{ns}/a/b/c")
    assert status == 200 and body == b"abc"
    assert os.path.isfile(server.disk(f"{ns}/a/b/c"))
    status, headers, body = server.request("GET", f"/v1/files{ns}/a")
    assert [e["path"] for e in json.loads(body)] == [f"{ns}/a/b"]


def test_trailing_dot_is_not_a_trailing_slash(server, ns):
    # `a/b/.` → /a/b with the flag false: POST creates a file
    assert server.request("POST", f"/v1/files{ns}/a/b/.", b"file")[0] == 201
    status, headers, body = server.request("HEAD", f"/v1/files{ns}/a/b")
    assert status == 200 and headers["x-callfs-type"] == "file"
    assert os.path.isfile(server.disk(f"{ns}/a/b"))


def test_dot_then_trailing_slash_is_a_directory(server, ns):
    # `a/./b/` → /a/b with the flag true: POST creates a directory
    assert server.request("POST", f"/v1/files{ns}/a/./b/")[0] == 201
    status, headers, _ = server.request("HEAD", f"/v1/files{ns}/a/b")
    assert status == 200 and headers["x-callfs-type"] == "directory"
    assert os.path.isdir(server.disk(f"{ns}/a/b"))


def test_dot_dot_then_trailing_slash_is_a_directory(server, ns):
    # `dir/../other/` → /other with the flag true
    assert server.request("POST", f"/v1/files{ns}/dir/../other/")[0] == 201
    status, headers, _ = server.request("HEAD", f"/v1/files{ns}/other")
    assert status == 200 and headers["x-callfs-type"] == "directory"
    assert not exists(server, f"{ns}/dir")
    assert not os.path.exists(server.disk(f"{ns}/dir"))


@pytest.mark.parametrize("suffix", ["/.", "/./", "/x/..", "/x/../", "/x/y/../..", "//"])
def test_paths_resolving_to_the_namespace_directory(server, ns, suffix):
    assert server.request("POST", f"/v1/files{ns}/f", b"f")[0] == 201
    status, headers, body = server.request("GET", f"/v1/files{ns}{suffix}")
    assert status == 200
    assert headers["x-callfs-type"] == "directory"
    assert [e["path"] for e in json.loads(body)] == [f"{ns}/f"]
    status, headers, body = server.request("GET", f"/v1/directories{ns}{suffix}")
    assert status == 200 and json.loads(body)["path"] == ns


@pytest.mark.parametrize("rest", [".", "./", "a/..", "a/../", "./.", "%2e", "a/%2E%2E"])
def test_paths_resolving_to_the_root(server, rest):
    status, headers, body = server.request("HEAD", f"/v1/files/{rest}")
    assert status == 200
    assert headers["x-callfs-type"] == "directory"
    assert headers["x-callfs-owner"] == "root"
    status, headers, body = server.request("GET", f"/v1/directories/{rest}")
    assert status == 200 and json.loads(body)["path"] == "/"


def test_write_methods_act_on_the_canonical_path(server, ns):
    assert server.request("PUT", f"/v1/files{ns}/x/../p.txt", b"one")[0] == 201
    assert server.request("PUT", f"/v1/files{ns}//./p.txt", b"two")[0] == 200
    assert server.request("GET", f"/v1/files{ns}/p.txt")[2] == b"two"
    assert server.request("DELETE", f"/v1/files{ns}/y/z/../../p.txt")[0] == 204
    assert not os.path.exists(server.disk(f"{ns}/p.txt"))


def test_query_string_is_not_part_of_the_path(server, ns):
    assert server.request("POST", f"/v1/files{ns}/f.txt?ignored=1", b"q")[0] == 201
    assert server.request("GET", f"/v1/files{ns}/f.txt?x=%2F&y=..")[2] == b"q"
    # an encoded `?` is part of the name
    assert server.request("POST", f"/v1/files{ns}/what%3F", b"?")[0] == 201
    names = sorted(e["name"] for e in json.loads(server.request("GET", f"/v1/files{ns}")[2]))
    assert names == ["f.txt", "what?"]


# ---------------------------------------------------------------------------------------------
# §5.1 step 2: decoding exactly once


def test_percent_decoded_exactly_once(server, ns):
    cases = {"sp%20ace": "sp ace", "p%2Blus": "p+lus", "pct%25": "pct%", "a%252e": "a%2e",
             "b%2541": "b%41", "%41%42c": "ABc", "caf%C3%A9": "caf\u00e9"}
    for raw, name in cases.items():
        status, _, body = server.request("POST", f"/v1/files{ns}/{raw}", name.encode())
        assert status == 201, (raw, body)
    items = json.loads(server.request("GET", f"/v1/files{ns}")[2])
    assert sorted(i["name"] for i in items) == sorted(cases.values())
    for name in cases.values():
        with open(server.disk(f"{ns}/{name}"), "rb") as fh:
            assert fh.read() == name.encode()
    # the stored `%2e` name is addressed by escaping its `%`
    assert server.request("GET", f"/v1/files{ns}/a%252e")[2] == b"a%2e"


@pytest.mark.parametrize("escape", ["%2F", "%2f", "%5C", "%5c"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE"])
def test_encoded_slash_and_backslash_rejected(server, ns, escape, method):
    status, headers, body = server.request(method, f"/v1/files{ns}/a{escape}b", b"x")
    invalid(status, headers, body, method)
    assert not os.path.exists(server.disk(ns))


def test_raw_backslash_rejected(server, ns):
    for method in ("GET", "POST"):
        status, headers, body = server.request(method, f"/v1/files{ns}/a\\b", b"x")
        invalid(status, headers, body)
    status, headers, body = server.request("GET", f"/v1/directories{ns}\\x")
    invalid(status, headers, body)
    assert not os.path.exists(server.disk(ns))


@pytest.mark.parametrize("target", ["/v1/files/%zz", "/v1/files/a%", "/v1/files/a%4",
                                    "/v1/directories/%G1", "/v1/files/ok/%%41"])
@pytest.mark.parametrize("key", [True, False])
def test_malformed_escape_400_and_closed(server, target, key):
    auth = f"Authorization: Bearer {KEYS['alice']}\r\n" if key else ""
    first = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode()
    second = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    data, closed = raw_exchange(server, first + second)
    assert data.startswith(b"HTTP/1.1 400 "), data
    assert closed, data
    head, _, body = data.partition(b"\r\n\r\n")
    assert data.count(b"HTTP/1.1 ") == 1, data  # nothing after the 400 is served
    lowered = head.lower()
    if b"content-type: application/json" in lowered:
        assert json.loads(body)["code"] in ("INVALID_PATH", "BAD_REQUEST")
    else:
        assert b"content-type: text/plain" in lowered, head
        assert body.startswith(b"400 Bad Request"), body


# ---------------------------------------------------------------------------------------------
# §5.1 step 5: never above the root


@pytest.mark.parametrize("rest", ["..", "../", "../x", "a/../..", "a/../../x", "%2e%2e",
                                  "%2E%2E/x", ".%2e", "%2e.", "a/%2e%2e/%2e%2e", "a/b/../../..",
                                  "./..", "x/./../../y"])
def test_climbing_above_root_rejected(server, rest):
    for method in ("GET", "HEAD", "DELETE"):
        status, headers, body = server.request(method, f"/v1/files/{rest}")
        invalid(status, headers, body, method)
    status, headers, body = server.request("GET", f"/v1/directories/{rest}")
    invalid(status, headers, body)


def test_climbing_above_root_is_never_clamped(server, ns):
    name = ns[1:]
    for target in (f"/v1/files/../{name}", f"/v1/files/%2e%2e/{name}", f"/v1/files/a/../../{name}"):
        for method in ("POST", "PUT"):
            status, headers, body = server.request(method, target, b"escaped")
            invalid(status, headers, body)
        status, headers, body = server.request("POST", target + "/")
        invalid(status, headers, body)
    assert not exists(server, ns)
    assert not os.path.exists(server.disk(ns))


# ---------------------------------------------------------------------------------------------
# §5.1 step 4: forbidden and allowed characters

FORBIDDEN = ["%00", "%01", "%08", "%0A", "%0D", "%1B", "%1F",
             "%E2%80%AA", "%E2%80%AB", "%E2%80%AC", "%E2%80%AD", "%E2%80%AE",
             "%E2%81%A6", "%E2%81%A7", "%E2%81%A8", "%E2%81%A9"]


@pytest.mark.parametrize("escape", FORBIDDEN)
def test_forbidden_characters_rejected(server, ns, escape):
    for method in ("POST", "PUT", "GET", "HEAD", "DELETE"):
        status, headers, body = server.request(method, f"/v1/files{ns}/a{escape}b", b"x")
        invalid(status, headers, body, method)
    status, headers, body = server.request("POST", f"/v1/files{ns}/{escape}/")
    invalid(status, headers, body)
    status, headers, body = server.request("GET", f"/v1/directories{ns}/{escape}")
    invalid(status, headers, body)
    assert not os.path.exists(server.disk(ns))


ALLOWED = {
    "%09": "\t",            # TAB
    "%7F": "\x7f",          # DEL
    "%C2%85": "\x85",       # a C1 control character
    "%C2%9F": "\x9f",
    "%E2%80%8F": "\u200f",  # right-to-left mark (not one of the rejected bidi controls)
    "%E2%80%A9": "\u2029",
    "%E2%80%AF": "\u202f",  # just after U+202A–U+202E
    "%E2%81%A5": "\u2065",  # just before U+2066–U+2069
    "%E2%81%AA": "\u206a",
    "%EF%BC%8F": "\uff0f",  # fullwidth solidus
}


def test_allowed_characters_stored_and_listed(server, ns):
    for escape, char in ALLOWED.items():
        status, _, body = server.request("POST", f"/v1/files{ns}/a{escape}b", escape.encode())
        assert status == 201, (escape, body)
    items = json.loads(server.request("GET", f"/v1/files{ns}")[2])
    assert sorted(i["name"] for i in items) == sorted(f"a{c}b" for c in ALLOWED.values())
    for escape, char in ALLOWED.items():
        assert server.request("GET", f"/v1/files{ns}/a{escape}b")[2] == escape.encode()
        with open(server.disk(f"{ns}/a{char}b"), "rb") as fh:
            assert fh.read() == escape.encode()


def test_tab_only_name_and_directory(server, ns):
    assert server.request("POST", f"/v1/files{ns}/%09/")[0] == 201
    assert server.request("POST", f"/v1/files{ns}/%09/%7F", b"del")[0] == 201
    status, headers, body = server.request("GET", f"/v1/directories{ns}?recursive=true")
    assert [i["path"] for i in json.loads(body)["items"]] == [f"{ns}/\t", f"{ns}/\t/\x7f"]


@pytest.mark.parametrize("escape", ["%C3%28", "%FF", "%C0%AF", "%ED%A0%80", "%F4%90%80%80",
                                    "%C3", "%E2%82", "%80"])
def test_invalid_utf8_rejected(server, ns, escape):
    for method in ("POST", "GET"):
        status, headers, body = server.request(method, f"/v1/files{ns}/a{escape}", b"x")
        invalid(status, headers, body)
    status, headers, body = server.request("GET", f"/v1/directories{ns}/{escape}")
    invalid(status, headers, body)
    assert not os.path.exists(server.disk(ns))


# ---------------------------------------------------------------------------------------------
# §5.1 step 6: lengths in bytes


def test_segment_of_255_bytes_accepted(server, ns):
    for name in ("s" * 255, "\u00e9" * 127 + "a", "\U0001F600" * 63 + "abc"):
        assert len(name.encode()) == 255
        status, _, body = server.request("POST", f"/v1/files{ns}/{q(name)}", b"ok")
        assert status == 201, body
        assert server.request("GET", f"/v1/files{ns}/{q(name)}")[2] == b"ok"
        assert os.path.isfile(server.disk(f"{ns}/{name}"))
    status, _, body = server.request("POST", f"/v1/files{ns}/{'d' * 255}/")
    assert status == 201, body


def test_segment_of_256_bytes_rejected(server, ns):
    for name in ("s" * 256, "\u00e9" * 128, "\U0001F600" * 64):
        assert len(name.encode()) == 256
        for method in ("POST", "PUT", "GET"):
            status, headers, body = server.request(method, f"/v1/files{ns}/{q(name)}", b"x")
            invalid(status, headers, body)
        status, headers, body = server.request("POST", f"/v1/files{ns}/{q(name)}/")
        invalid(status, headers, body)
        status, headers, body = server.request("GET", f"/v1/directories{ns}/{q(name)}")
        invalid(status, headers, body)
    assert not os.path.exists(server.disk(ns))


def long_path(ns: str, total: int) -> str:
    """A canonical path of exactly `total` bytes below `ns`, in segments of at most 255."""
    path = ns
    while total - len(path) > 256:
        path += "/" + "L" * 200
    path += "/" + "e" * (total - len(path) - 1)
    assert len(path) == total
    return path


def test_path_of_4096_bytes_accepted(server, ns):
    path = long_path(ns, 4096)
    status, headers, body = server.request("GET", f"/v1/files{path}")
    assert status == 404, body
    assert json.loads(body)["code"] == "FILE_NOT_FOUND"
    # the limit applies to the canonical path, not to the request target
    status, _, body = server.request("GET", f"/v1/files/x/..{path}/y/./..")
    assert status == 404, body
    status, _, body = server.request("GET", f"/v1/directories{path}")
    assert status == 404, body


def test_file_at_4096_byte_path_round_trip(server, ns):
    path = long_path(ns, 4096)
    status, headers, body = server.request("PUT", f"/v1/files{path}", b"deep")
    assert status == 201, body
    status, headers, body = server.request("GET", f"/v1/files{path}")
    assert status == 200 and body == b"deep"
    assert headers["x-callfs-size"] == "4"


def test_path_of_4097_bytes_rejected(server, ns):
    path = long_path(ns, 4097)
    for method in ("GET", "POST", "PUT", "DELETE"):
        status, headers, body = server.request(method, f"/v1/files{path}", b"x")
        invalid(status, headers, body)
    status, headers, body = server.request("GET", f"/v1/directories{path}")
    invalid(status, headers, body)
    assert not os.path.exists(server.disk(ns))


# ---------------------------------------------------------------------------------------------
# §5.2 trailing slash


def test_trailing_slash_on_get_head_delete_acts_on_the_file(server, ns):
    assert server.request("POST", f"/v1/files{ns}/f.txt", b"content")[0] == 201
    status, headers, body = server.request("GET", f"/v1/files{ns}/f.txt/")
    assert status == 200 and body == b"content"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["x-callfs-type"] == "file"
    status, headers, body = server.request("HEAD", f"/v1/files{ns}/f.txt/")
    assert status == 200 and headers["x-callfs-type"] == "file"
    assert headers["x-callfs-size"] == "7"
    status, headers, body = server.request("DELETE", f"/v1/files{ns}/f.txt/")
    assert status == 204 and body == b""
    assert not os.path.exists(server.disk(f"{ns}/f.txt"))
    assert server.request("GET", f"/v1/files{ns}/f.txt")[0] == 404


def test_trailing_slash_on_directory_reads(server, ns):
    assert server.request("POST", f"/v1/files{ns}/e/")[0] == 201
    status, headers, body = server.request("GET", f"/v1/files{ns}/e/")
    assert status == 200 and json.loads(body) == []
    status, headers, body = server.request("GET", f"/v1/directories{ns}/e/")
    assert status == 200 and json.loads(body)["path"] == f"{ns}/e"
    assert server.request("DELETE", f"/v1/files{ns}/e/")[0] == 204
    assert not os.path.exists(server.disk(f"{ns}/e"))


def test_trailing_slash_selects_post_type_and_fails_put(server, ns):
    assert server.request("POST", f"/v1/files{ns}/dir/")[0] == 201
    assert server.request("POST", f"/v1/files{ns}/file")[0] == 201
    assert server.request("HEAD", f"/v1/files{ns}/dir")[1]["x-callfs-type"] == "directory"
    assert server.request("HEAD", f"/v1/files{ns}/file")[1]["x-callfs-type"] == "file"
    status, headers, body = server.request("PUT", f"/v1/files{ns}/new/", b"x")
    assert status == 400 and json.loads(body)["code"] == "IS_A_DIRECTORY"
    status, headers, body = server.request("PUT", f"/v1/files{ns}/file/", b"x")
    assert status == 400 and json.loads(body)["code"] == "IS_A_DIRECTORY"
    assert not exists(server, f"{ns}/new")
    assert os.path.getsize(server.disk(f"{ns}/file")) == 0


# ---------------------------------------------------------------------------------------------
# §5.4 reserved forms (own server: these need the top-level name `ws`)


def test_ws_prefix_files_reachable_except_plain_get(launcher):
    srv = launcher()
    status, _, body = srv.request("POST", "/v1/files/ws/inner/x.txt", b"under ws")
    assert status == 201, body  # other methods are ordinary file operations
    with open(srv.disk("/ws/inner/x.txt"), "rb") as fh:
        assert fh.read() == b"under ws"
    status, headers, body = srv.request("HEAD", "/v1/files/ws/inner/x.txt")
    assert status == 200
    assert headers["x-callfs-type"] == "file"
    assert headers["x-callfs-size"] == "8"
    assert headers["x-callfs-owner"] == "alice"
    for target in ("/v1/files/ws/inner/x.txt", "/v1/files/ws/missing"):
        status, headers, body = srv.request("GET", target)
        assert status == 400, target
        assert headers["content-type"].startswith("text/plain")
        assert body == b"Bad Request\n"
    status, headers, body = srv.request("GET", "/v1/files/ws/inner/x.txt", user=None)
    assert status == 401
    assert srv.request("PUT", "/v1/files/ws/inner/x.txt", b"replaced")[0] == 200
    status, headers, body = srv.request("GET", "/v1/directories/ws/inner")
    assert status == 200
    assert [(i["path"], i["size"]) for i in json.loads(body)["items"]] == [("/ws/inner/x.txt", 8)]
    # `GET /v1/files/ws` is the directory itself
    status, headers, body = srv.request("GET", "/v1/files/ws")
    assert status == 200 and [i["path"] for i in json.loads(body)] == ["/ws/inner"]
    assert srv.request("DELETE", "/v1/files/ws/inner/x.txt")[0] == 204
    assert not os.path.exists(srv.disk("/ws/inner/x.txt"))


def test_get_ws_without_slash_downloads_a_file_named_ws(launcher):
    srv = launcher()
    assert srv.request("POST", "/v1/files/ws", b"a file called ws")[0] == 201
    status, headers, body = srv.request("GET", "/v1/files/ws")
    assert status == 200
    assert body == b"a file called ws"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["x-callfs-type"] == "file"
    status, headers, body = srv.request("HEAD", "/v1/files/ws")
    assert status == 200 and headers["x-callfs-size"] == "16"
