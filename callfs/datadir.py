"""One server per data directory: a lock taken before start-up creates anything, held by the
master for the server's life and inherited by its workers.

What a server may not share with another is what its crash recovery and its locks assume to
be its own: the local backend's root (recovery removes or rolls forward the leftovers of
writes in it) and the metadata store as seen from this host (its generation table, beside
the SQLite file or in shared memory for PostgreSQL). Only PostgreSQL metadata with Redis
locks coordinates several processes of one instance; they take the lock shared. Every other
setup (SQLite, or local locks) takes it exclusively, so it starts beside no other server.

The lock is flock(2): it belongs to the open file, so a worker's unrelated open and close of
the same directory (a directory fsync) never drops it, unlike a POSIX record lock; and it
vanishes with the last process holding it, so a crash leaves nothing to clean up.
"""
import errno
import fcntl
import os
import time

LOCK_WAIT_SECONDS = 2.0  # lets a server stopped a moment ago finish exiting
ORPHAN_WAIT_SECONDS = 30.0  # workers of a killed master, still dying (a long fsync)
_POLL_SECONDS = 0.05


class DataDirectoryBusy(Exception):
    """Another server holds one of the directories; str() is the message for the user."""


class DataDirectoryError(Exception):
    """A directory that cannot be created or locked; str() is the message for the user."""


class Target:
    """One thing to lock: a directory (created when missing) or a file beside the data."""

    def __init__(self, path: str, label: str, *, directory: bool, mode: int = 0o755):
        self.path = os.path.abspath(path)
        self.label = label  # how the user knows it: "data directory /srv/callfs/files"
        self.directory = directory
        self.mode = mode  # for a directory created here


class DataLock:
    """The held locks; their descriptors stay open (and inherited) until release()."""

    def __init__(self, targets: list[Target], shared: bool, fds: list[int]):
        self.targets = targets
        self.shared = shared
        self._fds = fds

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def may_share(store_type: str, dlm_type: str) -> bool:
    """Only PostgreSQL metadata with Redis locks keeps several processes of one instance
    correct on one directory: their locks and their store are shared, not per process."""
    return store_type == "postgres" and dlm_type == "redis"


def acquire(targets: list[Target], *, shared: bool,
            wait: float = LOCK_WAIT_SECONDS) -> DataLock:
    """Lock every target, or none. Targets that exist are locked before any missing one is
    created, so a refused start leaves everything as it found it."""
    existing = [t for t in targets if os.path.exists(t.path)]
    missing = [t for t in targets if t not in existing]
    fds: list[int] = []
    seen: set[tuple[int, int]] = set()
    try:
        for target in existing + missing:
            fd = _open(target)
            identity = os.fstat(fd)[1:3]  # (inode, device): one root may be named twice
            if identity in seen:
                os.close(fd)
                continue
            seen.add(identity)
            fds.append(fd)
            _lock(fd, target, shared, wait)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return DataLock(targets, shared, fds)


def _open(target: Target) -> int:
    try:
        if target.directory:
            os.makedirs(target.path, mode=target.mode, exist_ok=True)
            return os.open(target.path, os.O_RDONLY | os.O_DIRECTORY)
        return os.open(target.path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise DataDirectoryError(
            f"cannot open {target.label} ({target.path}): {exc.strerror or exc}") from None


def _lock(fd: int, target: Target, shared: bool, wait: float) -> None:
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    start = time.monotonic()
    while True:
        try:
            fcntl.flock(fd, mode)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DataDirectoryError(
                    f"cannot lock {target.label} ({target.path}): {exc.strerror}") from None
        waited = time.monotonic() - start
        if waited >= wait and (waited >= ORPHAN_WAIT_SECONDS or _locker_alive(fd)):
            raise DataDirectoryBusy(_busy_message(target, shared))
        time.sleep(_POLL_SECONDS)


def _locker_alive(fd: int) -> bool:
    """Whether a process that took a lock on this file still runs. The kernel names the
    master that locked it; when that master is gone, the holders are its workers on their
    way out (they die with it), and their lock is about to vanish."""
    inode = os.fstat(fd).st_ino
    try:
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return True  # no way to tell: assume a live server
    pids = []
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            pids.append(int(fields[4]))
    return not pids or any(_running(pid) for pid in pids)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _busy_message(target: Target, shared: bool) -> str:
    rule = ("only servers with PostgreSQL metadata and Redis locks may share it"
            if shared else
            "this server uses SQLite or local locks, so it needs it to itself")
    return (f"{target.label} is in use by another CallFS server ({rule}); "
            "stop that server, or start this one on another data directory (--data DIR)")
