"""Micro-benchmarks of callfs._native against the plain-Python oracles in tests/unit.

    python -m pytest bench/test_native_bench.py --benchmark-only

Each group holds one function on one input, native beside oracle; pathnorm runs on every
request, so its typical case should stay well under a microsecond.
"""
import os
import sys

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ORACLES = os.path.join(_REPO, "tests", "unit")
if _ORACLES not in sys.path:  # the plain-Python oracles live with the unit tests
    sys.path.insert(0, _ORACLES)

import pathnorm_oracle  # noqa: E402
from callfs._native import pathnorm  # noqa: E402

IMPLEMENTATIONS = {"native": pathnorm, "oracle": pathnorm_oracle}

# A typical request path (~30 bytes, one escape) and a long one (~2.3 KB: past the native stack
# buffer, with escapes, multi-byte names and dot segments to resolve).
TYPICAL_URL = b"/projects/2026/report%20q1.pdf"
LONG_URL = b"/" + b"/".join(
    b"dir-%02d%%20caf\xc3\xa9/./x/../\xe6\x97\xa5\xe6\x9c\xac" % i for i in range(80)
) + b"/file.tar.gz"
TYPICAL_PATH = "/projects/2026/report q1.pdf"
LONG_PATH = LONG_URL.decode("utf-8").replace("%20", " ")
TYPICAL_CANONICAL = pathnorm_oracle.normalize_path(TYPICAL_PATH)[0]
LONG_CANONICAL = pathnorm_oracle.normalize_path(LONG_PATH)[0]

CASES = {
    "normalize_url_path": {"typical": TYPICAL_URL, "long": LONG_URL},
    "normalize_path": {"typical": TYPICAL_PATH, "long": LONG_PATH},
    "split_parent": {"typical": TYPICAL_CANONICAL, "long": LONG_CANONICAL},
    "ancestors": {"typical": TYPICAL_CANONICAL, "long": LONG_CANONICAL},
}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", ["typical", "long"])
@pytest.mark.parametrize("function", CASES)
def test_pathnorm(benchmark, function, case, implementation):
    arg = CASES[function][case]
    call = getattr(IMPLEMENTATIONS[implementation], function)
    expected = getattr(pathnorm_oracle, function)(arg)
    benchmark.group = f"pathnorm.{function} {case} ({len(arg)} chars)"
    assert benchmark(call, arg) == expected


# --- stream, generations, fsops ---------------------------------------------------------------
# Quick and bounded: every benchmark below runs for at most a quarter of a second per case.

import socket  # noqa: E402

import fsops_oracle  # noqa: E402
import generations_oracle  # noqa: E402
import stream_oracle  # noqa: E402
from callfs._native import fsops, generations, stream  # noqa: E402

QUICK = pytest.mark.benchmark(max_time=0.25, min_rounds=10)
STREAM = {"native": stream, "oracle": stream_oracle}
GENERATIONS = {"native": generations, "oracle": generations_oracle}
FSOPS = {"native": fsops, "oracle": fsops_oracle}


@pytest.fixture
def socket_pair():
    """An AF_UNIX pair: a send is in the peer's queue when it returns, so one step moves all."""
    near, far = socket.socketpair()
    near.setblocking(False)
    far.setblocking(False)
    yield near, far
    near.close()
    far.close()


@pytest.fixture
def file_of(tmp_path):
    fds = []

    def make(data, flags=os.O_RDONLY):
        path = tmp_path / f"file-{len(fds)}"
        path.write_bytes(data)
        fds.append(os.open(path, flags))
        return fds[-1]
    yield make
    for fd in fds:
        os.close(fd)


@QUICK
@pytest.mark.parametrize("implementation", STREAM)
@pytest.mark.parametrize("size", [4096, 65536])
def test_stream_send_file(benchmark, socket_pair, file_of, size, implementation):
    """One send_file step of a whole small file, and the peer reading it back out."""
    near, far = socket_pair
    data = os.urandom(size)
    fd = file_of(data)
    received = bytearray(size)
    view = memoryview(received)
    send_file = STREAM[implementation].send_file
    benchmark.group = f"stream.send_file {size // 1024} KiB"

    def step():
        sent = send_file(near.fileno(), fd, 0, size)
        got = 0
        while got < sent:
            got += far.recv_into(view[got:])
        return sent

    assert benchmark(step) == size
    assert received == data


@QUICK
@pytest.mark.parametrize("implementation", STREAM)
def test_stream_splice_step(benchmark, socket_pair, tmp_path, implementation):
    """The peer sends 64 KiB; one SpliceSink.step moves it into the file (rewound each time)."""
    near, far = socket_pair
    far.setblocking(True)
    size = 65536
    data = os.urandom(size)
    out = os.open(tmp_path / "upload", os.O_WRONLY | os.O_CREAT, 0o600)
    sink = STREAM[implementation].SpliceSink()
    benchmark.group = "stream.SpliceSink.step 64 KiB"

    def step():
        far.sendall(data)
        os.lseek(out, 0, os.SEEK_SET)
        return sink.step(near.fileno(), out, size)

    try:
        assert benchmark(step) == size
        assert (tmp_path / "upload").read_bytes() == data
    finally:
        sink.close()
        os.close(out)


@QUICK
@pytest.mark.parametrize("implementation", GENERATIONS)
def test_generations_stamp(benchmark, file_of, implementation):
    slots = 4096
    fd = file_of(b"\0" * generations.table_bytes(slots), os.O_RDWR)
    table = GENERATIONS[implementation].GenerationTable(fd, slots)
    table.begin(TYPICAL_CANONICAL)
    table.end(TYPICAL_CANONICAL)
    benchmark.group = f"generations.GenerationTable.stamp ({len(TYPICAL_CANONICAL)} chars)"
    assert benchmark(table.stamp, TYPICAL_CANONICAL) == 1 << 23


@QUICK
@pytest.mark.parametrize("implementation", GENERATIONS)
@pytest.mark.parametrize("case", ["typical", "long"])
def test_generations_fnv1a(benchmark, case, implementation):
    text = TYPICAL_CANONICAL if case == "typical" else LONG_CANONICAL
    benchmark.group = f"generations.fnv1a {case} ({len(text)} chars)"
    assert benchmark(GENERATIONS[implementation].fnv1a, text) == generations_oracle.fnv1a(text)


@QUICK
@pytest.mark.parametrize("implementation", FSOPS)
def test_fsops_rename_exchange(benchmark, tmp_path, implementation):
    """Swap two small files in one directory (each call swaps them back)."""
    (tmp_path / "a").write_bytes(b"A")
    (tmp_path / "b").write_bytes(b"B")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    exchange = FSOPS[implementation].rename_exchange
    benchmark.group = "fsops.rename_exchange"
    try:
        benchmark(exchange, fd, "a", fd, "b")
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]
    assert {(tmp_path / "a").read_bytes(), (tmp_path / "b").read_bytes()} == {b"A", b"B"}


import test_httphead  # noqa: E402
from callfs._native import httphead  # noqa: E402

HEAD_IMPLEMENTATIONS = {"native": httphead, "oracle": test_httphead.oracle}


@pytest.fixture(scope="module")
def hot_site(tmp_path_factory):
    engine, auth, close = test_httphead.make_site(str(tmp_path_factory.mktemp("hot")))
    yield engine, auth
    close()


@QUICK
@pytest.mark.parametrize("implementation", HEAD_IMPLEMENTATIONS)
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_httphead_hot_request(benchmark, hot_site, method, implementation):
    """One request (the bytes wrk sends) through the head callbacks and the hot path to the
    written answer: a cached 4 KiB file, a known key."""
    engine, auth = hot_site
    module = HEAD_IMPLEMENTATIONS[implementation]
    hot = test_httphead.hot_path_of(module, engine, auth)
    conn = test_httphead.connection(module, hot)
    data = (method + b" /v1/files/d/small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
            b"Authorization: Bearer " + test_httphead.KEY.encode() + b"\r\n\r\n")
    benchmark.group = f"httphead: {method.decode()} of a cached 4 KiB file"
    benchmark(conn.data_received, data)
    assert conn.events == [] and hot.answered >= 10
    assert len(conn.transport.written[-1]) > (4096 if method == b"GET" else 0)
