"""Locks for one instance: correct across its worker processes, with no service to run.

Keys hash onto byte stripes of one file that the master process creates before forking, so
every worker shares it. A stripe is taken twice: an asyncio lock orders the coroutines of one
process, then a POSIX record lock (F_SETLK, owned per process) excludes the other workers.
A dead worker's record locks vanish with it, so nothing stays locked after a crash.
"""
import asyncio
import errno
import fcntl
import os
import struct
import tempfile
import zlib

from callfs.domain import errors
from callfs.locks.base import Holding

STRIPES = 4096
_FENCE_OFFSET = STRIPES  # the fencing counter lives after the stripes, under a stripe of its own
_POLL_FIRST = 0.0005
_POLL_MAX = 0.02


class _Lease:
    def __init__(self, manager: "LocalLockManager", stripes: list[int], fence: int):
        self._manager = manager
        self._stripes = stripes
        self.fence = fence
        self._released = False

    def check(self) -> None:
        """Local locks never lapse while their process lives (the kernel frees them only with
        it): nothing to refuse."""

    async def release(self) -> None:
        if not self._released:
            self._released = True
            self._manager._release(self._stripes)


class LocalLockManager(Holding):
    def __init__(self, fd: int | None = None):
        self._fd = fd
        self._owned_fd = fd is None
        self._local: dict[int, asyncio.Lock] = {}

    @classmethod
    def shared_file(cls) -> int:
        """Create the anonymous lock file before workers fork; they inherit its descriptor."""
        handle = tempfile.TemporaryFile(prefix="callfs-locks-")
        fd = os.dup(handle.fileno())
        handle.close()
        os.pwrite(fd, b"\0" * 8, _FENCE_OFFSET)
        os.set_inheritable(fd, True)
        return fd

    async def open(self) -> None:
        if self._fd is None:
            self._fd = self.shared_file()

    async def close(self) -> None:
        if self._owned_fd and self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def stripe(key: str) -> int:
        return zlib.crc32(key.encode("utf-8", "surrogatepass")) % STRIPES

    async def acquire(self, keys: list[str], timeout: float | None) -> _Lease:
        stripes = sorted({self.stripe(key) for key in keys})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout and timeout > 0 else None
        taken: list[int] = []
        try:
            for stripe in stripes:
                await self._take(stripe, deadline)
                taken.append(stripe)
            fence = self._next_fence()
        except BaseException:
            self._release(taken)
            raise
        return _Lease(self, stripes, fence)

    async def _take(self, stripe: int, deadline: float | None) -> None:
        local = self._local.get(stripe)
        if local is None:
            local = self._local[stripe] = asyncio.Lock()
        loop = asyncio.get_running_loop()
        waited = local.locked()
        if waited:
            self.observer.lock_waited()
        try:
            if deadline is None:
                await local.acquire()
            else:
                await asyncio.wait_for(local.acquire(), max(deadline - loop.time(), 0))
        except TimeoutError:
            raise errors.LockTimeout() from None
        try:
            delay = _POLL_FIRST
            while not self._try_record_lock(stripe):
                if not waited:
                    waited = True
                    self.observer.lock_waited()
                if deadline is not None and loop.time() + delay > deadline:
                    raise errors.LockTimeout()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _POLL_MAX)
        except BaseException:
            local.release()
            raise

    def _try_record_lock(self, stripe: int) -> bool:
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, stripe)
            return True
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise

    def _release(self, stripes: list[int]) -> None:
        for stripe in reversed(stripes):
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, stripe)
            self._local[stripe].release()

    async def raise_fence(self, floor: int) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, _FENCE_OFFSET + 8)
        try:
            (value,) = struct.unpack("<Q", os.pread(self._fd, 8, _FENCE_OFFSET))
            if value < floor:
                os.pwrite(self._fd, struct.pack("<Q", floor), _FENCE_OFFSET)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, _FENCE_OFFSET + 8)

    def _next_fence(self) -> int:
        # Blocking is fine here: the counter's stripe is held for two syscalls at most.
        fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, _FENCE_OFFSET + 8)
        try:
            (value,) = struct.unpack("<Q", os.pread(self._fd, 8, _FENCE_OFFSET))
            value += 1
            os.pwrite(self._fd, struct.pack("<Q", value), _FENCE_OFFSET)
            return value
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, _FENCE_OFFSET + 8)
