# cython: language_level=3
# Exact counts in memory shared by the processes of one instance; see tally.pyx.
cimport cython
from libc.stdint cimport uint64_t


@cython.final
cdef class Tally:
    cdef uint64_t* base
    cdef uint64_t* mine  # the row of the slot this process claimed
    cdef size_t length
    cdef readonly Py_ssize_t cells, slots, slot
    cdef Py_ssize_t nbounds
    cdef uint64_t bounds_ns[32]
    cdef int _check(self, Py_ssize_t cell) except -1

    # For native callers: no bounds check (the cell indexes come from the schema).
    cdef inline void add_fast(self, Py_ssize_t cell, long long n) noexcept:
        self.mine[cell] += <uint64_t>n

    cdef inline void observe_ns(self, Py_ssize_t first, uint64_t value) noexcept:
        cdef Py_ssize_t i = 0
        while i < self.nbounds and value > self.bounds_ns[i]:
            i += 1
        self.mine[first + i] += 1
        self.mine[first + self.nbounds + 1] += value
