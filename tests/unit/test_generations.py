"""callfs._native.generations against its plain-Python oracle, and across processes.

The oracle keeps its counters in a dict; the native table keeps them in a shared file mapping.
Single-process sequences must give identical results; forked processes that map the same file
must see each other's writes (bounded waits; every child is reaped).
"""
import os
import signal
import struct
import sys
import tempfile
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the oracle sits beside this file
    sys.path.insert(0, _HERE)

import generations_oracle as oracle  # noqa: E402
from children import WAIT, reap, run_in_child, start_child  # noqa: E402,F401
from callfs._native import generations as native  # noqa: E402

IMPLEMENTATIONS = {"native": native, "oracle": oracle}


def examples(count):
    return settings(max_examples=count, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def table_file(slots, words=None):
    """An anonymous file sized for `slots`, zeroed or holding `words` (native-endian uint64)."""
    f = tempfile.TemporaryFile()
    os.ftruncate(f.fileno(), native.table_bytes(slots))
    if words:
        os.pwrite(f.fileno(), struct.pack(f"={len(words)}Q", *words), 0)
    return f


def both(fd, slots):
    """(native, oracle) over one file. The oracle is made first: it reads the counters once,
    before the native table bumps them."""
    expected = oracle.GenerationTable(fd, slots)
    return native.GenerationTable(fd, slots), expected


def outcome(call, *args):
    try:
        return call(*args)
    except (ValueError, TypeError, IndexError) as exc:  # UnicodeEncodeError is a ValueError
        return type(exc).__name__


# --- processes --------------------------------------------------------------------------------


def open_table(path, slots):
    """What another process does: open the file by name and map it."""
    fd = os.open(path, os.O_RDWR)
    try:
        return native.GenerationTable(fd, slots)
    finally:
        os.close(fd)  # the mapping outlives the descriptor


@pytest.fixture
def table_path(tmp_path):
    def make(slots):
        path = tmp_path / "generations"
        path.write_bytes(b"\0" * native.table_bytes(slots))
        return str(path)
    return make


# --- fnv1a ------------------------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=64)  # surrogates included


@examples(800)
@given(st.one_of(st.text(), ANY_TEXT))
@example("")
@example("\x00")
@example("\ud800")
def test_fnv1a_agrees(text):
    got = outcome(native.fnv1a, text)
    assert got == outcome(oracle.fnv1a, text)
    if not isinstance(got, str):
        assert 0 <= got < 2**64


@pytest.mark.parametrize("text, expected", [  # FNV-1a 64 reference vectors
    ("", 0xCBF29CE484222325), ("a", 0xAF63DC4C8601EC8C), ("foobar", 0x85944171F73967E8),
])
def test_fnv1a_reference_vectors(text, expected):
    assert native.fnv1a(text) == oracle.fnv1a(text) == expected


def test_fnv1a_hashes_utf8_bytes():
    # 'é' is C3 A9 in UTF-8; the hash of the two bytes, not of the code point 0xE9.
    h = 0xCBF29CE484222325
    for byte in (0xC3, 0xA9):
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    assert native.fnv1a("é") == h


@pytest.mark.parametrize("bad, error", [
    ("\ud800", UnicodeEncodeError), ("a\udfff", UnicodeEncodeError), (None, TypeError),
    (b"a", TypeError), (1, TypeError),
])
def test_fnv1a_rejects(bad, error):
    for module in IMPLEMENTATIONS.values():
        with pytest.raises(error):
            module.fnv1a(bad)


# --- single process: every call agrees --------------------------------------------------------

@st.composite
def programs(draw):
    slots = draw(st.one_of(st.integers(1, 4), st.integers(1, 64)))
    paths = draw(st.lists(st.one_of(st.text(max_size=12), st.sampled_from(["/", "/a", "/a/b"]),
                                    ANY_TEXT), min_size=1, max_size=6))
    path = st.sampled_from(paths)
    ops = draw(st.lists(st.one_of(
        st.tuples(st.sampled_from(["begin", "end", "stamp", "stamp", "slot_of"]), path),
        st.tuples(st.sampled_from(["begin_all", "end_all"])),
        st.tuples(st.just("counters"), st.integers(-2, slots + 2)),
        st.tuples(st.just("unchanged"), path, st.integers(-1, 2**24)),
    ), max_size=40))
    return slots, ops


@examples(200)
@given(programs())
@example((1, [("begin", "a"), ("stamp", "b"), ("end", "a"), ("stamp", "b")]))
@example((3, [("end", "x"), ("stamp", "x"), ("begin", "x"), ("stamp", "x")]))
@example((1, [("unchanged", "a", 0), ("begin", "a"), ("unchanged", "a", 0), ("end", "a"),
              ("unchanged", "a", 1 << 23), ("begin_all",), ("end_all",),
              ("unchanged", "a", (1 << 23) | 1), ("unchanged", "a", -1)]))
def test_operations_agree(program):
    slots, ops = program
    with table_file(slots) as f:
        tables = both(f.fileno(), slots)
        for op, *args in ops:
            got, expected = (outcome(getattr(t, op), *args) for t in tables)
            assert got == expected, (op, args)
        for slot in range(slots + 1):
            assert tables[0].counters(slot) == tables[1].counters(slot)


U64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**23 - 1, 2**23, 2**40 - 1,
                                                           2**40, 2**63, 2**64 - 2, 2**64 - 1]))


@examples(300)
@given(st.integers(1, 8), st.text(max_size=8), U64, U64, st.booleans(), st.booleans())
def test_stamp_from_any_counters(slots, path, slot_count, global_count, slot_busy, global_busy):
    """Counters as another process may have left them, near the masks and the 64-bit wrap."""
    words = [0] * (2 * (slots + 1))
    words[0:2] = [global_count, (global_count - global_busy) % 2**64]
    slot = 1 + oracle.fnv1a(path) % slots
    words[2 * slot: 2 * slot + 2] = [slot_count, (slot_count - slot_busy) % 2**64]
    with table_file(slots, words) as f:
        tables = both(f.fileno(), slots)
        for step in ("load", "end", "begin", "end_all", "begin_all", "final"):
            stamps = [t.stamp(path) for t in tables]
            assert stamps[0] == stamps[1], step
            assert stamps[0] == -1 or 0 <= stamps[0] < 2**63
            for t in tables:  # bump both the same way, wrapping at 2^64
                if step == "end":
                    t.end(path)
                elif step == "begin":
                    t.begin(path)
                elif step == "end_all":
                    t.end_all()
                elif step == "begin_all":
                    t.begin_all()
        assert tables[0].counters(0) == tables[1].counters(0)
        assert tables[0].counters(slot) == tables[1].counters(slot)


@pytest.mark.parametrize("slot_begun, global_begun, expected", [
    (0, 0, 0), (1, 0, 1 << 23), (0, 1, 1), (2**40 - 1, 2**23 - 1, 2**63 - 1),
    (2**40, 2**23, 0), (2**40 + 5, 2**23 + 7, (5 << 23) | 7), (2**64 - 1, 2**64 - 1, 2**63 - 1),
])
def test_stamp_formula(slot_begun, global_begun, expected):
    path = "/p"
    slot = 1 + oracle.fnv1a(path) % 4
    words = [0] * 10
    words[0:2] = [global_begun, global_begun]
    words[2 * slot: 2 * slot + 2] = [slot_begun, slot_begun]
    with table_file(4, words) as f:
        assert native.GenerationTable(f.fileno(), 4).stamp(path) == expected
        assert oracle.stamp_of(slot_begun, slot_begun, global_begun, global_begun) == expected


def test_file_layout():
    """[begun, ended] as native-endian uint64 per slot, slot 0 global: the format every process
    of the host shares."""
    slots = 8
    with table_file(slots) as f:
        t = native.GenerationTable(f.fileno(), slots)
        for _ in range(3):
            t.begin("/x")
        t.end("/x")
        t.end("/x")
        t.begin_all()
        words = struct.unpack(f"={2 * (slots + 1)}Q", os.pread(f.fileno(), 16 * (slots + 1), 0))
        slot = t.slot_of("/x")
        assert slot == 1 + oracle.fnv1a("/x") % slots
        expected = [0] * (2 * (slots + 1))
        expected[0:2] = [1, 0]
        expected[2 * slot: 2 * slot + 2] = [3, 2]
        assert list(words) == expected
        assert t.counters(slot) == (3, 2) and t.counters(0) == (1, 0)


# --- the cache's rule: a write makes every stamp taken before it stale ------------------------

@st.composite
def interleavings(draw):
    """Writes (a path, or None for a global write) whose begin/end events and reader stamps are
    interleaved at random; several writes may overlap."""
    slots = draw(st.integers(1, 64))
    paths = draw(st.lists(st.text(max_size=6), min_size=1, max_size=5, unique=True))
    writes = draw(st.lists(st.one_of(st.sampled_from(paths), st.none()), max_size=6))
    events = draw(st.permutations([i for i in range(len(writes)) for _ in range(2)]))
    for _ in range(draw(st.integers(0, 20))):
        events.insert(draw(st.integers(0, len(events))), ("read", draw(st.sampled_from(paths))))
    return slots, writes, events


@examples(250)
@given(interleavings())
@example((1, ["a", None], [("read", "a"), 0, 1, 1, ("read", "a"), 0, ("read", "a")]))
def test_a_write_invalidates_earlier_stamps(case):
    slots, writes, events = case
    with table_file(slots) as f:
        tables = both(f.fileno(), slots)
        began, ended = {}, {}  # write -> event index
        reads = []  # (event index, path, stamp)
        for index, event in enumerate(events):
            if isinstance(event, tuple):
                stamps = [t.stamp(event[1]) for t in tables]
                assert stamps[0] == stamps[1]
                reads.append((index, event[1], stamps[0]))
                continue
            path = writes[event]
            first = event not in began
            (began if first else ended)[event] = index
            for t in tables:
                if path is None:
                    t.begin_all() if first else t.end_all()
                else:
                    t.begin(path) if first else t.end(path)
        for w, path in enumerate(writes):
            affected = [r for r in reads if path is None or r[1] == path]
            for index, _, stamp in affected:
                if began[w] < index < ended[w]:
                    assert stamp == -1, "a stamp while the write is in progress"
            for before_index, p, before in affected:
                if before_index > began[w] or before == -1:
                    continue
                for after_index, q, after in affected:
                    if q == p and after_index > ended[w]:
                        assert after != before, "a stamp from before the write still holds"


def test_in_progress_writes_read_through():
    with table_file(16) as f:
        t = native.GenerationTable(f.fileno(), 16)
        before = t.stamp("/a")
        assert before == 0
        t.begin("/a")
        assert t.stamp("/a") == -1
        t.begin("/a")
        t.end("/a")
        assert t.stamp("/a") == -1  # one of the two writes is still going
        t.end("/a")
        after = t.stamp("/a")
        assert after not in (-1, before)
        t.begin_all()
        assert t.stamp("/a") == -1 and t.stamp("/b") == -1
        t.end_all()
        assert t.stamp("/a") not in (-1, after)


# --- construction and bounds ------------------------------------------------------------------

@examples(200)
@given(st.one_of(st.integers(1, oracle.MAX_SLOTS), st.sampled_from([1, 2, oracle.MAX_SLOTS])))
def test_table_bytes(slots):
    assert native.table_bytes(slots) == oracle.table_bytes(slots) == 16 * (slots + 1)


@pytest.mark.parametrize("slots", [0, -1, -(2**62), oracle.MAX_SLOTS + 1, 2**59, 2**60, 2**63 - 1])
def test_table_bytes_out_of_range(slots):
    """Refused, never a size that wrapped around (slots >= 2**59 once gave 16 or less)."""
    for module in IMPLEMENTATIONS.values():
        with pytest.raises(ValueError):
            module.table_bytes(slots)


@pytest.mark.parametrize("slots", [2**63, 2**64 + 5, -(2**63) - 1])
def test_table_bytes_beyond_c_integers(slots):
    with pytest.raises(OverflowError):
        native.table_bytes(slots)
    with pytest.raises(ValueError):
        oracle.table_bytes(slots)


@pytest.mark.parametrize("slots", [255, 4095])
def test_a_file_of_table_bytes_is_enough(slots):
    """The last slot of a file of exactly table_bytes(slots) (a page multiple here, so a size
    one word short would fault) is readable and writable."""
    def body():
        with table_file(slots) as f:
            t = native.GenerationTable(f.fileno(), slots)
            assert t.counters(slots) == (0, 0)
            for i in range(slots * 4):
                path = str(i)
                if t.slot_of(path) == slots:
                    t.begin(path)
                    assert t.counters(slots) == (1, 0)
                    return
            raise AssertionError("no path for the last slot")
    assert run_in_child(body) == 0


@pytest.mark.parametrize("slots", [0, -1, -(2**40), oracle.MAX_SLOTS + 1, 2**60, 2**63 - 1])
def test_slot_count_out_of_range(slots):
    with table_file(1) as f:
        for module in IMPLEMENTATIONS.values():
            with pytest.raises(ValueError):
                module.GenerationTable(f.fileno(), slots)


@pytest.mark.parametrize("slots", [1, 7, 64])
def test_counters_bounds(slots):
    with table_file(slots) as f:
        for t in both(f.fileno(), slots):
            assert t.counters(0) == t.counters(slots) == (0, 0)
            for bad in (-1, slots + 1, -(2**40), 2**40):
                with pytest.raises(IndexError):
                    t.counters(bad)


def test_descriptor_must_be_open_for_reading_and_writing(tmp_path):
    path = tmp_path / "table"
    path.write_bytes(b"\0" * native.table_bytes(4))
    fds = [os.open(path, os.O_RDONLY), os.open(path, os.O_WRONLY), os.open(tmp_path, os.O_RDONLY)]
    closed = os.open(path, os.O_RDWR)
    os.close(closed)
    try:
        for fd in fds + [closed]:
            for module in IMPLEMENTATIONS.values():
                with pytest.raises(OSError):
                    module.GenerationTable(fd, 4)
    finally:
        for fd in fds:
            os.close(fd)


def test_wrong_types():
    with table_file(4) as f:
        for t in both(f.fileno(), 4):
            for call in (t.stamp, t.begin, t.end, t.slot_of):
                with pytest.raises(TypeError):
                    call(None)
                with pytest.raises(TypeError):
                    call(b"/a")


@pytest.mark.parametrize("size, slots", [(0, 4), (4096, 1023), (79, 4)])
@pytest.mark.parametrize("mode", [os.O_RDWR, os.O_RDONLY])
def test_a_short_file_is_refused(size, slots, mode):
    """Refused with ValueError (the size is checked before the mode). Run in a child: a table
    that maps past the end of its file would kill the process (SIGBUS) on first access."""
    def body():
        with tempfile.TemporaryFile() as f:
            os.ftruncate(f.fileno(), size)
            fd = os.open(f"/proc/self/fd/{f.fileno()}", mode)
            for module in IMPLEMENTATIONS.values():
                try:
                    t = module.GenerationTable(fd, slots)
                except ValueError:
                    continue
                t.counters(slots)
                t.stamp("/a")
                raise AssertionError(f"{module.__name__}: a table larger than its file")
    assert run_in_child(body) == 0


def test_a_file_one_word_short_is_refused():
    with table_file(255) as f:  # exactly 4096 bytes: enough for 255 slots, not for 256
        assert native.GenerationTable(f.fileno(), 255).counters(255) == (0, 0)
        for module in IMPLEMENTATIONS.values():
            with pytest.raises(ValueError):
                module.GenerationTable(f.fileno(), 256)


# --- across processes -------------------------------------------------------------------------

def test_a_child_write_changes_the_parent_stamp(table_path):
    path = table_path(32)
    parent = open_table(path, 32)
    before = parent.stamp("/doc")

    def write():
        child = open_table(path, 32)
        child.begin("/doc")
        child.end("/doc")
    assert run_in_child(write) == 0
    assert parent.counters(parent.slot_of("/doc")) == (1, 1)
    assert parent.stamp("/doc") == 1 << 23 != before

    def write_all():
        open_table(path, 32).begin_all()
        open_table(path, 32).end_all()
    assert run_in_child(write_all) == 0
    assert parent.stamp("/doc") == (1 << 23) | 1
    other = next(p for p in map(str, range(1000)) if parent.slot_of(p) != parent.slot_of("/doc"))
    assert parent.stamp(other) == 1  # the global write reaches every slot


def test_a_writer_that_dies_leaves_its_slot_uncached(table_path):
    path = table_path(32)
    parent = open_table(path, 32)
    cached = parent.stamp("/doc")

    def die_mid_write():
        open_table(path, 32).begin("/doc")
        os.kill(os.getpid(), signal.SIGKILL)
    assert run_in_child(die_mid_write) == "killed by SIGKILL"
    assert parent.stamp("/doc") == -1
    assert parent.stamp("/doc") != cached
    parent.end("/doc")  # recovery: someone finishes the write
    assert parent.stamp("/doc") not in (-1, cached)


def test_increments_are_atomic_across_processes(table_path):
    """Two processes bump the same slot at once: no increment is lost."""
    rounds = 300_000  # long enough for both processes to run at once
    path = table_path(4)
    parent = open_table(path, 4)
    go_r, go_w = os.pipe()

    def bump():
        child = open_table(path, 4)
        os.read(go_r, 1)
        for _ in range(rounds):
            child.begin("/hot")
            child.end("/hot")
            child.begin_all()
            child.end_all()
    pid = start_child(bump)
    try:
        os.write(go_w, b"g")
        for _ in range(rounds):
            parent.begin("/hot")
            parent.end("/hot")
            parent.begin_all()
            parent.end_all()
    finally:
        status = reap(pid)
        os.close(go_r)
        os.close(go_w)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert parent.counters(parent.slot_of("/hot")) == (2 * rounds, 2 * rounds)
    assert parent.counters(0) == (2 * rounds, 2 * rounds)
    assert parent.stamp("/hot") == ((2 * rounds) << 23) | (2 * rounds)


def test_stamps_seen_during_concurrent_writes(table_path):
    """While a child writes, the parent sees -1 or a stamp no older than the last it saw, and a
    stamp >= 0 counts only finished writes."""
    rounds = 200_000
    path = table_path(8)
    parent = open_table(path, 8)
    go_r, go_w = os.pipe()

    def write():
        child = open_table(path, 8)
        os.read(go_r, 1)
        for _ in range(rounds):
            child.begin("/doc")
            child.end("/doc")
    pid = start_child(write)
    seen = []
    try:
        os.write(go_w, b"g")
        deadline = time.monotonic() + WAIT
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the writer did not finish")
            seen.append(parent.stamp("/doc"))
    finally:
        os.close(go_r)
        os.close(go_w)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    valid = [s for s in seen if s != -1]
    assert valid == sorted(valid)
    assert all(s & 0x7FFFFF == 0 and 0 <= s >> 23 <= rounds for s in valid)
    assert parent.stamp("/doc") == rounds << 23
