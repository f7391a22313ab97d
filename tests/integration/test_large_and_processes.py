"""Large transfers with bounded memory, worker processes, shutdown, and the zero-config start."""
import hashlib
import json
import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import KEYS, RssWatch, cli_env, run_cli

GIB = 1024 ** 3
BLOCK = 1024 * 1024


def _blocks(count: int):
    """Distinct 1 MiB blocks (no two alike, so a misplaced block changes the digest)."""
    seed = os.urandom(BLOCK)
    for index in range(count):
        yield index.to_bytes(8, "big") + seed[8:]


def test_one_gib_upload_and_download_with_flat_memory(server, ns, record_property):
    path = f"/v1/files{ns}/one-gib.bin"
    sent = hashlib.sha256()

    def body():
        for block in _blocks(GIB // BLOCK):
            sent.update(block)
            yield block

    conn = server.connect(timeout=120)
    with RssWatch(server) as upload_watch:
        started = time.monotonic()
        conn.request("PUT", path, body=body(), encode_chunked=True,
                     headers={"Authorization": f"Bearer {KEYS['alice']}",
                              "Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        response.read()
        upload_seconds = time.monotonic() - started
    assert response.status == 201

    received = hashlib.sha256()
    size = 0
    with RssWatch(server) as download_watch:
        started = time.monotonic()
        conn.request("GET", path, headers={"Authorization": f"Bearer {KEYS['alice']}"})
        response = conn.getresponse()
        assert response.status == 200
        assert int(response.getheader("Content-Length")) == GIB
        while True:
            chunk = response.read(BLOCK)
            if not chunk:
                break
            size += len(chunk)
            received.update(chunk)
        download_seconds = time.monotonic() - started
    conn.close()

    assert size == GIB
    assert received.digest() == sent.digest()
    assert os.path.getsize(server.disk(f"{ns}/one-gib.bin")) == GIB
    assert server.temporaries() == []
    record_property("upload_s", round(upload_seconds, 2))
    record_property("download_s", round(download_seconds, 2))
    record_property("upload_rss_growth_mib", round(upload_watch.growth_mib, 1))
    record_property("download_rss_growth_mib", round(download_watch.growth_mib, 1))
    print(f"\n1 GiB: upload {upload_seconds:.1f} s (RSS +{upload_watch.growth_mib:.1f} MiB), "
          f"download {download_seconds:.1f} s (RSS +{download_watch.growth_mib:.1f} MiB)")
    assert upload_watch.growth_mib < 64
    assert download_watch.growth_mib < 64

    # A server-side copy of the same file: inside the kernel, memory flat.
    with RssWatch(server) as copy_watch:
        started = time.monotonic()
        status, _, body_ = server.request("PATCH", path, timeout=300, body=json.dumps(
            {"destination": f"{ns}/copy.bin", "copy": True}).encode())
        copy_seconds = time.monotonic() - started
    assert (status, json.loads(body_)) == (201, {"path": f"{ns}/copy.bin"})
    copied = hashlib.sha256()
    with open(server.disk(f"{ns}/copy.bin"), "rb") as fh:
        while chunk := fh.read(BLOCK):
            copied.update(chunk)
    assert copied.digest() == sent.digest()
    record_property("copy_s", round(copy_seconds, 2))
    record_property("copy_rss_growth_mib", round(copy_watch.growth_mib, 1))
    print(f"1 GiB copy: {copy_seconds:.1f} s (RSS +{copy_watch.growth_mib:.1f} MiB) against "
          f"download + upload {download_seconds + upload_seconds:.1f} s")
    assert copy_watch.growth_mib < 64
    assert server.request("DELETE", path)[0] == 204
    assert server.request("DELETE", f"/v1/files{ns}/copy.bin")[0] == 204
    assert server.temporaries() == []


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _wait_for(predicate, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def test_workers_share_the_port_and_a_dead_worker_is_replaced(launcher):
    srv = launcher(workers=2)
    workers = _wait_for(lambda: len(_children(srv.proc.pid)) == 2 and _children(srv.proc.pid))
    assert len(workers) == 2
    for index in range(20):
        assert srv.request("PUT", f"/v1/files/w/{index}", body=str(index).encode())[0] == 201
    os.kill(workers[0], signal.SIGKILL)
    replaced = _wait_for(lambda: (set(_children(srv.proc.pid)) - {workers[0]}
                                  if len(_children(srv.proc.pid)) == 2
                                  and workers[0] not in _children(srv.proc.pid) else None))
    assert replaced and workers[1] in replaced
    for index in range(20):
        status, _, body = srv.request("GET", f"/v1/files/w/{index}")
        assert status == 200 and body == str(index).encode()
    assert srv.stop() == 0


def test_concurrent_writers_through_two_workers_never_tear_a_file(launcher):
    srv = launcher(workers=2)
    bodies = [bytes([65 + i]) * (256 * 1024 + i) for i in range(8)]
    errors = []

    def writer(body):
        for _ in range(10):
            status = srv.request("PUT", "/v1/files/contended.bin", body=body)[0]
            if status not in (200, 201):
                errors.append(status)

    threads = [threading.Thread(target=writer, args=(b,)) for b in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    status, headers, body = srv.request("GET", "/v1/files/contended.bin")
    assert status == 200 and body in bodies
    assert int(headers["x-callfs-size"]) == len(body)
    assert srv.temporaries() == []
    assert srv.stop() == 0


def test_sigterm_lets_an_upload_in_flight_finish(launcher):
    srv = launcher(workers=1)
    conn = srv.connect()
    conn.putrequest("PUT", "/v1/files/draining.bin")
    conn.putheader("Authorization", f"Bearer {KEYS['alice']}")
    conn.putheader("Content-Length", str(4 * BLOCK))
    conn.endheaders()
    conn.send(b"d" * BLOCK)
    time.sleep(0.3)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    for _ in range(3):
        conn.send(b"d" * BLOCK)
    response = conn.getresponse()
    assert response.status == 201
    assert response.getheader("Connection") == "close"
    conn.close()
    assert srv.proc.wait(30) == 0
    assert os.path.getsize(srv.disk("/draining.bin")) == 4 * BLOCK


def test_zero_config_start(tmp_path):
    """`callfs server` with no file and no CALLFS_* variable: the embedded profile."""
    with socket_free(8443):
        proc = subprocess.Popen([sys.executable, "-m", "callfs", "server", "--workers", "1"],
                                cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            banner = ""
            deadline = time.monotonic() + 30
            key = None
            while time.monotonic() < deadline and key is None:
                line = proc.stdout.readline()
                if not line:
                    break
                banner += line
                match = re.search(r"Bearer ([A-Za-z0-9_\-]{20,})", line)
                key = match.group(1) if match else None
            assert key, banner
            assert "curl" in banner
            secrets = tmp_path / "callfs-data" / "secrets.yaml"
            assert secrets.stat().st_mode & 0o777 == 0o600
            status = None
            for _ in range(100):
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", 8443, timeout=5)
                    conn.request("PUT", "/v1/files/hello.txt", body=b"hi",
                                 headers={"Authorization": f"Bearer {key}"})
                    status = conn.getresponse().status
                    conn.close()
                    break
                except OSError:
                    time.sleep(0.1)
            assert status == 201
            assert (tmp_path / "callfs-data" / "files" / "hello.txt").read_bytes() == b"hi"
            assert (tmp_path / "callfs-data" / "metadata.sqlite3").exists()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0


class socket_free:
    """Skip when something else already listens on the embedded profile's port."""

    def __init__(self, port: int):
        self.port = port

    def __enter__(self):
        import socket
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                pytest.skip(f"port {self.port} is in use on this machine")
        return self

    def __exit__(self, *exc):
        return False


def test_bad_config_fails_to_start_with_exit_1(tmp_path):
    (tmp_path / "config.yaml").write_text("server:\n  listen_addr: ''\n")
    result = run_cli(["server"], tmp_path)
    assert result.returncode == 1
    assert "config validation failed: server.listen_addr is required" in result.stderr


def test_port_in_use_fails_with_exit_1(tmp_path, server):
    from conftest import write_config
    config = write_config(tmp_path, server.port)
    result = run_cli(["server", "-c", config], tmp_path)
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


def test_restart_sweeps_crash_leftovers_but_keeps_files_with_such_names(tmp_path):
    from conftest import launch
    workdir = tmp_path / "sweep"
    srv = launch(workdir)
    user_file = "/docs/.callfs-tmp-notes"
    assert srv.request("PUT", "/v1/files" + user_file, body=b"mine")[0] == 201
    assert srv.stop() == 0
    leftover = os.path.join(srv.root, "docs", ".callfs-tmp-0123456789abcdef")
    with open(leftover, "wb") as fh:
        fh.write(b"half-written")
    srv = launch(workdir)
    try:
        assert not os.path.exists(leftover)
        status, _, body = srv.request("GET", "/v1/files" + user_file)
        assert status == 200 and body == b"mine"
    finally:
        assert srv.stop() == 0


def test_unsupported_default_backend_refuses_to_start(tmp_path):
    from conftest import write_config
    config = write_config(tmp_path, 1, backend={"default_backend": "s3",
                                                "localfs_root_path": str(tmp_path / "f")})
    result = run_cli(["server", "-c", config], tmp_path)
    assert result.returncode == 1
    assert "default_backend" in result.stderr
