"""The lock manager protocol: per-path exclusive locks for writers (ARCHITECTURE.md, Locks).

Keys follow the Redis layout of API.md §13.5: `file:<path>` for file writes, `dir:<path>` for
directory creation and deletion. A lease carries a fencing number that grows with every
acquisition, so a writer can prove it is newer than the one before it.
"""
import asyncio
import contextlib
import time
from typing import Protocol

from callfs.domain.observer import Silent
from callfs.domain import errors


def file_key(path: str) -> str:
    return "file:" + path


def dir_key(path: str) -> str:
    return "dir:" + path


class Lease(Protocol):
    fence: int

    def check(self) -> None:
        """Raise (503 LOCK_TIMEOUT) when the lease may have lapsed: called just before a write
        publishes, so a writer that lost its lock changes nothing."""

    async def release(self) -> None: ...


class LockObserver(Protocol):
    """What a lock manager reports (callfs/observability/metrics.py's Metrics)."""

    def lock_operation(self, operation: str, status: str, seconds: float) -> None:
        """acquire or release; success, timeout, error, or lost (a lease that lapsed)."""

    def lock_waited(self) -> None:
        """An acquisition found a key held and waits for it."""


class Holding:
    """`hold` for a lock manager that has `acquire(keys, timeout)` returning a Lease, each
    acquisition and release timed and reported to `observer`."""

    observer: LockObserver = Silent()

    @contextlib.asynccontextmanager
    async def hold(self, keys: list[str], timeout: float | None):
        observer = self.observer
        started = time.perf_counter()
        try:
            lease = await self.acquire(keys, timeout)
        except errors.LockTimeout:
            observer.lock_operation("acquire", "timeout", time.perf_counter() - started)
            raise
        except asyncio.CancelledError:
            raise
        except BaseException:
            observer.lock_operation("acquire", "error", time.perf_counter() - started)
            raise
        observer.lock_operation("acquire", "success", time.perf_counter() - started)
        try:
            yield lease
        finally:
            started = time.perf_counter()
            try:
                lease.check()
                status = "success"
            except errors.CallFSError:
                status = "lost"  # it lapsed while held
            try:
                await lease.release()
            except BaseException:
                observer.lock_operation("release", "error", time.perf_counter() - started)
                raise
            observer.lock_operation("release", status, time.perf_counter() - started)


class LockManager(Protocol):
    observer: LockObserver  # told of every acquisition, release and wait

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def raise_fence(self, floor: int) -> None:
        """Make every later fencing number larger than `floor` (the largest one recorded)."""

    def hold(self, keys: list[str], timeout: float | None):
        """Async context manager holding every key (taken in one global order); yields a Lease.

        Waits while another holder has a key; raises LockTimeout after `timeout` seconds
        (None or <= 0: wait without limit).
        """
