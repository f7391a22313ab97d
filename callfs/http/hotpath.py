"""The hot path: GET and HEAD of a file answered inside the parser's callback, in one write.

Most reads of a file server are plain: a known key, a canonical path, an entry the metadata
cache holds, no conditional or range header. For those, everything the general route would
compute is already known — the header block is prebuilt per content version, and a small
file's bytes are kept beside it (by the engine's read view, within its budget) — so the
response is a join of a few bytes objects,
written at once, with no task, no Request object and no coroutine. Anything else (a cache
miss, a query, a trailing slash, a directory, a conditional, a large file) returns None and
takes the general route, which answers identically and fills the cache for next time.

The per-request part runs in C (callfs/_native/httphead.pyx: the parser's callbacks and
`HotPath.answer`); this module builds what it keeps per content version. The answer is
byte-for-byte the general route's (tests/integration/test_hotpath.py compares them), except
for Date and a fresh X-Request-ID. It is counted and logged like the general route's answers
too: the counts in the instance's shared table, the access line into the log's buffer.
"""
from callfs._native.httphead import HotFile, HotPath
from callfs.api.shapes import cache_headers, metadata_headers
from callfs.http.response import OCTETS

# The largest file whose bytes the hot path keeps (the read view's budget bounds the total).
SMALL_FILE = 256 * 1024


def hot_path(*, auth, engine, security: bytes, hsts: bytes, tally=None, cells=(),
             read_cells=None, log=None) -> HotPath:
    """The hot path of a worker: `auth` for known API keys, the engine's read view for what a
    plain read may be answered with, the header lines every response carries; the shared
    counts, the cells of its answers (Metrics.hot_cells) and of a download per backend
    (Metrics.read_cells), and the access log (None: off)."""
    read_cells = read_cells or {}

    def prepare_counted(inode, content):
        return prepare(inode, content, read_cells.get(inode.backend, -1))

    return HotPath(keys=auth.known, identify=auth.identify_known,
                   view=engine.read_view(prepare_counted, SMALL_FILE), security=security,
                   hsts=hsts, tally=tally, cells=cells, log=log)


def prepare(inode, content: bytes | None, read_cell: int = -1) -> tuple[HotFile, int]:
    """What the hot path writes for the content version `inode` describes (with `content`
    when the file is small enough to keep), and its cost in bytes for the read view;
    `read_cell` is where a download of it is counted."""
    length = b"Content-Length: %d\r\n" % inode.size
    validators = cache_headers(inode)
    get_head = OCTETS + metadata_headers(inode) + validators + length
    head_head = OCTETS + metadata_headers(inode, instance=True) + validators + length
    cost = len(get_head) + len(head_head) + (0 if content is None else len(content))
    return HotFile(get_head, head_head, content, read_cell), cost
