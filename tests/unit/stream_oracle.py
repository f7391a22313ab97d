"""Plain-Python specification of `callfs._native.stream`.

The same return contract as the native module, built on os.sendfile for downloads and on
os.read/os.write for uploads (the bytes pass through Python, which the native module avoids).
tests/unit/test_stream.py checks with hypothesis that both move the same bytes.

send_file(sock, fd, offset, count)
    bytes sent (> 0); 0 when `count` <= 0 or `offset` is at or after the end of the file;
    -1 when the socket cannot take a single byte now; OSError for anything else (a reset or
    closed peer: ConnectionResetError, BrokenPipeError). The file position is not used.
SpliceSink().step(sock, fd, remaining)
    bytes moved from `sock` to `fd` at its current position (> 0); -1 when the socket has
    nothing now; 0 when the peer closed (or `remaining` <= 0). Never reads more than
    `remaining` bytes from the socket. ValueError once the sink is closed, for a file opened
    O_APPEND (splice(2) cannot write there; the socket is left untouched), and for every step
    after one whose file write failed (the bytes it had taken from the socket are lost).
One call moves at most about STEP_LIMIT bytes, so that one connection cannot hold the loop.
"""
import fcntl
import os

STEP_LIMIT = 4 * 1024 * 1024  # bytes one step moves at most (the native STEP_LIMIT)
PIPE_SIZE = 1024 * 1024  # bytes the native sink asks of its pipe: its largest single read


def send_file(sock, fd, offset, count):
    """Send up to `count` bytes of `fd` from `offset` to the non-blocking socket `sock`."""
    if count <= 0:
        return 0
    total = 0
    while total < count and total < STEP_LIMIT:
        try:
            sent = os.sendfile(sock, fd, offset + total, min(count - total, STEP_LIMIT - total))
        except BlockingIOError:
            return total if total > 0 else -1
        if sent == 0:  # the file ends here
            break
        total += sent
    return total


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class SpliceSink:
    """Moves bytes from a non-blocking socket into a file, `capacity` bytes per read at most."""

    def __init__(self, capacity=PIPE_SIZE):
        self.capacity = capacity
        self.moved = 0
        self.closed = False
        self.broken = False  # a write to the file failed: bytes of the socket are lost

    def close(self):
        self.closed = True

    def step(self, sock, fd, remaining):
        """Move up to `remaining` bytes from `sock` to `fd`: > 0 moved, -1 nothing now, 0 EOF."""
        if self.closed:
            raise ValueError("the sink is closed")
        if self.broken:
            raise ValueError("the sink failed to write; bytes of the socket are lost")
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:  # OSError first for a bad descriptor
            raise ValueError("splice cannot write to a file opened with O_APPEND")
        total = 0
        while remaining > 0 and total < STEP_LIMIT:
            try:
                data = os.read(sock, min(remaining, self.capacity))
            except BlockingIOError:
                return total if total > 0 else -1
            if not data:  # the peer closed; what came before it is reported first
                return total
            self.broken = True
            _write_all(fd, data)
            self.broken = False
            total += len(data)
            remaining -= len(data)
            self.moved += len(data)
        return total


class SpliceRelay:
    """Moves bytes from one non-blocking socket to another; what the destination could not
    take waits in `pending` (the native relay's pipe) and goes first at the next step.

    step(src, dst, remaining) -> bytes delivered to `dst` (> 0); -1 when `src` has nothing
    now (and nothing was delivered); -3 when `dst` can take nothing now; 0 when `src` closed
    with nothing left to deliver. `remaining` counts the bytes still to deliver, pending ones
    included, so the relay never takes more than that from `src`."""

    def __init__(self, capacity=PIPE_SIZE):
        self.capacity = capacity
        self.moved = 0
        self._buffer = b""
        self.closed = False

    @property
    def pending(self):
        return len(self._buffer)

    def close(self):
        self.closed = True

    def _deliver(self, dst):
        total = 0
        while self._buffer:
            try:
                sent = os.write(dst, self._buffer)
            except BlockingIOError:
                break
            self._buffer = self._buffer[sent:]
            total += sent
        self.moved += total
        return total

    def step(self, src, dst, remaining):
        if self.closed:
            raise ValueError("the relay is closed")
        total = 0
        dry = False
        while total < STEP_LIMIT:
            if self._buffer:
                total += self._deliver(dst)
                if self._buffer:
                    return total if total > 0 else -3
            if remaining - total <= 0 or dry:
                break
            try:
                data = os.read(src, min(remaining - total, self.capacity))
            except BlockingIOError:
                dry = True
                continue
            if not data:
                return total
            self._buffer = data
        if total > 0:
            return total
        return -1 if dry else 0
