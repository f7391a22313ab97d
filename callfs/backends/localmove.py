"""Moving bytes on local disk: one rename(2) for a file or a whole directory, made undoable and
crash-safe by an intent record.

The engine moves bytes first, then commits the metadata, then finishes; the store calls
`publish` inside its transaction, just before the commit. Until `finish`, a small intent file
`.callfs-move-<random>` in the backend's root says what is being moved where. Recovery reads
it after a crash and, from the metadata (committed or not), puts the bytes back or finishes:
an entry ends wholly at its old place or wholly at its new one.
"""
import errno
import os
import secrets
import stat

import orjson

from callfs._native.fsops import rename_exchange, rename_noreplace
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
            info = os.lstat(backend.disk_path(src))
        except (FileNotFoundError, NotADirectoryError):
            raise errors.NotFound() from None
        self.identity = (info.st_ino, info.st_dev)
        self.intent = write_intent(backend, {
            "src": src, "dst": dst, "id": entry_id, "replace": replace,
            "ino": info.st_ino, "dev": info.st_dev})

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

    def undo(self) -> None:
        """The metadata did not commit: the bytes go back to their old name."""
        try:
            if self.published:
                _put_back(self.backend, self.src, self.dst, self.replace, self.identity)
            self.published = False
        finally:
            drop_intent(self.backend, self.intent)

    def finish(self) -> None:
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
    try:
        info = os.lstat(backend.disk_path(path))
    except (FileNotFoundError, NotADirectoryError):
        return False
    return (info.st_ino, info.st_dev) == identity


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
    target = backend.disk_path(path)
    try:
        info = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):
        return
    if (info.st_ino, info.st_dev) == moved_identity:
        return
    try:
        if stat.S_ISDIR(info.st_mode):
            os.rmdir(target)
        else:
            os.unlink(target)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:
            raise


# -- intent records ---------------------------------------------------------------------------

def write_intent(backend, record: dict) -> str:
    """Write the intent durably (before any byte moves); returns its file name."""
    name = f"{INTENT_PREFIX}{secrets.token_hex(8)}"
    root_fd = os.open(backend.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                     dir_fd=root_fd)
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
        os.unlink(os.path.join(backend.root, name))
    except FileNotFoundError:
        pass


def read_intents(backend) -> list[tuple[str, dict | None]]:
    """The move intents a crash left in the root: (file name, record), the record None when
    unreadable (a crash while the intent itself was written, before any byte moved). The
    caller tells them from files of the namespace that merely have such a name."""
    found = []
    if not backend.root or not os.path.isdir(backend.root):
        return found
    for name in os.listdir(backend.root):
        if not name.startswith(INTENT_PREFIX):
            continue
        try:
            with open(os.path.join(backend.root, name), "rb") as fh:
                record = orjson.loads(fh.read(64 * 1024))
        except (OSError, orjson.JSONDecodeError):
            record = None
        if os.path.isfile(os.path.join(backend.root, name)):
            found.append((name, record))
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
