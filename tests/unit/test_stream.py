"""callfs._native.stream against its plain-Python oracle, over AF_UNIX and loopback TCP sockets.

Every transfer runs on real non-blocking sockets, single-threaded unless a test says otherwise:
the test plays the peer (it drains for send_file, it writes for SpliceSink), with bounded waits.
"""
import errno
import fcntl
import os
import random
import select
import socket
import struct
import sys
import tempfile
import termios
import threading
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the oracle sits beside this file
    sys.path.insert(0, _HERE)

import stream_oracle as oracle  # noqa: E402
from callfs._native import stream as native  # noqa: E402

IMPLEMENTATIONS = {"native": native, "oracle": oracle}
KINDS = ["unix", "tcp"]
WAIT = 5.0  # seconds any single wait may take before the test fails
MiB = 1024 * 1024


def examples(count):
    return settings(max_examples=count, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- sockets and files ------------------------------------------------------------------------

class Pair:
    """A connected stream socket pair: `near` is the one under test, `far` plays the peer."""

    def __init__(self, kind, buffer=None):
        if kind == "unix":
            self.near, self.far = socket.socketpair()
            if buffer:
                for s in (self.near, self.far):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        else:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            near = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                if buffer:  # set before the handshake: fixed sizes, no autotuning
                    for s in (listener, near):
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
                listener.bind(("127.0.0.1", 0))
                listener.listen(1)
                near.connect(listener.getsockname())
                far, _ = listener.accept()
            except BaseException:
                near.close()
                raise
            finally:
                listener.close()
            self.near, self.far = near, far
            for s in (self.near, self.far):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.near.setblocking(False)
        self.far.setblocking(False)

    def close(self):
        self.near.close()
        self.far.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def pending(sock):
    """Bytes queued for reading on `sock` (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def wait_until(condition, what):
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.0005)


def wait_readable(sock):
    if not select.select([sock], [], [], WAIT)[0]:
        pytest.fail("timed out waiting for the socket to become readable")


def drain(sock, into):
    """Read everything `sock` holds now; True once the peer has closed."""
    while True:
        try:
            chunk = sock.recv(MiB)
        except BlockingIOError:
            return False
        if not chunk:
            return True
        into += chunk


def receive_exactly(sock, into, size):
    while len(into) < size:
        wait_readable(sock)
        if drain(sock, into):
            break
    assert len(into) == size


def file_with(data):
    """An anonymous file holding `data`, its position left at 0."""
    f = tempfile.TemporaryFile()
    os.pwrite(f.fileno(), data, 0)
    return f


def contents(fd):
    return os.pread(fd, os.fstat(fd).st_size + 1, 0)


def fill(sock):
    """Send until the socket cannot take a single byte; the bytes sent."""
    sent = 0
    for size in (MiB, 65536, 4096, 512, 64, 1):
        while True:
            try:
                n = sock.send(b"f" * size)
            except BlockingIOError:
                break
            sent += n
    return sent


def transfer(module, pair, fd, offset, count):
    """Call send_file until it has sent `count` bytes or the file ends, draining the peer
    whenever the socket is full. Returns (bytes sent, bytes the peer received)."""
    received = bytearray()
    total = 0
    for _ in range(100_000):
        n = module.send_file(pair.near.fileno(), fd, offset + total, count - total)
        if n == 0:
            break
        if n == -1:
            before = len(received)
            wait_readable(pair.far)  # a full socket means bytes are waiting for the peer
            drain(pair.far, received)
            assert len(received) > before
            continue
        assert 0 < n <= min(count - total, oracle.STEP_LIMIT), n
        total += n
    else:
        pytest.fail("send_file made no progress")
    receive_exactly(pair.far, received, total)
    return total, bytes(received)


# --- send_file: properties --------------------------------------------------------------------

SIZES = st.one_of(st.integers(0, 64), st.integers(0, 3 * MiB),
                  st.sampled_from([0, 1, 4095, 4096, 4097, 65536, 212992, 3 * MiB]))


@st.composite
def regions(draw):
    size = draw(SIZES)
    offset = draw(st.one_of(st.integers(0, size + 64), st.just(size), st.just(0)))
    count = draw(st.one_of(st.integers(0, size + 64), st.just(size - offset),
                           st.integers(0, 2**62), st.integers(-3, 0)))
    return size, offset, count


@examples(30)
@given(regions(), st.sampled_from(KINDS), st.sampled_from([None, 4096, 65536]),
       st.randoms(use_true_random=False))
@example((0, 0, 10), "unix", None, random.Random(0))
@example((3 * MiB, 1, 3 * MiB), "tcp", None, random.Random(0))
@example((300_000, 5, 299_990), "unix", 4096, random.Random(0))
def test_send_file_sends_the_region(region, kind, buffer, rnd):
    size, offset, count = region
    data = rnd.randbytes(size)
    expected = data[offset:offset + max(count, 0)]
    with file_with(data) as f:
        os.lseek(f.fileno(), 7, os.SEEK_SET)
        results = {}
        for name, module in IMPLEMENTATIONS.items():
            with Pair(kind, buffer) as pair:  # small buffers: many full-socket returns
                results[name] = transfer(module, pair, f.fileno(), offset, count)
            assert os.lseek(f.fileno(), 0, os.SEEK_CUR) == 7  # the file position is not used
    assert results["native"] == results["oracle"] == (len(expected), expected)


@examples(20)
@given(st.integers(1, 256 * 1024), st.sampled_from(KINDS))
def test_send_file_first_step_fills_what_the_socket_takes(size, kind):
    """On an empty socket one call sends all it can (the whole region if it fits), and reports
    -1 only when not a byte fits."""
    with file_with(b"d" * size) as f:
        for module in IMPLEMENTATIONS.values():
            with Pair(kind, buffer=65536) as pair:
                first = module.send_file(pair.near.fileno(), f.fileno(), 0, size)
                assert 0 < first <= size
                second = module.send_file(pair.near.fileno(), f.fileno(), first, size - first)
                if first < size:  # it stopped because the socket was full
                    assert second == -1
                else:
                    assert second == 0


# --- send_file: edges -------------------------------------------------------------------------

@pytest.mark.parametrize("size, offset, count", [
    (0, 0, 1), (0, 0, 0), (10, 10, 5), (10, 11, 5), (10, 2**40, 5), (10, 0, 0), (10, 3, 0),
    (10, 0, -1), (10, 20, 0), (10, 0, -(2**62)),
])
@pytest.mark.parametrize("kind", KINDS)
def test_send_file_nothing_to_send_is_zero(size, offset, count, kind):
    with file_with(b"x" * size) as f, Pair(kind) as pair:
        for module in IMPLEMENTATIONS.values():
            assert module.send_file(pair.near.fileno(), f.fileno(), offset, count) == 0
        assert drain(pair.far, bytearray()) is False and pending(pair.far) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_send_file_stops_at_the_end_of_the_file(kind):
    data = bytes(range(256)) * 40
    with file_with(data) as f:
        for module in IMPLEMENTATIONS.values():
            with Pair(kind) as pair:
                sock = pair.near.fileno()
                assert module.send_file(sock, f.fileno(), 100, 2**40) == len(data) - 100
                assert module.send_file(sock, f.fileno(), len(data), 2**40) == 0
                received = bytearray()
                receive_exactly(pair.far, received, len(data) - 100)
                assert received == data[100:]


@pytest.mark.parametrize("kind", KINDS)
def test_send_file_full_socket_is_minus_one(kind):
    with file_with(b"y" * 4096) as f:
        for module in IMPLEMENTATIONS.values():
            with Pair(kind, buffer=4096) as pair:
                filler = fill(pair.near)
                assert module.send_file(pair.near.fileno(), f.fileno(), 0, 4096) == -1
                assert module.send_file(pair.near.fileno(), f.fileno(), 0, 1) == -1
                received = bytearray()
                receive_exactly(pair.far, received, filler)  # nothing but the filler came out
                assert set(received) == {ord("f")}
                assert drain(pair.far, received) is False and len(received) == filler


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("unread", [False, True])
def test_send_file_to_a_closed_peer_raises(kind, unread):
    with file_with(b"z" * 100_000) as f:
        for module in IMPLEMENTATIONS.values():
            with Pair(kind) as pair:
                if unread:
                    pair.near.send(b"unread")  # closing with unread bytes resets TCP at once
                    wait_until(lambda: pending(pair.far) == 6, "the bytes to arrive")
                pair.far.close()
                with pytest.raises((BrokenPipeError, ConnectionResetError)):
                    # TCP may accept one write before the reset comes back; no more than that
                    for _ in range(50):
                        module.send_file(pair.near.fileno(), f.fileno(), 0, 100_000)
                        time.sleep(0.01)


def test_send_file_bad_arguments_raise_the_same_oserror():
    with file_with(b"q" * 100) as f, Pair("unix") as pair:
        write_only = os.open(f"/proc/self/fd/{f.fileno()}", os.O_WRONLY)
        cases = [
            (pair.near.fileno(), f.fileno(), -1, 10),  # negative offset: EINVAL
            (pair.near.fileno(), write_only, 0, 10),  # not readable: EBADF
            (pair.near.fileno(), 1_000_000, 0, 10),  # not open: EBADF
            (1_000_000, f.fileno(), 0, 10),  # no socket: EBADF
        ]
        try:
            for args in cases:
                errors = []
                for module in IMPLEMENTATIONS.values():
                    with pytest.raises(OSError) as caught:
                        module.send_file(*args)
                    errors.append((type(caught.value), caught.value.errno))
                assert errors[0] == errors[1], args
                assert errors[0][1] in (errno.EINVAL, errno.EBADF)
        finally:
            os.close(write_only)


def test_send_file_moves_at_most_one_step():
    """One call moves at most STEP_LIMIT bytes even when the destination never fills (a regular
    file stands in for a socket with room for everything)."""
    data = random.Random(1).randbytes(oracle.STEP_LIMIT + 3 * MiB)
    with file_with(data) as source:
        for module in IMPLEMENTATIONS.values():
            with tempfile.TemporaryFile() as sink:
                sent = module.send_file(sink.fileno(), source.fileno(), 5, len(data))
                assert sent == oracle.STEP_LIMIT
                assert contents(sink.fileno()) == data[5:5 + oracle.STEP_LIMIT]


def test_send_file_wrong_types():
    for module in IMPLEMENTATIONS.values():
        with pytest.raises(TypeError):
            module.send_file(None, 0, 0, 1)
        with pytest.raises(TypeError):
            module.send_file(0, 0, "0", 1)


# --- SpliceSink: properties -------------------------------------------------------------------

IN_FLIGHT = 48 * 1024  # the test keeps at most this much queued: under any socket's buffer

OPS = st.lists(st.one_of(
    st.tuples(st.just("send"), st.integers(1, 16 * 1024)),
    st.tuples(st.just("send"), st.integers(1, 8)),
    st.tuples(st.just("step"), st.one_of(st.integers(0, 16), st.integers(0, 70_000))),
    st.tuples(st.just("eof"), st.none()),
), max_size=14)


def run_sink(module, kind, ops, finish, rnd):
    """Play `ops` against one sink; check each step against a model of the socket and return
    (step results, stream the peer sent, file contents, bytes read back from the socket)."""
    stream = bytearray()  # everything the peer sent
    consumed = 0  # bytes of it the sink took
    eof = False
    results = []
    sink = module.SpliceSink()
    with Pair(kind) as pair, tempfile.TemporaryFile() as out:

        def step(remaining):
            available = len(stream) - consumed
            wait_until(lambda: pending(pair.near) == available, "the peer's bytes to arrive")
            if eof and available == 0:
                wait_readable(pair.near)  # the FIN is in
            got = sink.step(pair.near.fileno(), out.fileno(), remaining)
            if remaining <= 0:
                want = 0
            elif available:
                want = min(remaining, available)
            else:
                want = 0 if eof else -1
            assert got == want, (remaining, available, eof)
            results.append(got)
            return max(got, 0)

        for op, arg in ops:
            if op == "send" and not eof:
                size = min(arg, IN_FLIGHT - (len(stream) - consumed))
                if size > 0:
                    chunk = rnd.randbytes(size)
                    assert pair.far.send(chunk) == size
                    stream += chunk
            elif op == "step":
                consumed += step(arg)
                # It never takes more than asked: the rest is still in the socket.
                assert pending(pair.near) == len(stream) - consumed
                assert sink.moved == consumed
            elif op == "eof" and not eof:
                pair.far.shutdown(socket.SHUT_WR)
                eof = True
        leftover = bytearray()
        if finish == "sink":  # the peer finishes; the sink takes the rest and then sees EOF
            if not eof:
                pair.far.shutdown(socket.SHUT_WR)
                eof = True
            consumed += step(len(stream) - consumed + rnd.randint(1, 10))
            assert step(rnd.randint(1, 10)) == 0
            assert consumed == len(stream)
        else:  # the rest is read from the socket directly: the sink left it there untouched
            receive_exactly(pair.near, leftover, len(stream) - consumed)
            assert drain(pair.near, leftover) is eof
        assert sink.moved == consumed
        written = contents(out.fileno())
    sink.close()
    with pytest.raises(ValueError):
        sink.step(0, 0, 1)
    assert bytes(leftover) == stream[consumed:]
    assert written == stream[:consumed]
    return results, bytes(stream), written


@examples(120)
@given(OPS, st.sampled_from(["sink", "recv"]), st.sampled_from(KINDS), st.integers(0, 2**32))
@example([("send", 10), ("step", 3), ("step", 7), ("step", 1), ("eof", None), ("step", 1)],
         "recv", "unix", 0)
@example([("send", 16384), ("send", 16384), ("step", 20000), ("eof", None), ("step", 70000),
          ("step", 5)], "sink", "tcp", 0)
def test_sink_moves_what_the_peer_sent(ops, finish, kind, seed):
    native_run = run_sink(native, kind, ops, finish, random.Random(seed))
    oracle_run = run_sink(oracle, kind, ops, finish, random.Random(seed))
    assert native_run == oracle_run


# --- SpliceSink: edges ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_sink_large_upload_with_a_concurrent_peer(kind, name):
    """3 MiB from a peer thread, taken whenever the socket is readable, with random limits."""
    data = random.Random(2).randbytes(3 * MiB)
    rnd = random.Random(3)
    sink = IMPLEMENTATIONS[name].SpliceSink()
    with Pair(kind) as pair, tempfile.TemporaryFile() as out:
        pair.far.setblocking(True)
        errors = []

        def peer():
            try:
                pair.far.sendall(data)
                pair.far.shutdown(socket.SHUT_WR)
            except OSError as exc:  # reported by the main thread
                errors.append(exc)

        writer = threading.Thread(target=peer, daemon=True)
        writer.start()
        try:
            deadline = time.monotonic() + 4 * WAIT
            while True:
                assert time.monotonic() < deadline, "upload stalled"
                select.select([pair.near], [], [], 0.5)
                limit = rnd.choice([1, 4096, 65536, 1 << 30])
                got = sink.step(pair.near.fileno(), out.fileno(), limit)
                assert -1 <= got <= limit
                if got == 0:
                    break
        finally:
            writer.join(WAIT)
        assert not writer.is_alive() and not errors
        assert sink.moved == len(data)
        assert contents(out.fileno()) == data


def test_sink_moves_at_most_one_step():
    """A source that always has more (a regular file stands in for a fast socket): one step
    stops at STEP_LIMIT, the next goes on where it stopped."""
    data = random.Random(4).randbytes(oracle.STEP_LIMIT + 2 * MiB)
    for module in IMPLEMENTATIONS.values():
        sink = module.SpliceSink()
        with file_with(data) as source, tempfile.TemporaryFile() as out:
            assert sink.step(source.fileno(), out.fileno(), len(data) + 10) == oracle.STEP_LIMIT
            assert sink.step(source.fileno(), out.fileno(), len(data) + 10) == 2 * MiB
            assert sink.step(source.fileno(), out.fileno(), 10) == 0  # the source has ended
            assert sink.moved == len(data)
            assert contents(out.fileno()) == data


@pytest.mark.parametrize("kind", KINDS)
def test_sink_writes_at_the_file_position(kind):
    for module in IMPLEMENTATIONS.values():
        with Pair(kind) as pair, file_with(b"0123456789") as out:
            os.lseek(out.fileno(), 4, os.SEEK_SET)
            pair.far.send(b"abc")
            wait_until(lambda: pending(pair.near) == 3, "the bytes to arrive")
            assert module.SpliceSink().step(pair.near.fileno(), out.fileno(), 100) == 3
            assert contents(out.fileno()) == b"0123abc789"
            assert os.lseek(out.fileno(), 0, os.SEEK_CUR) == 7


@pytest.mark.parametrize("kind", KINDS)
def test_sink_empty_socket_and_zero_limit(kind):
    for module in IMPLEMENTATIONS.values():
        sink = module.SpliceSink()
        with Pair(kind) as pair, tempfile.TemporaryFile() as out:
            assert sink.step(pair.near.fileno(), out.fileno(), 100) == -1
            pair.far.send(b"data")
            wait_until(lambda: pending(pair.near) == 4, "the bytes to arrive")
            assert sink.step(pair.near.fileno(), out.fileno(), 0) == 0
            assert sink.step(pair.near.fileno(), out.fileno(), -5) == 0
            assert pending(pair.near) == 4 and sink.moved == 0
            assert contents(out.fileno()) == b""


def test_sink_reset_peer_raises():
    for module in IMPLEMENTATIONS.values():
        sink = module.SpliceSink()
        with Pair("tcp") as pair, tempfile.TemporaryFile() as out:
            pair.far.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            pair.far.close()  # linger 0: a reset, not a FIN
            wait_readable(pair.near)
            with pytest.raises(ConnectionResetError):
                sink.step(pair.near.fileno(), out.fileno(), 100)


def test_sink_close():
    for module in IMPLEMENTATIONS.values():
        sink = module.SpliceSink()
        sink.close()
        sink.close()  # twice is fine
        for remaining in (1, 0):
            with pytest.raises(ValueError):
                sink.step(0, 0, remaining)


def test_sink_moved_is_read_only():
    with pytest.raises(AttributeError):
        native.SpliceSink().moved = 5


def test_sink_refuses_to_go_on_after_a_failed_write(tmp_path):
    """The bytes a failed step took from the socket are gone (native: stranded in its pipe), so
    the sink refuses every later step rather than hand a file a stream with a hole in it."""
    target = tmp_path / "upload"
    target.write_bytes(b"")
    for module in IMPLEMENTATIONS.values():
        sink = module.SpliceSink()
        with Pair("unix") as pair, tempfile.TemporaryFile() as out:
            read_only = os.open(target, os.O_RDONLY)
            try:
                pair.far.send(b"STALE")
                wait_until(lambda: pending(pair.near) == 5, "the bytes to arrive")
                with pytest.raises(OSError) as caught:
                    sink.step(pair.near.fileno(), read_only, 100)
                assert caught.value.errno == errno.EBADF
            finally:
                os.close(read_only)
            assert pending(pair.near) == 0 and sink.moved == 0
            pair.far.send(b"fresh")
            wait_until(lambda: pending(pair.near) == 5, "the bytes to arrive")
            for remaining in (100, 0):
                with pytest.raises(ValueError):
                    sink.step(pair.near.fileno(), out.fileno(), remaining)
            assert pending(pair.near) == 5 and contents(out.fileno()) == b""
            assert target.read_bytes() == b""
            sink.close()
            with pytest.raises(ValueError):
                sink.step(pair.near.fileno(), out.fileno(), 100)


@pytest.mark.parametrize("kind", KINDS)
def test_sink_refuses_a_file_it_cannot_write_before_it_reads(tmp_path, kind):
    """O_APPEND (splice(2) refuses it) and a descriptor that is not open: refused before a byte
    leaves the socket, and the sink still works afterwards."""
    target = tmp_path / "upload"
    for module in IMPLEMENTATIONS.values():
        target.write_bytes(b"head:")
        sink = module.SpliceSink()
        with Pair(kind) as pair, tempfile.TemporaryFile() as out:
            pair.far.send(b"tail")
            wait_until(lambda: pending(pair.near) == 4, "the bytes to arrive")
            appending = os.open(target, os.O_WRONLY | os.O_APPEND)
            try:
                with pytest.raises(ValueError):
                    sink.step(pair.near.fileno(), appending, 100)
            finally:
                os.close(appending)
            with pytest.raises(OSError) as caught:
                sink.step(pair.near.fileno(), 1_000_000, 100)
            assert caught.value.errno == errno.EBADF
            assert pending(pair.near) == 4 and sink.moved == 0
            assert target.read_bytes() == b"head:"
            assert sink.step(pair.near.fileno(), out.fileno(), 100) == 4
            assert contents(out.fileno()) == b"tail"


# --- SpliceRelay: socket to socket ------------------------------------------------------------

def run_relay(module, kind, data, limits, read_pace, rnd):
    """A peer thread sends `data` into the source pair and closes it; another takes from the
    destination pair at `read_pace` bytes per read; the relay moves what it can with limits
    drawn from `limits`, waiting for readiness as the protocol does. Returns what arrived."""
    relay = module.SpliceRelay()
    received = bytearray()
    with Pair(kind) as source, Pair(kind) as target:
        source.far.setblocking(True)
        target.far.setblocking(True)
        target.far.settimeout(WAIT)

        def send():
            source.far.sendall(data)
            source.far.shutdown(socket.SHUT_WR)

        def receive():
            while True:
                piece = target.far.recv(read_pace)
                if not piece:
                    return
                received.extend(piece)

        threads = [threading.Thread(target=send, daemon=True),
                   threading.Thread(target=receive, daemon=True)]
        for thread in threads:
            thread.start()
        delivered = 0
        deadline = time.monotonic() + 4 * WAIT
        while True:
            assert time.monotonic() < deadline, "relay stalled"
            remaining = len(data) - delivered
            limit = remaining if remaining and rnd.random() < 0.5 else rnd.choice(limits)
            got = relay.step(source.near.fileno(), target.near.fileno(), max(limit, 1))
            if got > 0:
                delivered += got
                assert got <= max(limit, 1)
                assert relay.moved == delivered
            elif got == -1:
                select.select([source.near], [], [], 0.5)
            elif got == -3:
                assert relay.pending > 0
                select.select([], [target.near], [], 0.5)
            else:
                assert got == 0 and relay.pending == 0
                break
        target.near.shutdown(socket.SHUT_WR)
        for thread in threads:
            thread.join(WAIT)
        assert not any(thread.is_alive() for thread in threads)
    relay.close()
    with pytest.raises(ValueError):
        relay.step(0, 0, 1)
    return bytes(received), delivered


@examples(40)
@given(st.binary(min_size=0, max_size=300_000), st.sampled_from(KINDS),
       st.lists(st.integers(1, 2 * MiB), min_size=1, max_size=4),
       st.sampled_from([1024, 65536, 1 << 20]), st.integers(0, 2**32))
def test_relay_moves_every_byte_in_order(data, kind, limits, read_pace, seed):
    native_run = run_relay(native, kind, data, limits, read_pace, random.Random(seed))
    oracle_run = run_relay(oracle, kind, data, limits, read_pace, random.Random(seed))
    assert native_run == oracle_run == (data, len(data))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_relay_large_body_through_a_slow_reader(kind, name):
    data = random.Random(5).randbytes(6 * MiB)
    assert run_relay(IMPLEMENTATIONS[name], kind, data, [1 << 30], 4096,
                     random.Random(6)) == (data, len(data))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_relay_takes_no_more_than_remaining(kind, name):
    relay = IMPLEMENTATIONS[name].SpliceRelay()
    with Pair(kind) as source, Pair(kind) as target:
        source.far.sendall(b"a" * 100 + b"NEXT")
        wait_until(lambda: pending(source.near) == 104, "the bytes to arrive")
        assert relay.step(source.near.fileno(), target.near.fileno(), 100) == 100
        assert pending(source.near) == 4  # what follows the body stays for its reader
        assert relay.step(source.near.fileno(), target.near.fileno(), 0) in (0, -1)
        assert source.near.recv(10) == b"NEXT"
        target.far.setblocking(True)
        got = bytearray()
        while len(got) < 100:
            got += target.far.recv(1000)
        assert bytes(got) == b"a" * 100
    relay.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_relay_nothing_yet_then_end(kind, name):
    relay = IMPLEMENTATIONS[name].SpliceRelay()
    with Pair(kind) as source, Pair(kind) as target:
        assert relay.step(source.near.fileno(), target.near.fileno(), 10) == -1
        source.far.shutdown(socket.SHUT_WR)
        wait_readable(source.near)
        assert relay.step(source.near.fileno(), target.near.fileno(), 10) == 0
    relay.close()


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_relay_to_a_closed_peer_raises(name):
    relay = IMPLEMENTATIONS[name].SpliceRelay()
    with Pair("unix") as source, Pair("unix") as target:
        source.far.sendall(b"x" * 1000)
        wait_until(lambda: pending(source.near) == 1000, "the bytes to arrive")
        target.far.close()
        with pytest.raises(OSError):
            for _ in range(3):
                relay.step(source.near.fileno(), target.near.fileno(), 1000)
    relay.close()
