"""TLS on the API port (API.md §2, §3; CONFIG.md §5.1, §6, §7.1): what is served and what is
refused in the handshake, the headers of every answer (early refusals included), start-up
errors that name the file, and downloads that stay flat in memory.

The certificates are made here with the openssl command, for 127.0.0.1."""
import ctypes
import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from conftest import (KEYS, SECURITY_HEADERS, Server, cli_env, free_port, random_bytes,
                      write_config)
from rawhttp import RawConnection, request_bytes

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

KEY = KEYS["alice"]
AUTH = {"Authorization": f"Bearer {KEY}"}
SECURITY = SECURITY_HEADERS
HSTS = "max-age=31536000; includeSubDomains; preload"
MiB = 1 << 20


def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A certificate for 127.0.0.1 and its key, and the files the start-up must refuse."""
    d = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
            "-out", "server.crt", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", cwd=d)
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
            "-out", "other.key", cwd=d)
    openssl("pkey", "-in", "server.key", "-aes256", "-passout", "pass:secret",
            "-out", "encrypted.key", cwd=d)
    (d / "garbage.pem").write_text("this is not PEM\n")
    return d


def client_context(certs, **versions) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs / "server.crt"))
    for name, value in versions.items():
        setattr(context, name, value)
    return context


class TLSServer(Server):
    def __init__(self, *args, context: ssl.SSLContext):
        super().__init__(*args)
        self.context = context
        self.base = f"https://127.0.0.1:{self.port}"

    def connect(self, timeout: float = 30, source: str | None = None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                           context=self.context,
                                           source_address=None if source is None else (source, 0))

    def worker_pid(self) -> int:
        return self.proc.pid  # one worker: the master serves


def launch_tls(workdir, certs, **server) -> Server:
    """`callfs server` with one worker and the given server keys (https with the test
    certificate unless they say otherwise); ready once /health answers over what it serves."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    keys = {"protocol": "https", "cert_file": str(certs / "server.crt"),
            "key_file": str(certs / "server.key"), "listen_addr": f"127.0.0.1:{port}",
            "external_url": f"https://127.0.0.1:{port}"} | server
    config = write_config(workdir, port, server=keys)
    log_path = str(workdir / "server.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "callfs", "server", "-c", config,
                                 "--workers", "1"], cwd=str(workdir), stdout=log,
                                stderr=subprocess.STDOUT, env=cli_env())
    tls = keys["protocol"] == "https" or (
        keys["protocol"] == "auto" and bool(keys["cert_file"] and keys["key_file"]))
    if tls:
        srv = TLSServer(workdir, port, proc, str(workdir / "files"), log_path,
                        context=client_context(certs))
    else:
        srv = Server(workdir, port, proc, str(workdir / "files"), log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{srv.log()}")
        try:
            if srv.request("GET", "/health", user=None, timeout=2)[0] == 200:
                return srv
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.05)
    srv.stop(signal.SIGKILL)
    raise RuntimeError(f"server did not become ready:\n{srv.log()}")


@pytest.fixture(scope="module")
def tls_server(certs, tmp_path_factory):
    srv = launch_tls(tmp_path_factory.mktemp("tls"), certs)
    yield srv
    assert srv.stop() == 0, srv.log()
    assert not srv.stray_pauses()


@pytest.fixture
def tls_launcher(certs, tmp_path):
    started = []

    def start(**server) -> Server:
        srv = launch_tls(tmp_path / f"srv{len(started)}", certs, **server)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def assert_every_response_headers(headers: dict, tls: bool) -> None:
    for name, value in SECURITY.items():
        assert headers.get(name) == value, (name, headers)
    assert re.fullmatch(r"[0-9a-f]{16}", headers.get("x-request-id", "")), headers
    if tls:
        assert headers.get("strict-transport-security") == HSTS
    else:
        assert "strict-transport-security" not in headers


# -- what is served ----------------------------------------------------------------------------

def test_put_and_get_over_tls_carry_hsts(tls_server):
    body = random_bytes(300_000)
    status, headers, _ = tls_server.request("PUT", "/v1/files/t-put-get/a.bin", body=body)
    assert status == 201
    assert_every_response_headers(headers, tls=True)
    status, headers, data = tls_server.request("GET", "/v1/files/t-put-get/a.bin")
    assert (status, data) == (200, body)
    assert_every_response_headers(headers, tls=True)
    # The second read is the hot path's answer (a cached small file): HSTS there too.
    status, headers, data = tls_server.request("GET", "/v1/files/t-put-get/a.bin")
    assert (status, data) == (200, body)
    assert headers.get("strict-transport-security") == HSTS
    status, headers, _ = tls_server.request("GET", "/v1/files/t-put-get/missing")
    assert status == 404
    assert_every_response_headers(headers, tls=True)


def test_plain_http_has_no_hsts(server):
    status, headers, _ = server.request("GET", "/health", user=None)
    assert status == 200
    assert_every_response_headers(headers, tls=False)


def test_the_start_up_summary_says_how_tls_downloads_travel(tls_server):
    line = next(l for l in tls_server.log().splitlines() if l.startswith("  TLS downloads:"))
    assert "buffered, 64 KiB reads" in line
    with open("/proc/sys/net/ipv4/tcp_available_ulp") as f:
        listed = f.read().split()
    if "tls" not in listed:
        assert "kernel TLS: " in line and "tcp_available_ulp lists" in line


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls_1_2_and_1_3_are_served_with_aead_and_alpn(tls_server, certs, version):
    pinned = getattr(ssl.TLSVersion, version)
    context = client_context(certs, minimum_version=pinned, maximum_version=pinned)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            assert sock.version() == version.replace("_", ".")
            name = sock.cipher()[0]
            assert "GCM" in name or "CHACHA20" in name, name
            if version == "TLSv1_2":
                assert name.startswith("ECDHE-"), name
            assert sock.selected_alpn_protocol() == "http/1.1"
            assert sock.compression() is None
            sock.sendall(request_bytes("GET", "/health", None))
            assert sock.recv(12) == b"HTTP/1.1 200"


def _old_context(purpose, maximum: ssl.TLSVersion) -> ssl.SSLContext | None:
    """A context that speaks TLS 1.0 up to `maximum`, or None when this OpenSSL cannot."""
    ctx = ssl.SSLContext(purpose)
    if purpose == ssl.PROTOCOL_TLS_CLIENT:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
    except (ssl.SSLError, ValueError):
        return None
    return ctx


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_tls_1_0_and_1_1_are_refused_in_the_handshake(tls_server, certs, version):
    pinned = getattr(ssl.TLSVersion, version)
    server_ctx = _old_context(ssl.PROTOCOL_TLS_SERVER, pinned)
    if server_ctx is None or _old_context(ssl.PROTOCOL_TLS_CLIENT, pinned) is None:
        pytest.skip("the local OpenSSL cannot offer TLS 1.0/1.1")
    server_ctx.load_cert_chain(str(certs / "server.crt"), str(certs / "server.key"))

    def old_client() -> ssl.SSLContext:
        return _old_context(ssl.PROTOCOL_TLS_CLIENT, pinned)

    # The control: this client completes the old handshake with a server that allows it.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def serve_once():
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

        thread = threading.Thread(target=serve_once, daemon=True)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=10) as raw:
                with old_client().wrap_socket(raw) as sock:
                    offered = sock.version()
        except (ssl.SSLError, OSError):
            offered = None
        thread.join(10)
    if offered != version.replace("_", "."):
        pytest.skip(f"the local OpenSSL cannot complete a {version} handshake")
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            old_client().wrap_socket(raw)
    # The refusal does not disturb the server.
    assert tls_server.request("GET", "/health", user=None)[0] == 200


def test_cbc_and_non_ecdhe_suites_are_refused(tls_server, certs):
    context = client_context(certs, maximum_version=ssl.TLSVersion.TLSv1_2)
    context.set_ciphers("ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA384:AES128-GCM-SHA256:"
                        "DHE-RSA-AES128-GCM-SHA256")
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_renegotiation_is_refused(tls_server):
    # `R` on its own line asks openssl s_client to renegotiate the TLS 1.2 session.
    proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{tls_server.port}",
                             "-tls1_2"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    time.sleep(1)
    try:
        out, _ = proc.communicate(b"R\n", timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert b"no renegotiation" in out.lower(), out[-500:]


def test_auto_serves_tls_with_both_files_and_plain_without(tls_launcher):
    with_files = tls_launcher(protocol="auto")
    status, headers, _ = with_files.request("GET", "/health", user=None)
    assert status == 200 and headers["strict-transport-security"] == HSTS
    plain = tls_launcher(protocol="auto", cert_file="", key_file="")
    status, headers, _ = plain.request("GET", "/health", user=None)
    assert status == 200 and "strict-transport-security" not in headers
    assert not isinstance(plain, TLSServer)


# -- start-up errors ------------------------------------------------------------------------------

def _drop_file_access_override() -> None:
    """As root, read permissions are only seen without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH:
    drop them from the bounding set before exec (they are then gone in the server)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # linux/capability.h
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")


START_ERRORS = {
    # case: (cert, key, what the message says after the file's name)
    "missing cert": ("absent.crt", "server.key", "does not exist"),
    "missing key": ("server.crt", "absent.key", "does not exist"),
    "unreadable key": ("server.crt", "unreadable.key", "cannot be read: permission denied"),
    "garbage cert": ("garbage.pem", "server.key", "holds no PEM certificate"),
    "garbage key": ("server.crt", "garbage.pem", "holds no PEM private key"),
    "damaged cert": ("damaged.crt", "server.key", "holds a damaged PEM certificate"),
    "key of another certificate": ("server.crt", "other.key", "does not match the certificate"),
    "encrypted key": ("server.crt", "encrypted.key", "is encrypted with a passphrase"),
}


@pytest.mark.parametrize("case", list(START_ERRORS))
def test_a_certificate_that_cannot_be_used_stops_the_start(certs, tmp_path, case):
    cert, key, says = START_ERRORS[case]
    shutil.copy(certs / "server.key", tmp_path / "unreadable.key")
    os.chmod(tmp_path / "unreadable.key", 0)
    text = (certs / "server.crt").read_text()
    (tmp_path / "damaged.crt").write_text(text.replace(text.splitlines()[5], "!" * 64))
    for name in ("server.crt", "server.key", "garbage.pem", "other.key", "encrypted.key"):
        shutil.copy(certs / name, tmp_path / name)
    port = free_port()
    config = write_config(tmp_path, port, server={
        "protocol": "https", "cert_file": str(tmp_path / cert), "key_file": str(tmp_path / key)})
    preexec = None
    if case == "unreadable key" and os.geteuid() == 0:
        preexec = _drop_file_access_override
    # config validate never opens the files (CONFIG.md §6) ...
    checked = subprocess.run([sys.executable, "-m", "callfs", "config", "validate", "-c", config],
                             cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # ... the server does, before it creates anything, and exits 1 naming the file.
    try:
        result = subprocess.run([sys.executable, "-m", "callfs", "server", "-c", config],
                                cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                                timeout=30, preexec_fn=preexec)
    except subprocess.SubprocessError as exc:
        if preexec is not None and "PR_CAPBSET_DROP" in str(exc):
            pytest.skip("cannot drop CAP_DAC_OVERRIDE here")
        raise
    assert result.returncode == 1, result.stdout + result.stderr
    at_fault = "server.key_file" if "key" in case else "server.cert_file"
    path = str(tmp_path / (key if at_fault == "server.key_file" else cert))
    assert f"Error: cannot load the TLS certificate: {at_fault} {path} {says}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "files").exists()  # refused before the data directory exists
    assert not socket_in_use(port)


def socket_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- downloads --------------------------------------------------------------------------------

def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


def test_a_256_mib_download_over_tls_stays_flat_in_memory(tls_server, tmp_path):
    size = 256 * MiB
    block = random_bytes(MiB)
    path = tmp_path / "256m"
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(block)
    expected = hashlib.sha256(block * 4).digest()  # of each 4 MiB
    conn = tls_server.connect(timeout=120)
    try:
        with open(path, "rb") as f:
            conn.request("PUT", "/v1/files/t-big/256m", body=f,
                         headers=AUTH | {"Content-Length": str(size)})
            resp = conn.getresponse()
            resp.read()
        assert resp.status == 201
    finally:
        conn.close()
    pid = tls_server.worker_pid()
    before = status_kib(pid, "VmRSS")
    conn = tls_server.connect(timeout=120)
    try:
        conn.request("GET", "/v1/files/t-big/256m", headers=AUTH)
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("strict-transport-security") == HSTS
        received = 0
        while received < size:
            piece = resp.read(4 * MiB)
            assert len(piece) == 4 * MiB
            assert hashlib.sha256(piece).digest() == expected
            received += len(piece)
        assert resp.read() == b""
    finally:
        conn.close()
    peak = status_kib(pid, "VmHWM")
    # The upload's own peak counts too (HWM never falls): both stay far below the file's size.
    assert peak - before < 48 * 1024, (before, peak)


def test_a_stalled_tls_reader_does_not_grow_the_server(tls_server):
    """Backpressure: while the client reads nothing, the server stops reading the file."""
    size = 64 * MiB
    status, _, _ = tls_server.request("PUT", "/v1/files/t-stall/64m",
                                      body=random_bytes(MiB) * (size // MiB))
    assert status == 201
    pid = tls_server.worker_pid()
    base = status_kib(pid, "VmRSS")
    conn = tls_server.connect(timeout=60)
    try:
        conn.request("GET", "/v1/files/t-stall/64m", headers=AUTH)
        resp = conn.getresponse()
        resp.read(MiB)
        time.sleep(1.5)
        grown = status_kib(pid, "VmRSS") - base
        assert grown < 16 * 1024, grown
        received = MiB
        while piece := resp.read(4 * MiB):
            received += len(piece)
        assert received == size
    finally:
        conn.close()


def test_ranges_over_tls(tls_server):
    body = random_bytes(3 * MiB + 123)
    assert tls_server.request("PUT", "/v1/files/t-range/r.bin", body=body)[0] == 201
    # Across the boundaries of the server's reads, and to the end.
    for first, last in ((1000, 200_999), (65_530, 131_080), (len(body) - 70_000, len(body) - 1)):
        status, headers, data = tls_server.request(
            "GET", "/v1/files/t-range/r.bin", headers={"Range": f"bytes={first}-{last}"})
        assert status == 206
        assert headers["content-range"] == f"bytes {first}-{last}/{len(body)}"
        assert data == body[first:last + 1]
        assert headers["strict-transport-security"] == HSTS
    status, headers, data = tls_server.request("GET", "/v1/files/t-range/r.bin",
                                               headers={"Range": "bytes=-5000"})
    assert (status, data) == (206, body[-5000:])


# -- early refusals: the headers of every response --------------------------------------------

EARLY = {
    # what: (request bytes, status)
    "no Host": (b"GET /health HTTP/1.1\r\n\r\n", 400),
    "two spaces": (b"GET  /health HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "Content-Length and Transfer-Encoding": (
        b"POST /v1/files/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n", 400),
    "unknown transfer coding": (
        b"POST /v1/files/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    "unknown method": (b"BREW /health HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    "HTTP/2.0 request line": (b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "unmet expectation": (b"GET /health HTTP/1.1\r\nHost: x\r\nExpect: tea\r\n\r\n", 417),
    "long target": (b"GET /" + b"a" * (70 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "long head": (b"GET /health HTTP/1.1\r\nHost: x\r\n"
                  + b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 4000) for i in range(300))
                  + b"\r\n", 431),
    "body over the limit": (
        request_bytes("PUT", "/v1/files/t-early/huge", KEY,
                      headers={"Content-Length": str(11 << 30)}), 413),
}


def _early_answer(conn, data: bytes):
    try:
        conn.send(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before the whole head is sent
    return conn.read_response()


@pytest.mark.parametrize("what", list(EARLY))
def test_early_refusals_carry_the_headers_of_every_response(server, what):
    data, status = EARLY[what]
    with RawConnection(server.port) as conn:
        got, headers, _ = _early_answer(conn, data)
    assert got == status
    assert_every_response_headers(headers, tls=False)


class TLSRawConnection(RawConnection):
    def __init__(self, port: int, context: ssl.SSLContext, timeout: float = 10):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.reader = self.sock.makefile("rb")


@pytest.mark.parametrize("what", ["no Host", "HTTP/2.0 request line", "long head",
                                  "unknown transfer coding"])
def test_early_refusals_over_tls_carry_hsts(tls_server, what):
    data, status = EARLY[what]
    with TLSRawConnection(tls_server.port, tls_server.context) as conn:
        got, headers, _ = _early_answer(conn, data)
    assert got == status
    assert_every_response_headers(headers, tls=True)


def test_a_request_head_that_times_out_gets_408_with_the_headers(tls_launcher):
    for srv, tls in ((tls_launcher(read_timeout="1s"), True),
                     (tls_launcher(protocol="http", read_timeout="1s"), False)):
        conn = (TLSRawConnection(srv.port, srv.context) if tls
                else RawConnection(srv.port))
        with conn:
            conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            status, headers, _ = conn.read_response()
        assert status == 408
        assert_every_response_headers(headers, tls=tls)
