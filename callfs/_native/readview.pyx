# cython: language_level=3
"""The engine's read view: the one question the request head asks before it answers a plain
read itself — may this principal read the file at this canonical path, as the metadata cache
knows it exactly now, and what was prepared to answer with?

`ReadView.ready(principal, path)` is that question: the caller's prepared answer for the
file's current version, or None to take the general route (not cached, or not exact any more,
not a file, owned by another instance, not readable by the principal, or its bytes on disk are
not the version recorded). The view is built by the engine (callfs.core.engine.Engine.
read_view) over the metadata cache, whose freshness rule it uses (GenerationTable.unchanged),
with the permission rule of callfs._native.perm: under the Unix model the principal must
search every ancestor and read the file, each ancestor as the cache knows it exactly now (an
ancestor not cached, or changed, sends the request the general route, which caches it); under
the owner model every principal may read every file.

Per content version, `on_disk(inode, limit)` says whether the bytes at the path are that
version, with their content when there are at most `limit` of them (`keep_limit`); then
`prepare(inode, content)` makes the caller's answer and says its cost in bytes. Answers are
kept within a budget of bytes (the oldest go first) and used only for the version they were
made for. An answer made without the content (a large file) asks `on_disk` again each time,
since it promises bytes that only the disk holds.

The plain-Python specification is tests/unit/readview_oracle.py.
"""
from callfs._native.generations cimport GenerationTable
from callfs._native.pathnorm cimport ancestors
from callfs._native.perm cimport Principal, allows_bits

cdef int _READ = 4
cdef int _SEARCH = 1

cdef str _FILE = "file"  # Inode.type of a file (callfs.domain.model.FILE)


cdef class CacheEntry:
    """A cached inode and the generation stamp taken before it was read (the metadata cache's,
    callfs/metadata/cache.py). The attributes a permission check reads are copied out of the
    inode once, when it is cached, so each request reads C fields."""

    def __init__(self, inode, long long stamp):
        self.inode = inode
        self.stamp = stamp

    @property
    def inode(self):
        return self._inode

    @inode.setter
    def inode(self, value):
        self._inode = value
        self.mode = value.mode
        self.owner = value.owner
        self.group = value.group
        self.is_file = value.type == _FILE


cdef class Kept:
    """An answer `prepare` made for one content version of a path."""
    cdef readonly long long stamp
    cdef readonly object value
    cdef readonly Py_ssize_t cost
    cdef readonly bint recheck  # made without the content: the disk is asked each time
    cdef readonly tuple chain   # the path's strict ancestors, root first

    def __cinit__(self, long long stamp, object value, Py_ssize_t cost, bint recheck,
                  tuple chain):
        self.stamp = stamp
        self.value = value
        self.cost = cost
        self.recheck = recheck
        self.chain = chain


cdef class ReadView:
    def __init__(self, *, dict entries not None, GenerationTable table not None, bint unix,
                 on_disk, prepare, str instance_id not None, Py_ssize_t keep_limit,
                 Py_ssize_t budget):
        self.entries = entries
        self.table = table
        self.unix_model = unix
        self.on_disk = on_disk
        self.prepare = prepare
        self.instance_id = instance_id
        self.kept = {}
        self.keep_limit = keep_limit
        self.budget = budget
        self.kept_bytes = 0

    cpdef object ready(self, Principal principal, str path):
        """The prepared answer for the file at `path` as `principal` may read it now, or None."""
        found = self.entries.get(path)
        if found is None:
            return None
        cdef CacheEntry entry = <CacheEntry?>found
        cdef long long stamp = entry.stamp
        if not self.table.unchanged(path, stamp):
            return None
        if not entry.is_file:
            return None
        inode = entry._inode
        owner = inode.instance_id
        if owner is not None and owner != self.instance_id:
            return None
        kept = self.kept.get(path)
        if self.unix_model and not principal.admin:
            if not allows_bits(principal, entry.mode, entry.owner, entry.group, _READ):
                return None
            if not self._searchable(principal, (<Kept>kept).chain if kept is not None
                                    else ancestors(path)):
                return None
        if kept is not None and (<Kept>kept).stamp == stamp:
            if (<Kept>kept).recheck and not self.on_disk(inode, -1)[0]:
                return None
            return (<Kept>kept).value
        return self._prepare(path, inode, stamp)

    cdef bint _searchable(self, Principal principal, object chain):
        """Every ancestor cached exactly, a directory the principal may search."""
        cdef dict entries = self.entries
        cdef CacheEntry entry
        for parent in chain:
            found = entries.get(parent)
            if found is None:
                return False
            entry = <CacheEntry?>found
            if not self.table.unchanged(parent, entry.stamp) or entry.is_file:
                return False
            if not allows_bits(principal, entry.mode, entry.owner, entry.group, _SEARCH):
                return False
        return True

    cdef object _prepare(self, str path, object inode, long long stamp):
        self._forget(path)
        matches, content = self.on_disk(inode, self.keep_limit)
        if not matches:
            return None  # not the recorded version (yet, or at all): the general route says
        value, cost = self.prepare(inode, content)
        cdef Py_ssize_t size = cost
        if size > self.budget:
            return value
        while self.kept and self.kept_bytes + size > self.budget:
            self._forget(next(iter(self.kept)))
        self.kept[path] = Kept(stamp, value, size, content is None, tuple(ancestors(path)))
        self.kept_bytes += size
        return value

    cdef int _forget(self, str path) except -1:
        kept = self.kept.pop(path, None)
        if kept is not None:
            self.kept_bytes -= (<Kept>kept).cost
        return 0

    def __len__(self):
        return len(self.kept)
