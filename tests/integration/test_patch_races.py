"""PATCH under concurrency and crashes: racing moves, moves racing writers inside the moved
subtree, copies racing onto one destination, and kill -9 in the middle of subtree moves and
large copies. Afterwards the namespace must be whole: every entry's bytes match its metadata,
nothing on disk is unknown to the metadata, no temporaries or move intents remain.
"""
import json
import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import SERVICES_UP, launch

STAGED = (".callfs-tmp-", ".callfs-move-")


def patch(srv, path, fields, user="alice"):
    status, _, data = srv.request("PATCH", "/v1/files" + path, body=json.dumps(fields).encode(),
                                  user=user, timeout=60)
    return status, data


def namespace(srv, top: str) -> dict:
    """{path: entry} of the subtree `top` (absent: {})."""
    status, _, data = srv.request("GET", f"/v1/directories{top}?recursive=true&max_depth=100")
    if status == 404:
        return {}
    assert status == 200, (top, status, data)
    return {item["path"]: item for item in json.loads(data)["items"]}


def check_whole(srv, tops: list[str], bodies: set | None = None) -> dict:
    """The subtrees' metadata and disk agree exactly; returns {path: bytes} of their files."""
    known = {}
    for top in tops:
        known.update(namespace(srv, top))
    files = {}
    for path, item in known.items():
        disk = srv.disk(path)
        if item["type"] == "directory":
            assert os.path.isdir(disk), path
            continue
        status, headers, data = srv.request("GET", "/v1/files" + path)
        assert status == 200, (path, status)
        assert len(data) == item["size"] == int(headers["x-callfs-size"]), path
        with open(disk, "rb") as fh:
            assert fh.read() == data, path
        if bodies is not None:
            assert data in bodies, path
        files[path] = data
    on_disk = set()
    for top in tops:
        base = srv.disk(top)
        for directory, dirs, names in os.walk(base):
            for name in dirs + names:
                full = os.path.join(directory, name)
                on_disk.add("/" + os.path.relpath(full, srv.root))
    # Unknown to the metadata, only empty directories may remain (an upload that failed
    # because its directory moved under it leaves the directories it made; they are
    # invisible and never block a later entry of that name).
    unknown = sorted(on_disk - set(known) - set(tops))
    assert all(os.path.isdir(srv.disk(p)) for p in unknown), \
        [p for p in unknown if not os.path.isdir(srv.disk(p))][:10]
    leftovers = [n for _, _, names in os.walk(srv.root) for n in names if n.startswith(STAGED)]
    assert leftovers == [], leftovers
    return files


def test_two_moves_of_one_source_one_wins(site, ns):
    for round_ in range(10):
        src = f"{ns}/r{round_}/src"
        assert site.request("PUT", f"/v1/files{src}/f", body=b"x")[0] == 201
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda i: patch(site, src, {
                "destination": f"{ns}/r{round_}/dst{i}"})[0], range(2)))
        assert sorted(results) == [200, 404], results
    check_whole(site, [ns])


def test_opposite_moves_never_deadlock(site, ns):
    """a/x -> b/x and b/y -> a/y at once, many times: both always finish."""
    for i in range(30):
        assert site.request("PUT", f"/v1/files{ns}/a/x{i}", body=b"x")[0] == 201
        assert site.request("PUT", f"/v1/files{ns}/b/y{i}", body=b"y")[0] == 201
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit(patch, site, f"{ns}/a/x{i}", {"destination": f"{ns}/b/x{i}"})
                for i in range(30)]
        jobs += [pool.submit(patch, site, f"{ns}/b/y{i}", {"destination": f"{ns}/a/y{i}"})
                 for i in range(30)]
        assert all(job.result()[0] == 200 for job in jobs)
    assert time.monotonic() - started < 30
    files = check_whole(site, [ns])
    assert sorted(files) == sorted([f"{ns}/b/x{i}" for i in range(30)]
                                   + [f"{ns}/a/y{i}" for i in range(30)])


def test_concurrent_copies_onto_one_destination_one_wins(site, ns):
    assert site.request("PUT", f"/v1/files{ns}/src", body=os.urandom(300_000))[0] == 201
    assert site.request("PUT", f"/v1/files{ns}/dir/f", body=b"tree")[0] == 201
    for round_ in range(8):
        source = f"{ns}/src" if round_ % 2 else f"{ns}/dir"
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda i: patch(site, source, {
                "destination": f"{ns}/copy{round_}", "copy": True})[0], range(6)))
        assert sorted(results) == [201] + [409] * 5, results
    check_whole(site, [ns])


@pytest.fixture(params=["sqlite+local", "postgres+redis"])
def site(request, server, tmp_path):
    """The session server, or one on PostgreSQL and Redis."""
    if request.param == "sqlite+local":
        yield server
        return
    if not SERVICES_UP:
        pytest.skip("PostgreSQL and Redis on loopback are needed (ci/services.sh)")
    srv = launch(tmp_path / "pg", workers=2,
                 metadata_store={"type": "postgres",
                                 "dsn": request.getfixturevalue("database")},
                 dlm={"type": "redis", "redis_addr": "127.0.0.1:6379"})
    yield srv
    assert srv.stop() == 0


def test_a_move_racing_writers_inside_the_subtree_loses_nothing(site, ns):
    """Writers PUT and DELETE below the directory while a mover keeps moving it to a new name;
    the writers aim at the name they last heard of. A write either lands inside the tree
    wherever it is then, or fails with an error, or (aimed at a stale name) makes a new tree
    there; afterwards metadata and disk agree and every file holds one whole body."""
    assert site.request("PUT", f"/v1/files{ns}/m0/seed", body=b"seed")[0] == 201
    bodies = {b"seed"}
    lock = threading.Lock()
    stop = time.monotonic() + 6
    where = [f"{ns}/m0"]
    moves = []

    def mover():
        k = 0
        while time.monotonic() < stop:
            k += 1
            status, _ = patch(site, where[0], {"destination": f"{ns}/m{k}"})
            moves.append(status)
            if status == 200:
                where[0] = f"{ns}/m{k}"

    def writer(number):
        rng = random.Random(number)
        sequence = 0
        while time.monotonic() < stop:
            sequence += 1
            path = f"/v1/files{where[0]}/sub{rng.randrange(3)}/f{rng.randrange(4)}"
            if rng.random() < 0.8:
                body = f"{number}:{sequence}:".encode() * rng.choice((1, 100, 3000))
                with lock:
                    bodies.add(body)
                status = site.request("PUT", path, body=body)[0]
                # 409: another writer aimed the same file under the directory's other name.
                assert status in (200, 201, 409, 503), status
            else:
                assert site.request("DELETE", path)[0] in (204, 404, 503)

    threads = [threading.Thread(target=mover)] + [
        threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert moves.count(200) >= 5, moves
    assert set(moves) <= {200}, moves
    check_whole(site, [ns], bodies)


def _kill(srv) -> None:
    import subprocess
    out = subprocess.run(["pgrep", "-P", str(srv.proc.pid)], capture_output=True, text=True)
    for pid in [srv.proc.pid] + [int(p) for p in out.stdout.split()]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    srv.proc.wait(10)


def test_kill_9_during_subtree_moves_and_large_copies(tmp_path):
    """A mover shuttles a 300-entry subtree between /a and /b and a copier copies a 64 MiB
    file, both in loops, while the server is killed at random moments; after each restart the
    subtree is wholly at one place and every copy is absent or whole."""
    workdir = tmp_path / "node"
    srv = launch(workdir, workers=2)
    for i in range(100):
        for name in ("x", "y", "z"):
            assert srv.request("PUT", f"/v1/files/a/d{i % 10}/{name}{i}", body=b"%d" % i)[0] == 201
    big = os.urandom(1024 * 1024) * 64
    assert srv.request("PUT", "/v1/files/big", body=big)[0] == 201
    expected = sorted(f"/d{i % 10}/{name}{i}" for i in range(100) for name in "xyz")
    rng = random.Random(11)
    for round_ in range(4):
        stop = threading.Event()

        def mover():
            while not stop.is_set():
                for src, dst in (("/a", "/b"), ("/b", "/a")):
                    try:
                        patch(srv, src, {"destination": dst})
                    except OSError:
                        return

        def copier():
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    patch(srv, "/big", {"destination": f"/copies/r{round_}-{n}", "copy": True,
                                        "create_parents": True})
                except OSError:
                    return

        threads = [threading.Thread(target=mover), threading.Thread(target=copier)]
        for thread in threads:
            thread.start()
        time.sleep(0.5 + rng.random())
        _kill(srv)
        stop.set()
        for thread in threads:
            thread.join(30)
        srv = launch(workdir, workers=2)
        tree_a, tree_b = namespace(srv, "/a"), namespace(srv, "/b")
        assert bool(tree_a) != bool(tree_b), "the subtree is split or gone"
        top = "/a" if tree_a else "/b"
        files = check_whole(srv, [top, "/copies"])
        assert sorted(p[2:] for p in files if p.startswith(top)) == expected
        for path, data in files.items():
            if path.startswith("/copies/"):
                assert data == big, path
    assert srv.stop() == 0
