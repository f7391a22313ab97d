"""Links planted in the data directory are never followed, for reads or writes (a real server,
its local backend resolving every path beneath its root with no link followed).

Each test replaces something on disk by a link to a directory or file outside the root, then
asks for it through every method; afterwards nothing outside the root has changed and the
metadata says what the disk holds (except at the names the test replaced by hand)."""
import json
import os
import shutil

import pytest

from conftest import launch
from diskcheck import Outside, assert_consistent, metadata


@pytest.fixture
def outside(server):
    sentinels = Outside(server)
    yield sentinels
    sentinels.assert_unchanged()


def put(server, path, data=b"", user="alice"):
    return server.request("PUT", "/v1/files" + path, data, user=user)[0]


def post(server, path, data=b""):
    return server.request("POST", "/v1/files" + path, data)[0]


def patch(server, path, body: dict):
    status, _, data = server.request("PATCH", "/v1/files" + path, json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    return status, data


def never_outside(body: bytes):
    assert b"outside" not in body and b"not ours" not in body, body


def test_a_file_replaced_by_a_link_to_an_outside_file(server, ns, outside):
    assert put(server, f"{ns}/f", b"mine") == 201
    assert put(server, f"{ns}/other", b"other") == 201
    os.unlink(server.disk(f"{ns}/f"))
    os.symlink(os.path.join(outside.path, "secret.txt"), server.disk(f"{ns}/f"))

    status, _, body = server.request("GET", f"/v1/files{ns}/f")
    assert status == 500
    never_outside(body)
    assert server.request("HEAD", f"/v1/files{ns}/f")[0] == 500
    status, _, body = server.request("GET", f"/v1/files{ns}/f", headers={"Range": "bytes=0-3"})
    assert status == 500
    never_outside(body)
    assert put(server, f"{ns}/f", b"overwrite") == 500
    assert patch(server, f"{ns}/f", {"destination": f"{ns}/moved"})[0] == 500
    assert patch(server, f"{ns}/f", {"destination": f"{ns}/copied", "copy": True})[0] == 500
    assert patch(server, f"{ns}/other", {"destination": f"{ns}/f", "overwrite": True})[0] == 500
    assert os.path.islink(server.disk(f"{ns}/f"))
    assert metadata(server, ns) == {ns: ("directory", 0), f"{ns}/f": ("file", 4),
                                    f"{ns}/other": ("file", 5)}
    assert_consistent(server, ns, tampered=[f"{ns}/f"])

    # DELETE takes the entry and the link at its name; the link's target stays.
    assert server.request("DELETE", f"/v1/files{ns}/f")[0] == 204
    assert not os.path.lexists(server.disk(f"{ns}/f"))
    assert_consistent(server, ns)


def test_a_directory_replaced_by_a_link_to_an_outside_directory(server, ns, outside):
    assert put(server, f"{ns}/d/f", b"mine") == 201
    assert put(server, f"{ns}/other", b"other") == 201
    shutil.rmtree(server.disk(f"{ns}/d"))
    os.symlink(outside.path, server.disk(f"{ns}/d"))

    for path in (f"{ns}/d/f", f"{ns}/d/secret.txt", f"{ns}/d/sub/inner.txt"):
        status, _, body = server.request("GET", "/v1/files" + path)
        assert status in (404, 500), (path, status)
        never_outside(body)
    assert server.request("GET", f"/v1/files{ns}/d/f")[0] == 500  # recorded, not followed
    assert put(server, f"{ns}/d/f", b"overwrite") == 500
    assert put(server, f"{ns}/d/created", b"new") == 500
    assert post(server, f"{ns}/d/created", b"new") == 500
    assert put(server, f"{ns}/d/sub/created", b"new") == 500
    assert post(server, f"{ns}/d/created/") == 500
    assert patch(server, f"{ns}/d/f", {"destination": f"{ns}/moved"})[0] == 500
    assert patch(server, f"{ns}/d/f", {"destination": f"{ns}/copied", "copy": True})[0] == 500
    assert patch(server, f"{ns}/other", {"destination": f"{ns}/d/created"})[0] == 500
    assert patch(server, f"{ns}/other",
                 {"destination": f"{ns}/d/created", "copy": True})[0] == 500
    assert patch(server, f"{ns}/other", {"name": "x"})[0] == 200  # beside the link: fine
    assert patch(server, f"{ns}/x", {"name": "other"})[0] == 200
    assert metadata(server, ns) == {ns: ("directory", 0), f"{ns}/d": ("directory", 0),
                                    f"{ns}/d/f": ("file", 4), f"{ns}/other": ("file", 5)}
    assert_consistent(server, ns, tampered=[f"{ns}/d"])
    assert server.request("DELETE", f"/v1/files{ns}/d/f")[0] in (204, 500)
    assert os.path.islink(server.disk(f"{ns}/d"))


def test_a_link_the_metadata_does_not_know(server, ns, outside):
    assert put(server, f"{ns}/real", b"real") == 201
    os.symlink(outside.path, server.disk(f"{ns}/x"))
    os.symlink(os.path.join(outside.path, "secret.txt"), server.disk(f"{ns}/y"))

    for path in (f"{ns}/x", f"{ns}/x/secret.txt", f"{ns}/y"):
        status, _, body = server.request("GET", "/v1/files" + path)
        assert status == 404, path
        never_outside(body)
    assert put(server, f"{ns}/x/created", b"new") == 500
    assert post(server, f"{ns}/x/sub/created", b"new") == 500
    assert post(server, f"{ns}/x/") == 409
    assert put(server, f"{ns}/y", b"new") == 500
    assert post(server, f"{ns}/y", b"new") == 500
    assert patch(server, f"{ns}/real", {"destination": f"{ns}/y"})[0] == 409
    assert patch(server, f"{ns}/real", {"destination": f"{ns}/x/created",
                                        "create_parents": True})[0] == 500
    assert patch(server, f"{ns}/real", {"destination": f"{ns}/x/created",
                                        "create_parents": True, "copy": True})[0] == 500
    assert metadata(server, ns) == {ns: ("directory", 0), f"{ns}/real": ("file", 4)}
    assert_consistent(server, ns, tampered=[f"{ns}/x", f"{ns}/y"])
    assert os.path.islink(server.disk(f"{ns}/x")) and os.path.islink(server.disk(f"{ns}/y"))


@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_a_dangling_link_is_never_created_through(server, ns, outside, method):
    assert post(server, f"{ns}/") == 201
    target = os.path.join(outside.path, "created")
    os.symlink(target, server.disk(f"{ns}/new"))
    assert server.request(method, f"/v1/files{ns}/new", b"bytes")[0] == 500
    assert server.request(method, f"/v1/files{ns}/new/below", b"bytes")[0] == 500
    assert post(server, f"{ns}/new/") == 409
    assert not os.path.lexists(target)
    assert metadata(server, ns) == {ns: ("directory", 0)}
    assert_consistent(server, ns, tampered=[f"{ns}/new"])


def test_a_link_to_the_roots_prefix_sibling(server, ns, outside):
    """A root `<dir>/files` must not take `<dir>/files-other` for inside (a string-prefix
    check would): a relative link there is a link like any other."""
    assert put(server, f"{ns}/o/f", b"mine") == 201
    shutil.rmtree(server.disk(f"{ns}/o"))
    os.symlink(os.path.relpath(outside.sibling_dir, server.disk(ns)), server.disk(f"{ns}/o"))
    assert os.path.isfile(os.path.join(server.disk(f"{ns}/o"), "f"))  # the link works
    status, _, body = server.request("GET", f"/v1/files{ns}/o/f")
    assert status == 500
    never_outside(body)
    assert put(server, f"{ns}/o/f", b"overwrite") == 500
    assert put(server, f"{ns}/o/created", b"new") == 500
    assert_consistent(server, ns, tampered=[f"{ns}/o"])


def test_recovery_never_looks_through_a_link(tmp_path):
    """A restart's recovery pass walks the root: it leaves staged-looking files outside it
    alone, even where a link leads there."""
    srv = launch(tmp_path / "srv")
    assert put(srv, "/d/f", b"mine") == 201
    sentinels = Outside(srv)
    os.symlink(sentinels.path, srv.disk("/d/out"))
    os.symlink(os.path.join(sentinels.path, "secret.txt"),
               srv.disk("/.callfs-move-0123456789abcdef"))
    assert srv.stop() == 0
    srv = launch(tmp_path / "srv")
    assert srv.request("GET", "/v1/files/d/f")[2] == b"mine"
    assert srv.stop() == 0
    sentinels.assert_unchanged()
    assert os.path.islink(srv.disk("/d/out"))
