"""Server-side copies on local disk: the bytes go from file to file inside the kernel, never
through Python memory.

The cheapest way the filesystem offers is found at run time, per copy: a reflink (FICLONE:
the copy shares the source's blocks until either is written: btrfs, XFS), else
copy_file_range(2) (in-kernel copy, offloaded by NFS and some block devices), else
sendfile(2) between the two files. A copy is a body the engine's write path can consume:
it fills the staged file through `transfer_to`, so a copy is published and recorded like any
upload (atomic, crash-safe).
"""
import asyncio
import errno
import fcntl
import os

FICLONE = 0x40049409  # _IOW(0x94, 9, int)
METHODS = ("reflink", "copy_file_range", "sendfile")
_CHUNK = 64 * 1024 * 1024  # per call: bounded so a copy notices cancellation between calls
# Errors that mean "this way is not available here", so the next way is tried.
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL, errno.ENOSYS,
                errno.ENOTTY, errno.EBADF, errno.EPERM}


class Unsupported(Exception):
    pass


def _reflink(src: int, dst: int, size: int, cancelled) -> None:
    try:
        fcntl.ioctl(dst, FICLONE, src)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            raise Unsupported() from None
        raise
    os.lseek(dst, size, os.SEEK_SET)


def _copy_file_range(src: int, dst: int, size: int, cancelled) -> None:
    done = 0
    while done < size and not cancelled():
        try:
            count = os.copy_file_range(src, dst, min(_CHUNK, size - done), done, done)
        except OSError as exc:
            if done == 0 and exc.errno in _UNSUPPORTED:
                raise Unsupported() from None
            raise
        if count == 0:
            break  # the source is shorter than announced
        done += count
    os.lseek(dst, done, os.SEEK_SET)


def _sendfile(src: int, dst: int, size: int, cancelled) -> None:
    done = 0
    while done < size and not cancelled():
        try:
            count = os.sendfile(dst, src, done, min(_CHUNK, size - done))
        except OSError as exc:
            if done == 0 and exc.errno in _UNSUPPORTED:
                raise Unsupported() from None
            raise
        if count == 0:
            break
        done += count


_IMPLEMENTATIONS = {"reflink": _reflink, "copy_file_range": _copy_file_range,
                    "sendfile": _sendfile}


def copy_bytes(src: int, dst: int, size: int, methods=METHODS, cancelled=lambda: False) -> str:
    """Copy `size` bytes from the start of `src` to the empty file `dst` by the first of
    `methods` the filesystem supports; returns the one used. Blocking: run it in a thread."""
    for method in methods:
        try:
            _IMPLEMENTATIONS[method](src, dst, size, cancelled)
            return method
        except Unsupported:
            os.ftruncate(dst, 0)
            os.lseek(dst, 0, os.SEEK_SET)
    raise OSError(errno.EOPNOTSUPP, "no way to copy between these files")


class CopySource:
    """The bytes of an open file (a ReadHandle) as an upload body: `transfer_to` copies them
    into a staged file in a worker thread (and `read` then reports the end); an upload that
    takes no descriptor reads them instead."""

    def __init__(self, handle, methods=METHODS):
        self.handle = handle
        self.expected = handle.size
        self.methods = methods
        self.method = None
        self._cancelled = False
        self._pieces = None

    async def transfer_to(self, fd: int) -> int:
        copying = asyncio.get_running_loop().run_in_executor(
            None, copy_bytes, self.handle.fd, fd, self.handle.size, self.methods,
            lambda: self._cancelled)
        try:
            self.method = await asyncio.shield(copying)
        except asyncio.CancelledError:
            # The thread must be done with both descriptors before the caller closes them
            # (a reused descriptor number would receive the rest of the copy): ask it to
            # stop after its current call, and wait for that.
            self._cancelled = True
            while not copying.done():
                try:
                    await asyncio.shield(copying)
                except asyncio.CancelledError:
                    continue
                except Exception:
                    break
            raise
        copied = os.fstat(fd).st_size
        if copied != self.handle.size:
            raise OSError(errno.EIO, "the source changed size while it was copied")
        return copied

    async def read(self) -> bytes:
        """For a backend that takes no descriptor: the file's bytes a piece at a time (b""
        once `transfer_to` copied them, or at the end)."""
        if self.method is not None:
            return b""
        if self._pieces is None:
            self._pieces = self.handle.chunks(0, self.handle.size)
        try:
            return await self._pieces.__anext__()
        except StopAsyncIteration:
            self.method = "read"
            return b""
