"""Plain-Python specification of `callfs._native.tally`.

The same API over a list of rows, one per process slot, private to one object: what the native
table computes, without the sharing. tests/unit/test_tally.py checks with hypothesis that
native and oracle agree on every call, and that the native table is shared across a fork.

Cells are 64-bit words: an add wraps (two's complement), and a sum over the rows is read as
signed. Until a process claims a slot it writes row 0. A histogram series starting at cell
`first` is one cell per bound (an observation in the first bucket whose bound it does not
exceed, compared in nanoseconds), the +Inf cell, then the sum of the observations in integer
nanoseconds, int(seconds * 1e9) (0 for seconds <= 0).
"""
import math
MAX_BUCKETS = 32
WORD = 2**64
INT64 = range(-(2**63), 2**63)


def signed(word):
    """A 64-bit word read as two's complement."""
    word %= WORD
    return word - WORD if word >= 2**63 else word


def nanoseconds(seconds):
    """An observation as the native table counts it: whole nanoseconds, 0 for none, and
    1.8e19 (past every bound, below 2**64) for more than that."""
    nanos = seconds * 1e9
    if not nanos > 0:
        return 0
    return int(min(nanos, 1.8e19))


class Tally:
    """`cells` counters for each of `slots` processes; `bounds` the histogram bucket bounds in
    seconds, ascending."""

    def __init__(self, cells, slots, bounds=()):
        if cells <= 0 or slots <= 0:
            raise ValueError("a table needs at least one cell and one slot")
        bounds = tuple(bounds)
        if len(bounds) > MAX_BUCKETS:
            raise ValueError(f"at most {MAX_BUCKETS} bucket bounds")
        if not all(isinstance(b, (int, float)) and math.isfinite(b) for b in bounds):
            raise ValueError("bucket bounds must be finite numbers")
        nanos = [round(b * 1e9) for b in bounds]
        if nanos != sorted(set(nanos)) or any(n <= 0 or n >= 2**63 for n in nanos):
            raise ValueError("bucket bounds must be ascending and a nanosecond apart")
        self.cells = cells
        self.slots = slots
        self.slot = -1
        self.bounds_ns = [round(b * 1e9) for b in bounds]
        self.rows = [[0] * cells for _ in range(slots)]
        self._mine = self.rows[0]

    @property
    def bounds(self):
        return tuple(b / 1e9 for b in self.bounds_ns)

    @property
    def series_width(self):
        return len(self.bounds_ns) + 2

    def _check(self, cell):
        if cell < 0 or cell >= self.cells:
            raise IndexError(f"cell {cell} outside 0..{self.cells - 1}")

    def claim(self, slot, gauges=()):
        """Row `slot` is this process's from now on; its cell ranges `gauges` are cleared, in
        order (a bad range stops there: the slot is claimed, the earlier ranges cleared)."""
        if slot < 0 or slot >= self.slots:
            raise ValueError(f"slot {slot} outside 0..{self.slots - 1}")
        self.slot = slot
        self._mine = self.rows[slot]
        for start, stop in gauges:
            self._check(start)
            if stop < start or stop > self.cells:
                raise ValueError("a gauge range outside the table")
            self._mine[start:stop] = [0] * (stop - start)

    def add(self, cell, n=1):
        if n not in INT64:  # refused before the cell is looked at, as the arguments convert
            raise OverflowError("an addend is a signed 64-bit number")
        self._check(cell)
        self._mine[cell] = (self._mine[cell] + n) % WORD

    def observe(self, first, seconds):
        width = len(self.bounds_ns)
        self._check(first)
        self._check(first + width + 1)
        value = nanoseconds(seconds)
        bucket = next((i for i, bound in enumerate(self.bounds_ns) if value <= bound), width)
        self._mine[first + bucket] = (self._mine[first + bucket] + 1) % WORD
        self._mine[first + width + 1] = (self._mine[first + width + 1] + value) % WORD

    def total(self, cell):
        self._check(cell)
        return signed(sum(row[cell] for row in self.rows))

    def totals(self):
        sums = {cell: signed(sum(row[cell] for row in self.rows)) for cell in range(self.cells)}
        return {cell: value for cell, value in sums.items() if value != 0}
