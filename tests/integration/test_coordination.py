"""Many writers, several processes, one namespace: PostgreSQL metadata and Redis locks.

Two `callfs server` processes (one with two workers) serve the same local root from the same
PostgreSQL database with Redis locks. Clients hammer PUT, POST and DELETE on a few shared paths
for a bounded time; afterwards every file's bytes must match its metadata, every content must be
one of the bodies written whole, and no temporary file may remain. Then Redis and PostgreSQL go
away and come back (through relays the test controls): requests fail fast with 503, and the
servers recover on their own.
"""
import asyncio
import collections
import http.client
import os
import random
import signal
import socket
import threading
import time
import uuid

import asyncpg
import pytest

from conftest import KEYS, SERVICES_UP, launch
from relay import ThreadedRelay

pytestmark = pytest.mark.skipif(not SERVICES_UP, reason="PostgreSQL and Redis on loopback are "
                                                        "needed (ci/services.sh starts them)")


def _sections(root, dsn: str, redis_port: int = 6379):
    return {
        "backend": {"localfs_root_path": str(root)},
        "metadata_store": {"type": "postgres", "dsn": dsn},
        "dlm": {"type": "redis", "redis_addr": f"127.0.0.1:{redis_port}"},
        "server": {"file_op_timeout": "10s"},
    }


def _call(port: int, method: str, path: str, body=None, timeout: float = 30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, "/v1/files" + path, body=body,
                     headers={"Authorization": f"Bearer {KEYS['alice']}"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_two_servers_hammered_on_shared_paths_stay_consistent(tmp_path, database):
    root = tmp_path / "files"
    first = launch(tmp_path / "a", workers=2, **_sections(root, database))
    second = launch(tmp_path / "b", workers=1, **_sections(root, database))
    try:
        ports = [first.port, second.port]
        paths = [f"/h/p{i}" for i in range(6)]
        bodies: set = set()
        counts = collections.Counter()
        lock = threading.Lock()
        deadline = time.monotonic() + 8

        def client(number: int):
            rng = random.Random(number)
            sequence = 0
            while time.monotonic() < deadline:
                path = rng.choice(paths if rng.random() < 0.7 else paths[:2])  # hot paths too
                port = rng.choice(ports)
                op = rng.choices(["PUT", "POST", "DELETE", "GET"], [5, 2, 2, 3])[0]
                sequence += 1
                body = None
                if op in ("PUT", "POST"):
                    # Distinct bodies of distinct sizes: a torn or interleaved write shows.
                    body = (f"{number}:{sequence}:".encode()
                            + bytes([number]) * rng.choice((10, 5000, 300_000)))
                    with lock:
                        bodies.add(body)
                status, headers, data = _call(port, op, path, body)
                with lock:
                    counts[(op, status)] += 1
                if op == "GET" and status == 200:
                    assert int(headers["x-callfs-size"]) == len(data)
                assert status < 500, (op, path, status, data)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        operations = sum(counts.values())
        conflicts = sum(n for (op, status), n in counts.items() if status == 409)
        inconsistencies = []
        for path in paths:
            seen = set()
            for port in ports:
                status, headers, data = _call(port, "GET", path)
                if status == 404:
                    seen.add(None)
                    if os.path.exists(str(root) + path):
                        inconsistencies.append(("bytes without an entry", path))
                    continue
                seen.add(data)
                if data not in bodies:
                    inconsistencies.append(("content never written whole", path))
                if int(headers["x-callfs-size"]) != len(data) != os.path.getsize(str(root) + path):
                    inconsistencies.append(("size", path))
            if len(seen) != 1:
                inconsistencies.append(("servers disagree", path))
        temporaries = [name for _, _, files in os.walk(root) for name in files
                       if name.startswith(".callfs-tmp-")]
        print(f"\nhammer: {operations} operations, {conflicts} conflicts (409), "
              f"{len(inconsistencies)} inconsistencies; {dict(counts)}")
        assert operations > 200
        assert not inconsistencies, inconsistencies
        assert not temporaries
    finally:
        assert first.stop() == 0
        assert second.stop() == 0


def test_redis_and_postgres_outages_answer_503_and_heal(tmp_path, database):
    redis = ThreadedRelay(6379)
    postgres = ThreadedRelay(5432)
    redis.start()
    postgres.start()
    dsn = database.replace("127.0.0.1:5432", f"127.0.0.1:{postgres.port}")
    srv = launch(tmp_path / "n", workers=1, **_sections(tmp_path / "files", dsn, redis.port))
    try:
        assert _call(srv.port, "PUT", "/o/f", b"before")[0] == 201

        redis.stop()
        started = time.monotonic()
        status, _, body = _call(srv.port, "PUT", "/o/f", b"during")
        assert status == 503 and b"SERVICE_UNAVAILABLE" in body
        assert time.monotonic() - started < 5
        assert _call(srv.port, "GET", "/o/f")[2] == b"before"  # reads need no lock
        redis.start()
        _until_ok(lambda: _call(srv.port, "PUT", "/o/f", b"after redis")[0] == 200)
        assert _call(srv.port, "GET", "/o/f")[2] == b"after redis"

        postgres.stop()
        started = time.monotonic()
        status, _, body = _call(srv.port, "PUT", "/o/g", b"during")
        assert status == 503 and b"SERVICE_UNAVAILABLE" in body
        assert time.monotonic() - started < 10
        postgres.start()
        _until_ok(lambda: _call(srv.port, "PUT", "/o/g", b"after postgres")[0] in (200, 201))
        assert _call(srv.port, "GET", "/o/g")[2] == b"after postgres"
        assert _call(srv.port, "GET", "/o/f")[2] == b"after redis"
        assert not srv.temporaries()
    finally:
        srv.stop()
        redis.close()
        postgres.close()


def _until_ok(attempt, limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if attempt():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not recover in time")


def test_a_writer_stalled_past_its_lock_ttl_cannot_commit_over_a_newer_one(tmp_path, database):
    """Fencing: writer A (an engine in this process) stages its body with no lock, takes the
    path's lock to publish, and stalls there — its event loop blocked past the lock's lifetime,
    so no renewal runs. Server B then writes the path. When A goes on, its write is refused
    (503 LOCK_TIMEOUT) and B's version stays, bytes and metadata alike."""
    from callfs.backends.localfs import LocalFSBackend
    from callfs.core.engine import Engine
    from callfs.core.permissions import Principal
    from callfs.domain.errors import LockTimeout
    from callfs.locks.redis import RedisLockManager
    from callfs.metadata.cache import CachedStore, open_table
    from callfs.metadata.postgres import PostgresStore

    root = tmp_path / "files"
    sections = _sections(root, database)
    sections["dlm"]["lock_ttl"] = "2s"
    second = launch(tmp_path / "b", workers=1, **sections)
    path = f"/fence/{uuid.uuid4().hex}"
    results = {}

    class Body:
        expected = None

        def __init__(self, data: bytes):
            self.data = data

        async def read(self) -> bytes:
            data, self.data = self.data, b""
            return data

    def newer_write():
        started = time.monotonic()
        results["b"] = _call(second.port, "PUT", path, b"newer")[0]
        results["waited"] = time.monotonic() - started

    def stall(existing):
        """A's precondition: called once before the lock, then under it — where it stalls."""
        results["calls"] = results.get("calls", 0) + 1
        if results["calls"] == 2:
            writer = threading.Thread(target=newer_write)
            writer.start()
            time.sleep(4.5)  # the loop is blocked: A's lease lapses, B takes the lock and writes
            writer.join(20)

    async def writer_a():
        store = CachedStore(PostgresStore(database), open_table(str(tmp_path / "a-gen")))
        locks = RedisLockManager("127.0.0.1:6379", ttl=2.0)
        engine = Engine(store=store, locks=locks,
                        backends={"localfs": LocalFSBackend(str(root), durable=True)},
                        default_backend="localfs", instance_id="node-test", file_op_timeout=10,
                        metadata_op_timeout=5)
        await store.open()
        await locks.open()
        try:
            with pytest.raises(LockTimeout):
                await engine.put_file(Principal("alice"), path, Body(b"stale"), check=stall)
        finally:
            await locks.close()
            await store.close()

    try:
        assert _call(second.port, "PUT", path, b"original")[0] == 201
        asyncio.run(writer_a())
        assert results["b"] == 200
        assert 1.0 < results["waited"] < 8, results  # it waited for A's lock to expire
        status, headers, data = _call(second.port, "GET", path)
        assert (status, data, headers["x-callfs-size"]) == (200, b"newer", "5")
        with open(str(root) + path, "rb") as fh:
            assert fh.read() == b"newer"
        fences = asyncio.run(_fences(database, path))
        assert fences and fences[0] > 0
        assert not [n for _, _, files in os.walk(root) for n in files
                    if n.startswith(".callfs-tmp-")]
    finally:
        assert second.stop() == 0


async def _fences(dsn: str, path: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return [row[0] for row in await conn.fetch("SELECT fence FROM inodes WHERE path = $1",
                                                   path)]
    finally:
        await conn.close()
