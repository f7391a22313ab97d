"""Local-disk backend: a file's bytes live at `<root>/<path>` (API.md Appendix A).

A write goes to `.callfs-tmp-*` in the target directory, is fsynced, then renamed over the
target and the directory fsynced: a reader sees the old or the new file whole, and a crash
leaves at worst a temporary file that the sweep removes.
"""
import asyncio
import errno
import os
import secrets

from callfs.core import errors

TMP_PREFIX = ".callfs-tmp-"
_DIR_MODE = 0o755
_FILE_MODE = 0o644


class ReadHandle:
    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int):
        self.fd = fd
        self.size = size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LocalUpload:
    """One staged file. `write` appends synchronously (page-cache writes are short);
    `commit` does the slow part, fsync, off the event loop."""

    def __init__(self, target: str, tmp: str, fd: int, durable: bool):
        self.target = target
        self.tmp = tmp
        self.fd = fd
        self.size = 0
        self._durable = durable

    def write(self, chunk) -> None:
        view = memoryview(chunk)
        while view:
            written = os.write(self.fd, view)
            self.size += written
            view = view[written:]

    async def commit(self) -> None:
        try:
            if self._durable:
                await asyncio.to_thread(os.fsync, self.fd)
            os.close(self.fd)
            self.fd = -1
            os.rename(self.tmp, self.target)
            if self._durable:
                await asyncio.to_thread(_fsync_dir, os.path.dirname(self.target))
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalFSBackend:
    name = "localfs"

    def __init__(self, root: str, *, durable: bool = True):
        self.root = os.path.abspath(root) if root else ""
        self.durable = durable

    async def open(self) -> None:
        if self.root:
            os.makedirs(self.root, mode=_DIR_MODE, exist_ok=True)

    def disk_path(self, path: str) -> str:
        if not self.root:
            raise errors.InternalError("the local backend is disabled (backend.localfs_root_path)")
        return self.root + path if path != "/" else self.root

    def open_read(self, path: str) -> ReadHandle:
        try:
            fd = os.open(self.disk_path(path), os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise errors.NotFound() from None
        except IsADirectoryError:
            raise errors.NotFound() from None
        size = os.fstat(fd).st_size
        return ReadHandle(fd, size)

    def begin_write(self, path: str) -> LocalUpload:
        target = self.disk_path(path)
        directory = os.path.dirname(target)
        self._ensure_dir(directory)
        tmp = os.path.join(directory, TMP_PREFIX + secrets.token_hex(8))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        return LocalUpload(target, tmp, fd, self.durable)

    def _ensure_dir(self, directory: str) -> None:
        try:
            os.makedirs(directory, mode=_DIR_MODE, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise errors.NotADirectory("a parent of the path is a file") from None

    def make_directory(self, path: str) -> None:
        self._ensure_dir(self.disk_path(path))

    def remove(self, path: str, is_dir: bool) -> None:
        target = self.disk_path(path)
        try:
            if is_dir:
                os.rmdir(target)
            else:
                os.unlink(target)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                # Only leftovers of interrupted uploads can make a metadata-empty directory
                # non-empty on disk; clear them and try once more.
                self._clear_temporaries(target)
                os.rmdir(target)
            else:
                raise

    def _clear_temporaries(self, directory: str) -> None:
        for name in os.listdir(directory):
            if name.startswith(TMP_PREFIX):
                try:
                    os.unlink(os.path.join(directory, name))
                except FileNotFoundError:
                    pass

    def sweep_temporaries(self) -> int:
        """Remove temporary files left by a crash; run at start before serving."""
        removed = 0
        if not self.root or not os.path.isdir(self.root):
            return 0
        for directory, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(TMP_PREFIX):
                    try:
                        os.unlink(os.path.join(directory, name))
                        removed += 1
                    except FileNotFoundError:
                        pass
        return removed
