"""The hot path: GET and HEAD of a file answered inside the parser's callback, in one write.

Most reads of a file server are plain: a known key, a canonical path, an entry the metadata
cache holds, no conditional or range header. For those, everything the general route would
compute is already known — the header block is prebuilt per entry (per content version), and
a small file's bytes are cached beside it — so the response is a join of a few bytes objects,
written at once, with no task, no Request object and no coroutine. Anything else (a cache
miss, a query, a trailing slash, a directory, a conditional, a large file) returns None and
takes the general route, which answers identically and fills the cache for next time.

The answer is byte-for-byte the general route's (tests/integration/test_hotpath.py compares
them), except for Date and the fresh X-Request-ID.
"""
from random import getrandbits

from callfs._native.pathnorm import normalize_url_path
from callfs.api.shapes import cache_headers, metadata_headers
from callfs.http.response import OCTETS, date_header

_FILES_SLASH = b"/v1/files/"
_WS = b"/v1/files/ws/"  # GET there is the WebSocket endpoint (API.md §12)
_STATUS_200 = b"HTTP/1.1 200 OK\r\n"
_REQUEST_ID = b"X-Request-ID: "

# The largest file whose bytes the hot path keeps with its cache entry (the metadata cache
# bounds the total).
SMALL_FILE = 256 * 1024


class HotFile:
    """What the hot path keeps for one content version of a file."""

    __slots__ = ("get_head", "head_head", "body")

    def __init__(self, get_head: bytes, head_head: bytes, body: bytes | None):
        self.get_head = get_head    # header lines of GET, from Content-Type to Content-Length
        self.head_head = head_head  # the same for HEAD
        self.body = body            # the content, when small enough to keep


class HotPath:
    def __init__(self, *, auth, engine, security: bytes, hsts: bytes):
        self.auth = auth
        self.engine = engine
        self.security = security
        self.hsts = hsts
        self.answered = 0  # responses sent by the hot path (exported as a metric)

    def answer(self, method: bytes, url: bytes, headers: dict, tls: bool) -> bytes | None:
        """The whole response for a plain GET/HEAD of a cached file, or None."""
        if not url.startswith(_FILES_SLASH) or b"?" in url or url.startswith(_WS):
            return None
        identity = self.auth.identify_known(headers.get(b"authorization"))
        if identity is None:
            return None
        try:
            path, trailing = normalize_url_path(url[9:])
        except ValueError:  # PathError, MalformedURL: the general route words the 400
            return None
        if trailing:
            return None
        entry = self.engine.cached_file(identity, path)
        if entry is None:
            return None
        hot = entry.extra
        if hot is None:
            hot = self._prepare(entry)
        if method == b"HEAD":
            parts = [_STATUS_200, date_header(), hot.head_head]
        elif hot.body is not None:
            parts = [_STATUS_200, date_header(), hot.get_head]
        else:
            return None
        parts.append(self.security)
        if tls:
            parts.append(self.hsts)
        parts.append(_REQUEST_ID)
        parts.append(b"%016x\r\n\r\n" % getrandbits(64))
        if method != b"HEAD":
            parts.append(hot.body)
        self.answered += 1
        return b"".join(parts)

    def _prepare(self, entry) -> HotFile:
        inode = entry.inode
        length = b"Content-Length: %d\r\n" % inode.size
        validators = cache_headers(inode)
        get_head = OCTETS + metadata_headers(inode) + validators + length
        head_head = OCTETS + metadata_headers(inode, instance=True) + validators + length
        heads = len(get_head) + len(head_head)
        if inode.size > SMALL_FILE:
            hot = HotFile(get_head, head_head, None)
            self.engine.keep_with(entry, hot, heads)
            return hot
        body = self.engine.small_content(inode)
        hot = HotFile(get_head, head_head, body)
        if body is None:
            return hot  # the bytes on disk are not this version (yet): ask again next time
        if not self.engine.keep_with(entry, hot, heads + len(body)):
            hot = HotFile(get_head, head_head, None)
            self.engine.keep_with(entry, hot, heads)
        return hot
