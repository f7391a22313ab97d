# cython: language_level=3
# Write generations in shared memory; see generations.pyx.
from libc.stdint cimport uint64_t

cpdef uint64_t fnv1a(str text)

cdef class GenerationTable:
    cdef uint64_t* words
    cdef Py_ssize_t slots
    cdef size_t length
    cdef inline uint64_t* _slot(self, str path)
    cpdef long long stamp(self, str path)
    cpdef bint unchanged(self, str path, long long stamp)
