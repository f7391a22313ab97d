# cython: language_level=3
# Zero-copy socket/file transfers; see stream.pyx.

cpdef long long send_file(int sock, int fd, long long offset, long long count) except -2

cdef class _Pipe:
    cdef int pipe_r, pipe_w
    cdef size_t capacity
    cdef void _close(self) noexcept

cdef class SpliceSink(_Pipe):
    cdef readonly long long moved
    cdef bint broken
    cdef int _flush(self, int fd, size_t pending) except -1
    cpdef long long step(self, int sock, int fd, long long remaining) except -2

cdef class SpliceRelay(_Pipe):
    cdef readonly long long moved
    cdef readonly long long pending
    cdef long long _deliver(self, int dst) except -2
    cpdef long long step(self, int src, int dst, long long remaining) except -2
