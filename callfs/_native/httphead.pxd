# cython: language_level=3
# The request head and the hot path in C; see httphead.pyx.
from callfs._native.logsink cimport LogSink
from callfs._native.readview cimport ReadView
from callfs._native.tally cimport Tally


cdef class HotFile:
    cdef readonly bytes get_head   # header lines of GET, from Content-Type to Content-Length
    cdef readonly bytes head_head  # the same for HEAD
    cdef readonly object body      # the content (bytes) when small enough to keep, or None
    cdef readonly Py_ssize_t read_cell  # the cell a download of it counts in, or -1


cdef class HotPath:
    cdef dict keys          # Authorization values proven valid -> principal (the authenticator's)
    cdef object identify    # the authenticator's lookup for a value not seen yet
    cdef ReadView view      # the engine's: the prepared answer for a path, or None
    cdef bytes security, hsts
    cdef bytes pending  # the body of the last answer, when it goes out beside its head
    cdef public Py_ssize_t answered  # responses sent by the hot path
    cdef Tally tally        # the instance's counts (callfs/observability/metrics.py), or None
    cdef Py_ssize_t count_get, count_head, time_get, time_head, sent, answered_cell
    cdef LogSink log        # the access log, or None when it is off
    cdef object last_principal
    cdef bytes last_user    # last_principal's user, escaped for the access line
    cdef str last_name      # ... and as it is (principals of one user may be several objects)
    cdef bytes _answer(self, bytes method, bytes url, dict headers, bint tls,
                       long long started_ns, bytes peer)
    cdef void _account(self, bint head, Py_ssize_t sent, object identity, bytes url,
                       const char* rid, Py_ssize_t rid_len, long long started_ns,
                       bytes peer) noexcept


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
    cdef public long long _started_ns  # monotonic_ns() when the message's first byte came
    cdef public bytes _peer_text       # the peer as the access log writes it
