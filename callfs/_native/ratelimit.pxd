# cython: language_level=3
# Token buckets per client address in shared memory; see ratelimit.pyx.
cimport cython
from libc.stdint cimport uint64_t


@cython.final
cdef class RateLimiter:
    cdef char* base
    cdef size_t length
    cdef uint64_t groups
    cpdef bint allow(self, int endpoint, str address) except -1
    cpdef bint allow_at(self, int endpoint, str address, long long now_ns) except -1

cpdef long long monotonic_ns()
