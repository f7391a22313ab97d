"""Fixtures that start the real `callfs server` on a free loopback port.

One server per test session serves most tests; each test works below its own directory
(`ns`). Tests that need other settings (timeouts, workers) start their own with `launch`.
"""
import hashlib
import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import sys
import time
import uuid

import pytest
import yaml

import callfs

# The server runs from the same CallFS the tests import (an installed one, or the source tree).
PACKAGE_HOME = os.path.dirname(os.path.dirname(os.path.abspath(callfs.__file__)))
# What the server logs when it finds a connection paused with nothing pending (http/protocol.py).
from callfs.http.protocol import STRAY_PAUSE  # noqa: E402

KEYS = {
    "alice": "alice-key-0123456789abcdef",
    "bob": "bob-key-0123456789abcdef",
}
POSITIONAL_KEY = "positional-key-0123456789"

# API.md §3: on every response of the API router.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; object-src 'none'; base-uri 'self'; "
                               "form-action 'self'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "strict-origin-when-cross-origin",
    "permissions-policy": "geolocation=(), microphone=(), camera=(), payment=(), usb=(), "
                          "magnetometer=(), gyroscope=(), accelerometer=()",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-embedder-policy": "require-corp",
}
INTERNAL_SECRET = "internal-secret-0123456789"


PG = "postgresql://postgres@127.0.0.1:5432/"


def _reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


SERVICES_UP = _reachable(5432) and _reachable(6379)


def _scratch_database():
    """Create a PostgreSQL database; yields its DSN, then drops it."""
    import asyncio

    import asyncpg

    name = f"callfs_it_{uuid.uuid4().hex[:12]}"

    async def admin(sql):
        conn = await asyncpg.connect(PG + "postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield PG + name
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def database():
    """A PostgreSQL database of the test's own (its DSN), dropped afterwards."""
    yield from _scratch_database()


@pytest.fixture(scope="module")
def module_database():
    """A PostgreSQL database shared by one test module."""
    yield from _scratch_database()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, workdir, port: int, proc: subprocess.Popen, root: str, log_path: str):
        self.workdir = workdir
        self.port = port
        self.proc = proc
        self.root = root
        self.log_path = log_path
        self.base = f"http://127.0.0.1:{port}"

    def connect(self, timeout: float = 30, source: str | None = None) -> http.client.HTTPConnection:
        """A connection to the server, from the loopback address `source` when given."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout,
                                          source_address=None if source is None else (source, 0))

    def request(self, method: str, path: str, body=None, headers=None, user: str | None = "alice",
                timeout: float = 60, source: str | None = None):
        """(status, headers as a lower-cased dict, body bytes) on a fresh connection; `user`
        is a name of KEYS or a key itself."""
        conn = self.connect(timeout, source)
        try:
            all_headers = dict(headers or {})
            if user is not None and "Authorization" not in all_headers:
                key = KEYS.get(user, user)
                all_headers["Authorization"] = f"Bearer {key}"
            conn.request(method, path, body=body, headers=all_headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def stray_pauses(self) -> list[str]:
        """Log lines of connections found paused with nothing pending (a lost wake-up: the
        server repairs it within a second, so only the log tells)."""
        return [line for line in self.log().splitlines() if STRAY_PAUSE in line]

    def disk(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    # -- the bytes where the server's backend keeps them: the local root, or the S3 bucket --

    bucket = None  # set for a server whose new entries go to S3
    moto = None

    def stored(self, path: str) -> bytes | None:
        """A file's bytes as stored, or None when no file is stored at `path`."""
        return self.in_bucket(path) if self.bucket else self.on_disk(path)

    def in_bucket(self, path: str) -> bytes | None:
        """The object of `path` in the server's bucket, or None."""
        try:
            answer = self.moto.client().get_object(Bucket=self.bucket, Key=path.lstrip("/"))
        except Exception as exc:
            if "NoSuchKey" in str(exc) or "404" in str(exc):
                return None
            raise
        return answer["Body"].read()

    def on_disk(self, path: str) -> bytes | None:
        """The file of `path` under the server's local root, or None."""
        try:
            with open(self.disk(path), "rb") as fh:
                return fh.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def stored_dir(self, path: str) -> bool:
        """Whether a directory is stored at `path` (on S3: its empty object `path/`)."""
        if self.bucket:
            listed = self.moto.client().list_objects_v2(Bucket=self.bucket,
                                                        Prefix=path.lstrip("/") + "/",
                                                        MaxKeys=1)
            return listed.get("KeyCount", 0) > 0
        return os.path.isdir(self.disk(path))

    def stored_anything(self, path: str) -> bool:
        return self.stored(path) is not None or self.stored_dir(path)

    def stored_names(self, path: str) -> list[str]:
        """The names stored directly below the directory `path`."""
        if self.bucket:
            prefix = path.lstrip("/") + "/"
            listed = self.moto.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix,
                                                        Delimiter="/")
            names = [o["Key"][len(prefix):] for o in listed.get("Contents", [])]
            names += [p["Prefix"][len(prefix):].rstrip("/") for p in
                      listed.get("CommonPrefixes", [])]
            return [name for name in names if name]
        return os.listdir(self.disk(path))

    def staged(self, path: str) -> list[str]:
        """Writes being staged below the directory `path`: temporary files on local disk,
        multipart uploads in flight on S3."""
        if self.bucket:
            listed = self.moto.client().list_multipart_uploads(Bucket=self.bucket,
                                                               Prefix=path.lstrip("/") + "/")
            return [u["Key"] for u in listed.get("Uploads", [])]
        return [t for t in self.temporaries() if t.startswith(self.disk(path) + os.sep)]

    def lose_bytes(self, path: str) -> None:
        """Take a file's bytes away behind the server's back."""
        if self.bucket:
            self.moto.client().delete_object(Bucket=self.bucket, Key=path.lstrip("/"))
        else:
            os.unlink(self.disk(path))

    def temporaries(self) -> list[str]:
        found = []
        for directory, _dirs, files in os.walk(self.root):
            found += [os.path.join(directory, f) for f in files if f.startswith(".callfs-tmp-")]
        return found

    def rss_kib(self) -> int:
        """Resident memory of the server and its workers, in KiB."""
        pids = [self.proc.pid]
        try:
            out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
            pids += [int(p) for p in out.stdout.split()]
        except FileNotFoundError:
            pass
        total = 0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/status") as fh:
                    for line in fh:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except FileNotFoundError:
                pass
        return total

    def stop(self, sig=signal.SIGTERM, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log(self) -> str:
        with open(self.log_path, errors="replace") as fh:
            return fh.read()

    def records(self) -> list[dict]:
        """The JSON log records written so far."""
        found = []
        for line in self.log().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                found.append(record)
        return found

    def wait_records(self, want, timeout: float = 5.0) -> list[dict]:
        """The records that `want(record)` picks, once there is one: the server writes its
        log from a thread of its own, a moment after the answer. [] after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            found = [record for record in self.records() if want(record)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.02)


def cli_env() -> dict:
    """The environment a user would start CallFS with: no CALLFS_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLFS_")}
    env["PYTHONPATH"] = PACKAGE_HOME
    return env


def run_cli(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "callfs", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=30)


def write_config(workdir, port: int, **sections) -> str:
    config = {
        "server": {"listen_addr": f"127.0.0.1:{port}", "protocol": "http",
                   "external_url": f"http://127.0.0.1:{port}"},
        "auth": {"api_keys": [POSITIONAL_KEY], "api_key_users": dict(KEYS),
                 "internal_proxy_secret": INTERNAL_SECRET,
                 "single_use_link_secret": "link-secret-0123456789"},
        "backend": {"localfs_root_path": str(workdir / "files")},
        "metadata_store": {"type": "sqlite", "sqlite_path": str(workdir / "metadata.sqlite3")},
        "dlm": {"type": "local"},
        "metrics": {"listen_addr": ""},
        "instance_discovery": {"instance_id": "node-test"},
        "log": {"level": "info", "format": "json"},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def launch(workdir, *, workers: int = 1, port: int | None = None, env=None, **sections) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = write_config(workdir, port, **sections)
    log_path = str(workdir / "server.log")
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("CALLFS_")}
    clean_env["PYTHONPATH"] = os.pathsep.join(
        [PACKAGE_HOME] + [p for p in clean_env.get("PYTHONPATH", "").split(os.pathsep) if p])
    clean_env.update(env or {})
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "callfs", "server", "-c", config,
                                 "--workers", str(workers)], cwd=str(workdir), stdout=log,
                                stderr=subprocess.STDOUT, env=clean_env)
    server = Server(workdir, port, proc, str(workdir / "files"), log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            status, _, _ = server.request("GET", "/health", user=None, timeout=2)
            if status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.05)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server did not become ready:\n{server.log()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = launch(tmp_path_factory.mktemp("callfs"))
    yield srv
    code = srv.stop()
    assert code == 0, srv.log()
    assert not srv.stray_pauses()


@pytest.fixture(scope="session")
def moto():
    """moto's S3 server on a loopback port, for the whole run."""
    from s3store import MotoServer
    store = MotoServer()
    yield store
    store.stop()


def s3_sections(moto, bucket: str | None = None) -> dict:
    """Configuration sections for a server whose new files go to a fresh bucket of `moto`."""
    from s3store import ACCESS_KEY, REGION, SECRET_KEY
    if bucket is None:
        bucket = "callfs-" + uuid.uuid4().hex[:12]
        moto.client().create_bucket(Bucket=bucket)
    return {"backend": {"default_backend": "s3", "s3_bucket_name": bucket,
                        "s3_endpoint": moto.endpoint, "s3_region": REGION,
                        "s3_access_key": ACCESS_KEY, "s3_secret_key": SECRET_KEY,
                        "s3_part_size": "5MiB"}}


@pytest.fixture(scope="module", params=["localfs", "s3"])
def backend_server(request, tmp_path_factory):
    """The engine's suite runs on both backends: a server per module and backend (new files
    and directories on that backend); `backend_server.bucket` names the S3 bucket."""
    sections = {}
    bucket = None
    if request.param == "s3":
        moto = request.getfixturevalue("moto")
        sections = s3_sections(moto)
        bucket = sections["backend"]["s3_bucket_name"]
    srv = launch(tmp_path_factory.mktemp(f"callfs-{request.param}"), **sections)
    srv.backend = request.param
    srv.bucket = bucket
    srv.moto = request.getfixturevalue("moto") if bucket else None
    yield srv
    code = srv.stop()
    assert code == 0, srv.log()
    assert not srv.stray_pauses()


@pytest.fixture
def ns(server, request) -> str:
    """A fresh directory path for this test (not created)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name.replace("]", ""))[:60]
    return f"/t-{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def launcher(tmp_path):
    started = []

    def start(**kwargs) -> Server:
        srv = launch(tmp_path / f"srv{len(started)}", **kwargs)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
    for srv in started:
        assert not srv.stray_pauses()


def random_bytes(size: int) -> bytes:
    return secrets.token_bytes(size)


def read_hashed(response, piece: int = 1024 * 1024) -> tuple[int, bytes]:
    """Read a response body to its end a piece at a time: (bytes read, their SHA-256)."""
    digest = hashlib.sha256()
    got = 0
    while True:
        data = response.read(piece)
        if not data:
            return got, digest.digest()
        got += len(data)
        digest.update(data)


class RssWatch:
    """Samples the server's resident memory while a transfer runs."""

    def __init__(self, server):
        self.server = server
        self.base = server.rss_kib()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.server.rss_kib())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / 1024


def shared(server, path: str, user: str = INTERNAL_SECRET) -> str:
    """Create `path` as a directory every user may create entries in, and remove only their
    own from (mode 1777, like /tmp; owned by internal-proxy, so neither alice nor bob owns
    it); returns the path."""
    status = server.request("POST", "/v1/files" + path + "/", headers={"X-CallFS-Mode": "1777"},
                            user=user)[0]
    assert status in (200, 201), status
    return path
