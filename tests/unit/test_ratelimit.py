"""callfs._native.ratelimit against its plain-Python oracle, and across processes.

Sequences of (endpoint, address, time) must get the same answers and leave the same buckets in
both. Forked processes that hammer one address share one bucket: together they get exactly the
tokens it holds. A process killed while it holds a group's lock leaves the table usable
(bounded waits; every child is reaped).
"""
import ipaddress
import mmap
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the oracle sits beside this file
    sys.path.insert(0, _HERE)

import ratelimit_oracle as oracle  # noqa: E402
from children import WAIT, reap, run_in_child, start_child  # noqa: E402,F401
from callfs._native import ratelimit as native  # noqa: E402

MS = 1_000_000
S = 1_000_000_000
T0 = 1_000 * S  # a monotonic time well past zero
LINKS, DOWNLOAD = native.LINKS_GENERATE, native.DOWNLOAD


def examples(count):
    return settings(max_examples=count, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(call, *args):
    try:
        return call(*args)
    except ValueError as exc:
        return type(exc).__name__


# --- processes --------------------------------------------------------------------------------


def dead_pid():
    """A pid no process has: a child's, once it is reaped."""
    pid = start_child(lambda: None)
    reap(pid)
    return pid


class Shared:
    """Words in memory shared with forked children (MAP_SHARED, anonymous)."""

    def __init__(self, words):
        self.memory = mmap.mmap(-1, 8 * words)

    def __getitem__(self, i):
        return struct.unpack_from("=q", self.memory, 8 * i)[0]

    def __setitem__(self, i, value):
        struct.pack_into("=q", self.memory, 8 * i, value)


# --- exact refill -----------------------------------------------------------------------------

IMPLEMENTATIONS = {"native": native.RateLimiter, "oracle": oracle.RateLimiter}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def limiter(request):
    return IMPLEMENTATIONS[request.param](slots=1024)


def test_links_generate_one_token_per_10_ms(limiter):
    assert limiter.allow_at(LINKS, "192.0.2.1", T0)
    assert limiter.allow_at(LINKS, "192.0.2.1", T0 + 10 * MS)  # 10 ms later: one more token
    assert not limiter.allow_at(LINKS, "192.0.2.1", T0 + 15 * MS)  # 5 ms later: half a token
    assert limiter.allow_at(LINKS, "192.0.2.1", T0 + 20 * MS)
    assert not limiter.allow_at(LINKS, "192.0.2.1", T0 + 20 * MS)
    assert not limiter.allow_at(LINKS, "192.0.2.1", T0 + 30 * MS - 1)  # one ns short
    assert limiter.allow_at(LINKS, "192.0.2.1", T0 + 30 * MS)
    # capacity 1: a long pause gives back one token, not many
    assert limiter.allow_at(LINKS, "192.0.2.1", T0 + 5 * S)
    assert not limiter.allow_at(LINKS, "192.0.2.1", T0 + 5 * S)


def test_download_burst_of_5_then_10_per_second(limiter):
    assert [limiter.allow_at(DOWNLOAD, "192.0.2.2", T0) for _ in range(6)] == [True] * 5 + [False]
    assert not limiter.allow_at(DOWNLOAD, "192.0.2.2", T0 + 50 * MS)  # half a token
    assert limiter.allow_at(DOWNLOAD, "192.0.2.2", T0 + 100 * MS)  # 100 ms later: one more
    assert not limiter.allow_at(DOWNLOAD, "192.0.2.2", T0 + 100 * MS)
    assert [limiter.allow_at(DOWNLOAD, "192.0.2.2", T0 + 400 * MS) for _ in range(4)] == [
        True, True, True, False]
    assert [limiter.allow_at(DOWNLOAD, "192.0.2.2", T0 + 10 * S) for _ in range(6)] == [
        True] * 5 + [False]


def test_buckets_are_per_endpoint_and_per_address(limiter):
    assert limiter.allow_at(LINKS, "192.0.2.3", T0)
    assert not limiter.allow_at(LINKS, "192.0.2.3", T0)
    assert limiter.allow_at(LINKS, "192.0.2.4", T0)
    assert limiter.allow_at(DOWNLOAD, "192.0.2.3", T0)
    assert limiter.allow_at(LINKS, "2001:db8::3", T0)


def test_a_clock_behind_the_bucket_refills_nothing(limiter):
    assert limiter.allow_at(LINKS, "192.0.2.5", T0 + 50 * MS)
    assert not limiter.allow_at(LINKS, "192.0.2.5", T0)
    assert limiter.bucket(LINKS, "192.0.2.5") == (0, T0 + 50 * MS)
    assert limiter.allow_at(LINKS, "192.0.2.5", T0 + 60 * MS)


def test_fixed_point_state(limiter):
    limiter.allow_at(DOWNLOAD, "192.0.2.6", T0)
    assert limiter.bucket(DOWNLOAD, "192.0.2.6") == (4 * oracle.TOKEN, T0)
    limiter.allow_at(DOWNLOAD, "192.0.2.6", T0 + 1)  # 1 ns: 10 units
    assert limiter.bucket(DOWNLOAD, "192.0.2.6") == (3 * oracle.TOKEN + 10, T0 + 1)
    assert limiter.bucket(LINKS, "192.0.2.6") is None


def test_real_clock():
    table = native.RateLimiter(slots=64)
    before = time.monotonic_ns()
    assert table.allow(LINKS, "192.0.2.7")
    tokens, last = table.bucket(LINKS, "192.0.2.7")
    assert tokens == 0 and before <= last <= native.monotonic_ns() <= time.monotonic_ns()


@pytest.mark.parametrize("call", [
    lambda t: t.allow_at(2, "192.0.2.1", T0),
    lambda t: t.allow_at(-1, "192.0.2.1", T0),
    lambda t: t.allow_at(LINKS, "192.0.2.1", -1),
    lambda t: t.bucket(5, "192.0.2.1"),
])
def test_refused_arguments(limiter, call):
    with pytest.raises(ValueError):
        call(limiter)


# --- addresses --------------------------------------------------------------------------------

REFUSED = ["x", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1.2.3.4 ", " 1.2.3.4",
           "1.2.3.4%eth0", "fe80::1%", "::1::", "12345::", "::ffff:01.2.3.4", "1.2.3.4\0",
           "::1\0", ":", "[::1]", "1.2.3.4:80", "a" * 100, "é", "::g", "\ud800", "::\ud800"]


@pytest.mark.parametrize("address", REFUSED)
def test_refused_addresses(limiter, address):
    with pytest.raises(ValueError):
        limiter.allow_at(LINKS, address, T0)


ADDRESSES = st.one_of(
    st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
    st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
    st.integers(0, 2**32 - 1).map(lambda n: ipaddress.IPv6Address((0xFFFF << 32) | n)),
    st.sampled_from([ipaddress.ip_address(a) for a in ("0.0.0.0", "255.255.255.255", "::",
                                                       "::1", "fe80::1", "::ffff:0:0")]),
)


def spellings(address):
    """Every way a peer address may be written for one client."""
    if address.version == 4:
        mapped = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)
        return [str(address), str(mapped), mapped.exploded, mapped.exploded.upper(),
                f"::ffff:{address}", f"0:0:0:0:0:ffff:{address}"]
    found = [str(address), address.exploded, address.exploded.upper(), f"{address}%eth0"]
    if address.ipv4_mapped is not None:
        found += spellings(address.ipv4_mapped)
    return found


@examples(300)
@given(ADDRESSES)
def test_every_spelling_is_one_client(address):
    table = native.RateLimiter(slots=64)
    names = spellings(address)
    words = oracle.address_words(names[0])
    for name in names:
        assert oracle.address_words(name) == words
        assert table.group_of(DOWNLOAD, name) == table.group_of(DOWNLOAD, names[0])
    for i in range(5):
        assert table.allow_at(DOWNLOAD, names[i % len(names)], T0)
    for name in names:
        assert not table.allow_at(DOWNLOAD, name, T0)


def test_ipv4_mapped_ipv6_is_the_ipv4_client(limiter):
    assert limiter.allow_at(LINKS, "::ffff:198.51.100.9", T0)
    assert not limiter.allow_at(LINKS, "198.51.100.9", T0)
    assert not limiter.allow_at(LINKS, "::FFFF:c633:6409", T0)
    assert limiter.bucket(LINKS, "198.51.100.9") == limiter.bucket(LINKS, "::ffff:198.51.100.9")
    # the IPv4-compatible (deprecated) form is another address
    assert limiter.allow_at(LINKS, "::198.51.100.9", T0)


def test_no_address_is_one_client(limiter):
    """A peer without an IP address (callfs.http.ratelimit.peer_ip gives "") is one bucket."""
    assert limiter.allow_at(LINKS, "", T0)
    assert not limiter.allow_at(LINKS, "", T0)
    assert limiter.allow_at(LINKS, "0.0.0.0", T0)


@examples(300)
@given(st.integers(1, native.MAX_SLOTS), st.sampled_from([LINKS, DOWNLOAD]), ADDRESSES)
def test_groups_agree(slots, endpoint, address):
    groups = -(-slots // native.GROUP_SLOTS)
    assert native.table_bytes(slots) == oracle.table_bytes(slots)
    name = str(address)
    expected = oracle.group_index(groups, endpoint, *oracle.address_words(name))
    assert 0 <= expected < groups
    if slots <= 1 << 14:  # mapping the largest tables in a loop would be slow
        assert native.RateLimiter(slots=slots).group_of(endpoint, name) == expected


# --- native against the oracle ----------------------------------------------------------------

POOL = ["192.0.2.1", "192.0.2.2", "::ffff:192.0.2.2", "2001:db8::1", "2001:db8::2", "", "::1",
        "10.0.0.1", "fe80::1%lo"]
OPS = st.lists(st.tuples(st.sampled_from([LINKS, DOWNLOAD]), st.sampled_from(POOL),
                         st.integers(-20 * MS, 300 * MS) | st.sampled_from([0, 1, 10 * MS, 700 * S])),
               max_size=120)


def replay(slots, ops):
    table, expected = native.RateLimiter(slots=slots), oracle.RateLimiter(slots=slots)
    now = T0
    for endpoint, address, step in ops:
        now = max(0, now + step)
        assert table.allow_at(endpoint, address, now) == expected.allow_at(endpoint, address, now)
    for endpoint in (LINKS, DOWNLOAD):
        for address in POOL:
            assert table.bucket(endpoint, address) == expected.bucket(endpoint, address)


@examples(400)
@given(OPS)
@example([(DOWNLOAD, "192.0.2.1", 0)] * 7 + [(DOWNLOAD, "192.0.2.1", 100 * MS)])
def test_agrees_with_oracle(ops):
    replay(1 << 12, ops)  # room for every key: nothing is forgotten


@examples(400)
@given(OPS)
def test_agrees_with_oracle_when_forgetting(ops):
    replay(8, ops)  # one group of 8 slots for 18 keys: the eviction rule decides


@examples(100)
@given(st.lists(st.tuples(st.sampled_from([LINKS, DOWNLOAD]), st.integers(0, 2**32 - 1),
                          st.integers(0, 50 * MS)), max_size=300))
def test_agrees_under_a_flood_of_addresses(ops):
    table, expected = native.RateLimiter(slots=16), oracle.RateLimiter(slots=16)
    now = T0
    for endpoint, number, step in ops:
        now += step
        address = str(ipaddress.IPv4Address(number))
        assert table.allow_at(endpoint, address, now) == expected.allow_at(endpoint, address, now)
        assert table.bucket(endpoint, address) == expected.bucket(endpoint, address)


# --- forgetting -------------------------------------------------------------------------------

CROWD = [f"203.0.113.{i}" for i in range(1, 10)]  # one group when the table has 8 slots


def test_idle_entries_are_forgotten_after_10_minutes(limiter):
    table = type(limiter)(slots=8)
    for i, address in enumerate(CROWD[:8]):
        for _ in range(6):
            table.allow_at(DOWNLOAD, address, T0 + i * MS)
    assert all(table.bucket(DOWNLOAD, a) is not None for a in CROWD[:8])
    # 10 minutes later every bucket has refilled; a new client takes the first slot
    later = T0 + oracle.IDLE_NS
    assert table.allow_at(DOWNLOAD, CROWD[8], later)
    assert table.bucket(DOWNLOAD, CROWD[0]) is None
    assert all(table.bucket(DOWNLOAD, a) is not None for a in CROWD[1:])
    # and a returning client finds a full bucket, whether it was forgotten or not
    for address in CROWD[:2]:
        assert [table.allow_at(DOWNLOAD, address, later) for _ in range(6)] == [True] * 5 + [False]


def test_a_full_bucket_is_forgotten_before_a_depleted_one(limiter):
    table = type(limiter)(slots=8)
    for i, address in enumerate(CROWD[:8]):
        table.allow_at(LINKS if i == 5 else DOWNLOAD, address, T0 + i * MS)
    # at +20 ms only the links bucket (capacity 1, 10 ms to refill) is full again
    assert table.allow_at(DOWNLOAD, CROWD[8], T0 + 20 * MS)
    assert table.bucket(LINKS, CROWD[5]) is None
    assert table.bucket(DOWNLOAD, CROWD[0]) == (4 * oracle.TOKEN, T0)


def test_a_flood_forgets_the_stalest_and_never_refuses_room(limiter):
    table = type(limiter)(slots=8)
    for i, address in enumerate(CROWD[:8]):
        for _ in range(5):
            assert table.allow_at(DOWNLOAD, address, T0 + i * MS)
    # every slot holds a depleted bucket: the new client still gets one, the stalest goes
    assert table.allow_at(DOWNLOAD, CROWD[8], T0 + 8 * MS)
    assert table.bucket(DOWNLOAD, CROWD[0]) is None
    assert not table.allow_at(DOWNLOAD, CROWD[1], T0 + 8 * MS)
    # the forgotten client comes back to a full bucket: the documented trade-off
    assert [table.allow_at(DOWNLOAD, CROWD[0], T0 + 9 * MS) for _ in range(6)] == [True] * 5 + [
        False]


# --- across processes -------------------------------------------------------------------------

HAMMERS = 3
CLIENTS = [f"198.51.100.{i}" for i in range(100, 132)]


@pytest.mark.parametrize("endpoint, steps", [
    (DOWNLOAD, [1, 3, 5, 2, 1, 4, 7, 1, 1, 2] + [5] * 400),  # tokens' worth of time (100 ms)
    (LINKS, [1, 2, 1, 1, 5, 1] + [1] * 400),  # 10 ms each; capacity 1 caps the refill
])
def test_processes_share_one_bucket_exactly(endpoint, steps):
    """Forked processes hammer the same addresses, in the same order, while the test moves a
    shared clock on once every bucket is empty: each step gives every bucket min(capacity,
    step) tokens, so together they get exactly capacity + the sum of those per address,
    however their calls interleave."""
    rate, capacity = native.RATES[endpoint]
    interval = S // rate
    table = native.RateLimiter(slots=1024)  # made before the fork, as the master does
    shared = Shared(2 + HAMMERS)  # now, stop, then the tokens each child got
    shared[0] = now = T0

    def hammer(i):
        allow_at = table.allow_at
        taken = 0
        while not shared[1]:
            current = shared[0]
            for address in CLIENTS:
                taken += allow_at(endpoint, address, current)
            shared[2 + i] = taken

    def drained():
        deadline = time.monotonic() + WAIT
        while any(table.bucket(endpoint, a) != (0, now) for a in CLIENTS):
            if time.monotonic() > deadline:
                pytest.fail("the children stopped calling")

    children = [start_child(lambda i=i: hammer(i)) for i in range(HAMMERS)]
    try:
        drained()
        for step in steps:
            now += step * interval
            shared[0] = now
            drained()
    finally:
        shared[1] = 1
        statuses = [reap(pid) for pid in children]
    assert statuses == [0] * HAMMERS
    total = sum(shared[2 + i] for i in range(HAMMERS))
    assert total == len(CLIENTS) * (capacity + sum(min(capacity, step) for step in steps))


def test_processes_on_the_real_clock_never_get_more_than_the_bucket_holds():
    table = native.RateLimiter(slots=1024)
    shared = Shared(2 + HAMMERS)

    def hammer(i):
        deadline = time.monotonic() + 0.3
        taken = 0
        while time.monotonic() < deadline:
            taken += table.allow(LINKS, "198.51.100.2")
        shared[2 + i] = taken

    start = native.monotonic_ns()
    children = [start_child(lambda i=i: hammer(i)) for i in range(HAMMERS)]
    assert [reap(pid) for pid in children] == [0] * HAMMERS
    elapsed = native.monotonic_ns() - start
    total = sum(shared[2 + i] for i in range(HAMMERS))
    assert 1 <= total <= 1 + elapsed * 100 // S
    assert table.bucket(LINKS, "198.51.100.2") is not None


def test_a_worker_forked_later_shares_the_buckets():
    table = native.RateLimiter(slots=1024)
    for _ in range(3):
        assert table.allow_at(DOWNLOAD, "198.51.100.3", T0)

    def child():
        assert table.allow_at(DOWNLOAD, "198.51.100.3", T0)
        assert table.allow_at(DOWNLOAD, "198.51.100.3", T0)
        assert not table.allow_at(DOWNLOAD, "198.51.100.3", T0)

    assert run_in_child(child) == 0
    assert table.bucket(DOWNLOAD, "198.51.100.3") == (0, T0)


def test_a_process_killed_mid_loop_leaves_the_table_usable():
    table = native.RateLimiter(slots=8)  # one group: every call takes the same lock
    shared = Shared(1)
    group = table.group_of(DOWNLOAD, "198.51.100.4")
    for _ in range(12):
        shared[0] = 0

        def loop():
            calls = 0
            while True:
                table.allow(DOWNLOAD, "198.51.100.4")
                calls += 1
                if calls % 256 == 0:
                    shared[0] = calls

        pid = start_child(loop)
        deadline = time.monotonic() + WAIT
        while shared[0] < 2048:
            assert time.monotonic() < deadline, "the child never ran"
            time.sleep(0.001)
        os.kill(pid, signal.SIGKILL)
        status = reap(pid)
        assert os.WIFSIGNALED(status)
        assert table.holder(group) in (0, pid)  # killed between calls, or holding the lock

        def after():
            assert table.allow(DOWNLOAD, "198.51.100.5") in (True, False)
            assert table.allow(LINKS, "198.51.100.4") in (True, False)

        assert run_in_child(after) == 0
        assert table.holder(group) == 0


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    path = tmp_path / "limits"
    path.write_bytes(b"\0" * native.table_bytes(8))
    fd = os.open(path, os.O_RDWR)
    try:
        table = native.RateLimiter(slots=8, fd=fd)
        assert table.group_of(LINKS, "198.51.100.6") == 0
        os.pwrite(fd, struct.pack("=Q", dead_pid()), native.HEADER_BYTES)
        assert table.holder(0) != 0

        def child():
            assert table.allow_at(LINKS, "198.51.100.6", T0)
            assert not table.allow_at(LINKS, "198.51.100.6", T0)

        assert run_in_child(child) == 0
        assert table.holder(0) == 0
        # a lock word holding this very pid is a dead predecessor's (no process takes it twice)
        def own():
            os.pwrite(fd, struct.pack("=Q", os.getpid()), native.HEADER_BYTES)
            assert table.allow_at(LINKS, "198.51.100.6", T0 + 10 * MS)

        assert run_in_child(own) == 0
        assert table.holder(0) == 0
    finally:
        os.close(fd)


def test_unrelated_processes_share_a_table_file(tmp_path):
    path = tmp_path / "limits"
    path.write_bytes(b"\0" * native.table_bytes(64))
    script = (
        "import os, sys\n"
        "from callfs._native import ratelimit as r\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "t = r.RateLimiter(slots=64, fd=fd)\n"
        "print(sum(t.allow_at(r.DOWNLOAD, '2001:db8::7', 10**12) for _ in range(3)))\n"
    )
    # run from the scratch directory: the installed package, not the source tree's
    runs = [subprocess.run([sys.executable, "-c", script, str(path)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=WAIT, check=True).stdout.strip()
            for _ in range(2)]
    assert runs == ["3", "2"]
    fd = os.open(path, os.O_RDWR)
    try:
        assert native.RateLimiter(slots=64, fd=fd).bucket(DOWNLOAD, "2001:db8::7") == (0, 10**12)
    finally:
        os.close(fd)


def test_a_file_must_fit_the_table(tmp_path):
    with tempfile.TemporaryFile() as f:
        os.ftruncate(f.fileno(), native.table_bytes(64) - 1)
        with pytest.raises(ValueError):
            native.RateLimiter(slots=64, fd=f.fileno())
    with tempfile.TemporaryFile() as f:
        os.ftruncate(f.fileno(), native.table_bytes(128))
        native.RateLimiter(slots=128, fd=f.fileno())
        with pytest.raises(ValueError):  # a table of another size
            native.RateLimiter(slots=64, fd=f.fileno())
    with tempfile.TemporaryFile() as f:
        f.write(b"not a table".ljust(native.table_bytes(8), b"\0"))
        f.flush()
        with pytest.raises(ValueError):
            native.RateLimiter(slots=8, fd=f.fileno())
    for slots in (0, native.MAX_SLOTS + 1):
        with pytest.raises(ValueError):
            native.RateLimiter(slots=slots)
    assert native.RateLimiter(slots=9).slots == 16


def test_a_live_holder_is_waited_for(tmp_path):
    path = tmp_path / "limits"
    path.write_bytes(b"\0" * native.table_bytes(8))
    fd = os.open(path, os.O_RDWR)
    try:
        table = native.RateLimiter(slots=8, fd=fd)
        os.pwrite(fd, struct.pack("=Q", os.getpid()), native.HEADER_BYTES)  # held by the test
        shared = Shared(1)

        def child():
            shared[0] = 1 + table.allow_at(DOWNLOAD, "198.51.100.8", T0)

        pid = start_child(child)
        time.sleep(0.2)
        assert shared[0] == 0  # still waiting: the holder is alive
        os.pwrite(fd, struct.pack("=Q", 0), native.HEADER_BYTES)
        assert os.WEXITSTATUS(reap(pid)) == 0
        assert shared[0] == 2
    finally:
        os.close(fd)


# --- the HTTP side ----------------------------------------------------------------------------

class FakeRequest:
    def __init__(self, peer):
        self.peer = peer


def test_too_many_is_api_11s_answer():
    from callfs.http.ratelimit import too_many
    response = too_many()
    assert response.status == 429
    assert response.headers == b"Content-Type: application/json\r\n"  # no Retry-After
    assert response.body == b'{"code":"RATE_LIMIT_EXCEEDED","message":"Rate limit exceeded"}'
    assert too_many() is not response  # the router adds headers to each response it sends


@pytest.mark.parametrize("peer, expected", [
    (("203.0.113.9", 50123), "203.0.113.9"),
    (("2001:db8::9", 50123, 0, 0), "2001:db8::9"),
    (("::ffff:203.0.113.9", 50123, 0, 0), "::ffff:203.0.113.9"),
    (None, ""),
    ("/run/callfs.sock", ""),
    ((), ""),
])
def test_peer_ip(peer, expected):
    from callfs.http.ratelimit import DOWNLOAD as ENDPOINT, peer_ip
    address = peer_ip(FakeRequest(peer))
    assert address == expected
    assert native.RateLimiter(slots=8).allow(ENDPOINT, address)
