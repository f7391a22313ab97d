"""Cluster-wide writer locks in one Redis node (API.md §13.5; docs/locking.md).

A lock is the key `<prefix><key>` set with `SET NX PX <ttl>` to a random token drawn for each
acquisition; only a script that finds the holder's own token extends or deletes it. Every
acquisition draws a fencing number from one counter once all of its keys are held. Waiters poll
with a short exponential backoff and are woken early when the holder releases: the release
script PUBLISHes on a channel named after the key. That notice is a hint; polling alone is correct.
"""
import asyncio
import contextlib
import logging
import secrets
import time

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from callfs.domain import errors
from callfs.locks.base import Holding

log = logging.getLogger("callfs.locks")

FENCE_KEY = "callfs:fence"
_POLL_FIRST = 0.001
_POLL_MAX = 0.05
_CONNECT_TIMEOUT = 1.0
_IO_TIMEOUT = 1.5
_HEALTH_CHECK_INTERVAL = 10
_MAX_CONNECTIONS = 64
_NOTICE_READ = 1.0        # how long one pub/sub read waits before the reader looks around
_NOTICE_RETRY_MAX = 1.0   # cap of the pause between attempts to reach a lost pub/sub connection
_NOTICE_STALE = 5.0       # a pub/sub health check unanswered this long means a dead connection
_CLOSE_ROUNDS = 20        # close: rounds of cancelling the background tasks, each waiting
_CLOSE_ROUND = 0.1        # this long for them to finish
_RUN = 64                 # locks one script call tries to take (a directory move takes many)

# KEYS[1] the lock, KEYS[2] the fencing counter; ARGV token, ttl in ms, "1" to draw a fence.
# Finding our own token counts as success: a retried SET whose first reply was lost must not
# make the acquisition wait for itself.
_ACQUIRE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if ARGV[3] == '1' then return redis.call('INCR', KEYS[2]) end
return 0
"""

# KEYS the next locks of one acquisition, in its order, then the fencing counter; ARGV token,
# ttl in ms, "1" to draw a fence once every one is taken. Takes the locks in order and stops at
# the first that is another's; returns {how many it took, the fence or 0}. Our own token counts
# as taken, as in _ACQUIRE.
_ACQUIRE_RUN = """
local last = #KEYS - 1
for i = 1, last do
  if not redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) then
    if redis.call('GET', KEYS[i]) ~= ARGV[1] then return {i - 1, 0} end
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  end
end
if ARGV[3] == '1' then return {last, redis.call('INCR', KEYS[#KEYS])} end
return {last, 0}
"""

# KEYS[1] the fencing counter; ARGV floor. The counter never goes back.
_RAISE_FENCE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
"""

# KEYS the locks of one lease; ARGV token, ttl in ms. Returns how many are still the lease's.
_RENEW = """
local held = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    held = held + 1
  end
end
return held
"""

# KEYS the locks of one lease; ARGV token. Deletes only what is still the lease's, and tells
# the waiters of each freed key (the channel is the key's own name).
_RELEASE = """
local freed = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    redis.call('PUBLISH', key, '')
    freed = freed + 1
  end
end
return freed
"""


class LockLost(errors.LockTimeout):
    """The lease's lock lapsed (expired, maybe taken by another writer) before the commit."""

    message = "the path's lock lapsed before the write could commit; try again"


def _encode(name: str) -> bytes:
    # Paths carry undecodable bytes as surrogate escapes (the disk backend does the same), so a
    # key names the path's own bytes, as another node writing that path would spell it.
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogatepass")


def split_addr(addr: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or a bare host (port 6379)."""
    addr = addr.strip()
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif addr.count(":") == 1:
        host, _, port = addr.partition(":")
    else:
        host, port = addr, ""
    return host or "localhost", int(port) if port else 6379


def _unavailable(exc: BaseException) -> errors.ServiceUnavailable:
    return errors.ServiceUnavailable(f"the lock manager is unavailable ({type(exc).__name__})")


class RedisLease:
    """One acquisition of a set of keys: its token, its fencing number, and whether it held."""

    __slots__ = ("_manager", "keys", "token", "fence", "_held", "_pending", "_lost",
                 "_valid_until", "_released")

    def __init__(self, manager: "RedisLockManager", keys: list[bytes], token: bytes):
        self._manager = manager
        self.keys = keys            # full Redis key names, in the order they are taken
        self.token = token
        self.fence = 0
        self._held: list[bytes] = []
        self._pending: list[bytes] = []     # the keys whose SET may be on the wire
        self._lost = False
        self._valid_until = 0.0     # monotonic time until which every held key surely lives
        self._released = False

    @property
    def lost(self) -> bool:
        """True once a key may no longer be ours: renewal found another token, or no renewal
        succeeded for a whole TTL (Redis unreachable, event loop stalled)."""
        return self._lost or time.monotonic() >= self._valid_until

    def check(self) -> None:
        """Raise LockLost (503 LOCK_TIMEOUT) if the lease may have lapsed; call before a commit."""
        if self.lost:
            raise LockLost()

    async def release(self) -> None:
        """Give the keys back; never raises for Redis trouble (the TTL frees them then)."""
        if self._released:
            return
        self._released = True
        self._manager._forget(self)
        # Shielded: a second cancellation of the holder must not leave the keys behind.
        await asyncio.shield(self._manager._spawn_release(self._taken(), self.token))

    def _taken(self) -> list[bytes]:
        held = set(self._held)
        return self._held + [name for name in self._pending if name not in held]

    def _add(self, names: list[bytes], sent: float) -> None:
        """`names` are ours since a SET sent at `sent`."""
        if names and not self._held:
            self._valid_until = sent + self._manager.ttl
        self._held.extend(names)


class RedisLockManager(Holding):
    """Per-path writer locks shared by every CallFS node that uses the same Redis (database 0)."""

    def __init__(self, addr: str, password: str = "", *, ttl: float = 30.0,
                 prefix: str = "callfs:lock:", fence_key: str = FENCE_KEY,
                 poll_max: float = _POLL_MAX, connect_timeout: float = _CONNECT_TIMEOUT,
                 io_timeout: float = _IO_TIMEOUT, max_connections: int = _MAX_CONNECTIONS,
                 client_name: str | None = None):
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        host, port = split_addr(addr)
        self.ttl = ttl
        self._ttl_ms = max(int(ttl * 1000), 1)
        self._prefix = prefix
        self._fence_key = _encode(fence_key)
        self._poll_max = poll_max
        # One quick retry on a dropped connection (a pooled socket the server closed); none on
        # timeouts, so an unreachable Redis costs at most about two connect timeouts.
        retry = Retry(ExponentialBackoff(cap=0.05, base=0.01), 1,
                      supported_errors=(RedisConnectionError,))
        pool = BlockingConnectionPool(
            host=host, port=port, db=0, password=password or None,
            socket_timeout=io_timeout, socket_connect_timeout=connect_timeout,
            health_check_interval=_HEALTH_CHECK_INTERVAL, retry=retry,
            max_connections=max_connections, timeout=io_timeout, client_name=client_name)
        self._redis = Redis.from_pool(pool)
        self._acquire_script = self._redis.register_script(_ACQUIRE)
        self._acquire_run_script = self._redis.register_script(_ACQUIRE_RUN)
        self._renew_script = self._redis.register_script(_RENEW)
        self._release_script = self._redis.register_script(_RELEASE)
        self._raise_fence_script = self._redis.register_script(_RAISE_FENCE)
        self._leases: set[RedisLease] = set()
        self._background: set[asyncio.Task] = set()
        self._tasks: list[asyncio.Task] = []
        # Release notices: local waiters per key, one event per key that the next notice sets.
        self._waiting: dict[bytes, int] = {}
        self._wakeups: dict[bytes, asyncio.Event] = {}
        self._channels: set[bytes] = set()
        self._resubscribe = asyncio.Event()
        self._anchor = _encode(prefix)  # no lock is named by the bare prefix
        self._pubsub = None
        self._reader: asyncio.Task | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        self._start()
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def close(self) -> None:
        self._closed = True
        self._resubscribe.set()
        # Cancel until every task is done: redis-py may swallow a cancellation that lands inside
        # a subscribe call, and the subscription task may start the reader after a first pass.
        for _ in range(_CLOSE_ROUNDS):
            tasks = [t for t in self._tasks + [self._reader] if t is not None and not t.done()]
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=_CLOSE_ROUND)
        self._tasks, self._reader = [], None
        if self._background:
            await asyncio.wait(set(self._background), timeout=_IO_TIMEOUT * 2)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    async def raise_fence(self, floor: int) -> None:
        await self._call(self._raise_fence_script(keys=[self._fence_key], args=(floor,)))

    def _start(self) -> None:
        if self._tasks or self._closed:
            return
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._resubscribe.set()
        self._tasks = [asyncio.create_task(self._renew_loop(), name="callfs-lock-renew"),
                       asyncio.create_task(self._subscriptions(), name="callfs-lock-notices")]

    # -- acquiring -----------------------------------------------------------------------------

    async def acquire(self, keys: list[str], timeout: float | None) -> RedisLease:
        """Take every key (in byte order, so two holders never wait on each other in a cycle)."""
        if self._closed:
            raise errors.ServiceUnavailable("the lock manager is closed")
        self._start()
        names = sorted({_encode(self._prefix + key) for key in keys})
        deadline = time.monotonic() + timeout if timeout is not None and timeout > 0 else None
        lease = RedisLease(self, names, secrets.token_hex(16).encode())
        self._leases.add(lease)
        try:
            if not names:
                lease.fence = await self._call(self._redis.incr(self._fence_key))
                lease._valid_until = float("inf")
            index = 0
            while index < len(names):
                # Free keys go in runs, one round trip each; the first that is another's is
                # waited for alone. Either way every key is taken in the one global order.
                run = names[index:index + _RUN]
                final = index + len(run) == len(names)
                lease._pending = run
                sent = time.monotonic()
                taken, fence = await self._call(self._acquire_run_script(
                    keys=run + [self._fence_key],
                    args=(lease.token, self._ttl_ms, "1" if final else "0")))
                lease._add(run[:taken], sent)
                lease._pending = []
                index += taken
                if taken == len(run):
                    lease.fence = int(fence)
                    continue
                fence, sent = await self._take(lease, names[index], deadline,
                                               index == len(names) - 1)
                lease._add([names[index]], sent)
                lease.fence = fence
                index += 1
            if lease.lost:
                # An earlier key lapsed while a later one was awaited (Redis was away too long).
                raise LockLost()
        except BaseException:
            self._forget(lease)
            lease._released = True
            # An acquisition that failed because Redis is away would only repeat the failure in
            # the log; its keys (if any reached Redis) expire by themselves.
            self._spawn_release(lease._taken(), lease.token, quiet=True)
            raise
        return lease

    async def _take(self, lease: RedisLease, name: bytes, deadline: float | None,
                    fence: bool) -> tuple[int, float]:
        """Set one key that was just found another's, waiting while it is; returns (fence or
        0, time of the SET)."""
        self.observer.lock_waited()
        keys, args = [name, self._fence_key], (lease.token, self._ttl_ms, "1" if fence else "0")
        self._watch(name)
        try:
            delay = _POLL_FIRST
            while True:
                # Take the event before trying, so a notice that lands between a failed try and
                # the wait is not missed.
                wake = self._wakeups.get(name)
                if wake is None:
                    wake = self._wakeups[name] = asyncio.Event()
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise errors.LockTimeout()
                pause = delay if deadline is None else min(delay, deadline - now)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await wake.wait()
                delay = min(delay * 2, self._poll_max)
                lease._pending = [name]  # until a reply says no, the key may be ours
                sent = time.monotonic()
                result = await self._call(self._acquire_script(keys=keys, args=args))
                lease._pending = []
                if result is not None:
                    return int(result), sent
        finally:
            self._unwatch(name)

    @staticmethod
    async def _call(awaitable):
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    # -- releasing ----------------------------------------------------------------------------

    def _forget(self, lease: RedisLease) -> None:
        self._leases.discard(lease)

    def _spawn_release(self, names: list[bytes], token: bytes,
                       quiet: bool = False) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._release(names, token, quiet))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _release(self, names: list[bytes], token: bytes, quiet: bool) -> None:
        if not names:
            return
        try:
            await self._release_script(keys=names, args=(token,))
        except (RedisError, OSError) as exc:
            log.log(logging.DEBUG if quiet else logging.WARNING,
                    "lock release failed; the keys expire by themselves",
                    extra={"keys": [_show(n) for n in names], "error": type(exc).__name__})
            return
        # Wake this process's waiters at once; other processes hear the published notice.
        for name in names:
            self._notice(name)

    # -- renewal ------------------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.ttl / 3)
            leases = [(lease, list(lease._held)) for lease in self._leases if lease._held]
            if not leases:
                continue
            sent = time.monotonic()
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for lease, held in leases:
                        await self._renew_script(keys=held, args=(lease.token, self._ttl_ms),
                                                 client=pipe)
                    results = await pipe.execute(raise_on_error=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: keep trying; the leases' validity runs out
                if not failing:
                    log.warning("lock renewal failed", extra={"error": type(exc).__name__})
                failing = True
                continue
            if failing:
                log.info("lock renewal recovered")
                failing = False
            for (lease, held), result in zip(leases, results):
                if lease._released or isinstance(result, Exception):
                    continue
                if int(result) < len(held):
                    if not lease._lost:
                        log.warning("lock lost before release",
                                    extra={"keys": [_show(n) for n in held], "fence": lease.fence})
                    lease._lost = True
                else:
                    lease._valid_until = sent + self.ttl

    # -- release notices ------------------------------------------------------------------------

    def _watch(self, name: bytes) -> None:
        count = self._waiting.get(name, 0)
        self._waiting[name] = count + 1
        if count == 0 and name not in self._channels:
            self._resubscribe.set()

    def _unwatch(self, name: bytes) -> None:
        count = self._waiting[name] - 1
        if count:
            self._waiting[name] = count
            return
        del self._waiting[name]
        self._wakeups.pop(name, None)
        self._resubscribe.set()

    def _notice(self, name: bytes) -> None:
        wake = self._wakeups.pop(name, None)
        if wake is not None:
            wake.set()

    async def _subscriptions(self) -> None:
        """Keep the pub/sub subscriptions equal to the keys this process waits for.

        Only this task sends on the pub/sub connection and only the reader reads it. The anchor
        channel keeps the connection subscribed at all times, so redis-py never reads a health
        check reply here behind the reader's back.
        """
        pause = 0.05
        while True:
            await self._resubscribe.wait()
            self._resubscribe.clear()
            if self._closed:
                return
            connection = self._pubsub.connection
            if connection is not None and not connection.is_connected:
                # The reader reconnects (and redis-py resubscribes); try again after it.
                self._resubscribe.set()
                await asyncio.sleep(pause)
                pause = min(pause * 2, _NOTICE_RETRY_MAX)
                continue
            wanted = set(self._waiting)
            wanted.add(self._anchor)
            add, drop = wanted - self._channels, self._channels - wanted
            try:
                if add:
                    await self._pubsub.subscribe(*add)
                    self._channels |= add
                if drop:
                    await self._pubsub.unsubscribe(*drop)
                    self._channels -= drop
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # waiters keep polling meanwhile
                log.debug("lock notice subscription failed", extra={"error": type(exc).__name__})
                self._resubscribe.set()
                await asyncio.sleep(pause)
                pause = min(pause * 2, _NOTICE_RETRY_MAX)
                continue
            pause = 0.05
            if self._reader is None and self._pubsub.connection is not None and not self._closed:
                self._reader = asyncio.create_task(self._read_notices(),
                                                   name="callfs-lock-notice-reader")

    async def _read_notices(self) -> None:
        loop = asyncio.get_running_loop()
        pause = 0.05
        while True:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True,
                                                         timeout=_NOTICE_READ)
                connection = self._pubsub.connection
                last = getattr(connection, "next_health_check", None)
                if (message is None and connection is not None and connection.is_connected
                        and isinstance(last, float) and loop.time() > last + _NOTICE_STALE):
                    # A health check went unanswered: the connection is dead without having
                    # been closed (a partition). Drop it; the next read reconnects.
                    log.debug("lock notice connection silent; reconnecting")
                    await connection.disconnect()
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # redis-py reconnects and resubscribes on the next read
                log.debug("lock notice connection lost", extra={"error": type(exc).__name__})
                await asyncio.sleep(pause)
                pause = min(pause * 2, _NOTICE_RETRY_MAX)
                continue
            pause = 0.05
            if message is not None and message.get("type") == "message":
                self._notice(message["channel"])


def _show(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")
