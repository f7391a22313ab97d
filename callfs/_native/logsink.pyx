# cython: language_level=3, boundscheck=False, wraparound=False
"""The log's bounded buffer, and the access line formatted in C.

Every line a process logs lands here, whole, and a writer thread (callfs/observability/
logging.py) takes what is pending and writes it out; the event loop never waits on the log's
file. The buffer holds at most `limit` bytes: a line that does not fit is dropped and counted
(`dropped`), never waited for, and the writer reports the count once it catches up.

`access` formats the access line of one request — JSON, or the console format — straight into
the buffer, for the hot path (C callers) and the general route alike, so both write the same
fields the same way. The request target is written as received, except that a byte outside
printable ASCII, a quote or a backslash is percent-encoded (the field stays a valid URL and the
line one line), and the token of a `/download/{token}` link never appears. The plain-Python
specification is tests/unit/logsink_oracle.py.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy

cdef extern from "time.h" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    cdef struct tm:
        pass
    int clock_gettime(int clock, timespec* ts)
    int CLOCK_REALTIME
    tm* gmtime_r(const time_t* t, tm* out)
    size_t strftime(char* s, size_t max, const char* fmt, const tm* t)

DEFAULT_LIMIT = 8 * 1024 * 1024
WAKE_BYTES = 256 * 1024
DOWNLOAD_PREFIX = b"/download/"
REDACTED = b"[redacted]"
cdef const char* _HEX = b"0123456789ABCDEF"


cdef class LogSink:
    """Pending log bytes, at most `limit` of them; `wake()` is called once the pending bytes
    pass WAKE_BYTES (the writer should come now rather than at its next tick). `console`
    selects the human-readable access line; `instance` is this instance's ID."""

    def __cinit__(self, *, str instance="", bint console=False, Py_ssize_t limit=DEFAULT_LIMIT,
                  wake=None):
        self.buf = NULL
        self.used = 0
        self.cap = 0
        self.limit = limit if limit > 0 else DEFAULT_LIMIT
        self.console = console
        self.wake = wake
        self.woken = False
        self.dropped = 0
        self.second = -1
        self.ts_prefix = b""
        encoded = instance.encode()
        self.instance = _escaped_json(encoded)

    def __dealloc__(self):
        if self.buf != NULL:
            free(self.buf)
            self.buf = NULL

    @property
    def pending(self):
        return self.used

    def append(self, bytes line not None):
        """Add one whole line (its newline included); False when it was dropped."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(line)
        if not self._reserve(n):
            return False
        memcpy(self.buf + self.used, PyBytes_AS_STRING(line), n)
        self._commit(n)
        return True

    def take(self):
        """Everything pending (the buffer empties), and the lines dropped since the last take."""
        out = PyBytes_FromStringAndSize(self.buf, self.used) if self.used else b""
        self.used = 0
        self.woken = False
        dropped, self.dropped = self.dropped, 0
        return out, dropped

    def discard(self):
        """Forget what is pending (a forked child: its parent writes those lines)."""
        self.used = 0
        self.dropped = 0
        self.woken = False

    def access(self, bytes method not None, bytes route not None, bytes target not None,
               int status, uint64_t bytes_in, uint64_t bytes_out, uint64_t duration_ns,
               user, bytes request_id not None, bytes peer not None, transfer, bint aborted=False):
        """The access line of one request (see the module's doc); False when dropped."""
        return self.access_c(method, route, target, status, bytes_in, bytes_out, duration_ns,
                             None if user is None else _escaped_json(str(user).encode()),
                             PyBytes_AS_STRING(request_id), PyBytes_GET_SIZE(request_id), peer,
                             transfer, aborted)

    cdef bint _reserve(self, Py_ssize_t n) noexcept:
        cdef Py_ssize_t want
        cdef char* grown
        if self.used + n > self.limit:
            self.dropped += 1
            return False
        if self.used + n > self.cap:
            want = self.cap * 2 if self.cap else 64 * 1024
            while want < self.used + n:
                want *= 2
            if want > self.limit:
                want = self.limit
            grown = <char*>realloc(self.buf, want)
            if grown == NULL:
                self.dropped += 1
                return False
            self.buf = grown
            self.cap = want
        return True

    cdef void _commit(self, Py_ssize_t n) noexcept:
        self.used += n
        if self.used >= WAKE_BYTES and not self.woken and self.wake is not None:
            self.woken = True
            try:
                self.wake()
            except BaseException:
                pass

    cdef bytes _timestamp(self, int* millis):
        """`2026-12-02T18:24:49.` for the current second (kept once a second); the
        milliseconds in `millis`."""
        cdef timespec now
        cdef tm parts
        cdef char text[32]
        clock_gettime(CLOCK_REALTIME, &now)
        millis[0] = now.tv_nsec // 1000000
        if now.tv_sec != self.second:
            gmtime_r(&now.tv_sec, &parts)
            strftime(text, sizeof(text), b"%Y-%m-%dT%H:%M:%S.", &parts)
            self.ts_prefix = text
            self.second = now.tv_sec
        return self.ts_prefix

    cdef int access_c(self, bytes method, bytes route, bytes target, int status,
                      uint64_t bytes_in, uint64_t bytes_out, uint64_t duration_ns, bytes user,
                      const char* rid, Py_ssize_t rid_len, bytes peer, object transfer,
                      bint aborted) except -1:
        cdef int millis
        cdef bytes prefix = self._timestamp(&millis)
        cdef bytes shown = _shown_target(target)
        cdef bytes moved = <bytes>transfer if transfer is not None else None
        # An upper bound of the line's length: fixed text, the fields, the numbers.
        cdef Py_ssize_t bound = (400 + PyBytes_GET_SIZE(method) + PyBytes_GET_SIZE(route)
                                 + 3 * PyBytes_GET_SIZE(shown) + rid_len
                                 + PyBytes_GET_SIZE(peer) + PyBytes_GET_SIZE(self.instance)
                                 + (PyBytes_GET_SIZE(user) if user is not None else 0)
                                 + (PyBytes_GET_SIZE(moved) if moved is not None else 0))
        cdef char* scratch = NULL
        cdef char* start
        if self.used + bound <= self.limit:
            if not self._reserve(bound):
                return 0
            start = self.buf + self.used
        else:
            # Near the limit: the line itself may still fit. Formed aside, then kept or not.
            scratch = <char*>malloc(bound)
            if scratch == NULL:
                self.dropped += 1
                return 0
            start = scratch
        cdef char* p = start
        if self.console:
            p = _put(p, prefix)
            p = _digits3(p, millis)
            p = _lit(p, b"Z INFO access ", 14)
            p = _put(p, method)
            p[0] = 32
            p = _target(p + 1, shown)
            p[0] = 32
            p = _uint(p + 1, status)
            p = _lit(p, b" route=", 7)
            p = _put(p, route)
            p = _lit(p, b" in=", 4)
            p = _uint(p, bytes_in)
            p = _lit(p, b" out=", 5)
            p = _uint(p, bytes_out)
            p = _lit(p, b" ms=", 4)
            p = _millis(p, duration_ns)
            p = _lit(p, b" user=", 6)
            if user is not None:
                p = _put(p, user)
            else:
                p[0] = 45
                p += 1
            p = _lit(p, b" id=", 4)
            memcpy(p, rid, rid_len)
            p += rid_len
            p = _lit(p, b" peer=", 6)
            p = _put(p, peer)
            if moved is not None:
                p = _lit(p, b" transfer=", 10)
                p = _put(p, moved)
            if aborted:
                p = _lit(p, b" aborted", 8)
            p = _lit(p, b" instance=", 10)
            p = _put(p, self.instance)
            p[0] = 10
            p += 1
        else:
            p = _lit(p, b'{"ts":"', 7)
            p = _put(p, prefix)
            p = _digits3(p, millis)
            p = _lit(p, b'Z","level":"info","logger":"callfs.access","event":"request","method":"', 71)
            p = _put(p, method)
            p = _lit(p, b'","route":"', 11)
            p = _put(p, route)
            p = _lit(p, b'","path":"', 10)
            p = _target(p, shown)
            p = _lit(p, b'","status":', 11)
            p = _uint(p, status)
            p = _lit(p, b',"bytes_in":', 12)
            p = _uint(p, bytes_in)
            p = _lit(p, b',"bytes_out":', 13)
            p = _uint(p, bytes_out)
            p = _lit(p, b',"duration_ms":', 15)
            p = _millis(p, duration_ns)
            p = _lit(p, b',"user":', 8)
            if user is not None:
                p[0] = 34
                p = _put(p + 1, user)
                p[0] = 34
                p += 1
            else:
                p = _lit(p, b"null", 4)
            p = _lit(p, b',"instance":"', 13)
            p = _put(p, self.instance)
            p = _lit(p, b'","request_id":"', 16)
            memcpy(p, rid, rid_len)
            p += rid_len
            p = _lit(p, b'","peer":"', 10)
            p = _put(p, peer)
            p = _lit(p, b'","transfer":', 13)
            if moved is not None:
                p[0] = 34
                p = _put(p + 1, moved)
                p[0] = 34
                p += 1
            else:
                p = _lit(p, b"null", 4)
            if aborted:
                p = _lit(p, b',"aborted":true', 15)
            p = _lit(p, b"}\n", 2)
        if scratch == NULL:
            self._commit(p - start)
            return 1
        cdef Py_ssize_t size = p - start
        cdef bint kept = self._reserve(size)
        if kept:
            memcpy(self.buf + self.used, scratch, size)
            self._commit(size)
        free(scratch)
        return 1 if kept else 0


cdef bytes _shown_target(bytes target):
    """The target, with a link's token left out."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(target)
    if size > 10 and memcmp(PyBytes_AS_STRING(target), b"/download/", 10) == 0:
        return DOWNLOAD_PREFIX + REDACTED
    return target


cdef inline bint _plain_byte(unsigned char c) noexcept:
    return 33 <= c <= 126 and c != 34 and c != 92


cdef char* _target(char* p, bytes target) noexcept:
    """The target, bytes outside printable ASCII, `"` and `\\` percent-encoded (at most 3 bytes
    out per byte in)."""
    cdef const unsigned char* raw = <const unsigned char*>PyBytes_AS_STRING(target)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(target)
    cdef unsigned char c
    for i in range(n):
        c = raw[i]
        if _plain_byte(c):
            p[0] = <char>c
            p += 1
        else:
            p[0] = 37
            p[1] = _HEX[c >> 4]
            p[2] = _HEX[c & 15]
            p += 3
    return p


cdef bytes _escaped_json(bytes text):
    """`text` as the inside of a JSON string: quote, backslash and control bytes escaped."""
    cdef const unsigned char* raw = <const unsigned char*>PyBytes_AS_STRING(text)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(text)
    out = bytearray()
    for i in range(n):
        c = raw[i]
        if c == 34 or c == 92:
            out += b"\\" + bytes((c,))
        elif c < 32 or c == 127:
            out += b"\\u%04x" % c
        else:
            out.append(c)
    return bytes(out)


def escaped_json(bytes text not None):
    """`text` as the inside of a JSON string (the field values given once, such as a user)."""
    return _escaped_json(text)


cdef inline char* _put(char* p, bytes part) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(part)
    memcpy(p, PyBytes_AS_STRING(part), n)
    return p + n


cdef inline char* _lit(char* p, const char* text, Py_ssize_t n) noexcept:
    memcpy(p, text, n)
    return p + n


cdef char* _uint(char* p, uint64_t value) noexcept:
    cdef char digits[24]
    cdef int n = 0
    if value == 0:
        p[0] = 48
        return p + 1
    while value:
        digits[n] = <char>(48 + value % 10)
        value //= 10
        n += 1
    while n:
        n -= 1
        p[0] = digits[n]
        p += 1
    return p


cdef inline char* _digits3(char* p, int value) noexcept:
    p[0] = <char>(48 + value // 100)
    p[1] = <char>(48 + (value // 10) % 10)
    p[2] = <char>(48 + value % 10)
    return p + 3


cdef char* _millis(char* p, uint64_t ns) noexcept:
    """Nanoseconds as milliseconds with three decimals (microseconds, rounded down)."""
    cdef uint64_t micros = ns // 1000
    p = _uint(p, micros // 1000)
    p[0] = 46
    return _digits3(p + 1, <int>(micros % 1000))
