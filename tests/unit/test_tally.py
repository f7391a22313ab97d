"""callfs._native.tally against its plain-Python oracle, and across processes.

Random sequences of claims, adds, observations and reads must give identical answers and leave
identical sums in both. Forked children that each claim a slot of a table made before the fork
count exactly: the parent reads every row's sum; a replacement worker clears only its own row's
gauges (bounded waits; every child is reaped).
"""
import math
import os
import signal
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the oracle sits beside this file
    sys.path.insert(0, _HERE)

import tally_oracle as oracle  # noqa: E402
from children import reap, run_in_child, start_child  # noqa: E402
from callfs._native import tally as native  # noqa: E402

IMPLEMENTATIONS = {"native": native.Tally, "oracle": oracle.Tally}
MS = 1_000_000
BOUNDS = (0.001, 0.005, 0.025)


def examples(count):
    return settings(max_examples=count, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(call, *args):
    try:
        return call(*args)
    except (ValueError, IndexError, OverflowError) as exc:
        return type(exc).__name__


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def make(request):
    return IMPLEMENTATIONS[request.param]


# --- one process ------------------------------------------------------------------------------


def test_a_new_table_is_zero(make):
    table = make(5, 3, BOUNDS)
    assert table.totals() == {}
    assert [table.total(cell) for cell in range(5)] == [0] * 5
    assert (table.cells, table.slots, table.slot) == (5, 3, -1)
    assert table.bounds == BOUNDS
    assert table.series_width == len(BOUNDS) + 2


def test_adds_wrap_and_sums_read_signed(make):
    table = make(3, 2)
    table.claim(0)
    table.add(0, 2**63 - 1)
    table.add(0)
    assert table.total(0) == -(2**63)
    table.add(1, -5)
    table.claim(1)
    table.add(1, 3)
    assert table.total(1) == -2
    table.add(2, -(2**63))
    table.claim(0)
    table.add(2, -(2**63))  # two rows of -2**63 sum to 0: the cell leaves totals()
    assert table.totals() == {0: -(2**63), 1: -2}


def test_an_observation_equal_to_a_bound_is_in_that_bucket(make):
    table = make(1 + len(BOUNDS) + 2, 1, BOUNDS)
    first = 1
    for seconds in BOUNDS:
        table.observe(first, seconds)
    table.observe(first, 0.0051)  # (5 ms, 25 ms]
    table.observe(first, 1.0)  # +Inf
    table.observe(first, 0.0)
    table.observe(first, -3.0)  # a clock that went back: 0 ns, the first bucket
    assert table.totals() == {1: 3, 2: 1, 3: 2, 4: 1,
                              5: MS + 5 * MS + 25 * MS + 5_100_000 + 1_000_000_000}


def test_a_claim_clears_only_the_gauge_ranges_of_its_row(make):
    table = make(6, 2)
    table.claim(1)
    for cell in range(6):
        table.add(cell, 10 + cell)
    table.claim(0)
    table.add(2, 1)
    table.claim(1, [(1, 3), (4, 5), (5, 5)])
    assert table.slot == 1
    assert table.totals() == {0: 10, 2: 1, 3: 13, 5: 15}


def test_an_unclaimed_process_writes_row_0(make):
    table = make(2, 2)
    table.add(0, 4)
    table.claim(1, [(0, 2)])  # another row's gauges: row 0 keeps its count
    assert table.total(0) == 4
    table.claim(0, [(0, 1)])
    assert table.totals() == {}


@pytest.mark.parametrize("cells, slots, bounds", [
    (0, 1, ()), (1, 0, ()), (-1, 1, ()), (1, -5, ()),
    (4, 1, (0.0,)), (4, 1, (-1.0,)), (4, 1, (0.2, 0.1)), (4, 1, (0.1, 0.1)),
    (4, 1, (0.1, 0.3, 0.2)), (4, 1, tuple(range(1, native.MAX_BUCKETS + 2))),
    (4, 1, (float("nan"),)),
])
def test_refused_tables(make, cells, slots, bounds):
    with pytest.raises(ValueError):
        make(cells, slots, bounds)


def test_the_most_bounds(make):
    bounds = tuple(range(1, native.MAX_BUCKETS + 1))
    table = make(native.MAX_BUCKETS + 2, 1, bounds)
    assert table.series_width == native.MAX_BUCKETS + 2
    table.observe(0, native.MAX_BUCKETS + 1)
    assert table.totals() == {native.MAX_BUCKETS: 1,
                              native.MAX_BUCKETS + 1: (native.MAX_BUCKETS + 1) * 10**9}


@pytest.mark.parametrize("call", [
    lambda t: t.add(-1),
    lambda t: t.add(4),
    lambda t: t.add(2**40),
    lambda t: t.total(-1),
    lambda t: t.total(4),
    lambda t: t.observe(-1, 0.1),
    lambda t: t.observe(2, 0.1),  # the series (width 3) would end past the table
    lambda t: t.observe(4, 0.1),
    lambda t: t.claim(0, [(-1, 2)]),
    lambda t: t.claim(0, [(4, 4)]),
])
def test_a_cell_outside_the_table_is_an_index_error(make, call):
    table = make(4, 2, (0.5,))
    with pytest.raises(IndexError):
        call(table)
    assert table.totals() == {}


@pytest.mark.parametrize("call", [
    lambda t: t.claim(-1),
    lambda t: t.claim(2),
    lambda t: t.claim(2**40),
    lambda t: t.claim(0, [(2, 1)]),
    lambda t: t.claim(0, [(0, 5)]),
])
def test_a_slot_or_gauge_range_outside_the_table_is_a_value_error(make, call):
    table = make(4, 2)
    with pytest.raises(ValueError):
        call(table)


def test_an_addend_beyond_64_bits_is_refused(make):
    table = make(1, 1)
    for n in (2**63, -(2**63) - 1, 2**64):
        with pytest.raises(OverflowError):
            table.add(0, n)
    assert table.totals() == {}


# Seconds the C conversion to uint64 cannot hold (2**64 ns is about 584 years): the series
# counts them in +Inf.
@pytest.mark.parametrize("seconds", [math.inf, 2e10])
def test_an_observation_beyond_the_clock_is_in_the_inf_bucket(seconds):
    table = native.Tally(len(BOUNDS) + 2, 1, BOUNDS)
    table.observe(0, seconds)
    assert table.total(len(BOUNDS)) == 1


@pytest.mark.parametrize("bounds", [(0.5, math.inf), (1e12,), (1e-10, 2e-10)])
def test_bounds_a_nanosecond_table_cannot_hold_are_refused(bounds):
    with pytest.raises(ValueError):
        native.Tally(4, 1, bounds)


# --- native against the oracle ----------------------------------------------------------------

ADDENDS = (st.integers(-3, 3) | st.integers(-(2**63), 2**63 - 1)
           | st.sampled_from([2**63 - 1, -(2**63), 2**63, -(2**63) - 1]))
TABLES = st.tuples(
    st.integers(1, 24),
    st.integers(1, 5),
    st.lists(st.sampled_from(BOUNDS + (0.1, 1.0, 10.0)) | st.floats(1e-6, 100.0), max_size=6,
             unique=True).map(lambda b: tuple(sorted(b))),
)


def seconds_near(bounds):
    """Observations on and beside the bounds, and anything else."""
    around = [x for b in bounds for x in (b, math.nextafter(b, 0), math.nextafter(b, math.inf))]
    return (st.floats(-1.0, 1e4) | st.sampled_from([0.0, -0.0, math.nan, 1e-9, 1e-10])
            | (st.sampled_from(around) if around else st.nothing()))


def operations(cells, slots, bounds):
    cell = st.integers(0, cells - 1) | st.integers(-2, cells + 1)
    span = st.tuples(st.integers(0, cells), st.integers(0, cells)).map(lambda r: tuple(sorted(r)))
    ranges = st.lists(span | st.tuples(st.integers(-1, cells + 1), st.integers(-1, cells + 1)),
                      max_size=3)
    return st.lists(st.one_of(
        st.tuples(st.just("claim"), st.integers(-1, slots), ranges),
        st.tuples(st.just("add"), cell, ADDENDS),
        st.tuples(st.just("add"), cell, st.just(1)),
        st.tuples(st.just("observe"), cell, seconds_near(bounds)),
        st.tuples(st.just("total"), cell),
        st.tuples(st.just("totals")),
    ), max_size=60)


@examples(300)
@given(TABLES, st.data())
def test_agrees_with_oracle(shape, data):
    cells, slots, bounds = shape
    table, expected = native.Tally(cells, slots, bounds), oracle.Tally(cells, slots, bounds)
    assert table.bounds == expected.bounds and table.series_width == expected.series_width
    for name, *args in data.draw(operations(cells, slots, bounds), label="operations"):
        got = outcome(getattr(table, name), *args)
        assert got == outcome(getattr(expected, name), *args), (name, args)
        assert table.slot == expected.slot
    assert table.totals() == expected.totals()
    assert [table.total(c) for c in range(cells)] == [expected.total(c) for c in range(cells)]


@examples(100)
@given(st.lists(st.tuples(st.integers(0, 3), ADDENDS.filter(lambda n: n in oracle.INT64)),
                max_size=80))
def test_sums_over_rows_are_exact_modulo_2_64(writes):
    table = native.Tally(1, 4)
    for slot, n in writes:
        table.claim(slot)
        table.add(0, n)
    assert table.total(0) == oracle.signed(sum(n for _, n in writes))


# --- across processes -------------------------------------------------------------------------

CHILDREN = 4
ROUNDS = 20_000
COUNTER, GAUGE, SERIES = 0, 1, 2  # cells of the shared table; per-child counters follow
OWN = SERIES + len(BOUNDS) + 2
assert CHILDREN == len(BOUNDS) + 1  # one child for each bucket, the last for +Inf


def observed(i):
    """What child i observes: the bound of bucket i - 1 itself, or beyond every bound."""
    return BOUNDS[i - 1] if i <= len(BOUNDS) else 1.0


def test_children_on_their_own_slots_sum_exactly():
    """Each child counts from its own row at once; the parent, counting in row 0 meanwhile,
    reads every row's sum."""
    table = native.Tally(OWN + CHILDREN + 1, CHILDREN + 1, BOUNDS)  # made before the fork
    table.claim(0)

    def worker(i):
        table.claim(i, [(GAUGE, GAUGE + 1)])
        for _ in range(ROUNDS):
            table.add(GAUGE)
            table.add(COUNTER, i)
            table.observe(SERIES, observed(i))
            table.add(OWN + i)
            table.add(GAUGE, -1)
        table.add(GAUGE, i)

    children = [start_child(lambda i=i: worker(i)) for i in range(1, CHILDREN + 1)]
    try:
        for _ in range(ROUNDS):
            table.add(COUNTER, 1)
            table.add(OWN)
    finally:
        statuses = [reap(pid) for pid in children]
    assert statuses == [0] * CHILDREN
    workers = range(1, CHILDREN + 1)
    expected = {COUNTER: ROUNDS * (1 + sum(workers)), GAUGE: sum(workers),
                SERIES + len(BOUNDS) + 1: ROUNDS * sum(oracle.nanoseconds(observed(i))
                                                       for i in workers)}
    for i in workers:  # worker i observes in bucket i - 1
        expected[SERIES + i - 1] = ROUNDS
    for i in range(CHILDREN + 1):
        expected[OWN + i] = ROUNDS
    assert table.totals() == expected
    assert table.slot == 0  # a child's claim is its own


def test_a_replacement_worker_clears_only_its_own_gauges():
    """A worker's replacement claims the dead one's slot: its row's gauges start from zero, its
    row's counters and every other row count on."""
    gauges = [(1, 3)]  # cells 1 and 2 are gauges; 0 and 3 counters
    table = native.Tally(4, 3)
    expected = oracle.Tally(4, 3)

    def first_worker(t):
        t.claim(1, gauges)
        t.add(0, 5)
        t.add(1, 3)
        t.add(2, -2)
        t.add(3, 7)

    def other_worker(t):
        t.claim(2, gauges)
        t.add(0, 1)
        t.add(1, 10)
        t.add(2, 4)

    def replacement(t):
        t.claim(1, gauges)
        t.add(0, 1)
        t.add(1, 1)

    for body in (first_worker, other_worker):
        assert run_in_child(lambda: body(table)) == 0
        body(expected)
    assert table.totals() == expected.totals() == {0: 6, 1: 13, 2: 2, 3: 7}

    def replaced():
        replacement(table)
        assert table.totals() == {0: 7, 1: 11, 2: 4, 3: 7}  # the child sees every row too

    assert run_in_child(replaced) == 0
    replacement(expected)
    assert table.totals() == expected.totals() == {0: 7, 1: 11, 2: 4, 3: 7}
    assert table.slot == -1  # the parent never claimed


def test_a_child_killed_mid_count_leaves_its_counts():
    """Counts are in shared memory the moment they are made: a worker that dies keeps them."""
    table = native.Tally(1, 2)
    table.claim(0)

    def doomed():
        table.claim(1)
        for _ in range(1000):
            table.add(0, 3)
        os.kill(os.getpid(), signal.SIGKILL)

    assert run_in_child(doomed) == "killed by SIGKILL"
    assert table.totals() == {0: 3000}
