"""callfs._native.logsink against its plain-Python oracle.

The access line must be the oracle's byte for byte (its timestamp aside: time moves between the
two calls, so both are checked for form and compared masked), JSON lines must parse back to the
fields given, and the buffer must keep, drop, count and wake exactly as the oracle does.
"""
import datetime
import decimal
import json
import os
import re
import sys
import time
import urllib.parse

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the oracle sits beside this file
    sys.path.insert(0, _HERE)

import logsink_oracle as oracle  # noqa: E402
from callfs._native import logsink as native  # noqa: E402

IMPLEMENTATIONS = {"native": native.LogSink, "oracle": oracle.LogSink}
TS = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
JSON_TS = re.compile(rb'\A\{"ts":"(' + TS.pattern + rb')"')
CONSOLE_TS = re.compile(rb"\A(" + TS.pattern + rb") ")


def examples(count):
    return settings(max_examples=count, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def make(request):
    return IMPLEMENTATIONS[request.param]


def untimed(line, console=False):
    """The line with its timestamp masked, once the timestamp is of the documented form."""
    found = (CONSOLE_TS if console else JSON_TS).match(line)
    assert found, line
    return line[:found.start(1)] + b"<ts>" + line[found.end(1):]


def stamp_ns(line, console=False):
    text = (CONSOLE_TS if console else JSON_TS).match(line).group(1).decode()
    when = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return int(when.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000) * 10**6


def one_line(sink, *fields):
    assert sink.access(*fields)
    out, dropped = sink.take()
    assert dropped == 0 and out.count(b"\n") == 1 and out.endswith(b"\n")
    return out


# --- fields -----------------------------------------------------------------------------------

METHODS = st.sampled_from([b"GET", b"HEAD", b"PUT", b"POST", b"DELETE", b"PATCH", b"OPTIONS",
                           b"PROPFIND", b"OTHER", b"-"])
ROUTES = st.sampled_from([b"/health", b"/metrics", b"/v1/files/*", b"/v1/files/ws/*",
                          b"/v1/links/generate", b"/download/{token}", b"unmatched"])
TARGETS = (st.binary(max_size=200)
           | st.binary(max_size=40).map(lambda tail: b"/download/" + tail)
           | st.text(max_size=60).map(lambda t: ("/v1/files/" + t).encode())
           | st.sampled_from([b"", b"/download/", b"/download", b"/download/x", b"/Download/x",
                              b"/v1/download/abc", b'/v1/files/a"b\\c d%20e', b"*",
                              bytes(range(256))]))
USERS = (st.none() | st.text(max_size=40) | st.integers()
         | st.text(st.sampled_from('"\\\x00\x01\x1f\x7f\n\r\té€\u2028😀 -'), max_size=20))
STATUSES = st.sampled_from([200, 201, 204, 206, 304, 400, 404, 416, 429, 499, 500]) | st.integers(
    0, 2**31 - 1)
SIZES = st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 999, 1000, 2**63, 2**64 - 1])
DURATIONS = st.integers(0, 10**13) | SIZES | st.sampled_from([999, 1000, 999_999, 1_000_000])
RID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
REQUEST_IDS = st.text(st.sampled_from(RID_CHARS), min_size=1, max_size=128).map(str.encode)
PEERS = st.sampled_from([b"192.0.2.1:50123", b"[2001:db8::1]:443", b"[::1]:8080", b"-", b""])
TRANSFERS = st.none() | st.sampled_from([b"sendfile", b"splice", b"copy", b"stream"])
INSTANCES = st.text(max_size=20) | st.sampled_from(["", "i-1", 'node "a"\\b\n'])

FIELDS = st.tuples(METHODS, ROUTES, TARGETS, STATUSES, SIZES, SIZES, DURATIONS, USERS,
                   REQUEST_IDS, PEERS, TRANSFERS, st.booleans())


# --- the access line --------------------------------------------------------------------------


@examples(400)
@given(FIELDS, st.booleans(), INSTANCES)
@example((b"GET", b"/download/{token}", b"/download/secret", 200, 0, 5, 1_234_567, None, b"r",
          b"192.0.2.1", b"sendfile", False), False, "")
def test_lines_agree_with_oracle(fields, console, instance):
    sink = native.LogSink(instance=instance, console=console)
    line = one_line(sink, *fields)
    expected = oracle.access_line(*fields, instance=instance, console=console)
    assert untimed(line, console) == untimed(expected, console)
    assert line.decode("utf-8")  # one line of UTF-8, whatever the user's name holds
    assert all(c >= 32 for c in line[:-1])


@examples(300)
@given(FIELDS, INSTANCES)
def test_json_lines_hold_the_fields(fields, instance):
    (method, route, target, status, bytes_in, bytes_out, duration_ns, user, request_id, peer,
     transfer, aborted) = fields
    line = one_line(native.LogSink(instance=instance), *fields)
    record = orjson.loads(line)
    assert record == json.loads(line)
    assert list(record) == ["ts", "level", "logger", "event", "method", "route", "path",
                            "status", "bytes_in", "bytes_out", "duration_ms", "user",
                            "instance", "request_id", "peer", "transfer"] + (
                                ["aborted"] if aborted else [])
    assert record["level"] == "info" and record["logger"] == "callfs.access"
    assert record["event"] == "request"
    assert (record["method"], record["route"]) == (method.decode(), route.decode())
    assert (record["status"], record["bytes_in"], record["bytes_out"]) == (status, bytes_in,
                                                                           bytes_out)
    exact = json.loads(line, parse_float=decimal.Decimal)["duration_ms"]
    assert exact == decimal.Decimal(duration_ns // 1000) / 1000
    assert re.search(rb',"duration_ms":\d+\.\d{3},', line)
    assert record["user"] == (None if user is None else str(user))
    assert record["instance"] == instance
    assert (record["request_id"], record["peer"]) == (request_id.decode(), peer.decode())
    assert record["transfer"] == (None if transfer is None else transfer.decode())
    assert record.get("aborted", False) is aborted
    path = record["path"].encode("ascii")
    assert all(33 <= c <= 126 and c not in b'"\\' for c in path)
    if len(target) > 10 and target.startswith(b"/download/"):
        assert path == b"/download/[redacted]"
    elif b"%" not in target:  # '%' stays as received, so only then is the encoding reversible
        assert urllib.parse.unquote_to_bytes(path) == target


@examples(200)
@given(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1,
               max_size=64), st.binary(max_size=20), st.booleans())
def test_a_link_token_never_appears(token, query, console):
    target = b"/download/" + token.encode() + (b"?" + query if query else b"")
    sink = native.LogSink(console=console)
    line = one_line(sink, b"GET", b"/download/{token}", target, 200, 0, 10, 0, None,
                    b"id-1", b"192.0.2.9", b"sendfile")
    assert b"/download/[redacted]" in line
    assert b"/download/" + token.encode() not in line
    assert untimed(line, console) == untimed(
        oracle.access_line(b"GET", b"/download/{token}", target, 200, 0, 10, 0, None,
                           b"id-1", b"192.0.2.9", b"sendfile", console=console), console)


@pytest.mark.parametrize("target, shown", [
    (b"/download/", b"/download/"),  # 10 bytes: no token to hide
    (b"/download/a", b"/download/[redacted]"),
    (b"/download/\xff\"x", b"/download/[redacted]"),
    (b"/download", b"/download"),
    (b"/Download/abc", b"/Download/abc"),
    (b"/v1/download/abc", b"/v1/download/abc"),
    (b'/a b"c\\d\x7f\x00\xe9%41', b"/a%20b%22c%5Cd%7F%00%E9%41"),
    (b"", b""),
])
def test_shown_targets(target, shown):
    line = one_line(native.LogSink(), b"GET", b"/v1/files/*", target, 200, 0, 0, 0, None,
                    b"x", b"::1", None)
    assert orjson.loads(line)["path"] == shown.decode()
    assert oracle.encoded_target(oracle.shown_target(target)) == shown


def test_the_console_line():
    sink = native.LogSink(console=True, instance="node-1")
    line = one_line(sink, b"PUT", b"/v1/files/*", b"/v1/files/a b", 201, 12, 0, 2_500_999,
                    'ann "q"', b"r-1", b"192.0.2.1", b"splice", True)
    assert untimed(line, True) == (b'<ts> INFO access PUT /v1/files/a%20b 201 route=/v1/files/* '
                                   b'in=12 out=0 ms=2.500 user=ann \\"q\\" id=r-1 peer=192.0.2.1 '
                                   b'transfer=splice aborted instance=node-1\n')
    line = one_line(sink, b"GET", b"/health", b"/health", 200, 0, 2, 999, None, b"r-2", b"::1",
                    None)
    assert untimed(line, True) == (b"<ts> INFO access GET /health 200 route=/health in=0 out=2 "
                                   b"ms=0.000 user=- id=r-2 peer=::1 instance=node-1\n")


def test_the_json_line():
    line = one_line(native.LogSink(instance="i\x01"), b"GET", b"/v1/files/*", b"/v1/files/x",
                    206, 0, 2**64 - 1, 2**64 - 1, "\u00e9\\", b"r", b"::1", None)
    assert untimed(line) == (
        b'{"ts":"<ts>","level":"info","logger":"callfs.access","event":"request","method":"GET",'
        b'"route":"/v1/files/*","path":"/v1/files/x","status":206,"bytes_in":0,'
        b'"bytes_out":18446744073709551615,"duration_ms":18446744073709.551,'
        b'"user":"\xc3\xa9\\\\","instance":"i\\u0001","request_id":"r","peer":"::1",'
        b'"transfer":null}\n')


@pytest.mark.parametrize("console", [False, True])
def test_the_timestamp_is_now_in_utc(console):
    sink = native.LogSink(console=console)
    fields = (b"GET", b"/health", b"/health", 200, 0, 0, 0, None, b"r", b"::1", None)
    before = time.time_ns() // 10**6 * 10**6
    first = stamp_ns(one_line(sink, *fields), console)
    assert before <= first <= time.time_ns()
    # the date and time are kept for a second: the next second's line must not reuse them
    time.sleep((10**9 - time.time_ns() % 10**9) / 1e9 + 0.01)
    later = time.time_ns() // 10**6 * 10**6
    second = stamp_ns(one_line(sink, *fields), console)
    assert second // 10**9 > first // 10**9
    assert later <= second <= time.time_ns()


def test_milliseconds_round_down_to_the_microsecond():
    for ns, shown in [(0, b"0.000"), (999, b"0.000"), (1000, b"0.001"), (999_999, b"0.999"),
                      (1_000_000, b"1.000"), (1_234_567_891, b"1234.567"),
                      (2**64 - 1, b"18446744073709.551")]:
        line = one_line(native.LogSink(), b"GET", b"/health", b"/", 200, 0, 0, ns, None, b"r",
                        b"::1", None)
        assert orjson.loads(line) and b'"duration_ms":' + shown + b"," in line
        assert oracle.milliseconds(ns) == shown


@pytest.mark.parametrize("index, value, error", [
    (4, -1, OverflowError), (4, 2**64, OverflowError), (5, 2**64, OverflowError),
    (6, -1, OverflowError), (3, 2**31, OverflowError),
    (0, "GET", TypeError), (2, None, TypeError), (8, "r", TypeError), (10, "splice", TypeError),
])
def test_refused_fields(make, index, value, error):
    fields = [b"GET", b"/health", b"/health", 200, 0, 0, 0, None, b"r", b"::1", None]
    fields[index] = value
    sink = make()
    with pytest.raises(error):
        sink.access(*fields)
    assert sink.take() == (b"", 0)


@examples(300)
@given(st.binary(max_size=300))
def test_escaped_json_agrees(text):
    assert native.escaped_json(text) == oracle.escaped_json(text)
    if b"\xff" not in text:
        try:
            decoded = text.decode()
        except UnicodeDecodeError:
            return
        assert json.loads(b'"' + native.escaped_json(text) + b'"') == decoded


# --- the buffer -------------------------------------------------------------------------------


def test_lines_beyond_the_limit_are_dropped_and_counted(make):
    sink = make(limit=100)
    assert sink.append(b"a" * 60)
    assert not sink.append(b"b" * 41)  # 101 > 100: dropped whole
    assert sink.append(b"c" * 40)  # exactly the limit
    assert not sink.append(b"d")
    assert sink.pending == 100 and sink.dropped == 2
    assert sink.take() == (b"a" * 60 + b"c" * 40, 2)
    assert (sink.pending, sink.dropped) == (0, 0)
    assert sink.take() == (b"", 0)
    assert not sink.append(b"e" * 101)  # larger than the whole buffer
    assert sink.append(b"f" * 100)
    assert sink.take() == (b"f" * 100, 1)


def test_discard_forgets_lines_and_drops(make):
    sink = make(limit=10)
    sink.append(b"12345678\n")
    sink.append(b"too long\n")
    sink.discard()
    assert (sink.pending, sink.dropped) == (0, 0)
    assert sink.append(b"ok\n")
    assert sink.take() == (b"ok\n", 0)


@pytest.mark.parametrize("limit", [0, -1])
def test_no_limit_means_the_default(make, limit):
    sink = make(limit=limit)
    assert sink.append(b"x" * native.DEFAULT_LIMIT)
    assert not sink.append(b"\n")
    out, dropped = sink.take()
    assert (len(out), dropped) == (native.DEFAULT_LIMIT, 1)


def test_access_lines_are_dropped_whole(make):
    sink = make(limit=1000)
    fields = (b"GET", b"/health", b"/health", 200, 0, 0, 0, None, b"r", b"::1", None)
    kept = 0
    while sink.access(*fields):
        kept += 1
    assert kept > 0 and not sink.access(*fields) and sink.dropped == 2
    out, dropped = sink.take()
    assert dropped == 2 and out.count(b"\n") == kept and len(out) <= 1000
    assert all(orjson.loads(line) for line in out.splitlines())


def test_append_takes_bytes_only(make):
    sink = make()
    for line in ("text\n", bytearray(b"x\n"), None):
        with pytest.raises(TypeError):
            sink.append(line)
    assert sink.take() == (b"", 0)


# Near the limit, a line is kept when the line itself fits (not an upper bound of it).
def test_an_access_line_that_fits_is_kept():
    fields = (b"GET", b"/health", b"/health", 200, 0, 0, 0, None, b"r", b"::1", None)
    size = len(oracle.access_line(*fields))
    sink = native.LogSink(limit=1000)
    assert sink.append(b"x" * (1000 - size))
    assert sink.access(*fields)


APPENDS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 300).map(lambda n: b"y" * n + b"\n")),
    st.tuples(st.just("append"), st.sampled_from([b"", b"\n", b"z" * 1024])),
    st.tuples(st.just("take")),
    st.tuples(st.just("discard")),
    st.tuples(st.just("pending")),
    st.tuples(st.just("dropped")),
), max_size=80)


def step(sink, name, *args):
    member = getattr(sink, name)
    return member(*args) if callable(member) else member


@examples(300)
@given(st.integers(-1, 2000), APPENDS)
def test_the_buffer_agrees_with_oracle(limit, ops):
    sink, expected = native.LogSink(limit=limit), oracle.LogSink(limit=limit)
    for name, *args in ops:
        assert step(sink, name, *args) == step(expected, name, *args), (name, args)
    assert sink.take() == expected.take()


# --- waking the writer ------------------------------------------------------------------------


class Wakes:
    def __init__(self, error=None):
        self.count = 0
        self.error = error

    def __call__(self):
        self.count += 1
        if self.error:
            raise self.error


def test_wake_once_past_wake_bytes_then_again_after_a_take(make):
    wakes = Wakes()
    sink = make(wake=wakes)
    assert sink.append(b"w" * (native.WAKE_BYTES - 1))
    assert wakes.count == 0
    assert sink.append(b"\n")  # pending reaches WAKE_BYTES
    assert wakes.count == 1
    for _ in range(4):
        assert sink.append(b"w" * native.WAKE_BYTES)
    assert wakes.count == 1
    assert len(sink.take()[0]) == 5 * native.WAKE_BYTES
    assert sink.append(b"w" * 1000)
    assert wakes.count == 1
    assert sink.append(b"w" * native.WAKE_BYTES)
    assert wakes.count == 2
    sink.discard()  # a forked child forgets its parent's lines: it wakes its own writer again
    assert sink.append(b"w" * native.WAKE_BYTES)
    assert wakes.count == 3


def test_a_dropped_line_wakes_no_one(make):
    wakes = Wakes()
    sink = make(limit=native.WAKE_BYTES + 10, wake=wakes)
    assert not sink.append(b"w" * (native.WAKE_BYTES + 11))
    assert wakes.count == 0
    assert sink.append(b"w" * (native.WAKE_BYTES + 10))
    assert wakes.count == 1


def test_a_buffer_below_wake_bytes_never_wakes(make):
    wakes = Wakes()
    sink = make(limit=native.WAKE_BYTES - 1, wake=wakes)
    while sink.append(b"w" * 4096):
        pass
    assert wakes.count == 0 and sink.dropped == 1


@pytest.mark.parametrize("error", [RuntimeError("writer gone"), KeyboardInterrupt()])
def test_a_failing_wake_loses_no_line(make, error):
    wakes = Wakes(error)
    sink = make(wake=wakes)
    assert sink.append(b"w" * native.WAKE_BYTES)
    assert sink.append(b"more\n")
    assert wakes.count == 1 and sink.pending == native.WAKE_BYTES + 5


def test_access_lines_wake_too(make):
    wakes = Wakes()
    sink = make(wake=wakes)
    fields = (b"GET", b"/v1/files/*", b"/v1/files/" + b"p" * 3000, 200, 0, 0, 0, None, b"r",
              b"::1", None)
    while sink.pending < native.WAKE_BYTES:
        assert wakes.count == 0
        assert sink.access(*fields)
    assert wakes.count == 1


LINES = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 150_000).map(lambda n: b"v" * n + b"\n")),
    st.tuples(st.just("access"), FIELDS),
    st.tuples(st.just("take")),
    st.tuples(st.just("discard")),
), max_size=30)


@examples(80)
@given(LINES, st.booleans())
def test_lines_and_wakes_agree_with_oracle(ops, console):
    wakes, expected_wakes = Wakes(), Wakes()
    sink = native.LogSink(console=console, instance="i-1", wake=wakes)
    expected = oracle.LogSink(console=console, instance="i-1", wake=expected_wakes)
    for name, *args in ops:
        if name == "access":
            args = args[0]
        got = step(sink, name, *args)
        want = step(expected, name, *args)
        if name == "take":
            lines, want_lines = got[0].split(b"\n"), want[0].split(b"\n")
            assert len(lines) == len(want_lines) and got[1] == want[1]
            for line, want_line in zip(lines, want_lines):
                if line.startswith(b'{"ts"') or TS.match(line):
                    line, want_line = untimed(line, console), untimed(want_line, console)
                assert line == want_line
        else:
            assert got == want
        assert (sink.pending, sink.dropped, wakes.count) == (
            expected.pending, expected.dropped, expected_wakes.count)
