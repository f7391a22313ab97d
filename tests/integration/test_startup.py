"""Starting `callfs server`: one server per data directory, and a configuration that says what
it does (unknown keys ignored with a warning naming the key meant, refused with --strict, one
validation for `config validate` and the server, a start-up summary, `--listen` and `--data`).
Real processes, nothing mocked."""
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from conftest import (KEYS, SERVICES_UP, cli_env, free_port, launch, run_cli,
                      write_config)

START_BOUND = 30  # seconds for a server to answer /health
BUSY = "is in use by another CallFS server"


class Started:
    """A `callfs server` run from the command line, its standard output kept apart."""

    def __init__(self, args: list[str], cwd, port: int, env: dict | None = None):
        os.makedirs(cwd, exist_ok=True)
        self.port = port
        self.out_path = os.path.join(cwd, "stdout.txt")
        self.err_path = os.path.join(cwd, "stderr.txt")
        full_env = {**cli_env(), **(env or {})}
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "callfs", "server", *args],
                                         cwd=cwd, env=full_env, stdout=out, stderr=err)
        deadline = time.monotonic() + START_BOUND
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n"
                                   f"{self.stdout()}{self.stderr()}")
            if _healthy(port):
                return
            time.sleep(0.05)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"server did not become ready:\n{self.stdout()}{self.stderr()}")

    def stdout(self) -> str:
        with open(self.out_path, errors="replace") as fh:
            return fh.read()

    def stderr(self) -> str:
        with open(self.err_path, errors="replace") as fh:
            return fh.read()

    def key(self) -> str:
        return re.search(r"Admin API key:\s+(\S+)", self.stdout()).group(1)

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/health")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _request(port: int, method: str, path: str, key: str, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {key}"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _tree(directory) -> dict:
    """Every entry below a directory: relative path → (kind, size of a file at rest). The
    live server may still be growing its database's log and the upload's staged body."""
    found = {}
    for parent, dirs, files in os.walk(directory):
        for name in dirs:
            found[os.path.relpath(os.path.join(parent, name), directory)] = ("dir", 0)
        for name in files:
            path = os.path.join(parent, name)
            moving = name.startswith(("metadata.sqlite3", ".callfs-"))
            found[os.path.relpath(path, directory)] = (
                "file", None if moving else os.path.getsize(path))
    return found


def _staged(root) -> list[str]:
    return [name for _, _, files in os.walk(root) for name in files
            if name.startswith(".callfs-")]


class SlowUpload:
    """A chunked PUT sent a piece at a time on a raw socket."""

    def __init__(self, port: int, path: str, key: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall((f"PUT /v1/files{path} HTTP/1.1\r\nHost: x\r\n"
                           f"Authorization: Bearer {key}\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n").encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))

    def finish(self) -> int:
        self.sock.sendall(b"0\r\n\r\n")
        reader = self.sock.makefile("rb")
        status = int(reader.readline().split()[1])
        self.sock.close()
        return status


def _refused(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert text in result.stderr, result.stderr
    assert "Admin API key" not in result.stdout and "Bearer" not in result.stdout


# --- one server per data directory ---------------------------------------------------------


def test_second_server_on_the_same_data_is_refused_and_changes_nothing(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    first = Started(["--listen", f"127.0.0.1:{port}", "--data", str(data), "--workers", "2"],
                    tmp_path / "one", port)
    try:
        key = first.key()
        assert "Address:        http://127.0.0.1:%d" % port in first.stdout()
        upload = SlowUpload(port, "/inflight.bin", key)
        upload.send(b"a" * 65536)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _staged(data / "files"):
            time.sleep(0.05)
        assert _staged(data / "files"), "the upload's body is staged beside its target"
        before = _tree(data)
        secrets = (data / "secrets.yaml").read_bytes()
        # The same data through every way of naming it: the embedded profile with --data,
        # a configuration file naming its root and database, and PostgreSQL + Redis (which
        # may only share with its own kind; it is refused before it connects to anything).
        (tmp_path / "two").mkdir()
        second = run_cli(["server", "--listen", f"127.0.0.1:{free_port()}", "--data",
                          str(data), "--workers", "1"], tmp_path / "two")
        _refused(second, f"data directory {data} {BUSY}")
        assert os.listdir(tmp_path / "two") == []
        (tmp_path / "three").mkdir()
        config = write_config(tmp_path / "three", free_port(),
                              backend={"localfs_root_path": str(data / "files")},
                              metadata_store={"sqlite_path": str(data / "metadata.sqlite3")})
        _refused(run_cli(["server", "-c", config], tmp_path / "three"),
                 f"data directory {data / 'files'} {BUSY}")
        config = write_config(tmp_path / "three", free_port(),
                              backend={"localfs_root_path": str(data / "files")},
                              metadata_store={"type": "postgres",
                                              "dsn": "postgresql://nobody@127.0.0.1:1/none"},
                              dlm={"type": "redis", "redis_addr": "127.0.0.1:1"})
        _refused(run_cli(["server", "-c", config], tmp_path / "three"),
                 "only servers with PostgreSQL metadata and Redis locks may share it")
        assert sorted(os.listdir(tmp_path / "three")) == ["config.yaml"]
        assert _tree(data) == before
        assert (data / "secrets.yaml").read_bytes() == secrets
        # The first server's upload in flight is whole.
        upload.send(b"b" * 1000)
        assert upload.finish() == 201
        assert _request(port, "GET", "/v1/files/inflight.bin", key) == (
            200, b"a" * 65536 + b"b" * 1000)
    finally:
        assert first.stop() == 0, first.stderr()
    # Once the first server is gone, its data is free again, with the same key.
    port = free_port()
    again = Started(["--listen", f"127.0.0.1:{port}", "--data", str(data), "--workers", "1"],
                    tmp_path / "two", port)
    try:
        assert again.key() == key
        assert "Secrets file:   %s (existing)" % (data / "secrets.yaml") in again.stdout()
        assert _request(port, "GET", "/v1/files/inflight.bin", key)[0] == 200
    finally:
        assert again.stop() == 0


def test_busy_address_refused_before_anything_is_created(tmp_path, server):
    fresh = tmp_path / "fresh"
    result = run_cli(["server", "--listen", f"127.0.0.1:{server.port}", "--data", str(fresh)],
                     tmp_path)
    _refused(result, f"cannot listen on 127.0.0.1:{server.port}")
    assert not fresh.exists()
    assert os.listdir(tmp_path) == []


def test_a_server_whose_master_was_killed_leaves_its_data_free(tmp_path):
    """Workers die with their master, so an immediate restart finds the data directory (and
    the port) free."""
    workdir = tmp_path / "n"
    srv = launch(workdir, workers=2)
    assert srv.request("PUT", "/v1/files/kept.txt", body=b"kept")[0] == 201
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    srv = launch(workdir, workers=1, port=srv.port)
    try:
        assert srv.request("GET", "/v1/files/kept.txt")[2] == b"kept"
    finally:
        assert srv.stop() == 0


@pytest.mark.skipif(not SERVICES_UP, reason="PostgreSQL and Redis on loopback are needed "
                                            "(ci/services.sh starts them)")
def test_postgres_redis_processes_share_a_directory(tmp_path, database):
    root = tmp_path / "files"
    shared = {"backend": {"localfs_root_path": str(root)},
              "metadata_store": {"type": "postgres", "dsn": database},
              "dlm": {"type": "redis", "redis_addr": "127.0.0.1:6379"}}
    first = launch(tmp_path / "a", workers=2, **shared)
    second = launch(tmp_path / "b", workers=1, **shared)
    try:
        assert first.request("PUT", "/v1/files/both.txt", body=b"one namespace")[0] == 201
        assert second.request("GET", "/v1/files/both.txt")[2] == b"one namespace"
        assert "shared with this instance's other processes" in second.log()
        # An embedded-profile kind of server needs the directory to itself ...
        (tmp_path / "c").mkdir()
        config = write_config(tmp_path / "c", free_port(),
                              backend={"localfs_root_path": str(root)})
        _refused(run_cli(["server", "-c", config], tmp_path / "c"),
                 f"data directory {root} {BUSY} (this server uses SQLite or local locks")
        # ... and so does a server on the same database with local locks, whatever its root.
        config = write_config(tmp_path / "c", free_port(),
                              backend={"localfs_root_path": str(tmp_path / "other")},
                              metadata_store={"type": "postgres", "dsn": database})
        _refused(run_cli(["server", "-c", config], tmp_path / "c"), "metadata store ")
        assert not (tmp_path / "other").exists()
    finally:
        assert second.stop() == 0
        assert first.stop() == 0


# --- configuration that says what it does ----------------------------------------------------


def _unknown_key_config(workdir, port: int, change: dict) -> str:
    """write_config's file with a misspelt key in place of a known one."""
    config = write_config(workdir, port)
    with open(config) as fh:
        tree = yaml.safe_load(fh)
    for section, (known, unknown) in change.items():
        tree[section][unknown] = tree[section].pop(known)
    with open(config, "w") as fh:
        yaml.safe_dump(tree, fh)
    return config


UNKNOWN = [
    ({"server": ("listen_addr", "listen_adr")}, "server.listen_adr", "server.listen_addr"),
    ({"dlm": ("type", "tpye")}, "dlm.tpye", "dlm.type"),
    ({"log": ("level", "LEVEL")}, "log.LEVEL", "log.level"),
]


@pytest.mark.parametrize("change,name,meant", UNKNOWN)
def test_unknown_keys_are_warnings_in_validate(tmp_path, change, name, meant):
    """CONFIG.md §2.3: an unknown key is ignored, never a failure; validate names it and the
    key meant."""
    config = _unknown_key_config(tmp_path, free_port(), change)
    result = run_cli(["config", "validate", "-c", config], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == (
        f"Warning: unknown key {name} ignored (did you mean {meant}?)")
    assert "Configuration is valid" in result.stdout.splitlines()
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]


def test_the_server_starts_despite_unknown_keys_and_names_them(tmp_path):
    """Unknown keys at every level, a nested misspelling and keys in another case: the server
    starts, warns about each with the key meant, and its summary says what it really does."""
    port = free_port()
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = write_config(workdir, port, dlm={"tpye": "redis"}, log={"LEVEL": "error"},
                          storage={"path": "/x"}, Server={"listen_addr": ":1"})
    srv = Started(["-c", config, "--workers", "1"], workdir, port)
    try:
        warnings = [line for line in srv.stderr().splitlines() if line.startswith("Warning:")]
        assert sorted(warnings) == sorted([
            "Warning: unknown key dlm.tpye ignored (did you mean dlm.type?)",
            "Warning: unknown key log.LEVEL ignored (did you mean log.level?)",
            "Warning: unknown section storage ignored",
            "Warning: unknown section Server ignored (did you mean server?)",
        ])
        assert srv.stdout().splitlines()[:5] == [
            f"CallFS is starting with configuration file {config}.",
            f"  Address:        http://127.0.0.1:{port}",
            "  TLS:            off",
            f"  Metadata store: sqlite {workdir / 'metadata.sqlite3'}",
            "  Lock manager:   local (this instance's processes only)",
        ]
        assert _request(port, "PUT", "/v1/files/ok.txt", KEYS["alice"], b"ok")[0] == 201
    finally:
        assert srv.stop() == 0, srv.stderr()


def test_a_misspelt_address_shows_in_the_summary(tmp_path):
    """`listen_adr` is ignored: the address is the default one, every interface, and the
    summary says so below the warning."""
    config = _unknown_key_config(tmp_path, free_port(), {"server": ("listen_addr", "listen_adr")})
    result = run_cli(["config", "validate", "-c", config], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == (
        "Warning: unknown key server.listen_adr ignored (did you mean server.listen_addr?)")
    assert "Listen Address: :8443" in result.stdout.splitlines()


@pytest.mark.parametrize("change,name,meant", UNKNOWN)
def test_strict_refuses_unknown_keys_in_validate_and_server(tmp_path, change, name, meant):
    config = _unknown_key_config(tmp_path, free_port(), change)
    full = (f"config validation failed: unknown key in {config}: {name} "
            f"(did you mean {meant}?)")
    result = run_cli(["config", "validate", "--strict", "-c", config], tmp_path)
    assert result.returncode == 1
    assert f"Configuration validation failed: {full}" in result.stdout
    assert result.stderr.startswith(f"Error: {full}\n")
    result = run_cli(["server", "-c", config, "--strict"], tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""  # no banner
    assert result.stderr.startswith(f"Error: {full}\n")
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]  # no database, no files


def test_unknown_variable_is_a_warning_at_start(tmp_path):
    port = free_port()
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = write_config(workdir, port)
    srv = Started(["-c", config, "--workers", "1"], workdir, port,
                  env={"CALLFS_DLM__TPYE": "redis"})
    try:
        assert ("Warning: unknown environment variable CALLFS_DLM__TPYE ignored "
                "(did you mean CALLFS_DLM__TYPE?)") in srv.stderr().splitlines()
        assert "  Lock manager:   local (this instance's processes only)" in srv.stdout()
    finally:
        assert srv.stop() == 0, srv.stderr()


def test_unknown_variable_refused_at_start_when_strict(tmp_path):
    config = write_config(tmp_path, free_port())
    env = {**cli_env(), "CALLFS_DLM__TPYE": "local"}
    result = subprocess.run([sys.executable, "-m", "callfs", "server", "--strict", "-c", config],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(
        "Error: config validation failed: unknown environment variable: CALLFS_DLM__TPYE "
        "(did you mean CALLFS_DLM__TYPE?)\n")
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]


@pytest.mark.parametrize("strict", [[], ["--strict"]])
def test_port_99999_refused_by_validate_and_server_alike(tmp_path, strict):
    write_config(tmp_path, 99999)
    message = ('config validation failed: server.listen_addr "127.0.0.1:99999": '
               'port "99999" is not a number from 1 to 65535')
    validate = run_cli(["config", "validate", "-c", "config.yaml", *strict], tmp_path)
    server = run_cli(["server", "-c", "config.yaml", *strict], tmp_path)
    for result in (validate, server):
        assert result.returncode == 1
        assert result.stderr.startswith(f"Error: {message}\n")
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]


def test_a_store_this_build_lacks_is_refused_at_start(tmp_path):
    config = write_config(tmp_path, free_port(), metadata_store={"type": "raft"})
    assert run_cli(["config", "validate", "-c", config], tmp_path).returncode == 0
    result = run_cli(["server", "-c", config], tmp_path)
    assert result.returncode == 1
    assert "metadata_store.type raft is not available in this build" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]


def test_listen_and_data_flags_win_and_the_summary_says_so(tmp_path):
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    config = write_config(tmp_path, file_port)
    data = tmp_path / "elsewhere"
    srv = Started(["-c", config, "--workers", "1", "--listen", f"127.0.0.1:{flag_port}",
                   "--data", str(data)], tmp_path / "run", flag_port,
                  env={"CALLFS_SERVER__LISTEN_ADDR": f"127.0.0.1:{env_port}"})
    try:
        assert not _listening(file_port) and not _listening(env_port)
        assert _request(flag_port, "PUT", "/v1/files/here.txt", KEYS["alice"], b"here")[0] == 201
        assert (data / "files" / "here.txt").read_bytes() == b"here"
        assert (data / "metadata.sqlite3").exists()
        assert not (tmp_path / "files").exists()
        lines = srv.stdout().splitlines()
        assert lines[:7] == [
            f"CallFS is starting with configuration file {config}.",
            f"  Address:        http://127.0.0.1:{flag_port}",
            "  TLS:            off",
            f"  Metadata store: sqlite {data / 'metadata.sqlite3'}",
            "  Lock manager:   local (this instance's processes only)",
            f"  Data directory: {data} (this server only)",
            "  Workers:        1",
        ]
    finally:
        assert srv.stop() == 0, srv.stderr()


def test_env_wins_over_the_file_without_flags(tmp_path):
    file_port, env_port = free_port(), free_port()
    config = write_config(tmp_path, file_port)
    srv = Started(["-c", config, "--workers", "1"], tmp_path / "run", env_port,
                  env={"CALLFS_SERVER__LISTEN_ADDR": f"127.0.0.1:{env_port}"})
    try:
        assert not _listening(file_port)
        assert f"Data directory: {tmp_path / 'files'} (this server only)" in srv.stdout()
    finally:
        assert srv.stop() == 0
