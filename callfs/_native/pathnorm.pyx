# cython: language_level=3
"""Request paths to canonical paths (API.md §5.1), in one pass over the bytes.

Runs on every request, so decoding, validation and '.'/'..' resolution share one C loop that
writes the canonical path straight into a buffer; Python objects are made once, at the end.
The plain-Python specification is tests/unit/pathnorm_oracle.py.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdlib cimport free, malloc

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL
    Py_ssize_t PyUnicode_FindChar(object text, Py_UCS4 ch, Py_ssize_t start, Py_ssize_t end,
                                  int direction) except -2


class PathError(ValueError):
    """A rule of API.md §5.1 is broken: the server answers 400 INVALID_PATH."""


class MalformedURL(ValueError):
    """A percent escape is malformed: the server answers a plain 400 before authentication."""


cdef enum:
    # Inputs up to this many bytes are normalised in a stack buffer, longer ones in a heap one.
    STACK_BUFFER = 1024

# What _normalize found: PATH_OK or the reason for the 400.
cdef enum PathStatus:
    PATH_OK = 0
    PATH_MALFORMED_ESCAPE   # MalformedURL; every other reason is a PathError
    PATH_ENCODED_SEPARATOR
    PATH_BAD_UTF8
    PATH_CONTROL
    PATH_BACKSLASH
    PATH_BIDI
    PATH_CLIMBS
    PATH_LONG_SEGMENT
    PATH_TOO_LONG

cdef tuple ROOT = ("/", False)
cdef tuple ROOT_SLASH = ("/", True)


cdef inline int _hex_value(unsigned char c) noexcept nogil:
    if c >= c'0' and c <= c'9':
        return c - c'0'
    c |= 0x20  # ASCII lower case; leaves no other byte in a-f
    if c >= c'a' and c <= c'f':
        return c - c'a' + 10
    return -1


cdef bint _has_malformed_escape(const unsigned char* src, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """Whether src[i:n] holds a malformed escape: the decoding error wins over any PathError."""
    while i < n:
        if src[i] == c'%':
            if i + 2 >= n or _hex_value(src[i + 1]) < 0 or _hex_value(src[i + 2]) < 0:
                return True
            i += 3
        else:
            i += 1
    return False


cdef PathStatus _normalize(const unsigned char* src, Py_ssize_t n, bint decode,
                           unsigned char* out, Py_ssize_t* out_len) noexcept nogil:
    """One pass over src[0:n], percent-decoded when `decode`: the canonical path into out
    (which holds n + 1 bytes), its length into out_len (0 stands for the root '/')."""
    # out holds the kept segments, each written as '/' + name; `seg` is where the segment being
    # read starts (its '/'). Every literal '/' of src closes one segment and opens the next, so
    # at most n + 1 bytes are ever written: the input may be long and still resolve short.
    cdef Py_ssize_t i = 0, o = 1, seg = 0, seglen, p
    cdef unsigned char b
    cdef int hi, lo
    cdef int need = 0            # UTF-8 continuation bytes still expected
    cdef unsigned int cp = 0     # code point being assembled
    cdef unsigned int cp_min = 0  # below this the sequence is overlong
    cdef int long_segments = 0   # kept segments over MAX_SEGMENT bytes
    cdef PathStatus status = PATH_OK
    cdef bint at_end

    out[0] = c'/'
    while True:
        at_end = i == n
        if at_end or src[i] == c'/':
            # Close the segment out[seg + 1:o] (step 5); a '/' inside a UTF-8 sequence is
            # invalid UTF-8.
            if need:
                status = PATH_BAD_UTF8
                break
            seglen = o - seg - 1
            if seglen == 0 or (seglen == 1 and out[seg + 1] == c'.'):
                o = seg
            elif seglen == 2 and out[seg + 1] == c'.' and out[seg + 2] == c'.':
                if seg == 0:
                    status = PATH_CLIMBS  # never clamped to the root
                    break
                p = seg - 1
                while out[p] != c'/':
                    p -= 1
                if seg - p - 1 > MAX_SEGMENT:
                    long_segments -= 1
                o = p
            elif seglen > MAX_SEGMENT:
                long_segments += 1
            if at_end:
                break
            i += 1
            seg = o
            out[o] = c'/'
            o += 1
            continue

        b = src[i]
        i += 1
        if b == c'%' and decode:
            if i + 1 >= n:
                hi = lo = -1
            else:
                hi = _hex_value(src[i])
                lo = _hex_value(src[i + 1])
            if hi < 0 or lo < 0:
                out_len[0] = 0
                return PATH_MALFORMED_ESCAPE
            b = <unsigned char>(hi * 16 + lo)
            i += 2
            if b == c'/' or b == c'\\':
                status = PATH_ENCODED_SEPARATOR
                break

        if b < 0x80:
            if need:
                status = PATH_BAD_UTF8
                break
            if b < 0x20:
                if b != c'\t':
                    status = PATH_CONTROL
                    break
            elif b == c'\\':
                status = PATH_BACKSLASH
                break
        elif need:
            if (b & 0xC0) != 0x80:
                status = PATH_BAD_UTF8
                break
            cp = (cp << 6) | (b & 0x3F)
            need -= 1
            if need == 0:
                if cp < cp_min or (0xD800 <= cp <= 0xDFFF) or cp > 0x10FFFF:
                    status = PATH_BAD_UTF8
                    break
                if (0x202A <= cp <= 0x202E) or (0x2066 <= cp <= 0x2069):
                    status = PATH_BIDI
                    break
        elif 0xC2 <= b <= 0xDF:
            need, cp, cp_min = 1, b & 0x1F, 0x80
        elif 0xE0 <= b <= 0xEF:
            need, cp, cp_min = 2, b & 0x0F, 0x800
        elif 0xF0 <= b <= 0xF4:
            need, cp, cp_min = 3, b & 0x07, 0x10000
        else:
            status = PATH_BAD_UTF8  # stray continuation byte, C0/C1 or F5-FF
            break
        out[o] = b
        o += 1

    if status != PATH_OK:
        out_len[0] = 0
        if decode and _has_malformed_escape(src, i, n):
            return PATH_MALFORMED_ESCAPE
        return status
    out_len[0] = o
    if long_segments:
        return PATH_LONG_SEGMENT
    if o > MAX_PATH:
        return PATH_TOO_LONG
    return PATH_OK


cdef int _raise(PathStatus status) except -1:
    if status == PATH_MALFORMED_ESCAPE:
        raise MalformedURL("malformed percent escape")
    if status == PATH_ENCODED_SEPARATOR:
        raise PathError("encoded '/' or '\\' in path")
    if status == PATH_BAD_UTF8:
        raise PathError("path is not valid UTF-8")
    if status == PATH_CONTROL:
        raise PathError("control character in path")
    if status == PATH_BACKSLASH:
        raise PathError("backslash in path")
    if status == PATH_BIDI:
        raise PathError("bidirectional control character in path")
    if status == PATH_CLIMBS:
        raise PathError("path climbs above the root")
    if status == PATH_LONG_SEGMENT:
        raise PathError(f"path segment longer than {MAX_SEGMENT} bytes")
    raise PathError(f"path longer than {MAX_PATH} bytes")


cdef tuple _canonical(const unsigned char* src, Py_ssize_t n, bint decode):
    cdef unsigned char stack_buffer[STACK_BUFFER + 1]
    cdef unsigned char* out = stack_buffer
    cdef Py_ssize_t out_len = 0
    cdef PathStatus status
    cdef bint trailing = n > 0 and src[n - 1] == c'/'  # a decoded '/' can only be literal
    if n > STACK_BUFFER:
        out = <unsigned char*>malloc(n + 1)
        if out == NULL:
            raise MemoryError()
    try:
        status = _normalize(src, n, decode, out, &out_len)
        if status != PATH_OK:
            _raise(status)
        if out_len == 0:
            return ROOT_SLASH if trailing else ROOT
        return (PyUnicode_DecodeUTF8(<char*>out, out_len, NULL), trailing)
    finally:
        if out != stack_buffer:
            free(out)


cpdef tuple normalize_url_path(bytes raw):
    """(canonical, trailing_slash) of a request-target path, percent-decoded exactly once."""
    if raw is None:
        raise TypeError("raw must be bytes, not None")
    return _canonical(<const unsigned char*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), True)


cpdef tuple normalize_path(str path):
    """(canonical, trailing_slash) of a path from a JSON body: '%' is literal (API.md §5.1)."""
    cdef const char* data
    cdef Py_ssize_t n
    if path is None:
        raise TypeError("path must be str, not None")
    try:
        data = PyUnicode_AsUTF8AndSize(path, &n)
    except UnicodeEncodeError:  # lone surrogates
        raise PathError("path is not valid UTF-8") from None
    return _canonical(<const unsigned char*>data, n, False)


cdef inline int _check_canonical(str canonical) except -1:
    if canonical is None:
        raise TypeError("canonical must be str, not None")
    if len(canonical) == 0 or canonical[0] != u'/':
        raise ValueError("not a canonical path")
    return 0


cpdef tuple split_parent(str canonical):
    """'/a/b/c' -> ('/a/b', 'c'); '/a' -> ('/', 'a'); '/' -> ('/', '')."""
    _check_canonical(canonical)
    cdef Py_ssize_t n = len(canonical)
    cdef Py_ssize_t last = PyUnicode_FindChar(canonical, u'/', 0, n, -1)
    if last == 0:
        return ("/", canonical[1:])
    return (canonical[:last], canonical[last + 1:])


cpdef list ancestors(str canonical):
    """Strict ancestors, root first: '/a/b/c' -> ['/', '/a', '/a/b']; '/' -> []."""
    _check_canonical(canonical)
    cdef Py_ssize_t n = len(canonical)
    cdef Py_ssize_t i = 1
    cdef list result = []
    if n == 1:
        return result
    result.append("/")
    while True:
        i = PyUnicode_FindChar(canonical, u'/', i, n, 1)
        if i < 0:
            return result
        result.append(canonical[:i])
        i += 1
