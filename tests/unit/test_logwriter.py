"""The log's native writer thread (callfs._native.logsink.LogSink.start) and the process log
built on it (callfs.observability.logging.Log): every line reaches the file whole and in order,
pipes get writes of whole lines no larger than a piece, dropped lines are counted and said in
the format of the Python formatters, a file that takes nothing never holds up a caller for
longer than it was given, and a forked child neither writes nor waits on its parent's lines.
"""
import json
import logging
import os
import select
import sys
import threading
import time

import pytest

from callfs._native import logsink as native
from callfs._native.tally import Tally
from callfs.observability import logging as structured

PIPE_BUF = select.PIPE_BUF


def drain(fd):
    """What a pipe holds now."""
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def read_until(fd, wanted, timeout=10.0):
    """Read `fd` (a pipe's read end) until `wanted` bytes came or `timeout` passed."""
    os.set_blocking(fd, False)
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < wanted and time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            time.sleep(0.005)
            continue
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def pipe():
    read_end, write_end = os.pipe()
    yield read_end, write_end
    for fd in (read_end, write_end):
        try:
            os.close(fd)
        except OSError:
            pass


def test_lines_reach_a_file_whole_and_in_order(tmp_path):
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sink = native.LogSink(instance="i-1")
    sink.start(fd, interval=0.01)
    lines = [b"line %d %s\n" % (i, b"x" * (i % 700)) for i in range(20_000)]
    for i, line in enumerate(lines):
        assert sink.append(line)
        if i % 5000 == 0:
            time.sleep(0.02)  # let the writer take some while lines still come
    sink.stop()
    os.close(fd)
    assert path.read_bytes() == b"".join(lines)
    assert not sink.running


def test_the_writer_writes_at_its_tick_without_being_asked(pipe):
    read_end, write_end = pipe
    sink = native.LogSink()
    sink.start(write_end, interval=0.02)
    assert sink.append(b"tick\n")
    assert read_until(read_end, 5, timeout=5) == b"tick\n"
    sink.stop()


SCHED_BATCH = 3  # sched(7); /proc/<pid>/task/<tid>/stat field 41 is the policy


def thread_policies():
    """The scheduling policy of each of this process's threads, by thread id."""
    policies = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        policies[int(tid)] = int(fields[41 - 3])  # fields after "pid (comm)" start at field 3
    return policies


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_the_writer_runs_as_a_batch_thread_and_the_caller_is_left_alone(pipe):
    before = thread_policies()
    sink = native.LogSink()
    sink.start(pipe[1], interval=30)
    deadline = time.monotonic() + 5
    while len(thread_policies()) == len(before) and time.monotonic() < deadline:
        time.sleep(0.005)
    deadline = time.monotonic() + 5
    while True:  # the new thread sets its own policy as it starts
        new = {t: p for t, p in thread_policies().items() if t not in before}
        if list(new.values()) == [SCHED_BATCH] or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    sink.stop()
    assert list(new.values()) == [SCHED_BATCH]
    assert thread_policies()[threading.get_native_id()] == before[threading.get_native_id()]


def test_a_wake_writes_now_and_so_do_wake_bytes(pipe):
    read_end, write_end = pipe
    sink = native.LogSink()
    sink.start(write_end, interval=30)  # the tick alone would not come during the test
    assert sink.append(b"warning\n")
    sink.wake_writer()
    assert read_until(read_end, 8, timeout=5) == b"warning\n"
    big = b"b" * 1023 + b"\n"
    for _ in range(native.WAKE_BYTES // len(big)):
        assert sink.append(big)
    got = read_until(read_end, native.WAKE_BYTES, timeout=5)
    assert got == big * (native.WAKE_BYTES // len(big))
    sink.stop()


def test_flush_writes_from_the_callers_thread(pipe):
    read_end, write_end = pipe
    sink = native.LogSink()
    sink.start(write_end, interval=30)
    assert sink.append(b"now\n")
    assert sink.flush()
    assert read_until(read_end, 4, timeout=0.5) == b"now\n"
    sink.stop()


def test_a_pipe_read_as_it_fills_gets_every_line(pipe):
    """More than a pipe holds, a line longer than a piece among them: all of it arrives."""
    read_end, write_end = pipe
    sink = native.LogSink()
    sink.start(write_end, piece=PIPE_BUF, interval=0.01)
    lines = [b"%05d" % i + b"p" * (i * 37 % 900) + b"\n" for i in range(3000)]
    lines.insert(1000, b"L" * (3 * PIPE_BUF) + b"\n")
    expected = b"".join(lines)
    got = []
    reader = threading.Thread(target=lambda: got.append(read_until(read_end, len(expected))))
    reader.start()
    for line in lines:
        assert sink.append(line)
    reader.join()
    sink.stop()
    assert got == [expected]


def test_writes_to_a_pipe_are_never_split_mid_line(pipe):
    """Two sinks on one pipe (two workers on one stderr): lines never interleave."""
    read_end, write_end = pipe
    sinks = [native.LogSink(), native.LogSink()]
    for sink in sinks:
        sink.start(write_end, piece=PIPE_BUF, interval=0.001)
    expected = {}

    def fill(n, sink):
        for i in range(4000):
            line = b"%d:%05d:" % (n, i) + b"q" * (i * 53 % 1500) + b"\n"
            expected.setdefault(n, []).append(line)
            while not sink.append(line):
                time.sleep(0.001)

    threads = [threading.Thread(target=fill, args=(n, s)) for n, s in enumerate(sinks)]
    data = b""
    for t in threads:
        t.start()
    total = None
    deadline = time.monotonic() + 30
    os.set_blocking(read_end, False)
    while time.monotonic() < deadline:
        try:
            data += os.read(read_end, 1 << 16)
        except BlockingIOError:
            if total is None and not any(t.is_alive() for t in threads):
                total = sum(len(line) for lines in expected.values() for line in lines)
            if total is not None and len(data) >= total:
                break
            time.sleep(0.001)
    for t in threads:
        t.join()
    for sink in sinks:
        sink.stop()
    got = {0: [], 1: []}
    for line in data.splitlines(keepends=True):
        got[int(line[:1])].append(line)
    assert got == expected


def test_dropped_lines_are_counted_and_said_as_the_formatters_say_it(pipe):
    read_end, write_end = pipe
    tally = Tally(3, 1)
    tally.claim(0)
    for console in (False, True):
        sink = native.LogSink(limit=100, console=console)
        sink.count_dropped(tally, 2)
        assert sink.append(b"a" * 99 + b"\n")
        assert not sink.append(b"too much\n")
        assert not sink.append(b"again\n")
        assert sink.dropped == 2 and tally.total(2) == (2 if not console else 4)
        sink.start(write_end, interval=30)
        sink.stop()
        lines = drain(read_end).splitlines()
        assert lines[0] == b"a" * 99
        record = logging.LogRecord("callfs.log", logging.WARNING, "", 0, "log lines dropped",
                                   (), None)
        record.count = 2
        formatter = structured.ConsoleFormatter() if console else structured.JSONFormatter()
        said = formatter.format(record).encode()
        if console:
            assert lines[1][24:] == said[24:] and lines[1][:24] <= said[:24]
        else:
            got, want = json.loads(lines[1]), json.loads(said)
            assert got.pop("ts") <= want.pop("ts") and got == want
            assert list(json.loads(lines[1])) == list(json.loads(said))
        assert len(lines) == 2
    assert tally.total(0) == tally.total(1) == 0


def test_a_cell_outside_the_table_is_refused():
    sink = native.LogSink()
    with pytest.raises(ValueError):
        sink.count_dropped(Tally(2, 1), 2)
    with pytest.raises(TypeError):
        sink.count_dropped(None, 0)


@pytest.mark.parametrize("settings", [dict(fd=-1), dict(fd=1, piece=-1), dict(fd=1, interval=0)])
def test_bad_writer_settings_are_refused(settings):
    sink = native.LogSink()
    fd = settings.pop("fd")
    with pytest.raises(ValueError):
        sink.start(fd, **settings)
    assert not sink.running


def test_a_writer_starts_once(pipe):
    sink = native.LogSink()
    sink.start(pipe[1])
    with pytest.raises(RuntimeError):
        sink.start(pipe[1])
    sink.stop()


def test_a_file_that_takes_nothing_holds_up_no_caller(pipe):
    """A pipe nobody reads: appends drop once the buffer is full and never wait; flush and
    stop give up after the time they were given."""
    read_end, write_end = pipe
    sink = native.LogSink(limit=1 << 20)
    sink.start(write_end, interval=0.001)
    line = b"z" * 999 + b"\n"
    started = time.monotonic()
    kept = sum(sink.append(line) for _ in range(5000))
    assert time.monotonic() - started < 2
    assert kept < 5000 and sink.dropped > 0
    started = time.monotonic()
    assert not sink.flush(0.2)
    sink.stop(0.3)
    assert time.monotonic() - started < 3
    assert not sink.running


def test_a_closed_file_loses_lines_and_nothing_else(pipe):
    read_end, write_end = pipe
    os.close(read_end)  # writes fail with EPIPE
    sink = native.LogSink()
    sink.start(write_end, interval=0.001)
    for _ in range(1000):
        assert sink.append(b"gone\n")
    time.sleep(0.05)
    sink.stop(0.5)
    assert not sink.running


def test_an_orphaned_sink_takes_no_lines_and_writes_nothing(pipe):
    read_end, write_end = pipe
    sink = native.LogSink()
    sink.start(write_end, interval=30)
    assert sink.append(b"before\n")
    sink.stop()
    sink.orphan()
    assert not sink.append(b"after\n")
    fields = (b"GET", b"/health", b"/health", 200, 0, 0, 0, None, b"r", b"::1", None)
    assert not sink.access(*fields)
    assert sink.take() == (b"", 0) and not sink.flush()
    with pytest.raises(RuntimeError):
        sink.start(write_end)
    assert drain(read_end) == b"before\n"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_writes_its_own_lines_and_never_its_parents(pipe):
    read_end, write_end = pipe
    log = structured.Log(write_end, instance="i-1", console=False)
    try:
        log.sink.append(b"parent pending\n")  # not yet written at the fork
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                log.sink.append(b"child line\n")
                log.stop()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        log.sink.append(b"parent after\n")
        log.stop()
        data = drain(read_end)
        assert sorted(data.splitlines()) == [b"child line", b"parent after", b"parent pending"]
        assert data.count(b"parent pending") == 1
    finally:
        log.stop()


def test_the_process_log_writes_records_and_access_lines(pipe):
    read_end, write_end = pipe
    log = structured.Log(write_end, instance="i-9", console=False)
    handler = structured.SinkHandler(log)
    handler.setFormatter(structured.JSONFormatter())
    logger = logging.getLogger("callfs.test-writer")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("something", extra={"count": 3})
        assert log.sink.access(b"GET", b"/health", b"/health", 200, 0, 2, 1000, None, b"r-1",
                               b"[::1]:1", None)
        handler.flush()
        lines = [json.loads(line) for line in read_until(read_end, 300, timeout=5).splitlines()]
        assert [line["event"] for line in lines] == ["something", "request"]
        assert lines[0]["count"] == 3 and lines[1]["instance"] == "i-9"
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert not log.sink.running


def test_many_threads_append_while_the_writer_writes(tmp_path):
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sink = native.LogSink()
    sink.start(fd, interval=0.001)

    def fill(n):
        for i in range(3000):
            assert sink.append(b"t%d %d\n" % (n, i))

    threads = [threading.Thread(target=fill, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.stop()
    os.close(fd)
    lines = path.read_bytes().splitlines()
    for n in range(4):
        assert [line for line in lines if line.startswith(b"t%d " % n)] == [
            b"t%d %d" % (n, i) for i in range(3000)]
    assert len(lines) == 12000


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
