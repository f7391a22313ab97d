"""RedisLockManager against the real Redis on 127.0.0.1:6379 (CALLFS_TEST_REDIS overrides).

Each test works under its own key prefix (`callfs-test-<uuid>:`), with its own fencing counter,
and deletes its keys at the end; Redis itself is never reconfigured or flushed. Lost Redis is
simulated with a closed port and with a TCP relay that the test stops and starts again.
"""
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid

import pytest
import redis
import redis.asyncio as aioredis

from callfs.domain import errors
from callfs.locks.redis import LockLost, RedisLockManager, split_addr
from relay import Relay

REDIS_ADDR = os.environ.get("CALLFS_TEST_REDIS", "127.0.0.1:6379")
HOST, PORT = split_addr(REDIS_ADDR)


def _redis_up() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=1):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _redis_up(), reason=f"no Redis at {REDIS_ADDR}")


def run(coro, limit: float = 20):
    """Run one test body with a hard bound, so a deadlock fails instead of hanging."""
    async def bounded():
        return await asyncio.wait_for(coro, limit)
    return asyncio.run(bounded())


class Namespace:
    def __init__(self):
        self.prefix = f"callfs-test-{uuid.uuid4().hex}:"
        self.lock_prefix = self.prefix + "lock:"
        self.fence_key = self.prefix + "fence"

    def manager(self, addr: str = REDIS_ADDR, **options) -> RedisLockManager:
        return RedisLockManager(addr, prefix=self.lock_prefix, fence_key=self.fence_key,
                                **options)

    def key(self, key: str) -> str:
        return self.lock_prefix + key

    def raw(self) -> aioredis.Redis:
        return aioredis.Redis(host=HOST, port=PORT)

    async def wait_gone(self, raw, key: str, limit: float = 1.0) -> bool:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if await raw.get(self.key(key)) is None:
                return True
            await asyncio.sleep(0.01)
        return False


@pytest.fixture
def ns():
    space = Namespace()
    yield space
    client = redis.Redis(host=HOST, port=PORT)
    try:
        names = list(client.scan_iter(match=space.prefix + "*", count=1000))
        if names:
            client.delete(*names)
    finally:
        client.close()


@contextlib.asynccontextmanager
async def opened(*managers: RedisLockManager):
    for manager in managers:
        await manager.open()
    try:
        yield managers
    finally:
        for manager in managers:
            await manager.close()


# -- mutual exclusion ------------------------------------------------------------------------

def test_mutual_exclusion_across_tasks(ns):
    async def body():
        async with opened(ns.manager(), ns.manager(), ns.manager()) as managers:
            state = {"inside": 0, "most": 0, "count": 0}
            fences = []

            async def writer(manager):
                for _ in range(5):
                    async with manager.hold(["file:/shared"], 10) as lease:
                        state["inside"] += 1
                        state["most"] = max(state["most"], state["inside"])
                        value = state["count"]
                        await asyncio.sleep(0.001)
                        state["count"] = value + 1
                        fences.append(lease.fence)
                        state["inside"] -= 1

            await asyncio.gather(*(writer(managers[i % 3]) for i in range(24)))
            assert state == {"inside": 0, "most": 1, "count": 120}
            # Fences are handed out while the lock is held, so they grow in holding order.
            assert fences == sorted(fences) and len(set(fences)) == 120
            raw = ns.raw()
            assert await raw.get(ns.key("file:/shared")) is None
            await raw.aclose()
    run(body())


CHILD = r"""
import asyncio, json, sys
import redis.asyncio as aioredis
from callfs.locks.redis import RedisLockManager, split_addr

async def main(addr, prefix, rounds):
    host, port = split_addr(addr)
    raw = aioredis.Redis(host=host, port=port)
    locks = RedisLockManager(addr, prefix=prefix + "lock:", fence_key=prefix + "fence")
    await locks.open()
    fences = []
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        for _ in range(rounds):
            async with locks.hold(["file:/counter"], 20) as lease:
                if not await raw.set(prefix + "inside", "1", nx=True):
                    raise SystemExit(3)  # another process is inside too
                value = int(await raw.get(prefix + "counter") or 0)
                await asyncio.sleep(0.002)
                await raw.set(prefix + "counter", value + 1)
                await raw.delete(prefix + "inside")
                fences.append(lease.fence)
    finally:
        await locks.close()
        await raw.aclose()
    print(json.dumps(fences), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def test_mutual_exclusion_across_processes(ns):
    rounds = 40
    children = [subprocess.Popen([sys.executable, "-c", CHILD, REDIS_ADDR, ns.prefix, str(rounds)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for _ in range(2)]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready"
        for child in children:  # start both at once so that they really contend
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=30)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert [child.returncode for child in children] == [0, 0]
    client = redis.Redis(host=HOST, port=PORT)
    try:
        assert int(client.get(ns.prefix + "counter")) == 2 * rounds
        assert client.get(ns.key("file:/counter")) is None
    finally:
        client.close()
    fences = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    for own in fences:
        assert own == sorted(own)
    assert len(set(fences[0]) | set(fences[1])) == 2 * rounds


def test_tokens_differ_per_acquisition(ns):
    async def body():
        raw = ns.raw()
        async with opened(ns.manager(), ns.manager()) as (one, two):
            seen = []
            for manager in (one, one, two, two):
                async with manager.hold(["file:/t"], 5) as lease:
                    stored = await raw.get(ns.key("file:/t"))
                    assert stored == lease.token
                    assert await raw.pttl(ns.key("file:/t")) > 0
                    seen.append((lease.token, lease.fence))
            tokens = [token for token, _ in seen]
            assert len(set(tokens)) == 4
            fences = [fence for _, fence in seen]
            assert fences == sorted(fences) and len(set(fences)) == 4
        await raw.aclose()
    run(body())


def test_opposite_order_holders_do_not_deadlock(ns):
    async def body():
        async with opened(ns.manager(), ns.manager()) as (one, two):
            orders = []

            async def writer(manager, keys):
                for _ in range(25):
                    async with manager.hold(keys, 5) as lease:
                        orders.append(list(lease.keys))
                        await asyncio.sleep(0.001)

            await asyncio.gather(writer(one, ["file:/x", "file:/y"]),
                                 writer(two, ["file:/y", "file:/x"]),
                                 writer(one, ["file:/y", "dir:/x"]),
                                 writer(two, ["dir:/x", "file:/y", "file:/x"]))
            # Every holder takes its keys in one global order.
            assert all(keys == sorted(keys) for keys in orders)
            raw = ns.raw()
            for key in ("file:/x", "file:/y", "dir:/x"):
                assert await raw.get(ns.key(key)) is None
            await raw.aclose()
    run(body())



async def _script_calls(raw) -> int:
    stats = await raw.info("commandstats")
    return sum(stats.get(name, {}).get("calls", 0)
               for name in ("cmdstat_evalsha", "cmdstat_eval"))


def test_many_keys_go_in_runs_and_wait_for_one_held_in_the_middle(ns):
    """A directory move's thousand keys take a few round trips, not a thousand; a key another
    holds stops the run there: what came before it stays taken, the rest follows its release."""
    async def body():
        raw = ns.raw()
        keys = [f"file:/big/{i:04d}" for i in range(1000)]
        async with opened(ns.manager(), ns.manager()) as (holder, mover):
            before = await _script_calls(raw)
            async with mover.hold(keys, 5) as lease:
                assert await _script_calls(raw) - before <= len(keys) // 64 + 5
                assert set(await raw.mget([ns.key(k) for k in keys])) == {lease.token}
                first_fence = lease.fence
            blocker = await holder.acquire([keys[500]], 5)
            waiting = asyncio.create_task(mover.acquire(keys, 5))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            assert await raw.get(ns.key(keys[499])) is not None  # taken before the held one
            assert await raw.get(ns.key(keys[501])) is None       # not before its release
            await blocker.release()
            lease = await waiting
            assert set(await raw.mget([ns.key(k) for k in keys])) == {lease.token}
            assert first_fence < blocker.fence < lease.fence
            await lease.release()
            assert await raw.exists(*[ns.key(k) for k in keys]) == 0
        await raw.aclose()
    run(body())


# -- waiting -------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["other manager", "same manager"])
def test_waiter_is_woken_promptly_on_release(ns, where):
    async def body():
        # A polling cap of one second: only the release notice can make the waiter quick.
        waiter = ns.manager(poll_max=1.0)
        holder = waiter if where == "same manager" else ns.manager()
        async with opened(*{waiter, holder}):
            for _ in range(3):
                lease = await holder.acquire(["file:/w"], 5)
                got = asyncio.Event()

                async def wait():
                    async with waiter.hold(["file:/w"], 5):
                        got.set()
                        stamp = time.monotonic()
                    return stamp

                task = asyncio.create_task(wait())
                await asyncio.sleep(0.6)  # the waiter is deep into its backoff by now
                assert not got.is_set()
                released = time.monotonic()
                await lease.release()
                latency = await task - released
                assert latency < 0.1, latency
    run(body())


def test_waiter_polls_when_no_notice_comes(ns):
    async def body():
        raw = ns.raw()
        # A holder that vanishes without releasing (a crashed node): its key just expires.
        await raw.set(ns.key("file:/p"), b"someone-else", px=300)
        async with opened(ns.manager()) as (manager,):
            started = time.monotonic()
            async with manager.hold(["file:/p"], 3):
                waited = time.monotonic() - started
        assert 0.25 <= waited < 0.6, waited  # TTL, plus at most one polling step of ~50 ms
        await raw.aclose()
    run(body())


def test_timeout_raises_lock_timeout_and_frees_taken_keys(ns):
    async def body():
        raw = ns.raw()
        async with opened(ns.manager(), ns.manager()) as (holder, waiter):
            async with holder.hold(["file:/z"], 5) as lease:
                started = time.monotonic()
                with pytest.raises(errors.LockTimeout) as caught:
                    await waiter.acquire(["file:/a", "file:/z"], 0.3)
                elapsed = time.monotonic() - started
                assert 0.29 <= elapsed < 0.6, elapsed
                assert caught.value.status == 503 and caught.value.code == "LOCK_TIMEOUT"
                assert not isinstance(caught.value, LockLost)
                # /a was taken first and is given back; /z still belongs to the holder.
                assert await ns.wait_gone(raw, "file:/a")
                assert await raw.get(ns.key("file:/z")) == lease.token
        await raw.aclose()
    run(body())


# -- renewal, loss and fencing -----------------------------------------------------------------

def test_renewal_keeps_the_lock_past_its_ttl(ns):
    async def body():
        raw = ns.raw()
        async with opened(ns.manager(ttl=0.5), ns.manager(ttl=0.5)) as (holder, other):
            async with holder.hold(["file:/r"], 5) as lease:
                await asyncio.sleep(1.6)  # more than three TTLs of work
                assert await raw.get(ns.key("file:/r")) == lease.token
                assert 0 < await raw.pttl(ns.key("file:/r")) <= 500
                assert not lease.lost
                lease.check()
                with pytest.raises(errors.LockTimeout):
                    await other.acquire(["file:/r"], 0.2)
            assert await raw.get(ns.key("file:/r")) is None
        await raw.aclose()
    run(body())


def test_expired_lock_taken_by_another_is_lost_and_fenced(ns):
    async def body():
        raw = ns.raw()
        async with opened(ns.manager(ttl=0.5), ns.manager()) as (old, new):
            first = await old.acquire(["file:/f"], 5)
            await raw.pexpire(ns.key("file:/f"), 1)  # the key lapses under its holder
            second = await new.acquire(["file:/f"], 2)
            assert second.fence > first.fence
            assert second.token != first.token
            deadline = time.monotonic() + 1.0  # the old holder's next renewal notices
            while not first.lost and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert first.lost
            with pytest.raises(LockLost) as caught:
                first.check()
            assert isinstance(caught.value, errors.LockTimeout)
            assert caught.value.status == 503 and caught.value.code == "LOCK_TIMEOUT"
            assert not second.lost
            second.check()
            # The old holder's release must leave the new holder's key alone.
            await first.release()
            assert await raw.get(ns.key("file:/f")) == second.token
            await second.release()
            assert await raw.get(ns.key("file:/f")) is None
        await raw.aclose()
    run(body())


# -- cancellation --------------------------------------------------------------------------------

def test_cancelled_waiter_leaves_nothing_locked(ns):
    async def body():
        raw = ns.raw()
        async with opened(ns.manager(), ns.manager(), ns.manager()) as (holder, waiter, third):
            lease = await holder.acquire(["file:/z"], 5)
            task = asyncio.create_task(waiter.acquire(["file:/a", "file:/z"], None))
            await asyncio.sleep(0.2)
            assert await raw.get(ns.key("file:/a")) is not None  # the waiter holds /a meanwhile
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await ns.wait_gone(raw, "file:/a")
            async with third.hold(["file:/a"], 0.5):
                pass
            await lease.release()
            # The cancelled waiter did not take /z once it was free.
            async with third.hold(["file:/z"], 0.5):
                pass
        await raw.aclose()
    run(body())


def test_cancelled_holder_leaves_nothing_locked(ns):
    async def body():
        raw = ns.raw()
        async with opened(ns.manager()) as (manager,):
            inside = asyncio.Event()

            async def holder():
                async with manager.hold(["file:/a", "dir:/b"], 5):
                    inside.set()
                    await asyncio.sleep(60)

            task = asyncio.create_task(holder())
            await inside.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await raw.get(ns.key("file:/a")) is None
            assert await raw.get(ns.key("dir:/b")) is None
        await raw.aclose()
    run(body())


def test_cancellation_at_any_point_frees_keys_within_the_ttl(ns):
    async def body():
        raw = ns.raw()
        rng = random.Random(7)
        async with opened(ns.manager(ttl=1.0), ns.manager(ttl=1.0)) as managers:
            async def holder(manager, keys):
                async with manager.hold(keys, 5):
                    await asyncio.sleep(0.005)

            tasks = []
            for i in range(60):
                keys = rng.sample(["file:/c1", "file:/c2", "dir:/c3"], 2)
                tasks.append(asyncio.create_task(holder(managers[i % 2], keys)))
                await asyncio.sleep(rng.uniform(0, 0.002))
                victim = rng.choice(tasks)
                victim.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            deadline = time.monotonic() + 2.0  # the TTL, and some slack
            left = None
            while time.monotonic() < deadline:
                left = [name async for name in raw.scan_iter(match=ns.lock_prefix + "*")]
                if not left:
                    break
                await asyncio.sleep(0.05)
            assert not left
        await raw.aclose()
    run(body())


# -- Redis away and back -------------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_redis_is_service_unavailable_quickly(ns):
    async def body():
        manager = ns.manager(f"127.0.0.1:{_closed_port()}")
        started = time.monotonic()
        with pytest.raises(errors.ServiceUnavailable):
            await manager.open()
        assert time.monotonic() - started < 2.0
        started = time.monotonic()
        with pytest.raises(errors.ServiceUnavailable) as caught:
            async with manager.hold(["file:/u"], 5):
                pass
        assert time.monotonic() - started < 2.0
        assert caught.value.status == 503 and caught.value.code == "SERVICE_UNAVAILABLE"
        await manager.close()
    run(body())


def test_recovers_when_redis_returns(ns):
    async def body():
        raw = ns.raw()
        relay = Relay(PORT, HOST)
        await relay.start()
        manager = ns.manager(f"127.0.0.1:{relay.port}")
        await manager.open()
        try:
            async with manager.hold(["file:/g"], 5):
                pass
            # Redis goes away while a lease is held: the release logs, does not raise, and
            # the key is left to its TTL.
            async with manager.hold(["file:/g"], 5) as lease:
                await relay.stop()
            assert await raw.get(ns.key("file:/g")) == lease.token
            assert 0 < await raw.pttl(ns.key("file:/g")) <= 30_000
            await raw.delete(ns.key("file:/g"))
            started = time.monotonic()
            with pytest.raises(errors.ServiceUnavailable):
                await manager.acquire(["file:/g"], 5)
            assert time.monotonic() - started < 2.0
            await relay.start()
            async with manager.hold(["file:/g"], 5) as lease:
                assert await raw.get(ns.key("file:/g")) == lease.token
            assert await raw.get(ns.key("file:/g")) is None
        finally:
            await manager.close()
            await relay.stop()
            await raw.aclose()
    run(body())


def test_reconnects_after_client_kill(ns):
    async def body():
        raw = ns.raw()
        name = "callfs-test-" + uuid.uuid4().hex[:12]
        async with opened(ns.manager(client_name=name, poll_max=1.0), ns.manager()) as (
                manager, other):
            async with manager.hold(["file:/k"], 5):
                pass
            # A waiter makes the manager's pub/sub connection subscribe to /k.
            lease = await other.acquire(["file:/k"], 5)
            task = asyncio.create_task(manager.acquire(["file:/k"], 5))
            await asyncio.sleep(0.1)
            killed = 0
            for client in await raw.client_list():
                if client.get("name") == name:
                    await raw.execute_command("CLIENT", "KILL", "ID", client["id"])
                    killed += 1
            assert killed >= 2  # commands and pub/sub
            await asyncio.sleep(0.6)  # pub/sub reconnects and subscribes again
            released = time.monotonic()
            await lease.release()
            waiting = await task
            assert time.monotonic() - released < 0.3  # woken by the notice, not by polling
            await waiting.release()
            for _ in range(3):  # the command connections come back too
                async with manager.hold(["file:/k"], 2) as fresh:
                    assert await raw.get(ns.key("file:/k")) == fresh.token
        await raw.aclose()
    run(body())
