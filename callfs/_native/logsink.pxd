# cython: language_level=3
# The log's bounded buffer, its writer thread and the access line in C; see logsink.pyx.
cimport cython
from libc.stdint cimport uint64_t

from callfs._native.tally cimport Tally


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef unsigned long pthread_t


cdef struct Pending:
    char* buf
    Py_ssize_t used, cap


# What the loop's thread and the writer thread share. `lock` guards `front`, `dropped`,
# `woken` and `stopping`; `writing` is held by whoever writes out (the thread, or a flush),
# taken before `lock`, so lines leave in the order they came.
cdef struct Shared:
    pthread_mutex_t lock
    pthread_cond_t ready
    pthread_mutex_t writing
    Pending front  # where lines go
    Pending back  # what is being written
    Py_ssize_t limit
    uint64_t dropped  # lines dropped since the writer last said so
    bint woken, stopping, console
    int fd
    Py_ssize_t piece
    Py_ssize_t chunk  # the most one write may hand the file (0: no limit, a regular file)
    long long interval_ns
    long long give_up_ns  # once stopping: when a write that cannot go on is abandoned


@cython.final
cdef class LogSink:
    cdef Shared* s
    cdef bint threaded  # a writer thread runs: every change to `front` takes `lock`
    cdef bint orphaned  # a forked child's copy of its parent's sink: it takes no more lines
    cdef bint woken  # without a thread: `wake` was called since the last take
    cdef pthread_t thread
    cdef object wake
    cdef Tally tally  # where dropped lines are counted, if anywhere
    cdef Py_ssize_t dropped_cell
    cdef long second
    cdef char ts_text[40]  # the current second's timestamp, as `_timestamp` wrote it
    cdef int ts_len
    cdef bytes instance
    cdef bytes tail, tail_after_null  # the fixed text around the instance, made once
    cdef bint _reserve(self, Py_ssize_t n) noexcept
    cdef void _commit(self, Py_ssize_t n) noexcept
    cdef void _drop(self) noexcept
    cdef void _end(self, double timeout) noexcept
    cdef int _timestamp(self, int* millis) noexcept
    # `user` already escaped for JSON (escaped_json), or None; the request id `rid_len` bytes.
    cdef int access_c(self, bytes method, bytes route, bytes target, int status,
                      uint64_t bytes_in, uint64_t bytes_out, uint64_t duration_ns, bytes user,
                      const char* rid, Py_ssize_t rid_len, bytes peer, object transfer,
                      bint aborted) except -1


# `text` as the inside of a JSON string (escaped_json, for C callers).
cdef bytes escaped_json_c(bytes text)
