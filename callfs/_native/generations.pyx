# cython: language_level=3
"""Write generations in shared memory: how every process of a host knows a cached entry is stale.

A table of slots lives in a file mapped MAP_SHARED by every process that serves the same
metadata. A path hashes (FNV-1a over its UTF-8 bytes) to one slot; slot 0 is global (a write
that touches many paths at once, such as a subtree move). Each slot holds two counters that
only grow, updated atomically: `begun` (bumped before a write commits) and `ended` (after).

A reader takes `stamp(path)` *before* it reads the metadata and keeps the result with what it
read. The entry is still good while `stamp(path)` returns the same number. When a write is in
progress on the slot (begun != ended), `stamp` returns -1: read through, cache nothing. A
writer that dies between begin and end leaves its slot uncached, never stale.

The plain-Python specification is tests/unit/generations_oracle.py.
"""
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport uint64_t, uint32_t

cdef extern from "sys/mman.h" nogil:
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void* addr, size_t length)
    int PROT_READ, PROT_WRITE, MAP_SHARED
    void* MAP_FAILED

cdef extern from *:
    """
    static inline uint64_t callfs_load(uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void callfs_bump(uint64_t *p) {
        __atomic_add_fetch(p, 1, __ATOMIC_SEQ_CST);
    }
    """
    uint64_t callfs_load(uint64_t *p) nogil
    void callfs_bump(uint64_t *p) nogil

from libc.errno cimport errno
from libc.string cimport strerror
from posix.stat cimport fstat, struct_stat as stat_t
from posix.types cimport off_t

cdef uint64_t FNV_OFFSET = 14695981039346656037ULL
cdef uint64_t FNV_PRIME = 1099511628211ULL


cpdef uint64_t fnv1a(str text):
    """FNV-1a 64 of the UTF-8 bytes: the same in every process (Python's hash is salted)."""
    cdef Py_ssize_t size
    cdef const unsigned char* data = <const unsigned char*>PyUnicode_AsUTF8AndSize(text, &size)
    cdef uint64_t h = FNV_OFFSET
    cdef Py_ssize_t i
    for i in range(size):
        h = (h ^ data[i]) * FNV_PRIME
    return h


# Far more slots than any cache needs, and small enough that sizes never overflow.
MAX_SLOTS = 1 << 32


def table_bytes(Py_ssize_t slots):
    """The size of the file that holds a table of `slots` path slots (plus the global one)."""
    if slots < 1 or slots > MAX_SLOTS:
        raise ValueError(f"a generation table has 1 to {MAX_SLOTS} slots")
    return (slots + 1) * 16


cdef class GenerationTable:
    # words: [begun, ended] per slot; slot 0 is global

    def __cinit__(self, int fd, Py_ssize_t slots):
        self.words = NULL
        self.length = table_bytes(slots)
        self.slots = slots
        cdef stat_t info
        if fstat(fd, &info) != 0:
            raise OSError(errno, strerror(errno).decode())
        if info.st_size < <off_t>self.length:
            # Touching a mapped page past the end of the file would kill the process (SIGBUS).
            raise ValueError(f"the table file holds {info.st_size} bytes; {self.length} needed")
        cdef void* mem = mmap(NULL, self.length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if mem == MAP_FAILED:
            raise OSError(errno, strerror(errno).decode())
        self.words = <uint64_t*>mem

    def __dealloc__(self):
        if self.words != NULL:
            munmap(self.words, self.length)
            self.words = NULL

    cdef inline uint64_t* _slot(self, str path):
        return self.words + 2 * (1 + <Py_ssize_t>(fnv1a(path) % <uint64_t>self.slots))

    cpdef long long stamp(self, str path):
        """The generation of `path` to keep with what is read after this call; -1 while a write
        on its slot, or a global write, is in progress."""
        cdef uint64_t* g = self.words
        cdef uint64_t* s = self._slot(path)
        cdef uint64_t gb = callfs_load(g), sb = callfs_load(s)
        if gb != callfs_load(g + 1) or sb != callfs_load(s + 1):
            return -1
        # 40 bits of the slot's count, 23 of the global one: equal stamps need equal counts
        # modulo 2^40 and 2^23 — far more writes than happen between two lookups.
        return <long long>(((sb & 0xFFFFFFFFFFULL) << 23) | (gb & 0x7FFFFFULL))

    cpdef bint unchanged(self, str path, long long stamp):
        """The cache's freshness rule, written once: what was read under `stamp` (taken before
        the read) is still exact while no write on its slot, or global write, has begun since."""
        return stamp >= 0 and self.stamp(path) == stamp

    def begin(self, str path):
        callfs_bump(self._slot(path))

    def end(self, str path):
        callfs_bump(self._slot(path) + 1)

    def begin_all(self):
        callfs_bump(self.words)

    def end_all(self):
        callfs_bump(self.words + 1)

    def slot_of(self, str path):
        return 1 + <Py_ssize_t>(fnv1a(path) % <uint64_t>self.slots)

    def counters(self, Py_ssize_t slot):
        """(begun, ended) of one slot: for tests and diagnostics."""
        if slot < 0 or slot > self.slots:
            raise IndexError(slot)
        return callfs_load(self.words + 2 * slot), callfs_load(self.words + 2 * slot + 1)
