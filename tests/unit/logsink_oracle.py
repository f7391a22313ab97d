"""Plain-Python specification of `callfs._native.logsink`.

The same buffer rules and the same access line, byte for byte, built with bytes operations.
tests/unit/test_logsink.py checks with hypothesis that both write the same lines (the
timestamp aside: time moves between the two calls) and keep and drop the same ones.

The buffer holds at most `limit` pending bytes; a line that does not fit is dropped whole and
counted. `wake()` is called when the pending bytes reach WAKE_BYTES, once until the next take()
or discard(); an exception it raises is swallowed.

The access line: the target as received with each byte outside 33..126, `"` and `\\` written
%XX (uppercase hex); a target longer than 10 bytes starting with /download/ shown as
/download/[redacted]. The user (str() of it) and the instance ID are JSON-escaped (quote and
backslash with a backslash, bytes below 32 and 127 as \\u00xx) in both formats; method,
route, request id, peer and transfer are written as given. The duration is milliseconds with
three decimals, from the whole microseconds of the nanoseconds given. The timestamp is UTC,
YYYY-MM-DDTHH:MM:SS.mmmZ.
"""
import time

DEFAULT_LIMIT = 8 * 1024 * 1024
WAKE_BYTES = 256 * 1024
DOWNLOAD_PREFIX = b"/download/"
REDACTED = b"[redacted]"
UINT64 = range(2**64)
INT = range(-(2**31), 2**31)


def escaped_json(text: bytes) -> bytes:
    out = bytearray()
    for c in text:
        if c in (0x22, 0x5C):
            out += b"\\" + bytes((c,))
        elif c < 32 or c == 127:
            out += b"\\u%04x" % c
        else:
            out.append(c)
    return bytes(out)


def shown_target(target: bytes) -> bytes:
    """The target with a link's token left out."""
    if len(target) > len(DOWNLOAD_PREFIX) and target.startswith(DOWNLOAD_PREFIX):
        return DOWNLOAD_PREFIX + REDACTED
    return target


def encoded_target(target: bytes) -> bytes:
    return b"".join(bytes((c,)) if 33 <= c <= 126 and c not in (0x22, 0x5C) else b"%%%02X" % c
                    for c in target)


def milliseconds(ns: int) -> bytes:
    micros = ns // 1000
    return b"%d.%03d" % (micros // 1000, micros % 1000)


def timestamp(now_ns: int) -> bytes:
    seconds, rest = divmod(now_ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)).encode() + b".%03dZ" % (
        rest // 10**6)


def access_line(method, route, target, status, bytes_in, bytes_out, duration_ns, user,
                request_id, peer, transfer, aborted=False, *, instance="", console=False,
                now_ns=None):
    """One access line, its newline included; `now_ns` (the time, default now) gives its ts."""
    for number in (bytes_in, bytes_out, duration_ns):
        if number not in UINT64:
            raise OverflowError("a size or duration is an unsigned 64-bit number")
    if status not in INT:
        raise OverflowError("a status is a C int")
    for part in (method, route, target, request_id, peer):
        if not isinstance(part, bytes):
            raise TypeError("expected bytes")
    if transfer is not None and not isinstance(transfer, bytes):
        raise TypeError("expected bytes")
    ts = timestamp(time.time_ns() if now_ns is None else now_ns)
    path = encoded_target(shown_target(target))
    who = None if user is None else escaped_json(str(user).encode())
    me = escaped_json(instance.encode())
    if console:
        parts = [ts, b" INFO access ", method, b" ", path, b" %d" % status, b" route=", route,
                 b" in=%d out=%d ms=" % (bytes_in, bytes_out), milliseconds(duration_ns),
                 b" user=", b"-" if who is None else who, b" id=", request_id, b" peer=", peer]
        if transfer is not None:
            parts += [b" transfer=", transfer]
        if aborted:
            parts.append(b" aborted")
        parts += [b" instance=", me, b"\n"]
        return b"".join(parts)
    parts = [b'{"ts":"', ts, b'","level":"info","logger":"callfs.access","event":"request",',
             b'"method":"', method, b'","route":"', route, b'","path":"', path,
             b'","status":%d,"bytes_in":%d,"bytes_out":%d' % (status, bytes_in, bytes_out),
             b',"duration_ms":', milliseconds(duration_ns),
             b',"user":', b"null" if who is None else b'"' + who + b'"',
             b',"instance":"', me, b'","request_id":"', request_id, b'","peer":"', peer,
             b'","transfer":', b"null" if transfer is None else b'"' + transfer + b'"']
    if aborted:
        parts.append(b',"aborted":true')
    parts.append(b"}\n")
    return b"".join(parts)


class LogSink:
    """Pending log bytes, at most `limit` of them (DEFAULT_LIMIT when `limit` <= 0)."""

    def __init__(self, *, instance="", console=False, limit=DEFAULT_LIMIT, wake=None):
        if not isinstance(instance, str):
            raise TypeError("an instance ID is a str")
        self.instance = instance
        self.console = bool(console)
        self.limit = limit if limit > 0 else DEFAULT_LIMIT
        self.wake = wake
        self.woken = False
        self.dropped = 0
        self._pending = bytearray()

    @property
    def pending(self):
        return len(self._pending)

    def append(self, line):
        if not isinstance(line, bytes):
            raise TypeError("a line is bytes")
        if len(self._pending) + len(line) > self.limit:
            self.dropped += 1
            return False
        self._pending += line
        if len(self._pending) >= WAKE_BYTES and not self.woken and self.wake is not None:
            self.woken = True
            try:
                self.wake()
            except BaseException:
                pass
        return True

    def take(self):
        out, dropped = bytes(self._pending), self.dropped
        self.discard()
        return out, dropped

    def discard(self):
        self._pending.clear()
        self.dropped = 0
        self.woken = False

    def access(self, method, route, target, status, bytes_in, bytes_out, duration_ns, user,
               request_id, peer, transfer, aborted=False):
        return self.append(access_line(method, route, target, status, bytes_in, bytes_out,
                                       duration_ns, user, request_id, peer, transfer, aborted,
                                       instance=self.instance, console=self.console))
