"""GET /v1/directories/{path} as a client sees it: API.md §9.7 (with §6.2 and §6.3)."""
import json
import re
import urllib.parse

import pytest
from conftest import shared


@pytest.fixture(scope="module")
def server(backend_server):
    """This module's checks hold on every backend: they run on localfs and on S3."""
    return backend_server

INFO_FIELDS = {"name", "path", "type", "size", "mode", "owner", "group", "mtime"}
MTIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def quoted(path: str) -> str:
    return urllib.parse.quote(path, safe="/")


def make(server, *paths, user="alice"):
    """Create each path: a directory when it ends in `/`, else a file holding its own name."""
    for path in paths:
        body = None if path.endswith("/") else path.encode()
        status, _, answer = server.request("POST", "/v1/files" + quoted(path), body, user=user)
        assert status == 201, (path, status, answer)


def listdir(server, path, query="", user="alice", target=None):
    """(headers, body object) of a successful listing."""
    target = target or "/v1/directories" + quoted(path) + (f"?{query}" if query else "")
    status, headers, body = server.request("GET", target, user=user)
    assert status == 200, (target, status, body)
    assert headers["content-type"] == "application/json"
    obj = json.loads(body)
    assert headers["x-callfs-type"] == "directory"
    assert headers["x-callfs-count"] == str(obj["count"])
    assert headers["x-callfs-recursive"] == ("true" if obj["recursive"] else "false")
    assert obj["type"] == "directory"
    assert obj["count"] == len(obj["items"])
    for item in obj["items"]:
        assert set(item) == INFO_FIELDS
    return headers, obj


def paths(obj, ns):
    return [item["path"][len(ns):] for item in obj["items"]]


def test_object_shape_non_recursive(server, ns):
    make(server, f"{ns}/sub/", f"{ns}/sub/inner.txt", f"{ns}/f.txt")
    headers, obj = listdir(server, ns)
    assert set(obj) == {"path", "type", "recursive", "count", "items"}
    assert obj["path"] == ns
    assert obj["recursive"] is False
    assert obj["count"] == 2
    assert headers["x-callfs-count"] == "2"
    assert headers["x-callfs-recursive"] == "false"
    for name in ("x-callfs-mode", "x-callfs-owner", "x-callfs-mtime", "x-callfs-size",
                 "x-callfs-instance-id"):
        assert name not in headers
    sub, f = obj["items"]
    assert sub == {"name": "sub", "path": f"{ns}/sub", "type": "directory", "size": 0,
                   "mode": "0755", "owner": "alice", "group": "alice", "mtime": sub["mtime"]}
    assert f == {"name": "f.txt", "path": f"{ns}/f.txt", "type": "file",
                 "size": len(f"{ns}/f.txt"), "mode": "0644", "owner": "alice",
                 "group": "alice", "mtime": f["mtime"]}
    assert MTIME.match(sub["mtime"]) and MTIME.match(f["mtime"])


def test_object_shape_recursive(server, ns):
    make(server, f"{ns}/sub/inner.txt", f"{ns}/f.txt")
    headers, obj = listdir(server, ns, "recursive=true")
    assert set(obj) == {"path", "type", "recursive", "max_depth", "count", "items"}
    assert obj["recursive"] is True
    assert obj["max_depth"] == 100
    assert headers["x-callfs-recursive"] == "true"
    assert headers["x-callfs-count"] == "3"
    assert paths(obj, ns) == ["/sub", "/f.txt", "/sub/inner.txt"]


def test_listed_entries_owned_by_their_creators(server, ns):
    shared(server, ns)
    make(server, f"{ns}/a.txt")
    make(server, f"{ns}/b.txt", f"{ns}/bobdir/", user="bob")
    _, obj = listdir(server, ns, user="bob")
    assert [(i["name"], i["owner"]) for i in obj["items"]] == [
        ("bobdir", "bob"), ("a.txt", "alice"), ("b.txt", "bob")]


@pytest.mark.parametrize("depth,expected", [
    ("0", ["/b"]),
    ("1", ["/b", "/b/c"]),
    ("2", ["/b", "/b/c", "/b/c/deep.txt"]),
    ("3", ["/b", "/b/c", "/b/c/deep.txt"]),
])
def test_depth_semantics_example(server, ns, depth, expected):
    make(server, f"{ns}/a/b/c/deep.txt")
    headers, obj = listdir(server, f"{ns}/a", f"recursive=true&max_depth={depth}")
    assert [item["path"] for item in obj["items"]] == [f"{ns}/a{p}" for p in expected]
    assert obj["path"] == f"{ns}/a"
    assert obj["recursive"] is True
    if depth == "0":
        assert "max_depth" not in obj
    else:
        assert obj["max_depth"] == int(depth)
    assert headers["x-callfs-count"] == str(len(expected))


def test_max_depth_present_only_when_recursive(server, ns):
    make(server, f"{ns}/a/b/c.txt")
    for query in ("max_depth=5", "recursive=false&max_depth=5", "recursive=&max_depth=2"):
        headers, obj = listdir(server, ns, query)
        assert "max_depth" not in obj, query
        assert obj["recursive"] is False
        assert headers["x-callfs-recursive"] == "false"
        assert paths(obj, ns) == ["/a"]


@pytest.mark.parametrize("value", ["TRUE", "True", "1", "yes", "on", "true ", " true", "t"])
def test_recursive_only_when_exactly_true(server, ns, value):
    make(server, f"{ns}/a/b.txt")
    headers, obj = listdir(server, ns, "recursive=" + urllib.parse.quote(value))
    assert obj["recursive"] is False
    assert headers["x-callfs-recursive"] == "false"
    assert "max_depth" not in obj
    assert paths(obj, ns) == ["/a"]


@pytest.mark.parametrize("value,effective", [
    (None, 100), ("", 100), ("abc", 100), ("1.5", 100), ("-1", 100), ("-100", 100),
    ("5000", 1000), ("1001", 1000), ("1000", 1000), ("100", 100), ("7", 7), ("1", 1),
])
def test_max_depth_parsing(server, ns, value, effective):
    make(server, f"{ns}/l1/l2/l3/f.txt")
    query = "recursive=true" + ("" if value is None else f"&max_depth={value}")
    _, obj = listdir(server, ns, query)
    assert obj["max_depth"] == effective
    expected = ["/l1", "/l1/l2", "/l1/l2/l3", "/l1/l2/l3/f.txt"][:effective + 1]
    assert paths(obj, ns) == expected


def test_block_order_of_recursive_listing(server, ns):
    make(server,
         f"{ns}/D/z.txt", f"{ns}/D/a.txt", f"{ns}/D/B.txt", f"{ns}/D/\u00e9.txt",
         f"{ns}/D/\U0001F600.txt", f"{ns}/D/\uff0f.txt",
         f"{ns}/D/s2/x.txt",
         f"{ns}/D/s1/t/deep.txt", f"{ns}/D/s1/f.txt", f"{ns}/D/s1/_/",
         f"{ns}/D/\u00c4/",
         f"{ns}/D/S0/")
    _, obj = listdir(server, f"{ns}/D", "recursive=true")
    assert paths(obj, f"{ns}/D") == [
        # children of D: directories then files, each by UTF-8 byte order
        "/S0", "/s1", "/s2", "/\u00c4",
        "/B.txt", "/a.txt", "/z.txt", "/\u00e9.txt", "/\uff0f.txt", "/\U0001F600.txt",
        # S0 is empty; then the subtree of s1, completed before s2
        "/s1/_", "/s1/t", "/s1/f.txt",
        "/s1/t/deep.txt",
        "/s2/x.txt",
    ]
    # non-recursive: just the first block
    _, flat = listdir(server, f"{ns}/D")
    assert paths(flat, f"{ns}/D") == paths(obj, f"{ns}/D")[:10]


def test_recursive_listing_of_root_counts_everything_below(server, ns):
    make(server, f"{ns}/x/y.txt")
    _, obj = listdir(server, "/", "recursive=true", target="/v1/directories/?recursive=true")
    assert obj["path"] == "/"
    got = [item["path"] for item in obj["items"]]
    assert ns in got and f"{ns}/x" in got and f"{ns}/x/y.txt" in got
    assert got.index(ns) < got.index(f"{ns}/x") < got.index(f"{ns}/x/y.txt")


@pytest.mark.parametrize("target", ["/v1/directories", "/v1/directories/"])
def test_root_addressed_without_and_with_slash(server, ns, target):
    make(server, f"{ns}/")
    _, obj = listdir(server, "/", target=target)
    assert obj["path"] == "/"
    assert obj["recursive"] is False
    entry = next(i for i in obj["items"] if i["path"] == ns)
    assert entry["name"] == ns[1:] and entry["type"] == "directory"


def test_trailing_slash_ignored(server, ns):
    make(server, f"{ns}/d/f")
    _, obj = listdir(server, None, target=f"/v1/directories{ns}/d/")
    assert obj["path"] == f"{ns}/d"
    assert [i["path"] for i in obj["items"]] == [f"{ns}/d/f"]


def test_empty_directory(server, ns):
    make(server, f"{ns}/")
    for query in ("", "recursive=true", "recursive=true&max_depth=0"):
        headers, obj = listdir(server, ns, query)
        assert obj["items"] == []
        assert obj["count"] == 0
        assert headers["x-callfs-count"] == "0"


def test_path_is_a_file_400(server, ns):
    make(server, f"{ns}/f.txt")
    for query in ("", "?recursive=true"):
        status, headers, body = server.request("GET", f"/v1/directories{ns}/f.txt{query}")
        assert status == 400
        assert headers["content-type"] == "application/json"
        assert set(json.loads(body)) == {"code", "message"}


def test_missing_404(server, ns):
    for query in ("", "?recursive=true"):
        status, headers, body = server.request("GET", f"/v1/directories{ns}/missing{query}")
        assert status == 404
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["code"] == "FILE_NOT_FOUND"


def test_invalid_path_400(server):
    for target in ("/v1/directories/..", "/v1/directories/a/%2e%2e/..", "/v1/directories/a%2Fb",
                   "/v1/directories/a%00"):
        status, headers, body = server.request("GET", target)
        assert status == 400, target
        assert json.loads(body)["code"] == "INVALID_PATH"


def test_unauthenticated_401(server, ns):
    make(server, f"{ns}/")
    status, headers, body = server.request("GET", f"/v1/directories{ns}", user=None)
    assert status == 401
    assert body == b'{"code":"AUTHENTICATION_FAILED","message":"authentication failed"}'


def test_other_users_may_list(server, ns):
    make(server, f"{ns}/a/b.txt")
    _, obj = listdir(server, ns, "recursive=true", user="bob")
    assert paths(obj, ns) == ["/a", "/a/b.txt"]


def test_unknown_query_parameters_ignored(server, ns):
    make(server, f"{ns}/a/b.txt")
    _, obj = listdir(server, ns, "foo=bar&recursive=true&max_depth=0&x")
    assert obj["recursive"] is True and "max_depth" not in obj
    assert paths(obj, ns) == ["/a"]
