"""Local-disk backend: a file's bytes live at `<root>/<path>` (API.md Appendix A).

A write goes to `.callfs-tmp-*` in the target directory, is fsynced, then renamed over the
target (exchanged with it, then the old version unlinked) and the directory fsynced: a reader sees the old or the new file whole, and a crash
leaves at worst a temporary file that the sweep removes.

Every path is opened beneath one handle of the data root (`open_beneath`: openat2 with
RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, or an O_NOFOLLOW walk), and every other call names an
entry relative to a directory opened that way: a symbolic link anywhere in the data directory
is never followed, so nothing outside the root is read or written through one.
"""
import asyncio
import errno
import fcntl
import os
import secrets
import stat
import time

from callfs._native.fsops import open_beneath, rename_exchange, rename_noreplace, stat_beneath
from callfs._native.generations import fnv1a
from callfs.backends.base import Capability
from callfs.backends.localcopy import METHODS as COPY_METHODS
from callfs.backends.localcopy import CopySource
from callfs.backends.localmove import LocalMove, drop_intent, read_intents, recover_move
from callfs.domain import errors

TMP_PREFIX = ".callfs-tmp-"
_OLD = "-old"  # suffix of the old version's second name where exchange is unsupported
_DIR_MODE = 0o755
_FILE_MODE = 0o644
_ATTEMPTS = 3
# open_beneath adds O_NOFOLLOW and O_CLOEXEC to these.
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY
_READ = os.O_RDONLY | os.O_NONBLOCK  # a FIFO at the name must not block the open
_MISSING = (errno.ENOENT, errno.ENOTDIR)  # nothing beneath the root at the path
CHUNK = 256 * 1024  # a read handle's pieces where no descriptor is handed on


def _is_dir(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _linked(path: str) -> errors.StorageInconsistent:
    return errors.StorageInconsistent(f"{path}: a symbolic link on disk on the way or at the name")


def _not_a_file(name: str, mode: int) -> errors.StorageInconsistent:
    return errors.StorageInconsistent(
        f"{name}: not a regular file on disk at the name (mode {stat.filemode(mode)})")


class ReadHandle:
    __slots__ = ("fd", "size", "mtime_ns")

    def __init__(self, fd: int, size: int, mtime_ns: int | None = None):
        self.fd = fd
        self.size = size
        self.mtime_ns = mtime_ns

    def socket_body(self, offset: int, length: int) -> None:
        return None  # a file is sent from its descriptor (sendfile)

    async def chunks(self, offset: int, length: int, piece: int = CHUNK):
        """`length` bytes from `offset`, read `piece` at a time (page-cache reads are short);
        OSError when the file ends before them."""
        end = offset + length
        while offset < end:
            chunk = os.pread(self.fd, min(piece, end - offset), offset)
            if not chunk:
                raise OSError(errno.EIO, "the file ended before its recorded size")
            offset += len(chunk)
            yield chunk

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def in_use(dir_fd: int, staged: str) -> bool:
    """Whether a live writer (of any process) holds the staged file `staged` of the directory
    `dir_fd` (its flock)."""
    try:
        fd = open_beneath(dir_fd, staged, _READ)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def tmp_name(target: str) -> str:
    """A staged file's name: random, plus a hash of the name it will take, so that recovery
    after a crash can tell which entry a leftover belongs to."""
    return f"{TMP_PREFIX}{secrets.token_hex(8)}-{fnv1a(target):016x}"


class LocalUpload:
    """One staged file, named relative to its directory's descriptor. `write` appends
    synchronously (page-cache writes are short); `seal` makes the bytes durable off the event
    loop — all of that with no lock held, at the client's pace. `commit`, under the path's
    lock, publishes the file; `finish` (after the metadata records it) or `undo` (when it
    could not) ends the write. Until then the temporary name stays on disk: it is the write's
    intent record, which recovery finds if the process dies in between. While the writer
    lives, the staged file carries its flock (`in_use`), so no recovery pass of any process
    takes it for a crash's leftover."""

    def __init__(self, dir_fd: int, name: str, durable: bool, locate=None):
        self.dir_fd = dir_fd
        self.name = name
        self.tmp = tmp_name(name)
        self._locate = locate  # the parent directory now at the path: (dir_fd, name)
        # O_EXCL: a name that exists, a dangling link too, is never created through.
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, _FILE_MODE, dir_fd=dir_fd)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        info = os.fstat(self.fd)
        self._identity = (info.st_ino, info.st_dev)  # tells our bytes at the name from others'
        self.size = 0
        self._durable = durable
        self._new = False
        self._published = None  # "exchange" (tmp now holds the old version) or "link"

    async def write(self, chunk) -> None:
        view = memoryview(chunk)
        while view:
            written = os.write(self.fd, view)
            self.size += written
            view = view[written:]

    async def fill(self, body) -> None:
        """Let a body of announced length write into the staged file directly (zero-copy)."""
        self.size += await body.transfer_to(self.fd)

    async def seal(self) -> None:
        """The body is whole: make its bytes durable (no lock needed, none held). On failure
        the caller aborts."""
        if self._durable:
            await asyncio.to_thread(os.fsync, self.fd)

    async def commit(self, mtime_ns: int | None = None, check=None, new: bool = False) -> None:
        """Publish the staged bytes, under the path's lock. With `mtime_ns` the file carries
        that modification time, so a reader can tell which recorded version an open file holds
        (`read_version`). `check`, called just before publishing, raises to refuse (the
        writer's lock lapsed). `new` when the metadata holds no entry at the path, so that an
        empty directory on disk at that name (a failed upload's leftover) may go."""
        try:
            self._new = new
            self._rehome()
            if mtime_ns is not None:
                os.utime(self.fd, ns=(mtime_ns, mtime_ns))
            if self._durable:
                await asyncio.to_thread(os.fsync, self.fd)  # sealed: the new times only
            if check is not None:
                check()
            self._publish()
            if self._durable:
                await asyncio.to_thread(os.fsync, self.dir_fd)
        except BaseException:
            if self._published:
                await self.undo()
            else:
                await self.abort()
            raise

    def _rehome(self) -> None:
        """Staging took no lock, so a directory above may have moved (taking the staged file
        along) or been made again since: the file moves to the directory now at the path."""
        if self._locate is None:
            return
        dir_fd, _ = self._locate()
        try:
            here, there = os.fstat(self.dir_fd), os.fstat(dir_fd)
            if (here.st_ino, here.st_dev) != (there.st_ino, there.st_dev):
                os.rename(self.tmp, self.tmp, src_dir_fd=self.dir_fd, dst_dir_fd=dir_fd)
                self.dir_fd, dir_fd = dir_fd, self.dir_fd
        finally:
            os.close(dir_fd)

    def _publish(self) -> None:
        """The staged file takes the name, atomically for readers. Over an existing file the
        names are exchanged (the old version stays under the temporary name until `finish`):
        this also spares ext4 the writeback that rename(2) starts when it replaces a file
        (see _native/fsops). A new name is a hard link, so the temporary name remains too.
        Only a regular file is replaced: a link or anything else at the name is put back and
        the write refused (bytes that are not the file's; never followed)."""
        dir_fd = self.dir_fd

        def directory_there() -> errors.CallFSError:
            # For a new entry a lost race with a directory's creation; over a file the metadata
            # records, bytes that are not the file's: say so, it is no namespace conflict.
            if self._new:
                return errors.AlreadyExists("a directory exists at this path")
            return errors.StorageInconsistent(
                f"{self.name}: a directory on disk where the metadata records a file")

        try:
            rename_exchange(dir_fd, self.tmp, dir_fd, self.name)
        except FileNotFoundError:
            pass  # nothing to replace
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            # No exchange on this filesystem: keep a copy of the old version as the intent.
            try:
                os.link(self.name, self.tmp + _OLD, src_dir_fd=dir_fd, dst_dir_fd=dir_fd,
                        follow_symlinks=False)
            except FileNotFoundError:
                pass
            except (IsADirectoryError, PermissionError):  # link(2) of a directory: EPERM
                if not _is_dir(self.name, dir_fd):
                    raise
                raise directory_there() from None
            else:
                mode = os.stat(self.tmp + _OLD, dir_fd=dir_fd, follow_symlinks=False).st_mode
                if not stat.S_ISREG(mode):
                    os.unlink(self.tmp + _OLD, dir_fd=dir_fd)
                    raise _not_a_file(self.name, mode)
                try:
                    os.rename(self.tmp, self.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except IsADirectoryError:
                    os.unlink(self.tmp + _OLD, dir_fd=dir_fd)
                    raise directory_there() from None
                self.tmp += _OLD
                self._published = "exchange"
                return
        else:
            self._published = "exchange"
            mode = os.stat(self.tmp, dir_fd=dir_fd, follow_symlinks=False).st_mode
            if stat.S_ISREG(mode):
                return
            rename_exchange(dir_fd, self.tmp, dir_fd, self.name)  # what was there, back
            self._published = None
            if not stat.S_ISDIR(mode):
                raise _not_a_file(self.name, mode)
            if not self._drop_orphan_directory():
                raise directory_there()
        try:
            os.link(self.tmp, self.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd,
                    follow_symlinks=False)
        except FileExistsError:
            raise errors.AlreadyExists("the path appeared while writing") from None
        self._published = "link"

    def _drop_orphan_directory(self) -> bool:
        """For a new entry: remove the empty directory at the name, which the metadata does
        not know (left by an upload that failed), so that the file can take the name."""
        if not self._new:
            return False
        try:
            os.rmdir(self.name, dir_fd=self.dir_fd)
        except OSError:
            return False
        return True

    async def finish(self) -> None:
        """The metadata records the new version: drop the intent (the old version, or the
        second name of a new file)."""
        self._drop_staged()

    async def undo(self) -> None:
        """The metadata could not record the write: put back what the name held before —
        unless the name no longer holds our bytes. Then a newer writer (one that took the lock
        after ours lapsed) has published over them, and its version stays."""
        dir_fd = self.dir_fd
        try:
            if self._published and not self._holds_name():
                pass
            elif self._published == "exchange" and self.tmp is not None:
                if self.tmp.endswith(_OLD):
                    os.rename(self.tmp, self.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                    self.tmp = None
                else:
                    rename_exchange(dir_fd, self.tmp, dir_fd, self.name)
            elif self._published == "link":
                os.unlink(self.name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        finally:
            self._published = None
            self._drop_staged()

    def _holds_name(self) -> bool:
        try:
            info = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (info.st_ino, info.st_dev) == self._identity

    async def abort(self) -> None:
        """Drop the staged bytes (nothing published, or `undo` put back what was); a no-op
        once the write ended. The name goes before the descriptor (and its flock), so a
        recovery pass never finds it unlocked."""
        self._drop_staged()

    def _drop_staged(self) -> None:
        """The staged name goes, then the descriptors: the write has ended."""
        if self.tmp is not None:
            try:
                os.unlink(self.tmp, dir_fd=self.dir_fd)
            except FileNotFoundError:
                pass
            self.tmp = None
        self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


class LocalRemoval:
    """Deleting a file's bytes in step with its metadata. `publish`, called inside the store's
    transaction, sets the file aside under a staged name in its directory: the transaction
    orders it with every move (a move renames inside its own transaction), so the path still
    names the entry's bytes. `finish` drops them once the deletion commits; `undo` puts them
    back when it did not. A crash in between leaves the staged name, which recovery puts back
    while the metadata still holds the entry (and drops otherwise)."""

    def __init__(self, backend: "LocalFSBackend", path: str):
        self.backend = backend
        self.path = path
        self.published = False
        self.dir_fd = -1
        self.name = self.aside = None

    def publish(self) -> None:
        if self.published:
            return  # the store may run its transaction again
        self.published = True
        try:
            dir_fd, name = self.backend.parent_dir(self.path, False)
        except (errors.NotFound, errors.StorageInconsistent):
            return  # no bytes beneath the root at the path (a link on the way is not followed)
        if _is_dir(name, dir_fd):  # not a file's bytes: not ours to take
            os.close(dir_fd)
            return
        aside = tmp_name(name)
        try:
            os.rename(name, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            if self.backend.durable:
                os.fsync(dir_fd)
        except FileNotFoundError:
            os.close(dir_fd)
            return  # no bytes at the path
        except BaseException:
            os.close(dir_fd)
            raise
        self.dir_fd, self.name, self.aside = dir_fd, name, aside

    async def undo(self) -> None:
        """The deletion did not commit: the bytes take their name again (unless the name was
        taken meanwhile; then the newer bytes stay)."""
        try:
            if self.aside is not None:
                try:
                    rename_noreplace(self.dir_fd, self.aside, self.dir_fd, self.name)
                except FileExistsError:
                    os.unlink(self.aside, dir_fd=self.dir_fd)
        finally:
            self._close()

    async def finish(self) -> None:
        try:
            if self.aside is not None:
                try:
                    os.unlink(self.aside, dir_fd=self.dir_fd)
                except FileNotFoundError:
                    pass
        finally:
            self._close()

    def _close(self) -> None:
        self.aside = None
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


class LocalFSBackend:
    name = "localfs"
    capabilities = (Capability.LOCAL | Capability.DESCRIPTOR | Capability.SPLICE
                    | Capability.REFLINK | Capability.KERNEL_COPY | Capability.RANGED_READ
                    | Capability.STAMPED)

    def __init__(self, root: str, *, durable: bool = True):
        self.root = os.path.abspath(root) if root else ""
        self.durable = durable
        self._root_fd = -1

    async def open(self) -> None:
        if self.root:
            os.makedirs(self.root, mode=_DIR_MODE, exist_ok=True)
            self.root_fd()

    async def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def root_fd(self) -> int:
        """The handle (O_PATH) of the data root every path is opened beneath; opened once per
        process, at the first use (a worker's backend is never `open`ed)."""
        fd = self._root_fd
        if fd < 0:
            if not self.root:
                raise errors.InternalError(
                    "the local backend is disabled (backend.localfs_root_path)")
            fd = self._root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return fd

    def disk_path(self, path: str) -> str:
        """Where `path` lies on disk, for people reading it; the backend opens nothing by it."""
        if not self.root:
            raise errors.InternalError("the local backend is disabled (backend.localfs_root_path)")
        return self.root + path if path != "/" else self.root

    def _open_parent(self, path: str) -> tuple[int, str]:
        """The parent directory of `path` opened beneath the root, and the entry's name;
        OSError as the kernel tells it (ELOOP for a link on the way)."""
        parent, name = path.rsplit("/", 1)
        return open_beneath(self.root_fd(), parent[1:], _DIRECTORY), name

    def parent_dir(self, path: str, create: bool) -> tuple[int, str]:
        """A descriptor of the parent directory of `path` and the entry's name in it. With
        `create`, missing directories are made on the way, each relative to the one before
        and never through a link. NotFound when a directory on the way is missing (or a
        file); StorageInconsistent for a link on the way; NotADirectory when creating below a
        file."""
        try:
            return self._open_parent(path)
        except OSError as exc:
            if not (create and exc.errno == errno.ENOENT):
                raise _resolution_error(exc, path, create) from None
        parent, name = path.rsplit("/", 1)
        return self._make_directories(parent), name

    def _make_directories(self, path: str) -> int:
        """Open the directory `path`, making what is missing of it, one segment at a time."""
        current = self.root_fd()
        try:
            for segment in path[1:].split("/"):
                for _ in range(_ATTEMPTS):
                    try:
                        os.mkdir(segment, _DIR_MODE, dir_fd=current)
                    except FileExistsError:
                        pass  # a directory (or a link, or a file: the open tells)
                    try:
                        child = open_beneath(current, segment, _DIRECTORY)
                        break
                    except FileNotFoundError:
                        continue  # just moved away or removed: make it again
                else:
                    raise errors.ParentMoved()
                if current != self._root_fd:
                    os.close(current)
                current = child
        except OSError as exc:
            if current != self._root_fd:
                os.close(current)
            raise _resolution_error(exc, path, True) from None
        except BaseException:
            if current != self._root_fd:
                os.close(current)
            raise
        return current

    async def open_read(self, path: str, *, content: bool = True) -> ReadHandle:
        """The regular file at `path`, opened (see `open_file`); its descriptor serves a
        caller that only checks the bytes as well."""
        return self.open_file(path)

    def open_file(self, path: str) -> ReadHandle:
        """The regular file at `path`, opened. NotFound when nothing is there; a directory, a
        link or any other kind of file there (or a link on the way) is StorageInconsistent
        (the metadata knows files only as regular files)."""
        try:
            fd = open_beneath(self.root_fd(), path[1:], _READ)
        except OSError as exc:
            raise _resolution_error(exc, path, False) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise errors.StorageInconsistent(
                    f"{path}: not a regular file on disk (mode {stat.filemode(info.st_mode)})")
            os.set_blocking(fd, True)  # reads of the file itself block, as everywhere else
        except BaseException:
            os.close(fd)
            raise
        return ReadHandle(fd, info.st_size, info.st_mtime_ns)

    def read_version(self, path: str, size: int, mtime_ns: int) -> bytes | None:
        """The whole content of a small file, or None unless the file on disk is the version
        recorded with this size and mtime (a write may be between publishing and recording)."""
        handle = self.open_file(path)
        try:
            if handle.size != size or handle.mtime_ns != mtime_ns:
                return None
            data = os.pread(handle.fd, size, 0) if size else b""
            return data if len(data) == size else None
        finally:
            handle.close()

    def begin_write(self, path: str) -> LocalUpload:
        """A staged write of `path`, in the directory that will hold it."""
        dir_fd, name = self.parent_dir(path, True)
        try:
            return LocalUpload(dir_fd, name, self.durable, lambda: self.parent_dir(path, True))
        except BaseException:
            os.close(dir_fd)
            raise

    async def make_directory(self, path: str) -> None:
        dir_fd, name = self.parent_dir(path, True)
        try:
            os.mkdir(name, _DIR_MODE, dir_fd=dir_fd)
        except FileExistsError:
            if not _is_dir(name, dir_fd):
                raise errors.AlreadyExists("a file exists at this path") from None
        finally:
            os.close(dir_fd)

    def begin_remove(self, path: str) -> LocalRemoval:
        """Prepare deleting the bytes of the file at `path` with its metadata."""
        return LocalRemoval(self, path)

    async def restore_removed(self, tmp: str, path: str) -> bool:
        """Put back bytes a deletion set aside (the staged file `tmp`) at `path`, unless
        something holds that name; True when they took it."""
        try:
            dir_fd, name = self.parent_dir(path, False)
        except errors.NotFound:
            return False
        try:
            rename_noreplace(dir_fd, tmp.rsplit("/", 1)[1], dir_fd, name)
        except (FileExistsError, FileNotFoundError):
            return False
        finally:
            os.close(dir_fd)
        return True

    async def remove(self, path: str, is_dir: bool) -> bool:
        """Remove an entry's bytes; False when there were none at `path`. OSError when what
        is there cannot go (a link where a directory was, a link on the way: not followed)."""
        try:
            dir_fd, name = self._open_parent(path)
        except OSError as exc:
            if exc.errno in _MISSING:
                return False
            raise
        try:
            if is_dir:
                os.rmdir(name, dir_fd=dir_fd)
            else:
                os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
            # Only an upload in flight (or a crash's leftover) can make a directory that the
            # metadata calls empty non-empty on disk; leave it, the metadata is the truth.
        finally:
            os.close(dir_fd)
        return True

    async def leftovers(self, min_age: float = 0.0, started_ns: int = 0) -> list["Leftover"]:
        """Files named like a staged write that no live writer holds (`in_use`) and that have
        stood still `min_age` seconds, or since before `started_ns` (when the server started:
        no write of its own made them). The others may be writes in flight, whose lock their
        writer holds under the path it writes — not the one found here when a directory above
        moved meanwhile. Each comes
        with the entry it belongs to when that can be told from the names on disk, and with
        its directory and the hash of the entry's name. The walk opens each directory
        beneath the one before and never descends through a link."""
        found = []
        if not self.root:
            return found
        try:
            top = open_beneath(self.root_fd(), "", _DIRECTORY)
        except OSError:
            return found  # no root (yet)
        cutoff = max(time.time_ns() - int(min_age * 1e9), started_ns)
        stack = [("", top, self._scan(top, "", cutoff, found))]
        try:
            while stack:
                base, dir_fd, pending = stack[-1]
                if not pending:
                    os.close(dir_fd)
                    stack.pop()
                    continue
                name = pending.pop()
                try:
                    child = open_beneath(dir_fd, name, _DIRECTORY)
                except OSError:
                    continue  # gone, or no longer a directory
                stack.append((f"{base}/{name}", child,
                              self._scan(child, f"{base}/{name}", cutoff, found)))
        finally:
            for _, dir_fd, _ in stack:
                os.close(dir_fd)
        return found

    @staticmethod
    def _scan(dir_fd: int, base: str, cutoff: int, found: list) -> list[str]:
        """Add the leftovers of one directory to `found`; its subdirectories' names (links
        are not subdirectories)."""
        try:
            with os.scandir(dir_fd) as listing:
                entries = [(entry.name, entry.is_dir(follow_symlinks=False))
                           for entry in listing]
        except OSError:
            return []
        subdirs = [name for name, is_dir in entries if is_dir]
        files = [name for name, is_dir in entries if not is_dir]
        staged = [name for name in files if name.startswith(TMP_PREFIX)]
        if not staged:
            return subdirs
        by_hash = {}
        for name in files + subdirs:
            if not name.startswith(TMP_PREFIX):
                by_hash.setdefault(f"{fnv1a(name):016x}", name)
        for name in staged:
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            parts = name[len(TMP_PREFIX):].split("-")
            target = by_hash.get(parts[1]) if len(parts) >= 2 else None
            same = False
            if target is not None:
                try:
                    other = os.stat(target, dir_fd=dir_fd, follow_symlinks=False)
                    same = (other.st_ino, other.st_dev) == (info.st_ino, info.st_dev)
                except FileNotFoundError:
                    target = None
            if info.st_ctime_ns > cutoff or in_use(dir_fd, name):
                continue
            found.append(Leftover(f"{base}/{name}",
                                  None if target is None else f"{base}/{target}", same,
                                  base or "/", parts[1] if len(parts) >= 2 else ""))
        return subdirs

    def copy_source(self, handle: ReadHandle, methods=COPY_METHODS) -> CopySource:
        """The bytes of an open file as a body that fills a staged file inside the kernel."""
        return CopySource(handle, methods)

    def begin_move(self, src: str, dst: str, entry_id: int, replace: bool) -> LocalMove:
        """Prepare moving the bytes of `src` (a file or a whole directory) to `dst`; the
        store's transaction calls `publish`, the engine `finish` or `undo` after it."""
        return LocalMove(self, src, dst, entry_id, replace)

    async def move_intents(self) -> list[tuple[str, dict]]:
        return read_intents(self)

    async def drop_move_intent(self, name: str) -> None:
        drop_intent(self, name)

    async def recover_move(self, name: str, record: dict, committed: bool) -> None:
        recover_move(self, record, committed)
        drop_intent(self, name)

    def lstat(self, path: str) -> tuple[int, int, int, int, int, int] | None:
        """(st_mode, st_ino, st_dev, st_nlink, st_size, st_mtime_ns) of what is at `path`,
        a link described, not followed; None when nothing is there beneath the root (a link
        on the way included)."""
        try:
            return stat_beneath(self.root_fd(), path[1:])
        except OSError as exc:
            if exc.errno in _MISSING or exc.errno == errno.ELOOP:
                return None
            raise

    async def version(self, path: str) -> tuple[int, int] | None:
        return self.disk_version(path)

    def disk_version(self, path: str) -> tuple[int, int] | None:
        """(size, mtime_ns) of the regular file at `path`, or None."""
        try:
            mode, _, _, _, size, mtime_ns = stat_beneath(self.root_fd(), path[1:])
        except OSError as exc:
            if exc.errno in _MISSING or exc.errno == errno.ELOOP:
                return None
            raise
        return (size, mtime_ns) if stat.S_ISREG(mode) else None

    async def remove_temporary(self, path: str) -> None:
        try:
            dir_fd, name = self._open_parent(path)
        except OSError as exc:
            if exc.errno in _MISSING:
                return
            raise
        try:
            if not name.startswith(TMP_PREFIX):
                raise ValueError(f"not a staged file: {name!r}")
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dir_fd)


def _resolution_error(exc: OSError, path: str, create: bool) -> Exception:
    """What an open beneath the root that failed means for `path`."""
    if exc.errno == errno.ENOENT:
        return errors.NotFound()
    if exc.errno == errno.ENOTDIR:
        if create:
            return errors.NotADirectory("a parent of the path is a file")
        return errors.NotFound()
    if exc.errno == errno.ELOOP:
        return _linked(path)
    return exc


class Leftover:
    """A staged file found on disk: `tmp` its path, `target` the entry it was written for
    (None when no name on disk tells it), `same` when both names are one file (a new file,
    linked in); `parent` its directory and `digest` the hash of the entry's name."""

    __slots__ = ("tmp", "target", "same", "parent", "digest")

    def __init__(self, tmp: str, target: str | None, same: bool, parent: str = "/",
                 digest: str = ""):
        self.tmp = tmp
        self.target = target
        self.same = same
        self.parent = parent
        self.digest = digest

    def written_for(self, name: str) -> bool:
        """Whether this staged file belongs to the entry `name` of its directory."""
        return f"{fnv1a(name):016x}" == self.digest
