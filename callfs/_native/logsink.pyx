# cython: language_level=3, boundscheck=False, wraparound=False
"""The log's bounded buffer and its writer thread, and the access line formatted in C.

Every line a process logs lands here, whole. A writer thread of its own, which never takes the
interpreter's lock, swaps the pending lines for an empty buffer every `interval` (at once once
WAKE_BYTES are pending, or when woken) and writes them out; the event loop never waits on the
log's file. Pending lines are at most `limit` bytes: a line that does not fit is dropped and
counted (`dropped`, and the metric's cell when one is given), never waited for, and the writer
says how many in a line of its own once it catches up. Without a thread (`start` not called)
the buffer is emptied by `take`, and `wake()` is called once WAKE_BYTES are pending.

`access` formats the access line of one request — JSON, or the console format — straight into
the buffer, for the hot path (C callers) and the general route alike, so both write the same
fields the same way. The request target is written as received, except that a byte outside
printable ASCII, a quote or a backslash is percent-encoded (the field stays a valid URL and the
line one line), and the token of a `/download/{token}` link never appears. The plain-Python
specification is tests/unit/logsink_oracle.py.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

from callfs._native.tally cimport Tally

import os
import select
import stat

cdef extern from "time.h" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    cdef struct tm:
        pass
    int clock_gettime(int clock, timespec* ts)
    int CLOCK_REALTIME
    int CLOCK_MONOTONIC
    tm* gmtime_r(const time_t* t, tm* out)
    size_t strftime(char* s, size_t max, const char* fmt, const tm* t)

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_condattr_t:
        pass
    int pthread_mutex_init(pthread_mutex_t* m, const void* attr)
    int pthread_mutex_lock(pthread_mutex_t* m)
    int pthread_mutex_timedlock(pthread_mutex_t* m, const timespec* deadline)
    int pthread_mutex_unlock(pthread_mutex_t* m)
    int pthread_mutex_destroy(pthread_mutex_t* m)
    int pthread_condattr_init(pthread_condattr_t* a)
    int pthread_condattr_setclock(pthread_condattr_t* a, int clock)
    int pthread_condattr_destroy(pthread_condattr_t* a)
    int pthread_cond_init(pthread_cond_t* c, const pthread_condattr_t* a)
    int pthread_cond_timedwait(pthread_cond_t* c, pthread_mutex_t* m, const timespec* deadline)
    int pthread_cond_signal(pthread_cond_t* c)
    int pthread_cond_destroy(pthread_cond_t* c)
    int pthread_create(pthread_t* t, const void* attr, void* (*run)(void*) noexcept nogil,
                       void* arg)
    int pthread_join(pthread_t t, void** result)
    pthread_t pthread_self()

cdef extern from "<sched.h>" nogil:
    cdef struct sched_param:
        int sched_priority
    int SCHED_BATCH
    int pthread_setschedparam(pthread_t t, int policy, const sched_param* param)

cdef extern from "<poll.h>" nogil:
    cdef struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd* fds, unsigned long n, int timeout)
    short POLLOUT, POLLERR, POLLNVAL

cdef extern from "<unistd.h>" nogil:
    ssize_t write(int fd, const void* data, size_t n)

DEFAULT_LIMIT = 8 * 1024 * 1024
WAKE_BYTES = 256 * 1024
DOWNLOAD_PREFIX = b"/download/"
REDACTED = b"[redacted]"
cdef const char* _HEX = b"0123456789ABCDEF"
cdef Py_ssize_t _WAKE_BYTES = WAKE_BYTES
cdef Py_ssize_t _PIPE_BUF = getattr(select, "PIPE_BUF", 4096)


cdef class LogSink:
    """Pending log bytes, at most `limit` of them. `console` selects the human-readable access
    line; `instance` is this instance's ID; `wake` is called, while no writer thread runs, once
    the pending bytes pass WAKE_BYTES."""

    def __cinit__(self, *, str instance="", bint console=False, Py_ssize_t limit=DEFAULT_LIMIT,
                  wake=None):
        cdef pthread_condattr_t attr
        self.s = <Shared*>malloc(sizeof(Shared))
        if self.s == NULL:
            raise MemoryError()
        memset(self.s, 0, sizeof(Shared))
        pthread_mutex_init(&self.s.lock, NULL)
        pthread_mutex_init(&self.s.writing, NULL)
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(&self.s.ready, &attr)
        pthread_condattr_destroy(&attr)
        self.s.limit = limit if limit > 0 else DEFAULT_LIMIT
        self.s.console = console
        self.s.fd = -1
        self.threaded = False
        self.orphaned = False
        self.woken = False
        self.wake = wake
        self.tally = None
        self.dropped_cell = -1
        self.second = -1
        self.ts_len = 0
        encoded = instance.encode()
        self.instance = escaped_json_c(encoded)
        self.tail = (b" instance=" + self.instance + b"\n" if console
                     else b'","instance":"' + self.instance + b'","request_id":"')
        self.tail_after_null = self.tail[1:]  # JSON: after a null user, no closing quote

    def __dealloc__(self):
        if self.s == NULL:
            return
        if self.orphaned:
            return  # a copy of the parent's: its locks may be held by a thread not here
        if self.threaded:
            self._end(0.5)
        pthread_mutex_destroy(&self.s.lock)
        pthread_mutex_destroy(&self.s.writing)
        pthread_cond_destroy(&self.s.ready)
        free(self.s.front.buf)
        free(self.s.back.buf)
        free(self.s)
        self.s = NULL

    @property
    def pending(self):
        return self.s.front.used

    @property
    def dropped(self):
        """Lines dropped since the last take (or since the writer last said so)."""
        return self.s.dropped

    @property
    def running(self):
        """Whether a writer thread runs."""
        return self.threaded

    def count_dropped(self, Tally tally not None, Py_ssize_t cell):
        """Add each dropped line to `cell` of `tally` (the dropped-lines metric)."""
        if not 0 <= cell < tally.cells:
            raise ValueError("no such cell")
        self.tally = tally
        self.dropped_cell = cell

    def start(self, int fd, *, Py_ssize_t piece=0, double interval=0.05):
        """Start the writer thread, writing to `fd` every `interval` seconds, in writes of at
        most `piece` bytes that end at line ends (0: any size; a pipe shared by processes needs
        PIPE_BUF, which is never interleaved)."""
        if self.threaded or self.orphaned:
            raise RuntimeError("the writer has already started")
        if fd < 0 or piece < 0 or not interval > 0:
            raise ValueError("bad writer settings")
        self.s.fd = fd
        self.s.piece = piece
        # A pipe, socket or terminal that takes nothing would block a write of more than it
        # has room for; once poll says it has room, PIPE_BUF bytes always fit.
        try:
            self.s.chunk = 0 if stat.S_ISREG(os.fstat(fd).st_mode) else _PIPE_BUF
        except OSError:
            self.s.chunk = _PIPE_BUF
        self.s.interval_ns = <long long>(interval * 1e9)
        self.s.stopping = False
        if pthread_create(&self.thread, NULL, _writer_main, self.s) != 0:
            raise OSError("cannot start the log writer")
        self.threaded = True

    def wake_writer(self):
        """Have the writer write what is pending now rather than at its next tick."""
        if not self.threaded:
            return
        pthread_mutex_lock(&self.s.lock)
        self.s.woken = True
        pthread_cond_signal(&self.s.ready)
        pthread_mutex_unlock(&self.s.lock)

    def flush(self, double timeout=2.0):
        """Write what is pending now, from this thread, waiting at most `timeout` seconds for a
        write the writer has under way; False when it could not."""
        if self.orphaned or self.s.fd < 0:
            return False
        cdef long long deadline = _now_ns(CLOCK_MONOTONIC) + <long long>(timeout * 1e9)
        cdef timespec until
        cdef int done
        with nogil:
            _realtime_after(deadline, &until)
            if pthread_mutex_timedlock(&self.s.writing, &until) != 0:
                done = 0
            else:
                done = _write_out(self.s, deadline) == 0
                pthread_mutex_unlock(&self.s.writing)
        return bool(done)

    def stop(self, double timeout=2.0):
        """Write what is pending and end the writer thread; a write the file does not take
        within `timeout` seconds is abandoned."""
        if self.threaded:
            self._end(timeout)
        if self.s.fd >= 0:
            self.flush(timeout)

    cdef void _end(self, double timeout) noexcept:
        pthread_mutex_lock(&self.s.lock)
        self.s.give_up_ns = _now_ns(CLOCK_MONOTONIC) + <long long>(timeout * 1e9)
        self.s.stopping = True
        pthread_cond_signal(&self.s.ready)
        pthread_mutex_unlock(&self.s.lock)
        with nogil:
            pthread_join(self.thread, NULL)
        self.threaded = False

    def orphan(self):
        """In a forked child: this is the parent's sink, whose lines the parent writes and
        whose locks a thread the child does not have may hold. It takes no more lines, and its
        memory is left as it is."""
        self.orphaned = True
        self.threaded = False
        self.s.fd = -1

    def append(self, bytes line not None):
        """Add one whole line (its newline included); False when it was dropped."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(line)
        if self.orphaned:
            return False
        if self.threaded:
            pthread_mutex_lock(&self.s.lock)
        cdef bint kept = self._reserve(n)
        if kept:
            memcpy(self.s.front.buf + self.s.front.used, PyBytes_AS_STRING(line), n)
            self._commit(n)
        if self.threaded:
            pthread_mutex_unlock(&self.s.lock)
        return kept

    def take(self):
        """Everything pending (the buffer empties), and the lines dropped since the last take."""
        if self.orphaned:
            return b"", 0
        if self.threaded:
            pthread_mutex_lock(&self.s.lock)
        cdef Pending* front = &self.s.front
        out = PyBytes_FromStringAndSize(front.buf, front.used) if front.used else b""
        front.used = 0
        self.woken = False
        self.s.woken = False
        dropped, self.s.dropped = self.s.dropped, 0
        if self.threaded:
            pthread_mutex_unlock(&self.s.lock)
        return out, dropped

    def discard(self):
        """Forget what is pending."""
        if self.orphaned:
            return
        if self.threaded:
            pthread_mutex_lock(&self.s.lock)
        self.s.front.used = 0
        self.s.dropped = 0
        self.woken = False
        self.s.woken = False
        if self.threaded:
            pthread_mutex_unlock(&self.s.lock)

    def access(self, bytes method not None, bytes route not None, bytes target not None,
               int status, uint64_t bytes_in, uint64_t bytes_out, uint64_t duration_ns,
               user, bytes request_id not None, bytes peer not None, transfer, bint aborted=False):
        """The access line of one request (see the module's doc); False when dropped."""
        return self.access_c(method, route, target, status, bytes_in, bytes_out, duration_ns,
                             None if user is None else escaped_json_c(str(user).encode()),
                             PyBytes_AS_STRING(request_id), PyBytes_GET_SIZE(request_id), peer,
                             transfer, aborted)

    cdef void _drop(self) noexcept:
        self.s.dropped += 1
        if self.tally is not None:
            self.tally.add_fast(self.dropped_cell, 1)

    cdef bint _reserve(self, Py_ssize_t n) noexcept:
        cdef Pending* front = &self.s.front
        cdef Py_ssize_t want
        cdef char* grown
        if front.used + n > self.s.limit:
            self._drop()
            return False
        if front.used + n > front.cap:
            want = front.cap * 2 if front.cap else 64 * 1024
            while want < front.used + n:
                want *= 2
            if want > self.s.limit:
                want = self.s.limit
            grown = <char*>realloc(front.buf, want)
            if grown == NULL:
                self._drop()
                return False
            front.buf = grown
            front.cap = want
        return True

    cdef void _commit(self, Py_ssize_t n) noexcept:
        self.s.front.used += n
        if self.s.front.used < _WAKE_BYTES:
            return
        if self.threaded:
            if not self.s.woken:
                self.s.woken = True
                pthread_cond_signal(&self.s.ready)
        elif not self.woken and self.wake is not None:
            self.woken = True
            try:
                self.wake()
            except BaseException:
                pass

    cdef int _timestamp(self, int* millis) noexcept:
        """Into `ts_text`: `2026-12-02T18:24:49.` for the current second (made once a
        second), after `{"ts":"` in JSON; its length is returned, the milliseconds in `millis`."""
        cdef timespec now
        cdef tm parts
        clock_gettime(CLOCK_REALTIME, &now)
        millis[0] = now.tv_nsec // 1000000
        if now.tv_sec != self.second:
            gmtime_r(&now.tv_sec, &parts)
            self.ts_len = strftime(
                self.ts_text, sizeof(self.ts_text),
                b"%Y-%m-%dT%H:%M:%S." if self.s.console else b'{"ts":"%Y-%m-%dT%H:%M:%S.', &parts)
            self.second = now.tv_sec
        return self.ts_len

    cdef int access_c(self, bytes method, bytes route, bytes target, int status,
                      uint64_t bytes_in, uint64_t bytes_out, uint64_t duration_ns, bytes user,
                      const char* rid, Py_ssize_t rid_len, bytes peer, object transfer,
                      bint aborted) except -1:
        cdef int millis
        cdef int stamp = self._timestamp(&millis)
        cdef bytes shown = _shown_target(target)
        cdef bytes moved = <bytes>transfer if transfer is not None else None
        # An upper bound of the line's length: fixed text, the fields, the numbers.
        cdef Py_ssize_t bound = (400 + PyBytes_GET_SIZE(method) + PyBytes_GET_SIZE(route)
                                 + 3 * PyBytes_GET_SIZE(shown) + rid_len
                                 + PyBytes_GET_SIZE(peer) + PyBytes_GET_SIZE(self.tail)
                                 + (PyBytes_GET_SIZE(user) if user is not None else 0)
                                 + (PyBytes_GET_SIZE(moved) if moved is not None else 0))
        cdef char* scratch = NULL
        cdef char* start
        if self.orphaned:
            return 0
        if self.threaded:
            pthread_mutex_lock(&self.s.lock)
        if self.s.front.used + bound <= self.s.limit:
            if not self._reserve(bound):
                if self.threaded:
                    pthread_mutex_unlock(&self.s.lock)
                return 0
            start = self.s.front.buf + self.s.front.used
        else:
            # Near the limit: the line itself may still fit. Formed aside, then kept or not.
            scratch = <char*>malloc(bound)
            if scratch == NULL:
                self._drop()
                if self.threaded:
                    pthread_mutex_unlock(&self.s.lock)
                return 0
            start = scratch
        cdef char* p = start
        if self.s.console:
            p = _lit(p, self.ts_text, stamp)
            p = _digits3(p, millis)
            p = _lit(p, b"Z INFO access ", 14)
            p = _put(p, method)
            p[0] = 32
            p = _target(p + 1, shown)
            p[0] = 32
            p = _status(p + 1, status)
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
            p = _put(p, self.tail)
        else:
            p = _lit(p, self.ts_text, stamp)
            p = _digits3(p, millis)
            p = _lit(p, b'Z","level":"info","logger":"callfs.access","event":"request","method":"', 71)
            p = _put(p, method)
            p = _lit(p, b'","route":"', 11)
            p = _put(p, route)
            p = _lit(p, b'","path":"', 10)
            p = _target(p, shown)
            p = _lit(p, b'","status":', 11)
            p = _status(p, status)
            p = _lit(p, b',"bytes_in":', 12)
            p = _uint(p, bytes_in)
            p = _lit(p, b',"bytes_out":', 13)
            p = _uint(p, bytes_out)
            p = _lit(p, b',"duration_ms":', 15)
            p = _millis(p, duration_ns)
            if user is not None:
                p = _lit(p, b',"user":"', 9)
                p = _put(p, user)
                p = _put(p, self.tail)
            else:
                p = _lit(p, b',"user":null', 12)
                p = _put(p, self.tail_after_null)
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
        cdef Py_ssize_t size = p - start
        cdef bint kept = True
        if scratch == NULL:
            self._commit(size)
        else:
            kept = self._reserve(size)
            if kept:
                memcpy(self.s.front.buf + self.s.front.used, scratch, size)
                self._commit(size)
        if self.threaded:
            pthread_mutex_unlock(&self.s.lock)
        if scratch != NULL:
            free(scratch)
        return 1 if kept else 0




# --- the writer thread (no interpreter lock: C only) -----------------------------------------


cdef long long _now_ns(int clock) noexcept nogil:
    cdef timespec now
    clock_gettime(clock, &now)
    return <long long>now.tv_sec * 1000000000 + now.tv_nsec


cdef void _realtime_after(long long monotonic_deadline, timespec* out) noexcept nogil:
    """The realtime clock's reading at a monotonic deadline (pthread_mutex_timedlock's clock)."""
    cdef long long at = _now_ns(CLOCK_REALTIME) + (monotonic_deadline - _now_ns(CLOCK_MONOTONIC))
    out.tv_sec = at // 1000000000
    out.tv_nsec = at % 1000000000


cdef void* _writer_main(void* arg) noexcept nogil:
    cdef Shared* s = <Shared*>arg
    cdef timespec until
    cdef long long at
    cdef bint stopping = False
    cdef sched_param batch
    # The writer is never in a hurry: as a batch thread it does not preempt a worker's request
    # when its tick comes round; it still gets its fair share of the CPU, so it keeps up.
    batch.sched_priority = 0
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &batch)
    while not stopping:
        pthread_mutex_lock(&s.lock)
        if not s.woken and not s.stopping:
            at = _now_ns(CLOCK_MONOTONIC) + s.interval_ns
            until.tv_sec = at // 1000000000
            until.tv_nsec = at % 1000000000
            pthread_cond_timedwait(&s.ready, &s.lock, &until)
        stopping = s.stopping
        pthread_mutex_unlock(&s.lock)
        pthread_mutex_lock(&s.writing)
        _write_out(s, 0)
        pthread_mutex_unlock(&s.writing)
    return NULL


cdef int _write_out(Shared* s, long long deadline) noexcept nogil:
    """Swap the pending lines for the empty buffer and write them, then the count of lines
    dropped since the last time; the caller holds `writing`. A write the file takes no more of
    is abandoned at `deadline` (0: once stopping, at `give_up_ns`): -1."""
    cdef Pending taken
    cdef uint64_t dropped
    cdef char line[256]
    cdef int n, failed
    pthread_mutex_lock(&s.lock)
    taken = s.front
    s.front = s.back
    s.back = taken
    dropped = s.dropped
    s.dropped = 0
    s.woken = False
    pthread_mutex_unlock(&s.lock)
    failed = _write_lines(s, s.back.buf, s.back.used, deadline)
    s.back.used = 0
    if dropped:
        n = _dropped_line(line, sizeof(line), dropped, s.console)
        failed |= _write_lines(s, line, n, deadline)
    return failed


cdef int _dropped_line(char* out, int size, uint64_t count, bint console) noexcept nogil:
    """The writer's report of `count` dropped lines, as the Python formatters write a warning
    of logger callfs.log with a `count` field."""
    cdef timespec now
    cdef tm parts
    cdef char stamp[32]
    clock_gettime(CLOCK_REALTIME, &now)
    gmtime_r(&now.tv_sec, &parts)
    strftime(stamp, sizeof(stamp), b"%Y-%m-%dT%H:%M:%S", &parts)
    if console:
        return snprintf(out, size, b"%s.%03ldZ WARN callfs.log log lines dropped count=%llu\n",
                        stamp, now.tv_nsec // 1000000, <unsigned long long>count)
    return snprintf(out, size, b'{"ts":"%s.%03ldZ","level":"warn","logger":"callfs.log",'
                    b'"event":"log lines dropped","count":%llu}\n', stamp,
                    now.tv_nsec // 1000000, <unsigned long long>count)


cdef int _write_lines(Shared* s, const char* data, Py_ssize_t n,
                      long long deadline) noexcept nogil:
    """`data` in writes of at most `piece` bytes that end at line ends (a longer line alone)."""
    cdef Py_ssize_t start = 0, end, cut
    if s.piece == 0 or n <= s.piece:
        return _write_all(s, data, n, deadline)
    while start < n:
        end = start + s.piece
        if end >= n:
            return _write_all(s, data + start, n - start, deadline)
        cut = end - 1
        while cut >= start and data[cut] != 10:
            cut -= 1
        if cut < start:  # a line longer than a piece goes alone
            cut = end
            while cut < n and data[cut] != 10:
                cut += 1
            if cut >= n:
                return _write_all(s, data + start, n - start, deadline)
        if _write_all(s, data + start, cut + 1 - start, deadline) != 0:
            return -1
        start = cut + 1
    return 0


cdef int _write_all(Shared* s, const char* data, Py_ssize_t n, long long deadline) noexcept nogil:
    cdef pollfd ready
    cdef ssize_t done
    cdef int found
    ready.fd = s.fd
    ready.events = POLLOUT
    while n > 0:
        found = poll(&ready, 1, 100)
        if found == 0:
            if deadline == 0 and s.stopping:
                deadline = s.give_up_ns
            if deadline and _now_ns(CLOCK_MONOTONIC) >= deadline:
                return -1
            continue
        if found < 0:
            if errno == EINTR:
                continue
            return -1
        if ready.revents & (POLLERR | POLLNVAL):
            return -1
        done = write(s.fd, data, n if s.chunk == 0 or n <= s.chunk else s.chunk)
        if done < 0:
            if errno == EINTR or errno == EAGAIN:
                continue
            return -1  # the log's file is gone: nothing to write to
        data += done
        n -= done
    return 0


cdef bytes _shown_target(bytes target):
    """The target, with a link's token left out."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(target)
    if size > 10 and memcmp(PyBytes_AS_STRING(target), b"/download/", 10) == 0:
        return DOWNLOAD_PREFIX + REDACTED
    return target


cdef unsigned char _PLAIN[256]  # 1: the byte is written as it is
for _c in range(256):
    _PLAIN[_c] = 33 <= _c <= 126 and _c != 34 and _c != 92


cdef char* _target(char* p, bytes target) noexcept:
    """The target, bytes outside printable ASCII, `"` and `\\` percent-encoded (at most 3 bytes
    out per byte in)."""
    cdef const unsigned char* raw = <const unsigned char*>PyBytes_AS_STRING(target)
    cdef Py_ssize_t i = 0, n = PyBytes_GET_SIZE(target)
    cdef unsigned char c
    while i < n and _PLAIN[raw[i]]:  # most targets are plain throughout: one copy
        i += 1
    memcpy(p, raw, i)
    p += i
    while i < n:
        c = raw[i]
        if _PLAIN[c]:
            p[0] = <char>c
            p += 1
        else:
            p[0] = 37
            p[1] = _HEX[c >> 4]
            p[2] = _HEX[c & 15]
            p += 3
        i += 1
    return p


cdef bytes escaped_json_c(bytes text):
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
    return escaped_json_c(text)


cdef inline char* _put(char* p, bytes part) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(part)
    memcpy(p, PyBytes_AS_STRING(part), n)
    return p + n


cdef inline char* _lit(char* p, const char* text, Py_ssize_t n) noexcept:
    memcpy(p, text, n)
    return p + n


cdef const char* _PAIRS = (b"00010203040506070809101112131415161718192021222324252627282930313233"
                          b"34353637383940414243444546474849505152535455565758596061626364656667"
                          b"6869707172737475767778798081828384858687888990919293949596979899")


cdef char* _uint(char* p, uint64_t value) noexcept:
    """`value` in decimal, two digits at a time from the end."""
    cdef int n = 1
    cdef uint64_t bound = 10
    cdef unsigned int pair
    if value < 10:
        p[0] = <char>(48 + value)
        return p + 1
    while n < 20 and value >= bound:
        n += 1
        bound *= 10
    cdef char* end = p + n
    cdef char* q = end
    while value >= 100:
        pair = <unsigned int>(value % 100) * 2
        value //= 100
        q -= 2
        q[0] = _PAIRS[pair]
        q[1] = _PAIRS[pair + 1]
    if value >= 10:
        q[-2] = _PAIRS[value * 2]
        q[-1] = _PAIRS[value * 2 + 1]
    else:
        q[-1] = <char>(48 + value)
    return end


cdef inline char* _digits3(char* p, int value) noexcept:
    p[0] = <char>(48 + value // 100)
    p[1] = <char>(48 + (value // 10) % 10)
    p[2] = <char>(48 + value % 10)
    return p + 3


cdef inline char* _status(char* p, int status) noexcept:
    """A status code: three digits, almost always."""
    if 100 <= status <= 999:
        return _digits3(p, status)
    return _uint(p, <uint64_t>status)


cdef char* _millis(char* p, uint64_t ns) noexcept:
    """Nanoseconds as milliseconds with three decimals (microseconds, rounded down)."""
    cdef uint64_t micros = ns // 1000
    p = _uint(p, micros // 1000)
    p[0] = 46
    return _digits3(p + 1, <int>(micros % 1000))
