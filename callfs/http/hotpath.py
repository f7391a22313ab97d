"""The hot path: GET and HEAD of a file answered inside the parser's callback, in one write.

Most reads of a file server are plain: a known key, a canonical path, an entry the metadata
cache holds, no conditional or range header. For those, everything the general route would
compute is already known — the header block is prebuilt per entry (per content version), and
a small file's bytes are cached beside it — so the response is a join of a few bytes objects,
written at once, with no task, no Request object and no coroutine. Anything else (a cache
miss, a query, a trailing slash, a directory, a conditional, a large file) returns None and
takes the general route, which answers identically and fills the cache for next time.

The per-request part runs in C (callfs/_native/httphead.pyx: the parser's callbacks and
`HotPath.answer`); this module builds what it keeps per content version. The answer is
byte-for-byte the general route's (tests/integration/test_hotpath.py compares them), except
for Date and the fresh X-Request-ID.
"""
from callfs._native.httphead import HotFile, HotPath
from callfs.api.shapes import cache_headers, metadata_headers
from callfs.core import permissions
from callfs.http.response import OCTETS

# The largest file whose bytes the hot path keeps with its cache entry (the metadata cache
# bounds the total).
SMALL_FILE = 256 * 1024


def hot_path(*, auth, engine, security: bytes, hsts: bytes) -> HotPath:
    """The hot path of a worker: `auth` for known API keys, `engine` for the metadata cache
    (through its store) and the small files' bytes, the header lines every response carries."""
    return HotPath(auth=auth, engine=engine, security=security, hsts=hsts, prepare=prepare,
                   may_read=permissions.may_read)


def prepare(engine, entry) -> HotFile:
    """Build (and keep with the cache entry, within the cache's budget) what the hot path
    writes for the content version `entry` describes."""
    inode = entry.inode
    length = b"Content-Length: %d\r\n" % inode.size
    validators = cache_headers(inode)
    get_head = OCTETS + metadata_headers(inode) + validators + length
    head_head = OCTETS + metadata_headers(inode, instance=True) + validators + length
    heads = len(get_head) + len(head_head)
    if inode.size > SMALL_FILE:
        hot = HotFile(get_head, head_head, None)
        engine.keep_with(entry, hot, heads)
        return hot
    body = engine.small_content(inode)
    hot = HotFile(get_head, head_head, body)
    if body is None:
        return hot  # the bytes on disk are not this version (yet): ask again next time
    if not engine.keep_with(entry, hot, heads + len(body)):
        hot = HotFile(get_head, head_head, None)
        engine.keep_with(entry, hot, heads)
    return hot
