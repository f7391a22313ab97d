"""Structured logs: one JSON object per line (log.format json) or readable lines (CONFIG.md
§5.3), written without ever making the event loop wait.

Every line — the access line of each request and every other record — goes into the process's
LogSink (callfs/_native/logsink.pyx), a bounded buffer; a writer thread takes what is pending a
few times a second (at once when much is pending) and writes it to stderr. When the buffer is
full a line is dropped and counted, and the writer reports the count in a line of its own (and
in `callfs_log_lines_dropped_total`). A forked child forgets what its parent had pending (the
parent writes it) and starts its own writer.
"""
import contextvars
import logging
import os
import select
import stat
import sys
import threading
import time

import orjson

from callfs._native.logsink import LogSink

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "error": logging.ERROR}
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
FLUSH_SECONDS = 0.05
PIPE_BUF = getattr(select, "PIPE_BUF", 4096)
DROPPED = "log lines dropped"

# The id of the request being served by the running task, for every record logged meanwhile.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                        default=None)


def _timestamp(created: float) -> str:
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
            + f".{int(created * 1000) % 1000:03d}Z")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": _timestamp(record.created),
            "level": _level_name(record.levelno),
            "logger": record.name,
            "event": record.getMessage(),
        }
        current = request_id.get()
        if current is not None:
            entry["request_id"] = current
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record.created), _level_name(record.levelno).upper(), record.name,
                 record.getMessage()]
        current = request_id.get()
        if current is not None:
            parts.append(f"request_id={current}")
        for key, value in vars(record).items():
            if key not in _STANDARD:
                parts.append(f"{key}={value}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _level_name(levelno: int) -> str:
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warn"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


class SinkHandler(logging.Handler):
    """Records into the sink; the writer thread writes them."""

    def __init__(self, log: "Log"):
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.log.sink.append(line.encode("utf-8", "replace") + b"\n")
        if record.levelno >= logging.WARNING:
            self.log.wake()  # a warning or an error is written now, not at the next tick

    def flush(self) -> None:
        self.log.flush()

    def close(self) -> None:
        self.log.stop()
        super().close()


class Log:
    """The process's sink and its writer thread, writing to `fd`."""

    def __init__(self, fd: int, *, instance: str, console: bool):
        self.fd = fd
        self.instance = instance
        self.console = console
        self.on_dropped = None  # called with each count of dropped lines (the metric)
        # Workers share one stderr: on a pipe only writes of PIPE_BUF bytes or less are never
        # interleaved with another's, so lines go in pieces of whole lines that size.
        try:
            mode = os.fstat(fd).st_mode
            self._piece = PIPE_BUF if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else 0
        except OSError:
            self._piece = 0
        self._lock = threading.Lock()  # one writer at a time: the thread, or a final flush
        self._start()
        os.register_at_fork(after_in_child=self._after_fork)

    def _start(self) -> None:
        self._wake = threading.Event()
        self._stopping = False
        self.sink = LogSink(instance=self.instance, console=self.console, wake=self._wake.set)
        self._thread = threading.Thread(target=self._run, name="callfs-log", daemon=True)
        self._thread.start()

    def _after_fork(self) -> None:
        if self._stopping:
            return  # replaced by another log before the fork
        pending = self.sink
        self._lock = threading.Lock()
        self._start()
        pending.discard()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        with self._lock:
            data, dropped = self.sink.take()
            if dropped:
                if self.on_dropped is not None:
                    self.on_dropped(dropped)
                data += self._dropped_line(dropped)
            if data:
                for piece in _pieces(data, self._piece):
                    _write_all(self.fd, piece)

    def _dropped_line(self, count: int) -> bytes:
        record = logging.LogRecord("callfs.log", logging.WARNING, "", 0, DROPPED, (), None)
        record.count = count
        formatter = ConsoleFormatter() if self.console else JSONFormatter()
        return formatter.format(record).encode() + b"\n"

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Write what is pending and end the writer."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self.flush()


def _pieces(data: bytes, size: int):
    """`data` in pieces of at most `size` bytes that end at line ends (a longer line alone);
    all of it at once when `size` is 0."""
    if not size or len(data) <= size:
        yield data
        return
    start = 0
    while start < len(data):
        end = start + size
        if end >= len(data):
            yield data[start:]
            return
        cut = data.rfind(b"\n", start, end)
        if cut < 0:
            cut = data.find(b"\n", end)
            if cut < 0:
                yield data[start:]
                return
        yield data[start:cut + 1]
        start = cut + 1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            time.sleep(0.001)  # stderr left non-blocking by whoever started us
        except OSError:
            return  # the log's file is gone: nothing to write to


_current: Log | None = None


def setup(level: str, fmt: str, instance: str = "") -> Log:
    """Route every record through the process's sink; returns it (the access log writes
    there too)."""
    global _current
    root = logging.getLogger()
    root.handlers[:] = []
    if _current is not None:
        _current.stop()
    _current = Log(sys.stderr.fileno(), instance=instance, console=fmt != "json")
    handler = SinkHandler(_current)
    handler.setFormatter(JSONFormatter() if fmt == "json" else ConsoleFormatter())
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    return _current


def access_enabled(level: str) -> bool:
    """Whether access lines are written at this `log.level` (info and debug)."""
    return _LEVELS.get(level, logging.INFO) <= logging.INFO
