# cython: language_level=3
# The engine's read view of cached files; see readview.pyx.
from callfs._native.generations cimport GenerationTable
from callfs._native.perm cimport Principal


cdef class CacheEntry:
    cdef object _inode
    cdef public long long stamp
    cdef readonly long mode
    cdef readonly str owner, group
    cdef readonly bint is_file


cdef class ReadView:
    cdef dict entries          # the metadata cache's exact entries: path -> CacheEntry
    cdef GenerationTable table  # whose stamps say whether an entry is still exact
    cdef bint unix_model           # the Unix model (search and read bits) rather than the owner's
    cdef object on_disk, prepare
    cdef str instance_id
    cdef dict kept             # path -> Kept: what `prepare` made, per content version
    cdef Py_ssize_t budget, keep_limit
    cdef public Py_ssize_t kept_bytes
    cpdef object ready(self, Principal principal, str path)
    cdef bint _searchable(self, Principal principal, object chain)
    cdef object _prepare(self, str path, object inode, long long stamp)
    cdef int _forget(self, str path) except -1
