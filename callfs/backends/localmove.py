"""Moving bytes on local disk: one rename(2) for a file or a whole directory, made undoable and
crash-safe by an intent record.

The engine moves bytes first, then commits the metadata, then finishes; the store calls
`publish` inside its transaction, just before the commit. Until `finish`, a small intent file
`.callfs-move-<random>` in the backend's root says what is being moved where. Recovery reads
it after a crash and, from the metadata (committed or not), puts the bytes back or finishes:
an entry ends wholly at its old place or wholly at its new one.

Every name is resolved beneath the backend's root handle and renamed relative to directories
opened that way: a link is moved as a name at most, never followed.
"""
import errno
import os
import secrets
import stat

import orjson

from callfs._native.fsops import open_beneath, rename_exchange, rename_noreplace, stat_beneath
from callfs.domain import errors

INTENT_PREFIX = ".callfs-move-"


class LocalMove:
    """One move of `src` to `dst` (canonical paths) on a LocalFSBackend. With `replace`, `dst`
    holds an entry (a file, or an empty directory) that the move replaces: the names are
    exchanged, and the old entry goes at `finish`."""

    def __init__(self, backend, src: str, dst: str, entry_id: int, replace: bool):
        self.backend = backend
        self.src = src
        self.dst = dst
        self.replace = replace
        self.published = False
        try:
            mode, ino, dev, _, _, _ = stat_beneath(backend.root_fd(), src[1:])
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise errors.NotFound() from None
            if exc.errno != errno.ELOOP:
                raise
            mode, ino, dev = stat.S_IFLNK, 0, 0  # a link on the way
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            # A link (or a device, a FIFO) where the metadata knows a file or a directory:
            # not the entry's bytes, and never moved as if they were.
            raise errors.StorageInconsistent(
                f"{src}: not a file or directory on disk (mode {stat.filemode(mode)})")
        self.identity = (ino, dev)
        self.intent = write_intent(backend, {
            "src": src, "dst": dst, "id": entry_id, "replace": replace,
            "ino": ino, "dev": dev})

    async def prepare(self) -> None:
        """Nothing to do before the transaction: one rename inside it moves everything."""

    def publish(self) -> None:
        """Give the bytes their new name (idempotent: the store may run its transaction again)."""
        if self.published:
            return
        backend = self.backend
        src_dir, src_name = backend.parent_dir(self.src, False)
        try:
            dst_dir, dst_name = backend.parent_dir(self.dst, True)
            try:
                if self.replace:
                    _check_replaced(dst_dir, dst_name, self.dst)
                    rename_exchange(src_dir, src_name, dst_dir, dst_name)
                else:
                    _rename_into_free_name(src_dir, src_name, dst_dir, dst_name)
                if backend.durable:
                    os.fsync(dst_dir)
                    os.fsync(src_dir)
            finally:
                os.close(dst_dir)
        except FileExistsError:
            raise errors.AlreadyExists() from None
        finally:
            os.close(src_dir)
        self.published = True

    async def undo(self) -> None:
        """The metadata did not commit: the bytes go back to their old name."""
        try:
            if self.published:
                _put_back(self.backend, self.src, self.dst, self.replace, self.identity)
            self.published = False
        finally:
            drop_intent(self.backend, self.intent)

    async def finish(self) -> None:
        """The metadata committed: the replaced entry (now under the old name) goes."""
        try:
            if self.replace:
                _remove_replaced(self.backend, self.src, self.identity)
        finally:
            drop_intent(self.backend, self.intent)


def _put_back(backend, src: str, dst: str, replace: bool, identity) -> None:
    """Undo a published move: the bytes at `dst` (if still the moved entry's) return to `src`;
    a replaced entry, kept under `src` by the exchange, returns to `dst`."""
    if not _holds(backend, dst, identity):
        return
    src_dir, src_name = backend.parent_dir(src, True)
    try:
        dst_dir, dst_name = backend.parent_dir(dst, False)
        try:
            if replace:
                rename_exchange(dst_dir, dst_name, src_dir, src_name)
            else:
                rename_noreplace(dst_dir, dst_name, src_dir, src_name)
        finally:
            os.close(dst_dir)
    finally:
        os.close(src_dir)


def _holds(backend, path: str, identity) -> bool:
    info = backend.lstat(path)
    return info is not None and (info[1], info[2]) == identity


def _check_replaced(dir_fd: int, name: str, path: str) -> None:
    """What a move replaces must be a file or a directory: a link (or anything else) at the
    name is not the replaced entry's bytes, and is left as it is."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return  # nothing to replace: the exchange says so
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise errors.StorageInconsistent(
            f"{path}: not a file or directory on disk (mode {stat.filemode(mode)})")


def _rename_into_free_name(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """rename(2) that never replaces anything — except an empty directory the metadata does
    not know (what a failed upload leaves behind), which is removed first."""
    try:
        rename_noreplace(src_dir, src, dst_dir, dst)
        return
    except FileExistsError:
        info = os.stat(dst, dir_fd=dst_dir, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            raise
        try:
            os.rmdir(dst, dir_fd=dst_dir)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(exc.errno, exc.strerror) from None
            raise
    rename_noreplace(src_dir, src, dst_dir, dst)


def _remove_replaced(backend, path: str, moved_identity) -> None:
    """Remove the replaced entry now at `path`, unless it is the moved one itself."""
    try:
        dir_fd, name = backend.parent_dir(path, False)
    except (errors.NotFound, errors.StorageInconsistent):
        return
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (info.st_ino, info.st_dev) == moved_identity:
            return
        if stat.S_ISDIR(info.st_mode):
            os.rmdir(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:
            raise
    finally:
        os.close(dir_fd)


# -- intent records ---------------------------------------------------------------------------

def write_intent(backend, record: dict) -> str:
    """Write the intent durably (before any byte moves); returns its file name."""
    name = f"{INTENT_PREFIX}{secrets.token_hex(8)}"
    root_fd = open_beneath(backend.root_fd(), "", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = open_beneath(root_fd, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, orjson.dumps(record))
            if backend.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if backend.durable:
            os.fsync(root_fd)
    finally:
        os.close(root_fd)
    return name


def drop_intent(backend, name: str | None) -> None:
    if name is None:
        return
    try:
        os.unlink(name, dir_fd=backend.root_fd())
    except FileNotFoundError:
        pass


def read_intents(backend) -> list[tuple[str, dict | None]]:
    """The move intents a crash left in the root: (file name, record), the record None when
    unreadable (a crash while the intent itself was written, before any byte moved). The
    caller tells them from files of the namespace that merely have such a name."""
    found = []
    if not backend.root:
        return found
    try:
        root_fd = open_beneath(backend.root_fd(), "", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return found  # no root (yet)
    try:
        for name in os.listdir(root_fd):
            if not name.startswith(INTENT_PREFIX):
                continue
            try:
                fd = open_beneath(root_fd, name, os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                continue  # gone, or a link: no intent of ours
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                try:
                    record = orjson.loads(os.read(fd, 64 * 1024))
                except (OSError, orjson.JSONDecodeError):
                    record = None
            finally:
                os.close(fd)
            found.append((name, record))
    finally:
        os.close(root_fd)
    return found


def recover_move(backend, record: dict, committed: bool) -> None:
    """Finish a move the metadata committed, or put its bytes back where the metadata still
    has them. `committed`: the moved entry's row is at `dst`."""
    identity = (record["ino"], record["dev"])
    src, dst = record["src"], record["dst"]
    if committed:
        if record["replace"]:
            _remove_replaced(backend, src, identity)
        return
    _put_back(backend, src, dst, record["replace"], identity)  # a no-op if never published
