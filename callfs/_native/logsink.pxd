# cython: language_level=3
# The log's bounded buffer and the access line in C; see logsink.pyx.
cimport cython
from libc.stdint cimport uint64_t


@cython.final
cdef class LogSink:
    cdef char* buf
    cdef Py_ssize_t used, cap, limit
    cdef bint console, woken
    cdef object wake
    cdef readonly uint64_t dropped  # lines dropped since the last take
    cdef long second
    cdef bytes ts_prefix, instance
    cdef bint _reserve(self, Py_ssize_t n) noexcept
    cdef void _commit(self, Py_ssize_t n) noexcept
    cdef bytes _timestamp(self, int* millis)
    # `user` already escaped for JSON (escaped_json), or None; the request id `rid_len` bytes.
    cdef int access_c(self, bytes method, bytes route, bytes target, int status,
                      uint64_t bytes_in, uint64_t bytes_out, uint64_t duration_ns, bytes user,
                      const char* rid, Py_ssize_t rid_len, bytes peer, object transfer,
                      bint aborted) except -1
