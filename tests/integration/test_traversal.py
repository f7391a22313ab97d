"""Non-canonical paths, as the advisories published against comparable file servers use them
(dot segments, encoded dots and slashes, backslashes, double encoding, overlong UTF-8, NUL),
end to end: a path is refused with 400 or acts on its canonical path (API.md §5.1), never
creating metadata under one name while the bytes land under another, never reaching another
user's file, never leaving the data root. A path that collapses to `/` is refused for PUT,
DELETE and PATCH (§9.4–§9.6)."""
import json
import os
import uuid

import pytest

from diskcheck import Outside, assert_consistent, metadata


@pytest.fixture
def outside(server):
    sentinels = Outside(server)
    yield sentinels
    sentinels.assert_unchanged()


@pytest.fixture
def home(server, outside):
    """The test's own directory (named apart from its parameters, which hold the very bytes
    under test), created; its consistency is checked afterwards."""
    ns = f"/traversal-{uuid.uuid4().hex[:12]}"
    assert server.request("POST", f"/v1/files{ns}/")[0] == 201
    yield ns
    assert_consistent(server, ns)


def code(body: bytes) -> str:
    return json.loads(body)["code"]


def patch(server, path, body: dict, user="alice"):
    status, _, data = server.request("PATCH", "/v1/files" + path, json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, user=user)
    return status, data


# (request path below the namespace, as sent; the canonical path it names below it, or None
# when it is refused with 400 INVALID_PATH)
TARGETS = [
    ("dir/../secret.txt", "secret.txt"),
    ("sub/%2e%2e/e.txt", "e.txt"),
    ("sub/%2E%2E/E.txt", "E.txt"),
    ("%2e/dot.txt", "dot.txt"),
    ("a/b/%2e%2e/%2e%2e/c.txt", "c.txt"),
    ("%252e%252e/double.txt", "%2e%2e/double.txt"),
    ("pct%252fslash.txt", "pct%2fslash.txt"),
    ("a%2Fb.txt", None),
    ("a%2fb.txt", None),
    ("sub/..%2fx.txt", None),
    ("sub/..%2Fx.txt", None),
    ("a%5Cb.txt", None),
    ("sub/..%5cx.txt", None),
    ("a\\b.txt", None),
    ("sub\\..\\x.txt", None),
    ("%c0%ae%c0%ae/overlong.txt", None),
    ("%c0%af.txt", None),
    ("%e0%80%ae%e0%80%ae/overlong.txt", None),
    ("%c0%2e.txt", None),
    ("n%00ul.txt", None),
    ("nul.txt%00.jpg", None),
    ("%00", None),
    ("../../escape.txt", None),
    ("sub/%2e%2e/%2e%2e/%2e%2e/escape.txt", None),
    ("%2e%2e/%2e%2e/escape.txt", None),
    ("..%2f..%2fescape.txt", None),
]


@pytest.mark.parametrize("method", ["PUT", "POST"])
@pytest.mark.parametrize("target, canonical", TARGETS)
def test_a_write_lands_at_its_canonical_path_or_nowhere(server, home, method, target,
                                                        canonical):
    status, _, body = server.request(method, f"/v1/files{home}/{target}", b"payload")
    if canonical is None:
        assert (status, code(body)) == (400, "INVALID_PATH"), target
        assert metadata(server, home) == {home: ("directory", 0)}
        assert os.listdir(server.disk(home)) == []
        return
    assert status == 201, (target, status, body)
    path = f"{home}/{canonical}"
    with open(server.disk(path), "rb") as fh:
        assert fh.read() == b"payload"
    assert metadata(server, home)[path] == ("file", 7)
    assert server.request("GET", "/v1/files" + path.replace("%", "%25"))[2] == b"payload"


@pytest.mark.parametrize("target, canonical", [t for t in TARGETS if t[1] is None])
@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
def test_reads_and_deletes_of_refused_paths(server, home, method, target, canonical):
    assert server.request("PUT", f"/v1/files{home}/x.txt", b"x")[0] == 201
    status = server.request(method, f"/v1/files{home}/{target}")[0]
    assert status == 400, target
    assert metadata(server, home) == {home: ("directory", 0), f"{home}/x.txt": ("file", 1)}


def test_another_users_file_is_never_reached(server, home):
    # bob's directory, where alice may create files (sticky: none may touch the other's)
    assert patch(server, home, {"mode": "1777"})[0] == 200
    assert server.request("POST", f"/v1/files{home}/shared/", user="bob")[0] == 201
    assert patch(server, f"{home}/shared", {"mode": "1777"}, user="bob")[0] == 200
    top, home = home, f"{home}/shared"
    assert server.request("PUT", f"/v1/files{home}/bob.txt", b"bob's", user="bob")[0] == 201
    assert server.request("PUT", f"/v1/files{home}/mine.txt", b"alice's")[0] == 201
    for target in ("x/../bob.txt", "x/%2e%2e/bob.txt", "./bob.txt", "/bob.txt", "bob.txt/.",
                   "x/y/%2E%2E/../bob.txt"):
        status, _, body = server.request("PUT", f"/v1/files{home}/{target}", b"alice's")
        assert (status, code(body)) == (403, "PERMISSION_DENIED"), target
        assert server.request("DELETE", f"/v1/files{home}/{target}")[0] == 403, target
        status, _ = patch(server, f"{home}/{target}", {"name": "taken.txt"})
        assert status == 403, target
    for target in ("bob.txt%00", "x/..%2fbob.txt", "x%5c..%5cbob.txt", "%c0%ae%c0%ae/bob.txt"):
        assert server.request("PUT", f"/v1/files{home}/{target}", b"alice's")[0] == 400
    for destination in (f"{home}/x/../bob.txt", f"{home}//bob.txt", f"{home}/./bob.txt",
                        f"{home[1:]}/bob.txt"):
        for copy in (False, True):
            status, _ = patch(server, f"{home}/mine.txt", {"destination": destination,
                                                          "overwrite": True, "copy": copy})
            assert status == 403, destination
    status, _ = patch(server, f"{home}/mine.txt", {"name": "../bob.txt", "overwrite": True})
    assert status == 400
    with open(server.disk(f"{home}/bob.txt"), "rb") as fh:
        assert fh.read() == b"bob's"
    status, headers, body = server.request("GET", f"/v1/files{home}/bob.txt", user="bob")
    assert (status, body, headers["x-callfs-owner"]) == (200, b"bob's", "bob")
    assert server.request("GET", f"/v1/files{home}/mine.txt")[2] == b"alice's"
    assert metadata(server, top) == {top: ("directory", 0), home: ("directory", 0),
                                     f"{home}/bob.txt": ("file", 5),
                                     f"{home}/mine.txt": ("file", 7)}


# (body of a PATCH of {home}/src; where the source then is below the namespace, or the status
# and code of the refusal)
PATCHES = [
    ({"destination": "{home}/d/../moved"}, "moved"),
    ({"destination": "{home}/d/./../moved/"}, "moved"),
    ({"destination": "{home}//moved"}, "moved"),
    ({"destination": "{home}/%2e%2e/x", "create_parents": True}, "%2e%2e/x"),
    ({"destination": "{home}/x%2Fy"}, "x%2Fy"),
    ({"destination": "{home}/x%5Cy"}, "x%5Cy"),
    ({"name": "%2e%2e"}, "%2e%2e"),
    ({"name": "a%2fb"}, "a%2fb"),
    ({"name": "..."}, "..."),
    ({"destination": "{home}/a\\b"}, (400, "BAD_REQUEST")),
    ({"destination": "{home}\\..\\x"}, (400, "BAD_REQUEST")),
    ({"destination": "{home}/a\u0000b"}, (400, "BAD_REQUEST")),
    ({"destination": "../../escape"}, (400, "BAD_REQUEST")),
    ({"destination": "{home}/../../../escape"}, (400, "BAD_REQUEST")),
    ({"name": "../x"}, (400, "BAD_REQUEST")),
    ({"name": ".."}, (400, "BAD_REQUEST")),
    ({"name": "."}, (400, "BAD_REQUEST")),
    ({"name": "a/b"}, (400, "BAD_REQUEST")),
    ({"name": "a\\b"}, (400, "BAD_REQUEST")),
    ({"name": "x\u0000"}, (400, "BAD_REQUEST")),
]


@pytest.mark.parametrize("copy", [False, True])
@pytest.mark.parametrize("body, outcome", PATCHES)
def test_patch_names_and_destinations(server, home, body, outcome, copy):
    assert server.request("PUT", f"/v1/files{home}/src", b"source")[0] == 201
    request = {k: (v.replace("{home}", home) if isinstance(v, str) else v)
               for k, v in body.items()}
    status, data = patch(server, f"{home}/src", dict(request, copy=copy))
    found = {p: v for p, v in metadata(server, home).items() if v[0] == "file"}
    if isinstance(outcome, tuple):
        assert (status, code(data)) == outcome, request
        assert found == {f"{home}/src": ("file", 6)}
        return
    assert status == (201 if copy else 200), (request, status, data)
    path = f"{home}/{outcome}"
    assert json.loads(data) == {"path": path}
    assert found == ({f"{home}/src": ("file", 6)} if copy else {}) | {path: ("file", 6)}
    with open(server.disk(path), "rb") as fh:
        assert fh.read() == b"source"


@pytest.mark.parametrize("rest", ["", ".", "a/..", "%2e", "a/%2e%2e", "./", "a/../"])
def test_a_path_that_collapses_to_the_root_is_refused(server, home, rest):
    assert server.request("PUT", f"/v1/files{home}/f", b"f")[0] == 201
    before = metadata(server, "/")
    status, _, body = server.request("PUT", f"/v1/files/{rest}", b"over the root")
    assert (status, code(body)) == (400, "IS_A_DIRECTORY"), rest  # §9.4: a directory
    status, _, body = server.request("DELETE", f"/v1/files/{rest}")
    assert (status, code(body)) == (403, "PERMISSION_DENIED"), rest  # §9.5, §16 #10
    status, body = patch(server, f"/{rest}", {"destination": f"{home}/root"})
    assert (status, code(body)) == (403, "PERMISSION_DENIED"), rest  # §9.6: may not delete it
    if "%" not in rest:  # a PATCH body is not percent-decoded: "/%2e" is a name there
        status, body = patch(server, f"{home}/f", {"destination": f"/{rest}",
                                                   "overwrite": True})
        assert (status, json.loads(body)["message"]) == (
            400, "cannot rename or move the root directory"), rest
    assert metadata(server, "/") == before
    assert os.path.isfile(server.disk(f"{home}/f"))
    assert server.request("HEAD", "/v1/files/")[1]["x-callfs-type"] == "directory"


@pytest.mark.parametrize("target", ["..%2ffiles-other/{tag}/secret.txt",
                                    "../files-other/{tag}/secret.txt",
                                    "%2e%2e/files-other/{tag}/secret.txt",
                                    "%2e%2e%2ffiles-other/{tag}/secret.txt",
                                    "..%5cfiles-other%5c{tag}%5csecret.txt"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_the_roots_prefix_sibling_is_never_reached(server, outside, target, method):
    """Root `<dir>/files`: nothing at `<dir>/files-other` is reachable by any spelling."""
    tag = os.path.basename(outside.sibling_dir)
    status, _, body = server.request(method, "/v1/files/" + target.format(tag=tag), b"x")
    assert status == 400, (target, status)
    assert b"outside" not in body
