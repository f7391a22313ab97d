# cython: language_level=3
# The request head and the hot path in C; see httphead.pyx.
from callfs._native.readview cimport ReadView


cdef class HotFile:
    cdef readonly bytes get_head   # header lines of GET, from Content-Type to Content-Length
    cdef readonly bytes head_head  # the same for HEAD
    cdef readonly object body      # the content (bytes) when small enough to keep, or None


cdef class HotPath:
    cdef dict keys          # Authorization values proven valid -> principal (the authenticator's)
    cdef object identify    # the authenticator's lookup for a value not seen yet
    cdef ReadView view      # the engine's: the prepared answer for a path, or None
    cdef bytes security, hsts
    cdef bytes pending  # the body of the last answer, when it goes out beside its head
    cdef public Py_ssize_t answered  # responses sent by the hot path (exported as a metric)
    cdef bytes _answer(self, bytes method, bytes url, dict headers, bint tls)


cdef class HeadState:
    cdef public object loop, parser, transport, state, pipeline, _session
    cdef public HotPath hot
    cdef public bint tls
    cdef public bytes _url
    cdef public dict _headers
    cdef public Py_ssize_t _fields, _head_size, _head_fed
    cdef public bint _in_head, _plain, _answered
    cdef public bint _outside  # the parser is done with this connection (refused, upgraded)
    cdef public bint _at_start  # the next byte that arrives begins a message
    cdef public double _head_start, _idle_since, _last_read
