"""What the disk holds beside what the metadata says, for tests that plant links in the data
directory: sentinel directories outside the root (`Outside`) that must never change, and a
comparison of a namespace's entries with the names on disk (`assert_consistent`)."""
import json
import os
import urllib.parse
import uuid

STAGED = ".callfs-tmp-"


def _state(top: str) -> dict:
    """Every name under `top`, not followed: content or link target, and the times and link
    count that any write, truncation, hard link or chmod through a link would change."""
    found = {}
    for directory, dirs, files in os.walk(top):
        for name in dirs + files:
            full = os.path.join(directory, name)
            info = os.lstat(full)
            if os.path.islink(full):
                what = ("link", os.readlink(full))
            elif os.path.isdir(full):
                what = ("dir",)
            else:
                with open(full, "rb") as fh:
                    what = ("file", fh.read())
            found[os.path.relpath(full, top)] = (what, info.st_mode, info.st_mtime_ns,
                                                 info.st_ctime_ns, info.st_nlink)
    return found


class Outside:
    """A directory beside the data root (`path`), and the root's prefix sibling
    (`<root>-other`, which a string-prefix check of the root would take for inside), each
    with files nothing may read, write, create or remove."""

    def __init__(self, server):
        tag = uuid.uuid4().hex[:8]
        self.path = os.path.join(str(server.workdir), f"outside-{tag}")
        self.sibling = server.root.rstrip("/") + "-other"
        self.sibling_dir = os.path.join(self.sibling, tag)
        for top in (self.path, self.sibling_dir):
            os.makedirs(os.path.join(top, "sub"))
            for name, data in (("secret.txt", b"outside secret"), ("f", b"outside f"),
                               ("sub/inner.txt", b"outside inner"),
                               (STAGED + "0123456789abcdef-0123456789abcdef", b"not ours")):
                with open(os.path.join(top, name), "wb") as fh:
                    fh.write(data)
        self.before = {top: _state(top) for top in (self.path, self.sibling_dir)}

    def assert_unchanged(self):
        for top, before in self.before.items():
            assert _state(top) == before, top
        assert not os.path.lexists(os.path.join(self.path, "created"))


def metadata(server, ns: str) -> dict:
    """{path: (type, size)} of `ns` and every entry below it, from the listing."""
    status, _, body = server.request(
        "GET", "/v1/directories" + urllib.parse.quote(ns) + "?recursive=true&max_depth=1000")
    assert status == 200, (status, body)
    found = {ns: ("directory", 0)}
    for item in json.loads(body)["items"]:
        found[item["path"]] = (item["type"], item["size"] if item["type"] == "file" else 0)
    return found


def on_disk(server, ns: str) -> dict:
    """{path: (type, size)} of what is at `ns` and below on disk, links not followed (a link
    shows as ("link", target))."""
    top = server.disk(ns)
    found = {ns: ("directory", 0)}
    for directory, dirs, files in os.walk(top):
        for name in dirs + files:
            full = os.path.join(directory, name)
            path = ns + "/" + os.path.relpath(full, top)
            if os.path.islink(full):
                found[path] = ("link", os.readlink(full))
            elif os.path.isdir(full):
                found[path] = ("directory", 0)
            else:
                found[path] = ("file", os.lstat(full).st_size)
    return found


def assert_consistent(server, ns: str, tampered=()):
    """The metadata says what the disk holds, below `ns`, except at and below the names a test
    replaced by hand (`tampered`); no staged file is left."""
    def kept(entries):
        return {p: v for p, v in entries.items()
                if not any(p == t or p.startswith(t + "/") for t in tampered)}
    disk = on_disk(server, ns)
    assert not [p for p in disk if p.rsplit("/", 1)[1].startswith(STAGED)], disk
    assert kept(metadata(server, ns)) == kept(disk)
