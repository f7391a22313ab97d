"""callfs._native.httphead against its plain-Python oracle: the same bytes through httptools
give the same heads, rejections and hot answers; request IDs are fresh, also after a fork.

The hot path runs on a real metadata store (SQLite behind the shared-generation cache) and a
real local backend, with files of every kind the hot path must tell apart.
"""
import asyncio
import os
import re
import sys
import types

import httptools
import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the oracle sits beside this file
    sys.path.insert(0, _HERE)

import httphead_oracle as oracle  # noqa: E402
import readview_oracle  # noqa: E402
from callfs._native import httphead as native  # noqa: E402
from callfs.backends.localfs import LocalFSBackend  # noqa: E402
from callfs.core.permissions import Principal  # noqa: E402

BOB = Principal("bob")
from callfs.core.engine import READ_VIEW_BUDGET, Engine  # noqa: E402
from callfs.http.auth import Authenticator  # noqa: E402
from callfs.http.hotpath import SMALL_FILE, prepare  # noqa: E402
from callfs.http.router import HSTS, SECURITY_HEADERS  # noqa: E402
from callfs.locks.local import LocalLockManager  # noqa: E402
from callfs.metadata.cache import CachedStore, open_table  # noqa: E402
from callfs.metadata.sqlite import SQLiteStore  # noqa: E402

KEY = "hot-key-0123456789abcdef"


def examples(count):
    return settings(max_examples=count, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# -- the head: one connection per implementation, fed the same bytes ---------------------------

class Clock:
    def __init__(self):
        self.now = 100.0

    def time(self):
        self.now += 0.5
        return self.now


class Sink:
    def __init__(self):
        self.written = []

    def write(self, data):
        self.written[-1:] = [data]  # the last write only: benchmarks write many

    def writelines(self, parts):
        self.write(b"".join(parts))


def connection(implementation, hot=None):
    class Connection(implementation.HeadState):
        def __init__(self):
            self.loop = Clock()
            self.parser = httptools.HttpRequestParser(self)
            self.transport = Sink()
            self.state = types.SimpleNamespace(draining=False)
            self.pipeline = []
            self._session = None
            self.hot = hot
            self.tls = False
            self._outside = False
            self._at_start = True
            self._in_head = False
            self._answered = False
            self._head_fed = 0
            self.events = []

        def head_complete(self):
            self.events.append(("head", self._url, dict(self._headers), self._fields,
                                self._head_size, self._plain, self._idle_since))

        def message_complete(self):
            self.events.append(("complete",))

        def received_outside_http(self, data):
            self.events.append(("outside", data))

        def feed_failed(self, exc, data):
            status = getattr(exc, "status", None) or getattr(exc.__context__, "status", 400)
            self._parse_failed(status)

        def _parse_failed(self, status):
            self.events.append(("failed", status))
            self._outside = True

    return Connection()


NAMES = [b"Host", b"Authorization", b"accept", b"X-Custom", b"Range", b"If-None-Match",
         b"X-Request-ID", b"User-Agent", b"Content-Length", b"Expect", b"UPGRADE", b"cookie"]
header = st.tuples(
    st.one_of(st.sampled_from(NAMES), st.from_regex(rb"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z")),
    st.from_regex(rb"\A[ -~]{0,40}\Z").map(lambda v: v.strip()))
request = st.tuples(
    st.sampled_from([b"GET", b"HEAD", b"PUT", b"DELETE"]),
    st.from_regex(rb"\A/[!-~]{0,60}\Z"),
    st.lists(header, max_size=12),
    st.lists(st.integers(1, 200), max_size=4))


def wire(method, url, headers) -> bytes:
    lines = [method + b" " + url + b" HTTP/1.1"]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def feed(conn, data: bytes, cuts) -> list:
    start = 0
    for cut in sorted(cuts):
        conn.data_received(data[start:start + cut])
        start += cut
    conn.data_received(data[start:])
    return conn.events


@examples(400)
@given(request)
@example((b"GET", b"/v1/files/a", [(b"Host", b"x"), (b"host", b"y")], []))
@example((b"GET", b"/v1/files/a", [(b"Range", b"bytes=0-1")], [3, 7]))
def test_heads_are_parsed_alike(case):
    method, url, headers, cuts = case
    data = wire(method, url, [h for h in headers if h[0].lower() != b"content-length"])
    data += data  # two messages, pipelined
    assert feed(connection(native), data, cuts) == feed(connection(oracle), data, cuts)


@pytest.mark.parametrize("make", [
    lambda: wire(b"GET", b"/" + b"a" * native.MAX_URL, []),
    lambda: wire(b"GET", b"/a", [(b"X-%d" % i, b"v") for i in range(native.MAX_FIELDS + 1)]),
    lambda: wire(b"GET", b"/a", [(b"X-Big", b"v" * 8000)] * 140),
])
def test_limits_reject_alike(make):
    data = make()
    got = feed(connection(native), data, [])
    assert got == feed(connection(oracle), data, [])
    assert got[-1][0] == "failed" and got[-1][1] in (414, 431)


def test_a_head_fed_byte_by_byte_past_the_limit_is_refused():
    data = b"GET /a HTTP/1.1\r\nX-Long: " + b"v" * (native.MAX_HEAD + 10)
    for implementation in (native, oracle):
        conn = connection(implementation)
        for start in range(0, len(data), 64 * 1024):
            conn.data_received(data[start:start + 64 * 1024])
        assert conn.events[-1] == ("failed", 431)


def test_a_broken_or_upgraded_connection_sends_bytes_elsewhere():
    for implementation in (native, oracle):
        conn = connection(implementation)
        conn.data_received(b"NOT HTTP\r\n\r\n")
        conn.data_received(b"more")
        assert conn.events == [("failed", 400), ("outside", b"more")]


def test_the_limits_are_the_oracles():
    assert (native.MAX_URL, native.MAX_HEAD, native.MAX_FIELDS) == \
        (oracle.MAX_URL, oracle.MAX_HEAD, oracle.MAX_FIELDS)
    assert native.NOT_HOT == oracle.NOT_HOT


target = st.tuples(
    st.sampled_from([b"http://", b"HTTPS://", b"Http://", b"ftp://", b"", b"http:/"]),
    st.from_regex(rb"\A[a-z0-9.:@\[\]-]{0,20}\Z"),
    st.from_regex(rb"\A[/?]?[!-~]{0,30}\Z")).map(b"".join)


@examples(500)
@given(target)
@example(b"http://h:1/v1/files/x?y=1")
@example(b"http://h:1?q")
@example(b"https://h")
@example(b"*")
def test_origin_form_is_the_oracles(url):
    assert native.origin_form(url) == oracle.origin_form(url)


@examples(500)
@given(st.binary(max_size=40))
@example(b"127.0.0.1:8443")
@example(b"[::1]:80")
@example(b"a, b")
@example(b"user@host")
@example(b"")
def test_valid_host_is_the_oracles(value):
    assert native.valid_host(value) == oracle.valid_host(value)


def test_a_plain_get_without_a_valid_host_never_takes_the_hot_path(site):
    engine, auth = site
    for implementation, hot in zip((native, oracle), hot_paths(engine, auth)):
        for host in (b"", b"Host: a b\r\n", b"Host: a\r\nHost: b\r\n", b"Host: u@h\r\n"):
            conn = connection(implementation, hot=hot)
            conn.data_received(b"GET /v1/files/d/small HTTP/1.1\r\n" + host +
                               b"Authorization: Bearer " + KEY.encode() + b"\r\n\r\n")
            assert conn.events and conn.events[0][0] == "head", (implementation, host)


@examples(500)
@given(st.binary(max_size=60))
@example(b"GET  /a HTTP/1.1\r\n")
@example(b"\r\nGET /a HTTP/1.1\r\n")
@example(b"GET /a HTTP/1.1 \r\n")
@example(b"GET /a")
def test_request_line_ok_is_the_oracles(data):
    assert native.request_line_ok(data) == oracle.request_line_ok(data)


@pytest.mark.parametrize("line", [b"GET  /a HTTP/1.1", b"GET /a  HTTP/1.1", b"GET /a HTTP/1.1 ",
                                  b" GET /a HTTP/1.1"])
def test_a_request_line_with_runs_of_spaces_is_refused(line):
    for implementation in (native, oracle):
        conn = connection(implementation)
        conn.data_received(b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n")  # then a message begins
        conn.data_received(line + b"\r\nHost: h\r\n\r\n")
        assert conn.events[-1] == ("failed", 400), implementation


def test_only_a_chunk_that_begins_a_message_has_its_line_checked():
    """The rest of a head split across arrivals is not a request line."""
    for implementation in (native, oracle):
        conn = connection(implementation)
        conn.data_received(b"\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HT")
        conn.data_received(b"TP/1.1\r\nX-Note: two  spaces\r\nHost: h\r\n\r\n")
        assert [event[0] for event in conn.events] == ["head", "complete", "head", "complete"]


def test_an_absolute_target_is_parsed_as_its_origin_form():
    for implementation in (native, oracle):
        conn = connection(implementation)
        conn.data_received(b"PUT http://127.0.0.1:8443/v1/files/a?x=1 HTTP/1.1\r\n"
                           b"Host: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
        assert conn.events[0][1] == b"/v1/files/a?x=1"


# -- the hot path, on a real store and backend --------------------------------------------------

class Body:
    def __init__(self, data: bytes):
        self.data = data
        self.expected = len(data)

    async def read(self):
        data, self.data = self.data, b""
        return data

    async def transfer_to(self, fd):
        data, self.data = self.data, b""
        return os.write(fd, data) if data else 0


def make_site(tmp: str):
    """A real engine (SQLite behind the generation cache, a local backend) holding files of
    every kind the hot path tells apart, all cached; returns (engine, auth, close)."""
    loop = asyncio.new_event_loop()
    store = CachedStore(SQLiteStore(tmp + "/meta.db", durable=False), open_table(tmp + "/gen"))
    backend = LocalFSBackend(tmp + "/files", durable=False)
    locks = LocalLockManager()
    engine = Engine(store=store, locks=locks, backends={"localfs": backend},
                    default_backend="localfs", instance_id="node-a", file_op_timeout=5,
                    metadata_op_timeout=5)

    async def build():
        await store.open()
        await backend.open()
        await locks.open()
        files = {"/d/small": b"x" * 4096, "/d/medium": os.urandom(64 * 1024), "/d/empty": b"", "/d/caf\u00e9 1": b"unicode",
                 "/d/large": b"L" * (SMALL_FILE + 1), "/other/f": b"others"}
        for path, data in files.items():
            await engine.put_file(BOB, path, Body(data))
        for path in list(files) + ["/", "/d", "/other"]:
            await store.get(path)
        # An entry another instance holds: cached, never answered here.
        remote = await store.get("/other/f")
        store.entries["/other/f"].inode = msgspec.structs.replace(remote, instance_id="node-b")

    def close():
        loop.run_until_complete(store.close())
        loop.close()

    loop.run_until_complete(build())
    return engine, Authenticator([], {"bob": KEY}, "proxy-secret"), close


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    engine, auth, close = make_site(str(tmp_path_factory.mktemp("hot")))
    yield engine, auth
    close()


def hot_path_of(implementation, engine, auth):
    """The hot path of one implementation: the native one on the engine's native read view,
    the oracle on the read view's oracle over the same cache."""
    if implementation is native:
        view = engine.read_view(prepare, SMALL_FILE)
    else:
        view = readview_oracle.ReadView(
            entries=engine.store.entries, table=engine.store.table,
            unix=engine.rules.unix, on_disk=engine.version_on_disk, prepare=prepare,
            instance_id=engine.instance_id, keep_limit=SMALL_FILE, budget=READ_VIEW_BUDGET)
    return implementation.HotPath(keys=auth.known, identify=auth.identify_known, view=view,
                                  security=SECURITY_HEADERS, hsts=HSTS)


def hot_paths(engine, auth):
    return [hot_path_of(implementation, engine, auth) for implementation in (native, oracle)]


_VOLATILE = re.compile(rb"(X-Request-ID: )[0-9a-f]{16}|(Date: )[^\r]*")


def comparable(answer):
    return None if answer is None else _VOLATILE.sub(rb"\1\2-", answer)


URLS = [b"/v1/files/d/small", b"/v1/files/d/medium", b"/v1/files/d/empty", b"/v1/files/d/caf%C3%A9%201",
        b"/v1/files/d/large", b"/v1/files/other/f", b"/v1/files/d", b"/v1/files/d/small/",
        b"/v1/files/d/small?x=1", b"/v1/files/ws/d/small", b"/v1/files//d/./small",
        b"/v1/files/d/%zz", b"/v1/files/missing", b"/v1/files/d/../d/small", b"/v1/files",
        b"/v1/directories/d", b"/v1/files/d/sm%61ll"]
AUTHS = [b"Bearer " + KEY.encode(), b"Bearer  " + KEY.encode() + b" ", b"Bearer wrong",
         KEY.encode(), b"Bearer proxy-secret", b"", None]


@examples(300)
@given(st.sampled_from([b"GET", b"HEAD"]),
       st.one_of(st.sampled_from(URLS), st.from_regex(rb"\A/v1/files/[!-~]{0,30}\Z")),
       st.sampled_from(AUTHS), st.booleans())
def test_hot_answers_are_the_oracles(site, method, url, authorization, tls):
    engine, auth = site
    fast, slow = hot_paths(engine, auth)
    headers = {} if authorization is None else {b"authorization": authorization}
    got = fast.answer(method, url, headers, tls)
    assert comparable(got) == comparable(slow.answer(method, url, headers, tls))
    assert fast.answered == slow.answered


def test_the_hot_path_answers_what_it_should(site):
    engine, auth = site
    fast, _ = hot_paths(engine, auth)
    good = {b"authorization": b"Bearer " + KEY.encode()}
    answer = fast.answer(b"GET", b"/v1/files/d/small", good, True)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\n" + b"x" * 4096)
    assert HSTS in answer and re.search(rb"X-Request-ID: [0-9a-f]{16}\r\n", answer)
    assert fast.answer(b"HEAD", b"/v1/files/d/large", good, False).endswith(b"\r\n\r\n")
    for url in (b"/v1/files/d/large", b"/v1/files/other/f", b"/v1/files/d"):
        assert fast.answer(b"GET", url, good, False) is None
    assert fast.answer(b"GET", b"/v1/files/d/small", {}, False) is None
    assert fast.answered == 2


def test_a_write_anywhere_stops_the_hot_answer(site):
    """The entry is exact only while its generation is unchanged: once a write to the path
    begins, the hot path declines (and the general route reads through)."""
    engine, auth = site
    fast, _ = hot_paths(engine, auth)
    good = {b"authorization": b"Bearer " + KEY.encode()}
    assert fast.answer(b"GET", b"/v1/files/d/empty", good, False) is not None
    engine.store.table.begin("/d/empty")
    try:
        assert fast.answer(b"GET", b"/v1/files/d/empty", good, False) is None
    finally:
        engine.store.table.end("/d/empty")
    assert fast.answer(b"GET", b"/v1/files/d/empty", good, False) is None  # a new generation


def test_request_ids_are_fresh_and_differ_after_a_fork():
    ids = {native.random_id() for _ in range(10000)}
    assert len(ids) == 10000 and all(re.fullmatch(rb"[0-9a-f]{16}", i) for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, native.random_id())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert child != native.random_id()


@pytest.mark.parametrize("version", [b"2.0", b"0.9", b"1.0", b"1.1"])
def test_only_http_1_x_takes_the_hot_path_even_kept_alive(site, version):
    engine, auth = site
    for implementation, hot in zip((native, oracle), hot_paths(engine, auth)):
        conn = connection(implementation, hot=hot)
        conn.data_received(b"GET /v1/files/d/small HTTP/" + version + b"\r\nHost: h\r\n"
                           b"Connection: keep-alive"
                           b"\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n")
        answered = not conn.events or conn.events[0][0] != "head"
        assert answered == (version in (b"1.0", b"1.1")), implementation


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=140) | st.text(alphabet="AZaz09-_.:/ é", max_size=140).map(str.encode))
def test_client_request_ids_are_kept_alike(value):
    assert native.client_request_id(value) == oracle.client_request_id(value)


def test_client_request_id_limits():
    assert native.client_request_id(b"a" * 128) and not native.client_request_id(b"a" * 129)
    assert not native.client_request_id(b"") and not native.client_request_id(None)
    assert native.client_request_id(b"trace-1.2:3_x")
    assert not native.client_request_id(b"a b") and not native.client_request_id(b"a\r\nb")
