# cython: language_level=3, boundscheck=False, wraparound=False
"""The request head in C: httptools' callbacks for each message's head, and the hot path that
answers a plain GET/HEAD of a cached file from inside the last of them.

`HeadState` is the base class of the HTTP connection (callfs/http/protocol.py). httptools calls
its methods for every message: `on_message_begin`, `on_url`, `on_header` per header line, then
`on_headers_complete`, where a plain GET/HEAD that `HotPath` can answer is written at once and
everything else goes to the connection's `head_complete` (the general route). Limits raise
`Reject(status)`: 414 for the URL, 431 for the header data.

`HotPath.answer` is callfs/http/hotpath.py's question in C: the whole response for a plain
GET/HEAD of a file, or None to take the general route. It authenticates the key, normalises the
path and asks the engine's read view (callfs/_native/readview.pyx) its one question — this
principal, this path: the `HotFile` prepared for the file's current version, or None. It reads
nothing of the metadata cache, the generation table or the authenticator's private state.

The plain-Python specification of both is tests/unit/httphead_oracle.py.
"""
import email.utils
import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memchr, memcmp, memcpy
from libc.time cimport time, time_t

from callfs._native.logsink cimport LogSink, escaped_json_c
from callfs._native.pathnorm cimport normalize_url_path
from callfs._native.perm cimport Principal
from callfs._native.readview cimport ReadView
from callfs._native.tally cimport Tally

cdef extern from "time.h" nogil:
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clock, timespec* ts)
    int CLOCK_MONOTONIC

MAX_URL = 64 * 1024      # bytes of the request target: 414 beyond
MAX_HEAD = 1024 * 1024   # bytes of the head (header lines included): 431 beyond
MAX_FIELDS = 1000        # header lines: 431 beyond
cdef Py_ssize_t _MAX_URL = MAX_URL
cdef Py_ssize_t _MAX_HEAD = MAX_HEAD
cdef Py_ssize_t _MAX_FIELDS = MAX_FIELDS

cdef tuple _VERSIONS = ("1.1", "1.0")  # the HTTP versions served; others are answered 505

# The bytes a Host header may hold (RFC 9110 §7.2: uri-host [":" port], a reg-name, an IPv4
# address or a bracketed IP literal): unreserved, sub-delims, "%", ":" and the brackets.
# No space, so two Host lines (joined with ", ") never pass.
cdef bint _HOST_BYTE[256]


cdef int _allow_bytes(bint* table, bytes allowed) except -1:
    cdef const unsigned char* raw = <const unsigned char*>PyBytes_AS_STRING(allowed)
    cdef Py_ssize_t i
    for i in range(PyBytes_GET_SIZE(allowed)):
        table[raw[i]] = True
    return 0


_allow_bytes(_HOST_BYTE,
             b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=%:[]")


cpdef bint request_line_ok(bytes data):
    """False when `data`, which begins a message (after any empty lines), holds a whole request
    line that is not `method SP target SP version`: one space each, as RFC 9112 §3 has it (the
    parser lets runs of spaces pass). True when it does, or when the line is not whole yet."""
    cdef const char* raw = PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data), i = 0, spaces = 0
    while i < size and (raw[i] == 13 or raw[i] == 10):
        i += 1
    while i < size and raw[i] != 10:
        if raw[i] == 32:
            spaces += 1
        i += 1
    return i == size or spaces == 2


cpdef bint valid_host(bytes value):
    """Whether `value` may be a request's Host header (empty is valid: no authority)."""
    cdef const unsigned char* raw = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t i
    for i in range(PyBytes_GET_SIZE(value)):
        if not _HOST_BYTE[raw[i]]:
            return False
    return True


def origin_form(bytes url not None):
    """The origin form of an absolute-form request target (RFC 9112 §3.2.2: a server MUST
    accept it): `http://host:port/p?q` is served as `/p?q`. Other targets come back unchanged
    (an asterisk or authority form, or a relative path: the general route refuses them)."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(url), start, i
    cdef const char* raw = PyBytes_AS_STRING(url)
    lowered = url[:8].lower()
    if lowered.startswith(b"http://"):
        start = 7
    elif lowered.startswith(b"https://"):
        start = 8
    else:
        return url
    for i in range(start, size):
        if raw[i] == 47:  # '/'
            return url[i:]
        if raw[i] == 63:  # '?': an empty path is "/"
            return b"/" + url[i:]
    return b"/"


# Request headers that send a GET/HEAD down the general route (the hot path answers only
# plain reads).
NOT_HOT = frozenset((b"if-match", b"if-none-match", b"if-modified-since",
                     b"if-unmodified-since", b"if-range", b"range",
                     b"content-length", b"transfer-encoding", b"expect", b"upgrade"))
cdef frozenset _NOT_HOT = NOT_HOT

# A body larger than this is not copied behind the headers: both go out in one writev.
cdef Py_ssize_t _SPLIT = 16 * 1024
cdef bytes _STATUS_200 = b"HTTP/1.1 200 OK\r\n"
cdef bytes _REQUEST_ID = b"X-Request-ID: "
cdef const char* _HEX = b"0123456789abcdef"
cdef bytes _FILES_ROUTE = b"/v1/files/*"
cdef bytes _BUFFER = b"copy"
cdef bytes _GET = b"GET"
cdef bytes _HEAD = b"HEAD"
MAX_CLIENT_ID = 128

# The bytes of a client's X-Request-ID that are kept (API.md §3): A-Z a-z 0-9 - _ . :
cdef bint _ID_BYTE[256]


_allow_bytes(_ID_BYTE, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:")


cpdef bint client_request_id(value):
    """Whether a client's X-Request-ID is kept: 1-128 bytes of A-Z a-z 0-9 - _ . : ."""
    if value is None:
        return False
    cdef bytes raw = <bytes?>value
    cdef const unsigned char* data = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(raw)
    if n < 1 or n > MAX_CLIENT_ID:
        return False
    for i in range(n):
        if not _ID_BYTE[data[i]]:
            return False
    return True


cpdef long long monotonic_ns() noexcept:
    """CLOCK_MONOTONIC in nanoseconds: when a request's head began, and durations."""
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return <long long>now.tv_sec * 1000000000 + now.tv_nsec


class Reject(Exception):
    """A request head refused before any handler runs: answered with `status`, then close."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


# -- request IDs: 8 random bytes each (xoshiro256**, seeded from the OS, again after a fork) ---

cdef uint64_t _rng[4]


def _seed():
    cdef bytes seed = os.urandom(32)
    memcpy(<void*>_rng, PyBytes_AS_STRING(seed), 32)
    if _rng[0] == 0 and _rng[1] == 0 and _rng[2] == 0 and _rng[3] == 0:
        _rng[0] = 1


_seed()
os.register_at_fork(after_in_child=_seed)


cdef inline uint64_t _rotl(uint64_t x, int k) noexcept:
    return (x << k) | (x >> (64 - k))


cdef inline uint64_t _next_random() noexcept:
    cdef uint64_t result = _rotl(_rng[1] * 5, 7) * 9
    cdef uint64_t t = _rng[1] << 17
    _rng[2] ^= _rng[0]
    _rng[3] ^= _rng[1]
    _rng[1] ^= _rng[2]
    _rng[0] ^= _rng[3]
    _rng[2] ^= t
    _rng[3] = _rotl(_rng[3], 45)
    return result


def random_id():
    """A fresh request ID: 16 lowercase hex digits (the server's one generator)."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 16)
    _hex16(PyBytes_AS_STRING(out), _next_random())
    return out


cdef inline void _hex16(char* out, uint64_t value) noexcept:
    cdef int i
    for i in range(15, -1, -1):
        out[i] = _HEX[value & 15]
        value >>= 4


# -- the Date header, formatted once a second: the server's one Date cache ---------------------

cdef time_t _date_second = 0
cdef bytes _date_line = b""


cdef inline bytes _date():
    global _date_second, _date_line
    cdef time_t now = time(NULL)
    if now != _date_second:
        _date_line = b"Date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        _date_second = now
    return _date_line


def date_line():
    """`Date: ...\r\n` for the current second."""
    return _date()


# -- the hot path -------------------------------------------------------------------------------

cdef class HotFile:
    """What the hot path keeps for one content version of a file."""

    def __init__(self, bytes get_head not None, bytes head_head not None, body,
                 Py_ssize_t read_cell=-1):
        self.get_head = get_head
        self.head_head = head_head
        self.body = body
        self.read_cell = read_cell


cdef class HotPath:
    """Answers plain GET/HEAD of cached files; see callfs/http/hotpath.py. It asks the
    engine's read view one question per request; the answer's bytes are its own."""

    def __init__(self, *, dict keys not None, identify, ReadView view not None,
                 bytes security not None, bytes hsts not None, Tally tally=None, cells=(),
                 LogSink log=None):
        self.keys = keys
        self.identify = identify
        self.view = view
        self.security = security
        self.hsts = hsts
        self.answered = 0
        # Counting (callfs/observability/metrics.py's hot_cells) and the access log (None: off).
        self.tally = tally
        if tally is not None:
            (self.count_get, self.count_head, self.time_get, self.time_head, self.sent,
             self.answered_cell) = cells
        self.log = log
        self.last_principal = None
        self.last_user = None
        self.last_name = None

    def answer(self, bytes method not None, bytes url not None, dict headers not None,
               bint tls, long long started_ns=0, bytes peer=b"-"):
        """The whole response for a plain GET/HEAD of a cached file, or None."""
        head = self._answer(method, url, headers, tls, started_ns, peer)
        if head is None or self.pending is None:
            return head
        body, self.pending = self.pending, None
        return head + body

    cdef bytes _answer(self, bytes method, bytes url, dict headers, bint tls,
                       long long started_ns, bytes peer):
        """The response, or its head alone with its body left in `pending`; or None. Counted
        and logged as the general route would (callfs/http/protocol.py's accounting)."""
        cdef Py_ssize_t size = PyBytes_GET_SIZE(url)
        cdef const char* raw = PyBytes_AS_STRING(url)
        if size < 10 or memcmp(raw, b"/v1/files/", 10) != 0:
            return None
        if memchr(raw, 63, size) != NULL or memchr(raw, 35, size) != NULL:
            return None  # '?': a query goes the general route; '#' is refused there
        if size >= 13 and memcmp(raw, b"/v1/files/ws/", 13) == 0:
            return None  # GET there is the WebSocket endpoint (API.md §12)
        authorization = headers.get(b"authorization")
        identity = self.keys.get(authorization)
        if identity is None:
            identity = self.identify(authorization)
            if identity is None:
                return None
        try:
            path, trailing = normalize_url_path(url[9:])
        except ValueError:  # PathError, MalformedURL: the general route words the 400
            return None
        if trailing:
            return None
        ready = self.view.ready(identity, path)
        if ready is None:
            return None
        cdef HotFile hot = <HotFile?>ready
        cdef bint head = method == b"HEAD"
        cdef bytes block
        cdef bytes body = None
        if head:
            block = hot.head_head
        elif hot.body is None:
            return None  # large: the general route sends it with sendfile
        else:
            block = hot.get_head
            body = <bytes?>hot.body
        self.answered += 1
        cdef char fresh[16]
        cdef const char* rid = fresh
        cdef Py_ssize_t rid_len = 16
        given = headers.get(b"x-request-id")
        if given is not None and client_request_id(given):
            rid = PyBytes_AS_STRING(<bytes>given)
            rid_len = PyBytes_GET_SIZE(<bytes>given)
        else:
            _hex16(fresh, _next_random())
        cdef Py_ssize_t sent = 0 if body is None else PyBytes_GET_SIZE(body)
        if self.tally is not None or self.log is not None:
            if not head and hot.read_cell >= 0 and self.tally is not None:
                self.tally.add_fast(hot.read_cell, 1)  # a download (file_operations "read")
            self._account(head, sent, identity, url, rid, rid_len, started_ns, peer)
        if body is not None and PyBytes_GET_SIZE(body) > _SPLIT:
            self.pending = body
            body = None
        return _join(_date(), block, self.security, self.hsts if tls else None, body, rid,
                     rid_len)

    cdef void _account(self, bint head, Py_ssize_t sent, object identity, bytes url,
                       const char* rid, Py_ssize_t rid_len, long long started_ns,
                       bytes peer) noexcept:
        """The answer's counts and access line, taken just before it is written."""
        cdef long long elapsed = monotonic_ns() - started_ns if started_ns else 0
        if elapsed < 0:
            elapsed = 0
        cdef Tally tally = self.tally
        if tally is not None:
            tally.add_fast(self.count_head if head else self.count_get, 1)
            tally.observe_ns(self.time_head if head else self.time_get, <uint64_t>elapsed)
            if sent:
                tally.add_fast(self.sent, sent)
            tally.add_fast(self.answered_cell, 1)
        if self.log is None:
            return
        cdef str name
        if identity is not self.last_principal:
            try:
                name = (<Principal?>identity).user
                if self.last_user is None or name != self.last_name:
                    self.last_user = escaped_json_c(name.encode())
                    self.last_name = name
            except Exception:
                return
            self.last_principal = identity
        try:
            self.log.access_c(_HEAD if head else _GET, _FILES_ROUTE, url, 200, 0, sent,
                              <uint64_t>elapsed, self.last_user, rid, rid_len, peer,
                              _BUFFER if sent else None, False)
        except Exception:
            pass



cdef bytes _join(bytes date, bytes block, bytes security, bytes hsts, bytes body,
                 const char* rid, Py_ssize_t rid_len):
    """Status line, Date, the entry's block, security headers, the X-Request-ID, the body."""
    cdef Py_ssize_t total = (17 + PyBytes_GET_SIZE(date) + PyBytes_GET_SIZE(block)
                             + PyBytes_GET_SIZE(security) + 14 + rid_len + 4)
    if hsts is not None:
        total += PyBytes_GET_SIZE(hsts)
    if body is not None:
        total += PyBytes_GET_SIZE(body)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* p = PyBytes_AS_STRING(out)
    p = _put(p, _STATUS_200)
    p = _put(p, date)
    p = _put(p, block)
    p = _put(p, security)
    if hsts is not None:
        p = _put(p, hsts)
    p = _put(p, _REQUEST_ID)
    memcpy(p, rid, rid_len)
    p += rid_len
    memcpy(p, b"\r\n\r\n", 4)
    p += 4
    if body is not None:
        _put(p, body)
    return out


cdef inline char* _put(char* p, bytes part) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(part)
    memcpy(p, PyBytes_AS_STRING(part), n)
    return p + n


# -- the head of each message ------------------------------------------------------------------

cdef class HeadState:
    """Bytes in, and httptools' callbacks for a message's head, as the base of the HTTP
    connection. The connection provides `head_complete()` (a message for the general route),
    `message_complete()`, `received_outside_http(data)` (a WebSocket session's bytes, or a
    broken connection's), `feed_failed(exc, data)` and `_parse_failed(status)`; the fields
    in the .pxd are its parse state."""

    def data_received(self, bytes data not None):
        if self._outside:
            self.received_outside_http(data)
            return
        # One clock read per arrival: the head's callbacks below stamp their deadlines with it.
        self._last_read = self.loop.time()
        if self._at_start and not request_line_ok(data):
            self._parse_failed(400)
            return
        cdef bint was_in_head = self._in_head
        try:
            self.parser.feed_data(data)
        except Exception as exc:
            self.feed_failed(exc, data)
            return
        if self._in_head:
            self._head_fed = (self._head_fed + PyBytes_GET_SIZE(data) if was_in_head
                              else PyBytes_GET_SIZE(data))
            if self._head_fed > _MAX_HEAD:
                self._parse_failed(431)

    def on_message_begin(self):
        self._started_ns = monotonic_ns()
        self._at_start = False
        self._in_head = True
        self._head_start = self._last_read
        self._idle_since = 0.0
        self._url = b""
        self._headers = {}
        self._fields = 0
        self._head_size = 0
        self._plain = True

    def on_url(self, bytes url not None):
        if PyBytes_GET_SIZE(self._url):
            self._url = self._url + url
        else:
            self._url = url
        if PyBytes_GET_SIZE(self._url) > _MAX_URL:
            raise Reject(414)
        self._head_size += PyBytes_GET_SIZE(url)

    def on_header(self, bytes name not None, bytes value not None):
        self._fields += 1
        self._head_size += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4
        if self._fields > _MAX_FIELDS or self._head_size > _MAX_HEAD:
            raise Reject(431)
        name = name.lower()
        if name in _NOT_HOT:
            self._plain = False
        headers = self._headers
        seen = headers.get(name)
        headers[name] = value if seen is None else seen + b", " + value

    def on_headers_complete(self):
        self._in_head = False
        cdef bytes method, data, body
        cdef HotPath hot
        if PyBytes_GET_SIZE(self._url) and PyBytes_AS_STRING(self._url)[0] != 47:  # '/'
            self._url = origin_form(self._url)
        if self._plain and self.hot is not None and not self.pipeline:
            parser = self.parser
            method = parser.get_method()
            host = self._headers.get(b"host")
            # Keep-alive without a Connection header is HTTP/1.1 (llhttp's rule); with one,
            # the version is asked (HTTP/2.0 and 0.9 parse, and are refused by the general route,
            # as is a missing or invalid Host).
            if ((method == b"GET" or method == b"HEAD") and parser.should_keep_alive()
                    and host is not None and valid_host(host)
                    and (b"connection" not in self._headers
                         or parser.get_http_version() in _VERSIONS)
                    and not self.state.draining):
                hot = self.hot
                data = hot._answer(method, self._url, self._headers, self.tls,
                                   self._started_ns, self._peer_text)
                if data is not None:
                    if hot.pending is None:
                        self.transport.write(data)
                    else:
                        body, hot.pending = hot.pending, None
                        self.transport.writelines((data, body))
                    self._answered = True
                    self._idle_since = self._last_read
                    return
        self._idle_since = 0.0
        self.head_complete()

    def on_message_complete(self):
        self._at_start = True
        if self._answered:
            self._answered = False
            return
        self.message_complete()
