"""The lock manager protocol: per-path exclusive locks for writers (ARCHITECTURE.md, Locks).

Keys follow the Redis layout of API.md §13.5: `file:<path>` for file writes, `dir:<path>` for
directory creation and deletion. A lease carries a fencing number that grows with every
acquisition, so a writer can prove it is newer than the one before it.
"""
import contextlib
from typing import Protocol


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


class Holding:
    """`hold` for a lock manager that has `acquire(keys, timeout)` returning a Lease."""

    @contextlib.asynccontextmanager
    async def hold(self, keys: list[str], timeout: float | None):
        lease = await self.acquire(keys, timeout)
        try:
            yield lease
        finally:
            await lease.release()


class LockManager(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def raise_fence(self, floor: int) -> None:
        """Make every later fencing number larger than `floor` (the largest one recorded)."""

    def hold(self, keys: list[str], timeout: float | None):
        """Async context manager holding every key (taken in one global order); yields a Lease.

        Waits while another holder has a key; raises LockTimeout after `timeout` seconds
        (None or <= 0: wait without limit).
        """
