"""The permission models of API.md §7 as users meet them, against a real server: several users
and groups working in each other's trees under the Unix model (owner, group and other bits,
search on every ancestor, write and search on the parent, the sticky bit, chmod, chgrp and
chown), the 404-versus-403 rule, and the owner model kept for deployments that rely on it.
The hot path is held to the same rules: over random trees, every user's plain GET answers as
the general route does."""
import json
import random
import re
from urllib.parse import quote

import pytest

from conftest import INTERNAL_SECRET, KEYS, launch, shared

USERS = {**KEYS, "carol": "carol-key-0123456789abcdef", "dave": "dave-key-0123456789abcdef"}
GROUPS = {"staff": ["alice", "bob"], "ops": ["carol"]}
DENIED = {"code": "PERMISSION_DENIED", "message": "permission denied"}


def start(tmp_path_factory, model: str):
    return launch(tmp_path_factory.mktemp(f"perm-{model}"),
                  auth={"api_key_users": USERS, "groups": GROUPS, "permission_model": model})


@pytest.fixture(scope="module")
def unix(tmp_path_factory):
    srv = start(tmp_path_factory, "unix")
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def owner_model(tmp_path_factory):
    srv = start(tmp_path_factory, "owner")
    yield srv
    assert srv.stop() == 0, srv.log()


def url(path):
    return "/v1/files" + quote(path)


def call(srv, method, path, user="alice", body=None, headers=None, query=""):
    key = USERS.get(user, user)
    status, answer_headers, data = srv.request(method, url(path) + query, body=body,
                                               headers={"Authorization": f"Bearer {key}",
                                                        **(headers or {})})
    return status, answer_headers, data


def status(srv, method, path, user="alice", body=None, headers=None):
    return call(srv, method, path, user, body, headers)[0]


def mkdir(srv, path, user="alice", mode=None, group=None):
    headers = {}
    if mode:
        headers["X-CallFS-Mode"] = mode
    if group:
        headers["X-CallFS-Group"] = group
    assert status(srv, "POST", path + "/", user, headers=headers) == 201


def put(srv, path, data=b"x", user="alice", mode=None, group=None):
    headers = {}
    if mode:
        headers["X-CallFS-Mode"] = mode
    if group:
        headers["X-CallFS-Group"] = group
    code = status(srv, "PUT", path, user, data, headers)
    assert code in (200, 201), (path, user, code)


def patch(srv, path, fields, user="alice"):
    code, _, data = call(srv, "PATCH", path, user, json.dumps(fields).encode())
    return code, json.loads(data) if data else None


def head(srv, path, user="alice"):
    return call(srv, "HEAD", path, user)[1]


def test_the_root_is_shared_like_tmp(unix):
    headers = head(unix, "/")
    assert (headers["x-callfs-mode"], headers["x-callfs-owner"],
            headers["x-callfs-group"]) == ("1777", "root", "root")


def test_no_one_creates_in_a_directory_that_is_not_theirs(unix, ns):
    mkdir(unix, ns)  # alice's, 0755
    assert status(unix, "PUT", f"{ns}/bobs", "bob", b"b") == 403
    assert status(unix, "POST", f"{ns}/bobs", "bob", b"b") == 403
    assert status(unix, "POST", f"{ns}/sub/", "bob") == 403
    assert status(unix, "PUT", f"{ns}/deep/er/file", "bob", b"b") == 403  # missing parents too
    listing = json.loads(unix.request("GET", f"/v1/directories{ns}")[2])
    assert listing["count"] == 0
    # The group's write bit lets the group in, and only the group.
    assert patch(unix, ns, {"mode": "0775", "group": "staff"})[0] == 200
    put(unix, f"{ns}/bobs", b"b", user="bob")
    assert status(unix, "PUT", f"{ns}/carols", "carol", b"c") == 403
    assert head(unix, f"{ns}/bobs")["x-callfs-owner"] == "bob"
    assert head(unix, f"{ns}/bobs")["x-callfs-group"] == "bob"


def test_read_bits_by_class(unix, ns):
    mkdir(unix, ns)
    put(unix, f"{ns}/staff-only", b"secret", mode="0640", group="staff")
    put(unix, f"{ns}/mine", b"private", mode="0600")
    assert call(unix, "GET", f"{ns}/staff-only", "bob")[2] == b"secret"
    assert call(unix, "GET", f"{ns}/staff-only", "carol")[0] == 403
    assert call(unix, "GET", f"{ns}/mine", "bob")[0] == 403
    # HEAD (stat) needs only search permission on the ancestors.
    assert status(unix, "HEAD", f"{ns}/mine", "carol") == 200
    # An owner denied by the owner bits is not rescued by the others' bits.
    put(unix, f"{ns}/odd", b"odd", mode="0044")
    assert status(unix, "GET", f"{ns}/odd") == 403
    assert call(unix, "GET", f"{ns}/odd", "carol")[2] == b"odd"


def test_search_permission_and_what_it_hides(unix, ns):
    mkdir(unix, ns)
    mkdir(unix, f"{ns}/closed", mode="0700")
    put(unix, f"{ns}/closed/f", b"x")
    put(unix, f"{ns}/closed/deep/g", b"y")
    for path in (f"{ns}/closed/f", f"{ns}/closed/missing", f"{ns}/closed/deep/g",
                 f"{ns}/closed/deep/missing"):
        for method in ("GET", "HEAD", "DELETE"):
            assert status(unix, method, path, "bob") == 404, (method, path)
    # Readable but not searchable: the names below can be learned, nothing else.
    mkdir(unix, f"{ns}/listable", mode="0744")
    put(unix, f"{ns}/listable/f", b"x")
    put(unix, f"{ns}/listable/sub/g", b"y")
    names = [i["name"] for i in json.loads(unix.request(
        "GET", f"/v1/directories{ns}/listable", user="bob")[2])["items"]]
    assert names == ["sub", "f"]
    assert status(unix, "GET", f"{ns}/listable/f", "bob") == 403
    assert status(unix, "HEAD", f"{ns}/listable/f", "bob") == 403
    assert status(unix, "GET", f"{ns}/listable/missing", "bob") == 404
    assert status(unix, "GET", f"{ns}/listable/sub/g", "bob") == 403
    assert status(unix, "GET", f"{ns}/listable/sub/missing", "bob") == 403  # same as g
    # A write below a directory the caller may not search is refused whatever lies below.
    assert status(unix, "PUT", f"{ns}/closed/new", "bob", b"n") == 403
    assert status(unix, "PUT", f"{ns}/closed/f", "bob", b"n") == 403
    # Searchable, not readable: reach what you know the name of, list nothing.
    mkdir(unix, f"{ns}/blind", mode="0711")
    put(unix, f"{ns}/blind/known", b"k")
    assert call(unix, "GET", f"{ns}/blind/known", "bob")[2] == b"k"
    assert unix.request("GET", f"/v1/directories{ns}/blind", user="bob")[0] == 403
    assert unix.request("GET", url(f"{ns}/blind"), user="bob")[0] == 403
    # The owner and the administrators reach everything.
    assert call(unix, "GET", f"{ns}/closed/deep/g")[2] == b"y"
    assert call(unix, "GET", f"{ns}/closed/deep/g", INTERNAL_SECRET)[2] == b"y"


def test_delete_needs_write_on_the_parent_not_the_file(unix, ns):
    mkdir(unix, ns)
    put(unix, f"{ns}/f", b"x")
    assert status(unix, "DELETE", f"{ns}/f", "bob") == 403
    assert patch(unix, ns, {"mode": "0777"})[0] == 200
    put(unix, f"{ns}/locked", b"x", mode="0400")
    assert status(unix, "DELETE", f"{ns}/locked", "bob") == 204
    assert status(unix, "DELETE", f"{ns}/missing", "bob") == 404


def test_the_sticky_bit(unix, ns):
    shared(unix, ns)  # 1777, internal-proxy's
    put(unix, f"{ns}/alices", b"a")
    put(unix, f"{ns}/bobs", b"b", user="bob")
    assert status(unix, "DELETE", f"{ns}/alices", "bob") == 403
    assert patch(unix, f"{ns}/alices", {"name": "taken"}, user="bob")[0] == 403
    assert status(unix, "DELETE", f"{ns}/bobs", "bob") == 204
    # The owner of a sticky directory removes anything in it.
    mkdir(unix, f"{ns}/hers", mode="1777")
    put(unix, f"{ns}/hers/bobs", b"b", user="bob")
    assert status(unix, "DELETE", f"{ns}/hers/bobs", "carol") == 403
    assert status(unix, "DELETE", f"{ns}/hers/bobs") == 204


def test_overwrite_needs_write_on_the_file(unix, ns):
    shared(unix, ns)
    put(unix, f"{ns}/f", b"alice's")
    assert status(unix, "PUT", f"{ns}/f", "bob", b"bob's") == 403
    assert status(unix, "POST", f"{ns}/f", "bob", b"bob's") == 403  # not 409 (§7)
    assert status(unix, "POST", f"{ns}/f", "alice", b"again") == 409
    assert patch(unix, f"{ns}/f", {"mode": "0666"})[0] == 200
    assert status(unix, "PUT", f"{ns}/f", "bob", b"bob's") == 200
    headers = head(unix, f"{ns}/f")
    assert headers["x-callfs-owner"] == "alice" and headers["x-callfs-mode"] == "0666"
    assert status(unix, "POST", f"{ns}/f", "bob", b"x") == 409


def test_mode_and_group_on_create(unix, ns):
    mkdir(unix, ns, mode="0750", group="staff")
    headers = head(unix, ns)
    assert (headers["x-callfs-mode"], headers["x-callfs-group"]) == ("0750", "staff")
    put(unix, f"{ns}/f", b"x", mode="600")
    assert head(unix, f"{ns}/f")["x-callfs-mode"] == "0600"
    put(unix, f"{ns}/sticky-dir/inner", b"x")  # missing parents: the default directory mode
    assert head(unix, f"{ns}/sticky-dir")["x-callfs-mode"] == "0755"
    for bad in ("0800", "abc", "17777", "", "-1", "0o644", "7 7"):
        code, _, body = call(unix, "PUT", f"{ns}/bad", body=b"x", headers={"X-CallFS-Mode": bad})
        assert (code, json.loads(body)) == (400, {"code": "BAD_REQUEST",
                                                  "message": "invalid mode"}), bad
    code, _, body = call(unix, "PUT", f"{ns}/g", body=b"x", headers={"X-CallFS-Group": "nope"})
    assert (code, json.loads(body)["message"]) == (400, 'unknown group "nope"')
    assert status(unix, "PUT", f"{ns}/g", body=b"x", headers={"X-CallFS-Group": "ops"}) == 403
    assert status(unix, "HEAD", f"{ns}/bad") == 404 and status(unix, "HEAD", f"{ns}/g") == 404
    put(unix, f"{ns}/g", b"x", user=INTERNAL_SECRET, group="ops")  # an administrator: any group
    assert head(unix, f"{ns}/g")["x-callfs-group"] == "ops"


def test_chmod_chgrp_chown(unix, ns):
    mkdir(unix, ns)
    put(unix, f"{ns}/f", b"x")
    etag = head(unix, f"{ns}/f")["etag"]
    code, info = patch(unix, f"{ns}/f", {"mode": "0640", "group": "staff"})
    assert code == 200
    assert {k: info[k] for k in ("path", "mode", "owner", "group", "type")} == {
        "path": f"{ns}/f", "mode": "0640", "owner": "alice", "group": "staff", "type": "file"}
    assert head(unix, f"{ns}/f")["etag"] != etag  # attribute changes bump the version
    assert patch(unix, f"{ns}/f", {"mode": "0600"}, user="bob") == (403, DENIED)
    assert patch(unix, f"{ns}/f", {"group": "ops"}) == (403, DENIED)  # not one of alice's
    assert patch(unix, f"{ns}/f", {"group": "nope"}) == (
        400, {"code": "BAD_REQUEST", "message": 'unknown group "nope"'})
    assert patch(unix, f"{ns}/f", {"owner": "bob"}) == (403, DENIED)  # chown: root only
    assert patch(unix, f"{ns}/f", {"owner": "zed"}, user=INTERNAL_SECRET) == (
        400, {"code": "BAD_REQUEST", "message": 'unknown user "zed"'})
    for bad in ("9", "10000", "rw-r--r--", 644):
        assert patch(unix, f"{ns}/f", {"mode": bad}) == (
            400, {"code": "BAD_REQUEST", "message": "invalid mode"}), bad
    code, info = patch(unix, f"{ns}/f", {"owner": "bob"}, user=INTERNAL_SECRET)
    assert (code, info["owner"], info["group"]) == (200, "bob", "staff")
    assert patch(unix, f"{ns}/f", {"mode": "0666"})[0] == 403  # no longer alice's
    assert patch(unix, f"{ns}/f", {"mode": "0604"}, user="bob")[1]["mode"] == "0604"
    assert patch(unix, f"{ns}/missing", {"mode": "0644"})[0] == 404
    # With a move: applied to the destination, in the same request.
    code, body = patch(unix, f"{ns}/f", {"name": "g", "mode": "0644"}, user="bob")
    assert code == 403  # bob may not remove it from alice's directory
    code, body = patch(unix, f"{ns}/f", {"name": "g", "mode": "0600"})
    assert code == 403  # alice may move it, but chmod is the owner's
    assert patch(unix, f"{ns}/f", {"name": "g"})[0] == 200
    put(unix, f"{ns}/mine", b"m")
    assert patch(unix, f"{ns}/mine", {"name": "moved", "mode": "0600"}) == (
        200, {"path": f"{ns}/moved"})
    assert head(unix, f"{ns}/moved")["x-callfs-mode"] == "0600"
    assert patch(unix, f"{ns}/moved", {"destination": f"{ns}/copy", "copy": True,
                                       "group": "staff"})[0] == 201
    headers = head(unix, f"{ns}/copy")
    assert (headers["x-callfs-mode"], headers["x-callfs-group"]) == ("0600", "staff")


def test_recursive_listing_skips_what_it_may_not_open(unix, ns):
    shared(unix, ns)
    put(unix, f"{ns}/open/a", b"a")
    mkdir(unix, f"{ns}/open/closed", mode="0700")
    put(unix, f"{ns}/open/closed/hidden", b"h")
    mkdir(unix, f"{ns}/open/blind", mode="0711")
    put(unix, f"{ns}/open/blind/also-hidden", b"h")
    listing = json.loads(unix.request("GET", f"/v1/directories{ns}/open?recursive=true",
                                      user="bob")[2])
    assert [i["path"] for i in listing["items"]] == [
        f"{ns}/open/blind", f"{ns}/open/closed", f"{ns}/open/a"]
    mine = json.loads(unix.request("GET", f"/v1/directories{ns}/open?recursive=true")[2])
    assert mine["count"] == 5


def test_copy_of_a_tree_with_an_unreadable_entry_is_refused_whole(unix, ns):
    shared(unix, ns)
    put(unix, f"{ns}/tree/a", b"a")
    put(unix, f"{ns}/tree/secret", b"s", mode="0600")
    assert patch(unix, f"{ns}/tree", {"destination": f"{ns}/bobs", "copy": True},
                 user="bob") == (403, DENIED)
    assert status(unix, "HEAD", f"{ns}/bobs", "bob") == 404
    assert patch(unix, f"{ns}/tree/secret", {"mode": "0644"})[0] == 200
    assert patch(unix, f"{ns}/tree", {"destination": f"{ns}/bobs", "copy": True},
                 user="bob")[0] == 201
    assert head(unix, f"{ns}/bobs/a")["x-callfs-owner"] == "bob"


def test_moves_need_remove_at_the_source_and_create_at_the_destination(unix, ns):
    shared(unix, ns)
    mkdir(unix, f"{ns}/alices")
    mkdir(unix, f"{ns}/bobs", user="bob")
    put(unix, f"{ns}/bobs/f", b"b", user="bob")
    assert patch(unix, f"{ns}/bobs/f", {"destination": f"{ns}/alices/f"}, user="bob") == (
        403, DENIED)
    assert patch(unix, f"{ns}/bobs/f", {"destination": f"{ns}/f"}, user="bob")[0] == 200
    assert patch(unix, f"{ns}/f", {"destination": f"{ns}/bobs/f"}, user="alice") == (
        403, DENIED)  # the sticky bit: not hers


def test_the_owner_model_keeps_the_reference_table(owner_model, ns):
    srv = owner_model
    mkdir(srv, ns)
    put(srv, f"{ns}/f", b"alice's", mode="0600")
    assert call(srv, "GET", f"{ns}/f", "bob")[2] == b"alice's"  # mode bits not enforced
    assert status(srv, "PUT", f"{ns}/bobs", "bob", b"b") == 201  # any directory is open
    assert status(srv, "PUT", f"{ns}/f", "bob", b"b") == 403
    assert status(srv, "POST", f"{ns}/f", "bob", b"b") == 403
    assert status(srv, "DELETE", f"{ns}/f", "bob") == 403
    assert status(srv, "DELETE", f"{ns}/bobs", "bob") == 204
    assert patch(srv, f"{ns}/f", {"mode": "0644"}, user="bob") == (403, DENIED)
    assert patch(srv, f"{ns}/f", {"mode": "0644"})[0] == 200


# -- the hot path under the same rules ---------------------------------------------------------

HOT = re.compile(rb"^callfs_hot_path_responses_total (\S+)$", re.M)


def hot_count(srv) -> float:
    return float(HOT.search(srv.request("GET", "/metrics")[2]).group(1))


def comparable(answer):
    code, headers, body = answer
    return code, {k: v for k, v in headers.items() if k not in ("date", "x-request-id")}, body


@pytest.mark.parametrize("seed", range(3))
def test_hot_and_general_answers_agree_per_user_over_random_trees(unix, ns, seed):
    rng = random.Random(seed)
    users = ["alice", "bob", "carol", "dave"]
    modes = ["0755", "0750", "0711", "0700", "0744", "0775", "1777", "0777", "0555"]
    file_modes = ["0644", "0640", "0600", "0604", "0044", "0444", "0000"]
    shared(unix, ns)
    dirs, files = [ns], []
    for index in range(40):
        parent = rng.choice(dirs)
        owner = rng.choice(users)
        path = f"{parent}/n{index}"
        group = rng.choice([owner] + [g for g, members in GROUPS.items() if owner in members])
        if rng.random() < 0.35:
            mode = rng.choice(modes)
            code = status(unix, "POST", path + "/", INTERNAL_SECRET,
                          headers={"X-CallFS-Mode": mode, "X-CallFS-Group": group})
            dirs.append(path)
        else:
            mode = rng.choice(file_modes)
            code = status(unix, "PUT", path, INTERNAL_SECRET, f"data {index}".encode(),
                          headers={"X-CallFS-Mode": mode, "X-CallFS-Group": group})
            files.append(path)
        assert code == 201
        assert patch(unix, path, {"owner": owner}, user=INTERNAL_SECRET)[0] == 200
    used = 0
    for user in users + [INTERNAL_SECRET]:
        for path in files + [f"{d}/missing" for d in dirs[:5]]:
            for method in ("GET", "HEAD"):
                call(unix, method, path, user)  # fills the cache where the rules allow
                before = hot_count(unix)
                plain = call(unix, method, path, user)
                used += hot_count(unix) - before
                general = call(unix, method, path, user, query="?route=general")
                assert comparable(plain) == comparable(general), (user, method, path)
    assert used > 0  # the hot path answered some of them


def test_attributes_with_a_copy_onto_an_existing_file(unix, ns):
    mkdir(unix, ns)
    put(unix, f"{ns}/src", b"new")
    put(unix, f"{ns}/dst", b"old")
    assert patch(unix, f"{ns}/src", {"destination": f"{ns}/dst", "copy": True,
                                     "overwrite": True, "mode": "0600"}) == (200, {"path": f"{ns}/dst"})
    headers = head(unix, f"{ns}/dst")
    assert headers["x-callfs-mode"] == "0600"
    assert call(unix, "GET", f"{ns}/dst")[2] == b"new"
    assert call(unix, "GET", f"{ns}/dst", "bob")[0] == 403
