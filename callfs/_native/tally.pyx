# cython: language_level=3, boundscheck=False, wraparound=False
"""Exact counts shared by every process of one instance.

The master maps the table (anonymous, MAP_SHARED) before it forks. It holds one row of cells per
process slot; a process writes only the row of the slot it claimed, so no count ever needs a
lock or an atomic instruction, and a scrape through any worker sums every row. A worker that
dies leaves its row behind: its replacement claims the same slot and counts on from there, so
counters never go back, and clears the cells that are gauges (what the dead one held is gone).

Cells are 64-bit words. A gauge's cell moves both ways in its own row (two's complement), so
the sum of a gauge's rows, read as signed, is the instance's value. A histogram series is a run
of cells: one per bucket (not cumulative; the last is +Inf), then the sum of the observations
in nanoseconds. Every histogram uses the bucket bounds given when the table is made.

Writes happen with the GIL held, so the threads of one process never interleave on a cell.
The plain-Python specification is tests/unit/tally_oracle.py.
"""
import math

from libc.errno cimport errno
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset, strerror

cdef extern from "sys/mman.h" nogil:
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void* addr, size_t length)
    int PROT_READ, PROT_WRITE, MAP_SHARED, MAP_ANONYMOUS
    void* MAP_FAILED

MAX_BUCKETS = 32
_LIMIT_NS = 2 ** 63
cdef double _LARGEST = 1.8e19  # nanoseconds past any bound (below 2**64): the +Inf bucket


cdef class Tally:
    """`cells` counters for each of `slots` processes; `bounds` the histogram bucket bounds in
    seconds, ascending."""

    def __cinit__(self, Py_ssize_t cells, Py_ssize_t slots, bounds=()):
        self.base = NULL
        self.mine = NULL
        if cells <= 0 or slots <= 0:
            raise ValueError("a table needs at least one cell and one slot")
        bounds = tuple(bounds)
        if len(bounds) > MAX_BUCKETS:
            raise ValueError(f"at most {MAX_BUCKETS} bucket bounds")
        if not all(isinstance(b, (int, float)) and math.isfinite(b) for b in bounds):
            raise ValueError("bucket bounds must be finite numbers")
        nanos = [round(b * 1e9) for b in bounds]
        if nanos != sorted(set(nanos)) or any(n <= 0 or n >= _LIMIT_NS for n in nanos):
            raise ValueError("bucket bounds must be ascending, at least a nanosecond apart, "
                             "between 1 ns and 2**63 ns")
        self.cells = cells
        self.slots = slots
        self.slot = -1
        self.nbounds = len(bounds)
        cdef Py_ssize_t i
        for i in range(self.nbounds):
            self.bounds_ns[i] = <uint64_t>nanos[i]
        self.length = <size_t>cells * <size_t>slots * sizeof(uint64_t)
        cdef void* mem = mmap(NULL, self.length, PROT_READ | PROT_WRITE,
                              MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        if mem == MAP_FAILED:
            raise OSError(errno, strerror(errno).decode())
        self.base = <uint64_t*>mem
        self.mine = self.base

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.length)
            self.base = NULL
            self.mine = NULL

    @property
    def bounds(self):
        return tuple(self.bounds_ns[i] / 1e9 for i in range(self.nbounds))

    @property
    def series_width(self):
        """Cells of one histogram series: the buckets, +Inf, the sum."""
        return self.nbounds + 2

    def claim(self, Py_ssize_t slot, gauges=()):
        """This process writes row `slot` from now on; the cell ranges `gauges` ((start, stop)
        pairs) of that row are cleared."""
        if slot < 0 or slot >= self.slots:
            raise ValueError(f"slot {slot} outside 0..{self.slots - 1}")
        self.slot = slot
        self.mine = self.base + slot * self.cells
        for start, stop in gauges:
            self._check(start)
            if stop < start or stop > self.cells:
                raise ValueError("a gauge range outside the table")
            memset(self.mine + <Py_ssize_t>start, 0, (stop - start) * sizeof(uint64_t))

    cdef int _check(self, Py_ssize_t cell) except -1:
        if cell < 0 or cell >= self.cells:
            raise IndexError(f"cell {cell} outside 0..{self.cells - 1}")
        return 0

    def add(self, Py_ssize_t cell, long long n=1):
        """Add `n` (negative for a gauge going down) to `cell` in this process's row."""
        self._check(cell)
        self.add_fast(cell, n)

    def observe(self, Py_ssize_t first, double seconds):
        """One observation of the histogram series starting at cell `first`."""
        self._check(first)
        self._check(first + self.nbounds + 1)
        cdef double nanos = seconds * 1e9
        if not nanos > 0:  # zero, negative, NaN
            nanos = 0
        elif nanos > _LARGEST:
            nanos = _LARGEST
        self.observe_ns(first, <uint64_t>nanos)

    def observe_nanos(self, Py_ssize_t first, long long nanos):
        """`observe` of a duration in integer nanoseconds (negative counts as zero)."""
        self._check(first)
        self._check(first + self.nbounds + 1)
        self.observe_ns(first, <uint64_t>nanos if nanos > 0 else 0)

    def total(self, Py_ssize_t cell):
        """The sum of `cell` over every row, as a signed number."""
        self._check(cell)
        cdef uint64_t sum = 0
        cdef Py_ssize_t slot
        for slot in range(self.slots):
            sum += self.base[slot * self.cells + cell]
        return <int64_t>sum

    def totals(self):
        """{cell: sum over every row} for each cell whose sum is not zero."""
        cdef uint64_t* sums = <uint64_t*>malloc(self.cells * sizeof(uint64_t))
        if sums == NULL:
            raise MemoryError()
        cdef Py_ssize_t slot, cell
        cdef uint64_t* row
        try:
            memset(sums, 0, self.cells * sizeof(uint64_t))
            for slot in range(self.slots):
                row = self.base + slot * self.cells
                for cell in range(self.cells):
                    sums[cell] += row[cell]
            return {cell: <int64_t>sums[cell] for cell in range(self.cells) if sums[cell] != 0}
        finally:
            free(sums)
