"""Crash recovery: every state a write can be interrupted in, and kill -9 during uploads.

A write stages its bytes under a temporary name that carries a hash of the entry's name, then
publishes them (exchange over an old version, or a hard link for a new file), then records them,
then drops the temporary name. The first tests build each interrupted state on disk while the
server is stopped and check what the next start makes of it; the last kills a server in the
middle of large uploads, again and again, and checks the namespace each time.
"""
import os
import random
import secrets
import signal
import threading
import time
import uuid

from callfs._native.generations import fnv1a
import pytest

from conftest import KEYS, SERVICES_UP, launch


def staged_name(target: str) -> str:
    return f".callfs-tmp-{secrets.token_hex(8)}-{fnv1a(target):016x}"


def stamp(path: str, mtime_ns: int) -> None:
    os.utime(path, ns=(mtime_ns, mtime_ns))


def head(srv, path):
    status, headers, _ = srv.request("HEAD", "/v1/files" + path)
    return status, headers


def check_namespace(srv, paths):
    """Every listed file's bytes match its metadata; no temporaries remain."""
    for path in paths:
        status, headers, body = srv.request("GET", "/v1/files" + path)
        if status == 404:
            assert not os.path.exists(srv.disk(path)), path
            continue
        assert status == 200, (path, status)
        assert int(headers["x-callfs-size"]) == len(body) == os.path.getsize(srv.disk(path))
        status2, headers2 = head(srv, path)
        assert headers2["etag"] == headers["etag"], path
    assert srv.temporaries() == []


def test_start_rolls_interrupted_writes_forward_or_back(tmp_path):
    workdir = tmp_path / "node"
    srv = launch(workdir)
    for name in ("forward", "unpublished", "recorded", "aside"):
        assert srv.request("PUT", f"/v1/files/r/{name}", body=b"old content")[0] == 201
    _, before = head(srv, "/r/forward")
    assert srv.stop() == 0
    folder = os.path.join(srv.root, "r")
    now = time.time_ns()

    # Published over the old version, not recorded: new bytes at the name (stamped), the old
    # version under the temporary name.
    target = os.path.join(folder, "forward")
    old = os.path.join(folder, staged_name("forward"))
    os.rename(target, old)
    with open(target, "wb") as fh:
        fh.write(b"the new and longer content")
    stamp(target, now)

    # Staged but not published: the name still holds the recorded version.
    with open(os.path.join(folder, staged_name("unpublished")), "wb") as fh:
        fh.write(b"never published")

    # Recorded, only the intent left: the second name of the same file.
    os.link(os.path.join(folder, "recorded"), os.path.join(folder, staged_name("recorded")))

    # A new file linked in but never recorded.
    with open(os.path.join(folder, "newfile"), "wb") as fh:
        fh.write(b"unrecorded")
    os.link(os.path.join(folder, "newfile"), os.path.join(folder, staged_name("newfile")))

    # Set aside by a deletion that never committed: the metadata still holds the file.
    os.rename(os.path.join(folder, "aside"), os.path.join(folder, staged_name("aside")))

    # Set aside by a deletion that committed: no entry of that name.
    with open(os.path.join(folder, staged_name("deleted")), "wb") as fh:
        fh.write(b"deleted")

    # A leftover whose entry cannot be told (an older naming).
    with open(os.path.join(folder, ".callfs-tmp-0123456789abcdef"), "wb") as fh:
        fh.write(b"orphan")

    srv = launch(workdir)
    try:
        status, headers, body = srv.request("GET", "/v1/files/r/forward")
        assert status == 200 and body == b"the new and longer content"
        assert int(headers["x-callfs-size"]) == len(body)
        assert headers["etag"] != before["etag"]
        assert int(headers["etag"].strip('"').split("-")[1], 16) == 2  # version 2
        assert srv.request("GET", "/v1/files/r/unpublished")[2] == b"old content"
        assert srv.request("GET", "/v1/files/r/recorded")[2] == b"old content"
        assert srv.request("GET", "/v1/files/r/newfile")[0] == 404
        assert not os.path.exists(os.path.join(folder, "newfile"))
        assert srv.request("GET", "/v1/files/r/aside")[2] == b"old content"
        assert srv.request("GET", "/v1/files/r/deleted")[0] == 404
        assert sorted(os.listdir(folder)) == ["aside", "forward", "recorded", "unpublished"]
        check_namespace(srv, ["/r/forward", "/r/unpublished", "/r/recorded", "/r/newfile",
                              "/r/aside"])
    finally:
        assert srv.stop() == 0


def _uploader(srv, path, size, stop, results):
    import http.client
    auth = {"Authorization": f"Bearer {KEYS['alice']}"}
    while not stop.is_set():
        data = secrets.token_bytes(64) * (size // 64)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        try:
            conn.request("PUT", "/v1/files" + path, body=data, headers=auth)
            if conn.getresponse().status in (200, 201):
                results[path] = data
        except OSError:
            return  # the server was killed
        finally:
            conn.close()


def _settled(srv, limit: float = 20) -> None:
    """Wait until no staged file remains: with Redis locks, the entries whose locks the killed
    server still held are finished by the first background pass, once those locks expire."""
    deadline = time.monotonic() + limit
    while srv.temporaries() and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.mark.parametrize("setup", ["sqlite+local", "postgres+redis"])
def test_kill_9_during_large_uploads_leaves_a_whole_namespace(tmp_path, setup, request):
    workdir = tmp_path / "killed"
    sections = {}
    if setup == "postgres+redis":
        if not SERVICES_UP:
            pytest.skip("PostgreSQL and Redis on loopback are needed (ci/services.sh)")
        sections = {"metadata_store": {"type": "postgres",
                                       "dsn": request.getfixturevalue("database")},
                    "dlm": {"type": "redis", "redis_addr": "127.0.0.1:6379", "lock_ttl": "2s"}}
    paths = [f"/k/{uuid.uuid4().hex[:8]}{i}" for i in range(4)]
    acknowledged: dict = {}
    rng = random.Random(7)
    for round_ in range(5 if setup == "sqlite+local" else 3):
        srv = launch(workdir, workers=2, **sections)
        _settled(srv)
        check_namespace(srv, paths)
        for path, data in acknowledged.items():
            # An acknowledged write survives, unless a later unacknowledged one replaced it
            # (then the bytes are that later write's, described by their metadata).
            status, _, body = srv.request("GET", "/v1/files" + path)
            assert status == 200
            assert len(body) in (len(data), 8 * 1024 * 1024, 3 * 1024 * 1024)
        stop = threading.Event()
        results: dict = {}
        threads = [threading.Thread(target=_uploader,
                                    args=(srv, path, (8 if i % 2 else 3) * 1024 * 1024, stop, results))
                   for i, path in enumerate(paths)]
        for thread in threads:
            thread.start()
        time.sleep(0.3 + rng.random() * 0.7)
        for pid in _tree(srv.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        srv.proc.wait(10)
        stop.set()
        for thread in threads:
            thread.join(20)
        acknowledged.update(results)
    srv = launch(workdir, **sections)
    try:
        _settled(srv)
        check_namespace(srv, paths)
        assert srv.request("GET", "/v1/directories/k")[0] == 200
    finally:
        assert srv.stop() == 0


def _tree(pid: int) -> list[int]:
    """The server, then its workers (the master first, so it restarts none of them)."""
    import subprocess
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [pid] + [int(p) for p in out.split()]


def test_files_named_like_move_intents_are_entries_and_stay(tmp_path):
    """A user's files at the root named like a move intent are not taken for one at start;
    an unreadable intent that no entry owns (a crash while it was written) goes."""
    workdir = tmp_path / "node"
    srv = launch(workdir)
    bodies = {"/.callfs-move-notes": b"not json at all", "/.callfs-move-empty": b"{}"}
    for path, data in bodies.items():
        assert srv.request("PUT", "/v1/files" + path, body=data)[0] == 201
    assert srv.stop() == 0
    with open(os.path.join(srv.root, ".callfs-move-0123456789abcdef"), "wb") as fh:
        fh.write(b'{"src": "/a", "d')  # cut short
    srv = launch(workdir)
    try:
        for path, data in bodies.items():
            assert srv.request("GET", "/v1/files" + path)[2] == data
        assert not os.path.exists(os.path.join(srv.root, ".callfs-move-0123456789abcdef"))
    finally:
        assert srv.stop() == 0


def test_start_puts_back_a_move_the_metadata_never_recorded(tmp_path):
    """Bytes renamed, the process gone before the commit: the next start renames them back
    (the intent says from where), so the entry is wholly at its old place."""
    import json
    import sqlite3

    workdir = tmp_path / "node"
    srv = launch(workdir)
    assert srv.request("PUT", "/v1/files/m/a/f", body=b"inside")[0] == 201
    assert srv.stop() == 0
    with sqlite3.connect(workdir / "metadata.sqlite3") as db:
        (entry_id,) = db.execute("SELECT id FROM inodes WHERE path = '/m/a'").fetchone()
    info = os.stat(srv.disk("/m/a"))
    with open(os.path.join(srv.root, ".callfs-move-00112233aabbccdd"), "wb") as fh:
        fh.write(json.dumps({"src": "/m/a", "dst": "/m/z", "id": entry_id, "replace": False,
                             "ino": info.st_ino, "dev": info.st_dev}).encode())
    os.rename(srv.disk("/m/a"), srv.disk("/m/z"))
    srv = launch(workdir)
    try:
        assert srv.request("GET", "/v1/files/m/a/f")[2] == b"inside"
        assert not os.path.exists(srv.disk("/m/z"))
        assert not os.path.exists(os.path.join(srv.root, ".callfs-move-00112233aabbccdd"))
    finally:
        assert srv.stop() == 0
