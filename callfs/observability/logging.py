"""Structured logs: one JSON object per line (log.format json) or readable lines (CONFIG.md
§5.3), written without ever making the event loop wait.

Every line — the access line of each request and every other record — goes into the process's
LogSink (callfs/_native/logsink.pyx), a bounded buffer; its writer thread, native and outside
the interpreter's lock, writes what is pending to stderr every FLUSH_SECONDS (at once when much
is pending, or on a warning). When the buffer is full a line is dropped and counted (in
`callfs_log_lines_dropped_total` too), and the writer reports the count in a line of its own.
A forked child leaves what its parent had pending to the parent and starts its own writer.
"""
import contextvars
import logging
import os
import select
import stat
import sys
import time

import orjson

from callfs._native.logsink import LogSink

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "error": logging.ERROR}
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
FLUSH_SECONDS = 0.05
STOP_SECONDS = 2.0  # how long a final write may wait for a file that takes no more
PIPE_BUF = getattr(select, "PIPE_BUF", 4096)

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
        # Workers share one stderr: on a pipe only writes of PIPE_BUF bytes or less are never
        # interleaved with another's, so lines go in pieces of whole lines that size.
        try:
            mode = os.fstat(fd).st_mode
            self._piece = PIPE_BUF if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else 0
        except OSError:
            self._piece = 0
        self._stopping = False
        self._start()
        os.register_at_fork(after_in_child=self._after_fork)

    def _start(self) -> None:
        self.sink = LogSink(instance=self.instance, console=self.console)
        self.sink.start(self.fd, piece=self._piece, interval=FLUSH_SECONDS)

    def _after_fork(self) -> None:
        if self._stopping:
            return  # replaced by another log before the fork
        # The parent writes what it had pending; the child starts a sink and writer of its own.
        self.sink.orphan()
        self._start()

    def count_dropped(self, tally, cell: int) -> None:
        """Count each dropped line in `cell` of `tally` (callfs_log_lines_dropped_total)."""
        self.sink.count_dropped(tally, cell)

    def flush(self) -> None:
        self.sink.flush(STOP_SECONDS)

    def wake(self) -> None:
        self.sink.wake_writer()

    def stop(self) -> None:
        """Write what is pending and end the writer."""
        self._stopping = True
        self.sink.stop(STOP_SECONDS)


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
